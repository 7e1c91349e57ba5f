//! The `/status` snapshot: one typed document read by the CLI, TUI and tests.

use serde::{Deserialize, Serialize};

/// What `GET /status` returns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's configured name.
    pub name: String,
    /// Seconds since the node started.
    pub uptime_seconds: f64,
    /// The crate version of the running binary.
    pub version: String,
    /// Address hosts reach the NBD server at.
    pub nbd_listen: String,
    /// The volumes served.
    pub volumes: Vec<VolumeStatus>,
    /// The peer link, for a two-site node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<PeerStatus>,
    /// The node's standing when its peer may be gone, for a two-site node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standing: Option<StandingStatus>,
}

/// The node's health, lease and survivor role in [`NodeStatus`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StandingStatus {
    /// `connected`, `catching-up`, `peer-lost`, `survivor`, `fenced` or `resyncing`.
    pub health: String,
    /// Why.
    pub reason: String,
    /// Whether host requests are answered now.
    pub serving_hosts: bool,
    /// The newest outage generation known.
    pub generation: u64,
    /// The outage this node is survivor of, if any.
    #[serde(default)]
    pub survivor_generation: Option<u64>,
    /// Seconds until it acts alone (0 once it does), while survivor.
    #[serde(default)]
    pub acting_alone_in_seconds: Option<f64>,
    /// Whether a witness is configured and, if so, connected.
    #[serde(default)]
    pub witness: Option<String>,
    /// Seconds the lease from the witness still runs.
    #[serde(default)]
    pub lease_left_seconds: Option<f64>,
}

/// A resync in progress (after an outage or a restart) in [`ReplicationStatus`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResyncStatus {
    /// Bytes of extents compared.
    pub bytes_done: u64,
    /// Bytes of extents to compare (done and to do): bounded by the records.
    pub bytes_total: u64,
    /// Blocks found different so far.
    pub blocks_differing: u64,
    /// Blocks of this node saved to the conflict file so far.
    pub blocks_saved: u64,
    /// Bytes compared per second since it started.
    pub rate_bytes_per_second: f64,
    /// Seconds left at that rate.
    pub eta_seconds: Option<f64>,
}

/// The peer link in [`NodeStatus`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// The peer's node name.
    pub name: String,
    /// `up`, `connecting` or `down`.
    pub link: String,
    /// Seconds in that state.
    pub since_seconds: f64,
    /// Why the link last went down or failed to come up.
    pub last_error: Option<String>,
    /// Whether this node dials the peer (else it accepts).
    pub dials: bool,
    /// Where this node reaches the peer.
    pub connect: String,
    /// Where this node accepts the peer.
    pub listen: String,
    /// The round trip of the last heartbeat, in milliseconds (the dialing
    /// node measures it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
    /// The peer's admin address, if configured (`[peer] admin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
    /// Frame bytes sent to the peer since start, both lanes (without TLS).
    #[serde(default)]
    pub sent_bytes_total: u64,
}

/// Replication figures of one volume in [`VolumeStatus`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplicationStatus {
    /// Extents this node owns (may hold writes the peer lacks).
    pub owned_extents: u64,
    /// The most it may own (`max_owned_extents`).
    #[serde(default)]
    pub max_owned_extents: u64,
    /// Extents the peer owns (reads of them are pulled).
    pub peer_owned_extents: u64,
    /// Bytes written here and not yet sent.
    pub unsent_bytes: u64,
    /// Bytes written here and not yet durable at the peer.
    pub not_durable_at_peer_bytes: u64,
    /// Of those, bytes the peer holds in memory (received, not yet fdatasync'ed).
    #[serde(default)]
    pub received_not_durable_bytes: u64,
    /// Host writes that waited for a claim or handover round trip.
    pub claim_round_trips: u64,
    /// Reads pulled from the peer.
    pub pulls: u64,
    /// Extents handed over to this node.
    pub handovers: u64,
    /// Why the volume is not served, if it is not.
    pub problem: Option<String>,
    /// Bytes of memory the copy tracking holds (bitmaps per owned extent
    /// with unsent or in-flight blocks, and copies in flight).
    #[serde(default)]
    pub tracking_bytes: u64,
    /// Seconds blocks have waited to be sent (since the queue was last empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_unsent_seconds: Option<f64>,
    /// Seconds since the oldest copy not yet durable at the peer was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_not_durable_seconds: Option<f64>,
    /// Block bytes sent on the copy stream since start (zero runs not counted).
    #[serde(default)]
    pub copy_sent_bytes_total: u64,
    /// Extents this node claimed alone or took over in an outage and has not
    /// resynced to the peer yet.
    #[serde(default)]
    pub taken_extents: u64,
    /// The resync in progress, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resync: Option<ResyncStatus>,
    /// The replication mode in force: `async`, `sync-memory` or `sync`.
    #[serde(default)]
    pub mode: String,
    /// What a sync volume does while the peer is unreachable: `suspend`
    /// or `degrade`.
    #[serde(default)]
    pub on_peer_loss: String,
    /// How long the volume has acknowledged writes without the peer
    /// (`degrade`), if it does now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded_seconds: Option<f64>,
    /// Times it degraded since the node started.
    #[serde(default)]
    pub degradations: u64,
    /// Host writes and flushes done here and waiting for the peer.
    #[serde(default)]
    pub writes_waiting_for_peer: u64,
    /// The latest acknowledged write that waited for the peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ack: Option<AckLatency>,
}

/// How long a write waited, from its arrival, until each step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AckLatency {
    /// Written to the local store.
    pub local_seconds: f64,
    /// Reported received (in memory) by the peer.
    pub peer_received_seconds: Option<f64>,
    /// Reported durable by the peer (writes that waited for it).
    pub peer_durable_seconds: Option<f64>,
}

/// What `POST /mode?volume=NAME&set=MODE` did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModeChange {
    /// The volume.
    pub volume: String,
    /// The mode before.
    pub from: String,
    /// The mode now.
    pub to: String,
    /// For a switch to a sync mode: every write acknowledged before the
    /// switch is durable at the peer. False with `backlog_error` saying why.
    pub backlog_durable: bool,
    /// Why the backlog is not known durable at the peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backlog_error: Option<String>,
}

/// What `GET /takeover?volume=NAME` shows and `POST` did: the extents the
/// lost peer owns here.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TakeoverStatus {
    /// The volume.
    pub volume: String,
    /// Whether this answer took them over (POST) or only shows them (GET).
    pub taken: bool,
    /// Extents.
    pub extents: Vec<ExposedExtent>,
    /// Bytes of those extents.
    pub bytes: u64,
    /// The outage generation of the takeover (0 for GET).
    pub generation: u64,
    /// Why a takeover would be refused now (GET; a refused POST answers 409
    /// with the reason as its body).
    #[serde(default)]
    pub refused: Option<String>,
    /// Whether the node has a witness (without one, a takeover needs the
    /// operator's word that the peer is down).
    #[serde(default)]
    pub witness: bool,
}

/// One extent a takeover takes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExposedExtent {
    /// Its index.
    pub extent: u64,
    /// Seconds since a copy of it was last applied here (None: none since
    /// this node started).
    pub since_last_copy_seconds: Option<f64>,
}

/// One volume in [`NodeStatus`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VolumeStatus {
    /// Export name.
    pub name: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Block size in bytes.
    pub block_bytes: u32,
    /// Extent size in bytes.
    pub extent_bytes: u32,
    /// Host reads served since start.
    pub reads_total: u64,
    /// Host writes acknowledged since start.
    pub writes_total: u64,
    /// Bytes read by hosts since start.
    #[serde(default)]
    pub read_bytes_total: u64,
    /// Bytes written by hosts (acknowledged) since start.
    #[serde(default)]
    pub write_bytes_total: u64,
    /// Whether hosts are being served (false while a volume is fenced or mismatched).
    pub serving: bool,
    /// Replication figures, for a two-site node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<ReplicationStatus>,
}

/// What happened, in a node's recent events (`GET /events`): a closed set,
/// each also logged once by the node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum NodeEvent {
    /// The peer link is up and the claims are synced.
    LinkUp,
    /// The peer session ended.
    LinkDown {
        /// Why.
        reason: String,
    },
    /// A volume is served again (it matches the peer's).
    VolumeServing,
    /// A volume is not served: it differs from the peer's.
    VolumeNotServed {
        /// Why.
        reason: String,
    },
    /// A volume stopped after a fault (until restart).
    VolumeStopped {
        /// Why.
        reason: String,
    },
    /// A store fault the node carried on through.
    StoreFault {
        /// What was being done.
        doing: String,
        /// The fault.
        fault: String,
    },
    /// The peer refused a request (a claim, a handover, a pull).
    PeerRefused {
        /// What was asked.
        request: String,
        /// The peer's message.
        message: String,
    },
    /// A handover never applied here was revoked at the next session.
    HandoverRevoked {
        /// The extent.
        extent: u64,
    },
    /// The node's health changed.
    Health {
        /// The new health.
        health: String,
        /// Why.
        reason: String,
    },
    /// The witness refused or failed a request.
    WitnessProblem {
        /// What it said.
        message: String,
    },
    /// This node acts alone (survivor of an outage).
    ActingAlone {
        /// The outage generation.
        generation: u64,
    },
    /// An operator took over the lost peer's extents.
    TookOver {
        /// How many extents.
        extents: u64,
        /// The outage generation.
        generation: u64,
    },
    /// Blocks replaced after an outage were saved to the conflict file.
    ConflictsSaved {
        /// The extent.
        extent: u64,
        /// Blocks saved.
        blocks: u64,
    },
    /// A resync finished.
    ResyncDone {
        /// Extents compared.
        extents: u64,
        /// Blocks that differed.
        blocks_differing: u64,
    },
    /// The outage is over at the witness.
    OutageResolved {
        /// Its generation.
        generation: u64,
    },
    /// A sync volume acknowledges without the peer (`on_peer_loss = degrade`).
    Degraded {
        /// Its mode.
        mode: String,
        /// Why.
        reason: String,
    },
    /// A degraded volume's mode holds again.
    CaughtUp {
        /// Its mode.
        mode: String,
        /// How long it was degraded.
        after_seconds: f64,
    },
    /// An operator changed a volume's mode.
    ModeChanged {
        /// Before.
        from: String,
        /// Now.
        to: String,
    },
}

/// One recent event of a node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Position in the node's event sequence, from 1.
    pub seq: u64,
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// The volume it concerns, if one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    /// What happened.
    pub event: NodeEvent,
}

/// What `GET /events?since=N` answers: the events after `N` still held.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EventsPage {
    /// Oldest first.
    pub events: Vec<EventRecord>,
    /// The `since` to ask next (the newest sequence number so far).
    pub last: u64,
    /// Events after `since` that fell out of the node's ring before they
    /// were asked for.
    pub missed: u64,
}
