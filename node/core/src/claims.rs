//! The claims of one volume at one node: who may hold writes the other has
//! not received, per extent, with epochs; prediction; the owned-extent
//! limit; the copy stream's tracking; handovers; releases; the merge of both
//! views at session start. Pure state: the node core decides when to call
//! what, and carries out the I/O and messages these methods imply.
//!
//! Invariants enforced here (the simulator's `invariants/` checks them after
//! every step; [`Claims::check`] only verifies that the internal counts and
//! indexes agree):
//! - an extent is in at most one of own claims and the claims record;
//! - writes are admitted only to owned extents that are not being handed
//!   out and have no peer data being applied;
//! - an extent is released only when none of its blocks is un-durable at
//!   the peer and no write to it is in flight;
//! - messages for an older epoch never undo a newer state;
//! - extents taking a place in the owned-extent budget never exceed the
//!   limit, except extents adopted at session start (the peer already
//!   records them as ours, so refusing them would not reduce exposure).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::RangeInclusive;

use geomirror_wire::peer::{BlockIndex, ClaimOutcome, CopySeq, Epoch, Extent, ExtentClaim};

use crate::claims_file::{self, ClaimsDelta, ClaimsFileContents, ClaimsState, ClaimsWrite, ExtentEntry, JOURNAL_BYTES_MIN};
use crate::config::VolumeSettings;
use crate::geometry::Geometry;
use crate::limits::CLAIM_EXTENTS_MAX;
use crate::time::Time;
use crate::tracking::{CountDelta, Dirt};

/// An extent this node owns.
#[derive(Clone, Debug)]
pub struct Owned {
    /// The ownership epoch.
    pub epoch: Epoch,
    /// Host writes admitted and not finished.
    pub writes_in_flight: u32,
    /// Host writes admitted and block ranges marked for the copy stream so
    /// far (a write that sent its own buffer to the peer learns from it
    /// whether anything else wrote or queued its blocks meanwhile).
    changes: u64,
    /// Last admitted write (or the grant).
    pub last_write: Time,
    /// The peer asked for it: new writes wait until it is handed out.
    pub handing_out: bool,
    /// Store syncs issued before its last write ended: it may be released
    /// only after a later one completed (its data durable here too).
    write_mark: u64,
    /// Writes wait until the claims file is durable at this version: set
    /// when owning it voided a release our file still lists (after a crash
    /// that file would release it again, without the writes since).
    writable_at: u64,
    /// Blocks not yet durable at the peer (None: none).
    dirt: Option<Box<Dirt>>,
    /// Restored after a restart (or adopted at a sync): which blocks the
    /// peer lacks is unknown until the resync compares checksums; not
    /// releasable until then, and a give carries every block.
    pub suspect: bool,
}

impl Owned {
    fn new(epoch: Epoch, now: Time) -> Owned {
        Owned {
            epoch,
            writes_in_flight: 0,
            changes: 0,
            last_write: now,
            handing_out: false,
            write_mark: 0,
            writable_at: 0,
            dirt: None,
            suspect: false,
        }
    }
}

/// Where a handover we asked for stands after its answer granted it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReceivingStage {
    /// The blocks it carried are being written and made durable; `complete`
    /// once the final reply (not only parts) has arrived.
    Applying {
        /// The final reply arrived.
        complete: bool,
    },
    /// Blocks durable; our ownership is being written to the claims file.
    Persisting,
}

/// Per-extent ownership; an extent absent from the map is clean (neither
/// node holds writes the other lacks).
#[derive(Clone, Debug)]
pub enum ExtentState {
    /// Own claim: this node may hold writes the peer lacks.
    Owned(Owned),
    /// Our claim for it is in flight.
    Claiming,
    /// Our claim's answer was lost with the session: the peer may have
    /// granted it. The next session-start sync tells (we never wrote under it).
    ClaimUnknown,
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
        /// The peer released it while our request was on its way: its data
        /// is here, and the answer will be "not the owner" (or a give, if
        /// the peer claimed it again and we re-granted it).
        released: bool,
    },
    /// The peer handed it over: its blocks are being applied.
    Receiving {
        /// Our new epoch.
        epoch: Epoch,
        /// The peer's epoch before.
        from: Epoch,
        /// How far it got.
        stage: ReceivingStage,
    },
}

impl ExtentState {
    /// The ownership epoch the state carries (none for a claim in flight).
    pub fn epoch(&self) -> Epoch {
        match self {
            ExtentState::Owned(o) => o.epoch,
            ExtentState::PeerOwned { epoch } | ExtentState::Acquiring { epoch, .. } | ExtentState::Receiving { epoch, .. } => *epoch,
            ExtentState::Claiming | ExtentState::ClaimUnknown => Epoch(0),
        }
    }

    /// Whether the extent takes a place in our owned-extent budget.
    fn takes_budget(&self) -> bool {
        !matches!(self, ExtentState::PeerOwned { .. })
    }
    /// Whether the extent is in our claims record (the peer owns it).
    fn in_record(&self) -> bool {
        matches!(self, ExtentState::PeerOwned { .. } | ExtentState::Acquiring { released: false, .. })
    }
    /// How the extent appears in the claims file: own (0) or record (1), with its epoch.
    fn file_entry(&self) -> Option<(u8, Epoch)> {
        match self {
            ExtentState::Owned(o) => Some((0, o.epoch)),
            ExtentState::Receiving { epoch, stage: ReceivingStage::Persisting, .. } => Some((0, *epoch)),
            ExtentState::Receiving { from, .. } => Some((1, *from)),
            ExtentState::PeerOwned { epoch } | ExtentState::Acquiring { epoch, released: false, .. } => Some((1, *epoch)),
            ExtentState::Acquiring { released: true, .. } | ExtentState::Claiming | ExtentState::ClaimUnknown => None,
        }
    }
}

/// Whether a request that needs the peer can be sent now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerAccess {
    /// A ready session with room for a request.
    Ready,
    /// No ready session, and this node acts alone (survivor of an outage):
    /// clean extents are claimed without the peer.
    Alone,
    /// No ready session (or no room): do not start anything that needs it.
    Unavailable,
}

/// Why a write cannot be admitted yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitReason {
    /// A claim or handover of the extent is in flight: the peer's answer
    /// changes its state.
    PeerAnswer,
    /// The extent is in a local transition (being handed out, received, or
    /// written with the peer's data): retry when its state changes.
    Busy,
    /// The owned-extent limit is reached and nothing can be released yet:
    /// retry when the copy stream makes an extent clean.
    Limit,
    /// The peer is needed and there is no ready session.
    Session,
    /// The extent was claimed alone: the write waits until the claims file
    /// records it.
    File,
    /// The extent is being resynced after an outage (the peer's data wins,
    /// ours is being saved): wait.
    Resync,
}

/// What a host write must do before it may proceed.
#[derive(Debug, PartialEq, Eq)]
pub enum WriteAccess {
    /// All extents owned; the write is admitted (call [`Claims::end_write`]).
    Admitted,
    /// Send this claim (first extent demanded, rest predicted); they are now `Claiming`.
    Claim(Vec<Extent>),
    /// Ask the peer to hand this extent over; it is now `Acquiring`.
    Handover(Extent),
    /// Wait, then ask again.
    Wait(WaitReason),
}

/// Where a read of an extent is served from.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum ReadSource {
    /// Our store holds the newest data.
    Local,
    /// The peer may hold newer data: pull.
    Peer,
    /// A handover to us is being applied: wait for it.
    Wait,
}

/// The owner's answer to a handover request.
#[derive(Debug, PartialEq, Eq)]
pub enum HandoverStep {
    /// We do not own it (the requester's view is stale).
    NotOwner,
    /// Writes to it (or an apply of peer data) are in flight, or it is
    /// being handed to us; ask again when that is done. New writes wait.
    WaitForWrites,
    /// Ready to give: read these blocks (not yet durable at the requester,
    /// as `(first, count)`), then [`Claims::commit_give`]. New writes wait.
    Read {
        /// The runs to read.
        runs: Vec<(BlockIndex, u64)>,
    },
}

/// A run of blocks of one extent for the copy stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyRun {
    /// The extent.
    pub extent: Extent,
    /// Our epoch.
    pub epoch: Epoch,
    /// First block.
    pub first: BlockIndex,
    /// Number of blocks.
    pub count: u64,
}

/// A copy message sent and not yet durable at the peer.
#[derive(Debug)]
struct InFlightCopy {
    seq: CopySeq,
    extents: Vec<Extent>,
    bytes: u64,
}

/// A release decided and not yet confirmed by the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingRelease {
    /// The extent and the epoch released.
    pub claim: ExtentClaim,
    /// The claims file version that no longer lists it: the release leaves
    /// only once that version is durable (else a crash could bring the
    /// claim back here after the peer forgot it).
    pub file_version: u64,
}

impl PendingRelease {
    /// Whether it may leave: its claims file version is durable.
    pub fn ready(&self, durable_version: u64) -> bool {
        self.file_version <= durable_version
    }
}

/// Counters for status and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClaimsFigures {
    /// Extents we own.
    pub owned_extents: u64,
    /// Extents taking a place in the owned-extent budget: owned, claiming
    /// (claims whose answer was lost included), acquiring, receiving, and
    /// unconfirmed gives.
    pub budget_used: u64,
    /// Extents in our claims record.
    pub peer_owned_extents: u64,
    /// Blocks written and not yet sent.
    pub unsent_blocks: u64,
    /// Blocks written and not yet durable at the peer.
    pub not_durable_blocks: u64,
    /// Bytes of copies in flight that the peer has received but not yet made durable.
    pub received_not_durable_bytes: u64,
    /// Bytes of copy tracking held (bitmaps and in-flight records).
    pub tracking_bytes: u64,
}

/// The claims of one volume at one node.
pub struct Claims {
    geometry: Geometry,
    max_owned: usize,
    predict: u64,
    predict_ceiling: u64,
    wins_ties: bool,
    release_after: std::time::Duration,
    counter: Epoch,
    extents: BTreeMap<Extent, ExtentState>,
    budget_used: usize,
    record_len: usize,
    /// The extents we own (`ExtentState::Owned`): what the release scans
    /// walk, so that a node whose record holds many of the peer's extents
    /// does not walk those.
    owned: BTreeSet<Extent>,
    gives: BTreeMap<Extent, Epoch>,
    /// Releases to send on the bulk lane (once durable here).
    releases: Vec<PendingRelease>,
    /// Releases the peer has not confirmed applying. They ride on every
    /// claim and handover request (one may overtake a release; see
    /// [`Claims::releases_to_carry`]), and a lost one is sent again
    /// at the next session's sync instead of the extent being taken back.
    released: BTreeMap<Extent, PendingRelease>,
    /// Releases the peer sent that arrived while this session's sync rounds
    /// were still running (the newest epoch per extent). The peer may have
    /// sent its last sync answer, listing such an extent as its own, just
    /// before the release; the release travels on the bulk lane and can
    /// arrive first. Merging that answer must not take the released extent
    /// back as the peer's. Cleared when the session is ready (or a new one
    /// starts); at most one entry per extent.
    released_during_sync: BTreeMap<Extent, Epoch>,
    /// Store syncs issued so far, and the latest completed (a release
    /// needs one issued after the extent's last write to have completed).
    syncs_issued: u64,
    syncs_done: u64,
    /// The claims file version known durable.
    file_durable: u64,
    /// Peer data (copies, handover blocks) being written to our store, per
    /// extent: host writes there wait, so older data never lands on newer.
    applying: BTreeMap<Extent, u32>,
    last_demanded: Option<Extent>,
    stream_run: u32,
    /// Extents with unsent blocks, oldest first (each at most once).
    queue: VecDeque<Extent>,
    inflight: VecDeque<InFlightCopy>,
    next_seq: CopySeq,
    peer_received: CopySeq,
    /// Every copy up to here is durable at the peer (this session).
    peer_durable: CopySeq,
    unsent_blocks: u64,
    not_durable_blocks: u64,
    unreceived_bytes: u64,
    /// Bumped whenever the contents of the claims file change.
    file_version: u64,
    /// The newest outage generation known (kept in the claims file).
    generation: u64,
    /// Own extents claimed alone or taken over while the peer was lost, at
    /// our epoch, not yet resynced to the peer (kept in the claims file): not
    /// releasable or given until the peer has saved its differing blocks and
    /// told us which to send ([`Claims::on_resync_need`]).
    taken: BTreeMap<Extent, Epoch>,
    /// Extents the peer took while we were lost, at its epoch: our
    /// differing blocks go to the conflict file before its data lands here.
    conflicts: BTreeMap<Extent, ConflictEntry>,
    /// The volume was taken over offline (carried through the file).
    detached: bool,
    /// Per extent being claimed, the claim it is in (an answer to an older
    /// claim of the same extent must not settle a newer one).
    claim_of: BTreeMap<Extent, u64>,
    last_claim: u64,
    /// Extents whose entry in the claims file may have changed since the
    /// last write was taken ([`Claims::take_file_write`]).
    touched: BTreeSet<Extent>,
    /// Owned extents still to be compared with the peer (`Owned::suspect`).
    suspect_len: usize,
    /// The newest claims file version something waits for: a release that
    /// may leave once it is durable, or an extent writable once it is
    /// (`Owned::writable_at`). Only grows; past durable, a write is due.
    wait_version: u64,
    /// The file as last written: the snapshot's size and the journal's
    /// since (None until the first write after start, which is whole).
    file_layout: Option<FileLayout>,
    /// With checks on ([`Claims::check_file_writes`]: tests and the
    /// simulator), what the writes taken so far add up to, compared with
    /// the whole state at each write (O(extents) per write).
    file_shadow: Option<ClaimsState>,
    check_file_writes: bool,
}

/// The sizes of the claims file as written, to decide when the journal is
/// folded into a new snapshot.
#[derive(Clone, Copy, Debug)]
struct FileLayout {
    snapshot_bytes: usize,
    journal_bytes: usize,
}

/// The epochs of one outage generation: claims made alone under generation
/// `g` take epochs from `g * ALONE_EPOCH_STRIDE` on.
pub const ALONE_EPOCH_STRIDE: u64 = 1 << 40;

/// The peer's view of a volume at session start (a `Sync` or `SyncReply`).
#[derive(Clone, Copy, Debug)]
pub struct PeerView<'a> {
    /// Its epoch counter.
    pub counter: Epoch,
    /// Extents it owns.
    pub own: &'a [ExtentClaim],
    /// Extents it records as ours.
    pub record: &'a [ExtentClaim],
    /// Handovers it gave us and saw no confirmation of.
    pub gives: &'a [ExtentClaim],
    /// The newest outage generation it knows.
    pub generation: u64,
    /// Extents it took alone while we were lost, not yet resynced to us.
    pub taken: &'a [ExtentClaim],
}

/// An extent the peer took while we were lost (see [`Claims`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConflictEntry {
    /// The peer's epoch.
    pub epoch: Epoch,
    /// The peer's outage generation.
    pub their_generation: u64,
    /// Ours when we learned of it.
    pub our_generation: u64,
    /// Whether we owned it (else it was clean).
    pub kind: crate::io::ConflictKind,
}

impl Claims {
    /// A fresh state: everything clean.
    pub fn new(settings: &VolumeSettings, wins_ties: bool) -> Claims {
        settings.check().expect("volume settings are checked at config load");
        Claims {
            geometry: settings.geometry,
            max_owned: settings.knobs.max_owned,
            predict: u64::from(settings.knobs.predict),
            predict_ceiling: settings.predict_ceiling(),
            wins_ties,
            release_after: settings.knobs.release_after,
            counter: Epoch(0),
            extents: BTreeMap::new(),
            budget_used: 0,
            record_len: 0,
            owned: BTreeSet::new(),
            gives: BTreeMap::new(),
            releases: Vec::new(),
            released: BTreeMap::new(),
            released_during_sync: BTreeMap::new(),
            syncs_issued: 0,
            syncs_done: 0,
            file_durable: 0,
            applying: BTreeMap::new(),
            last_demanded: None,
            stream_run: 0,
            queue: VecDeque::new(),
            inflight: VecDeque::new(),
            next_seq: CopySeq(1),
            peer_received: CopySeq(0),
            peer_durable: CopySeq(0),
            unsent_blocks: 0,
            not_durable_blocks: 0,
            unreceived_bytes: 0,
            file_version: 0,
            generation: 0,
            taken: BTreeMap::new(),
            conflicts: BTreeMap::new(),
            detached: false,
            claim_of: BTreeMap::new(),
            last_claim: 0,
            touched: BTreeSet::new(),
            suspect_len: 0,
            wait_version: 0,
            file_layout: None,
            file_shadow: None,
            check_file_writes: cfg!(test),
        }
    }

    /// The number of the claim [`Claims::begin_write`] last started; its
    /// answer must carry it back ([`Claims::on_claim_reply`]).
    pub fn last_claim(&self) -> u64 {
        self.last_claim
    }

    /// Restores the state of a claims file at start: own claims become owned
    /// and fully suspect (every block is sent again: we cannot know which
    /// ones the peer lacks), the record becomes peer-owned. Entries outside
    /// the volume are ignored.
    pub fn restore(settings: &VolumeSettings, wins_ties: bool, file: &ClaimsFileContents, now: Time) -> Claims {
        let mut c = Claims::new(settings, wins_ties);
        c.counter = file.counter;
        c.generation = file.generation;
        c.detached = file.detached;
        let extents = c.geometry.extents();
        for e in file.record.iter().filter(|e| e.extent.0 < extents) {
            c.observe_counter(e.epoch);
            c.set(e.extent, Some(ExtentState::PeerOwned { epoch: e.epoch }));
        }
        for g in &file.gives {
            if matches!(c.extents.get(&g.extent), Some(ExtentState::PeerOwned { epoch }) if *epoch == g.epoch) {
                c.gives.insert(g.extent, g.epoch);
            }
        }
        for e in file.own.iter().filter(|e| e.extent.0 < extents) {
            c.adopt(e.extent, e.epoch, now, true);
        }
        for r in file.released.iter().filter(|r| r.extent.0 < extents && !c.extents.contains_key(&r.extent)) {
            // Durable in the file we started from, and what they covered was
            // synced before it was written.
            c.released.insert(r.extent, PendingRelease { claim: *r, file_version: 0 });
        }
        for t in &file.taken {
            if matches!(c.extents.get(&t.extent), Some(ExtentState::Owned(o)) if o.epoch == t.epoch) {
                c.taken.insert(t.extent, t.epoch);
            }
        }
        c.file_version = 0;
        c
    }

    /// Sizes.
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

    /// Every extent that is not clean, in order.
    pub fn extents(&self) -> impl Iterator<Item = (&Extent, &ExtentState)> {
        self.extents.iter()
    }

    /// The claims file version of the current state.
    pub fn file_version(&self) -> u64 {
        self.file_version
    }

    /// The claims file contents of the current state.
    pub fn file_contents(&self) -> ClaimsFileContents {
        let mut own = Vec::new();
        let mut record = Vec::new();
        for (&extent, state) in &self.extents {
            match state.file_entry() {
                Some((0, epoch)) => own.push(ExtentClaim { extent, epoch }),
                Some((_, epoch)) => record.push(ExtentClaim { extent, epoch }),
                None => {}
            }
        }
        let released = self.released.values().map(|r| r.claim).collect();
        ClaimsFileContents {
            counter: self.counter,
            generation: self.generation,
            own,
            record,
            gives: self.gives(),
            released,
            taken: self.taken_list(),
            detached: self.detached,
        }
    }

    /// What the claims file says of extent `e` now.
    fn file_entry_of(&self, e: Extent) -> ExtentEntry {
        let (own, record) = match self.extents.get(&e).and_then(ExtentState::file_entry) {
            Some((0, epoch)) => (Some(epoch), None),
            Some((_, epoch)) => (None, Some(epoch)),
            None => (None, None),
        };
        ExtentEntry {
            own,
            record,
            give: self.gives.get(&e).copied(),
            released: self.released.get(&e).map(|r| r.claim.epoch),
            taken: self.taken.get(&e).copied(),
        }
    }

    /// The next write of the claims file, bringing it to the current
    /// state: one journal record of the extents changed since the last
    /// write (O(changes)), or the whole file when it is the first write
    /// since start or the journal has outgrown the snapshot.
    pub fn take_file_write(&mut self) -> ClaimsWrite {
        let touched = std::mem::take(&mut self.touched);
        let write = match self.file_layout {
            Some(layout) if layout.journal_bytes < layout.snapshot_bytes.max(JOURNAL_BYTES_MIN) => {
                let entries: Vec<(Extent, ExtentEntry)> = touched.into_iter().map(|e| (e, self.file_entry_of(e))).collect();
                let delta = ClaimsDelta { counter: self.counter, generation: self.generation, detached: self.detached, entries };
                let bytes = delta.encoded_len();
                if bytes < layout.snapshot_bytes.max(JOURNAL_BYTES_MIN) {
                    self.file_layout = Some(FileLayout { journal_bytes: layout.journal_bytes + bytes, ..layout });
                    ClaimsWrite::Delta(delta)
                } else {
                    self.full_file_write()
                }
            }
            _ => self.full_file_write(),
        };
        if self.check_file_writes {
            let shadow = match (&write, self.file_shadow.take()) {
                (ClaimsWrite::Full(c), _) => ClaimsState::from_contents(c),
                (ClaimsWrite::Delta(d), Some(mut s)) => {
                    s.apply(d);
                    s
                }
                (ClaimsWrite::Delta(_), None) => panic!("checks were turned on after the file's first whole write"),
            };
            assert_eq!(shadow.to_contents(), self.file_contents(), "the claims file's journal lost a change");
            self.file_shadow = Some(shadow);
        }
        write
    }

    /// Turns on (or off) checking, at every write of the claims file, that
    /// the writes so far add up to the whole state: a journal record that
    /// missed a change fails the check (O(extents) per write; tests and the
    /// simulator). Takes effect from the next whole write.
    pub fn check_file_writes(&mut self, on: bool) {
        self.check_file_writes = on;
        self.file_shadow = None;
        if on {
            self.file_layout = None;
        }
    }

    fn full_file_write(&mut self) -> ClaimsWrite {
        let contents = self.file_contents();
        let snapshot_bytes = claims_file::encoded_len(&contents);
        self.file_layout = Some(FileLayout { snapshot_bytes, journal_bytes: 0 });
        ClaimsWrite::Full(contents)
    }

    /// Our extents taken alone and not yet resynced, as the sync tells them.
    pub fn taken_list(&self) -> Vec<ExtentClaim> {
        self.taken.iter().map(|(&extent, &epoch)| ExtentClaim { extent, epoch }).collect()
    }

    /// Whether extents taken alone wait for the peer's resync.
    pub fn has_taken(&self) -> bool {
        !self.taken.is_empty()
    }

    /// Whether host writes to extent `e` are in flight here.
    pub fn writes_in_flight(&self, e: Extent) -> bool {
        matches!(self.extents.get(&e), Some(ExtentState::Owned(o)) if o.writes_in_flight > 0)
    }

    /// Whether a resync after an outage or restart is not finished: own
    /// extents not yet compared, the peer's taken extents not yet saved, or
    /// ours not yet resynced to the peer.
    pub fn resync_pending(&self) -> bool {
        !self.taken.is_empty() || !self.conflicts.is_empty() || self.suspect_len > 0
    }

    /// Own extents whose blocks must be compared with the peer's.
    pub fn suspects(&self) -> Vec<Extent> {
        if self.suspect_len == 0 {
            return Vec::new();
        }
        self.extents.iter().filter(|(_, s)| matches!(s, ExtentState::Owned(o) if o.suspect)).map(|(&e, _)| e).collect()
    }

    /// The peer's taken extents whose conflicts are not saved yet.
    pub fn conflicts(&self) -> &BTreeMap<Extent, ConflictEntry> {
        &self.conflicts
    }

    /// The newest outage generation known.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Raises the generation (recorded in the claims file).
    pub fn set_generation(&mut self, generation: u64) {
        if generation > self.generation {
            self.generation = generation;
            self.file_version += 1;
        }
    }

    /// Our own claims and our claims record, as exchanged at session start
    /// (an extent being received counts as the peer's until it is ours).
    pub fn views(&self) -> (Vec<ExtentClaim>, Vec<ExtentClaim>) {
        let c = self.file_contents();
        (c.own, c.record)
    }

    /// Handovers we gave and the new owner has not confirmed.
    pub fn gives(&self) -> Vec<ExtentClaim> {
        self.gives.iter().map(|(&extent, &epoch)| ExtentClaim { extent, epoch }).collect()
    }

    /// Figures for status.
    pub fn figures(&self) -> ClaimsFigures {
        let received_not_durable_bytes = self.inflight.iter().take_while(|f| f.seq <= self.peer_received).map(|f| f.bytes).sum();
        let dirt_bytes: usize = self
            .extents
            .values()
            .filter_map(|s| match s {
                ExtentState::Owned(o) => o.dirt.as_ref().map(|d| d.footprint_bytes()),
                _ => None,
            })
            .sum();
        let inflight_bytes: usize =
            self.inflight.iter().map(|f| std::mem::size_of::<InFlightCopy>() + f.extents.len() * std::mem::size_of::<Extent>()).sum();
        ClaimsFigures {
            owned_extents: self.owned.len() as u64,
            budget_used: self.budget() as u64,
            peer_owned_extents: self.record_len as u64,
            unsent_blocks: self.unsent_blocks,
            not_durable_blocks: self.not_durable_blocks,
            received_not_durable_bytes,
            tracking_bytes: (dirt_bytes + inflight_bytes + self.queue.len() * std::mem::size_of::<Extent>()) as u64,
        }
    }

    /// Changes an extent's state, keeping the counts, the gives and the
    /// claims file version right.
    fn set(&mut self, e: Extent, new: Option<ExtentState>) {
        self.touched.insert(e);
        if let Some(&given) = self.gives.get(&e) {
            let still_given = matches!(&new, Some(ExtentState::PeerOwned { epoch }) | Some(ExtentState::Acquiring { epoch, released: false, .. }) if *epoch == given);
            if !still_given {
                self.touched.insert(e);
                self.gives.remove(&e);
                self.file_version += 1;
            }
        }
        let old = match new {
            Some(state) => self.extents.insert(e, state),
            None => self.extents.remove(&e),
        };
        let new = self.extents.get(&e);
        let suspect = |s: Option<&ExtentState>| matches!(s, Some(ExtentState::Owned(o)) if o.suspect) as usize;
        self.suspect_len = self.suspect_len + suspect(new) - suspect(old.as_ref());
        if let Some(&epoch) = self.taken.get(&e)
            && !matches!(new, Some(ExtentState::Owned(o)) if o.epoch >= epoch)
        {
            self.touched.insert(e);
            self.taken.remove(&e);
            self.file_version += 1;
        }
        if let Some(c) = self.conflicts.get(&e)
            && !matches!(new, Some(ExtentState::PeerOwned { epoch }) if *epoch == c.epoch)
        {
            self.conflicts.remove(&e);
        }
        if !matches!(new, Some(ExtentState::Claiming)) {
            self.claim_of.remove(&e);
        }
        let count = |s: Option<&ExtentState>, f: fn(&ExtentState) -> bool| s.is_some_and(f) as usize;
        let owned = |s: &ExtentState| matches!(s, ExtentState::Owned(_));
        let (new_budget, new_record, new_owned) =
            (count(new, ExtentState::takes_budget), count(new, ExtentState::in_record), count(new, owned));
        let new_entry = new.and_then(ExtentState::file_entry);
        self.budget_used = self.budget_used + new_budget - count(old.as_ref(), ExtentState::takes_budget);
        self.record_len = self.record_len + new_record - count(old.as_ref(), ExtentState::in_record);
        match (count(old.as_ref(), owned), new_owned) {
            (0, 1) => {
                self.owned.insert(e);
            }
            (1, 0) => {
                self.owned.remove(&e);
            }
            _ => {}
        }
        if old.as_ref().and_then(ExtentState::file_entry) != new_entry {
            self.file_version += 1;
        }
        // Owning it again voids an unconfirmed release of it: either the
        // peer applied it (a newer grant followed) or never saw it (and
        // records it as ours, which we adopted). Writes wait until our file
        // no longer lists the release.
        if new_owned == 1 && self.released.remove(&e).is_some() {
            self.file_version += 1;
            let version = self.file_version;
            if let Some(ExtentState::Owned(o)) = self.extents.get_mut(&e) {
                o.writable_at = version;
                self.wait_version = self.wait_version.max(version);
            }
        }
        // Tracking of an extent that stops being owned by us goes with it
        // (its callers took what they needed first).
        if let Some(ExtentState::Owned(o)) = old
            && let Some(d) = o.dirt
            && new_owned == 0
        {
            self.apply_delta(CountDelta { unsent: -(d.unsent_count() as i64), not_durable: -(d.not_durable_count() as i64) });
            if d.queued {
                self.queue.retain(|q| *q != e);
            }
        }
    }

    fn apply_delta(&mut self, d: CountDelta) {
        self.unsent_blocks = self.unsent_blocks.checked_add_signed(d.unsent).expect("unsent count went negative");
        self.not_durable_blocks = self.not_durable_blocks.checked_add_signed(d.not_durable).expect("not-durable count went negative");
    }

    fn next_epoch(&mut self) -> Epoch {
        self.counter = Epoch(self.counter.0 + 1);
        self.counter
    }

    /// An epoch for an extent taken alone in the current outage: above any
    /// epoch the lost peer may have issued that we never heard of (a give
    /// or a grant on its way when the link broke), so that our claim wins
    /// the session-start merge. Each outage generation starts its own range.
    fn next_alone_epoch(&mut self) -> Epoch {
        let floor = self.generation.saturating_mul(ALONE_EPOCH_STRIDE);
        if self.counter.0 < floor {
            self.counter = Epoch(floor);
        }
        self.next_epoch()
    }

    // ------------------------------------------------------------ host I/O

    /// Where a read of extent `e` is served from.
    pub fn read_source(&self, e: Extent) -> ReadSource {
        match self.extents.get(&e) {
            Some(ExtentState::PeerOwned { .. }) | Some(ExtentState::Acquiring { released: false, .. }) => ReadSource::Peer,
            Some(ExtentState::Receiving { .. }) => ReadSource::Wait,
            _ => ReadSource::Local,
        }
    }

    /// Whether [`begin_write`](Self::begin_write) would admit a write to
    /// extents `range` without a message to the peer.
    pub fn would_admit(&self, range: RangeInclusive<u64>) -> bool {
        range.into_iter().all(|i| {
            matches!(self.extents.get(&Extent(i)), Some(ExtentState::Owned(o)) if !o.handing_out && o.writable_at <= self.file_durable)
                && !self.applying.contains_key(&Extent(i))
        })
    }

    /// Asks to write extents `range`. Admits the write only when all are
    /// owned (no hold-and-wait across extents, so two sites writing
    /// overlapping ranges cannot deadlock); otherwise starts at most one
    /// claim or handover for the first extent that needs one.
    pub fn begin_write(&mut self, range: RangeInclusive<u64>, now: Time, peer: PeerAccess) -> WriteAccess {
        for i in range.clone() {
            let e = Extent(i);
            if self.applying.contains_key(&e) {
                return WriteAccess::Wait(WaitReason::Busy);
            }
            match self.extents.get(&e) {
                Some(ExtentState::Owned(o)) if !o.handing_out && o.writable_at <= self.file_durable => continue,
                Some(ExtentState::Claiming) | Some(ExtentState::Acquiring { .. }) => return WriteAccess::Wait(WaitReason::PeerAnswer),
                Some(ExtentState::Owned(_)) | Some(ExtentState::Receiving { .. }) => return WriteAccess::Wait(WaitReason::Busy),
                Some(ExtentState::ClaimUnknown) if peer == PeerAccess::Alone => return self.claim_alone(&range, e, now),
                Some(ExtentState::ClaimUnknown) => return WriteAccess::Wait(WaitReason::Session),
                Some(ExtentState::PeerOwned { .. }) if self.conflicts.contains_key(&e) => return WriteAccess::Wait(WaitReason::Resync),
                Some(ExtentState::PeerOwned { epoch }) => {
                    let epoch = *epoch;
                    if peer != PeerAccess::Ready {
                        return WriteAccess::Wait(WaitReason::Session);
                    }
                    if !self.make_room(&range) {
                        return WriteAccess::Wait(WaitReason::Limit);
                    }
                    self.set(e, Some(ExtentState::Acquiring { epoch, regranted: false, released: false }));
                    return WriteAccess::Handover(e);
                }
                None if peer == PeerAccess::Alone => return self.claim_alone(&range, e, now),
                None => {
                    if peer == PeerAccess::Unavailable {
                        return WriteAccess::Wait(WaitReason::Session);
                    }
                    if !self.make_room(&range) {
                        return WriteAccess::Wait(WaitReason::Limit);
                    }
                    let mut claim = vec![e];
                    claim.extend(self.predict(e));
                    self.last_claim += 1;
                    for &c in &claim {
                        self.set(c, Some(ExtentState::Claiming));
                        self.claim_of.insert(c, self.last_claim);
                    }
                    self.last_demanded = Some(e);
                    return WriteAccess::Claim(claim);
                }
            }
        }
        for i in range {
            if let Some(ExtentState::Owned(o)) = self.extents.get_mut(&Extent(i)) {
                o.writes_in_flight += 1;
                o.changes += 1;
                o.last_write = now;
            }
        }
        WriteAccess::Admitted
    }

    /// Claims `e` (and the predicted extents after it) without the peer, as
    /// the survivor of an outage: owned at once at a fresh epoch and
    /// recorded as taken; the write waits until the claims file holds them.
    /// The owned-extent limit does not apply: the peer is lost, so nothing
    /// more is exposed than what is written here.
    fn claim_alone(&mut self, range: &RangeInclusive<u64>, e: Extent, now: Time) -> WriteAccess {
        let mut claim = vec![e];
        claim.extend(self.predict(e).into_iter().filter(|c| !range.contains(&c.0) || *c == e));
        self.own_alone(&claim, now);
        self.last_demanded = Some(e);
        WriteAccess::Wait(WaitReason::File)
    }

    /// Owns `extents` without the peer (claimed alone or taken over), each
    /// at a fresh epoch of this outage, recorded as taken; writes to them
    /// wait until the claims file that records them is durable.
    fn own_alone(&mut self, extents: &[Extent], now: Time) {
        for &e in extents {
            let epoch = self.next_alone_epoch();
            self.set(e, Some(ExtentState::Owned(Owned::new(epoch, now))));
            self.touched.insert(e);
            self.taken.insert(e, epoch);
        }
        self.file_version += 1;
        let version = self.file_version;
        for e in extents {
            if let Some(ExtentState::Owned(o)) = self.extents.get_mut(e) {
                o.writable_at = version;
                self.wait_version = self.wait_version.max(version);
            }
        }
    }

    /// The extents the peer owns here (what an operator's takeover takes).
    pub fn exposure(&self) -> Vec<ExtentClaim> {
        self.extents.iter().filter(|(_, s)| s.in_record()).map(|(&extent, s)| ExtentClaim { extent, epoch: s.epoch() }).collect()
    }

    /// Takes over every extent the lost peer owns (an operator's decision,
    /// as the survivor of an outage): owned at fresh epochs, recorded as
    /// taken, served from our data once the claims file holds them.
    /// Returns them.
    pub fn take_over(&mut self, now: Time) -> Vec<Extent> {
        let taken: Vec<Extent> = self.extents.iter().filter(|(_, s)| s.in_record()).map(|(&e, _)| e).collect();
        self.own_alone(&taken, now);
        taken
    }

    /// The peer saved its blocks of extent `e` that differ from ours and
    /// asks for ours (`runs`, relative to the volume): they join the copy
    /// stream, and `e` stops waiting for the resync. False when `e` is not
    /// ours (any more).
    pub fn on_resync_need(&mut self, e: Extent, runs: &[(u64, u64)]) -> bool {
        if !matches!(self.extents.get(&e), Some(ExtentState::Owned(_))) {
            return false;
        }
        let blocks = self.geometry.blocks_in(e);
        for &(first, count) in runs {
            let (start, end) = (first.max(blocks.start), (first + count).min(blocks.end));
            if start < end {
                self.mark_dirty(start, end);
            }
        }
        if self.taken.remove(&e).is_some() {
            self.touched.insert(e);
            self.file_version += 1;
        }
        true
    }

    /// The checksum comparison of own extent `e` is done: the blocks the
    /// peer lacks (`runs`) join the copy stream.
    pub fn resolve_suspect(&mut self, e: Extent, runs: &[(u64, u64)]) {
        let Some(ExtentState::Owned(o)) = self.extents.get_mut(&e) else { return };
        if !o.suspect {
            return;
        }
        o.suspect = false;
        self.suspect_len -= 1;
        let blocks = self.geometry.blocks_in(e);
        for &(first, count) in runs {
            let (start, end) = (first.max(blocks.start), (first + count).min(blocks.end));
            if start < end {
                self.mark_dirty(start, end);
            }
        }
    }

    /// Our differing blocks of extent `e` (taken by the peer) are saved and
    /// the peer knows which of its blocks to send: its data may land.
    pub fn conflict_resolved(&mut self, e: Extent) {
        self.conflicts.remove(&e);
    }

    /// Extents to claim ahead of `e`: after a sequential run of claims, the
    /// next clean extents, doubling with the run's length (at most 64 times
    /// `predict`, the volume's `predict_ceiling` and the room left under
    /// the limit).
    fn predict(&mut self, e: Extent) -> Vec<Extent> {
        if self.predict == 0 {
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
        let grown = self.predict << self.stream_run.min(6);
        let depth = grown.min(self.predict_ceiling);
        let free = self.max_owned.saturating_sub(self.budget() + 1) as u64;
        (e.0 + 1..self.geometry.extents())
            .take(depth.min(free) as usize)
            .map(Extent)
            .take_while(|c| !self.extents.contains_key(c))
            .collect()
    }

    /// Frees a place in the budget if the limit is reached, by releasing the
    /// least recently written extents that are durable at the peer, never
    /// one of the extents the write itself needs (`keep`): as many as it
    /// takes to get below the limit (after an outage the survivor may hold
    /// more than the limit). False: not enough can be released now
    /// (back-pressure).
    fn make_room(&mut self, keep: &RangeInclusive<u64>) -> bool {
        while self.budget() >= self.max_owned {
            let victim =
                self.owned_extents().filter(|(e, o)| self.releasable(*e, o) && !keep.contains(&e.0)).map(|(e, o)| (o.last_write, e)).min();
            match victim {
                Some((_, e)) => self.release(e),
                None => return false,
            }
        }
        true
    }

    /// Places taken in the owned-extent budget: extents we own or are
    /// acquiring, and extents we gave that the peer has not confirmed (a
    /// give that is revoked brings its extent back, so it cannot have made
    /// room for another).
    fn budget(&self) -> usize {
        self.budget_used + self.gives.len()
    }

    fn releasable(&self, e: Extent, o: &Owned) -> bool {
        self.clean_here(e, o) && self.syncs_done > o.write_mark
    }

    /// Durable at the peer and idle; releasable once its data is durable here.
    fn clean_here(&self, e: Extent, o: &Owned) -> bool {
        o.writes_in_flight == 0
            && !o.handing_out
            && o.dirt.is_none()
            && !o.suspect
            && !self.taken.contains_key(&e)
            && !self.applying.contains_key(&e)
    }

    /// Blocks written here and not yet durable at the peer (a kept count).
    pub fn not_durable_blocks(&self) -> u64 {
        self.not_durable_blocks
    }

    /// Whether the owned-extent limit is reached.
    pub fn at_limit(&self) -> bool {
        self.budget() >= self.max_owned
    }

    /// Whether an owned extent waits for a store sync to become releasable
    /// (idle long enough, or the limit is reached). O(extents): the node
    /// asks at each housekeeping, and at once only at the limit.
    pub fn needs_sync_for_release(&self, now: Time) -> bool {
        let at_limit = self.budget() >= self.max_owned;
        self.owned_extents().any(|(e, o)| {
            self.clean_here(e, o)
                && self.syncs_done <= o.write_mark
                && self.syncs_issued <= o.write_mark
                && (at_limit || now.since(o.last_write) >= self.release_after)
        })
    }

    /// The extents we own, in order.
    fn owned_extents(&self) -> impl Iterator<Item = (Extent, &Owned)> {
        self.owned.iter().map(|e| match self.extents.get(e) {
            Some(ExtentState::Owned(o)) => (*e, o),
            other => panic!("extent {e:?} is in the owned index as {other:?}"),
        })
    }

    fn release(&mut self, e: Extent) {
        if let Some(ExtentState::Owned(o)) = self.extents.get(&e) {
            let claim = ExtentClaim { extent: e, epoch: o.epoch };
            self.set(e, None);
            self.file_version += 1;
            let r = PendingRelease { claim, file_version: self.file_version };
            self.wait_version = self.wait_version.max(self.file_version);
            self.touched.insert(e);
            self.released.insert(e, r);
            self.releases.push(r);
        }
    }

    /// A store sync was issued (number `n`, counting from 1).
    pub fn note_sync_issued(&mut self, n: u64) {
        self.syncs_issued = self.syncs_issued.max(n);
    }

    /// The claims file is durable at `version`.
    pub fn note_file_durable(&mut self, version: u64) {
        self.file_durable = self.file_durable.max(version);
    }

    /// Store sync number `n` completed: every write that ended before it
    /// was issued is durable here.
    pub fn note_sync_done(&mut self, n: u64) {
        self.syncs_done = self.syncs_done.max(n);
    }

    /// Our releases the peer has not confirmed.
    pub fn unconfirmed_releases(&self) -> Vec<ExtentClaim> {
        self.released.values().map(|r| r.claim).collect()
    }

    /// The unconfirmed releases a claim or handover request carries: the
    /// oldest [`CLAIM_EXTENTS_MAX`] (the peer refuses more in one message).
    /// The rest ride on later requests; each one is also sent on the bulk
    /// lane, and the next session's sync confirms what was applied.
    pub fn releases_to_carry(&self) -> Vec<ExtentClaim> {
        let mut all: Vec<&PendingRelease> = self.released.values().collect();
        if all.len() > CLAIM_EXTENTS_MAX {
            all.sort_by_key(|r| (r.file_version, r.claim.extent));
            all.truncate(CLAIM_EXTENTS_MAX);
        }
        all.into_iter().map(|r| r.claim).collect()
    }

    /// Whether every unconfirmed release may leave (see [`PendingRelease::ready`]):
    /// only then may a claim carry them.
    pub fn releases_ready(&self, durable_version: u64) -> bool {
        self.released.values().all(|r| r.ready(durable_version))
    }

    /// Whether releases, or writes to an owned extent, wait for the claims
    /// file to be written.
    pub fn waits_for_file(&self, durable_version: u64) -> bool {
        // O(1): what waits was counted when it started waiting (an extent
        // given away or released meanwhile only makes the write come early).
        self.wait_version > durable_version
    }

    /// The peer applied these releases of ours (it answered the claim that
    /// carried them).
    pub fn confirm_releases(&mut self, carried: &[ExtentClaim]) {
        for c in carried {
            if self.released.get(&c.extent).is_some_and(|r| r.claim.epoch == c.epoch) {
                self.touched.insert(c.extent);
                self.released.remove(&c.extent);
                self.file_version += 1;
            }
        }
    }

    /// A write admitted by [`begin_write`](Self::begin_write) ended,
    /// successfully or not (a failed one may have written part of the
    /// range): its blocks join the copy stream either way.
    pub fn end_write(&mut self, offset: u64, length: u64, now: Time) {
        self.end_write_unmarked(offset, length, now);
        self.mark_written(offset, length);
    }

    /// A write admitted by [`begin_write`](Self::begin_write) reached the
    /// store and waits for the peer (`sync` modes): its blocks join the copy
    /// stream now, while it stays in flight (its extents are neither handed
    /// out nor released) until [`end_write_unmarked`](Self::end_write_unmarked).
    pub fn mark_written(&mut self, offset: u64, length: u64) {
        let first = offset / self.geometry.block_bytes;
        let end = (offset + length).div_ceil(self.geometry.block_bytes);
        self.mark_dirty(first, end);
    }

    /// Ends a write whose blocks [`mark_written`](Self::mark_written) already
    /// marked.
    pub fn end_write_unmarked(&mut self, offset: u64, length: u64, now: Time) {
        for i in self.geometry.extents_of(offset, length) {
            if let Some(ExtentState::Owned(o)) = self.extents.get_mut(&Extent(i)) {
                assert!(o.writes_in_flight > 0, "end_write without begin_write on extent {i}");
                o.writes_in_flight -= 1;
                o.last_write = now;
                o.write_mark = self.syncs_issued;
            }
        }
    }

    /// Whether any block of `offset..offset + length` waits to be sent.
    pub fn has_unsent_in(&self, offset: u64, length: u64) -> bool {
        let per = self.geometry.blocks_per_extent();
        let first = offset / self.geometry.block_bytes;
        let end = (offset + length).div_ceil(self.geometry.block_bytes);
        self.geometry.extents_of(offset, length).any(|i| match self.extents.get(&Extent(i)) {
            Some(ExtentState::Owned(o)) => o.dirt.as_ref().is_some_and(|d| {
                let base = i * per;
                d.has_unsent_between((first.max(base) - base) as usize, (end.min(base + per) - base) as usize)
            }),
            _ => false,
        })
    }

    /// Marks blocks `first..end` written, extent by extent (owned extents only).
    fn mark_dirty(&mut self, first: u64, end: u64) {
        let per = self.geometry.blocks_per_extent();
        let mut b = first;
        while b < end {
            let e = Extent(b / per);
            let stop = end.min((e.0 + 1) * per);
            let mut delta = CountDelta::default();
            let mut enqueue = false;
            if let Some(ExtentState::Owned(o)) = self.extents.get_mut(&e) {
                o.changes += 1;
                let dirt = o.dirt.get_or_insert_with(|| Box::new(Dirt::new(per as usize)));
                delta = dirt.mark((b - e.0 * per) as usize, (stop - e.0 * per) as usize);
                if !dirt.queued {
                    dirt.queued = true;
                    enqueue = true;
                }
            }
            if enqueue {
                self.queue.push_back(e);
            }
            self.apply_delta(delta);
            b = stop;
        }
    }

    // ------------------------------------------------------------ our requests' answers

    /// The peer answered our claim number `claim` (which carried `releases`).
    pub fn on_claim_reply(
        &mut self,
        claim: u64,
        extents: &[Extent],
        outcomes: &[ClaimOutcome],
        counter: Epoch,
        now: Time,
        releases: &[ExtentClaim],
    ) {
        self.observe_counter(counter);
        self.confirm_releases(releases);
        for (i, &e) in extents.iter().enumerate() {
            if !self.claiming_in(e, claim) {
                // Changed meanwhile (the peer's own claim was granted), or a
                // newer claim of ours for it is on its way (its answer decides).
                continue;
            }
            match outcomes.get(i).copied().unwrap_or(ClaimOutcome::Declined) {
                ClaimOutcome::Granted(epoch) => {
                    self.observe_counter(epoch);
                    self.set(e, Some(ExtentState::Owned(Owned::new(epoch, now))));
                }
                ClaimOutcome::OwnedByResponder(epoch) => self.set(e, Some(ExtentState::PeerOwned { epoch })),
                ClaimOutcome::Declined => self.set(e, None),
            }
        }
    }

    /// Our claim number `claim` was refused with an error: nothing was granted.
    pub fn on_claim_refused(&mut self, claim: u64, extents: &[Extent]) {
        for &e in extents {
            if self.claiming_in(e, claim) {
                self.set(e, None);
            }
        }
    }

    fn claiming_in(&self, e: Extent, claim: u64) -> bool {
        matches!(self.extents.get(&e), Some(ExtentState::Claiming)) && self.claim_of.get(&e) == Some(&claim)
    }

    /// Our claim's session ended before its answer: the peer may have
    /// granted it, so the extents keep their place in the budget until the
    /// next session's sync says (the bound on exposure holds meanwhile).
    pub fn on_claim_lost(&mut self, extents: &[Extent]) {
        for &e in extents {
            if matches!(self.extents.get(&e), Some(ExtentState::Claiming)) {
                self.set(e, Some(ExtentState::ClaimUnknown));
            }
        }
    }

    /// The peer granted our handover request at `epoch` (in a part or the
    /// final reply): the extent starts receiving. False when we were not
    /// asking for it (a protocol violation).
    pub fn on_handover_granted(&mut self, e: Extent, epoch: Epoch, complete: bool) -> bool {
        self.observe_counter(epoch);
        match self.extents.get(&e).cloned() {
            Some(ExtentState::Acquiring { epoch: from, .. }) => {
                self.set(e, Some(ExtentState::Receiving { epoch, from, stage: ReceivingStage::Applying { complete } }));
                true
            }
            Some(ExtentState::Receiving { epoch: mine, from, stage: ReceivingStage::Applying { .. } }) if mine == epoch => {
                if complete {
                    self.set(e, Some(ExtentState::Receiving { epoch, from, stage: ReceivingStage::Applying { complete: true } }));
                }
                true
            }
            _ => false,
        }
    }

    /// The peer answered that it does not own the extent we asked for.
    pub fn on_handover_declined(&mut self, e: Extent, counter: Epoch) {
        self.observe_counter(counter);
        if let Some(ExtentState::Acquiring { epoch, regranted, .. }) = self.extents.get(&e).cloned() {
            if regranted {
                // We re-granted it to the peer after asking: the answer is stale.
                self.set(e, Some(ExtentState::PeerOwned { epoch }));
            } else {
                self.set(e, None);
            }
        }
    }

    /// Our handover request failed without a grant (refused, or its session
    /// ended): the peer still owns the extent. A handover whose blocks were
    /// partly received goes back too: at the next sync we revoke the peer's
    /// give (at a fresh epoch) and the peer adopts the extent from our record.
    pub fn on_handover_failed(&mut self, e: Extent) {
        match self.extents.get(&e).cloned() {
            Some(ExtentState::Acquiring { released: true, .. }) => self.set(e, None),
            Some(ExtentState::Acquiring { epoch, .. }) => self.set(e, Some(ExtentState::PeerOwned { epoch })),
            Some(ExtentState::Receiving { from, stage: ReceivingStage::Applying { complete: false }, .. }) => {
                self.set(e, Some(ExtentState::PeerOwned { epoch: from }))
            }
            _ => {}
        }
    }

    /// A handover to us could not be applied here: the extent goes back to
    /// the peer at its old epoch (at the next sync we revoke the give, and
    /// the peer adopts the extent from our record).
    pub fn on_receive_failed(&mut self, e: Extent) {
        if let Some(ExtentState::Receiving { from, stage: ReceivingStage::Applying { .. }, .. }) = self.extents.get(&e).cloned() {
            self.set(e, Some(ExtentState::PeerOwned { epoch: from }));
        }
    }

    /// The blocks of a completed handover are durable in our store: our
    /// ownership goes to the claims file next.
    pub fn on_handover_applied(&mut self, e: Extent) {
        if let Some(ExtentState::Receiving { epoch, from, stage: ReceivingStage::Applying { complete: true } }) =
            self.extents.get(&e).cloned()
        {
            self.set(e, Some(ExtentState::Receiving { epoch, from, stage: ReceivingStage::Persisting }));
        }
    }

    /// Our ownership of a received extent is durable: it is owned, and
    /// writes may go on. Returns the epoch (to confirm to the giver).
    pub fn on_handover_durable(&mut self, e: Extent, now: Time) -> Option<Epoch> {
        match self.extents.get(&e) {
            Some(ExtentState::Receiving { epoch, stage: ReceivingStage::Persisting, .. }) => {
                let epoch = *epoch;
                let owned = Owned::new(epoch, now);
                self.set(e, Some(ExtentState::Owned(owned)));
                Some(epoch)
            }
            _ => None,
        }
    }

    /// Extents whose handover to us waits for its claims file write.
    pub fn persisting_handovers(&self) -> Vec<Extent> {
        self.extents
            .iter()
            .filter(|(_, s)| matches!(s, ExtentState::Receiving { stage: ReceivingStage::Persisting, .. }))
            .map(|(&e, _)| e)
            .collect()
    }

    /// Whether a handover to us is still being received.
    pub fn is_receiving(&self) -> bool {
        self.extents.values().any(|s| matches!(s, ExtentState::Receiving { .. }))
    }

    // ------------------------------------------------------------ the peer's requests

    /// The peer asks to record its claims. The caller makes the claims file
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
                        self.set(e, Some(ExtentState::Acquiring { epoch, regranted: true, released: false }));
                        ClaimOutcome::Granted(epoch)
                    }
                    Some(ExtentState::Claiming) if !self.wins_ties => {
                        let epoch = self.next_epoch();
                        self.set(e, Some(ExtentState::PeerOwned { epoch }));
                        ClaimOutcome::Granted(epoch)
                    }
                    Some(ExtentState::Claiming) | Some(ExtentState::ClaimUnknown) | Some(ExtentState::Receiving { .. }) => {
                        ClaimOutcome::Declined
                    }
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
        if matches!(self.extents.get(&e), Some(ExtentState::Receiving { .. })) {
            // It is being handed to us: ours in a moment (answering "not
            // the owner" now would make the requester think it clean).
            return HandoverStep::WaitForWrites;
        }
        let applying = self.applying.contains_key(&e);
        let taken = self.taken.contains_key(&e);
        let Some(ExtentState::Owned(o)) = self.extents.get_mut(&e) else {
            return HandoverStep::NotOwner;
        };
        o.handing_out = true;
        if o.writes_in_flight > 0 || applying || taken {
            // A taken extent waits for the peer's resync of it: its blocks
            // of the extent differ from ours in places our tracking does not
            // know.
            return HandoverStep::WaitForWrites;
        }
        let runs = match &o.dirt {
            _ if o.suspect => {
                let blocks = self.geometry.blocks_in(e);
                vec![(BlockIndex(blocks.start), blocks.end - blocks.start)]
            }
            Some(d) => {
                let base = e.0 * self.geometry.blocks_per_extent();
                d.not_durable_runs().into_iter().map(|(f, n)| (BlockIndex(base + f as u64), n as u64)).collect()
            }
            None => Vec::new(),
        };
        HandoverStep::Read { runs }
    }

    /// Gives an extent whose blocks were read (no write could happen since:
    /// it is being handed out): the peer owns it at the returned epoch, and
    /// the give stays recorded until the peer confirms it. None when the
    /// extent is no longer ours to give.
    pub fn commit_give(&mut self, e: Extent) -> Option<Epoch> {
        match self.extents.get(&e) {
            Some(ExtentState::Owned(o)) if o.handing_out && o.writes_in_flight == 0 => {}
            _ => return None,
        }
        let epoch = self.next_epoch();
        self.set(e, Some(ExtentState::PeerOwned { epoch }));
        self.touched.insert(e);
        self.gives.insert(e, epoch);
        self.file_version += 1;
        Some(epoch)
    }

    /// A handover we were asked for will not be given (its session ended
    /// before the give was committed, or reading its blocks failed): writes
    /// to the extent may go on.
    pub fn abandon_handover(&mut self, e: Extent) {
        if let Some(ExtentState::Owned(o)) = self.extents.get_mut(&e) {
            o.handing_out = false;
        }
    }

    /// The new owner confirms it applied our handover of `e` at `epoch`.
    pub fn on_handover_ack(&mut self, e: Extent, epoch: Epoch) {
        if self.gives.get(&e) == Some(&epoch) {
            self.touched.insert(e);
            self.gives.remove(&e);
            self.file_version += 1;
        }
    }

    /// The peer released extents: those at the current epoch leave our
    /// claims record; older epochs were overtaken by a newer claim.
    pub fn on_release(&mut self, released: &[ExtentClaim]) {
        for c in released {
            match self.extents.get(&c.extent).cloned() {
                Some(ExtentState::PeerOwned { epoch }) if epoch == c.epoch => self.set(c.extent, None),
                // Our handover request crossed the release: its answer
                // settles the state.
                Some(ExtentState::Acquiring { epoch, regranted, released: false }) if epoch == c.epoch => {
                    self.set(c.extent, Some(ExtentState::Acquiring { epoch, regranted, released: true }))
                }
                _ => {}
            }
        }
    }

    /// The peer released extents while this session's sync rounds run:
    /// besides [`on_release`](Self::on_release), remembered until the
    /// session is ready so that a sync answer the peer sent before the
    /// release does not give it the extents back.
    pub fn on_release_during_sync(&mut self, released: &[ExtentClaim]) {
        for c in released.iter().filter(|c| c.extent.0 < self.geometry.extents()) {
            let newest = self.released_during_sync.entry(c.extent).or_insert(c.epoch);
            *newest = (*newest).max(c.epoch);
        }
        self.on_release(released);
    }

    /// The session is ready (or a new one starts): sync answers no longer
    /// arrive, so releases seen during the rounds need not be remembered.
    pub fn forget_releases_during_sync(&mut self) {
        self.released_during_sync.clear();
    }

    /// Whether we can answer a pull of extent `e` with our store's data.
    pub fn can_serve_pull(&self, e: Extent) -> bool {
        self.read_source(e) == ReadSource::Local
    }

    /// Whether a copy for `e` at `epoch` is current (else it is dropped).
    pub fn accepts_copy(&self, e: Extent, epoch: Epoch) -> bool {
        matches!(self.extents.get(&e),
            Some(ExtentState::PeerOwned { epoch: mine }) | Some(ExtentState::Acquiring { epoch: mine, released: false, .. }) if *mine == epoch)
    }

    /// Peer data for `e` starts or stops being written to our store.
    pub fn set_applying(&mut self, e: Extent, on: bool) {
        if on {
            *self.applying.entry(e).or_insert(0) += 1;
        } else if let Some(n) = self.applying.get_mut(&e) {
            *n -= 1;
            if *n == 0 {
                self.applying.remove(&e);
            }
        }
    }

    // ------------------------------------------------------------ session start

    /// Merges the peer's view at session start (the peer's own claims, its
    /// record of ours, its unconfirmed gives). Epochs decide every
    /// disagreement; extents the peer records as ours are adopted. Returns
    /// the extents whose give to us was revoked.
    pub fn on_sync(&mut self, peer: &PeerView<'_>, now: Time) -> Vec<Extent> {
        let PeerView { counter, own: peer_own, record: peer_record, gives: peer_gives, generation: peer_generation, taken: peer_taken } =
            *peer;
        self.observe_counter(counter);
        let extents = self.geometry.extents();
        let mut revoked = Vec::new();
        // What we held of the extents the peer took alone, before merging:
        // it says what kind of conflict each one is.
        let our_generation = self.generation;
        // Ours if we owned it, were receiving it, or had given it and the
        // peer never applied the give (our data there is the newest).
        let prior: Vec<(ExtentClaim, bool)> = peer_taken
            .iter()
            .filter(|c| c.extent.0 < extents)
            .map(|c| {
                let ours = matches!(self.extents.get(&c.extent), Some(ExtentState::Owned(_)) | Some(ExtentState::Receiving { .. }))
                    || self.gives.contains_key(&c.extent);
                (*c, ours)
            })
            .collect();
        // Handovers the peer gave us and we never applied (the reply was
        // lost with the link): the peer's store holds the newest data, so
        // the give is revoked: the peer owns it again, at a fresh epoch.
        for c in peer_gives.iter().filter(|c| c.extent.0 < extents) {
            // Applied (or overtaken since): we own it at that epoch or
            // later; our record has the peer owning it at that epoch or later
            // (we applied it and gave it back since); or we released it at
            // that epoch or later and the peer has not confirmed it yet (its
            // give is stale in its file).
            let applied = match self.extents.get(&c.extent) {
                Some(ExtentState::Owned(o)) => o.epoch >= c.epoch,
                Some(ExtentState::PeerOwned { epoch }) | Some(ExtentState::Acquiring { epoch, .. }) => *epoch >= c.epoch,
                Some(ExtentState::Receiving { epoch, .. }) => *epoch >= c.epoch,
                Some(ExtentState::Claiming) | Some(ExtentState::ClaimUnknown) | None => {
                    self.released.get(&c.extent).is_some_and(|r| r.claim.epoch >= c.epoch)
                }
            };
            if !applied {
                // A fresh epoch, above any either side has seen (the counters
                // were exchanged), so the peer adopts it from our record.
                let epoch = self.next_epoch();
                self.set(c.extent, Some(ExtentState::PeerOwned { epoch }));
                revoked.push(c.extent);
            }
        }
        // Releases not yet sent belong to the old session and are dropped
        // here; those the peer still records at the released epoch are
        // queued again below (from `released`) rather than adopted.
        self.releases.clear();
        for c in peer_own.iter().filter(|c| c.extent.0 < extents) {
            self.observe_counter(c.epoch);
            if self.gives.get(&c.extent).is_some_and(|g| c.epoch >= *g) {
                // The peer owns what we gave it: the handover was applied.
                self.touched.insert(c.extent);
                self.gives.remove(&c.extent);
                self.file_version += 1;
            }
            if self.released_during_sync.get(&c.extent).is_some_and(|released| *released >= c.epoch) {
                // The peer released it after it sent this answer.
                continue;
            }
            match self.extents.get(&c.extent).cloned() {
                None | Some(ExtentState::Claiming) | Some(ExtentState::ClaimUnknown) => {
                    self.set(c.extent, Some(ExtentState::PeerOwned { epoch: c.epoch }))
                }
                Some(ExtentState::PeerOwned { epoch }) if c.epoch > epoch => {
                    self.set(c.extent, Some(ExtentState::PeerOwned { epoch: c.epoch }))
                }
                Some(ExtentState::Acquiring { epoch, regranted, .. }) if c.epoch > epoch => {
                    self.set(c.extent, Some(ExtentState::Acquiring { epoch: c.epoch, regranted, released: false }))
                }
                Some(ExtentState::Owned(o))
                    if o.writes_in_flight == 0 && (c.epoch > o.epoch || (c.epoch == o.epoch && !self.wins_ties)) =>
                {
                    // Both sides own it: only after both acted alone (two
                    // operators each took over, no witness). The newer
                    // epoch wins, and of equal epochs (claimed alone at
                    // both sides from the same counter) the tie-breaker's;
                    // the loser's blocks go to its conflict file below.
                    self.set(c.extent, Some(ExtentState::PeerOwned { epoch: c.epoch }));
                }
                _ => {}
            }
        }
        for c in peer_record.iter().filter(|c| c.extent.0 < extents) {
            self.observe_counter(c.epoch);
            if !self.extents.contains_key(&c.extent) && self.released.get(&c.extent).is_some_and(|r| r.claim.epoch == c.epoch) {
                // Our release of it was lost with the link: its data is at
                // the peer (release after data), so it is released again
                // rather than taken back.
                self.releases.push(self.released[&c.extent]);
                continue;
            }
            match self.extents.get(&c.extent).cloned() {
                Some(ExtentState::Owned(mut o)) if c.epoch > o.epoch => {
                    o.epoch = c.epoch;
                    self.set(c.extent, Some(ExtentState::Owned(o)));
                }
                Some(ExtentState::Owned(_)) | Some(ExtentState::Receiving { .. }) => {}
                // We never wrote under a claim whose answer we did not see.
                Some(ExtentState::ClaimUnknown) => self.adopt(c.extent, c.epoch, now, false),
                None | Some(ExtentState::Claiming) => self.adopt(c.extent, c.epoch, now, true),
                Some(ExtentState::PeerOwned { epoch }) | Some(ExtentState::Acquiring { epoch, .. }) => {
                    if c.epoch > epoch {
                        self.adopt(c.extent, c.epoch, now, true);
                    }
                }
            }
        }
        // A give the peer mentions nowhere was applied and released since
        // (had the peer not applied it, its record would still list the
        // extent as ours): confirmed. Its release reaches us again.
        let forgotten: Vec<Extent> =
            self.gives.keys().copied().filter(|e| !peer_own.iter().chain(peer_record).any(|c| c.extent == *e)).collect();
        for e in forgotten {
            self.touched.insert(e);
            self.gives.remove(&e);
            self.file_version += 1;
        }
        // Claims the peer does not record as ours were not granted.
        let unknown: Vec<Extent> = self.extents.iter().filter(|(_, s)| matches!(s, ExtentState::ClaimUnknown)).map(|(&e, _)| e).collect();
        for e in unknown {
            self.set(e, None);
        }
        // Releases the peer no longer records (at that epoch) were applied.
        let applied: Vec<ExtentClaim> = self.released.values().filter(|r| !peer_record.contains(&r.claim)).map(|r| r.claim).collect();
        self.confirm_releases(&applied);
        // Extents the peer took alone while we were lost and owns now: its
        // data wins; ours is saved to the conflict file first.
        for (c, owned_before) in prior {
            if let Some(ExtentState::PeerOwned { epoch }) = self.extents.get(&c.extent)
                && *epoch >= c.epoch
            {
                let kind = if owned_before { crate::io::ConflictKind::TakenOver } else { crate::io::ConflictKind::ClaimedAlone };
                let entry = ConflictEntry { epoch: *epoch, their_generation: peer_generation, our_generation, kind };
                self.conflicts.entry(c.extent).or_insert(entry);
            }
        }
        self.set_generation(peer_generation);
        revoked
    }

    /// Takes ownership of an extent the peer records as ours; with
    /// `suspect`, every block is sent again (we cannot know which ones the
    /// peer lacks).
    fn adopt(&mut self, e: Extent, epoch: Epoch, now: Time, suspect: bool) {
        if e.0 >= self.geometry.extents() {
            return;
        }
        self.observe_counter(epoch);
        let owned = Owned { suspect, ..Owned::new(epoch, now) };
        self.set(e, Some(ExtentState::Owned(owned)));
    }

    // ------------------------------------------------------------ copy stream

    /// Whether any block waits to be sent.
    pub fn has_unsent(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Copy messages sent and not yet durable at the peer.
    pub fn copies_in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// Bytes of copies sent and not yet reported received by the peer.
    pub fn unreceived_bytes(&self) -> u64 {
        self.unreceived_bytes
    }

    /// Copy message `seq` could not be sent (its blocks could not be read):
    /// it is forgotten, and its blocks are sent again in a later message.
    pub fn copy_failed(&mut self, seq: CopySeq, runs: &[CopyRun]) {
        if let Some(i) = self.inflight.iter().position(|f| f.seq == seq) {
            let f = self.inflight.remove(i).expect("found");
            if f.seq > self.peer_received {
                self.unreceived_bytes -= f.bytes;
            }
        }
        for run in runs {
            self.mark_dirty(run.first.0, run.first.0 + run.count);
        }
    }

    /// Every copy up to here is in the peer's memory (this session).
    pub fn peer_received(&self) -> CopySeq {
        self.peer_received
    }

    /// Every copy up to here is durable at the peer (this session).
    pub fn peer_durable(&self) -> CopySeq {
        self.peer_durable
    }

    /// The newest copy position handed out so far.
    pub fn last_copy_seq(&self) -> CopySeq {
        CopySeq(self.next_seq.0 - 1)
    }

    /// Takes up to `max_runs` runs, `max_blocks` blocks in all, to travel
    /// as one copy message: one frame, one apply, one progress entry for
    /// many small writes. Returns the message's position and its runs.
    pub fn next_copy_batch(&mut self, max_blocks: u64, max_runs: usize) -> Option<(CopySeq, Vec<CopyRun>)> {
        let seq = self.next_seq;
        let per = self.geometry.blocks_per_extent();
        let mut runs = Vec::new();
        let mut blocks = 0;
        let mut touched = Vec::new();
        while runs.len() < max_runs && blocks < max_blocks {
            let Some(&e) = self.queue.front() else { break };
            let Some(ExtentState::Owned(o)) = self.extents.get_mut(&e) else {
                self.queue.pop_front();
                continue;
            };
            let epoch = o.epoch;
            let Some(dirt) = o.dirt.as_mut() else {
                self.queue.pop_front();
                continue;
            };
            let (taken, delta) = dirt.take_runs(max_blocks - blocks, max_runs - runs.len(), seq);
            if !dirt.has_unsent() {
                dirt.queued = false;
                self.queue.pop_front();
            }
            if !taken.is_empty() {
                touched.push(e);
            }
            for (first, count) in taken {
                blocks += count as u64;
                runs.push(CopyRun { extent: e, epoch, first: BlockIndex(e.0 * per + first as u64), count: count as u64 });
            }
            self.apply_delta(delta);
        }
        if runs.is_empty() {
            return None;
        }
        let bytes = blocks * self.geometry.block_bytes;
        self.inflight.push_back(InFlightCopy { seq, extents: touched, bytes });
        self.unreceived_bytes += bytes;
        self.next_seq = CopySeq(seq.0 + 1);
        Some((seq, runs))
    }

    /// Sends the blocks of an admitted write that is still on its way to
    /// the store as copy message of their own, with the write's buffer
    /// (`sync` modes: the copy travels while the store is written). Only
    /// when the write is alone in its extents (no other write in flight
    /// there, so the store and the peer end with the same bytes) and they
    /// are at most `max_runs` extents. Returns the message's position, its
    /// runs (one per extent) and the extents' change count, which the write
    /// compares when it is done ([`changes_in`](Self::changes_in)).
    pub fn direct_copy(&mut self, offset: u64, length: u64, max_runs: usize) -> Option<(CopySeq, Vec<CopyRun>, u64)> {
        let extents = self.geometry.extents_of(offset, length);
        if (extents.end() - extents.start() + 1) as usize > max_runs
            || !extents.clone().all(|i| matches!(self.extents.get(&Extent(i)), Some(ExtentState::Owned(o)) if o.writes_in_flight == 1))
        {
            return None;
        }
        let seq = self.next_seq;
        let per = self.geometry.blocks_per_extent();
        let first = offset / self.geometry.block_bytes;
        let end = (offset + length).div_ceil(self.geometry.block_bytes);
        let mut runs = Vec::new();
        let mut touched = Vec::new();
        for i in extents {
            let e = Extent(i);
            let base = i * per;
            let (from, to) = (first.max(base), end.min(base + per));
            let Some(ExtentState::Owned(o)) = self.extents.get_mut(&e) else { unreachable!("checked above") };
            let dirt = o.dirt.get_or_insert_with(|| Box::new(Dirt::new(per as usize)));
            let delta = dirt.take_range((from - base) as usize, (to - base) as usize, seq);
            let emptied = dirt.queued && !dirt.has_unsent();
            if emptied {
                // Nothing of it is left to send: out of the queue, so that
                // `has_unsent` stays exact.
                dirt.queued = false;
            }
            runs.push(CopyRun { extent: e, epoch: o.epoch, first: BlockIndex(from), count: to - from });
            touched.push(e);
            self.apply_delta(delta);
            if emptied && let Some(at) = self.queue.iter().position(|&q| q == e) {
                self.queue.remove(at);
            }
        }
        let bytes = (end - first) * self.geometry.block_bytes;
        self.inflight.push_back(InFlightCopy { seq, extents: touched, bytes });
        self.unreceived_bytes += bytes;
        self.next_seq = CopySeq(seq.0 + 1);
        Some((seq, runs, self.changes_in(offset, length)))
    }

    /// How many host writes were admitted to the extents of the range
    /// `offset..offset + length`, and block ranges of them marked for the
    /// copy stream (a write's end, a resync, a checksum comparison, a failed
    /// copy read), so far (while they stay owned).
    pub fn changes_in(&self, offset: u64, length: u64) -> u64 {
        self.geometry
            .extents_of(offset, length)
            .map(|i| match self.extents.get(&Extent(i)) {
                Some(ExtentState::Owned(o)) => o.changes,
                _ => 0,
            })
            .sum()
    }

    /// The peer reports copies up to `received` in its memory (not yet
    /// durable: a crash there loses them, so they stay tracked).
    pub fn on_copy_received(&mut self, received: CopySeq) {
        if received <= self.peer_received {
            return;
        }
        for f in self.inflight.iter().skip_while(|f| f.seq <= self.peer_received).take_while(|f| f.seq <= received) {
            self.unreceived_bytes -= f.bytes;
        }
        self.peer_received = received;
    }

    /// The peer reports copies up to `durable` durable: extents whose
    /// newest copy that covers are clean of it.
    pub fn on_copy_durable(&mut self, durable: CopySeq) {
        self.on_copy_received(durable);
        self.peer_durable = self.peer_durable.max(durable);
        while self.inflight.front().is_some_and(|f| f.seq <= durable) {
            let f = self.inflight.pop_front().expect("checked");
            for e in f.extents {
                let mut delta = CountDelta::default();
                if let Some(ExtentState::Owned(o)) = self.extents.get_mut(&e)
                    && let Some(d) = o.dirt.as_mut()
                {
                    delta = d.on_durable(durable);
                    if d.is_clean() {
                        o.dirt = None;
                    }
                }
                self.apply_delta(delta);
            }
        }
    }

    /// A new session starts: everything in flight is sent again, from
    /// position 1, in extent order.
    pub fn on_copy_session_reset(&mut self) {
        let mut total = CountDelta::default();
        for (_, s) in self.extents.iter_mut() {
            if let ExtentState::Owned(o) = s
                && let Some(d) = o.dirt.as_mut()
            {
                let delta = d.requeue_inflight();
                total.unsent += delta.unsent;
                d.queued = d.has_unsent();
            }
        }
        self.apply_delta(total);
        self.queue = self
            .extents
            .iter()
            .filter(|(_, s)| matches!(s, ExtentState::Owned(o) if o.dirt.as_ref().is_some_and(|d| d.queued)))
            .map(|(&e, _)| e)
            .collect();
        self.inflight.clear();
        self.next_seq = CopySeq(1);
        self.peer_received = CopySeq(0);
        self.peer_durable = CopySeq(0);
        self.unreceived_bytes = 0;
    }

    // ------------------------------------------------------------ releases

    /// Releases owned extents that are idle for `release_after` and durable
    /// at the peer. Returns how many.
    pub fn release_idle(&mut self, now: Time) -> usize {
        let idle: Vec<Extent> = self
            .owned_extents()
            .filter(|(e, o)| self.releasable(*e, o) && now.since(o.last_write) >= self.release_after)
            .map(|(e, _)| e)
            .collect();
        for &e in &idle {
            self.release(e);
        }
        idle.len()
    }

    /// Releases ready to send (see [`PendingRelease::ready`]).
    pub fn take_releases(&mut self, durable_version: u64) -> Vec<ExtentClaim> {
        let (ready, wait): (Vec<PendingRelease>, Vec<PendingRelease>) = self.releases.iter().partition(|r| r.ready(durable_version));
        self.releases = wait;
        ready.into_iter().map(|r| r.claim).collect()
    }

    /// Whether releases wait to be sent.
    pub fn has_releases(&self) -> bool {
        !self.releases.is_empty()
    }

    // ------------------------------------------------------------ checks

    /// Checks the structural invariants; tests and the simulator call it
    /// after every step.
    pub fn check(&self) {
        let budget = self.extents.values().filter(|s| s.takes_budget()).count();
        assert_eq!(budget, self.budget_used, "budget count drifted");
        let record = self.extents.values().filter(|s| s.in_record()).count();
        assert_eq!(record, self.record_len, "claims record count drifted");
        let owned: BTreeSet<Extent> = self.extents.iter().filter(|(_, s)| matches!(s, ExtentState::Owned(_))).map(|(&e, _)| e).collect();
        assert_eq!(owned, self.owned, "the owned index drifted");
        let suspects = self.extents.values().filter(|s| matches!(s, ExtentState::Owned(o) if o.suspect)).count();
        assert_eq!(suspects, self.suspect_len, "suspect count drifted");
        let waiting = self.released.values().chain(&self.releases).map(|r| r.file_version);
        let writable = self.extents.values().filter_map(|s| match s {
            ExtentState::Owned(o) => Some(o.writable_at),
            _ => None,
        });
        assert!(waiting.chain(writable).all(|v| v <= self.wait_version), "something waits for a claims file version past wait_version");
        let (mut unsent, mut not_durable) = (0, 0);
        for (e, s) in &self.extents {
            if let ExtentState::Owned(o) = s {
                assert!(o.epoch <= self.counter, "extent {e:?} epoch {:?} above the counter {:?}", o.epoch, self.counter);
                if let Some(d) = &o.dirt {
                    unsent += d.unsent_count();
                    not_durable += d.not_durable_count();
                    assert_eq!(d.queued, self.queue.contains(e), "extent {e:?} queued flag disagrees with the queue");
                    assert!(!d.has_unsent() || d.queued, "extent {e:?} has unsent blocks but is not queued");
                }
            }
        }
        assert_eq!(unsent, self.unsent_blocks, "unsent count drifted");
        assert_eq!(not_durable, self.not_durable_blocks, "not-durable count drifted");
        for g in self.gives.keys() {
            assert!(matches!(self.extents.get(g), Some(s) if s.in_record()), "give of {g:?} for an extent the peer does not own here");
        }
        let unreceived: u64 = self.inflight.iter().filter(|f| f.seq > self.peer_received).map(|f| f.bytes).sum();
        assert_eq!(unreceived, self.unreceived_bytes, "unreceived byte count drifted");
    }
}
