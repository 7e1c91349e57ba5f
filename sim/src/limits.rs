//! Every bound of the simulator, in one place. Each constant says what happens when it is hit.

use std::time::Duration;

/// Bytes one direction of one connection may hold inside the proxy: read from the sending
/// socket but not yet written to the receiving one (bytes "on the wire", bytes waiting for the
/// shared serialization slot, and bytes held by a partition). When hit, the proxy stops reading
/// from the sending socket until the receiver drains some (backpressure through TCP's own
/// window); nothing is dropped.
///
/// It also caps one connection's throughput at `DIRECTION_QUEUE_BYTES_MAX / one-way delay`
/// (8 MiB over 40 ms is about 1.7 Gbit/s), like a too-small router buffer would.
pub const DIRECTION_QUEUE_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Chunks (one per socket read) one direction of one connection may hold. A sender trickling
/// one byte per write would otherwise queue millions of tiny chunks inside the byte bound. When
/// hit: stop reading, as for [`DIRECTION_QUEUE_BYTES_MAX`].
pub const DIRECTION_QUEUE_CHUNKS_MAX: usize = 16 * 1024;

/// Largest single socket read, and so the largest chunk the link model schedules at once. A
/// chunk is delivered whole when its last bit has crossed the link (store and forward), so this
/// is also the granularity of delivery: 64 KiB at 1 Gbit/s is 0.5 ms.
pub const READ_CHUNK_BYTES_MAX: usize = 64 * 1024;

/// Connections proxied at once. When hit, the proxy stops accepting; new connections wait in
/// the kernel's listen backlog until one closes.
pub const CONNECTIONS_MAX: usize = 256;

/// Deadline for connecting to the upstream. When hit, the accepted client connection is reset
/// and counted in `connections_failed`.
pub const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest one-way delay (and largest `rtt` / 2) a setting may ask for; a larger one is
/// rejected with `SettingsError::DelayTooLarge`.
pub const DELAY_MAX: Duration = Duration::from_secs(60);

/// Largest jitter amplitude; a larger one is rejected with `SettingsError::JitterTooLarge`.
pub const JITTER_MAX: Duration = Duration::from_secs(10);

/// Smallest bandwidth cap, in bits per second; a smaller one is rejected with
/// `SettingsError::BandwidthTooSmall`. Below it a full queue would take hours to drain.
pub const BANDWIDTH_BPS_MIN: u64 = 64_000;

/// Largest request body the control API reads; a bigger one is answered with 413.
pub const CONTROL_BODY_BYTES_MAX: usize = 64 * 1024;

/// Largest response the CLI's control client reads; a bigger one fails the command.
pub const CONTROL_RESPONSE_BYTES_MAX: u64 = 1024 * 1024;

/// Deadline for one CLI request to the control API (connect, send, read the answer).
pub const CONTROL_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long `ProxyHandle::shutdown` waits for connection tasks after resetting them; tasks
/// still running then are aborted.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again, so an
/// error that persists does not spin a core.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Cancelled timer entries the precise-timer thread keeps before purging them; bounds its heap
/// when many sleeps are abandoned (a writer woken early re-arms its sleep).
pub const TIMER_ENTRIES_PURGE_AT: usize = 4096;

/// Largest amount by which a delivery sleep aims early to cancel the measured wake-up
/// lateness of the OS and runtime (see `timer`). Bounds how early a single chunk can be
/// delivered; lateness above it is not compensated.
pub const TIMER_LEAD_MAX: Duration = Duration::from_micros(2000);

/// Largest credit a chunk gets for the time its bytes waited in the simulator's socket before
/// it read them (its delay counts from the kernel's receive stamp, see `proxy::stamped`).
/// Covers the wake-up of the reading task; bytes that waited longer (the simulator's queue
/// was full) count as arriving when read.
pub const ARRIVAL_CREDIT_MAX: Duration = Duration::from_millis(1);

const _: () = assert!(DIRECTION_QUEUE_BYTES_MAX >= READ_CHUNK_BYTES_MAX);
const _: () = assert!(DIRECTION_QUEUE_CHUNKS_MAX > 0 && CONNECTIONS_MAX > 0);
const _: () = assert!(BANDWIDTH_BPS_MIN > 0);
