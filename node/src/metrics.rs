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

/// Latency buckets (seconds): 10 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

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
            handle
        })
        .clone()
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
    latency: [Histogram; 5],
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
            latency: [lat("read"), lat("write"), lat("flush"), lat("trim"), lat("write_zeroes")],
        }
    }

    /// Records one request's latency.
    pub fn record_latency(&self, op: Op, seconds: f64) {
        self.latency[op as usize].record(seconds);
    }
}
