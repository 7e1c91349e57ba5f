//! Every bound of the protocol engine, what happens when it is hit, and the
//! relations between them (checked when this crate compiles).

use std::time::Duration;

use geomirror_config::defaults::{BLOCK_BYTES_MAX, EXTENT_BYTES_MAX};
use geomirror_wire::peer::{DATA_BYTES_MAX, FRAME_BYTES_MAX, FRAME_OVERHEAD_BYTES_MAX};

/// Extents one claim may name, and releases one claim or handover request
/// may carry; the peer answers a larger request with an error. Ours never
/// exceed it: prediction is clamped below it, and a request carries the
/// oldest unconfirmed releases up to it (the rest follow on later ones).
pub const CLAIM_EXTENTS_MAX: usize = 4096;
/// Extents a claim may ask for beyond the demanded one (prediction depth).
pub const PREDICT_EXTENTS_MAX: u64 = CLAIM_EXTENTS_MAX as u64 - 1;
/// Extents acquired together for one host write; a longer write is split
/// into groups, each acquired and written in turn (never more than the
/// owned-extent limit at once).
pub const WRITE_GROUP_EXTENTS_MAX: u64 = 16;
/// Block bytes in one copy message; the batch is cut there.
pub const COPY_BATCH_BYTES_MAX: u64 = 1 << 20;
/// Runs of blocks in one copy message; the batch is cut there.
pub const COPY_BATCH_RUNS_MAX: usize = 64;
/// Bytes of copies sent and not yet reported received by the peer; beyond
/// it the copy stream waits for progress (above the bandwidth-delay product
/// of a 10 Gbit/s link at 50 ms).
pub const COPY_WINDOW_BYTES: u64 = 64 << 20;
/// Copy messages sent and not yet durable at the peer; beyond it the copy
/// stream waits for progress.
pub const COPY_INFLIGHT_MESSAGES_MAX: usize = 1024;
/// Reads of blocks for the copy stream in flight at once per volume.
pub const COPY_READS_INFLIGHT_MAX: usize = 4;
/// How long the copy stream waits, when it wakes for a trickle of writes,
/// to gather more into one message (the peer lags by this much more, and
/// so does what a site loss at that moment would lose in `async`).
/// Every batch costs site A a burst of work (the frame, its encryption,
/// the socket write, on loopback the kernel's delivery too); a host
/// request arriving during one waits for it, which is where site A's QD1
/// tail came from. Measured side by side with qemu-nbd (site A and fio
/// pinned to one CPU, 20 ms RTT, total latency p99 ratio): 0.5 ms 1.54x
/// (but CPU per write 1.37x qemu-nbd's and QD32 0.77x: small batches pay
/// the per-message work more often), 1 ms 1.59x, 5 ms 1.64-1.70x, 20 ms
/// 1.20x (commit 1128546 against this value; QD1 IOPS 1.29-1.38x and QD32
/// 2.10x either way). Fewer, larger bursts delay fewer requests; each
/// delayed one waits longer (p99.9 about 430 us against 375 us at 5 ms in
/// quick pinned runs), and a trickle's copies reach the peer up to 20 ms
/// later (reads there pull meanwhile, so they stay fresh).
pub const COPY_LINGER: Duration = Duration::from_millis(20);
/// How long the receiver waits after applying a copy before its fdatasync,
/// so that one fdatasync covers the copies of that window. The copies are
/// in the receiver's page cache meanwhile (reported received): only a
/// crash of the receiver too loses them, and the sender still tracks them
/// and sends them again. Measured (pinned, 4 KiB random copies): the
/// receiver's CPU per copied block is about a third lower at 50 ms than at
/// 5 or 20 ms, ext4's writeback walking each large folio once for more of
/// its dirty blocks. Both sites writing 4 KiB QD8 each at 20 ms RTT
/// (unpinned, alternating builds, two runs each): 21.5k and 24.4k IOPS
/// summed at 50 ms, 25.2k and 26.9k at 250 ms (1 s gave no more): every
/// fdatasync also writes back the host's own dirty pages of the volume,
/// and a host write into a page just written back costs ext4 more.
pub const COPY_SYNC_LINGER: Duration = Duration::from_millis(250);
/// [`COPY_SYNC_LINGER`] while a copy that a host at the sender was
/// answered for at its arrival (`sync-memory`) is not durable: that
/// mode promises the write is lost only if both sites crash before this
/// fdatasync, so its window stays short.
pub const ACKED_COPY_SYNC_LINGER: Duration = Duration::from_millis(50);
/// Copy messages received and waiting to be applied, per volume; beyond it
/// the runtime stops reading the bulk lane (back-pressure on the sender).
pub const APPLY_QUEUE_MAX: usize = 64;
/// Copy bytes the receiver writes in one job at most: copies queued behind
/// the first are added while the job holds less (so at most this plus one
/// copy message).
pub const APPLY_JOB_BYTES_MAX: u64 = 8 << 20;
/// Bytes one pull asks for; a longer read of a peer-owned extent is pulled
/// in pieces of at most this.
pub const PULL_BYTES_MAX: u64 = DATA_BYTES_MAX as u64;
/// Block bytes in one handover message; more are sent as parts before the reply.
pub const HANDOVER_PART_BYTES_MAX: u64 = DATA_BYTES_MAX as u64;
/// After a pull answered "not the owner", the piece is looked at again once
/// this has passed (not sooner).
pub const PULL_RETRY_DELAY: Duration = Duration::from_millis(5);
/// Longest a host write waits, while the link is up, for room under the
/// owned-extent limit (the copy stream is making extents releasable) or for
/// its extents to leave a transition; then EIO.
pub const BACKPRESSURE_WAIT_MAX: Duration = Duration::from_secs(300);
/// Period of the housekeeping pass: idle releases, lazy writes of the
/// claims file.
pub const HOUSEKEEPING_INTERVAL: Duration = Duration::from_millis(100);
/// Our requests awaiting an answer from the peer; more host requests wait.
pub const REQUESTS_INFLIGHT_MAX: usize = 4096;
/// Messages waiting in one lane's outbox (behind a place reserved for a
/// reply that waits on I/O); beyond it the runtime stops reading frames.
pub const OUTBOX_MESSAGES_MAX: usize = 4096;
/// The peer's requests being served (a reply waiting on I/O); beyond it the
/// runtime stops reading frames.
pub const PEER_REQUESTS_INFLIGHT_MAX: usize = 1024;
/// Priority frames held back while an earlier one waits (a session sync
/// waiting for a handover's durable step); beyond it reading stops.
pub const HELD_FRAMES_MAX: usize = 256;
/// Exchanges of `Sync` per volume at session start: what the first round
/// changes on one side (a revoked handover) reaches the other in the second.
pub const SYNC_ROUNDS: u32 = 2;
/// Volumes one node serves (the hello's list is indexed by a u16).
pub const VOLUMES_MAX: usize = 1024;
/// Blocks whose checksums one resync request asks for; an extent with more
/// is compared in chunks.
pub const DIGEST_BLOCKS_MAX: usize = 16 * 1024;
/// Extents of one volume being compared with the peer at once: a resync of
/// N extents takes about N / this round trips (plus the checksum passes).
pub const RESYNC_EXTENTS_INFLIGHT_MAX: usize = 32;
/// Blocks of the extents being compared at once (their checksums, ours and
/// the peer's, are held meanwhile: 4 bytes each, so 1 MiB per side at
/// most); with large extents fewer than [`RESYNC_EXTENTS_INFLIGHT_MAX`]
/// run at once, never fewer than one.
pub const RESYNC_BLOCKS_INFLIGHT_MAX: u64 = 256 * 1024;
/// Runs of differing blocks one `ResyncNeed` names; more are merged into
/// one span (the peer then sends blocks that are equal too: harmless).
pub const RESYNC_RUNS_MAX: usize = 64 * 1024;

const _: () = assert!(PREDICT_EXTENTS_MAX < CLAIM_EXTENTS_MAX as u64, "a predicted claim fits one message");
const _: () = assert!(
    CLAIM_EXTENTS_MAX * 10 + CLAIM_EXTENTS_MAX * 20 + 64 <= FRAME_BYTES_MAX,
    "a claim of the largest size, with its releases, fits one frame"
);
const _: () = assert!(BLOCK_BYTES_MAX <= COPY_BATCH_BYTES_MAX, "a copy batch holds at least one block");
const _: () = assert!(
    COPY_BATCH_BYTES_MAX as usize + COPY_BATCH_RUNS_MAX * 64 <= FRAME_BYTES_MAX,
    "a full copy batch, run headers included, fits one frame"
);
const _: () = assert!(FRAME_OVERHEAD_BYTES_MAX >= COPY_BATCH_RUNS_MAX * 64, "run headers of a copy fit the frame's overhead allowance");
const _: () = assert!(BLOCK_BYTES_MAX <= HANDOVER_PART_BYTES_MAX, "a handover part holds at least one block");
const _: () = assert!(BLOCK_BYTES_MAX <= PULL_BYTES_MAX, "a pull carries at least one block");
const _: () = assert!(
    PULL_BYTES_MAX as usize <= DATA_BYTES_MAX && HANDOVER_PART_BYTES_MAX as usize <= DATA_BYTES_MAX,
    "pull answers and handover parts fit a frame's data allowance"
);
const _: () = assert!(COPY_WINDOW_BYTES >= COPY_BATCH_BYTES_MAX * COPY_READS_INFLIGHT_MAX as u64, "the window admits every read in flight");
const _: () = assert!(EXTENT_BYTES_MAX / BLOCK_BYTES_MAX <= u32::MAX as u64, "a run's block count fits the wire's u32");
const _: () = assert!(VOLUMES_MAX <= u16::MAX as usize + 1, "volume indexes fit the wire's u16");
const _: () = assert!(DIGEST_BLOCKS_MAX * 5 + 64 <= FRAME_BYTES_MAX, "one chunk of checksums fits a frame");
const _: () = assert!(RESYNC_RUNS_MAX * 20 + 64 <= FRAME_BYTES_MAX, "a ResyncNeed of the most runs fits a frame");
const _: () = assert!(APPLY_JOB_BYTES_MAX >= COPY_BATCH_BYTES_MAX, "an apply job holds a full copy batch before merging more");
