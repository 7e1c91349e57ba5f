//! The byte format of a volume's claims file: the epoch counter, the own
//! claims, the claims record (the peer's claims), the unconfirmed gives and
//! the unconfirmed releases.
//! Pure encode and decode; the runtime (or the simulator) stores the bytes.
//!
//! Layout (little-endian; `docs/on-disk.md`): `magic "GMCLAIM3" | counter
//! u64 | own count u32 | (extent u64, epoch u64)* | record count u32 |
//! (extent u64, epoch u64)* | gives count u32 | (extent u64, epoch u64)* |
//! released count u32 | (extent u64, epoch u64)* | crc32c u32`. Version 2
//! files (`GMCLAIM2`, without the released list) are read too. The file is
//! replaced atomically, only when its contents change (a grant, a handover,
//! a release), never per write.

use geomirror_wire::peer::{Epoch, Extent, ExtentClaim};

const MAGIC: &[u8; 8] = b"GMCLAIM3";
const MAGIC_V2: &[u8; 8] = b"GMCLAIM2";
/// Largest claims file accepted (a million entries); a larger one is corrupt.
pub const CLAIMS_FILE_BYTES_MAX: usize = 16 * 1024 * 1024 + 64;
const HEADER_BYTES: usize = 8 + 8;
const TRAILER_BYTES: usize = 4;
const ENTRY_BYTES: usize = 16;

/// The contents of a claims file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClaimsFileContents {
    /// The epoch counter (never goes back).
    pub counter: Epoch,
    /// Extents this node owns (written lazily: the peer's record is the
    /// authority, and the session-start sync restores any that are missing).
    pub own: Vec<ExtentClaim>,
    /// The claims record: extents the peer owns.
    pub record: Vec<ExtentClaim>,
    /// Handovers given to the peer and not yet confirmed by it.
    pub gives: Vec<ExtentClaim>,
    /// Extents this node released and the peer has not yet confirmed
    /// removing from its record: if the release was lost, it is sent again
    /// instead of the extent being taken back (its data is at the peer).
    pub released: Vec<ExtentClaim>,
}

/// Why bytes are not a valid claims file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClaimsFileCorrupt {
    /// Shorter than the smallest file or longer than the largest.
    #[error("bad length")]
    BadLength,
    /// The checksum does not match.
    #[error("checksum mismatch")]
    Checksum,
    /// Not a claims file of this version.
    #[error("bad magic")]
    Magic,
    /// A list runs past the end.
    #[error("truncated")]
    Truncated,
    /// Bytes after the last list.
    #[error("trailing bytes")]
    Trailing,
}

/// Serializes a claims file with its checksum.
pub fn encode(c: &ClaimsFileContents) -> Vec<u8> {
    let entries = c.own.len() + c.record.len() + c.gives.len() + c.released.len();
    let mut out = Vec::with_capacity(HEADER_BYTES + 16 + ENTRY_BYTES * entries + TRAILER_BYTES);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&c.counter.0.to_le_bytes());
    for list in [&c.own, &c.record, &c.gives, &c.released] {
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

/// Parses and verifies a claims file.
pub fn decode(b: &[u8]) -> Result<ClaimsFileContents, ClaimsFileCorrupt> {
    if b.len() < HEADER_BYTES + 3 * 4 + TRAILER_BYTES || b.len() > CLAIMS_FILE_BYTES_MAX {
        return Err(ClaimsFileCorrupt::BadLength);
    }
    let (body, tail) = b.split_at(b.len() - TRAILER_BYTES);
    let stored = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
    if crc32c::crc32c(body) != stored {
        return Err(ClaimsFileCorrupt::Checksum);
    }
    let lists_in_file = match &body[..8] {
        m if m == MAGIC => 4,
        m if m == MAGIC_V2 => 3,
        _ => return Err(ClaimsFileCorrupt::Magic),
    };
    let u64_at = |at: usize| {
        let mut word = [0u8; 8];
        word.copy_from_slice(&body[at..at + 8]);
        u64::from_le_bytes(word)
    };
    let counter = Epoch(u64_at(8));
    let mut at = HEADER_BYTES;
    let mut lists = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    for list in lists.iter_mut().take(lists_in_file) {
        if body.len() < at + 4 {
            return Err(ClaimsFileCorrupt::Truncated);
        }
        let n = u32::from_le_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]]) as usize;
        at += 4;
        if (body.len() - at) / ENTRY_BYTES < n {
            return Err(ClaimsFileCorrupt::Truncated);
        }
        list.reserve(n);
        for _ in 0..n {
            list.push(ExtentClaim { extent: Extent(u64_at(at)), epoch: Epoch(u64_at(at + 8)) });
            at += ENTRY_BYTES;
        }
    }
    if at != body.len() {
        return Err(ClaimsFileCorrupt::Trailing);
    }
    let [own, record, gives, released] = lists;
    Ok(ClaimsFileContents { counter, own, record, gives, released })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ClaimsFileContents {
        ClaimsFileContents {
            counter: Epoch(42),
            own: vec![ExtentClaim { extent: Extent(1), epoch: Epoch(40) }],
            record: vec![ExtentClaim { extent: Extent(7), epoch: Epoch(41) }, ExtentClaim { extent: Extent(9), epoch: Epoch(42) }],
            gives: vec![ExtentClaim { extent: Extent(9), epoch: Epoch(42) }],
            released: vec![ExtentClaim { extent: Extent(3), epoch: Epoch(30) }],
        }
    }

    #[test]
    fn contents_round_trip() {
        assert_eq!(decode(&encode(&sample())).unwrap(), sample());
        assert_eq!(decode(&encode(&ClaimsFileContents::default())).unwrap(), ClaimsFileContents::default());
    }

    #[test]
    fn any_damage_is_refused() {
        let good = encode(&sample());
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[i] ^= 1 << bit;
                assert!(decode(&bad).is_err(), "flip of bit {bit} at byte {i} went unnoticed");
            }
        }
        for len in 0..good.len() {
            assert!(decode(&good[..len]).is_err(), "a file cut at {len} bytes was accepted");
        }
    }

    #[test]
    fn a_version_2_file_is_read_without_released_extents() {
        let mut v2 = sample();
        v2.released.clear();
        let mut bytes = encode(&v2);
        let list_end = bytes.len() - 4 - 4; // drop the empty released list
        bytes.truncate(list_end);
        bytes[..8].copy_from_slice(MAGIC_V2);
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&bytes).unwrap(), v2);
    }

    #[test]
    fn a_huge_count_is_refused_without_allocating() {
        let mut bytes = encode(&ClaimsFileContents::default());
        bytes[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        let len = bytes.len();
        let crc = crc32c::crc32c(&bytes[..len - 4]);
        bytes[len - 4..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&bytes), Err(ClaimsFileCorrupt::Truncated));
    }
}
