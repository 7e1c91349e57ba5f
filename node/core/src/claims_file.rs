//! The byte format of a volume's claims file: the epoch counter, the newest
//! outage generation, the own claims, the claims record (the peer's
//! claims), the unconfirmed gives, the unconfirmed releases and the extents
//! taken alone. Pure encode and decode; the runtime (or the simulator)
//! stores the bytes.
//!
//! Layout (little-endian; `docs/on-disk.md`): `magic "GMCLAIM4" | counter
//! u64 | generation u64 | flags u32 | own | record | gives | released |
//! taken | crc32c u32`, each list `count u32 | (extent u64, epoch u64)*`;
//! flag bit 0: detached. Version 3 (`GMCLAIM3`: counter, then the first four
//! lists) and version 2 (`GMCLAIM2`: without released) are read too. The
//! file is replaced atomically, only when its contents change (a grant, a
//! handover, a release, a claim made alone), never per write.

use geomirror_wire::peer::{Epoch, Extent, ExtentClaim};

const MAGIC: &[u8; 8] = b"GMCLAIM4";
const MAGIC_V3: &[u8; 8] = b"GMCLAIM3";
const MAGIC_V2: &[u8; 8] = b"GMCLAIM2";
/// Largest claims file accepted (a million entries); a larger one is corrupt.
pub const CLAIMS_FILE_BYTES_MAX: usize = 16 * 1024 * 1024 + 64;
const TRAILER_BYTES: usize = 4;
const ENTRY_BYTES: usize = 16;
const FLAG_DETACHED: u32 = 1;

/// The contents of a claims file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClaimsFileContents {
    /// The epoch counter (never goes back).
    pub counter: Epoch,
    /// The newest outage generation this node knows (from the witness or an
    /// operator's takeover); 0 before the first outage.
    pub generation: u64,
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
    /// Own extents claimed alone or taken over while the peer was lost, not
    /// yet resynced to it (written before the first write to them).
    pub taken: Vec<ExtentClaim>,
    /// The volume was taken over offline and served without its peer: it
    /// is not mirrored again automatically.
    pub detached: bool,
}

impl ClaimsFileContents {
    /// Whether the file says nothing beyond a clean, never-diverged volume.
    pub fn is_clean(&self) -> bool {
        self.own.is_empty() && self.record.is_empty() && self.gives.is_empty() && self.released.is_empty() && self.taken.is_empty()
    }
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
    /// Not a claims file of a known version.
    #[error("bad magic")]
    Magic,
    /// A list runs past the end.
    #[error("truncated")]
    Truncated,
    /// Bytes after the last list, or unknown flags.
    #[error("trailing bytes or unknown flags")]
    Trailing,
}

/// Serializes a claims file with its checksum.
pub fn encode(c: &ClaimsFileContents) -> Vec<u8> {
    let entries = c.own.len() + c.record.len() + c.gives.len() + c.released.len() + c.taken.len();
    let mut out = Vec::with_capacity(8 + 8 + 8 + 4 + 5 * 4 + ENTRY_BYTES * entries + TRAILER_BYTES);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&c.counter.0.to_le_bytes());
    out.extend_from_slice(&c.generation.to_le_bytes());
    out.extend_from_slice(&(if c.detached { FLAG_DETACHED } else { 0 }).to_le_bytes());
    for list in [&c.own, &c.record, &c.gives, &c.released, &c.taken] {
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

/// A cursor over a verified body.
struct Reader<'a> {
    body: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn u64(&mut self) -> Result<u64, ClaimsFileCorrupt> {
        let word = self.body.get(self.at..self.at + 8).ok_or(ClaimsFileCorrupt::Truncated)?;
        self.at += 8;
        Ok(u64::from_le_bytes(word.try_into().expect("8 bytes")))
    }

    fn u32(&mut self) -> Result<u32, ClaimsFileCorrupt> {
        let word = self.body.get(self.at..self.at + 4).ok_or(ClaimsFileCorrupt::Truncated)?;
        self.at += 4;
        Ok(u32::from_le_bytes(word.try_into().expect("4 bytes")))
    }

    fn list(&mut self) -> Result<Vec<ExtentClaim>, ClaimsFileCorrupt> {
        let n = self.u32()? as usize;
        if (self.body.len() - self.at) / ENTRY_BYTES < n {
            return Err(ClaimsFileCorrupt::Truncated);
        }
        (0..n).map(|_| Ok(ExtentClaim { extent: Extent(self.u64()?), epoch: Epoch(self.u64()?) })).collect()
    }
}

/// Parses and verifies a claims file.
pub fn decode(b: &[u8]) -> Result<ClaimsFileContents, ClaimsFileCorrupt> {
    if b.len() < 8 + 8 + 3 * 4 + TRAILER_BYTES || b.len() > CLAIMS_FILE_BYTES_MAX {
        return Err(ClaimsFileCorrupt::BadLength);
    }
    let (body, tail) = b.split_at(b.len() - TRAILER_BYTES);
    let stored = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
    if crc32c::crc32c(body) != stored {
        return Err(ClaimsFileCorrupt::Checksum);
    }
    let version = match &body[..8] {
        m if m == MAGIC => 4,
        m if m == MAGIC_V3 => 3,
        m if m == MAGIC_V2 => 2,
        _ => return Err(ClaimsFileCorrupt::Magic),
    };
    let mut r = Reader { body, at: 8 };
    let mut c = ClaimsFileContents { counter: Epoch(r.u64()?), ..Default::default() };
    if version >= 4 {
        c.generation = r.u64()?;
        let flags = r.u32()?;
        if flags & !FLAG_DETACHED != 0 {
            return Err(ClaimsFileCorrupt::Trailing);
        }
        c.detached = flags & FLAG_DETACHED != 0;
    }
    c.own = r.list()?;
    c.record = r.list()?;
    c.gives = r.list()?;
    if version >= 3 {
        c.released = r.list()?;
    }
    if version >= 4 {
        c.taken = r.list()?;
    }
    if r.at != body.len() {
        return Err(ClaimsFileCorrupt::Trailing);
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(e: u64, p: u64) -> ExtentClaim {
        ExtentClaim { extent: Extent(e), epoch: Epoch(p) }
    }

    fn sample() -> ClaimsFileContents {
        ClaimsFileContents {
            counter: Epoch(42),
            generation: 3,
            own: vec![claim(1, 40), claim(12, 43)],
            record: vec![claim(7, 41), claim(9, 42)],
            gives: vec![claim(9, 42)],
            released: vec![claim(3, 30)],
            taken: vec![claim(12, 43)],
            detached: true,
        }
    }

    /// The bytes of an older version of `c` (which must have nothing that
    /// version lacks).
    fn older(c: &ClaimsFileContents, magic: &[u8; 8], with_released: bool) -> Vec<u8> {
        let mut out = magic.to_vec();
        out.extend_from_slice(&c.counter.0.to_le_bytes());
        let lists: &[&Vec<ExtentClaim>] =
            if with_released { &[&c.own, &c.record, &c.gives, &c.released] } else { &[&c.own, &c.record, &c.gives] };
        for list in lists {
            out.extend_from_slice(&(list.len() as u32).to_le_bytes());
            for e in list.iter() {
                out.extend_from_slice(&e.extent.0.to_le_bytes());
                out.extend_from_slice(&e.epoch.0.to_le_bytes());
            }
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
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
    fn files_of_versions_2_and_3_are_read() {
        let v3 = ClaimsFileContents { generation: 0, taken: vec![], detached: false, ..sample() };
        assert_eq!(decode(&older(&v3, MAGIC_V3, true)).unwrap(), v3);
        let v2 = ClaimsFileContents { released: vec![], ..v3 };
        assert_eq!(decode(&older(&v2, MAGIC_V2, false)).unwrap(), v2);
    }

    #[test]
    fn unknown_flags_are_refused() {
        let mut bytes = encode(&ClaimsFileContents::default());
        bytes[24] = 2;
        let len = bytes.len();
        let crc = crc32c::crc32c(&bytes[..len - 4]);
        bytes[len - 4..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&bytes), Err(ClaimsFileCorrupt::Trailing));
    }

    #[test]
    fn a_huge_count_is_refused_without_allocating() {
        let mut bytes = encode(&ClaimsFileContents::default());
        bytes[28..32].copy_from_slice(&u32::MAX.to_le_bytes());
        let len = bytes.len();
        let crc = crc32c::crc32c(&bytes[..len - 4]);
        bytes[len - 4..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&bytes), Err(ClaimsFileCorrupt::Truncated));
    }
}
