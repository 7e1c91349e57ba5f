//! A lane's outgoing side: the core's messages in the order it produced
//! them, written by the first thread that can write them without waiting.
//!
//! The engine queues the core's messages here while it holds the core's
//! lock, so the queue's order is the core's order. Once the lock is
//! released, the thread that handled the input writes what is queued itself
//! ([`Outbox::write_here`]): a blocking-pool thread that has just made a
//! `sync` write durable sends the peer's answer without waking a runtime
//! thread for the lane's writer task, and a runtime thread puts a sync
//! write's copy on the wire before the rest of its input's work (its local
//! write, waking pool threads). It never waits: when another thread is
//! writing the lane, when the batch is larger than a slice, or when the
//! socket is full, the lane's writer task ([`Outbox::run`]) finishes the
//! work, as it did all of it before.
//!
//! Order: messages come off the queue only under the writer lock, and only
//! while the writer holds no bytes it has not handed to the stream (nor an
//! unfinished flush): whoever takes later messages first finishes, or
//! leaves to the writer task, what was taken before. So bytes go out in
//! queue order. Messages are encoded one at a time outside the queue's
//! lock: the engine pushes while it holds the core's lock, and must not
//! wait for an encoding.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use geomirror_wire::peer::{Lane, Message};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::codec::encode_frame;
use crate::limits::{LANE_WRITE_BATCH_BYTES, LANE_WRITE_SLICE_BYTES};

/// What counts the bytes sent (the engine's link and copy-stream counters).
pub trait CountSent: Send + Sync {
    /// One frame of `bytes` bytes, carrying `message`, is on its way.
    fn count_sent(&self, message: &Message, bytes: usize);
}

/// The lane's queue was full: the peer does not read fast enough.
#[derive(Debug, PartialEq, Eq)]
pub struct OutboxFull;

/// How [`Outbox::write_here`] left the lane.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    /// Everything queued is in the stream's hands (sent, or buffered by the
    /// kernel).
    All,
    /// Some of it waits for the lane's writer task, which was woken.
    LeftToWriter,
}

/// The stream's writing half and the frames taken off the queue but not yet
/// handed to it.
struct Writer {
    half: Box<dyn AsyncWrite + Send + Unpin>,
    /// Encoded frames; `buf[handed..]` is not yet in the stream's hands.
    buf: BytesMut,
    handed: usize,
    /// Bytes were handed over but the stream's flush has not completed
    /// (TLS records still in its buffer).
    unflushed: bool,
}

impl Writer {
    fn idle(&self) -> bool {
        self.buf.is_empty() && !self.unflushed
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.handed = 0;
        if self.buf.capacity() > 2 * LANE_WRITE_BATCH_BYTES {
            // One large frame grew it: do not keep that much per lane.
            self.buf = BytesMut::with_capacity(LANE_WRITE_SLICE_BYTES);
        }
    }
}

/// One lane's outgoing queue and writer (module docs).
pub struct Outbox {
    lane: Lane,
    queue: Mutex<VecDeque<Message>>,
    capacity: usize,
    writer: tokio::sync::Mutex<Writer>,
    /// Wakes the writer task; a wake with no task waiting is kept for it.
    work: Notify,
    counter: Arc<dyn CountSent>,
    cancel: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
}

impl Outbox {
    /// An outbox of at most `capacity` queued messages for `half`. A write
    /// error ends the session: `reason` gets why (if it has no reason yet)
    /// and `cancel` is cancelled.
    pub fn new(
        lane: Lane,
        capacity: usize,
        half: Box<dyn AsyncWrite + Send + Unpin>,
        counter: Arc<dyn CountSent>,
        cancel: CancellationToken,
        reason: Arc<Mutex<Option<String>>>,
    ) -> Arc<Outbox> {
        Arc::new(Outbox {
            lane,
            queue: Mutex::new(VecDeque::new()),
            capacity,
            writer: tokio::sync::Mutex::new(Writer {
                half,
                buf: BytesMut::with_capacity(LANE_WRITE_SLICE_BYTES),
                handed: 0,
                unflushed: false,
            }),
            work: Notify::new(),
            counter,
            cancel,
            reason,
        })
    }

    /// Queues `message` after every message queued before it. Nothing is
    /// written: [`write_here`](Self::write_here) follows, once the caller
    /// holds no lock the writer could wait for.
    pub fn push(&self, message: Message) -> Result<(), OutboxFull> {
        let mut queue = self.queue.lock().expect("outbox lock");
        if queue.len() >= self.capacity {
            return Err(OutboxFull);
        }
        queue.push_back(message);
        Ok(())
    }

    /// Lets the writer task write what is queued.
    fn wake_writer(&self) {
        self.work.notify_one();
    }

    /// Writes what is queued on this thread if that needs no waiting (module
    /// docs); otherwise leaves it to the writer task. A write error ends
    /// the session. Once the session has ended nothing is written (its
    /// messages are dropped with it, as the core expects of a closed session).
    pub fn write_here(&self) -> Written {
        if self.cancel.is_cancelled() {
            return Written::All;
        }
        let Ok(mut w) = self.writer.try_lock() else {
            // Someone is writing; the writer task, woken, takes what is
            // queued after that.
            self.wake_writer();
            return Written::LeftToWriter;
        };
        if !w.idle() {
            // The socket was full a moment ago: the writer task waits for
            // room (new messages go after its bytes either way).
            drop(w);
            self.wake_writer();
            return Written::LeftToWriter;
        }
        let outcome = match self.take_queued(&mut w, LANE_WRITE_SLICE_BYTES) {
            Err(why) => Err(why),
            Ok(()) if w.buf.is_empty() => Ok(true),
            Ok(()) if w.buf.len() > LANE_WRITE_SLICE_BYTES => Ok(false),
            Ok(()) => hand_over_without_waiting(self.lane, &mut w),
        };
        let done = match outcome {
            Ok(done) => done,
            Err(why) => {
                drop(w);
                self.close(why);
                return Written::LeftToWriter;
            }
        };
        drop(w);
        if done && self.queue.lock().expect("outbox lock").is_empty() {
            Written::All
        } else {
            self.wake_writer();
            Written::LeftToWriter
        }
    }

    /// The lane's writer task: writes whatever the other threads left, until
    /// the session ends. A write error ends the session.
    pub async fn run(self: Arc<Self>) {
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = self.work.notified() => {}
            }
            let result = tokio::select! {
                _ = self.cancel.cancelled() => return,
                r = self.write_all_queued() => r,
            };
            if let Err(why) = result {
                self.close(why);
                return;
            }
        }
    }

    /// Takes the writer lock and writes until the queue is empty.
    async fn write_all_queued(&self) -> Result<(), String> {
        let lane = self.lane;
        let mut w = self.writer.lock().await;
        loop {
            if w.handed < w.buf.len() {
                let Writer { half, buf, handed, .. } = &mut *w;
                write_in_slices(half, &buf[*handed..]).await.map_err(|e| format!("{lane:?} lane write failed: {e}"))?;
                w.clear();
                w.unflushed = false;
            } else if w.unflushed {
                w.half.flush().await.map_err(|e| format!("{lane:?} lane write failed: {e}"))?;
                w.unflushed = false;
            }
            self.take_queued(&mut w, LANE_WRITE_BATCH_BYTES)?;
            if w.buf.is_empty() {
                return Ok(());
            }
        }
    }

    /// Encodes queued messages into the writer's buffer, in order, until it
    /// holds `bytes` or more (one larger message goes alone). The caller
    /// holds the writer lock; the queue's lock is held only to take each
    /// message, not while it is encoded.
    fn take_queued(&self, w: &mut Writer, bytes: usize) -> Result<(), String> {
        let lane = self.lane;
        while w.buf.len() < bytes {
            let Some(message) = self.queue.lock().expect("outbox lock").pop_front() else { break };
            let n = encode_frame(&message, &mut w.buf).map_err(|e| format!("{lane:?} lane: {e}"))?;
            self.counter.count_sent(&message, n);
        }
        Ok(())
    }

    fn close(&self, why: String) {
        let mut r = self.reason.lock().expect("reason lock");
        if r.is_none() {
            *r = Some(why);
        }
        drop(r);
        self.cancel.cancel();
    }
}

/// Hands the writer's bytes to the stream and flushes, as far as that goes
/// without waiting. True: all handed over and flushed.
fn hand_over_without_waiting(lane: Lane, w: &mut Writer) -> Result<bool, String> {
    let mut cx = Context::from_waker(Waker::noop());
    while w.handed < w.buf.len() {
        match Pin::new(&mut w.half).poll_write(&mut cx, &w.buf[w.handed..]) {
            Poll::Ready(Ok(0)) => return Err(format!("{lane:?} lane write failed: the connection accepts no more bytes")),
            Poll::Ready(Ok(n)) => w.handed += n,
            Poll::Ready(Err(e)) => return Err(format!("{lane:?} lane write failed: {e}")),
            Poll::Pending => return Ok(false),
        }
    }
    w.clear();
    w.unflushed = true;
    match Pin::new(&mut w.half).poll_flush(&mut cx) {
        Poll::Ready(Ok(())) => {
            w.unflushed = false;
            Ok(true)
        }
        Poll::Ready(Err(e)) => Err(format!("{lane:?} lane write failed: {e}")),
        Poll::Pending => Ok(false),
    }
}

/// Writes `bytes` and flushes, [`LANE_WRITE_SLICE_BYTES`] at a time, letting
/// the thread's other tasks run between slices.
async fn write_in_slices<W: AsyncWrite + Unpin + ?Sized>(writer: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    let mut slices = bytes.chunks(LANE_WRITE_SLICE_BYTES).peekable();
    while let Some(slice) = slices.next() {
        writer.write_all(slice).await?;
        writer.flush().await?;
        if slices.peek().is_some() {
            tokio::task::yield_now().await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use geomirror_wire::peer::{RequestId, VolumeIndex};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncReadExt;
    use tokio_util::codec::Decoder;

    #[derive(Default)]
    struct Counted(AtomicUsize);
    impl CountSent for Counted {
        fn count_sent(&self, _: &Message, bytes: usize) {
            self.0.fetch_add(bytes, Ordering::SeqCst);
        }
    }

    fn outbox(half: tokio::io::DuplexStream, capacity: usize) -> (Arc<Outbox>, Arc<Counted>) {
        let counted = Arc::new(Counted::default());
        let o =
            Outbox::new(Lane::Priority, capacity, Box::new(half), counted.clone(), CancellationToken::new(), Arc::new(Mutex::new(None)));
        (o, counted)
    }

    fn heartbeat(n: u64) -> Message {
        Message::Heartbeat { id: RequestId(n) }
    }

    /// Decodes every frame in `bytes`: the heartbeats' ids, in order.
    fn ids(bytes: &[u8]) -> Vec<u64> {
        let mut codec = super::super::codec::codec();
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(frame) = codec.decode(&mut buf).unwrap() {
            match Message::decode(&frame).unwrap() {
                Message::Heartbeat { id } => out.push(id.0),
                other => panic!("unexpected {}", other.kind()),
            }
        }
        assert!(buf.is_empty(), "a partial frame was left");
        out
    }

    /// With nobody else writing and room in the socket, the calling thread
    /// writes the whole queue: the bytes are there before any writer task
    /// ran (none is spawned here), and counted.
    #[tokio::test(flavor = "current_thread")]
    async fn the_calling_thread_writes_a_small_queue_itself() {
        let (tx, mut rx) = tokio::io::duplex(1 << 20);
        let (o, counted) = outbox(tx, 16);
        for n in 0..3 {
            o.push(heartbeat(n)).unwrap();
        }
        assert_eq!(o.write_here(), Written::All);
        let mut got = vec![0u8; counted.0.load(Ordering::SeqCst)];
        assert!(!got.is_empty());
        rx.read_exact(&mut got).await.unwrap();
        assert_eq!(ids(&got), vec![0, 1, 2]);
    }

    /// A full socket: what the calling thread could not hand over is left
    /// to the writer task, which sends it once the peer reads; nothing is
    /// lost or reordered, and messages queued meanwhile follow.
    #[tokio::test(flavor = "current_thread")]
    async fn a_full_socket_leaves_the_rest_to_the_writer_task_in_order() {
        let (tx, mut rx) = tokio::io::duplex(100);
        let (o, _) = outbox(tx, 1024);
        for n in 0..50 {
            o.push(heartbeat(n)).unwrap();
        }
        assert_eq!(o.write_here(), Written::LeftToWriter);
        for n in 50..60 {
            o.push(heartbeat(n)).unwrap();
        }
        assert_eq!(o.write_here(), Written::LeftToWriter, "the writer has bytes left: new messages wait behind them");
        let task = tokio::spawn(o.clone().run());
        let mut got = Vec::new();
        let mut chunk = [0u8; 64];
        while ids_complete(&got) < 60 {
            let n = tokio::time::timeout(std::time::Duration::from_secs(10), rx.read(&mut chunk)).await.unwrap().unwrap();
            assert!(n > 0);
            got.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(ids(&got), (0..60).collect::<Vec<_>>());
        o.cancel.cancel();
        task.await.unwrap();
    }

    fn ids_complete(bytes: &[u8]) -> usize {
        let mut codec = super::super::codec::codec();
        let mut buf = BytesMut::from(bytes);
        let mut n = 0;
        while let Ok(Some(_)) = codec.decode(&mut buf) {
            n += 1;
        }
        n
    }

    /// Many threads queue (under one lock, as the engine does under the
    /// core's) and write, while the writer task also runs: the frames arrive
    /// exactly in queue order.
    #[test]
    fn concurrent_writers_keep_the_queue_order() {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let (tx, mut rx) = tokio::io::duplex(4096);
        let (o, _) = outbox(tx, 100_000);
        let task = runtime.spawn(o.clone().run());
        let core_lock = Arc::new(Mutex::new(0u64));
        const THREADS: u64 = 4;
        const EACH: u64 = 500;
        let reader = runtime.spawn(async move {
            let mut got = Vec::new();
            let mut chunk = [0u8; 8192];
            while ids_complete(&got) < (THREADS * EACH) as usize {
                let n = rx.read(&mut chunk).await.unwrap();
                assert!(n > 0);
                got.extend_from_slice(&chunk[..n]);
            }
            ids(&got)
        });
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                let (o, core_lock) = (o.clone(), core_lock.clone());
                let handle = runtime.handle().clone();
                std::thread::spawn(move || {
                    let _guard = handle.enter();
                    for _ in 0..EACH {
                        {
                            let mut next = core_lock.lock().unwrap();
                            o.push(heartbeat(*next)).unwrap();
                            *next += 1;
                        }
                        o.write_here();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let got = runtime.block_on(async { tokio::time::timeout(std::time::Duration::from_secs(20), reader).await }).unwrap().unwrap();
        assert_eq!(got, (0..THREADS * EACH).collect::<Vec<_>>());
        o.cancel.cancel();
        runtime.block_on(task).unwrap();
    }

    /// A batch larger than a slice is not written by the calling thread but
    /// by the writer task, in slices that let the thread's other tasks run.
    #[tokio::test(flavor = "current_thread")]
    async fn a_large_batch_goes_to_the_writer_task_in_slices() {
        let (tx, mut rx) = tokio::io::duplex(8 << 20);
        let (o, _) = outbox(tx, 16);
        let data = Bytes::from((0..3 * LANE_WRITE_SLICE_BYTES + 123).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
        o.push(Message::PullReply { id: RequestId(9), data: Some(data.clone()) }).unwrap();
        assert_eq!(o.write_here(), Written::LeftToWriter);
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = tokio::spawn(o.clone().run());
        let flag = ran.clone();
        let other = tokio::spawn(async move { flag.store(true, Ordering::SeqCst) });
        let mut codec = super::super::codec::codec();
        let mut buf = BytesMut::new();
        let frame = loop {
            if let Some(frame) = codec.decode(&mut buf).unwrap() {
                break frame;
            }
            let mut chunk = vec![0u8; 1 << 16];
            let n = rx.read(&mut chunk).await.unwrap();
            buf.extend_from_slice(&chunk[..n]);
        };
        assert!(ran.load(Ordering::SeqCst), "the other task waited for the whole batch");
        match Message::decode(&frame).unwrap() {
            Message::PullReply { id, data: Some(got) } => assert!(id == RequestId(9) && got == data, "bytes lost or changed"),
            other => panic!("unexpected {}", other.kind()),
        }
        let _ = VolumeIndex(0);
        o.cancel.cancel();
        task.await.unwrap();
        other.await.unwrap();
    }

    /// The queue is bounded: a push beyond it is refused and changes nothing.
    #[tokio::test(flavor = "current_thread")]
    async fn a_push_beyond_the_capacity_is_refused() {
        let (tx, mut rx) = tokio::io::duplex(1 << 20);
        let (o, counted) = outbox(tx, 2);
        o.push(heartbeat(1)).unwrap();
        o.push(heartbeat(2)).unwrap();
        assert_eq!(o.push(heartbeat(3)), Err(OutboxFull));
        assert_eq!(o.write_here(), Written::All);
        let mut got = vec![0u8; counted.0.load(Ordering::SeqCst)];
        rx.read_exact(&mut got).await.unwrap();
        assert_eq!(ids(&got), vec![1, 2]);
    }
}
