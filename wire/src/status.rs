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
    /// Whether hosts are being served (false while a volume is fenced or mismatched).
    pub serving: bool,
}
