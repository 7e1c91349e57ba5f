//! A simulated disk of one node: per block a volatile value (the page
//! cache) and a durable one, plus the claims file. A crash keeps only what
//! was synced; a sync makes durable what was written before it was issued.
//!
//! Block contents are a value: the first eight bytes of the block (little
//! endian), the rest zero. Zero is the initial value and what trims write.

use bytes::{Bytes, BytesMut};
use geomirror_core::StoreWrite;
use geomirror_core::claims_file::{self, ClaimsFileContents, ClaimsState, ClaimsWrite};

use crate::params::BLOCK_BYTES;

/// One block: its value and the write that put it there (newer writes have
/// larger sequence numbers; a sync never makes an older one durable over a newer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoredBlock {
    /// The value.
    pub value: u64,
    /// The write's sequence number.
    pub wseq: u64,
}

/// The disk of one node.
#[derive(Clone, Debug)]
pub struct Disk {
    /// What reads see.
    pub volatile: Vec<StoredBlock>,
    /// What survives a crash.
    pub durable: Vec<StoredBlock>,
    /// The claims file's bytes as durable.
    pub claims_file: Option<Vec<u8>>,
    /// What those bytes say (the writes that landed, applied).
    claims: ClaimsState,
    /// The conflict file as durable: (block, value) of each saved block.
    pub conflicts: Vec<(u64, u64)>,
    wseq: u64,
}

impl Disk {
    /// An empty disk of `blocks` blocks.
    pub fn new(blocks: u64) -> Disk {
        Disk {
            volatile: vec![StoredBlock::default(); blocks as usize],
            durable: vec![StoredBlock::default(); blocks as usize],
            claims_file: None,
            claims: ClaimsState::default(),
            conflicts: Vec::new(),
            wseq: 0,
        }
    }

    /// The checksum of a block as the store computes it (injective on the
    /// values the simulation writes).
    pub fn checksum(&self, block: u64) -> u32 {
        self.volatile[block as usize].value as u32
    }

    /// The bytes of a block range.
    pub fn read(&self, offset: u64, length: u64) -> Bytes {
        let mut out = BytesMut::zeroed(length as usize);
        let first = offset / BLOCK_BYTES;
        for i in 0..length / BLOCK_BYTES {
            let v = self.volatile[(first + i) as usize].value;
            let at = (i * BLOCK_BYTES) as usize;
            out[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        out.freeze()
    }

    /// Applies one store write; with `cut`, only the first `cut` blocks (a
    /// failed write may have written part of its range).
    pub fn write(&mut self, w: &StoreWrite, cut: Option<u64>) {
        let (offset, length) = w.range();
        assert!(offset.is_multiple_of(BLOCK_BYTES) && length.is_multiple_of(BLOCK_BYTES), "the simulation writes whole blocks: {w:?}");
        let first = offset / BLOCK_BYTES;
        let blocks = (length / BLOCK_BYTES).min(cut.unwrap_or(u64::MAX));
        for i in 0..blocks {
            let value = match w {
                StoreWrite::Data { data, .. } => value_at(data, i),
                StoreWrite::Trim { .. } | StoreWrite::Zeroes { .. } => 0,
            };
            self.wseq += 1;
            self.volatile[(first + i) as usize] = StoredBlock { value, wseq: self.wseq };
        }
    }

    /// What a sync issued now will make durable.
    pub fn snapshot(&self) -> Vec<StoredBlock> {
        self.volatile.clone()
    }

    /// A sync completes: what was written before it was issued is durable.
    pub fn sync(&mut self, snapshot: &[StoredBlock]) {
        for (d, s) in self.durable.iter_mut().zip(snapshot) {
            if s.wseq > d.wseq {
                *d = *s;
            }
        }
    }

    /// The node crashed: only durable blocks remain.
    pub fn crash(&mut self) {
        self.volatile = self.durable.clone();
    }

    /// Writes the claims file: a whole file replaces it (durable at once:
    /// an atomic rename), a journal record is appended (`torn`: only its
    /// first `torn` bytes, a crash during the append).
    pub fn write_claims(&mut self, write: &ClaimsWrite, torn: Option<usize>) {
        match write {
            ClaimsWrite::Full(contents) => {
                self.claims_file = Some(claims_file::encode(contents));
                self.claims = ClaimsState::from_contents(contents);
            }
            ClaimsWrite::Delta(delta) => {
                let file = self.claims_file.as_mut().expect("a journal record follows a whole file");
                let record = claims_file::encode_delta(delta);
                match torn {
                    Some(len) if len < record.len() => file.extend_from_slice(&record[..len]),
                    _ => {
                        file.extend_from_slice(&record);
                        self.claims.apply(delta);
                    }
                }
            }
        }
    }

    /// What the durable claims file says (kept beside its bytes: the
    /// invariants read it after every step).
    pub fn claims(&self) -> ClaimsFileContents {
        self.claims.to_contents()
    }

    /// The claims file as loaded at start, decoded from its bytes (a torn
    /// last record ignored); it must say what the writes that landed say.
    pub fn load_claims(&self) -> ClaimsFileContents {
        let decoded = match &self.claims_file {
            None => ClaimsFileContents::default(),
            Some(bytes) => claims_file::decode(bytes).expect("a simulated claims file is whole but for a torn last record"),
        };
        assert_eq!(decoded, self.claims(), "the claims file's bytes decode to other contents than were written");
        decoded
    }
}

/// The value of block `i` of a buffer.
pub fn value_at(data: &[u8], i: u64) -> u64 {
    let at = (i * BLOCK_BYTES) as usize;
    let mut word = [0u8; 8];
    word.copy_from_slice(&data[at..at + 8]);
    u64::from_le_bytes(word)
}

/// A buffer of `blocks` blocks, each holding `value`.
pub fn buffer_of(value: u64, blocks: u64) -> Bytes {
    let mut out = BytesMut::zeroed((blocks * BLOCK_BYTES) as usize);
    for i in 0..blocks {
        let at = (i * BLOCK_BYTES) as usize;
        out[at..at + 8].copy_from_slice(&value.to_le_bytes());
    }
    out.freeze()
}
