//! Copy tracking of one owned extent: which of its blocks were written and
//! not yet sent, and which were sent and are not yet durable at the peer.
//!
//! Memory is bounded by extents, not blocks: two bitmaps per owned extent
//! that has such blocks (64 bytes for a 1 MiB extent of 4 KiB blocks), freed
//! as soon as the extent is clean. A block rewritten while its copy is in
//! flight is both unsent and in flight: it is sent again, and stays
//! not-durable until the newer copy is durable.
//!
//! Precision: the peer reports durability by copy message; the in-flight
//! bits of an extent are cleared when the newest message that carried any
//! of its blocks is durable. While an extent is being rewritten continuously
//! this counts a few blocks as not durable for one round trip longer than
//! they are (never the reverse).

use fixedbitset::FixedBitSet;
use geomirror_wire::peer::CopySeq;

/// The written blocks of one owned extent not yet durable at the peer.
#[derive(Clone, Debug)]
pub struct Dirt {
    /// Written since they were last taken by the copy stream.
    unsent: FixedBitSet,
    /// Taken by the copy stream, not yet reported durable.
    inflight: FixedBitSet,
    /// The newest copy message that carried blocks of this extent.
    last_seq: CopySeq,
    /// Whether the extent is in the copy stream's queue.
    pub queued: bool,
}

/// Changes of the volume-wide counters caused by one operation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CountDelta {
    /// Change of blocks not yet sent.
    pub unsent: i64,
    /// Change of blocks not yet durable at the peer.
    pub not_durable: i64,
}

impl Dirt {
    /// No block dirty, for an extent of `blocks` blocks.
    pub fn new(blocks: usize) -> Dirt {
        Dirt {
            unsent: FixedBitSet::with_capacity(blocks),
            inflight: FixedBitSet::with_capacity(blocks),
            last_seq: CopySeq(0),
            queued: false,
        }
    }

    /// Marks blocks `first..end` (indexes within the extent) written.
    pub fn mark(&mut self, first: usize, end: usize) -> CountDelta {
        let mut delta = CountDelta::default();
        for b in first..end {
            if !self.unsent.put(b) {
                delta.unsent += 1;
                if !self.inflight.contains(b) {
                    delta.not_durable += 1;
                }
            }
        }
        delta
    }

    /// Whether any block waits to be sent.
    pub fn has_unsent(&self) -> bool {
        !self.unsent.is_clear()
    }

    /// Whether any of blocks `first..end` waits to be sent.
    pub fn has_unsent_between(&self, first: usize, end: usize) -> bool {
        first < end && self.unsent.count_ones(first..end) > 0
    }

    /// Whether nothing is left to send or to confirm.
    pub fn is_clean(&self) -> bool {
        self.unsent.is_clear() && self.inflight.is_clear()
    }

    /// Blocks not yet sent.
    pub fn unsent_count(&self) -> u64 {
        self.unsent.count_ones(..) as u64
    }

    /// Blocks not yet durable at the peer.
    pub fn not_durable_count(&self) -> u64 {
        self.unsent.union_count(&self.inflight) as u64
    }

    /// Takes up to `max_runs` runs of unsent blocks, `max_blocks` blocks in
    /// all, lowest first, for copy message `seq`: they move to in flight.
    /// Returns `(first, count)` pairs of indexes within the extent.
    pub fn take_runs(&mut self, max_blocks: u64, max_runs: usize, seq: CopySeq) -> (Vec<(usize, usize)>, CountDelta) {
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for (taken, b) in self.unsent.ones().enumerate() {
            if taken as u64 == max_blocks {
                break;
            }
            let full = runs.len() == max_runs;
            match runs.last_mut() {
                Some((first, count)) if *first + *count == b => *count += 1,
                _ if full => break,
                _ => runs.push((b, 1)),
            }
        }
        let mut delta = CountDelta::default();
        for &(first, count) in &runs {
            for b in first..first + count {
                self.unsent.set(b, false);
                delta.unsent -= 1;
                // A block already in flight is counted once either way.
                self.inflight.insert(b);
            }
        }
        if !runs.is_empty() {
            self.last_seq = seq;
        }
        (runs, delta)
    }

    /// Blocks `first..end` go out now in copy message `seq` with data that
    /// is not read back from the store (a write of a sync mode sends its
    /// own buffer): they are in flight, and no longer unsent (that data
    /// replaces any earlier write of theirs still waiting to be sent).
    pub fn take_range(&mut self, first: usize, end: usize, seq: CopySeq) -> CountDelta {
        let mut delta = CountDelta::default();
        for b in first..end {
            let was_unsent = self.unsent.contains(b);
            let was_inflight = self.inflight.put(b);
            if was_unsent {
                self.unsent.set(b, false);
                delta.unsent -= 1;
            } else if !was_inflight {
                delta.not_durable += 1;
            }
        }
        if first < end {
            self.last_seq = seq;
        }
        delta
    }

    /// The peer reports copies up to `durable` durable: if that covers the
    /// newest message carrying this extent, nothing of it is in flight.
    pub fn on_durable(&mut self, durable: CopySeq) -> CountDelta {
        if self.last_seq > durable || self.inflight.is_clear() {
            return CountDelta::default();
        }
        let freed = self.inflight.difference_count(&self.unsent) as i64;
        self.inflight.clear();
        CountDelta { unsent: 0, not_durable: -freed }
    }

    /// A new session: copies in flight are lost with the old one, so their
    /// blocks are unsent again.
    pub fn requeue_inflight(&mut self) -> CountDelta {
        let back = self.inflight.difference_count(&self.unsent) as i64;
        self.unsent.union_with(&self.inflight);
        self.inflight.clear();
        self.last_seq = CopySeq(0);
        CountDelta { unsent: back, not_durable: 0 }
    }

    /// Every block not yet durable at the peer, as `(first, count)` runs of
    /// indexes within the extent (what a handover must carry).
    pub fn not_durable_runs(&self) -> Vec<(usize, usize)> {
        let mut all = self.unsent.clone();
        all.union_with(&self.inflight);
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for b in all.ones() {
            match runs.last_mut() {
                Some((first, count)) if *first + *count == b => *count += 1,
                _ => runs.push((b, 1)),
            }
        }
        runs
    }

    /// Heap and inline bytes this tracking costs.
    pub fn footprint_bytes(&self) -> usize {
        std::mem::size_of::<Dirt>() + (self.unsent.as_slice().len() + self.inflight.as_slice().len()) * std::mem::size_of::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_rewritten_while_in_flight_stays_not_durable() {
        let mut d = Dirt::new(8);
        assert_eq!(d.mark(0, 2), CountDelta { unsent: 2, not_durable: 2 });
        let (runs, delta) = d.take_runs(8, 4, CopySeq(1));
        assert_eq!((runs, delta), (vec![(0, 2)], CountDelta { unsent: -2, not_durable: 0 }));
        assert_eq!(d.mark(1, 2), CountDelta { unsent: 1, not_durable: 0 }, "block 1 is in flight: still one not-durable block");
        let (runs, _) = d.take_runs(8, 4, CopySeq(2));
        assert_eq!(runs, vec![(1, 1)]);
        assert_eq!(d.on_durable(CopySeq(1)), CountDelta::default(), "message 2 still carries blocks of the extent");
        assert_eq!(d.not_durable_count(), 2);
        assert_eq!(d.on_durable(CopySeq(2)), CountDelta { unsent: 0, not_durable: -2 });
        assert!(d.is_clean());
    }

    #[test]
    fn a_range_sent_with_its_own_data_replaces_what_waited_to_be_sent() {
        let mut d = Dirt::new(8);
        d.mark(0, 2);
        d.take_runs(8, 8, CopySeq(1));
        d.mark(3, 4);
        // Blocks 1 (in flight), 2 (clean), 3 (unsent) go out in copy 2.
        assert_eq!(d.take_range(1, 4, CopySeq(2)), CountDelta { unsent: -1, not_durable: 1 });
        assert!(!d.has_unsent());
        assert_eq!(d.not_durable_count(), 4);
        assert_eq!(d.on_durable(CopySeq(1)), CountDelta::default(), "copy 2 still carries blocks of the extent");
        assert_eq!(d.on_durable(CopySeq(2)), CountDelta { unsent: 0, not_durable: -4 });
        assert!(d.is_clean());
    }

    #[test]
    fn runs_respect_both_limits() {
        let mut d = Dirt::new(64);
        d.mark(0, 3);
        d.mark(5, 6);
        d.mark(10, 20);
        let (runs, _) = d.take_runs(6, 8, CopySeq(1));
        assert_eq!(runs, vec![(0, 3), (5, 1), (10, 2)]);
        let (runs, _) = d.take_runs(100, 1, CopySeq(2));
        assert_eq!(runs, vec![(12, 8)]);
        assert!(!d.has_unsent());
    }

    #[test]
    fn a_new_session_sends_in_flight_blocks_again() {
        let mut d = Dirt::new(8);
        d.mark(2, 4);
        d.take_runs(8, 8, CopySeq(1));
        d.mark(3, 5);
        assert_eq!(d.requeue_inflight(), CountDelta { unsent: 1, not_durable: 0 });
        assert_eq!(d.unsent_count(), 3);
        assert_eq!(d.not_durable_runs(), vec![(2, 3)]);
    }

    #[test]
    fn tracking_a_fully_dirty_megabyte_extent_costs_under_a_kilobyte() {
        let mut d = Dirt::new(256);
        d.mark(0, 256);
        d.take_runs(128, 64, CopySeq(1));
        assert!(d.footprint_bytes() <= 1024, "{} bytes", d.footprint_bytes());
    }
}
