//! Explicit limits of the node; each says what happens when it is hit.

use std::time::Duration;

/// Bytes of buffered socket input per host connection: a dozen small
/// requests per read; a large WRITE payload is read straight into its own
/// buffer past what this holds (so at most this much of it is copied twice).
pub const NBD_READ_BUFFER_BYTES: usize = 64 * 1024;
/// NBD connections one source address may have in their handshake at once
/// (past it, a new one is closed at accept with a WARN line); at most
/// [`NBD_HANDSHAKES_MAX`] in all. A flood of slow or silent connections from
/// one place thus leaves the handshake open to everyone else.
pub const NBD_HANDSHAKES_PER_SOURCE_MAX: usize = 8;
/// NBD connections in their handshake at once, from all sources.
pub const NBD_HANDSHAKES_MAX: usize = 256;
/// Incoming peer connections one source address may have before their hello
/// is authenticated; the real peer needs two (one per lane), and more while
/// it reconnects.
pub const PEER_SETUPS_PER_SOURCE_MAX: usize = 8;
/// Incoming peer connections being set up at once, from all sources.
pub const PEER_SETUPS_MAX: usize = 64;
const _: () = assert!(NBD_HANDSHAKES_MAX >= NBD_HANDSHAKES_PER_SOURCE_MAX && PEER_SETUPS_MAX >= PEER_SETUPS_PER_SOURCE_MAX);
/// Admin connections one source address may have open at once; past it a
/// new one is closed at accept (logged once a second).
pub const ADMIN_CONNECTIONS_PER_SOURCE_MAX: usize = 16;
/// Admin connections open at once, from all sources.
pub const ADMIN_CONNECTIONS_MAX: usize = 64;
/// A request's headers must arrive within this (a silent or slow client is
/// disconnected).
pub const ADMIN_HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Longest life of one admin connection (its requests included: a mode
/// switch may wait for the peer up to `peer_timeout`).
pub const ADMIN_CONNECTION_MAX: std::time::Duration = std::time::Duration::from_secs(120);
const _: () = assert!(ADMIN_CONNECTIONS_MAX >= ADMIN_CONNECTIONS_PER_SOURCE_MAX);
/// Recent events a node keeps for `GET /events` (each also logged); past
/// it the oldest go, and a reader that asks from before them is told how
/// many it missed.
pub const EVENTS_KEPT: usize = 1024;
/// Descriptors in one BLOCK_STATUS reply; a range with more runs is
/// answered in part (the client asks again from where it ends).
pub const NBD_BLOCK_STATUS_DESCRIPTORS_MAX: usize = 4096;
/// Bytes of buffered socket output per host connection; replies larger than
/// this bypass the buffer.
pub const NBD_WRITE_BUFFER_BYTES: usize = 256 * 1024;
/// Bytes of host writes a node keeps in memory for its copy streams
/// (`engine::recent`), shared evenly by its replicated volumes (so memory
/// does not grow with their number); past a volume's share its oldest are
/// forgotten, and their blocks are read back from the store when copied.
pub const RECENT_WRITES_BYTES: u64 = 64 << 20;
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
/// Deadline of one TCP connect to the peer; then the dialer backs off and retries.
pub const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Messages queued for the witness connection's writer; a send that finds
/// it full drops the connection (it reconnects). The node sends at most
/// one renewal, one claim and one outage report at a time.
pub const WITNESS_QUEUE_MESSAGES: usize = 16;
/// Connections the witness serves at once (two nodes, each reconnecting,
/// need a handful); more are closed at accept with a WARN line, so that
/// unauthenticated connections cannot pile up (each has the TLS handshake
/// deadline too).
pub const WITNESS_CONNECTIONS_MAX: usize = 16;
/// Longest pause between reconnection attempts (exponential back-off with
/// jitter): a link that comes back is used within about this long, so a
/// resync after an outage starts within a second of the network's return.
pub const PEER_BACKOFF_MAX: Duration = Duration::from_millis(500);
/// Messages queued for the priority lane's writer; a send that finds it full
/// closes the session (the peer does not read; the core's own bounds keep a
/// reading peer far below this).
pub const PRIORITY_LANE_QUEUE_MESSAGES: usize = geomirror_core::limits::REQUESTS_INFLIGHT_MAX
    + geomirror_core::limits::PEER_REQUESTS_INFLIGHT_MAX
    + geomirror_core::limits::OUTBOX_MESSAGES_MAX;
/// Bytes of frames a lane's writer gathers into one write (and the TLS
/// connection's send buffer): what is queued goes out together, up to this;
/// one larger frame goes out alone.
pub const LANE_WRITE_BATCH_BYTES: usize = 1 << 20;
/// Bytes a lane's writer encrypts and writes before it lets the other tasks
/// of its thread run (host requests): a batch of copies is up to a
/// megabyte, whose TLS encryption and loopback delivery would otherwise
/// hold the thread for hundreds of microseconds at once.
pub const LANE_WRITE_SLICE_BYTES: usize = 64 << 10;
/// A write reaches the page cache in pieces of at most this many bytes,
/// aligned to it, so the kernel never builds a page-cache folio larger than
/// this from a write. Why: ext4 on this kernel (6.18) gives a file large
/// folios (up to 2 MiB), and every later write into a folio walks all of its
/// per-block buffer heads; while the folio is also being written back (the
/// receiver's grouped fdatasync makes the peer's copies durable and writes
/// back the site's own host writes with them) that walk cost ~10 µs per 4 KiB
/// write: 30 % of all CPU with both sites writing after 1 MiB writes had
/// filled the volume. Measured with both sites writing 4 KiB at QD8 each
/// after such a fill (alternating builds, 2 CPUs shared): 25–26k IOPS summed
/// unsplit, 42–45k at 64 KiB, 45–50k at 16 KiB; 1 MiB sequential writes at
/// QD8 lose ~5 % at 64 KiB and ~20 % at 16 KiB (more system calls, smaller
/// folios to write back). Folios that readahead builds are not limited.
pub const PAGE_CACHE_WRITE_PIECE_BYTES: usize = 64 << 10;
const _: () = assert!(
    PAGE_CACHE_WRITE_PIECE_BYTES >= 4096 && PAGE_CACHE_WRITE_PIECE_BYTES.is_power_of_two(),
    "a write piece is whole pages, so pieces of a page-aligned write stay page-aligned"
);
/// Largest host write that is copied into the page cache on the runtime's
/// own thread instead of the blocking pool (two thread switches less per
/// write; a larger copy would hold the thread too long).
pub const INLINE_WRITE_BYTES_MAX: usize = 64 << 10;
/// Most small page-cache writes the core asks for that one input carries
/// out on its own thread (`engine::AfterLock`); more go to the blocking
/// pool, so one input never holds a runtime thread for long.
pub const INLINE_IO_PER_INPUT_MAX: usize = 4;
/// Messages queued for the bulk lane's writer; as above. The copy stream
/// keeps at most `COPY_INFLIGHT_MESSAGES_MAX` copies unacknowledged.
pub const BULK_LANE_QUEUE_MESSAGES: usize =
    geomirror_core::limits::COPY_INFLIGHT_MESSAGES_MAX + geomirror_core::limits::OUTBOX_MESSAGES_MAX;

const _: () = assert!(PRIORITY_LANE_QUEUE_MESSAGES > geomirror_core::limits::REQUESTS_INFLIGHT_MAX, "our own requests always fit the lane");
const _: () =
    assert!(BULK_LANE_QUEUE_MESSAGES > geomirror_core::limits::COPY_INFLIGHT_MESSAGES_MAX, "the copy window always fits the bulk lane");
const _: () =
    assert!(LANE_WRITE_SLICE_BYTES > 0 && LANE_WRITE_SLICE_BYTES <= LANE_WRITE_BATCH_BYTES, "a lane writer's slice is a part of its batch");
