//! One direction of one proxied connection: a bounded FIFO of chunks between a reading and a
//! writing future.
//!
//! The reader stamps each chunk with its delivery instant from the link model as soon as it is
//! read (so serialization pipelines), or leaves it unstamped while the direction is partitioned.
//! The writer only ever takes the front chunk, when its instant has come: bytes leave in the
//! order they arrived, whatever the jitter or partitions did.

use std::collections::VecDeque;
use std::io;

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::shared::{DirState, Shared};
use super::stamped;
use crate::limits::{DIRECTION_QUEUE_BYTES_MAX, DIRECTION_QUEUE_CHUNKS_MAX, READ_CHUNK_BYTES_MAX};
use crate::link::{LinkTime, StreamClock};
use crate::settings::Dir;
use crate::timer::{self, lock};

struct Chunk {
    /// Empty for the end-of-stream marker.
    data: Bytes,
    /// The sender closed its side (FIN); delivering this chunk shuts down the receiver's side.
    eof: bool,
    /// When it may be written; `None` while held by a partition.
    deliver_at: Option<LinkTime>,
}

#[derive(Default)]
struct Queue {
    chunks: VecDeque<Chunk>,
    /// Sum of `chunks[..].data.len()`, at most [`DIRECTION_QUEUE_BYTES_MAX`].
    bytes: usize,
    stream: StreamClock,
}

/// What the writer should do next.
enum Next {
    /// Nothing deliverable: the queue is empty or its front is held.
    Idle,
    /// The front is due at this instant.
    Wait(LinkTime),
    /// The front, taken off the queue.
    Due(Chunk),
}

pub(crate) struct Pipe {
    dir: Dir,
    queue: std::sync::Mutex<Queue>,
    /// Wakes the writer: a chunk arrived at an empty queue, or held chunks were (re)scheduled.
    front_changed: Notify,
    /// Wakes the reader: the writer freed space.
    space_freed: Notify,
}

impl Pipe {
    pub(crate) fn new(dir: Dir) -> Self {
        Pipe { dir, queue: std::sync::Mutex::default(), front_changed: Notify::new(), space_freed: Notify::new() }
    }

    pub(crate) fn dir(&self) -> Dir {
        self.dir
    }

    /// Whether a full-size read still fits under both queue bounds.
    fn has_room(&self) -> bool {
        let q = lock(&self.queue);
        q.bytes + READ_CHUNK_BYTES_MAX <= DIRECTION_QUEUE_BYTES_MAX && q.chunks.len() < DIRECTION_QUEUE_CHUNKS_MAX
    }

    fn push(&self, data: Bytes, eof: bool, now: LinkTime, link: &DirState) {
        let mut q = lock(&self.queue);
        let was_empty = q.chunks.is_empty();
        let deliver_at = link.schedule(now, data.len(), &mut q.stream);
        link.count_received(data.len());
        q.bytes += data.len();
        assert!(q.bytes <= DIRECTION_QUEUE_BYTES_MAX, "pipe queue over its bound");
        q.chunks.push_back(Chunk { data, eof, deliver_at });
        drop(q);
        if was_empty {
            self.front_changed.notify_one();
        }
    }

    fn next(&self, now: LinkTime) -> Next {
        let mut q = lock(&self.queue);
        match q.chunks.front().map(|c| c.deliver_at) {
            None | Some(None) => Next::Idle,
            Some(Some(at)) if at > now => Next::Wait(at),
            Some(Some(_)) => match q.chunks.pop_front() {
                Some(chunk) => Next::Due(chunk),
                None => Next::Idle,
            },
        }
    }

    fn delivered(&self, bytes: usize, link: &DirState) {
        let mut q = lock(&self.queue);
        q.bytes -= bytes;
        drop(q);
        link.count_delivered(bytes);
        self.space_freed.notify_one();
    }

    /// A hold partition started: chunks in flight are held too (a real partition loses them and
    /// TCP resends them after heal).
    pub(crate) fn hold_all(&self) {
        let mut q = lock(&self.queue);
        for chunk in &mut q.chunks {
            chunk.deliver_at = None;
        }
        drop(q);
        self.front_changed.notify_one();
    }

    /// The partition healed: held chunks are offered to the link now, in order.
    pub(crate) fn release_held(&self, now: LinkTime, link: &DirState) {
        let mut q = lock(&self.queue);
        let Queue { chunks, stream, .. } = &mut *q;
        for chunk in chunks.iter_mut().filter(|c| c.deliver_at.is_none()) {
            // `None` again if this direction was partitioned anew meanwhile.
            chunk.deliver_at = link.schedule(now, chunk.data.len(), stream);
        }
        drop(q);
        self.front_changed.notify_one();
    }

    /// The connection ended: drops what is left and counts it.
    pub(crate) fn discard(&self, link: &DirState) {
        let mut q = lock(&self.queue);
        let bytes = q.bytes;
        q.chunks.clear();
        q.bytes = 0;
        drop(q);
        if bytes > 0 {
            link.count_discarded(bytes);
        }
    }
}

/// Reads from `src` into the pipe until end of stream, stopping while the pipe is full. Each
/// chunk is offered to the link at the moment its bytes arrived (see [`stamped`]).
pub(crate) async fn forward_reads(src: &TcpStream, pipe: &Pipe, shared: &Shared) -> io::Result<()> {
    let link = shared.dir(pipe.dir);
    let mut buf = vec![0u8; READ_CHUNK_BYTES_MAX];
    loop {
        while !pipe.has_room() {
            // Backpressure: the sender's TCP window fills while we wait.
            pipe.space_freed.notified().await;
        }
        let (n, waited) = stamped::read(src, &mut buf).await?;
        let now = LinkTime(shared.now().0.saturating_sub(waited));
        if n == 0 {
            pipe.push(Bytes::new(), true, now, link);
            return Ok(());
        }
        // A copy sized to the read, so a trickle of small reads cannot pin 64 KiB buffers.
        pipe.push(Bytes::copy_from_slice(&buf[..n]), false, now, link);
    }
}

/// Writes the pipe's chunks to `dst` at their delivery instants; shuts `dst` down for writing
/// after the end-of-stream marker.
pub(crate) async fn forward_writes<W: AsyncWrite + Unpin>(dst: &mut W, pipe: &Pipe, shared: &Shared) -> io::Result<()> {
    let link = shared.dir(pipe.dir);
    // Kept across wake-ups while the deadline stays the same, so waking early (a partition
    // came and went) does not re-register the timer.
    let mut sleep: Option<(LinkTime, timer::PreciseSleep)> = None;
    // Set when the sleep for this instant fired. Sleeps aim early on purpose (the timer's
    // lead), so the chunk is due even if the clock has not quite reached it; re-checking the
    // clock instead would spin until it does.
    let mut woke_for: Option<LinkTime> = None;
    loop {
        let now = shared.now();
        let due_by = woke_for.take().map_or(now, |at| at.max(now));
        match pipe.next(due_by) {
            Next::Idle => {
                sleep = None;
                pipe.front_changed.notified().await;
            }
            Next::Wait(at) => {
                let deadline = match &mut sleep {
                    Some((t, s)) if *t == at => s,
                    _ => &mut sleep.insert((at, timer::sleep_until(shared.instant(at)))).1,
                };
                tokio::select! {
                    _ = deadline => {
                        sleep = None;
                        woke_for = Some(at);
                    }
                    _ = pipe.front_changed.notified() => {}
                }
            }
            Next::Due(chunk) => {
                sleep = None;
                if chunk.eof {
                    dst.shutdown().await?;
                    return Ok(());
                }
                dst.write_all(&chunk.data).await?;
                pipe.delivered(chunk.data.len(), link);
            }
        }
    }
}
