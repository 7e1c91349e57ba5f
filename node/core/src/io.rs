//! The closed set of inputs the core takes and outputs it asks for.

use std::fmt;

use bytes::Bytes;
use geomirror_config::ReplicationMode;
use geomirror_wire::peer::{Extent, Lane, Message};
use geomirror_wire::witness::WitnessMessage;

use crate::claims_file::ClaimsWrite;
use crate::ids::{HostRequestId, IoToken, SessionGen, VolumeIndex, WitnessLinkGen};
use crate::standing::Health;

/// Which end of a session this node is (the node whose name sorts first
/// dials both connections; the other accepts them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// This node dialed: it runs the session-start sync.
    Dialer,
    /// This node accepted: it answers the sync.
    Accepter,
}

/// How a zero-write may be carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZeroMode {
    /// The range may become a hole (NBD WRITE_ZEROES without NO_HOLE).
    MayUnmap,
    /// The range must stay allocated (NO_HOLE).
    KeepAllocated,
}

/// A host's request to a volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostRequest {
    /// Read `length` bytes at `offset`.
    Read {
        /// Byte offset.
        offset: u64,
        /// Byte count (> 0).
        length: u32,
    },
    /// Write `data` at `offset`.
    Write {
        /// Byte offset.
        offset: u64,
        /// The bytes (not empty).
        data: Bytes,
        /// Durable before the reply.
        fua: bool,
    },
    /// Discard a range (reads back as zeroes).
    Trim {
        /// Byte offset.
        offset: u64,
        /// Byte count (> 0).
        length: u64,
        /// Durable before the reply.
        fua: bool,
    },
    /// Write zeroes over a range.
    WriteZeroes {
        /// Byte offset.
        offset: u64,
        /// Byte count (> 0).
        length: u64,
        /// Whether the range may become a hole.
        mode: ZeroMode,
        /// Fail rather than write zeroes slowly.
        fast_only: bool,
        /// Durable before the reply.
        fua: bool,
    },
    /// Make every completed write durable.
    Flush,
}

/// Everything that can happen to the core.
#[derive(Clone, Debug)]
pub enum Input {
    /// A host request to a volume.
    Host {
        /// The runtime's name for it; the reply carries it.
        id: HostRequestId,
        /// The volume.
        volume: VolumeIndex,
        /// What the host asks.
        request: HostRequest,
    },
    /// A session's connections are up and the hello is done. The dialer has
    /// both lanes; the accepter gets [`Input::BulkUp`] when the bulk lane
    /// attaches.
    LinkUp {
        /// The session.
        session: SessionGen,
        /// Which end we are.
        role: Role,
        /// Per volume (by index): `None` when the peer's volume matches ours,
        /// else what differs (the volume is then not served).
        volume_errors: Vec<Option<String>>,
    },
    /// The accepter's bulk lane attached to the session.
    BulkUp {
        /// The session.
        session: SessionGen,
    },
    /// A decoded frame arrived on a lane.
    Frame {
        /// The session it arrived on.
        session: SessionGen,
        /// The lane.
        lane: Lane,
        /// The message.
        message: Message,
    },
    /// The session ended (a lane closed, or the core asked to close it).
    LinkDown {
        /// The session.
        session: SessionGen,
        /// Why, for the log.
        reason: String,
    },
    /// An I/O the core asked for completed.
    IoDone {
        /// The I/O's token.
        token: IoToken,
        /// What it produced.
        result: Result<IoOutcome, IoFault>,
    },
    /// The connection to the witness is up (its hello accepted).
    WitnessUp {
        /// The connection.
        link: WitnessLinkGen,
    },
    /// A frame from the witness.
    WitnessFrame {
        /// The connection it arrived on.
        link: WitnessLinkGen,
        /// The message.
        message: WitnessMessage,
    },
    /// The connection to the witness ended.
    WitnessDown {
        /// The connection.
        link: WitnessLinkGen,
        /// Why, for the log.
        reason: String,
    },
    /// A deadline from [`crate::NodeCore::poll_timeout`] was reached.
    Tick,
}

/// What the core asks the runtime to do.
#[derive(Clone, Debug)]
pub enum Output {
    /// Send a message on a lane of a session (in the order produced).
    Send {
        /// The session (if it has ended, drop the message).
        session: SessionGen,
        /// The lane.
        lane: Lane,
        /// The message.
        message: Message,
    },
    /// Close the session's connections; report [`Input::LinkDown`] after.
    CloseSession {
        /// The session.
        session: SessionGen,
        /// Why (logged).
        reason: String,
    },
    /// Perform an I/O on a volume's store or claims file; report
    /// [`Input::IoDone`] with the token.
    Io {
        /// Names the completion.
        token: IoToken,
        /// The volume.
        volume: VolumeIndex,
        /// What to do.
        op: IoOp,
    },
    /// Answer a host request.
    Reply {
        /// The request.
        id: HostRequestId,
        /// Read data for a read, nothing for the rest; or why it failed.
        result: Result<Option<Bytes>, HostError>,
    },
    /// Something worth logging (each event is logged once).
    Event(Event),
    /// Send a message to the witness.
    SendWitness {
        /// The connection (if it has ended, drop the message).
        link: WitnessLinkGen,
        /// The message.
        message: WitnessMessage,
    },
    /// Close the witness connection (it broke the protocol); report
    /// [`Input::WitnessDown`] after.
    CloseWitness {
        /// The connection.
        link: WitnessLinkGen,
        /// Why (logged).
        reason: String,
    },
}

/// Why a block went to the conflict file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConflictKind {
    /// This node owned the extent (it may hold writes it acknowledged that
    /// the peer never received); the peer took it over while this node was
    /// lost.
    TakenOver,
    /// The extent was clean; the peer claimed it alone while this node was
    /// lost and wrote it: this node's block is the version both had before.
    ClaimedAlone,
}

/// One block of this node's data that the peer's data replaces after an
/// outage, saved first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConflictRecord {
    /// Byte offset in the volume.
    pub offset: u64,
    /// This node's bytes there (one block).
    pub data: Bytes,
    /// Why it diverged.
    pub kind: ConflictKind,
    /// The newest outage generation this node knew when it returned.
    pub our_generation: u64,
    /// The peer's outage generation (the one it acted alone under).
    pub their_generation: u64,
}

/// One write to a store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreWrite {
    /// Write these bytes at `offset`.
    Data {
        /// Byte offset.
        offset: u64,
        /// The bytes.
        data: Bytes,
    },
    /// Discard a range.
    Trim {
        /// Byte offset.
        offset: u64,
        /// Byte count.
        length: u64,
    },
    /// Write zeroes over a range.
    Zeroes {
        /// Byte offset.
        offset: u64,
        /// Byte count.
        length: u64,
        /// Whether it may become a hole.
        mode: ZeroMode,
        /// Fail with [`IoFaultKind::NotFast`] rather than write zeroes slowly.
        fast_only: bool,
    },
}

impl StoreWrite {
    /// The byte range written.
    pub fn range(&self) -> (u64, u64) {
        match self {
            StoreWrite::Data { offset, data } => (*offset, data.len() as u64),
            StoreWrite::Trim { offset, length } | StoreWrite::Zeroes { offset, length, .. } => (*offset, *length),
        }
    }
}

/// An I/O the core asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IoOp {
    /// Read these `(offset, length)` ranges of the store, one buffer each.
    Read {
        /// The ranges.
        ranges: Vec<(u64, u64)>,
        /// The blocks are read for the copy stream: the runtime may take
        /// them from the host writes it keeps in memory (and forget them
        /// there: they are on their way to the peer) instead of the store.
        for_copy: bool,
    },
    /// Write, in this order.
    Write {
        /// The writes.
        writes: Vec<StoreWrite>,
        /// Then make every completed write durable (one fdatasync after
        /// them, in the same job: no second trip to the blocking pool).
        sync: bool,
    },
    /// Make every completed write to the store durable (fdatasync).
    Sync,
    /// Bring the volume's claims file to a new state durably: replace it
    /// whole and atomically, or append one journal record and sync it.
    Persist {
        /// The write.
        write: ClaimsWrite,
    },
    /// The CRC-32C of every block of these `(offset, length)` ranges of the
    /// store (each a whole number of `block` bytes), in order.
    Digest {
        /// The ranges.
        ranges: Vec<(u64, u64)>,
        /// Block size.
        block: u64,
    },
    /// Append these records to the volume's conflict file, durably.
    SaveConflicts {
        /// The records.
        records: Vec<ConflictRecord>,
    },
}

/// What a completed I/O produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IoOutcome {
    /// The buffers of an [`IoOp::Read`], one per range.
    Read(Vec<Bytes>),
    /// The checksums of an [`IoOp::Digest`], one per block.
    Digest(Vec<u32>),
    /// A write, sync or persist completed.
    Done,
}

/// Kinds of I/O failure the core tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoFaultKind {
    /// The device or file system failed (EIO and the like).
    Io,
    /// No space left.
    NoSpace,
    /// A fast zero-write could not be fast.
    NotFast,
}

/// A failed I/O.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoFault {
    /// What kind.
    pub kind: IoFaultKind,
    /// The system's message.
    pub message: String,
}

impl fmt::Display for IoFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Why a host request failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// The range is outside the volume.
    #[error("range {offset}+{length} is outside the volume ({size} bytes)")]
    OutOfRange {
        /// Start.
        offset: u64,
        /// Length.
        length: u64,
        /// Volume size.
        size: u64,
    },
    /// The request needed the peer and could not get it in time.
    #[error("peer unavailable: {0}")]
    PeerUnavailable(String),
    /// The volume is not served.
    #[error("volume not served: {0}")]
    NotServing(String),
    /// The store failed.
    #[error("store failure: {0}")]
    Store(IoFault),
}

/// Something the operator may want to know; the runtime logs each once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The session-start sync is done: requests flow.
    SessionReady {
        /// The session.
        session: SessionGen,
    },
    /// A session ended.
    SessionEnded {
        /// The session.
        session: SessionGen,
        /// Why.
        reason: String,
    },
    /// A volume is served again, or no longer (and why).
    Serving {
        /// The volume.
        volume: VolumeIndex,
        /// None: served; else why not.
        problem: Option<String>,
    },
    /// A volume stopped after a fault the core cannot carry on through (a
    /// claims file write or an fdatasync failed): it answers every host
    /// request with an error until the node restarts.
    VolumeStopped {
        /// The volume.
        volume: VolumeIndex,
        /// Why.
        reason: String,
    },
    /// A store fault the core carried on through (the request failed, or
    /// the session was closed so the peer sends again).
    StoreFault {
        /// The volume.
        volume: VolumeIndex,
        /// What was being done.
        doing: &'static str,
        /// The fault.
        fault: IoFault,
    },
    /// The peer refused one of our requests with an error.
    PeerRefused {
        /// The volume.
        volume: VolumeIndex,
        /// What we asked.
        request: &'static str,
        /// Its message.
        message: String,
    },
    /// Copies for an ownership epoch that is no longer current were dropped
    /// (a handover or release overtook them; harmless, counted).
    StaleCopiesDropped {
        /// The volume.
        volume: VolumeIndex,
        /// Runs dropped.
        runs: usize,
    },
    /// A handover the peer gave us was never applied here (its answer was
    /// lost with the link, or applying it failed): at the session-start
    /// sync it is revoked, and the peer owns the extent again (its store
    /// has the newest data).
    HandoverRevoked {
        /// The volume.
        volume: VolumeIndex,
        /// The extent.
        extent: Extent,
    },
    /// The node's health changed (`/status` `health`).
    HealthChanged {
        /// The new health.
        health: Health,
        /// Why.
        reason: String,
    },
    /// The witness refused or failed a request.
    WitnessProblem {
        /// What it said.
        message: String,
    },
    /// This node acts alone from now on: it claims clean extents without
    /// the peer (survivor of an outage).
    ActingAlone {
        /// The outage's generation.
        generation: u64,
    },
    /// An operator took over the extents the lost peer owned.
    TookOver {
        /// The volume.
        volume: VolumeIndex,
        /// How many extents.
        extents: usize,
        /// The outage's generation.
        generation: u64,
    },
    /// Blocks of ours that the peer's data replaces after an outage were
    /// saved to the conflict file.
    ConflictsSaved {
        /// The volume.
        volume: VolumeIndex,
        /// The extent.
        extent: Extent,
        /// Blocks saved.
        blocks: u64,
        /// Why they diverged.
        kind: ConflictKind,
    },
    /// A volume's resync after an outage or restart is complete.
    ResyncDone {
        /// The volume.
        volume: VolumeIndex,
        /// Extents compared.
        extents: u64,
        /// Blocks that differed.
        blocks_differing: u64,
    },
    /// The outage of this generation is over at the witness.
    OutageResolved {
        /// Its generation.
        generation: u64,
    },
    /// A sync volume lost its peer and, by its `degrade` policy,
    /// acknowledges writes as in `async` until the peer has caught up.
    Degraded {
        /// The volume.
        volume: VolumeIndex,
        /// Its configured mode.
        mode: ReplicationMode,
        /// Why.
        reason: String,
    },
    /// A degraded volume's writes are all durable at the peer: its mode
    /// holds again.
    CaughtUp {
        /// The volume.
        volume: VolumeIndex,
        /// The mode back in force.
        mode: ReplicationMode,
        /// How long it was degraded.
        after: std::time::Duration,
    },
    /// An operator changed a volume's mode.
    ModeChanged {
        /// The volume.
        volume: VolumeIndex,
        /// The mode before.
        from: ReplicationMode,
        /// The mode now.
        to: ReplicationMode,
    },
}
