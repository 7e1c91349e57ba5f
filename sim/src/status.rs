//! Fault and status types shared by the proxy, the control API and the CLI.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::settings::{Dir, LinkSettings};

/// What a partition does to traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PartitionMode {
    /// Connections stay open; bytes are read (up to the queue limit, then backpressure) but not
    /// delivered. Bytes that were in flight are held too. On heal, held bytes are sent as if
    /// offered at that moment: they take the serialization and propagation delay again.
    #[default]
    Hold,
    /// Every open connection is reset (RST to both ends) and new connections are reset as soon
    /// as they are accepted, until heal. The direction is recorded, but since TCP cannot keep a
    /// connection over a one-way path either, connections are refused in both directions.
    Reset,
}

/// Which directions a partition affects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Both directions.
    #[default]
    Both,
    /// Client to upstream only.
    Ab,
    /// Upstream to client only.
    Ba,
}

impl Direction {
    /// Whether `dir` is one of the selected directions.
    pub fn includes(self, dir: Dir) -> bool {
        match self {
            Direction::Both => true,
            Direction::Ab => dir == Dir::Ab,
            Direction::Ba => dir == Dir::Ba,
        }
    }
}

/// The state of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Flow {
    /// Traffic flows.
    #[default]
    Open,
    /// Partitioned in hold mode.
    Hold,
    /// Partitioned in reset mode.
    Reset,
}

/// The partition state of both directions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    /// Client to upstream.
    pub ab: Flow,
    /// Upstream to client.
    pub ba: Flow,
}

impl PartitionState {
    /// The flow of one direction.
    pub fn get(&self, dir: Dir) -> Flow {
        match dir {
            Dir::Ab => self.ab,
            Dir::Ba => self.ba,
        }
    }

    /// True when new connections are refused (a reset partition in either direction).
    pub fn refuses_connections(&self) -> bool {
        self.ab == Flow::Reset || self.ba == Flow::Reset
    }

    /// True when both directions are open.
    pub fn is_healed(&self) -> bool {
        self.ab == Flow::Open && self.ba == Flow::Open
    }
}

/// Body of `POST /partition`; both fields are optional (hold, both).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionRequest {
    /// Hold or reset.
    #[serde(default)]
    pub mode: PartitionMode,
    /// Which directions.
    #[serde(default)]
    pub direction: Direction,
}

/// Byte counters of one direction, summed over all connections since the proxy started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectionCounters {
    /// Bytes read from the sending sockets.
    pub received_bytes: u64,
    /// Bytes written to the receiving sockets.
    pub delivered_bytes: u64,
    /// Bytes inside the proxy right now (in flight, waiting for the serializer, or held).
    pub queued_bytes: u64,
    /// Bytes dropped because their connection was reset or closed before delivery.
    pub discarded_bytes: u64,
}

/// Counters of the whole proxy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Client to upstream.
    pub ab: DirectionCounters,
    /// Upstream to client.
    pub ba: DirectionCounters,
    /// Connections proxied right now.
    pub connections_open: u64,
    /// Connections proxied since start (accepted and connected upstream).
    pub connections_total: u64,
    /// Connections reset on purpose: by `POST /reset` or a reset partition.
    pub connections_reset: u64,
    /// Connections refused (accepted, then reset at once) during a reset partition.
    pub connections_refused: u64,
    /// Connections whose upstream could not be reached.
    pub connections_failed: u64,
}

impl Counters {
    /// The counters of one direction.
    pub fn direction(&self, dir: Dir) -> &DirectionCounters {
        match dir {
            Dir::Ab => &self.ab,
            Dir::Ba => &self.ba,
        }
    }
}

/// The snapshot returned by `GET /link` and read by the CLI's `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStatus {
    /// Where the proxy accepts connections.
    pub listen: SocketAddr,
    /// Where it connects to.
    pub upstream: SocketAddr,
    /// Current link settings.
    pub settings: LinkSettings,
    /// Current partition state.
    pub partition: PartitionState,
    /// Counters.
    pub counters: Counters,
}
