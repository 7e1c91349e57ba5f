//! The durable claims record of one volume: our own claims, the extents the
//! peer owns (with epochs), and the epoch counter.
//!
//! Layout (little-endian; `docs/on-disk.md`): `magic "GMCLAIM2" | counter
//! u64 | own count u32 | (extent u64, epoch u64)* | record count u32 |
//! (extent u64, epoch u64)* | gives count u32 | (extent u64, epoch u64)* |
//! crc32c u32`. Rewritten atomically, only when
//! the record changes (a grant, a handover, a release), never per write;
//! grants wait for the rewrite before they are answered.

use std::path::{Path, PathBuf};

use geomirror_wire::peer::{Epoch, Extent, ExtentClaim};

use crate::store::meta::write_atomically;

const MAGIC: &[u8; 8] = b"GMCLAIM2";
/// Largest record file accepted on load (a million entries).
const RECORD_BYTES_MAX: u64 = 16 * 1024 * 1024 + 64;

/// The contents of a record file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordContents {
    /// The epoch counter.
    pub counter: Epoch,
    /// Extents this node owns.
    pub own: Vec<ExtentClaim>,
    /// Extents the peer owns.
    pub record: Vec<ExtentClaim>,
    /// Handovers given to the peer and not yet confirmed by it.
    pub gives: Vec<ExtentClaim>,
}

/// Why a record file was refused.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// I/O failed.
    #[error("claims record {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is damaged: refused, because forgetting a peer's claim would
    /// serve stale reads.
    #[error(
        "claims record {path} is corrupt ({reason}); refusing to start (restore it, or remove it only if both sites hold identical data)"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
}

/// A volume's record file.
#[derive(Clone)]
pub struct RecordFile {
    path: PathBuf,
}

impl RecordFile {
    /// The record of the volume whose files are in `volume_dir`.
    pub fn new(volume_dir: &Path) -> Self {
        RecordFile { path: volume_dir.join("claims") }
    }

    /// Loads the record; a missing file is an empty record.
    pub fn load(&self) -> Result<RecordContents, RecordError> {
        use std::io::Read;
        let io = |source| RecordError::Io { path: self.path.clone(), source };
        let mut bytes = Vec::new();
        match std::fs::File::open(&self.path) {
            Ok(f) => {
                f.take(RECORD_BYTES_MAX + 1).read_to_end(&mut bytes).map_err(io)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(RecordContents::default()),
            Err(e) => return Err(io(e)),
        }
        decode(&bytes).map_err(|reason| RecordError::Corrupt { path: self.path.clone(), reason })
    }

    /// Replaces the record atomically and durably.
    pub fn store(&self, contents: &RecordContents) -> Result<(), RecordError> {
        write_atomically(&self.path, &encode(contents)).map_err(|source| RecordError::Io { path: self.path.clone(), source })
    }
}

/// Serializes a record with its checksum.
pub fn encode(c: &RecordContents) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + 16 * (c.own.len() + c.record.len()));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&c.counter.0.to_le_bytes());
    for list in [&c.own, &c.record, &c.gives] {
        out.extend_from_slice(&(list.len() as u32).to_le_bytes());
        for e in list {
            out.extend_from_slice(&e.extent.0.to_le_bytes());
            out.extend_from_slice(&e.epoch.0.to_le_bytes());
        }
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Parses and verifies a record.
pub fn decode(b: &[u8]) -> Result<RecordContents, &'static str> {
    if b.len() < 8 + 8 + 4 + 4 + 4 + 4 || b.len() as u64 > RECORD_BYTES_MAX {
        return Err("bad length");
    }
    let (body, tail) = b.split_at(b.len() - 4);
    if crc32c::crc32c(body) != u32::from_le_bytes(tail.try_into().expect("4 bytes")) {
        return Err("checksum mismatch");
    }
    if &body[..8] != MAGIC {
        return Err("bad magic");
    }
    let u64_at = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"));
    let counter = Epoch(u64_at(8));
    let mut at = 16;
    let mut lists = [Vec::new(), Vec::new(), Vec::new()];
    for list in &mut lists {
        if body.len() < at + 4 {
            return Err("truncated");
        }
        let n = u32::from_le_bytes(body[at..at + 4].try_into().expect("4 bytes")) as usize;
        at += 4;
        if body.len() < at + n * 16 {
            return Err("truncated");
        }
        for _ in 0..n {
            list.push(ExtentClaim { extent: Extent(u64_at(at)), epoch: Epoch(u64_at(at + 8)) });
            at += 16;
        }
    }
    if at != body.len() {
        return Err("trailing bytes");
    }
    let [own, record, gives] = lists;
    Ok(RecordContents { counter, own, record, gives })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RecordContents {
        RecordContents {
            counter: Epoch(42),
            own: vec![ExtentClaim { extent: Extent(1), epoch: Epoch(40) }],
            record: vec![ExtentClaim { extent: Extent(7), epoch: Epoch(41) }, ExtentClaim { extent: Extent(9), epoch: Epoch(42) }],
            gives: vec![ExtentClaim { extent: Extent(9), epoch: Epoch(42) }],
        }
    }

    #[test]
    fn records_round_trip_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = RecordFile::new(dir.path());
        assert_eq!(file.load().unwrap(), RecordContents::default(), "no file is an empty record");
        file.store(&sample()).unwrap();
        assert_eq!(file.load().unwrap(), sample());
    }

    #[test]
    fn any_damage_is_refused() {
        let good = encode(&sample());
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            assert!(decode(&bad).is_err(), "flip at byte {i} went unnoticed");
        }
        for len in 0..good.len() {
            assert!(decode(&good[..len]).is_err());
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("claims"), b"garbage").unwrap();
        assert!(matches!(RecordFile::new(dir.path()).load(), Err(RecordError::Corrupt { .. })));
    }
}
