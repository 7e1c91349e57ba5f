//! Explicit limits of the node; each says what happens when it is hit.

use std::time::Duration;

/// Bytes of buffered socket input per host connection.
pub const NBD_READ_BUFFER_BYTES: usize = 256 * 1024;
/// Bytes of buffered socket output per host connection; replies larger than
/// this bypass the buffer.
pub const NBD_WRITE_BUFFER_BYTES: usize = 256 * 1024;
/// Whole handshake deadline; a client slower than this is disconnected.
pub const NBD_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Options one handshake may send; past it the connection is closed (a
/// client looping on options would otherwise hold a connection slot forever).
pub const NBD_HANDSHAKE_OPTIONS_MAX: usize = 256;
/// Chunk size of the fallback that writes zeroes when the filesystem cannot
/// zero or punch a range.
pub const ZERO_FALLBACK_CHUNK_BYTES: usize = 1 << 20;
/// Size of the metadata file we accept on reopen; a larger one is corrupt.
pub const VOLUME_META_BYTES_MAX: u64 = 64 * 1024;
/// Messages queued on the priority lane before senders wait (back-pressure).
pub const OUTBOX_MESSAGES_MAX: usize = 4096;
/// Messages queued on the bulk lane before the copy stream waits.
pub const BULK_QUEUE_MESSAGES_MAX: usize = 64;
/// Deadline of one TCP connect to the peer; then the dialer backs off and retries.
pub const PEER_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Longest pause between reconnection attempts (exponential back-off with jitter).
pub const PEER_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(1);
/// Blocks in one copy message (1 MiB at 4 KiB blocks).
pub const COPY_BATCH_BLOCKS_MAX: u64 = 256;
/// Runs of blocks in one copy message.
pub const COPY_BATCH_RUNS_MAX: usize = 64;
/// Runs sent and not yet durable at the peer; beyond it the copy stream
/// waits for progress. Up to 256 MiB in flight, above the bandwidth-delay
/// product of a 10 Gbit/s, 80 ms link.
pub const COPY_INFLIGHT_MESSAGES_MAX: usize = 1024;
/// How long the copy stream waits, when it wakes for a trickle of writes,
/// to gather more into one message (the peer lags by this much more).
pub const COPY_LINGER: std::time::Duration = std::time::Duration::from_millis(5);
/// How long the receiver waits after a copy before its fdatasync, so one
/// fdatasync covers the copies of that window.
pub const COPY_SYNC_LINGER: std::time::Duration = std::time::Duration::from_millis(5);
/// Extents one claim may name; a larger claim is refused with an error.
pub const CLAIM_EXTENTS_MAX: usize = 4096;
/// Extents acquired together for one host request; a longer request is
/// split into groups (each acquired and written in turn).
pub const WRITE_GROUP_EXTENTS_MAX: u64 = 16;
/// Longest a host write waits for room under the owned-extent limit while
/// the link is up (the copy stream is making extents releasable); then EIO.
pub const BACKPRESSURE_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(300);
