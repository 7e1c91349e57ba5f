//! The transmission phase: pipelined requests, replies as they complete.
//!
//! One task per connection: it reads the next request (header, and a
//! WRITE's payload) while up to `max_inflight_per_connection` requests run
//! as futures of that same task (no task spawned per request), and writes
//! each finished reply into a buffered socket writer, flushed once no other
//! reply is ready (replies batched per write). At the limit it stops
//! reading (back-pressure). Store I/O that can wait for the device runs on
//! the blocking pool; page-cache read hits are served inline (see
//! `Volume::read`).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures::stream::{FuturesUnordered, StreamExt};
use geomirror_wire::nbd::{self as w, Command, Errno, REQUEST_HEADER_BYTES, Request, cflag};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio_util::sync::CancellationToken;

use super::handshake::Session;
use super::{ServerLimits, errno_for};
use crate::limits::{NBD_BLOCK_STATUS_DESCRIPTORS_MAX, NBD_WRITE_BUFFER_BYTES};
use crate::metrics::Op;
use crate::store::ZeroMode;
use crate::volume::Volume;

/// Why a connection ended.
#[derive(Debug)]
pub enum Disconnect {
    /// The client sent NBD_CMD_DISC.
    ClientDisc,
    /// The client closed the socket.
    ClientClosed,
    /// The node is shutting down.
    Shutdown,
    /// The socket failed.
    Io(std::io::Error),
    /// The client broke the protocol; the connection was closed.
    Protocol(String),
}

impl Disconnect {
    /// Whether the client misbehaved.
    pub fn is_protocol_violation(&self) -> bool {
        matches!(self, Disconnect::Protocol(_))
    }
}

impl fmt::Display for Disconnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Disconnect::ClientDisc => f.write_str("client sent NBD_CMD_DISC"),
            Disconnect::ClientClosed => f.write_str("client closed the connection"),
            Disconnect::Shutdown => f.write_str("node shutting down"),
            Disconnect::Io(e) => write!(f, "connection error: {e}"),
            Disconnect::Protocol(reason) => write!(f, "protocol violation: {reason}"),
        }
    }
}

/// A reply ready for the socket: a small header and optional read data.
struct Reply {
    header: BytesMut,
    data: Option<Bytes>,
}

/// A request read from the socket.
enum Incoming {
    Request { request: Request, payload: Option<Bytes>, received: Instant },
    Disc,
}

/// The read of the next request, owning the reader while it runs (so that
/// it can wait beside the requests in flight and resume where it was).
type NextRequest<R> = Pin<Box<dyn Future<Output = (R, Result<Incoming, Disconnect>)> + Send>>;

fn next_request<R: AsyncRead + Unpin + Send + 'static>(mut reader: R, max_request_bytes: u32) -> NextRequest<R> {
    Box::pin(async move {
        let result = read_request(&mut reader, max_request_bytes).await;
        (reader, result)
    })
}

async fn read_request<R: AsyncRead + Unpin>(reader: &mut R, max_request_bytes: u32) -> Result<Incoming, Disconnect> {
    let mut header = [0u8; REQUEST_HEADER_BYTES];
    match reader.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(Disconnect::ClientClosed),
        Err(e) => return Err(Disconnect::Io(e)),
    }
    let received = Instant::now();
    let request = w::decode_request(&header).map_err(|e| Disconnect::Protocol(format!("bad request header: {e}")))?;
    if request.command == Command::Disc {
        return Ok(Incoming::Disc);
    }
    let payload = if request.command == Command::Write {
        if request.length > max_request_bytes {
            // The payload cannot be skipped safely at any size; closing is
            // what the specification allows for an oversized write.
            return Err(Disconnect::Protocol(format!(
                "WRITE of {} bytes exceeds the maximum block size {max_request_bytes}",
                request.length
            )));
        }
        match read_payload(reader, request.length as usize).await {
            Ok(payload) => Some(payload),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(Disconnect::ClientClosed),
            Err(e) => return Err(Disconnect::Io(e)),
        }
    } else {
        None
    };
    Ok(Incoming::Request { request, payload, received })
}

/// Serves requests until the client leaves, breaks the protocol or the node stops.
pub async fn serve<R, W>(reader: R, writer: W, session: Session, limits: ServerLimits, shutdown: CancellationToken) -> Disconnect
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let depth = limits.max_inflight_per_connection;
    let ctx = Context {
        volume: session.volume,
        structured: session.structured,
        allocation: session.allocation,
        max_request_bytes: limits.max_request_bytes,
    };
    let ctx = &ctx;
    let mut out = BufWriter::with_capacity(NBD_WRITE_BUFFER_BYTES, writer);
    let mut inflight = FuturesUnordered::new();
    let mut next = next_request(reader, ctx.max_request_bytes);
    let mut write_error = None;
    let reason = loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Disconnect::Shutdown,
            // A request waiting is read first: the pipeline stays full while
            // replies complete.
            (reader, read) = &mut next, if inflight.len() < depth => {
                match read {
                    Ok(Incoming::Request { request, payload, received }) => {
                        inflight.push(ctx.execute(request, payload, received));
                        next = next_request(reader, ctx.max_request_bytes);
                    }
                    Ok(Incoming::Disc) => break Disconnect::ClientDisc,
                    Err(reason) => break reason,
                }
            }
            Some(reply) = inflight.next(), if !inflight.is_empty() => {
                // This reply and every other one ready now, in one write.
                let mut ready = Some(reply);
                let mut written = Ok(());
                while let Some(reply) = ready.take() {
                    written = written.and(put_reply(&mut out, &reply).await);
                    ready = futures::FutureExt::now_or_never(inflight.next()).flatten();
                }
                if let Err(e) = written.and(out.flush().await) {
                    write_error = Some(e);
                    break Disconnect::ClientClosed;
                }
            }
        }
    };
    // Let requests in flight finish and their replies go out (a DISC must
    // not lose writes already received; with the socket gone they still
    // finish, unanswered).
    while let Some(reply) = inflight.next().await {
        if write_error.is_none()
            && let Err(e) = put_reply(&mut out, &reply).await
        {
            write_error = Some(e);
        }
    }
    if write_error.is_none() {
        let flushed = match out.flush().await {
            Ok(()) => out.into_inner().shutdown().await,
            Err(e) => Err(e),
        };
        if let Err(e) = flushed {
            write_error = Some(e);
        }
    }
    match write_error {
        Some(e) if !matches!(reason, Disconnect::Protocol(_)) => Disconnect::Io(e),
        _ => reason,
    }
}

async fn put_reply<W: AsyncWrite + Unpin>(out: &mut BufWriter<W>, reply: &Reply) -> std::io::Result<()> {
    out.write_all(&reply.header).await?;
    if let Some(data) = &reply.data {
        out.write_all(data).await?;
    }
    Ok(())
}

/// Reads exactly `len` bytes into a fresh buffer without zero-filling it first.
async fn read_payload<R: AsyncRead + Unpin>(reader: &mut R, len: usize) -> std::io::Result<Bytes> {
    let mut payload = BytesMut::with_capacity(len);
    while payload.len() < len {
        let mut limited = (&mut *reader).take((len - payload.len()) as u64);
        if limited.read_buf(&mut payload).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(payload.freeze())
}

struct Context {
    volume: Arc<Volume>,
    structured: bool,
    /// `base:allocation` was negotiated: BLOCK_STATUS is answered.
    allocation: bool,
    max_request_bytes: u32,
}

impl Context {
    /// Maps a failure to its NBD error and logs it: every error a host sees
    /// is traceable to a log line (identical failures within a second are
    /// counted and summed up in the next line, not repeated).
    fn failed(&self, command: Command, offset: u64, length: u64, error: &crate::volume::VolumeError) -> Errno {
        let errno = errno_for(command, error);
        self.log_failure(command, offset, length, errno, error.to_string())
    }

    /// A request refused before it reached the volume (the protocol's
    /// rules), logged like any other failure.
    fn refused(&self, command: Command, offset: u64, length: u64, errno: Errno, reason: &str) -> Errno {
        self.log_failure(command, offset, length, errno, format!("request refused: {reason}"))
    }

    fn log_failure(&self, command: Command, offset: u64, length: u64, errno: Errno, reason: String) -> Errno {
        if let Some(suppressed) = self.volume.failure_log().admit(&reason) {
            tracing::warn!(
                command = ?command,
                offset,
                length,
                errno = ?errno,
                suppressed_since_last = suppressed,
                reason,
                "host request failed"
            );
        }
        errno
    }
}

impl Context {
    /// BLOCK_STATUS for `base:allocation`: one final chunk of descriptors
    /// (holes are holes and read as zeroes), or an error.
    async fn block_status(&self, request: Request, received: Instant) -> Result<Reply, Errno> {
        let (offset, length) = (request.offset, u64::from(request.length));
        let command = request.command;
        if !self.allocation {
            return Err(self.refused(command, offset, length, Errno::Inval, "BLOCK_STATUS without a negotiated base:allocation context"));
        }
        if length == 0 {
            return Err(self.refused(command, offset, length, Errno::Inval, "a BLOCK_STATUS of length 0"));
        }
        let runs = self.volume.allocation(offset, length).await.map_err(|e| self.failed(command, offset, length, &e))?;
        let take = if request.flags & cflag::REQ_ONE != 0 { 1 } else { NBD_BLOCK_STATUS_DESCRIPTORS_MAX };
        let descriptors: Vec<(u32, u32)> = runs
            .into_iter()
            .take(take)
            .map(|(len, hole)| {
                let flags = if hole { w::allocation::HOLE | w::allocation::ZERO } else { 0 };
                (u32::try_from(len).expect("runs of a u32 request fit a u32"), flags)
            })
            .collect();
        let mut header = BytesMut::with_capacity(w::CHUNK_HEADER_BYTES + 4 + 8 * descriptors.len());
        w::encode_block_status(&mut header, request.cookie, super::handshake::ALLOCATION_CONTEXT_ID, &descriptors);
        self.volume.metrics().record_latency(Op::BlockStatus, received.elapsed().as_secs_f64());
        Ok(Reply { header, data: None })
    }

    async fn execute(&self, request: Request, payload: Option<Bytes>, received: Instant) -> Reply {
        if request.command == Command::BlockStatus && request.flags & cflag::PAYLOAD_LEN == 0 {
            match self.block_status(request, received).await {
                Ok(reply) => return reply,
                Err(errno) => {
                    metrics::counter!(crate::metrics::NBD_ERRORS, "volume" => self.volume.name().to_string(), "error" => format!("{errno:?}"))
                        .increment(1);
                    let mut header = BytesMut::with_capacity(64);
                    if self.structured {
                        w::encode_structured_error(&mut header, request.cookie, errno as u32, &format!("BlockStatus failed: {errno:?}"));
                    } else {
                        w::encode_simple_reply(&mut header, errno as u32, request.cookie);
                    }
                    return Reply { header, data: None };
                }
            }
        }
        let volume = &self.volume;
        let (offset, length) = (request.offset, u64::from(request.length));
        let fua = request.flags & cflag::FUA != 0;
        let command = request.command;
        let refuse = |errno, reason: &str| Err(self.refused(command, offset, length, errno, reason));
        let result: Result<(Op, Option<Bytes>), Errno> = if request.flags & cflag::PAYLOAD_LEN != 0 {
            refuse(Errno::Inval, "the PAYLOAD_LEN flag needs extended headers, which were not negotiated")
        } else {
            match command {
                Command::Read if length == 0 => refuse(Errno::Inval, "a READ of length 0"),
                Command::Read if request.length > self.max_request_bytes => {
                    refuse(Errno::Overflow, &format!("a READ longer than the maximum block size {}", self.max_request_bytes))
                }
                Command::Read => volume
                    .read(offset, request.length)
                    .await
                    .map(|d| (Op::Read, Some(d)))
                    .map_err(|e| self.failed(command, offset, length, &e)),
                Command::Write => {
                    let data = payload.expect("the reader attaches a WRITE's payload");
                    if data.is_empty() {
                        refuse(Errno::Inval, "a WRITE of length 0")
                    } else {
                        volume
                            .write(offset, data, fua)
                            .await
                            .map(|()| (Op::Write, None))
                            .map_err(|e| self.failed(command, offset, length, &e))
                    }
                }
                Command::Flush => volume.flush().await.map(|()| (Op::Flush, None)).map_err(|e| self.failed(command, offset, length, &e)),
                Command::Trim if length == 0 => refuse(Errno::Inval, "a TRIM of length 0"),
                Command::Trim => {
                    volume.trim(offset, length, fua).await.map(|()| (Op::Trim, None)).map_err(|e| self.failed(command, offset, length, &e))
                }
                Command::WriteZeroes if length == 0 => refuse(Errno::Inval, "a WRITE_ZEROES of length 0"),
                Command::WriteZeroes => {
                    let mode = if request.flags & cflag::NO_HOLE != 0 { ZeroMode::KeepAllocated } else { ZeroMode::MayUnmap };
                    let fast_only = request.flags & cflag::FAST_ZERO != 0;
                    volume
                        .write_zeroes(offset, length, mode, fast_only, fua)
                        .await
                        .map(|()| (Op::WriteZeroes, None))
                        .map_err(|e| self.failed(command, offset, length, &e))
                }
                // Not advertised, or unknown: the spec's answer is EINVAL.
                Command::Cache | Command::BlockStatus | Command::Resize | Command::Unknown(_) | Command::Disc => {
                    refuse(Errno::Inval, "a command that was not advertised")
                }
            }
        };
        let mut header = BytesMut::with_capacity(32);
        match result {
            Ok((op, data)) => {
                volume.metrics().record_latency(op, received.elapsed().as_secs_f64());
                match data {
                    Some(data) if self.structured => {
                        w::encode_read_data_header(&mut header, request.cookie, offset, data.len() as u32);
                        Reply { header, data: Some(data) }
                    }
                    data => {
                        w::encode_simple_reply(&mut header, 0, request.cookie);
                        Reply { header, data }
                    }
                }
            }
            Err(errno) => {
                metrics::counter!(crate::metrics::NBD_ERRORS, "volume" => volume.name().to_string(), "error" => format!("{errno:?}"))
                    .increment(1);
                if self.structured && command == Command::Read {
                    w::encode_structured_error(&mut header, request.cookie, errno as u32, &format!("{command:?} failed: {errno:?}"));
                } else {
                    w::encode_simple_reply(&mut header, errno as u32, request.cookie);
                }
                Reply { header, data: None }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::BlockStore;
    use crate::store::memory::MemoryStore;
    use crate::store::meta::VolumeMeta;
    use geomirror_wire::nbd::{ReplyHeader, SIMPLE_REPLY_BYTES};
    use tokio::io::AsyncWriteExt;

    const SIZE: u64 = 1 << 20;

    fn request(command: Command, cookie: u64, offset: u64, length: u32) -> BytesMut {
        let mut out = BytesMut::new();
        w::encode_request(&mut out, &Request { flags: 0, command, cookie, offset, length });
        out
    }

    async fn simple_reply<R: AsyncRead + Unpin>(r: &mut R) -> (u32, u64) {
        let mut header = [0u8; SIMPLE_REPLY_BYTES];
        r.read_exact(&mut header).await.unwrap();
        match w::decode_reply_header(&header).unwrap() {
            ReplyHeader::Simple { errno, cookie } => (errno, cookie),
            other => panic!("not a simple reply: {other:?}"),
        }
    }

    /// Requests sent back to back (more than the in-flight limit) are all
    /// answered, once each; reads return what was written; a DISC right
    /// after a write lets that write finish.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pipelined_requests_are_each_answered_once_and_a_disc_loses_no_write() {
        const N: u64 = 64;
        let store = Arc::new(MemoryStore::new(SIZE));
        let meta = VolumeMeta { volume_id: [0; 16], name: "v".into(), size: SIZE, block_bytes: 4096, extent_bytes: 65536 };
        let volume = Arc::new(Volume::new(meta, store.clone()));
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (server_read, server_write) = tokio::io::split(server);
        let limits = ServerLimits { max_connections: 1, max_inflight_per_connection: 4, max_request_bytes: 1 << 20 };
        let session = Session { volume, structured: false, allocation: false };
        let served = tokio::spawn(serve(server_read, server_write, session, limits, CancellationToken::new()));
        let (mut from_server, mut to_server) = tokio::io::split(client);

        // Writes: cookie i writes 4 KiB of byte i at block i.
        let sender = tokio::spawn(async move {
            for i in 0..N {
                to_server.write_all(&request(Command::Write, i, i * 4096, 4096)).await.unwrap();
                to_server.write_all(&[i as u8; 4096]).await.unwrap();
            }
            to_server
        });
        let mut seen = vec![false; N as usize];
        for _ in 0..N {
            let (errno, cookie) = simple_reply(&mut from_server).await;
            assert_eq!(errno, 0, "write {cookie}");
            assert!(!std::mem::replace(&mut seen[cookie as usize], true), "write {cookie} answered twice");
        }
        let mut to_server = sender.await.unwrap();

        // Reads of every block, back to back.
        for i in 0..N {
            to_server.write_all(&request(Command::Read, 1000 + i, i * 4096, 4096)).await.unwrap();
        }
        let mut seen = vec![false; N as usize];
        for _ in 0..N {
            let (errno, cookie) = simple_reply(&mut from_server).await;
            assert_eq!(errno, 0);
            let i = cookie - 1000;
            let mut data = vec![0u8; 4096];
            from_server.read_exact(&mut data).await.unwrap();
            assert!(data.iter().all(|&b| b == i as u8), "block {i} read back wrong");
            assert!(!std::mem::replace(&mut seen[i as usize], true), "read {i} answered twice");
        }

        // A write, then DISC at once: the write is done when serve returns.
        to_server.write_all(&request(Command::Write, 7777, SIZE - 4096, 4096)).await.unwrap();
        to_server.write_all(&[0xab; 4096]).await.unwrap();
        to_server.write_all(&request(Command::Disc, 0, 0, 0)).await.unwrap();
        let reason = served.await.unwrap();
        assert!(matches!(reason, Disconnect::ClientDisc), "{reason}");
        let mut tail = vec![0u8; 4096];
        store.read_at(&mut tail, SIZE - 4096).unwrap();
        assert!(tail.iter().all(|&b| b == 0xab), "the write before the DISC was lost");
        assert_eq!(simple_reply(&mut from_server).await, (0, 7777), "and answered");
    }

    /// An oversized WRITE closes the connection as a protocol violation
    /// without writing anything.
    #[tokio::test]
    async fn an_oversized_write_closes_the_connection_and_writes_nothing() {
        let store = Arc::new(MemoryStore::new(SIZE));
        let meta = VolumeMeta { volume_id: [0; 16], name: "v".into(), size: SIZE, block_bytes: 4096, extent_bytes: 65536 };
        let volume = Arc::new(Volume::new(meta, store.clone()));
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (server_read, server_write) = tokio::io::split(server);
        let limits = ServerLimits { max_connections: 1, max_inflight_per_connection: 4, max_request_bytes: 4096 };
        let served = tokio::spawn(serve(
            server_read,
            server_write,
            Session { volume, structured: false, allocation: false },
            limits,
            CancellationToken::new(),
        ));
        let (_from_server, mut to_server) = tokio::io::split(client);
        to_server.write_all(&request(Command::Write, 1, 0, 8192)).await.unwrap();
        let reason = served.await.unwrap();
        assert!(reason.is_protocol_violation(), "{reason}");
        let mut head = vec![0u8; 8192];
        store.read_at(&mut head, 0).unwrap();
        assert!(head.iter().all(|&b| b == 0));
    }
}
