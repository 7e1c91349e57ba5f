//! The claims state machine of one volume at one node: pure logic, no I/O.
//!
//! It holds, per extent, who may hold writes the other has not received
//! (own claims and the claims record), the epoch counter, and the copy
//! stream's block tracking (not sent, sent, durable at the peer). The async
//! layer (`claims::Replica`) feeds it events — host writes, peer messages,
//! copy progress, timer ticks — and carries out what it answers: send a
//! claim, persist the record before replying, read blocks for a handover.
//!
//! Invariants (DESIGN.md section 3), asserted by the tests of this module:
//! - an extent is in at most one of own claims and the claims record;
//! - writes are admitted only to owned extents that are not being handed out;
//! - an extent is released only when none of its blocks is un-durable at the
//!   peer and no write to it is in flight;
//! - messages for an older epoch never undo a newer state;
//! - owned extents never exceed the limit, except for extents adopted at
//!   session start (which the peer already records as ours).

use std::collections::{HashMap, VecDeque};
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use geomirror_wire::peer::{BlockIndex, ClaimOutcome, Epoch, Extent, ExtentClaim};

/// Sizes of a volume, in the units the state machine counts.
#[derive(Clone, Copy, Debug)]
pub struct Geometry {
    /// Bytes per block.
    pub block_bytes: u64,
    /// Bytes per extent.
    pub extent_bytes: u64,
    /// Volume size in bytes.
    pub size: u64,
}

impl Geometry {
    /// Blocks in one extent.
    pub fn blocks_per_extent(&self) -> u64 {
        self.extent_bytes / self.block_bytes
    }
    /// Extents in the volume.
    pub fn extents(&self) -> u64 {
        self.size.div_ceil(self.extent_bytes)
    }
    /// The extent holding a block.
    pub fn extent_of(&self, block: BlockIndex) -> Extent {
        Extent(block.0 / self.blocks_per_extent())
    }
    /// Extents touched by a byte range (length > 0).
    pub fn extents_of(&self, offset: u64, length: u64) -> RangeInclusive<u64> {
        offset / self.extent_bytes..=(offset + length - 1) / self.extent_bytes
    }
    /// Blocks touched by a byte range (length > 0).
    pub fn blocks_of(&self, offset: u64, length: u64) -> RangeInclusive<u64> {
        offset / self.block_bytes..=(offset + length - 1) / self.block_bytes
    }
    /// Blocks of an extent that lie inside the volume.
    pub fn blocks_in(&self, extent: Extent) -> std::ops::Range<u64> {
        let first = extent.0 * self.blocks_per_extent();
        let end = (first + self.blocks_per_extent()).min(self.size.div_ceil(self.block_bytes));
        first..end
    }
}

/// Knobs of the state machine, from the volume's config.
#[derive(Clone, Copy, Debug)]
pub struct Knobs {
    /// Most extents owned at once.
    pub max_owned: usize,
    /// Extents claimed ahead of a sequential stream.
    pub predict: u32,
    /// Idle time before a clean extent is released.
    pub release_after: Duration,
    /// Whether this node wins ties between concurrent claims.
    pub wins_ties: bool,
}

/// An extent this node owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owned {
    /// The ownership epoch.
    pub epoch: Epoch,
    /// Host writes admitted and not finished.
    pub inflight_writes: u32,
    /// Last admitted write (or the grant).
    pub last_write: Instant,
    /// The peer asked for it: new writes wait until it is handed out.
    pub handing_out: bool,
}

/// Per-extent ownership; an extent absent from the map is clean.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExtentState {
    /// Own claim: this node may hold writes the peer lacks.
    Owned(Owned),
    /// Our claim for it is in flight (we believe it is clean).
    Claiming,
    /// In our claims record: the peer may hold writes we lack.
    PeerOwned {
        /// The peer's epoch.
        epoch: Epoch,
    },
    /// In our claims record, and we asked the peer to hand it over.
    Acquiring {
        /// The peer's epoch.
        epoch: Epoch,
        /// We re-granted it to the peer after asking; a "not owner" answer
        /// to our request is then stale.
        regranted: bool,
    },
}

impl ExtentState {
    /// Whether the extent occupies one of our ownership slots.
    fn takes_slot(&self) -> bool {
        !matches!(self, ExtentState::PeerOwned { .. })
    }
}

/// What a host write must do before it may proceed.
#[derive(Debug, PartialEq, Eq)]
pub enum WriteAccess {
    /// All extents owned; the write is admitted (call [`ReplicaState::end_write`]).
    Admitted,
    /// Send this claim (first extent demanded, rest predicted); they are now `Claiming`.
    Claim(Vec<Extent>),
    /// Ask the peer to hand this extent over; it is now `Acquiring`.
    Handover(Extent),
    /// Another request is acting on the extent (or the limit is reached and
    /// nothing can be released yet): wait for a state change, then retry.
    Wait,
}

/// The owner's answer to a handover request.
#[derive(Debug, PartialEq, Eq)]
pub enum HandoverStep {
    /// We do not own it (the requester's view is stale).
    NotOwner,
    /// Writes to it are in flight; retry after they finish.
    WaitForWrites,
    /// Handed out: persist the record, read these blocks, reply.
    Give {
        /// The requester's new epoch.
        epoch: Epoch,
        /// Blocks not yet durable at the requester.
        blocks: Vec<BlockIndex>,
    },
}

/// Where a read of an extent is served from.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum ReadSource {
    /// Our store holds the newest data.
    Local,
    /// The peer may hold newer data: pull.
    Peer,
}

/// Tracking of one block written under our ownership and not yet durable at the peer.
#[derive(Clone, Copy, Debug)]
struct DirtyBlock {
    /// Sequence number of the newest write.
    latest: u64,
    /// In the unsent queue.
    queued: bool,
}

/// One copy message in flight: blocks and the write sequence each carried.
#[derive(Debug)]
struct InFlight {
    seq: u64,
    first: BlockIndex,
    labels: Vec<u64>,
}

/// A run of blocks to send on the copy stream.
#[derive(Debug, PartialEq, Eq)]
pub struct CopyRun {
    /// Stream sequence number.
    pub seq: u64,
    /// The extent.
    pub extent: Extent,
    /// Our epoch.
    pub epoch: Epoch,
    /// First block.
    pub first: BlockIndex,
    /// Number of blocks.
    pub count: u64,
}

/// Counters for metrics and status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Figures {
    /// Extents we own.
    pub owned_extents: usize,
    /// Extents in our claims record.
    pub peer_owned_extents: usize,
    /// Blocks written and not yet sent.
    pub unsent_blocks: usize,
    /// Blocks written and not yet durable at the peer.
    pub not_durable_blocks: usize,
    /// Of those, blocks the peer has received (in its memory) but not yet
    /// made durable.
    pub received_not_durable_blocks: usize,
}

/// The state of one volume's claims at one node.
pub struct ReplicaState {
    geometry: Geometry,
    knobs: Knobs,
    counter: Epoch,
    extents: HashMap<Extent, ExtentState>,
    slots_used: usize,
    peer_owned: usize,
    dirty: HashMap<BlockIndex, DirtyBlock>,
    not_durable: HashMap<Extent, u32>,
    queue: VecDeque<BlockIndex>,
    queued: usize,
    inflight: VecDeque<InFlight>,
    next_copy_seq: u64,
    /// Copies up to this sequence number are in the peer's memory.
    peer_received: u64,
    write_seq: u64,
    record_changed: bool,
    releases: Vec<ExtentClaim>,
    /// The extent most recently claimed for a write, for stream detection.
    last_demanded: Option<Extent>,
    /// Length of the current sequential run of claims (for adaptive prediction).
    stream_run: u32,
    /// Extents we handed over whose new owner has not confirmed applying the
    /// handover (persisted: after a lost reply the give is revoked at the
    /// next session start, since our store then holds the newest data).
    gives: HashMap<Extent, Epoch>,
}

impl ReplicaState {
    /// A fresh state: everything clean.
    pub fn new(geometry: Geometry, knobs: Knobs) -> Self {
        assert!(geometry.extent_bytes.is_multiple_of(geometry.block_bytes), "extent is a whole number of blocks");
        assert!(knobs.max_owned > 0, "max_owned_extents is at least 1");
        ReplicaState {
            geometry,
            knobs,
            counter: Epoch(0),
            extents: HashMap::new(),
            slots_used: 0,
            peer_owned: 0,
            dirty: HashMap::new(),
            not_durable: HashMap::new(),
            queue: VecDeque::new(),
            queued: 0,
            inflight: VecDeque::new(),
            next_copy_seq: 1,
            peer_received: 0,
            write_seq: 0,
            record_changed: false,
            releases: Vec::new(),
            last_demanded: None,
            stream_run: 0,
            gives: HashMap::new(),
        }
    }

    /// Restores a state from the durable record: our own claims become
    /// owned and fully suspect (every block is re-sent), the record becomes
    /// peer-owned.
    pub fn restore(
        geometry: Geometry,
        knobs: Knobs,
        counter: Epoch,
        own: &[ExtentClaim],
        record: &[ExtentClaim],
        gives: &[ExtentClaim],
        now: Instant,
    ) -> Self {
        let mut s = ReplicaState::new(geometry, knobs);
        s.counter = counter;
        for c in record {
            s.set(c.extent, Some(ExtentState::PeerOwned { epoch: c.epoch }));
        }
        for c in gives {
            if s.extents.get(&c.extent) == Some(&ExtentState::PeerOwned { epoch: c.epoch }) {
                s.gives.insert(c.extent, c.epoch);
            }
        }
        for c in own {
            s.adopt(c.extent, c.epoch, now);
        }
        s.record_changed = false;
        s
    }

    /// Geometry.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// The epoch counter.
    pub fn counter(&self) -> Epoch {
        self.counter
    }

    /// Raises the counter to at least `seen` (every message carries one).
    pub fn observe_counter(&mut self, seen: Epoch) {
        if seen > self.counter {
            self.counter = seen;
        }
    }

    /// The state of an extent (None: clean).
    pub fn extent(&self, e: Extent) -> Option<&ExtentState> {
        self.extents.get(&e)
    }

    /// Figures for metrics.
    pub fn figures(&self) -> Figures {
        Figures {
            owned_extents: self.extents.values().filter(|s| matches!(s, ExtentState::Owned(_))).count(),
            peer_owned_extents: self.peer_owned,
            unsent_blocks: self.queued,
            not_durable_blocks: self.dirty.len(),
            received_not_durable_blocks: self.inflight.iter().take_while(|f| f.seq <= self.peer_received).map(|f| f.labels.len()).sum(),
        }
    }

    /// Whether the durable record must be rewritten (and clears the flag).
    pub fn take_record_changed(&mut self) -> bool {
        std::mem::take(&mut self.record_changed)
    }

    /// Our own claims and our claims record, for persisting or a sync.
    pub fn snapshot(&self) -> (Vec<ExtentClaim>, Vec<ExtentClaim>) {
        let mut own = Vec::new();
        let mut record = Vec::new();
        for (&extent, state) in &self.extents {
            match state {
                ExtentState::Owned(o) => own.push(ExtentClaim { extent, epoch: o.epoch }),
                ExtentState::PeerOwned { epoch } | ExtentState::Acquiring { epoch, .. } => {
                    record.push(ExtentClaim { extent, epoch: *epoch })
                }
                ExtentState::Claiming => {}
            }
        }
        own.sort_by_key(|c| c.extent);
        record.sort_by_key(|c| c.extent);
        (own, record)
    }

    /// Handovers we gave and the new owner has not confirmed.
    pub fn gives(&self) -> Vec<ExtentClaim> {
        let mut gives: Vec<ExtentClaim> = self.gives.iter().map(|(&extent, &epoch)| ExtentClaim { extent, epoch }).collect();
        gives.sort_by_key(|c| c.extent);
        gives
    }

    /// The new owner confirms it applied our handover of `e` at `epoch`.
    pub fn on_handover_ack(&mut self, e: Extent, epoch: Epoch) {
        if self.gives.get(&e) == Some(&epoch) {
            self.gives.remove(&e);
            self.record_changed = true;
        }
    }

    /// Releases decided and not yet sent (batched, piggybacked by the caller).
    pub fn take_releases(&mut self) -> Vec<ExtentClaim> {
        std::mem::take(&mut self.releases)
    }

    /// Changes an extent's state, keeping the counts right.
    fn set(&mut self, e: Extent, new: Option<ExtentState>) {
        if let Some(&given) = self.gives.get(&e) {
            let still_given = matches!(&new,
                Some(ExtentState::PeerOwned { epoch }) | Some(ExtentState::Acquiring { epoch, .. }) if *epoch == given);
            if !still_given {
                self.gives.remove(&e);
                self.record_changed = true;
            }
        }
        let old = match &new {
            Some(state) => self.extents.insert(e, state.clone()),
            None => self.extents.remove(&e),
        };
        let slot = |s: &Option<ExtentState>| s.as_ref().is_some_and(ExtentState::takes_slot) as usize;
        let peer =
            |s: &Option<ExtentState>| matches!(s, Some(ExtentState::PeerOwned { .. }) | Some(ExtentState::Acquiring { .. })) as usize;
        self.slots_used = self.slots_used + slot(&new) - slot(&old);
        self.peer_owned = self.peer_owned + peer(&new) - peer(&old);
        let owned_or_record = |s: &Option<ExtentState>| match s {
            Some(ExtentState::Owned(o)) => Some((0, o.epoch)),
            Some(ExtentState::PeerOwned { epoch }) | Some(ExtentState::Acquiring { epoch, .. }) => Some((1, *epoch)),
            _ => None,
        };
        if owned_or_record(&old) != owned_or_record(&new) {
            self.record_changed = true;
        }
    }

    fn next_epoch(&mut self) -> Epoch {
        self.counter = Epoch(self.counter.0 + 1);
        self.counter
    }

    // ------------------------------------------------------------ host I/O

    /// Where a read of extent `e` is served from.
    pub fn read_source(&self, e: Extent) -> ReadSource {
        match self.extents.get(&e) {
            Some(ExtentState::PeerOwned { .. }) | Some(ExtentState::Acquiring { .. }) => ReadSource::Peer,
            _ => ReadSource::Local,
        }
    }

    /// Whether [`begin_write`](Self::begin_write) would admit a write to
    /// `range` without a message to the peer.
    pub fn would_admit(&self, range: RangeInclusive<u64>) -> bool {
        range.into_iter().all(|i| matches!(self.extents.get(&Extent(i)), Some(ExtentState::Owned(o)) if !o.handing_out))
    }

    /// A handover we were asked for will not complete (the session ended):
    /// writes to the extent may go on.
    pub fn abandon_handover(&mut self, e: Extent) {
        if let Some(ExtentState::Owned(o)) = self.extents.get_mut(&e) {
            o.handing_out = false;
        }
    }

    /// The record must be written again (a write of it failed).
    pub fn mark_record_changed(&mut self) {
        self.record_changed = true;
    }

    /// Asks to write extents `range`. Admits the write only when all are
    /// owned (no hold-and-wait across extents, so two sites writing
    /// overlapping ranges cannot deadlock).
    pub fn begin_write(&mut self, range: RangeInclusive<u64>, now: Instant) -> WriteAccess {
        for i in range.clone() {
            let e = Extent(i);
            match self.extents.get(&e) {
                Some(ExtentState::Owned(o)) if !o.handing_out => continue,
                Some(ExtentState::Owned(_)) | Some(ExtentState::Claiming) | Some(ExtentState::Acquiring { .. }) => {
                    return WriteAccess::Wait;
                }
                Some(ExtentState::PeerOwned { epoch }) => {
                    let epoch = *epoch;
                    if !self.make_room(now) {
                        return WriteAccess::Wait;
                    }
                    self.set(e, Some(ExtentState::Acquiring { epoch, regranted: false }));
                    return WriteAccess::Handover(e);
                }
                None => {
                    if !self.make_room(now) {
                        return WriteAccess::Wait;
                    }
                    let mut claim = vec![e];
                    claim.extend(self.predict(e));
                    for &c in &claim {
                        self.set(c, Some(ExtentState::Claiming));
                    }
                    self.last_demanded = Some(e);
                    return WriteAccess::Claim(claim);
                }
            }
        }
        for i in range {
            if let Some(ExtentState::Owned(o)) = self.extents.get_mut(&Extent(i)) {
                o.inflight_writes += 1;
                o.last_write = now;
            }
        }
        WriteAccess::Admitted
    }

    /// Extents to claim ahead of `e`: after a sequential run of claims, the
    /// next clean extents, doubling with the run's length (up to a quarter
    /// of the limit) so long streams need ever fewer round trips.
    fn predict(&mut self, e: Extent) -> Vec<Extent> {
        if self.knobs.predict == 0 {
            return Vec::new();
        }
        let sequential = e.0 > 0
            && (matches!(self.extents.get(&Extent(e.0 - 1)), Some(ExtentState::Owned(_)))
                || self.last_demanded.is_some_and(|last| last.0 + 1 == e.0));
        self.stream_run = if sequential { self.stream_run.saturating_add(1) } else { 0 };
        if !sequential {
            // A random write predicts nothing (claiming neighbours of random
            // writes only spends the limit); a stream shows itself by its
            // second extent.
            return Vec::new();
        }
        let grown = (self.knobs.predict as u64) << self.stream_run.min(6);
        let depth = grown.min((self.knobs.max_owned as u64 / 4).max(self.knobs.predict as u64));
        let free = self.knobs.max_owned.saturating_sub(self.slots_used + 1) as u64;
        (e.0 + 1..self.geometry.extents())
            .take(depth.min(free) as usize)
            .map(Extent)
            .take_while(|c| !self.extents.contains_key(c))
            .collect()
    }

    /// Frees a slot if the limit is reached, by releasing the least recently
    /// written extent that is durable at the peer. False: nothing can be
    /// released now (back-pressure: the caller waits for the copy stream).
    fn make_room(&mut self, now: Instant) -> bool {
        if self.slots_used < self.knobs.max_owned {
            return true;
        }
        let victim = self
            .extents
            .iter()
            .filter_map(|(&e, s)| match s {
                ExtentState::Owned(o) if self.releasable(e, o) => Some((o.last_write, e)),
                _ => None,
            })
            .min();
        match victim {
            Some((_, e)) => {
                self.release(e);
                let _ = now;
                true
            }
            None => false,
        }
    }

    fn releasable(&self, e: Extent, o: &Owned) -> bool {
        o.inflight_writes == 0 && !o.handing_out && !self.not_durable.contains_key(&e)
    }

    fn release(&mut self, e: Extent) {
        if let Some(ExtentState::Owned(o)) = self.extents.get(&e) {
            let epoch = o.epoch;
            self.set(e, None);
            self.releases.push(ExtentClaim { extent: e, epoch });
        }
    }

    /// A write admitted by [`begin_write`](Self::begin_write) has reached
    /// the store: its blocks join the copy stream.
    pub fn end_write(&mut self, offset: u64, length: u64, now: Instant) {
        for i in self.geometry.extents_of(offset, length) {
            match self.extents.get_mut(&Extent(i)) {
                Some(ExtentState::Owned(o)) => {
                    assert!(o.inflight_writes > 0, "end_write without begin_write");
                    o.inflight_writes -= 1;
                    o.last_write = now;
                }
                other => panic!("extent {i} left ownership during a write: {other:?}"),
            }
        }
        for b in self.geometry.blocks_of(offset, length) {
            self.mark_dirty(BlockIndex(b));
        }
    }

    /// An admitted write failed at the store: nothing to copy.
    pub fn abort_write(&mut self, offset: u64, length: u64) {
        for i in self.geometry.extents_of(offset, length) {
            if let Some(ExtentState::Owned(o)) = self.extents.get_mut(&Extent(i)) {
                o.inflight_writes = o.inflight_writes.saturating_sub(1);
            }
        }
        // The store may hold part of it: copy the range to be safe.
        for b in self.geometry.blocks_of(offset, length) {
            self.mark_dirty(BlockIndex(b));
        }
    }

    fn mark_dirty(&mut self, b: BlockIndex) {
        self.write_seq += 1;
        let seq = self.write_seq;
        let e = self.geometry.extent_of(b);
        match self.dirty.get_mut(&b) {
            Some(d) => {
                d.latest = seq;
                if !d.queued {
                    d.queued = true;
                    self.queued += 1;
                    self.queue.push_back(b);
                }
            }
            None => {
                self.dirty.insert(b, DirtyBlock { latest: seq, queued: true });
                self.queued += 1;
                self.queue.push_back(b);
                *self.not_durable.entry(e).or_insert(0) += 1;
            }
        }
    }

    // ------------------------------------------------------------ our requests' answers

    /// The peer answered our claim.
    pub fn on_claim_reply(&mut self, extents: &[Extent], outcomes: &[ClaimOutcome], counter: Epoch, now: Instant) {
        self.observe_counter(counter);
        for (i, &e) in extents.iter().enumerate() {
            if self.extents.get(&e) != Some(&ExtentState::Claiming) {
                continue; // changed meanwhile (the peer's own claim was granted, or a sync)
            }
            match outcomes.get(i).copied().unwrap_or(ClaimOutcome::Declined) {
                ClaimOutcome::Granted(epoch) => {
                    self.observe_counter(epoch);
                    let owned = Owned { epoch, inflight_writes: 0, last_write: now, handing_out: false };
                    self.set(e, Some(ExtentState::Owned(owned)));
                }
                ClaimOutcome::OwnedByResponder(epoch) => self.set(e, Some(ExtentState::PeerOwned { epoch })),
                ClaimOutcome::Declined => self.set(e, None),
            }
        }
    }

    /// Our claim could not be delivered or answered: back to clean.
    pub fn on_claim_failed(&mut self, extents: &[Extent]) {
        for &e in extents {
            if self.extents.get(&e) == Some(&ExtentState::Claiming) {
                self.set(e, None);
            }
        }
    }

    /// The peer answered our handover request. With `Some(epoch)` the
    /// caller has already applied the inline blocks to the store.
    pub fn on_handover_reply(&mut self, e: Extent, granted: Option<Epoch>, counter: Epoch, now: Instant) {
        self.observe_counter(counter);
        let Some(ExtentState::Acquiring { epoch, regranted }) = self.extents.get(&e).cloned() else {
            return;
        };
        match granted {
            Some(new) => {
                self.observe_counter(new);
                let owned = Owned { epoch: new, inflight_writes: 0, last_write: now, handing_out: false };
                self.set(e, Some(ExtentState::Owned(owned)));
            }
            // The peer does not own it. Unless we re-granted it since we
            // asked (then that answer is stale), it is clean.
            None if regranted => self.set(e, Some(ExtentState::PeerOwned { epoch })),
            None => self.set(e, None),
        }
    }

    /// Our handover request failed: the peer still owns it.
    pub fn on_handover_failed(&mut self, e: Extent) {
        if let Some(ExtentState::Acquiring { epoch, .. }) = self.extents.get(&e).cloned() {
            self.set(e, Some(ExtentState::PeerOwned { epoch }));
        }
    }

    // ------------------------------------------------------------ the peer's requests

    /// The peer asks to record its claims. The caller must make the record
    /// durable before replying.
    pub fn on_claim_request(&mut self, extents: &[Extent], counter: Epoch) -> Vec<ClaimOutcome> {
        self.observe_counter(counter);
        let mut outcomes = Vec::with_capacity(extents.len());
        for (i, &e) in extents.iter().enumerate() {
            let demanded = i == 0;
            let outcome = if e.0 >= self.geometry.extents() {
                ClaimOutcome::Declined
            } else {
                match self.extents.get(&e).cloned() {
                    None | Some(ExtentState::PeerOwned { .. }) => {
                        let epoch = self.next_epoch();
                        self.set(e, Some(ExtentState::PeerOwned { epoch }));
                        ClaimOutcome::Granted(epoch)
                    }
                    Some(ExtentState::Acquiring { .. }) => {
                        let epoch = self.next_epoch();
                        self.set(e, Some(ExtentState::Acquiring { epoch, regranted: true }));
                        ClaimOutcome::Granted(epoch)
                    }
                    Some(ExtentState::Claiming) if !self.knobs.wins_ties => {
                        let epoch = self.next_epoch();
                        self.set(e, Some(ExtentState::PeerOwned { epoch }));
                        ClaimOutcome::Granted(epoch)
                    }
                    Some(ExtentState::Claiming) => ClaimOutcome::Declined,
                    Some(ExtentState::Owned(o)) if demanded && !o.handing_out => ClaimOutcome::OwnedByResponder(o.epoch),
                    Some(ExtentState::Owned(_)) => ClaimOutcome::Declined,
                }
            };
            outcomes.push(outcome);
        }
        outcomes
    }

    /// The peer asks us to hand extent `e` over.
    pub fn on_handover_request(&mut self, e: Extent, counter: Epoch) -> HandoverStep {
        self.observe_counter(counter);
        let Some(ExtentState::Owned(o)) = self.extents.get_mut(&e) else {
            return HandoverStep::NotOwner;
        };
        o.handing_out = true;
        if o.inflight_writes > 0 {
            return HandoverStep::WaitForWrites;
        }
        let epoch = self.next_epoch();
        self.set(e, Some(ExtentState::PeerOwned { epoch }));
        self.gives.insert(e, epoch);
        let blocks = self.take_dirty_blocks(e);
        HandoverStep::Give { epoch, blocks }
    }

    /// A handover we started could not be completed (the reply could not be
    /// sent): nothing to undo — the record says the peer owns it, and the
    /// session-start sync makes it adopt the extent.
    fn take_dirty_blocks(&mut self, e: Extent) -> Vec<BlockIndex> {
        let mut blocks = Vec::new();
        for b in self.geometry.blocks_in(e) {
            if let Some(d) = self.dirty.remove(&BlockIndex(b)) {
                if d.queued {
                    self.queued -= 1;
                }
                blocks.push(BlockIndex(b));
            }
        }
        self.not_durable.remove(&e);
        blocks
    }

    /// The peer released extents.
    pub fn on_release(&mut self, released: &[ExtentClaim]) {
        for c in released {
            match self.extents.get(&c.extent) {
                Some(ExtentState::PeerOwned { epoch }) | Some(ExtentState::Acquiring { epoch, .. }) if *epoch == c.epoch => {
                    self.set(c.extent, None);
                }
                _ => {} // an older epoch: a newer claim overtook this release
            }
        }
    }

    /// Whether we can answer a pull of extent `e` with our store's data.
    pub fn can_serve_pull(&self, e: Extent) -> bool {
        self.read_source(e) == ReadSource::Local
    }

    /// Whether a copy for `e` at `epoch` is current (else it is dropped).
    pub fn accept_copy(&self, e: Extent, epoch: Epoch) -> bool {
        matches!(self.extents.get(&e),
            Some(ExtentState::PeerOwned { epoch: mine }) | Some(ExtentState::Acquiring { epoch: mine, .. }) if *mine == epoch)
    }

    // ------------------------------------------------------------ session start

    /// Merges the peer's view at session start (the peer's own claims and
    /// its record of ours). Epochs decide every disagreement; extents the
    /// peer records as ours are adopted and fully re-sent.
    pub fn on_sync(
        &mut self,
        counter: Epoch,
        peer_own: &[ExtentClaim],
        peer_record: &[ExtentClaim],
        peer_gives: &[ExtentClaim],
        now: Instant,
    ) {
        self.observe_counter(counter);
        // Handovers the peer gave us and we never applied (the reply was
        // lost with the link): the peer's store holds the newest data, so
        // the give is revoked — the peer owns it again, one epoch later.
        let extents = self.geometry.extents();
        for c in peer_gives.iter().filter(|c| c.extent.0 < extents) {
            let applied = matches!(self.extents.get(&c.extent), Some(ExtentState::Owned(o)) if o.epoch >= c.epoch);
            if !applied {
                let epoch = Epoch(c.epoch.0 + 1);
                self.observe_counter(epoch);
                if matches!(self.extents.get(&c.extent), Some(ExtentState::Owned(_))) {
                    self.take_dirty_blocks(c.extent);
                }
                self.set(c.extent, Some(ExtentState::PeerOwned { epoch }));
            }
        }
        // Releases not yet sent belong to the old session: the peer still
        // records those extents as ours, so they are adopted below and
        // released again once re-sent.
        self.releases.clear();
        let extents = self.geometry.extents();
        let peer_own = peer_own.iter().filter(|c| c.extent.0 < extents);
        let peer_record: Vec<&ExtentClaim> = peer_record.iter().filter(|c| c.extent.0 < extents).collect();
        for c in peer_own {
            self.observe_counter(c.epoch);
            if self.gives.get(&c.extent).is_some_and(|g| c.epoch >= *g) {
                // The peer owns what we gave it: the handover was applied.
                self.gives.remove(&c.extent);
                self.record_changed = true;
            }
            match self.extents.get(&c.extent).cloned() {
                None | Some(ExtentState::Claiming) => self.set(c.extent, Some(ExtentState::PeerOwned { epoch: c.epoch })),
                Some(ExtentState::PeerOwned { epoch }) if c.epoch > epoch => {
                    self.set(c.extent, Some(ExtentState::PeerOwned { epoch: c.epoch }))
                }
                Some(ExtentState::Acquiring { epoch, regranted }) if c.epoch > epoch => {
                    self.set(c.extent, Some(ExtentState::Acquiring { epoch: c.epoch, regranted }))
                }
                Some(ExtentState::Owned(o)) if c.epoch > o.epoch => {
                    // Both sides own it: the newer grant wins. Only a forced
                    // takeover can cause this; our unsent blocks are dropped.
                    self.take_dirty_blocks(c.extent);
                    self.set(c.extent, Some(ExtentState::PeerOwned { epoch: c.epoch }));
                }
                _ => {}
            }
        }
        for c in peer_record {
            let c = *c;
            self.observe_counter(c.epoch);
            match self.extents.get(&c.extent).cloned() {
                Some(ExtentState::Owned(mut o)) if c.epoch > o.epoch => {
                    o.epoch = c.epoch;
                    self.set(c.extent, Some(ExtentState::Owned(o)));
                }
                Some(ExtentState::Owned(_)) => {}
                None | Some(ExtentState::Claiming) => self.adopt(c.extent, c.epoch, now),
                Some(ExtentState::PeerOwned { epoch }) | Some(ExtentState::Acquiring { epoch, .. }) => {
                    if c.epoch > epoch {
                        self.adopt(c.extent, c.epoch, now);
                    }
                }
            }
        }
    }

    /// Takes ownership of an extent the peer records as ours and marks all
    /// its blocks for copying (we cannot know which ones it lacks).
    fn adopt(&mut self, e: Extent, epoch: Epoch, now: Instant) {
        if e.0 >= self.geometry.extents() {
            return;
        }
        self.observe_counter(epoch);
        let owned = Owned { epoch, inflight_writes: 0, last_write: now, handing_out: false };
        self.set(e, Some(ExtentState::Owned(owned)));
        for b in self.geometry.blocks_in(e) {
            self.mark_dirty(BlockIndex(b));
        }
    }

    // ------------------------------------------------------------ copy stream

    /// Takes the next run of unsent blocks (at most `max_blocks`, all in one
    /// extent) for the copy stream, as one message.
    pub fn next_copy(&mut self, max_blocks: u64) -> Option<CopyRun> {
        let run = self.take_run(max_blocks, self.next_copy_seq)?;
        self.next_copy_seq += 1;
        Some(run)
    }

    /// Takes up to `max_runs` runs, `max_blocks` blocks in all, to travel
    /// as one message (one sequence number): one frame, one apply, one
    /// progress entry for many small writes.
    pub fn next_copy_batch(&mut self, max_blocks: u64, max_runs: usize) -> Vec<CopyRun> {
        let seq = self.next_copy_seq;
        let mut runs = Vec::new();
        let mut blocks = 0;
        while runs.len() < max_runs && blocks < max_blocks {
            match self.take_run(max_blocks - blocks, seq) {
                Some(run) => {
                    blocks += run.count;
                    runs.push(run);
                }
                None => break,
            }
        }
        if !runs.is_empty() {
            self.next_copy_seq += 1;
        }
        runs
    }

    fn take_run(&mut self, max_blocks: u64, seq: u64) -> Option<CopyRun> {
        while let Some(b) = self.queue.pop_front() {
            let Some(d) = self.dirty.get_mut(&b) else { continue }; // handed out since
            if !d.queued {
                continue;
            }
            let e = self.geometry.extent_of(b);
            let epoch = match self.extents.get(&e) {
                Some(ExtentState::Owned(o)) => o.epoch,
                _ => continue,
            };
            let end = self.geometry.blocks_in(e).end;
            let mut labels = Vec::new();
            let mut next = b.0;
            while next < end && (labels.len() as u64) < max_blocks {
                match self.dirty.get_mut(&BlockIndex(next)) {
                    Some(d) if d.queued => {
                        d.queued = false;
                        self.queued -= 1;
                        labels.push(d.latest);
                    }
                    _ => break,
                }
                next += 1;
            }
            let count = labels.len() as u64;
            self.inflight.push_back(InFlight { seq, first: b, labels });
            return Some(CopyRun { seq, extent: e, epoch, first: b, count });
        }
        None
    }

    /// The peer reports copies up to `received` in its memory (not yet
    /// durable: a crash there loses them, so they stay tracked until durable).
    pub fn on_copy_received(&mut self, received: u64) {
        self.peer_received = self.peer_received.max(received);
    }

    /// The peer reports copies up to `durable` durable: blocks whose newest
    /// write they carried leave the tracking.
    pub fn on_copy_durable(&mut self, durable: u64) {
        while self.inflight.front().is_some_and(|f| f.seq <= durable) {
            let f = self.inflight.pop_front().expect("checked");
            for (i, label) in f.labels.into_iter().enumerate() {
                let b = BlockIndex(f.first.0 + i as u64);
                if self.dirty.get(&b).is_some_and(|d| !d.queued && d.latest <= label) {
                    self.dirty.remove(&b);
                    let e = self.geometry.extent_of(b);
                    if let Some(n) = self.not_durable.get_mut(&e) {
                        *n -= 1;
                        if *n == 0 {
                            self.not_durable.remove(&e);
                        }
                    }
                }
            }
        }
    }

    /// A new copy session starts: everything in flight is sent again.
    pub fn on_copy_session_reset(&mut self) {
        for f in std::mem::take(&mut self.inflight) {
            for i in 0..f.labels.len() as u64 {
                let b = BlockIndex(f.first.0 + i);
                if let Some(d) = self.dirty.get_mut(&b).filter(|d| !d.queued) {
                    d.queued = true;
                    self.queued += 1;
                    self.queue.push_back(b);
                }
            }
        }
        // Keep the queue in block order so runs coalesce again.
        let mut q: Vec<BlockIndex> = self.queue.drain(..).collect();
        q.sort();
        q.dedup();
        self.queue = q.into();
        self.next_copy_seq = 1;
        self.peer_received = 0;
    }

    /// Copies sent and not yet durable.
    pub fn copies_in_flight(&self) -> usize {
        self.inflight.len()
    }

    // ------------------------------------------------------------ timers

    /// Releases owned extents that are idle, durable at the peer and older
    /// than `release_after`. Returns how many were released.
    pub fn release_idle(&mut self, now: Instant) -> usize {
        let idle: Vec<Extent> = self
            .extents
            .iter()
            .filter_map(|(&e, s)| match s {
                ExtentState::Owned(o)
                    if self.releasable(e, o) && now.saturating_duration_since(o.last_write) >= self.knobs.release_after =>
                {
                    Some(e)
                }
                _ => None,
            })
            .collect();
        for &e in &idle {
            self.release(e);
        }
        idle.len()
    }

    /// Checks the structural invariants; tests call it after every step.
    pub fn check_invariants(&self) {
        let slots = self.extents.values().filter(|s| s.takes_slot()).count();
        assert_eq!(slots, self.slots_used, "slot count drifted");
        let peer = self.extents.values().filter(|s| !s.takes_slot() || matches!(s, ExtentState::Acquiring { .. })).count();
        assert_eq!(peer, self.peer_owned, "peer-owned count drifted");
        assert_eq!(self.dirty.values().filter(|d| d.queued).count(), self.queued, "queued count drifted");
        for b in self.dirty.keys() {
            let e = self.geometry.extent_of(*b);
            assert!(
                matches!(self.extents.get(&e), Some(ExtentState::Owned(_))),
                "block {b:?} tracked for extent {e:?} we do not own: {:?}",
                self.extents.get(&e)
            );
        }
        let per_extent: usize = self.not_durable.values().map(|&n| n as usize).sum();
        assert_eq!(per_extent, self.dirty.len(), "per-extent un-durable counts drifted");
        for (e, s) in &self.extents {
            if let ExtentState::Owned(o) = s {
                assert!(o.epoch <= self.counter, "extent {e:?} epoch {:?} above counter {:?}", o.epoch, self.counter);
            }
        }
    }
}
