//! Default values and hard limits of the configuration.

use crate::{ByteSize, HumanDuration};
use std::time::Duration;

/// Default NBD listen address (the IANA NBD port, loopback only).
pub const NBD_LISTEN: &str = "127.0.0.1:10809";
/// Default admin listen address (loopback only: DESIGN.md section 7).
pub const ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// Default number of host connections served at once.
pub const NBD_MAX_CONNECTIONS: usize = 64;
/// Upper bound for `nbd.max_connections`.
pub const NBD_MAX_CONNECTIONS_LIMIT: usize = 4096;
/// Default requests in flight per host connection.
pub const NBD_MAX_INFLIGHT_PER_CONNECTION: usize = 128;
/// Default largest READ/WRITE payload (what qemu-nbd allows too).
pub const NBD_MAX_REQUEST_BYTES: u64 = 32 << 20;
/// Upper bound for `nbd.max_request_size`.
pub const NBD_MAX_REQUEST_BYTES_LIMIT: u64 = 64 << 20;
/// Largest volume (16 TiB).
pub const VOLUME_BYTES_MAX: u64 = 16 << 40;
/// Smallest block size.
pub const BLOCK_BYTES_MIN: u64 = 512;
/// Largest block size.
pub const BLOCK_BYTES_MAX: u64 = 64 * 1024;
/// Largest extent size.
pub const EXTENT_BYTES_MAX: u64 = 1 << 30;
/// Upper bound for `predict_extents`.
pub const PREDICT_EXTENTS_LIMIT: u32 = 1024;

/// Default block size: 4 KiB.
pub fn block_size() -> ByteSize {
    ByteSize(4096)
}
/// Default extent size: 1 MiB.
pub fn extent_size() -> ByteSize {
    ByteSize(1 << 20)
}
/// Default bound on owned extents: 1024 extents (1 GiB exposed at 1 MiB extents).
pub fn max_owned_extents() -> u32 {
    1024
}
/// Default prediction depth for sequential streams.
pub fn predict_extents() -> u32 {
    8
}
/// Default idle time before an extent durable at the peer is released.
pub fn release_after() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
/// Default wait for an unreachable peer before failing with EIO.
pub fn peer_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
/// Default heartbeat interval on the peer link.
pub fn heartbeat_interval() -> HumanDuration {
    HumanDuration(Duration::from_millis(500))
}
/// Default silence after which the peer link is declared down (a dead peer
/// is noticed within this on a quiet link).
pub fn heartbeat_timeout() -> HumanDuration {
    HumanDuration(Duration::from_millis(1500))
}
/// Default lease a node holds from the witness.
pub fn lease() -> HumanDuration {
    HumanDuration(Duration::from_secs(2))
}
/// Default bound on how much two clocks may disagree about one lease.
pub fn max_clock_drift() -> HumanDuration {
    HumanDuration(Duration::from_millis(250))
}
/// Default witness listen address.
pub const WITNESS_LISTEN: &str = "127.0.0.1:7100";
