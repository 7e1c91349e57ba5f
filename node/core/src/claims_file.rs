//! The byte format of a volume's claims file: the epoch counter, the newest
//! outage generation, the own claims, the claims record (the peer's
//! claims), the unconfirmed gives, the unconfirmed releases and the extents
//! taken alone. Pure encode and decode; the runtime (or the simulator)
//! stores the bytes.
//!
//! Format 5 (`docs/on-disk.md`, little-endian) is a snapshot followed by a
//! journal, so that a change costs what it changes, not what the file holds:
//! - snapshot: `magic "GMCLAIM5" | body length u32 | body | crc32c u32` (over
//!   magic, length and body), the body being `counter u64 | generation u64 |
//!   flags u32 | own | record | gives | released | taken`, each list
//!   `count u32 | (extent u64, epoch u64)*`; flag bit 0: detached;
//! - then journal records, each appended whole and synced: `magic "CJRN" |
//!   body length u32 | crc32c u32 of the length | body | crc32c u32` (over
//!   the body), the body being
//!   `counter u64 | generation u64 | flags u32 | count u32 | entry*`, an entry
//!   `extent u64 | present u8 | epoch u64 per present bit` (bits: own 1,
//!   record 2, give 4, released 8, taken 16): the extent's whole entry, which
//!   replaces what the file said of it before.
//!
//! The file is rewritten whole (atomically) at the first write after a start
//! and whenever the journal has grown past the snapshot
//! ([`Claims::take_file_write`](crate::claims::Claims::take_file_write)
//! decides); otherwise a change appends one record. Only the last append can
//! be cut short by a crash (each is synced before the next) and it was never
//! reported durable: what does not check out is ignored if no whole record
//! follows it, and refused as damage if one does. Versions 4 (`GMCLAIM4`: the snapshot body with
//! a trailing checksum, no journal), 3 and 2 are read too.

use std::collections::BTreeMap;

use geomirror_wire::peer::{Epoch, Extent, ExtentClaim};

const MAGIC: &[u8; 8] = b"GMCLAIM5";
const MAGIC_V4: &[u8; 8] = b"GMCLAIM4";
const MAGIC_V3: &[u8; 8] = b"GMCLAIM3";
const MAGIC_V2: &[u8; 8] = b"GMCLAIM2";
const RECORD_MAGIC: &[u8; 4] = b"CJRN";
/// Largest snapshot accepted (a million entries); a larger one is corrupt.
pub const SNAPSHOT_BYTES_MAX: usize = 16 * 1024 * 1024 + 64;
/// Largest claims file accepted: a snapshot and a journal of at most twice
/// its size (the journal is folded into a new snapshot once it outgrows the
/// snapshot, and a record never exceeds a snapshot); a larger one is corrupt.
pub const CLAIMS_FILE_BYTES_MAX: usize = 4 * SNAPSHOT_BYTES_MAX;
/// The journal may grow to at least this before it is folded, however small
/// the snapshot.
pub const JOURNAL_BYTES_MIN: usize = 256 * 1024;
const TRAILER_BYTES: usize = 4;
const ENTRY_BYTES: usize = 16;
const FLAG_DETACHED: u32 = 1;
const HEADER_BYTES: usize = 8 + 8 + 4;
/// A record's magic, body length and the length's checksum.
const RECORD_HEADER_BYTES: usize = 4 + 4 + 4;
const RECORD_FIXED_BYTES: usize = RECORD_HEADER_BYTES + HEADER_BYTES + 4 + TRAILER_BYTES;

const PRESENT_OWN: u8 = 1;
const PRESENT_RECORD: u8 = 2;
const PRESENT_GIVE: u8 = 4;
const PRESENT_RELEASED: u8 = 8;
const PRESENT_TAKEN: u8 = 16;

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

/// What the file says of one extent (all `None`: nothing).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExtentEntry {
    /// We own it, at this epoch.
    pub own: Option<Epoch>,
    /// The peer owns it, at this epoch.
    pub record: Option<Epoch>,
    /// We gave it to the peer at this epoch, unconfirmed.
    pub give: Option<Epoch>,
    /// We released it at this epoch, unconfirmed.
    pub released: Option<Epoch>,
    /// We took it alone at this epoch, not yet resynced.
    pub taken: Option<Epoch>,
}

impl ExtentEntry {
    fn is_empty(&self) -> bool {
        *self == ExtentEntry::default()
    }

    fn fields(&self) -> [(u8, Option<Epoch>); 5] {
        [
            (PRESENT_OWN, self.own),
            (PRESENT_RECORD, self.record),
            (PRESENT_GIVE, self.give),
            (PRESENT_RELEASED, self.released),
            (PRESENT_TAKEN, self.taken),
        ]
    }

    fn encoded_len(&self) -> usize {
        8 + 1 + 8 * self.fields().iter().filter(|(_, e)| e.is_some()).count()
    }
}

/// A change of the file: the header, and the whole entry of every extent
/// whose entry may have changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClaimsDelta {
    /// The epoch counter.
    pub counter: Epoch,
    /// The outage generation.
    pub generation: u64,
    /// The detached flag.
    pub detached: bool,
    /// Per extent, its entry now (replacing the file's).
    pub entries: Vec<(Extent, ExtentEntry)>,
}

impl ClaimsDelta {
    /// Its size as a journal record.
    pub fn encoded_len(&self) -> usize {
        RECORD_FIXED_BYTES + self.entries.iter().map(|(_, e)| e.encoded_len()).sum::<usize>()
    }
}

/// One write of the claims file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimsWrite {
    /// Replace the file with a snapshot of these contents (atomically).
    Full(ClaimsFileContents),
    /// Append one journal record (and sync it).
    Delta(ClaimsDelta),
}

/// One field of an [`ExtentEntry`].
type EntryField = fn(&mut ExtentEntry) -> &mut Option<Epoch>;

/// The file's contents as a map, to replay a journal onto (and, in tests
/// and the simulator, to check that a journal says what a snapshot would).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClaimsState {
    counter: Epoch,
    generation: u64,
    detached: bool,
    entries: BTreeMap<Extent, ExtentEntry>,
}

impl ClaimsState {
    /// The state of `c`.
    pub fn from_contents(c: &ClaimsFileContents) -> ClaimsState {
        let mut s = ClaimsState { counter: c.counter, generation: c.generation, detached: c.detached, entries: BTreeMap::new() };
        let lists: [(&Vec<ExtentClaim>, EntryField); 5] = [
            (&c.own, |e| &mut e.own),
            (&c.record, |e| &mut e.record),
            (&c.gives, |e| &mut e.give),
            (&c.released, |e| &mut e.released),
            (&c.taken, |e| &mut e.taken),
        ];
        for (list, field) in lists {
            for claim in list {
                *field(s.entries.entry(claim.extent).or_default()) = Some(claim.epoch);
            }
        }
        s
    }

    /// Applies one change.
    pub fn apply(&mut self, d: &ClaimsDelta) {
        self.counter = d.counter;
        self.generation = d.generation;
        self.detached = d.detached;
        for (extent, entry) in &d.entries {
            if entry.is_empty() {
                self.entries.remove(extent);
            } else {
                self.entries.insert(*extent, *entry);
            }
        }
    }

    /// The contents it describes (lists sorted by extent).
    pub fn to_contents(&self) -> ClaimsFileContents {
        let mut c =
            ClaimsFileContents { counter: self.counter, generation: self.generation, detached: self.detached, ..Default::default() };
        for (&extent, e) in &self.entries {
            let lists: [(&mut Vec<ExtentClaim>, Option<Epoch>); 5] = [
                (&mut c.own, e.own),
                (&mut c.record, e.record),
                (&mut c.gives, e.give),
                (&mut c.released, e.released),
                (&mut c.taken, e.taken),
            ];
            for (list, epoch) in lists {
                if let Some(epoch) = epoch {
                    list.push(ExtentClaim { extent, epoch });
                }
            }
        }
        c
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
    /// A journal record before the last one is damaged.
    #[error("journal record at byte {at} is damaged")]
    Journal {
        /// Where it starts.
        at: usize,
    },
}

fn put_header(out: &mut Vec<u8>, counter: Epoch, generation: u64, detached: bool) {
    out.extend_from_slice(&counter.0.to_le_bytes());
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(&(if detached { FLAG_DETACHED } else { 0 }).to_le_bytes());
}

/// The snapshot body (without magic, length and checksum).
fn snapshot_body(c: &ClaimsFileContents) -> Vec<u8> {
    let entries = c.own.len() + c.record.len() + c.gives.len() + c.released.len() + c.taken.len();
    let mut out = Vec::with_capacity(HEADER_BYTES + 5 * 4 + ENTRY_BYTES * entries);
    put_header(&mut out, c.counter, c.generation, c.detached);
    for list in [&c.own, &c.record, &c.gives, &c.released, &c.taken] {
        out.extend_from_slice(&(list.len() as u32).to_le_bytes());
        for e in list {
            out.extend_from_slice(&e.extent.0.to_le_bytes());
            out.extend_from_slice(&e.epoch.0.to_le_bytes());
        }
    }
    out
}

/// The size of [`encode`]'s bytes for `c`.
pub fn encoded_len(c: &ClaimsFileContents) -> usize {
    let entries = c.own.len() + c.record.len() + c.gives.len() + c.released.len() + c.taken.len();
    8 + 4 + HEADER_BYTES + 5 * 4 + ENTRY_BYTES * entries + TRAILER_BYTES
}

/// A whole file: the snapshot of `c`, with an empty journal.
pub fn encode(c: &ClaimsFileContents) -> Vec<u8> {
    let body = snapshot_body(c);
    let mut out = Vec::with_capacity(8 + 4 + body.len() + TRAILER_BYTES);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// One journal record, to append to a file.
pub fn encode_delta(d: &ClaimsDelta) -> Vec<u8> {
    let mut body = Vec::with_capacity(d.encoded_len());
    put_header(&mut body, d.counter, d.generation, d.detached);
    body.extend_from_slice(&(d.entries.len() as u32).to_le_bytes());
    for (extent, e) in &d.entries {
        body.extend_from_slice(&extent.0.to_le_bytes());
        let present = e.fields().iter().filter(|(_, p)| p.is_some()).fold(0, |bits, (bit, _)| bits | bit);
        body.push(present);
        for (_, epoch) in e.fields() {
            if let Some(epoch) = epoch {
                body.extend_from_slice(&epoch.0.to_le_bytes());
            }
        }
    }
    let mut out = Vec::with_capacity(RECORD_HEADER_BYTES + body.len() + TRAILER_BYTES);
    let len = (body.len() as u32).to_le_bytes();
    out.extend_from_slice(RECORD_MAGIC);
    out.extend_from_slice(&len);
    out.extend_from_slice(&crc32c::crc32c(&len).to_le_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
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

    fn u8(&mut self) -> Result<u8, ClaimsFileCorrupt> {
        let byte = *self.body.get(self.at).ok_or(ClaimsFileCorrupt::Truncated)?;
        self.at += 1;
        Ok(byte)
    }

    fn flags(&mut self) -> Result<bool, ClaimsFileCorrupt> {
        let flags = self.u32()?;
        if flags & !FLAG_DETACHED != 0 {
            return Err(ClaimsFileCorrupt::Trailing);
        }
        Ok(flags & FLAG_DETACHED != 0)
    }

    fn list(&mut self) -> Result<Vec<ExtentClaim>, ClaimsFileCorrupt> {
        let n = self.u32()? as usize;
        if (self.body.len() - self.at) / ENTRY_BYTES < n {
            return Err(ClaimsFileCorrupt::Truncated);
        }
        (0..n).map(|_| Ok(ExtentClaim { extent: Extent(self.u64()?), epoch: Epoch(self.u64()?) })).collect()
    }

    fn done(&self) -> Result<(), ClaimsFileCorrupt> {
        if self.at == self.body.len() { Ok(()) } else { Err(ClaimsFileCorrupt::Trailing) }
    }
}

/// Parses a snapshot body of `version` (2 to 5).
fn decode_body(body: &[u8], version: u8) -> Result<ClaimsFileContents, ClaimsFileCorrupt> {
    let mut r = Reader { body, at: 0 };
    let mut c = ClaimsFileContents { counter: Epoch(r.u64()?), ..Default::default() };
    if version >= 4 {
        c.generation = r.u64()?;
        c.detached = r.flags()?;
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
    r.done()?;
    Ok(c)
}

/// Parses one journal record body.
fn decode_record(body: &[u8]) -> Result<ClaimsDelta, ClaimsFileCorrupt> {
    let mut r = Reader { body, at: 0 };
    let mut d = ClaimsDelta { counter: Epoch(r.u64()?), generation: r.u64()?, detached: r.flags()?, entries: Vec::new() };
    let n = r.u32()? as usize;
    if (body.len() - r.at) / (8 + 1) < n {
        return Err(ClaimsFileCorrupt::Truncated);
    }
    d.entries.reserve(n);
    for _ in 0..n {
        let extent = Extent(r.u64()?);
        let present = r.u8()?;
        if present & !(PRESENT_OWN | PRESENT_RECORD | PRESENT_GIVE | PRESENT_RELEASED | PRESENT_TAKEN) != 0 {
            return Err(ClaimsFileCorrupt::Trailing);
        }
        let mut epoch =
            |bit: u8| -> Result<Option<Epoch>, ClaimsFileCorrupt> { if present & bit != 0 { Ok(Some(Epoch(r.u64()?))) } else { Ok(None) } };
        let entry = ExtentEntry {
            own: epoch(PRESENT_OWN)?,
            record: epoch(PRESENT_RECORD)?,
            give: epoch(PRESENT_GIVE)?,
            released: epoch(PRESENT_RELEASED)?,
            taken: epoch(PRESENT_TAKEN)?,
        };
        d.entries.push((extent, entry));
    }
    r.done()?;
    Ok(d)
}

/// Parses and verifies a claims file of any version, replaying its journal.
pub fn decode(b: &[u8]) -> Result<ClaimsFileContents, ClaimsFileCorrupt> {
    decode_with_tail(b).map(|(c, _)| c)
}

/// [`decode`], also saying where a torn last journal record starts (it is
/// ignored: it was never reported durable).
pub fn decode_with_tail(b: &[u8]) -> Result<(ClaimsFileContents, Option<usize>), ClaimsFileCorrupt> {
    if b.len() < 8 || b.len() > CLAIMS_FILE_BYTES_MAX {
        return Err(ClaimsFileCorrupt::BadLength);
    }
    let old = match &b[..8] {
        m if m == MAGIC => None,
        m if m == MAGIC_V4 => Some(4),
        m if m == MAGIC_V3 => Some(3),
        m if m == MAGIC_V2 => Some(2),
        _ => return Err(ClaimsFileCorrupt::Magic),
    };
    if let Some(version) = old {
        // One snapshot with a trailing checksum over everything before it.
        if b.len() < 8 + 8 + 3 * 4 + TRAILER_BYTES || b.len() > SNAPSHOT_BYTES_MAX {
            return Err(ClaimsFileCorrupt::BadLength);
        }
        let (body, tail) = b.split_at(b.len() - TRAILER_BYTES);
        if crc32c::crc32c(body) != u32::from_le_bytes(tail.try_into().expect("4 bytes")) {
            return Err(ClaimsFileCorrupt::Checksum);
        }
        return decode_body(&body[8..], version).map(|c| (c, None));
    }
    let len = b.get(8..12).map(|w| u32::from_le_bytes(w.try_into().expect("4 bytes")) as usize).ok_or(ClaimsFileCorrupt::BadLength)?;
    let end = 12 + len;
    if len > SNAPSHOT_BYTES_MAX || b.len() < end + TRAILER_BYTES {
        return Err(ClaimsFileCorrupt::BadLength);
    }
    if crc32c::crc32c(&b[..end]) != u32::from_le_bytes(b[end..end + TRAILER_BYTES].try_into().expect("4 bytes")) {
        return Err(ClaimsFileCorrupt::Checksum);
    }
    let snapshot = decode_body(&b[12..end], 5)?;
    let mut state: Option<ClaimsState> = None;
    let mut at = end + TRAILER_BYTES;
    while at < b.len() {
        match record_at(&b[at..]) {
            Some((delta, len)) => {
                state.get_or_insert_with(|| ClaimsState::from_contents(&snapshot)).apply(&delta);
                at += len;
            }
            // Only the last append can have been cut short by a crash (each
            // is synced before the next): what does not check out is that
            // append if no whole record follows it, and damage if one does.
            None if (at + 1..b.len()).any(|q| record_at(&b[q..]).is_some()) => return Err(ClaimsFileCorrupt::Journal { at }),
            None => return Ok((state.map_or(snapshot, |s| s.to_contents()), Some(at))),
        }
    }
    Ok((state.map_or(snapshot, |s| s.to_contents()), None))
}

/// The whole, valid journal record at the start of `b` and its length.
fn record_at(b: &[u8]) -> Option<(ClaimsDelta, usize)> {
    if b.len() < RECORD_HEADER_BYTES || &b[..4] != RECORD_MAGIC {
        return None;
    }
    let len_bytes: [u8; 4] = b[4..8].try_into().expect("4 bytes");
    if crc32c::crc32c(&len_bytes) != u32::from_le_bytes(b[8..12].try_into().expect("4 bytes")) {
        return None;
    }
    let body_len = u32::from_le_bytes(len_bytes) as usize;
    let end = RECORD_HEADER_BYTES.checked_add(body_len)?.checked_add(TRAILER_BYTES)?;
    let body = b.get(RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + body_len)?;
    let crc = u32::from_le_bytes(b.get(end - TRAILER_BYTES..end)?.try_into().expect("4 bytes"));
    if crc32c::crc32c(body) != crc {
        return None;
    }
    decode_record(body).ok().map(|d| (d, end))
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

    /// The bytes of `c` in format 4 (a snapshot with a trailing checksum).
    fn v4(c: &ClaimsFileContents) -> Vec<u8> {
        let mut out = MAGIC_V4.to_vec();
        out.extend_from_slice(&snapshot_body(c));
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// The first record of [`journaled`]: extent 1's entry removed, 20 taken alone.
    fn first_delta() -> ClaimsDelta {
        ClaimsDelta {
            counter: Epoch(50),
            generation: 3,
            detached: true,
            entries: vec![
                (Extent(1), ExtentEntry::default()),
                (Extent(20), ExtentEntry { own: Some(Epoch(50)), taken: Some(Epoch(50)), ..Default::default() }),
            ],
        }
    }

    /// A journal of two records onto `sample()`.
    fn journaled() -> (Vec<u8>, ClaimsFileContents) {
        let mut state = ClaimsState::from_contents(&sample());
        let mut bytes = encode(&sample());
        let deltas = [
            first_delta(),
            ClaimsDelta {
                counter: Epoch(51),
                generation: 4,
                detached: false,
                entries: vec![(Extent(9), ExtentEntry { record: Some(Epoch(51)), ..Default::default() })],
            },
        ];
        for d in &deltas {
            let record = encode_delta(d);
            assert_eq!(record.len(), d.encoded_len());
            bytes.extend_from_slice(&record);
            state.apply(d);
        }
        (bytes, state.to_contents())
    }

    #[test]
    fn a_journal_replays_onto_its_snapshot() {
        let (bytes, expected) = journaled();
        let got = decode(&bytes).unwrap();
        assert_eq!(got, expected);
        assert_eq!(got.own, vec![claim(12, 43), claim(20, 50)], "extent 1's entry was removed, 20's added");
        assert_eq!(got.record, vec![claim(7, 41), claim(9, 51)]);
        assert!(got.gives.is_empty(), "extent 9's whole entry was replaced: its give is gone");
        assert_eq!((got.counter, got.generation, got.detached), (Epoch(51), 4, false));
    }

    #[test]
    fn a_torn_last_record_is_ignored_and_damage_before_it_refused() {
        let (bytes, _) = journaled();
        let first_record_end = encode(&sample()).len() + encode_delta(&first_delta()).len();
        let mut after_first = ClaimsState::from_contents(&sample());
        after_first.apply(&decode_record_at(&bytes, encode(&sample()).len()));
        for cut in first_record_end + 1..bytes.len() {
            let (c, torn) = decode_with_tail(&bytes[..cut]).unwrap();
            assert_eq!((c, torn), (after_first.to_contents(), Some(first_record_end)), "cut at {cut}");
        }
        // Zeroes where the last record should be (a file extended, never written).
        let mut zeroed = bytes.clone();
        zeroed[first_record_end..].fill(0);
        assert_eq!(decode(&zeroed).unwrap(), after_first.to_contents());
        // A bit flipped in the last record's body: torn; in the first: damage.
        let mut last = bytes.clone();
        *last.last_mut().unwrap() ^= 1;
        assert_eq!(decode(&last).unwrap(), after_first.to_contents());
        for i in encode(&sample()).len()..first_record_end {
            let mut first = bytes.clone();
            first[i] ^= 1;
            assert!(matches!(decode(&first), Err(ClaimsFileCorrupt::Journal { .. })), "a flip at byte {i} of the first record");
        }
        // The last append landed out of order: its end is there, its start not.
        let mut out_of_order = bytes.clone();
        out_of_order[first_record_end..first_record_end + 8].fill(0);
        assert_eq!(decode(&out_of_order).unwrap(), after_first.to_contents());
    }

    fn decode_record_at(bytes: &[u8], at: usize) -> ClaimsDelta {
        record_at(&bytes[at..]).unwrap().0
    }

    #[test]
    fn state_and_contents_round_trip() {
        assert_eq!(ClaimsState::from_contents(&sample()).to_contents(), sample());
    }

    #[test]
    fn contents_round_trip() {
        assert_eq!(decode(&encode(&sample())).unwrap(), sample());
        assert_eq!(encode(&sample()).len(), encoded_len(&sample()));
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
    fn files_of_versions_2_3_and_4_are_read() {
        assert_eq!(decode(&v4(&sample())).unwrap(), sample());
        let v3 = ClaimsFileContents { generation: 0, taken: vec![], detached: false, ..sample() };
        assert_eq!(decode(&older(&v3, MAGIC_V3, true)).unwrap(), v3);
        let v2 = ClaimsFileContents { released: vec![], ..v3 };
        assert_eq!(decode(&older(&v2, MAGIC_V2, false)).unwrap(), v2);
    }

    #[test]
    fn unknown_flags_are_refused() {
        let mut bytes = encode(&ClaimsFileContents::default());
        bytes[28] = 2;
        let len = bytes.len();
        let crc = crc32c::crc32c(&bytes[..len - 4]);
        bytes[len - 4..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&bytes), Err(ClaimsFileCorrupt::Trailing));
    }

    #[test]
    fn a_huge_count_is_refused_without_allocating() {
        let mut bytes = encode(&ClaimsFileContents::default());
        bytes[32..36].copy_from_slice(&u32::MAX.to_le_bytes());
        let len = bytes.len();
        let crc = crc32c::crc32c(&bytes[..len - 4]);
        bytes[len - 4..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&bytes), Err(ClaimsFileCorrupt::Truncated));
    }
}
