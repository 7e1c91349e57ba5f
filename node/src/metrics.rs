//! Metric names and per-volume handles, and the Prometheus recorder.
//!
//! Names follow `geomirror_<what>_<unit>`. Handles are registered once per
//! volume so the data path does no label lookups.

use std::sync::OnceLock;

use metrics::{Counter, Histogram, counter, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Host reads served.
pub const HOST_READS: &str = "geomirror_host_reads_total";
/// Host writes acknowledged.
pub const HOST_WRITES: &str = "geomirror_host_writes_total";
/// Bytes read by hosts.
pub const HOST_READ_BYTES: &str = "geomirror_host_read_bytes_total";
/// Bytes written by hosts.
pub const HOST_WRITE_BYTES: &str = "geomirror_host_write_bytes_total";
/// Host FLUSH requests.
pub const HOST_FLUSHES: &str = "geomirror_host_flushes_total";
/// Host TRIM and WRITE_ZEROES requests.
pub const HOST_DISCARDS: &str = "geomirror_host_discards_total";
/// Requests answered with an error, by NBD error name.
pub const NBD_ERRORS: &str = "geomirror_nbd_errors_total";
/// NBD request latency from header received to reply queued, by op.
pub const NBD_REQUEST_SECONDS: &str = "geomirror_nbd_request_seconds";
/// Host connections accepted.
pub const NBD_CONNECTIONS: &str = "geomirror_nbd_connections_total";
/// Host connections open now.
pub const NBD_CONNECTIONS_OPEN: &str = "geomirror_nbd_connections_open";
/// Handshakes or connections dropped for protocol violations.
pub const NBD_PROTOCOL_ERRORS: &str = "geomirror_nbd_protocol_errors_total";

/// The node's health: 1 for the state it is in, 0 for the others, by label
/// `health` (`connected`, `catching-up`, `peer-lost`, `survivor`, `fenced`,
/// `resyncing`).
pub const NODE_HEALTH: &str = "geomirror_node_health";

/// Sets [`NODE_HEALTH`] to `current`.
pub fn set_health(current: geomirror_core::Health) {
    for state in geomirror_core::Health::ALL {
        metrics::gauge!(NODE_HEALTH, "health" => state.as_str()).set(if state == current { 1.0 } else { 0.0 });
    }
}

/// Latency buckets (seconds): 10 µs to 10 s.
const LATENCY_BUCKETS: &[f64] =
    &[0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Installs the process-wide Prometheus recorder once and returns its handle.
pub fn install_recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("buckets are not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (tests embedding
            // several nodes); ours then still renders what it was given.
            let _ = metrics::set_global_recorder(recorder);
            describe_all();
            handle
        })
        .clone()
}

/// Whether the peer link is up (1) or not (0), by label `peer`.
pub const PEER_LINK_UP: &str = "geomirror_peer_link_up";

/// Every metric's `# HELP` line (Prometheus), from its name's doc.
fn describe_all() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    for (name, help) in [
        (HOST_READS, "Host reads served"),
        (HOST_WRITES, "Host writes acknowledged"),
        (HOST_READ_BYTES, "Bytes read by hosts"),
        (HOST_WRITE_BYTES, "Bytes written by hosts"),
        (HOST_FLUSHES, "Host FLUSH requests"),
        (HOST_DISCARDS, "Host TRIM and WRITE_ZEROES requests"),
        (NBD_ERRORS, "Host requests answered with an error, by NBD error name"),
        (NBD_CONNECTIONS, "Host connections accepted"),
        (NBD_PROTOCOL_ERRORS, "Handshakes or connections dropped for protocol violations"),
        (CLAIM_ROUND_TRIPS, "Host writes that waited for a claim or handover round trip"),
        (PULLS, "Reads (pieces of reads) pulled from the peer"),
        (HANDOVERS, "Extents handed over to this node by the peer"),
        (COPY_SENT_BYTES, "Block bytes sent on the copy stream"),
        (PEER_SENT_BYTES, "Frame bytes of one volume's copy-stream messages (without TLS), by lane"),
        (COPY_READ_BYTES, "Block bytes the copy stream took, by where from: memory (host writes kept) or store (read back)"),
        (COPIES_APPLIED, "Copy runs applied from the peer"),
        (COPIES_STALE, "Copy runs from the peer dropped (an older epoch, or the volume not served)"),
        (CLAIMS_GRANTED, "Claims granted to the peer"),
        (RELEASES, "Extents released by this node"),
        (DEGRADATIONS, "Times a sync volume degraded (acknowledged without the peer) since start"),
        (STORE_SYNCS, "fdatasyncs of a two-site volume's store (flushes, FUA, sync-mode writes, received copies, releases)"),
    ] {
        describe_counter!(name, help);
    }
    for (name, help) in [
        (NBD_CONNECTIONS_OPEN, "Host connections open now"),
        (NODE_HEALTH, "The node's health: 1 for the state it is in, 0 for the others, by label health"),
        (PEER_LINK_UP, "Whether the peer link is up (1) or not (0)"),
        (OWNED_EXTENTS, "Extents this node owns (exposed if this site dies)"),
        (PEER_OWNED_EXTENTS, "Extents the peer owns (reads of them are pulled)"),
        (UNSENT_BYTES, "Bytes written here and not yet sent to the peer"),
        (NOT_DURABLE_AT_PEER_BYTES, "Bytes written here and not yet durable at the peer"),
        (REPLICATION_MODE, "The volume's replication mode: 1 for the mode in force, by label mode"),
        (DEGRADED, "Whether a sync volume acknowledges writes without the peer now (on_peer_loss = degrade)"),
        (WRITES_WAITING_FOR_PEER, "Host writes and flushes done here and waiting for the peer (sync modes)"),
        (LAST_ACK_SECONDS, "The latest write that waited for the peer: seconds from arrival to each step, by label step"),
    ] {
        describe_gauge!(name, help);
    }
    describe_histogram!(NBD_REQUEST_SECONDS, Unit::Seconds, "Host request latency from header received to reply queued, by op");
}

/// Sets [`PEER_LINK_UP`] for `peer`.
pub fn set_peer_link_up(peer: &str, up: bool) {
    metrics::gauge!(PEER_LINK_UP, "peer" => peer.to_string()).set(if up { 1.0 } else { 0.0 });
}

/// The operations timed per request.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    /// READ
    Read,
    /// WRITE
    Write,
    /// FLUSH
    Flush,
    /// TRIM
    Trim,
    /// WRITE_ZEROES
    WriteZeroes,
    /// BLOCK_STATUS
    BlockStatus,
}

/// Metric handles of one volume.
pub struct VolumeMetrics {
    /// Reads served.
    pub reads: Counter,
    /// Writes acknowledged.
    pub writes: Counter,
    /// Bytes read.
    pub read_bytes: Counter,
    /// Bytes written.
    pub write_bytes: Counter,
    /// Flushes.
    pub flushes: Counter,
    /// Trims and zero-writes.
    pub discards: Counter,
    latency: [Histogram; 6],
}

impl VolumeMetrics {
    /// Registers the handles for `volume`.
    pub fn new(volume: &str) -> Self {
        let v = volume.to_string();
        let lat = |op: &'static str| histogram!(NBD_REQUEST_SECONDS, "volume" => v.clone(), "op" => op);
        VolumeMetrics {
            reads: counter!(HOST_READS, "volume" => v.clone()),
            writes: counter!(HOST_WRITES, "volume" => v.clone()),
            read_bytes: counter!(HOST_READ_BYTES, "volume" => v.clone()),
            write_bytes: counter!(HOST_WRITE_BYTES, "volume" => v.clone()),
            flushes: counter!(HOST_FLUSHES, "volume" => v.clone()),
            discards: counter!(HOST_DISCARDS, "volume" => v.clone()),
            latency: [lat("read"), lat("write"), lat("flush"), lat("trim"), lat("write_zeroes"), lat("block_status")],
        }
    }

    /// Records one request's latency.
    pub fn record_latency(&self, op: Op, seconds: f64) {
        self.latency[op as usize].record(seconds);
    }
}

/// Host writes that waited for a claim or handover round trip.
pub const CLAIM_ROUND_TRIPS: &str = "geomirror_claim_round_trips_total";
/// Reads (pieces of reads) pulled from the peer.
pub const PULLS: &str = "geomirror_pulls_total";
/// Extents handed over to this node by the peer.
pub const HANDOVERS: &str = "geomirror_handovers_total";
/// Extents this node owns.
pub const OWNED_EXTENTS: &str = "geomirror_owned_extents";
/// Extents in this node's claims record (owned by the peer).
pub const PEER_OWNED_EXTENTS: &str = "geomirror_peer_owned_extents";
/// Bytes written here and not yet sent to the peer.
pub const UNSENT_BYTES: &str = "geomirror_unsent_bytes";
/// Bytes written here and not yet durable at the peer.
pub const NOT_DURABLE_AT_PEER_BYTES: &str = "geomirror_not_durable_at_peer_bytes";
/// Block bytes sent on the copy stream (runs of zeroes are sent without
/// data and count nothing here).
pub const COPY_SENT_BYTES: &str = "geomirror_copy_sent_bytes_total";
/// Frame bytes (with their 4-byte length prefix, without TLS) of one
/// volume's copy-stream messages (copies, progress, releases): label
/// `lane="bulk"`.
pub const PEER_SENT_BYTES: &str = "geomirror_peer_sent_bytes_total";
/// Block bytes the copy stream took: label `from="memory"` (host writes
/// kept for it, `engine::recent`) or `from="store"` (read back).
pub const COPY_READ_BYTES: &str = "geomirror_copy_read_bytes_total";
/// Copy runs applied from the peer.
pub const COPIES_APPLIED: &str = "geomirror_copies_applied_total";
/// Copy runs from the peer dropped: stale (an older epoch), or the volume
/// is not served.
pub const COPIES_STALE: &str = "geomirror_copies_stale_total";
/// Claims granted to the peer.
pub const CLAIMS_GRANTED: &str = "geomirror_claims_granted_total";
/// Extents released by this node.
pub const RELEASES: &str = "geomirror_releases_total";

/// The replication mode in force: 1 for the volume's mode, 0 for the
/// others, by label `mode` (`async`, `sync-memory`, `sync`).
pub const REPLICATION_MODE: &str = "geomirror_replication_mode";
/// Whether a sync volume is degraded (acknowledging without the peer).
pub const DEGRADED: &str = "geomirror_degraded";
/// Times a sync volume degraded since start.
pub const DEGRADATIONS: &str = "geomirror_degradations_total";
/// Host writes and flushes done here and waiting for the peer.
pub const WRITES_WAITING_FOR_PEER: &str = "geomirror_writes_waiting_for_peer";
/// The latest acknowledged write that waited for the peer: seconds from
/// its arrival until each step, by label `step` (`local`, `peer_received`,
/// `peer_durable`).
pub const LAST_ACK_SECONDS: &str = "geomirror_last_ack_seconds";

/// fdatasyncs of a two-site volume's store (host FLUSH and FUA, the sync
/// modes' writes, received copies, releases and handovers).
pub const STORE_SYNCS: &str = "geomirror_store_syncs_total";

/// Replication metric handles of one volume, set from the core's figures
/// (counters are totals kept by the core, so they are set, not added to).
pub struct ReplicationMetrics {
    claim_round_trips: Counter,
    pulls: Counter,
    handovers: Counter,
    copy_sent_bytes: Counter,
    /// Frame bytes sent on the bulk lane (counted by the lane's writer).
    pub bulk_sent_bytes: Counter,
    /// Block bytes the copy stream took from the host writes kept in memory.
    pub copy_read_memory_bytes: Counter,
    /// Block bytes the copy stream read back from the store.
    pub copy_read_store_bytes: Counter,
    /// fdatasyncs of the store.
    pub store_syncs: Counter,
    copies_applied: Counter,
    copies_stale: Counter,
    claims_granted: Counter,
    releases: Counter,
    owned: metrics::Gauge,
    peer_owned: metrics::Gauge,
    unsent: metrics::Gauge,
    not_durable: metrics::Gauge,
    mode: [metrics::Gauge; 3],
    degraded: metrics::Gauge,
    degradations: Counter,
    waiting_for_peer: metrics::Gauge,
    last_ack: [metrics::Gauge; 3],
}

impl ReplicationMetrics {
    /// Registers the handles for `volume`.
    pub fn new(volume: &str) -> Self {
        let v = volume.to_string();
        ReplicationMetrics {
            claim_round_trips: counter!(CLAIM_ROUND_TRIPS, "volume" => v.clone()),
            pulls: counter!(PULLS, "volume" => v.clone()),
            handovers: counter!(HANDOVERS, "volume" => v.clone()),
            copy_sent_bytes: counter!(COPY_SENT_BYTES, "volume" => v.clone()),
            bulk_sent_bytes: counter!(PEER_SENT_BYTES, "volume" => v.clone(), "lane" => "bulk"),
            copy_read_memory_bytes: counter!(COPY_READ_BYTES, "volume" => v.clone(), "from" => "memory"),
            copy_read_store_bytes: counter!(COPY_READ_BYTES, "volume" => v.clone(), "from" => "store"),
            copies_applied: counter!(COPIES_APPLIED, "volume" => v.clone()),
            copies_stale: counter!(COPIES_STALE, "volume" => v.clone()),
            claims_granted: counter!(CLAIMS_GRANTED, "volume" => v.clone()),
            releases: counter!(RELEASES, "volume" => v.clone()),
            owned: metrics::gauge!(OWNED_EXTENTS, "volume" => v.clone()),
            peer_owned: metrics::gauge!(PEER_OWNED_EXTENTS, "volume" => v.clone()),
            unsent: metrics::gauge!(UNSENT_BYTES, "volume" => v.clone()),
            not_durable: metrics::gauge!(NOT_DURABLE_AT_PEER_BYTES, "volume" => v.clone()),
            mode: ["async", "sync-memory", "sync"].map(|m| metrics::gauge!(REPLICATION_MODE, "volume" => v.clone(), "mode" => m)),
            degraded: metrics::gauge!(DEGRADED, "volume" => v.clone()),
            degradations: counter!(DEGRADATIONS, "volume" => v.clone()),
            store_syncs: counter!(STORE_SYNCS, "volume" => v.clone()),
            waiting_for_peer: metrics::gauge!(WRITES_WAITING_FOR_PEER, "volume" => v.clone()),
            last_ack: ["local", "peer_received", "peer_durable"]
                .map(|step| metrics::gauge!(LAST_ACK_SECONDS, "volume" => v.clone(), "step" => step)),
        }
    }

    /// Sets every handle from a volume's view in the core's status.
    pub fn set(&self, v: &geomirror_core::VolumeView, block_bytes: u64) {
        let c = &v.counters;
        self.claim_round_trips.absolute(c.claim_round_trips);
        self.pulls.absolute(c.pulls);
        self.handovers.absolute(c.handovers_received);
        self.copy_sent_bytes.absolute(c.copy_sent_bytes);
        self.copies_applied.absolute(c.copies_applied);
        self.copies_stale.absolute(c.copies_stale);
        self.claims_granted.absolute(c.claims_granted);
        self.releases.absolute(c.releases);
        let f = &v.figures;
        self.owned.set(f.owned_extents as f64);
        self.peer_owned.set(f.peer_owned_extents as f64);
        self.unsent.set((f.unsent_blocks * block_bytes) as f64);
        self.not_durable.set((f.not_durable_blocks * block_bytes) as f64);
        let r = &v.replication;
        let current = match r.mode {
            geomirror_config::ReplicationMode::Async => 0,
            geomirror_config::ReplicationMode::SyncMemory => 1,
            geomirror_config::ReplicationMode::Sync => 2,
        };
        for (i, g) in self.mode.iter().enumerate() {
            g.set(if i == current { 1.0 } else { 0.0 });
        }
        self.degraded.set(if r.degraded_for.is_some() { 1.0 } else { 0.0 });
        self.degradations.absolute(r.degradations);
        self.waiting_for_peer.set(r.waiting_for_peer as f64);
        if let Some(a) = r.last_ack {
            self.last_ack[0].set(a.local.as_secs_f64());
            if let Some(d) = a.peer_received {
                self.last_ack[1].set(d.as_secs_f64());
            }
            if let Some(d) = a.peer_durable {
                self.last_ack[2].set(d.as_secs_f64());
            }
        }
    }
}
