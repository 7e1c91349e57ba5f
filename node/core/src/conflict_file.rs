//! The byte format of a volume's conflict file: the blocks of this node
//! that the peer's data replaced after an outage, each saved before it was
//! overwritten (DESIGN.md 5.1, invariant 6). Append-only; pure encode and
//! decode (the runtime appends and syncs, `geomirror conflicts` reads).
//!
//! Layout (little-endian; `docs/on-disk.md`):
//! - header: `magic "GMCONFL1" | name length u16 | volume name | volume id
//!   [16] | crc32c u32` (over what precedes it);
//! - then records: `magic "CREC" | body length u32 | body | crc32c u32`
//!   (over the body), the body being `kind u8 | offset u64 | our generation
//!   u64 | their generation u64 | saved at (ms since the Unix epoch) u64 |
//!   data length u32 | data`.
//!
//! A record is written whole and synced before the block it saves is
//! overwritten; a record cut short by a crash is therefore never the only
//! copy of anything, and is reported as a torn tail (not as corruption).

use crate::io::ConflictKind;

const MAGIC: &[u8; 8] = b"GMCONFL1";
const RECORD_MAGIC: &[u8; 4] = b"CREC";
/// Largest block a record carries.
pub const RECORD_DATA_BYTES_MAX: usize = 64 * 1024;
const BODY_FIXED_BYTES: usize = 1 + 8 + 8 + 8 + 8 + 4;

/// The file's header: which volume it belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConflictFileHeader {
    /// The volume's name.
    pub volume: String,
    /// The volume's id (from its metadata).
    pub volume_id: [u8; 16],
}

/// One saved block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedBlock {
    /// Why it diverged.
    pub kind: ConflictKind,
    /// Byte offset in the volume.
    pub offset: u64,
    /// The newest outage generation this node knew when it returned.
    pub our_generation: u64,
    /// The peer's outage generation.
    pub their_generation: u64,
    /// When it was saved, in milliseconds since the Unix epoch.
    pub saved_at_ms: u64,
    /// The block's bytes as this node held them.
    pub data: Vec<u8>,
}

/// What is wrong with a conflict file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConflictFileError {
    /// The header is missing or damaged.
    #[error("the header is damaged")]
    BadHeader,
    /// A record in the middle does not check out.
    #[error("record {index} at byte {at} is corrupt")]
    Corrupt {
        /// Which record.
        index: usize,
        /// Where it starts.
        at: usize,
    },
    /// The last record is incomplete (a crash while appending it).
    #[error("the last record (at byte {at}) is incomplete")]
    TornTail {
        /// Where it starts: the file is whole up to here.
        at: usize,
    },
}

fn kind_byte(kind: ConflictKind) -> u8 {
    match kind {
        ConflictKind::TakenOver => 1,
        ConflictKind::ClaimedAlone => 2,
    }
}

/// The header's bytes.
pub fn encode_header(h: &ConflictFileHeader) -> Vec<u8> {
    let name = h.volume.as_bytes();
    let mut out = Vec::with_capacity(8 + 2 + name.len() + 16 + 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(name.len().min(u16::MAX as usize) as u16).to_le_bytes());
    out.extend_from_slice(&name[..name.len().min(u16::MAX as usize)]);
    out.extend_from_slice(&h.volume_id);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// One record's bytes.
pub fn encode_record(r: &SavedBlock) -> Vec<u8> {
    let mut body = Vec::with_capacity(BODY_FIXED_BYTES + r.data.len());
    body.push(kind_byte(r.kind));
    for word in [r.offset, r.our_generation, r.their_generation, r.saved_at_ms] {
        body.extend_from_slice(&word.to_le_bytes());
    }
    body.extend_from_slice(&(r.data.len() as u32).to_le_bytes());
    body.extend_from_slice(&r.data);
    let mut out = Vec::with_capacity(4 + 4 + body.len() + 4);
    out.extend_from_slice(RECORD_MAGIC);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    out
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Parses a whole file. On a torn tail or a corrupt record, the error says
/// where; the records before it are returned by [`decode_prefix`].
pub fn decode(b: &[u8]) -> Result<(ConflictFileHeader, Vec<SavedBlock>), ConflictFileError> {
    let (header, records, problem) = decode_prefix(b)?;
    match problem {
        None => Ok((header, records)),
        Some(e) => Err(e),
    }
}

/// Parses as much as checks out: the header, the whole records, and what
/// stopped the parse (None: the end of the file).
pub fn decode_prefix(b: &[u8]) -> Result<(ConflictFileHeader, Vec<SavedBlock>, Option<ConflictFileError>), ConflictFileError> {
    if b.len() < 8 + 2 + 16 + 4 || &b[..8] != MAGIC {
        return Err(ConflictFileError::BadHeader);
    }
    let name_len = u16::from_le_bytes([b[8], b[9]]) as usize;
    let header_end = 10 + name_len + 16;
    if b.len() < header_end + 4 || crc32c::crc32c(&b[..header_end]) != u32_at(b, header_end) {
        return Err(ConflictFileError::BadHeader);
    }
    let volume = String::from_utf8(b[10..10 + name_len].to_vec()).map_err(|_| ConflictFileError::BadHeader)?;
    let volume_id: [u8; 16] = b[10 + name_len..header_end].try_into().expect("16 bytes");
    let header = ConflictFileHeader { volume, volume_id };
    let mut at = header_end + 4;
    let mut records = Vec::new();
    while at < b.len() {
        let start = at;
        let torn = ConflictFileError::TornTail { at: start };
        let corrupt = ConflictFileError::Corrupt { index: records.len(), at: start };
        if b.len() < at + 8 {
            return Ok((header, records, Some(torn)));
        }
        if &b[at..at + 4] != RECORD_MAGIC {
            return Ok((header, records, Some(corrupt)));
        }
        let body_len = u32_at(b, at + 4) as usize;
        if !(BODY_FIXED_BYTES..=BODY_FIXED_BYTES + RECORD_DATA_BYTES_MAX).contains(&body_len) {
            return Ok((header, records, Some(corrupt)));
        }
        at += 8;
        if b.len() < at + body_len + 4 {
            return Ok((header, records, Some(torn)));
        }
        let body = &b[at..at + body_len];
        if crc32c::crc32c(body) != u32_at(b, at + body_len) {
            // A bad checksum on the last record is a torn write; earlier, corruption.
            let last = at + body_len + 4 == b.len();
            return Ok((header, records, Some(if last { torn } else { corrupt })));
        }
        let kind = match body[0] {
            1 => ConflictKind::TakenOver,
            2 => ConflictKind::ClaimedAlone,
            _ => return Ok((header, records, Some(corrupt))),
        };
        let data_len = u32_at(body, 33) as usize;
        if BODY_FIXED_BYTES + data_len != body_len {
            return Ok((header, records, Some(corrupt)));
        }
        records.push(SavedBlock {
            kind,
            offset: u64_at(body, 1),
            our_generation: u64_at(body, 9),
            their_generation: u64_at(body, 17),
            saved_at_ms: u64_at(body, 25),
            data: body[BODY_FIXED_BYTES..].to_vec(),
        });
        at += body_len + 4;
    }
    Ok((header, records, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> ConflictFileHeader {
        ConflictFileHeader { volume: "vol0".into(), volume_id: [3; 16] }
    }

    fn record(offset: u64, fill: u8) -> SavedBlock {
        SavedBlock {
            kind: ConflictKind::TakenOver,
            offset,
            our_generation: 1,
            their_generation: 2,
            saved_at_ms: 1_700_000_000_000,
            data: vec![fill; 4096],
        }
    }

    fn file(records: &[SavedBlock]) -> Vec<u8> {
        let mut out = encode_header(&header());
        for r in records {
            out.extend_from_slice(&encode_record(r));
        }
        out
    }

    #[test]
    fn records_round_trip() {
        let records = vec![record(0, 1), SavedBlock { kind: ConflictKind::ClaimedAlone, ..record(8192, 2) }];
        assert_eq!(decode(&file(&records)).unwrap(), (header(), records));
        assert_eq!(decode(&file(&[])).unwrap(), (header(), vec![]));
    }

    #[test]
    fn a_torn_tail_is_told_apart_from_corruption() {
        let whole = file(&[record(0, 1), record(4096, 2)]);
        let first_end = whole.len() - encode_record(&record(4096, 2)).len();
        for cut in first_end + 1..whole.len() {
            let (_, records, problem) = decode_prefix(&whole[..cut]).unwrap();
            assert_eq!(records.len(), 1, "cut at {cut}");
            assert_eq!(problem, Some(ConflictFileError::TornTail { at: first_end }), "cut at {cut}");
        }
        let mut bad = whole.clone();
        bad[encode_header(&header()).len() + 20] ^= 1; // inside the first record's body
        assert!(matches!(decode(&bad), Err(ConflictFileError::Corrupt { index: 0, .. })));
        let mut bad_header = whole;
        bad_header[9] ^= 1;
        assert_eq!(decode(&bad_header), Err(ConflictFileError::BadHeader));
    }

    #[test]
    fn a_huge_length_is_refused_without_allocating() {
        let mut bytes = file(&[record(0, 1)]);
        let at = encode_header(&header()).len() + 4;
        bytes[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&bytes), Err(ConflictFileError::Corrupt { .. })));
    }
}
