//! The host writes a volume keeps in memory for its copy stream: the copy
//! sender takes a block from here while it is still here, and reads it back
//! from the store only when it fell out (issue "the data path's CPU cost":
//! no `pread`, no zero-filled buffer, no page faults per copied block).
//!
//! What is kept must equal what the store holds, or the peer would get
//! other bytes than this site serves. Two writes to one block in flight at
//! once may land in either order, so a block's data is kept only when one
//! write alone covered it from start to end: every store write, whatever
//! its source, first marks the blocks it touches as being written
//! ([`RecentWrites::begin`]); when it ends ([`RecentWrites::end`]) a block
//! gets that write's bytes only if no other write touched it meanwhile and
//! the write covered it whole; otherwise the block is forgotten (and read
//! from the store). The store write completes before `end`, and the core
//! learns of a host write (and queues its blocks for copying) only after
//! `end`, so a copy read finds either the bytes the store holds or nothing.
//!
//! Bounded by a volume's share of [`RECENT_WRITES_BYTES`], counting each kept
//! write's whole buffer for as long as one of its blocks is kept (that is
//! the memory held): past it the oldest writes are forgotten first. Blocks
//! the copy stream sends are forgotten then, whether taken from here or
//! read back from the store, so what stays is only what is still to send.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use bytes::{Bytes, BytesMut};

use crate::limits::RECENT_WRITES_BYTES;

type Blocks<V> = HashMap<u64, V, foldhash::fast::FixedState>;

/// The writes kept in memory for one volume's copy stream.
pub struct RecentWrites {
    block: u64,
    capacity: u64,
    state: Mutex<State>,
}

/// The blocks a store write touches, from [`RecentWrites::begin`] to
/// [`Writing::end`] (or its drop: the blocks are forgotten).
#[must_use = "a write that is not ended keeps nothing"]
pub struct Writing<'a> {
    recent: &'a RecentWrites,
    offset: u64,
    length: u64,
    ended: bool,
}

impl Writing<'_> {
    /// The write ended. With `data` (the bytes it wrote, which the store
    /// now holds), the blocks it alone covered whole are kept.
    pub fn end(mut self, data: Option<&Bytes>) {
        self.ended = true;
        self.recent.end(self.offset, self.length, data);
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.recent.end(self.offset, self.length, None);
        }
    }
}

#[derive(Default)]
struct State {
    blocks: Blocks<Slot>,
    /// Kept writes, oldest first; `stamps` numbers them consecutively.
    kept: VecDeque<Kept>,
    /// The stamp of `kept[0]`.
    first_stamp: u64,
    /// Bytes of the buffers of the writes with a block kept.
    bytes: u64,
}

enum Slot {
    /// Writes in flight touch the block; `overlapped` once two did at once.
    Writing { writers: u32, overlapped: bool },
    /// The block is `data[at..][..block]`, kept by write `stamp`.
    Kept { data: Bytes, at: u64, stamp: u64 },
}

struct Kept {
    first: u64,
    count: u64,
    /// The write's buffer, held while a block of it is kept.
    bytes: u64,
    /// Its blocks still kept (others were overwritten or taken, or never
    /// kept: touched by another write meanwhile).
    live: u64,
}

impl RecentWrites {
    /// An empty buffer for blocks of `block` bytes, for one of `volumes`
    /// volumes sharing the node's [`RECENT_WRITES_BYTES`].
    pub fn new(block: u64, volumes: usize) -> Self {
        Self::with_capacity(block, RECENT_WRITES_BYTES / volumes.max(1) as u64)
    }

    /// An empty buffer of at most `capacity` bytes.
    pub fn with_capacity(block: u64, capacity: u64) -> Self {
        assert!(block > 0, "blocks have a size");
        RecentWrites { block, capacity, state: Mutex::new(State::default()) }
    }

    fn span(&self, offset: u64, length: u64) -> std::ops::Range<u64> {
        offset / self.block..(offset + length).div_ceil(self.block)
    }

    /// A store write of `length` bytes at `offset` starts.
    pub fn begin(&self, offset: u64, length: u64) -> Writing<'_> {
        let mut s = self.state.lock().expect("recent writes lock");
        for b in self.span(offset, length) {
            match s.blocks.get_mut(&b) {
                Some(Slot::Writing { writers, overlapped }) => {
                    *writers += 1;
                    *overlapped = true;
                }
                Some(Slot::Kept { .. }) => {
                    s.forget(b);
                    s.blocks.insert(b, Slot::Writing { writers: 1, overlapped: false });
                }
                None => {
                    s.blocks.insert(b, Slot::Writing { writers: 1, overlapped: false });
                }
            }
        }
        Writing { recent: self, offset, length, ended: false }
    }

    fn end(&self, offset: u64, length: u64, data: Option<&Bytes>) {
        debug_assert!(data.is_none_or(|d| d.len() as u64 == length), "the data is the write's");
        let mut s = self.state.lock().expect("recent writes lock");
        let stamp = s.first_stamp + s.kept.len() as u64;
        let (mut first_kept, mut last_kept, mut kept) = (None, 0, 0);
        for b in self.span(offset, length) {
            let Some(slot) = s.blocks.get_mut(&b) else {
                debug_assert!(false, "block {b} was begun");
                continue;
            };
            let Slot::Writing { writers, overlapped } = slot else {
                debug_assert!(false, "block {b} was begun");
                continue;
            };
            *writers -= 1;
            if *writers > 0 {
                continue;
            }
            let alone = !*overlapped;
            let start = b * self.block;
            let whole = start >= offset && start + self.block <= offset + length;
            match data {
                Some(data) if alone && whole => {
                    *slot = Slot::Kept { data: data.clone(), at: start - offset, stamp };
                    first_kept.get_or_insert(b);
                    last_kept = b;
                    kept += 1;
                }
                _ => {
                    s.blocks.remove(&b);
                }
            }
        }
        if let (Some(first), Some(data)) = (first_kept, data) {
            let bytes = data.len() as u64;
            s.kept.push_back(Kept { first, count: last_kept + 1 - first, bytes, live: kept });
            s.bytes += bytes;
            while s.bytes > self.capacity {
                s.evict_oldest();
            }
        }
    }

    /// The blocks of `length` bytes at `offset` (whole blocks), if every
    /// one is kept; they are forgotten here.
    pub fn take(&self, offset: u64, length: u64) -> Option<Bytes> {
        if !offset.is_multiple_of(self.block) || !length.is_multiple_of(self.block) || length == 0 {
            return None;
        }
        let mut s = self.state.lock().expect("recent writes lock");
        let span = self.span(offset, length);
        // One buffer, consecutive: a slice of it, no copy.
        let mut single: Option<(Bytes, u64)> = None;
        let mut contiguous = true;
        for (i, b) in span.clone().enumerate() {
            let Some(Slot::Kept { data, at, .. }) = s.blocks.get(&b) else { return None };
            match &single {
                None => single = Some((data.clone(), *at)),
                Some((d, first_at)) => {
                    contiguous &= d.as_ptr() == data.as_ptr() && *at == first_at + i as u64 * self.block;
                }
            }
        }
        let bytes = match single {
            Some((data, at)) if contiguous => data.slice(at as usize..(at + length) as usize),
            _ => {
                let mut out = BytesMut::with_capacity(length as usize);
                for b in span.clone() {
                    let Some(Slot::Kept { data, at, .. }) = s.blocks.get(&b) else { unreachable!("checked above") };
                    let start = *at as usize;
                    out.extend_from_slice(&data[start..start + self.block as usize]);
                }
                out.freeze()
            }
        };
        for b in span {
            s.forget(b);
        }
        Some(bytes)
    }

    /// Forgets whatever is kept of `length` bytes at `offset` (the copy
    /// stream read them back from the store: they are on their way).
    pub fn discard(&self, offset: u64, length: u64) {
        let mut s = self.state.lock().expect("recent writes lock");
        for b in self.span(offset, length) {
            s.forget(b);
        }
    }

    /// Bytes of the buffers held now (of the writes with a block kept).
    pub fn bytes(&self) -> u64 {
        self.state.lock().expect("recent writes lock").bytes
    }
}

impl State {
    /// Forgets the kept block `b` (overwritten or taken); a write's buffer
    /// stops counting with its last kept block.
    fn forget(&mut self, b: u64) {
        let Some(Slot::Kept { stamp, .. }) = self.blocks.get(&b) else { return };
        let i = (stamp - self.first_stamp) as usize;
        self.blocks.remove(&b);
        let kept = &mut self.kept[i];
        kept.live -= 1;
        if kept.live == 0 {
            self.bytes -= kept.bytes;
        }
        while self.kept.front().is_some_and(|k| k.live == 0) {
            self.kept.pop_front();
            self.first_stamp += 1;
        }
    }

    fn evict_oldest(&mut self) {
        let Some(oldest) = self.kept.pop_front() else { return };
        let stamp = self.first_stamp;
        self.first_stamp += 1;
        for b in oldest.first..oldest.first + oldest.count {
            if matches!(self.blocks.get(&b), Some(Slot::Kept { stamp: s, .. }) if *s == stamp) {
                self.blocks.remove(&b);
            }
        }
        if oldest.live > 0 {
            self.bytes -= oldest.bytes;
        }
        while self.kept.front().is_some_and(|k| k.live == 0) {
            self.kept.pop_front();
            self.first_stamp += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: u64 = 4096;

    fn data(byte: u8, blocks: u64) -> Bytes {
        Bytes::from(vec![byte; (blocks * B) as usize])
    }

    fn write(r: &RecentWrites, offset: u64, d: &Bytes) {
        r.begin(offset, d.len() as u64).end(Some(d));
    }

    #[test]
    fn a_write_alone_is_taken_once_without_a_copy() {
        let r = RecentWrites::new(B, 1);
        let d = data(7, 4);
        write(&r, 8 * B, &d);
        assert_eq!(r.bytes(), 4 * B);
        let got = r.take(9 * B, 2 * B).expect("kept");
        assert_eq!(got, d.slice(B as usize..3 * B as usize));
        assert_eq!(got.as_ptr(), d[B as usize..].as_ptr(), "a slice of the write, not a copy");
        assert!(r.take(9 * B, B).is_none(), "taken blocks are forgotten");
        assert_eq!(r.take(8 * B, B).as_deref(), Some(&d[..B as usize]), "the rest stays");
        assert_eq!(r.bytes(), 4 * B, "the write's buffer is held while a block of it is kept");
        r.discard(10 * B, 4 * B);
        assert_eq!(r.bytes(), 0, "its last block was discarded");
        assert!(r.take(11 * B, B).is_none());
    }

    #[test]
    fn blocks_of_two_writes_are_joined() {
        let r = RecentWrites::new(B, 1);
        write(&r, 0, &data(1, 1));
        write(&r, B, &data(2, 1));
        let got = r.take(0, 2 * B).expect("kept");
        assert!(got[..B as usize].iter().all(|&b| b == 1) && got[B as usize..].iter().all(|&b| b == 2));
    }

    #[test]
    fn the_later_of_two_writes_in_sequence_wins() {
        let r = RecentWrites::new(B, 1);
        write(&r, 0, &data(1, 2));
        write(&r, B, &data(2, 1));
        assert_eq!(r.take(B, B), Some(data(2, 1)));
        assert_eq!(r.take(0, B), Some(data(1, 1)));
        assert_eq!(r.bytes(), 0);
    }

    /// Overlapping writes in flight at once may land in either order: the
    /// block is not kept, whichever ends last (the store decides).
    #[test]
    fn overlapping_writes_in_flight_keep_nothing() {
        for second_ends_first in [false, true] {
            let r = RecentWrites::new(B, 1);
            let (d1, d2) = (data(1, 1), data(2, 1));
            let w1 = r.begin(0, B);
            let w2 = r.begin(0, B);
            if second_ends_first {
                w2.end(Some(&d2));
                w1.end(Some(&d1));
            } else {
                w1.end(Some(&d1));
                w2.end(Some(&d2));
            }
            assert!(r.take(0, B).is_none(), "second ends first: {second_ends_first}");
            assert_eq!(r.bytes(), 0);
        }
    }

    #[test]
    fn a_write_without_data_or_partial_blocks_forgets_them() {
        let r = RecentWrites::new(B, 1);
        write(&r, 0, &data(1, 3));
        // A trim (no data) of block 0, a partial write in block 1.
        r.begin(0, B).end(None);
        let partial = Bytes::from(vec![9u8; 100]);
        r.begin(B + 10, 100).end(Some(&partial));
        assert!(r.take(0, B).is_none());
        assert!(r.take(B, B).is_none());
        assert_eq!(r.take(2 * B, B), Some(data(1, 1)));
        // An unaligned write keeps the blocks it covers whole.
        let d = Bytes::from(vec![5u8; (2 * B) as usize]);
        r.begin(4 * B + 1, 2 * B).end(Some(&d));
        assert!(r.take(4 * B, B).is_none() && r.take(6 * B, B).is_none());
        assert_eq!(r.take(5 * B, B), Some(Bytes::from(vec![5u8; B as usize])));
    }

    #[test]
    fn the_oldest_writes_fall_out_at_the_limit() {
        let r = RecentWrites::with_capacity(B, 4 * B);
        for i in 0..6u64 {
            write(&r, i * B, &data(i as u8, 1));
        }
        assert_eq!(r.bytes(), 4 * B);
        assert!(r.take(0, B).is_none() && r.take(B, B).is_none(), "the two oldest fell out");
        for i in 2..6u64 {
            assert_eq!(r.take(i * B, B), Some(data(i as u8, 1)));
        }
        // A write's whole buffer counts while one of its blocks is kept:
        // one block overwritten, the other three still hold all four.
        write(&r, 0, &data(1, 4));
        assert_eq!(r.bytes(), 4 * B);
        write(&r, 0, &data(2, 1));
        assert_eq!(r.bytes(), B, "4 + 1 blocks' buffers exceed 4: the older write fell out whole");
        assert!(r.take(B, B).is_none());
        assert_eq!(r.take(0, B), Some(data(2, 1)));
    }

    #[test]
    fn volumes_share_the_node_budget() {
        let volumes = 4;
        let r = RecentWrites::new(B, volumes);
        let share = RECENT_WRITES_BYTES / volumes as u64;
        let one = data(1, 1);
        for i in 0..=share / B {
            write(&r, i * B, &one);
        }
        assert_eq!(r.bytes(), share);
        assert!(r.take(0, B).is_none(), "the oldest fell out at the volume's share");
        assert!(r.take(B, B).is_some());
    }

    #[test]
    fn a_write_dropped_before_its_end_keeps_nothing_and_blocks_nothing() {
        let r = RecentWrites::new(B, 1);
        write(&r, 0, &data(1, 1));
        drop(r.begin(0, B));
        assert!(r.take(0, B).is_none());
        write(&r, 0, &data(2, 1));
        assert_eq!(r.take(0, B), Some(data(2, 1)), "the block is kept again by the next write");
    }

    #[test]
    fn unaligned_or_empty_takes_find_nothing() {
        let r = RecentWrites::new(B, 1);
        write(&r, 0, &data(1, 2));
        assert!(r.take(1, B).is_none());
        assert!(r.take(0, B + 1).is_none());
        assert!(r.take(0, 0).is_none());
    }

    /// Writes in flight that land in the store in any order, interleaved
    /// with the core's writes (no data kept) and takes: whatever a take
    /// returns equals what the store holds at that moment.
    mod model {
        use super::*;
        use proptest::prelude::*;

        const BLOCKS: u64 = 16;

        struct InFlight<'a> {
            first: u64,
            count: u64,
            data: Bytes,
            landed: bool,
            writing: Writing<'a>,
        }

        fn check(r: &RecentWrites, store: &[u8], first: u64, count: u64) -> Result<(), TestCaseError> {
            if let Some(got) = r.take(first * B, count * B) {
                let want = &store[(first * B) as usize..((first + count) * B) as usize];
                prop_assert!(&got[..] == want, "blocks {}+{} taken differ from the store", first, count);
            }
            Ok(())
        }

        proptest! {
            #[test]
            fn what_is_taken_is_what_the_store_holds(actions in proptest::collection::vec((0u8..5, any::<u8>(), any::<u8>()), 1..200)) {
                let r = RecentWrites::with_capacity(B, 8 * B);
                let mut store = vec![0u8; (BLOCKS * B) as usize];
                let mut inflight: Vec<InFlight<'_>> = Vec::new();
                let mut next = 1u8;
                for (kind, a, b) in actions {
                    let first = u64::from(a) % BLOCKS;
                    let count = (1 + u64::from(b) % 4).min(BLOCKS - first);
                    match kind {
                        0 => {
                            let writing = r.begin(first * B, count * B);
                            let data = Bytes::from(vec![next; (count * B) as usize]);
                            next = next.wrapping_add(1).max(1);
                            inflight.push(InFlight { first, count, data, landed: false, writing });
                        }
                        1 | 2 if !inflight.is_empty() => {
                            let i = usize::from(a) % inflight.len();
                            let w = &mut inflight[i];
                            if !w.landed {
                                store[(w.first * B) as usize..((w.first + w.count) * B) as usize].copy_from_slice(&w.data);
                                w.landed = true;
                            }
                            if kind == 2 {
                                let w = inflight.remove(i);
                                w.writing.end(Some(&w.data));
                            }
                        }
                        3 => check(&r, &store, first, count)?,
                        4 => {
                            // The core's write (peer data, a trim): nothing kept.
                            let writing = r.begin(first * B, count * B);
                            store[(first * B) as usize..((first + count) * B) as usize].fill(0xee);
                            writing.end(None);
                        }
                        _ => {}
                    }
                }
                for w in inflight.drain(..) {
                    if !w.landed {
                        store[(w.first * B) as usize..((w.first + w.count) * B) as usize].copy_from_slice(&w.data);
                    }
                    w.writing.end(Some(&w.data));
                }
                for b in 0..BLOCKS {
                    check(&r, &store, b, 1)?;
                }
            }
        }
    }
}
