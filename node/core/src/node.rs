//! [`NodeCore`]: the protocol engine of one node. It owns the claims of
//! every volume, the session with the peer, the host requests waiting on
//! either, and the order of every message and durable step. The runtime
//! feeds it inputs and carries out its outputs; the simulator does the same
//! with simulated disks and a simulated network.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};

use bytes::Bytes;
use geomirror_wire::peer::{Extent, Lane, Message, RequestId};

use crate::claims::{Claims, ClaimsFigures, CopyRun, PeerAccess, ReadSource};
use crate::claims_file::ClaimsFileContents;
use crate::config::{CoreConfig, VolumeSettings};
use crate::host::HostTask;
use crate::ids::{HostRequestId, IoToken, SessionGen, VolumeIndex};
use crate::io::{Event, HostError, Input, IoFault, IoOp, IoOutcome, Output};
use crate::limits::{HOUSEKEEPING_INTERVAL, REQUESTS_INFLIGHT_MAX, WRITE_GROUP_EXTENTS_MAX};
use crate::outbox::Place;
use crate::replication::{Replication, ReplicationView};
use crate::resync::{Resync, ResyncFigures};
use crate::session::{Pending, Session};
use crate::standing::{Health, Standing, SurvivorRole};
use crate::time::Time;

/// Whether a volume is served to hosts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Serving {
    /// Served.
    Yes,
    /// The peer's volume differs (from the hello); served again when a
    /// later session finds them matching.
    Mismatch(String),
    /// A fault the core cannot carry on through; until restart.
    Stopped(String),
}

/// The claims file's writes.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FileWrites {
    /// The newest version known durable.
    pub durable: u64,
    /// The version being written, if a write is in flight.
    pub writing: Option<u64>,
}

/// Something waiting for the claims file to be durable at a version.
#[derive(Debug)]
pub(crate) enum DurableWaiter {
    /// Messages to put in a reserved place (a claim's grant, a sync's answer).
    Reply { session: SessionGen, place: Place, messages: Vec<Message>, on_failure: Vec<Message> },
    /// A handover to us, whose ownership is being written.
    Received { extent: Extent },
    /// A round of the session-start sync (dialer).
    SyncRound { session: SessionGen },
}

/// A handover we were asked for, being served.
#[derive(Debug)]
pub(crate) struct Give {
    pub session: SessionGen,
    pub id: RequestId,
    pub counter: geomirror_wire::peer::Epoch,
    pub stage: GiveStage,
}

/// How far a give got.
#[derive(Debug)]
pub(crate) enum GiveStage {
    /// Writes to the extent are in flight.
    WaitingWrites,
    /// Its blocks are being read.
    Reading,
    /// Given; the reply waits in its place until the claims file version
    /// that records the give is durable and a store sync issued after the
    /// read completed (the blocks it carries are durable here too).
    Durable { place: Place, messages: Vec<Message>, version: u64, sync: u64 },
}

/// The store syncs of a volume, numbered from 1 as they are issued.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct StoreSyncs {
    /// The latest issued.
    pub issued: u64,
    /// The latest completed (every write before its issue is durable).
    pub done: u64,
}

/// The receiving side of the copy stream of one volume.
#[derive(Debug, Default)]
pub(crate) struct Receiver {
    /// The session whose copies are received.
    pub session: Option<SessionGen>,
    /// The newest copy position accepted in this session.
    pub last_seq: geomirror_wire::peer::CopySeq,
    /// Every copy up to here is applied (in our page cache).
    pub applied: geomirror_wire::peer::CopySeq,
    /// Every copy up to here is durable.
    pub durable: geomirror_wire::peer::CopySeq,
    /// When the grouped fdatasync is due.
    pub sync_at: Option<Time>,
    /// A grouped fdatasync in flight, covering copies up to this.
    pub syncing: Option<geomirror_wire::peer::CopySeq>,
    /// The sender waits for copies up to here to be durable: sync at once.
    pub urgent: geomirror_wire::peer::CopySeq,
    /// The newest applied copy a host at the sender was answered for at
    /// its arrival (`sync-memory`): while it is not durable, the grouped
    /// fdatasync lingers only [`ACKED_COPY_SYNC_LINGER`].
    ///
    /// [`ACKED_COPY_SYNC_LINGER`]: crate::limits::ACKED_COPY_SYNC_LINGER
    pub acked_in_memory: geomirror_wire::peer::CopySeq,
    /// Peer data waiting to be written, in arrival order.
    pub queue: VecDeque<ApplyJob>,
    /// The write in flight.
    pub applying: Option<IoToken>,
}

/// Peer data to write to our store.
#[derive(Debug)]
pub(crate) enum ApplyJob {
    /// A copy message.
    Copy {
        session: SessionGen,
        seq: geomirror_wire::peer::CopySeq,
        items: Vec<geomirror_wire::peer::CopyItem>,
        report: geomirror_wire::peer::CopyReport,
    },
    /// Blocks of a handover to us (`last`: the final reply's part).
    Handover { extent: Extent, runs: Vec<geomirror_wire::peer::BlockRun>, last: bool },
}

/// The sending side of the copy stream of one volume.
#[derive(Debug)]
pub(crate) struct Sender {
    /// Reads of blocks for copies in flight.
    pub reads_in_flight: usize,
    /// Nothing was waiting at the last look: the next write starts a linger.
    pub idle: bool,
    /// When the linger ends.
    pub linger_until: Option<Time>,
    /// Blocks have waited to be sent since then (the queue was last empty).
    pub unsent_since: Option<Time>,
    /// When each copy not yet durable at the peer was sent, oldest first
    /// (at most `COPY_INFLIGHT_MESSAGES_MAX`).
    pub sent_at: VecDeque<(geomirror_wire::peer::CopySeq, Time)>,
}

/// Counters of one volume, for status and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VolumeCounters {
    /// Host writes that waited for a claim or handover round trip.
    pub claim_round_trips: u64,
    /// Read pieces pulled from the peer.
    pub pulls: u64,
    /// Extents handed over to this node.
    pub handovers_received: u64,
    /// Extents this node handed over.
    pub handovers_given: u64,
    /// Extents granted to the peer.
    pub claims_granted: u64,
    /// Copy runs applied from the peer.
    pub copies_applied: u64,
    /// Copy runs from the peer dropped: stale (an older epoch), or the
    /// volume is not served.
    pub copies_stale: u64,
    /// Payload bytes of copies sent (zero runs not counted).
    pub copy_sent_bytes: u64,
    /// Extents released.
    pub releases: u64,
}

/// One mirrored volume inside the core.
pub(crate) struct VolumeCore {
    pub index: VolumeIndex,
    pub settings: VolumeSettings,
    pub claims: Claims,
    pub serving: Serving,
    pub file: FileWrites,
    pub durable_waiters: Vec<(u64, DurableWaiter)>,
    /// Host requests waiting for a state change of this volume.
    pub parked: BTreeSet<HostRequestId>,
    pub gives: BTreeMap<Extent, Give>,
    pub receiver: Receiver,
    pub sender: Sender,
    pub counters: VolumeCounters,
    pub syncs: StoreSyncs,
    /// Requests of ours whose releases may not leave yet, in their places.
    pub held_sends: Vec<(SessionGen, Place, Message)>,
    /// The resync after an outage or a restart.
    pub resync: Resync,
    /// When a copy of each peer-owned extent was last applied here (what an
    /// operator's takeover would lose since then).
    pub last_copy: BTreeMap<Extent, Time>,
    /// The replication mode and its state.
    pub replication: Replication,
}

/// What a completed I/O continues.
#[derive(Debug)]
pub(crate) enum IoPurpose {
    HostWrite {
        task: HostRequestId,
    },
    HostSync {
        task: HostRequestId,
    },
    HostRead {
        task: HostRequestId,
        pieces: Vec<usize>,
    },
    Persist {
        volume: usize,
        version: u64,
    },
    CopyRead {
        volume: usize,
        session: SessionGen,
        place: Place,
        seq: geomirror_wire::peer::CopySeq,
        runs: Vec<CopyRun>,
    },
    PullRead {
        volume: usize,
        session: SessionGen,
        place: Place,
        id: RequestId,
    },
    GiveRead {
        volume: usize,
        extent: Extent,
        runs: Vec<(geomirror_wire::peer::BlockIndex, u64)>,
    },
    ApplyCopy {
        volume: usize,
        session: SessionGen,
        seq: geomirror_wire::peer::CopySeq,
        extents: Vec<Extent>,
        runs: u64,
        report: geomirror_wire::peer::CopyReport,
        synced: bool,
    },
    ApplyHandover {
        volume: usize,
        extent: Extent,
        last: bool,
    },
    ReceiverSync {
        volume: usize,
        session: SessionGen,
        upto: geomirror_wire::peer::CopySeq,
    },
    HandoverSync {
        volume: usize,
        extent: Extent,
    },
    /// A sync that releases or gives wait for.
    StoreSync {
        volume: usize,
    },
    /// The grouped sync that writes and flushes of sync modes wait for.
    GroupSync {
        volume: usize,
    },
    /// Our checksums of an extent being resynced.
    ResyncDigest {
        volume: usize,
        extent: Extent,
    },
    /// Our differing blocks of an extent the peer took, to be saved.
    ConflictRead {
        volume: usize,
        extent: Extent,
    },
    /// Those blocks being appended to the conflict file.
    ConflictSave {
        volume: usize,
        extent: Extent,
    },
    /// The store sync before checksums the peer asked for (they must say
    /// what is durable here: the owner treats equal blocks as durable).
    DigestSyncForPeer {
        volume: usize,
        session: SessionGen,
        place: Place,
        id: RequestId,
        range: (u64, u64),
    },
    /// Checksums the peer asked for.
    DigestForPeer {
        volume: usize,
        session: SessionGen,
        place: Place,
        id: RequestId,
    },
}

/// A view of one volume for status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeView {
    /// Export name.
    pub name: String,
    /// None when served, else why not.
    pub problem: Option<String>,
    /// Claims figures.
    pub figures: ClaimsFigures,
    /// Counters.
    pub counters: VolumeCounters,
    /// Resync progress.
    pub resync: ResyncFigures,
    /// Extents taken alone and not yet resynced to the peer.
    pub taken_extents: u64,
    /// Replication mode and figures.
    pub replication: ReplicationView,
    /// How long blocks have waited to be sent (since the queue was last empty).
    pub oldest_unsent: Option<std::time::Duration>,
    /// How long ago the oldest copy not yet durable at the peer was sent.
    pub oldest_not_durable: Option<std::time::Duration>,
}

/// A view of the session for status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionView {
    /// Which session.
    pub session: SessionGen,
    /// Whether the session-start sync is done.
    pub ready: bool,
    /// Our requests awaiting answers.
    pub requests_in_flight: usize,
    /// The round trip of the last answered heartbeat (only the dialer
    /// sends them).
    pub rtt: Option<std::time::Duration>,
}

/// What [`NodeCore::status`] returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreStatus {
    /// The session, if one is up.
    pub session: Option<SessionView>,
    /// Per volume, in index order.
    pub volumes: Vec<VolumeView>,
    /// The node's health and why.
    pub health: Health,
    /// Why the node has that health.
    pub health_reason: String,
    /// The newest outage generation known.
    pub generation: u64,
    /// The survivor role, if held.
    pub survivor: Option<SurvivorRole>,
    /// Whether the node may answer host requests now.
    pub serving_hosts: bool,
    /// How long the lease still runs (None: no witness or no lease).
    pub lease_left: Option<std::time::Duration>,
    /// Whether the witness link is up (None: no witness configured).
    pub witness_up: Option<bool>,
    /// The core's time when the snapshot was taken.
    pub now: Time,
}

/// An operator's takeover could not be done.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TakeoverRefused {
    /// No such volume.
    #[error("no volume #{0}")]
    NoVolume(u16),
    /// The peer link is up: nothing to take over, ask the peer instead.
    #[error("the peer link is up: the peer's extents are reachable, nothing to take over")]
    PeerReachable,
    /// A witness is configured and did not make this node the survivor.
    #[error("the witness has not made this node the survivor of the outage ({0})")]
    NotSurvivor(String),
    /// The survivor must wait for the other node's lease to end first.
    #[error("this node is the survivor but acts alone only in {0:?}, when the other node's lease has surely ended")]
    NotYet(std::time::Duration),
    /// No witness: the operator must say the peer is down.
    #[error("there is no witness: confirm that the peer is down (--peer-is-down); if it is in fact alive, both sites will diverge")]
    PeerMayBeAlive,
    /// The volume is not served.
    #[error("the volume is not served: {0}")]
    NotServing(String),
}

/// What a takeover takes (or took): the extents the lost peer owns here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exposure {
    /// Per extent: the extent, and how long ago a copy of it was last
    /// applied here (None: none since this node started).
    pub extents: Vec<(Extent, Option<std::time::Duration>)>,
    /// Bytes of those extents.
    pub bytes: u64,
    /// The outage generation the takeover runs under (0: not yet taken).
    pub generation: u64,
}

/// A host write admitted on the fast path: the runtime writes it to the
/// store itself (and syncs for FUA), then calls [`NodeCore::finish_write`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteTicket {
    /// The volume.
    pub volume: VolumeIndex,
    /// Byte offset.
    pub offset: u64,
    /// Byte count.
    pub length: u64,
}

/// The protocol engine of one node.
pub struct NodeCore {
    pub(crate) config: CoreConfig,
    pub(crate) now: Time,
    pub(crate) volumes: Vec<VolumeCore>,
    pub(crate) session: Option<Session>,
    pub(crate) outputs: VecDeque<Output>,
    next_token: u64,
    next_request: u64,
    pub(crate) io: BTreeMap<IoToken, IoPurpose>,
    /// Store syncs in flight: their volume and number.
    sync_marks: BTreeMap<IoToken, (usize, u64)>,
    pub(crate) tasks: BTreeMap<HostRequestId, HostTask>,
    /// Host task deadlines and retry times (stale entries are skipped).
    pub(crate) deadlines: BinaryHeap<Reverse<(Time, HostRequestId)>>,
    /// Volumes whose waiting work must be looked at again.
    pub(crate) changed: BTreeSet<usize>,
    next_housekeeping: Time,
    /// Lease, survivor role, fencing, health.
    pub(crate) standing: Standing,
}

impl NodeCore {
    /// A core for `config`, with each volume's claims file as loaded (in
    /// volume order; an empty default for a volume without one).
    pub fn new(config: CoreConfig, files: Vec<ClaimsFileContents>, now: Time) -> NodeCore {
        assert_eq!(files.len(), config.volumes.len(), "one claims file per volume");
        let generation = files.iter().map(|f| f.generation).max().unwrap_or(0);
        let volumes = config
            .volumes
            .iter()
            .zip(files)
            .enumerate()
            .map(|(i, (settings, file))| VolumeCore {
                index: VolumeIndex(i as u16),
                settings: settings.clone(),
                claims: Claims::restore(settings, config.wins_ties, &file, now),
                serving: Serving::Yes,
                file: FileWrites::default(),
                durable_waiters: Vec::new(),
                parked: BTreeSet::new(),
                gives: BTreeMap::new(),
                receiver: Receiver::default(),
                sender: Sender { reads_in_flight: 0, idle: true, linger_until: None, unsent_since: None, sent_at: VecDeque::new() },
                counters: VolumeCounters::default(),
                syncs: StoreSyncs::default(),
                held_sends: Vec::new(),
                resync: Resync::default(),
                last_copy: BTreeMap::new(),
                replication: Replication::new(settings.mode, settings.on_peer_loss),
            })
            .collect();
        let standing = Standing::new(config.witness, generation, now);
        NodeCore {
            config,
            now,
            volumes,
            session: None,
            outputs: VecDeque::new(),
            next_token: 1,
            next_request: 1,
            io: BTreeMap::new(),
            sync_marks: BTreeMap::new(),
            tasks: BTreeMap::new(),
            deadlines: BinaryHeap::new(),
            changed: BTreeSet::new(),
            next_housekeeping: now + HOUSEKEEPING_INTERVAL,
            standing,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    /// Takes one input.
    pub fn handle(&mut self, now: Time, input: Input) {
        self.now = self.now.max(now);
        match input {
            Input::Host { id, volume, request } => self.on_host_request(id, volume, request),
            Input::LinkUp { session, role, volume_errors } => self.on_link_up(session, role, volume_errors),
            Input::BulkUp { session } => self.on_bulk_up(session),
            Input::Frame { session, lane, message } => self.on_frame(session, lane, message),
            Input::LinkDown { session, reason } => {
                if self.is_session(session) {
                    self.end_session(reason);
                }
            }
            Input::IoDone { token, result } => self.on_io_done(token, result),
            Input::WitnessUp { link } => self.on_witness_up(link),
            Input::WitnessFrame { link, message } => self.on_witness_frame(link, message),
            Input::WitnessDown { link, .. } => self.on_witness_down(link),
            Input::Tick => self.on_tick(),
        }
        self.settle();
    }

    /// The next thing the runtime must do, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When the core next needs [`Input::Tick`].
    pub fn poll_timeout(&self) -> Option<Time> {
        let mut next = self.next_housekeeping;
        if let Some(Reverse((t, _))) = self.deadlines.peek() {
            next = next.min(*t);
        }
        if let Some(s) = &self.session {
            next = next.min(s.next_deadline(&self.config));
        }
        if let Some(t) = self.standing_deadline() {
            next = next.min(t);
        }
        for v in &self.volumes {
            for t in [v.sender.linger_until, v.receiver.sync_at].into_iter().flatten() {
                next = next.min(t);
            }
        }
        Some(next)
    }

    /// What `/status` shows.
    pub fn status(&self) -> CoreStatus {
        CoreStatus {
            session: self.session.as_ref().map(|s| SessionView {
                session: s.id,
                ready: s.ready,
                requests_in_flight: s.requests.len(),
                rtt: s.last_rtt,
            }),
            volumes: self
                .volumes
                .iter()
                .enumerate()
                .map(|(vi, v)| VolumeView {
                    name: v.settings.name.clone(),
                    problem: match &v.serving {
                        Serving::Yes => None,
                        Serving::Mismatch(p) | Serving::Stopped(p) => Some(p.clone()),
                    },
                    figures: v.claims.figures(),
                    counters: v.counters,
                    resync: v.resync.figures,
                    taken_extents: v.claims.taken_list().len() as u64,
                    replication: self.replication_view(vi),
                    oldest_unsent: v.sender.unsent_since.map(|t| self.now.since(t)),
                    oldest_not_durable: v.sender.sent_at.front().map(|(_, t)| self.now.since(*t)),
                })
                .collect(),
            health: self.standing.health,
            health_reason: self.standing.reason.clone(),
            generation: self.standing.generation,
            survivor: self.standing.survivor,
            serving_hosts: self.may_serve(),
            lease_left: self.lease_left(),
            witness_up: self.witness_up(),
            now: self.now,
        }
    }

    /// What an operator's takeover of `volume` would take now.
    pub fn exposure(&self, volume: VolumeIndex) -> Option<Exposure> {
        let v = self.volumes.get(volume.0 as usize)?;
        let g = v.claims.geometry();
        let extents: Vec<(Extent, Option<std::time::Duration>)> =
            v.claims.exposure().into_iter().map(|c| (c.extent, v.last_copy.get(&c.extent).map(|t| self.now.since(*t)))).collect();
        let bytes = extents.iter().map(|(e, _)| g.blocks_in(*e).count() as u64 * g.block_bytes).sum();
        Some(Exposure { extents, bytes, generation: 0 })
    }

    /// Turns on (or off) checking each claims file write against the whole
    /// state (see `Claims::check_file_writes`; tests and the simulator).
    pub fn check_file_writes(&mut self, on: bool) {
        for v in &mut self.volumes {
            v.claims.check_file_writes(on);
        }
    }

    /// Why a takeover of `volume` would be refused now (None: it would be
    /// done), as [`NodeCore::take_over`] decides it.
    pub fn takeover_refusal(&self, now: Time, volume: VolumeIndex, peer_is_down: bool) -> Option<TakeoverRefused> {
        let now = self.now.max(now);
        let Some(v) = self.volumes.get(volume.0 as usize) else {
            return Some(TakeoverRefused::NoVolume(volume.0));
        };
        if let Serving::Stopped(p) | Serving::Mismatch(p) = &v.serving {
            return Some(TakeoverRefused::NotServing(p.clone()));
        }
        if self.session.is_some() {
            return Some(TakeoverRefused::PeerReachable);
        }
        match (&self.standing.witness, self.standing.survivor) {
            (Some(_), None) => Some(TakeoverRefused::NotSurvivor(self.standing.reason.clone())),
            (Some(_), Some(role)) if role.acting_at > now => Some(TakeoverRefused::NotYet(role.acting_at.since(now))),
            (None, _) if !peer_is_down => Some(TakeoverRefused::PeerMayBeAlive),
            _ => None,
        }
    }

    /// An operator takes over the extents the lost peer owns in `volume`:
    /// they become ours at once (served from our data once the claims file
    /// records them). With a witness, only the survivor may, once it acts
    /// alone; without one, `peer_is_down` must say the peer is down (this
    /// node then acts alone too). Returns what was taken.
    pub fn take_over(&mut self, now: Time, volume: VolumeIndex, peer_is_down: bool) -> Result<Exposure, TakeoverRefused> {
        self.now = self.now.max(now);
        let vi = volume.0 as usize;
        if let Some(refused) = self.takeover_refusal(now, volume, peer_is_down) {
            return Err(refused);
        }
        let generation = match self.standing.survivor {
            Some(role) => role.generation,
            None => self.become_survivor_by_operator(),
        };
        let mut exposure = self.exposure(volume).expect("checked");
        exposure.generation = generation;
        let taken = self.volumes[vi].claims.take_over(self.now);
        for e in &taken {
            self.volumes[vi].last_copy.remove(e);
        }
        self.event(Event::TookOver { volume, extents: taken.len(), generation });
        self.changed.insert(vi);
        self.settle();
        Ok(exposure)
    }

    /// Whether the runtime may hand in the next frame of `lane` (else it
    /// waits: back-pressure on the peer through TCP).
    pub fn accepts_frames(&self, lane: Lane) -> bool {
        self.session.as_ref().is_none_or(|s| s.accepts_frames(lane, &self.volumes))
    }

    // ------------------------------------------------------------ fast paths

    /// Admits a host write that needs nothing but ownership we already hold
    /// (the common case): the runtime writes it to the store (and syncs for
    /// FUA), then calls [`finish_write`](Self::finish_write). None: submit
    /// it as [`Input::Host`] instead.
    pub fn try_write(&mut self, now: Time, volume: VolumeIndex, offset: u64, length: u64) -> Option<WriteTicket> {
        self.now = self.now.max(now);
        if !self.may_serve() {
            return None;
        }
        let v = self.volumes.get_mut(volume.0 as usize)?;
        if v.serving != Serving::Yes
            || length == 0
            || !v.claims.geometry().contains(offset, length)
            || v.replication.peer_need(false).is_some()
        {
            return None;
        }
        let range = v.claims.geometry().extents_of(offset, length);
        if range.end() - range.start() >= WRITE_GROUP_EXTENTS_MAX.min(v.settings.knobs.max_owned as u64)
            || !v.claims.would_admit(range.clone())
        {
            return None;
        }
        let access = v.claims.begin_write(range, self.now, PeerAccess::Unavailable);
        assert_eq!(access, crate::claims::WriteAccess::Admitted, "would_admit and begin_write disagree");
        Some(WriteTicket { volume, offset, length })
    }

    /// A fast-path write reached the store (or failed at it: it may have
    /// written part of the range, so its blocks are copied either way).
    pub fn finish_write(&mut self, now: Time, ticket: WriteTicket) {
        self.now = self.now.max(now);
        let vi = ticket.volume.0 as usize;
        self.volumes[vi].claims.end_write(ticket.offset, ticket.length, self.now);
        self.changed.insert(vi);
        self.settle();
    }

    /// Whether a read can be served from the local store right now (the
    /// common case): no extent of it is owned by the peer or being received.
    pub fn read_is_local(&self, volume: VolumeIndex, offset: u64, length: u64) -> bool {
        let Some(v) = self.volumes.get(volume.0 as usize) else { return false };
        self.may_serve()
            && v.serving == Serving::Yes
            && length > 0
            && v.claims.geometry().contains(offset, length)
            && v.claims.geometry().extents_of(offset, length).all(|e| v.claims.read_source(Extent(e)) == ReadSource::Local)
    }

    // ------------------------------------------------------------ helpers

    pub(crate) fn token(&mut self) -> IoToken {
        self.next_token += 1;
        IoToken(self.next_token)
    }

    /// Asks for an I/O; its completion continues `purpose`.
    pub(crate) fn io(&mut self, volume: usize, op: IoOp, purpose: IoPurpose) -> IoToken {
        let token = self.token();
        self.io.insert(token, purpose);
        self.outputs.push_back(Output::Io { token, volume: self.volumes[volume].index, op });
        token
    }

    pub(crate) fn event(&mut self, event: Event) {
        self.outputs.push_back(Output::Event(event));
    }

    pub(crate) fn reply(&mut self, id: HostRequestId, result: Result<Option<Bytes>, HostError>) {
        self.outputs.push_back(Output::Reply { id, result });
    }

    /// Whether `sid` is the current session.
    pub(crate) fn is_session(&self, sid: SessionGen) -> bool {
        self.session.as_ref().is_some_and(|s| s.id == sid)
    }

    /// Whether a request to the peer can be sent now (or, with none, whether
    /// this node acts alone).
    pub(crate) fn peer_access(&self) -> PeerAccess {
        match &self.session {
            Some(s) if s.ready && s.requests.len() < REQUESTS_INFLIGHT_MAX => PeerAccess::Ready,
            Some(s) if s.ready => PeerAccess::Unavailable,
            _ if self.acting_alone() => PeerAccess::Alone,
            _ => PeerAccess::Unavailable,
        }
    }

    /// Queues a message on a lane of the current session.
    pub(crate) fn send(&mut self, lane: Lane, message: Message) {
        if let Some(s) = &mut self.session {
            s.outbox(lane).push(message);
        }
    }

    /// Reserves a place on a lane of the current session.
    pub(crate) fn reserve(&mut self, lane: Lane) -> Option<(SessionGen, Place)> {
        let s = self.session.as_mut()?;
        Some((s.id, s.outbox(lane).reserve()))
    }

    /// Fills a reserved place, if its session is still current.
    pub(crate) fn fill(&mut self, session: SessionGen, lane: Lane, place: Place, messages: Vec<Message>) {
        if let Some(s) = self.session.as_mut().filter(|s| s.id == session) {
            s.outbox(lane).fill(place, messages);
        }
    }

    /// Registers a request of ours and queues it on the priority lane.
    pub(crate) fn request(&mut self, pending: Pending, make: impl FnOnce(RequestId) -> Message) -> RequestId {
        self.next_request += 1;
        let id = RequestId(self.next_request);
        let s = self.session.as_mut().expect("requests are sent on a session");
        s.requests.insert(id, pending);
        s.outbox(Lane::Priority).push(make(id));
        id
    }

    /// Registers a request of ours that carries our unconfirmed releases:
    /// it leaves once they may (see `PendingRelease::ready`); its place in
    /// the lane is kept meanwhile.
    pub(crate) fn request_with_releases(&mut self, vi: usize, pending: Pending, make: impl FnOnce(RequestId) -> Message) -> RequestId {
        let v = &self.volumes[vi];
        if v.claims.releases_ready(v.file.durable) {
            return self.request(pending, make);
        }
        self.next_request += 1;
        let id = RequestId(self.next_request);
        let s = self.session.as_mut().expect("requests are sent on a session");
        s.requests.insert(id, pending);
        let session = s.id;
        let place = s.outbox(Lane::Priority).reserve();
        self.volumes[vi].held_sends.push((session, place, make(id)));
        self.changed.insert(vi);
        id
    }

    /// Issues a store sync; its completion makes every write issued before
    /// it durable (releases and gives wait for one).
    pub(crate) fn issue_sync(&mut self, vi: usize, purpose: IoPurpose) -> IoToken {
        let v = &mut self.volumes[vi];
        v.syncs.issued += 1;
        let mark = v.syncs.issued;
        v.claims.note_sync_issued(mark);
        let token = self.io(vi, IoOp::Sync, purpose);
        self.sync_marks.insert(token, (vi, mark));
        token
    }

    /// What releases waiting to leave need: a claims file write, a store
    /// sync; and the held requests that may leave now.
    pub(crate) fn pump_releases(&mut self, vi: usize) {
        let v = &self.volumes[vi];
        if matches!(v.serving, Serving::Stopped(_)) {
            return;
        }
        if v.claims.waits_for_file(v.file.durable) {
            self.want_durable(vi);
        }
        // Idle extents are found at housekeeping; at the limit a write may
        // be waiting for room now.
        if self.volumes[vi].claims.at_limit() && self.volumes[vi].claims.needs_sync_for_release(self.now) {
            self.issue_sync(vi, IoPurpose::StoreSync { volume: vi });
        }
        let v = &self.volumes[vi];
        if !v.held_sends.is_empty() && v.claims.releases_ready(v.file.durable) {
            for (session, place, message) in std::mem::take(&mut self.volumes[vi].held_sends) {
                self.fill(session, Lane::Priority, place, vec![message]);
            }
        }
    }

    /// Makes sure the claims file of volume `vi` gets written up to its
    /// current version (one write at a time; a later change waits for the
    /// write in flight, then goes in the next one).
    pub(crate) fn want_durable(&mut self, vi: usize) {
        let v = &self.volumes[vi];
        if v.file.writing.is_some() || v.claims.file_version() <= v.file.durable || matches!(v.serving, Serving::Stopped(_)) {
            return;
        }
        let version = v.claims.file_version();
        let write = self.volumes[vi].claims.take_file_write();
        self.volumes[vi].file.writing = Some(version);
        self.io(vi, IoOp::Persist { write }, IoPurpose::Persist { volume: vi, version });
    }

    /// Runs `waiter` once the claims file is durable at the current version.
    pub(crate) fn when_durable(&mut self, vi: usize, waiter: DurableWaiter) {
        let version = self.volumes[vi].claims.file_version();
        if version <= self.volumes[vi].file.durable {
            self.fire_durable(vi, waiter, true);
        } else {
            self.volumes[vi].durable_waiters.push((version, waiter));
            self.want_durable(vi);
        }
    }

    fn on_persisted(&mut self, vi: usize, version: u64, result: Result<(), IoFault>) {
        self.volumes[vi].file.writing = None;
        match result {
            Ok(()) => {
                self.volumes[vi].file.durable = self.volumes[vi].file.durable.max(version);
                self.volumes[vi].claims.note_file_durable(version);
                let durable = self.volumes[vi].file.durable;
                let (ready, waiting): (Vec<_>, Vec<_>) =
                    std::mem::take(&mut self.volumes[vi].durable_waiters).into_iter().partition(|(v, _)| *v <= durable);
                self.volumes[vi].durable_waiters = waiting;
                for (_, w) in ready {
                    self.fire_durable(vi, w, true);
                }
                if !self.volumes[vi].durable_waiters.is_empty() {
                    self.want_durable(vi);
                }
            }
            Err(fault) => {
                self.stop_volume(
                    vi,
                    format!("writing its claims file failed ({fault}); the volume stops rather than guess which claims are durable"),
                );
                for (_, w) in std::mem::take(&mut self.volumes[vi].durable_waiters) {
                    self.fire_durable(vi, w, false);
                }
            }
        }
        self.changed.insert(vi);
    }

    fn fire_durable(&mut self, vi: usize, waiter: DurableWaiter, durable: bool) {
        match waiter {
            DurableWaiter::Reply { session, place, messages, on_failure } => {
                if let Some(s) = self.session.as_mut().filter(|s| s.id == session) {
                    s.peer_requests = s.peer_requests.saturating_sub(1);
                }
                self.fill(session, Lane::Priority, place, if durable { messages } else { on_failure });
            }
            DurableWaiter::Received { extent } => {
                if durable {
                    self.on_received_durable(vi, extent);
                }
            }
            DurableWaiter::SyncRound { session } => self.on_sync_round_durable(vi, session, durable),
        }
    }

    /// Stops a volume after a fault the core cannot carry on through.
    pub(crate) fn stop_volume(&mut self, vi: usize, reason: String) {
        if matches!(self.volumes[vi].serving, Serving::Stopped(_)) {
            return;
        }
        self.volumes[vi].serving = Serving::Stopped(reason.clone());
        self.event(Event::VolumeStopped { volume: self.volumes[vi].index, reason });
        self.changed.insert(vi);
        self.check_ready();
    }

    fn on_io_done(&mut self, token: IoToken, result: Result<IoOutcome, IoFault>) {
        let Some(purpose) = self.io.remove(&token) else {
            panic!("completion of unknown I/O {token:?}");
        };
        if let Some((vi, mark)) = self.sync_marks.remove(&token) {
            if result.is_ok() {
                let syncs = &mut self.volumes[vi].syncs;
                syncs.done = syncs.done.max(mark);
                self.volumes[vi].claims.note_sync_done(mark);
            }
            self.changed.insert(vi);
        }
        let done = |r: Result<IoOutcome, IoFault>| r.map(|_| ());
        let read = |r: Result<IoOutcome, IoFault>| match r {
            Ok(IoOutcome::Read(buffers)) => Ok(buffers),
            Ok(other) => panic!("a read completed with {other:?}"),
            Err(e) => Err(e),
        };
        let digest = |r: Result<IoOutcome, IoFault>| match r {
            Ok(IoOutcome::Digest(crcs)) => Ok(crcs),
            Ok(other) => panic!("a digest completed with {other:?}"),
            Err(e) => Err(e),
        };
        match purpose {
            IoPurpose::HostWrite { task } => self.on_host_write_done(task, done(result)),
            IoPurpose::HostSync { task } => self.on_host_sync_done(task, done(result)),
            IoPurpose::HostRead { task, pieces } => self.on_host_read_done(task, pieces, read(result)),
            IoPurpose::Persist { volume, version } => self.on_persisted(volume, version, done(result)),
            IoPurpose::CopyRead { volume, session, place, seq, runs } => self.on_copy_read(volume, session, place, seq, runs, read(result)),
            IoPurpose::PullRead { volume, session, place, id } => self.on_pull_read(volume, session, place, id, read(result)),
            IoPurpose::GiveRead { volume, extent, runs } => self.on_give_read(volume, extent, runs, read(result)),
            IoPurpose::ApplyCopy { volume, session, seq, extents, runs, report, synced } => {
                self.on_copy_applied(volume, session, seq, extents, runs, report, synced, done(result))
            }
            IoPurpose::ApplyHandover { volume, extent, last } => self.on_handover_applied(volume, extent, last, done(result)),
            IoPurpose::ReceiverSync { volume, session, upto } => self.on_receiver_synced(volume, session, upto, done(result)),
            IoPurpose::HandoverSync { volume, extent } => self.on_handover_synced(volume, extent, done(result)),
            IoPurpose::StoreSync { volume } => {
                if let Err(fault) = done(result) {
                    self.stop_volume(volume, format!("fdatasync failed ({fault}); writes since the last successful one may be lost"));
                }
            }
            IoPurpose::GroupSync { volume } => self.on_group_synced(volume, done(result)),
            IoPurpose::ResyncDigest { volume, extent } => self.on_resync_digest(volume, extent, digest(result)),
            IoPurpose::ConflictRead { volume, extent } => self.on_conflict_read(volume, extent, read(result)),
            IoPurpose::ConflictSave { volume, extent } => self.on_conflict_saved(volume, extent, done(result)),
            IoPurpose::DigestSyncForPeer { volume, session, place, id, range } => {
                self.on_digest_sync_for_peer(volume, session, place, id, range, done(result))
            }
            IoPurpose::DigestForPeer { volume, session, place, id } => self.on_digest_for_peer(volume, session, place, id, digest(result)),
        }
    }

    fn on_tick(&mut self) {
        let now = self.now;
        while let Some(Reverse((t, id))) = self.deadlines.peek().copied() {
            if t > now {
                break;
            }
            self.deadlines.pop();
            if let Some(task) = self.tasks.get(&id) {
                self.changed.insert(task.volume.0 as usize);
            }
        }
        self.session_timers();
        for vi in 0..self.volumes.len() {
            if self.volumes[vi].sender.linger_until.is_some_and(|t| t <= now) || self.volumes[vi].receiver.sync_at.is_some_and(|t| t <= now)
            {
                self.changed.insert(vi);
            }
        }
        if now >= self.next_housekeeping {
            self.next_housekeeping = now + HOUSEKEEPING_INTERVAL;
            self.housekeeping();
        }
    }

    /// Idle releases (only with a ready session: releases are sent and
    /// confirmed on one, and an idle extent kept owned meanwhile costs
    /// nothing) and lazy writes of the claims file.
    fn housekeeping(&mut self) {
        let ready = self.session.as_ref().is_some_and(|s| s.ready);
        for vi in 0..self.volumes.len() {
            if self.volumes[vi].serving != Serving::Yes {
                continue;
            }
            if ready && self.volumes[vi].claims.release_idle(self.now) > 0 {
                self.changed.insert(vi);
            }
            if ready && self.volumes[vi].claims.needs_sync_for_release(self.now) {
                self.issue_sync(vi, IoPurpose::StoreSync { volume: vi });
                self.changed.insert(vi);
            }
            self.want_durable(vi);
        }
    }

    /// After an input: moves every waiting piece of work as far as it goes,
    /// then queues the messages that may leave.
    pub(crate) fn settle(&mut self) {
        for _ in 0..64 {
            self.release_held_frames();
            self.start_syncs();
            self.pump_standing();
            let changed = std::mem::take(&mut self.changed);
            for &vi in &changed {
                self.pump_resync(vi);
                self.pump_releases(vi);
                self.pump_receiver(vi);
                // Host requests before gives: a write that waited for an
                // extent gets its turn before the extent is handed out again
                // (else two sites writing one extent hand it back and forth
                // without either writing).
                self.run_parked(vi);
                self.run_gives(vi);
                self.pump_sender(vi);
                self.pump_catch_up(vi);
            }
            if self.changed.is_empty() {
                break;
            }
        }
        self.drain_outboxes();
    }

    fn drain_outboxes(&mut self) {
        let Some(s) = &mut self.session else { return };
        let sid = s.id;
        while let Some(message) = s.outbox(Lane::Priority).pop_ready() {
            self.outputs.push_back(Output::Send { session: sid, lane: Lane::Priority, message });
        }
        if s.bulk_up {
            while let Some(message) = s.outbox(Lane::Bulk).pop_ready() {
                self.outputs.push_back(Output::Send { session: sid, lane: Lane::Bulk, message });
            }
        }
    }

    // ------------------------------------------------------------ checks (tests, simulator)

    /// Checks every structural invariant of every volume's claims.
    pub fn check(&self) {
        for v in &self.volumes {
            v.claims.check();
            assert!(v.file.durable <= v.claims.file_version(), "durable claims file version is ahead of the state");
        }
    }

    /// The claims of a volume, for checks.
    pub fn claims(&self, volume: VolumeIndex) -> &Claims {
        &self.volumes[volume.0 as usize].claims
    }

    /// Whether a volume is served.
    pub fn is_serving(&self, volume: VolumeIndex) -> bool {
        self.volumes[volume.0 as usize].serving == Serving::Yes
    }

    /// Whether a volume was stopped by a fault.
    pub fn is_stopped(&self, volume: VolumeIndex) -> bool {
        matches!(self.volumes[volume.0 as usize].serving, Serving::Stopped(_))
    }

    /// The durable claims file version of a volume and the current one.
    pub fn file_versions(&self, volume: VolumeIndex) -> (u64, u64) {
        let v = &self.volumes[volume.0 as usize];
        (v.file.durable, v.claims.file_version())
    }

    /// Whether the session is up and synced.
    pub fn is_ready(&self) -> bool {
        self.session.as_ref().is_some_and(|s| s.ready)
    }

    /// Host requests in progress.
    pub fn host_requests(&self) -> usize {
        self.tasks.len()
    }
}
