//! The transmission phase: pipelined requests, replies as they complete.
//!
//! The reader decodes headers (and WRITE payloads) and spawns one task per
//! request, holding a permit of a per-connection semaphore: at
//! `max_inflight_per_connection` the reader, having read the next request
//! (up to `max_request_size` of payload), waits for a permit before
//! reading more (back-pressure). Tasks send finished replies to one writer task, which
//! batches them into a buffered socket writer and flushes when it has
//! nothing more queued.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use geomirror_wire::nbd::{self as w, Command, Errno, REQUEST_HEADER_BYTES, Request, cflag};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::handshake::Session;
use super::{ServerLimits, errno_for};
use crate::limits::NBD_WRITE_BUFFER_BYTES;
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

/// Serves requests until the client leaves, breaks the protocol or the node stops.
pub async fn serve<R, W>(mut reader: R, writer: W, session: Session, limits: ServerLimits, shutdown: CancellationToken) -> Disconnect
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let depth = limits.max_inflight_per_connection;
    let (tx, rx) = mpsc::channel::<Reply>(depth);
    let writer_task = crate::tasks::spawn(write_replies(writer, rx));
    let inflight = Arc::new(Semaphore::new(depth));
    let ctx = Arc::new(Context { volume: session.volume, structured: session.structured, max_request_bytes: limits.max_request_bytes });

    let reason = loop {
        let mut header = [0u8; REQUEST_HEADER_BYTES];
        let read = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Disconnect::Shutdown,
            read = reader.read_exact(&mut header) => read,
        };
        match read {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break Disconnect::ClientClosed,
            Err(e) => break Disconnect::Io(e),
        }
        let received = Instant::now();
        let request = match w::decode_request(&header) {
            Ok(r) => r,
            Err(e) => break Disconnect::Protocol(format!("bad request header: {e}")),
        };
        if request.command == Command::Disc {
            break Disconnect::ClientDisc;
        }
        let payload = if request.command == Command::Write {
            if request.length > ctx.max_request_bytes {
                // The payload cannot be skipped safely at any size; closing is
                // what the specification allows for an oversized write.
                break Disconnect::Protocol(format!(
                    "WRITE of {} bytes exceeds the maximum block size {}",
                    request.length, ctx.max_request_bytes
                ));
            }
            match read_payload(&mut reader, request.length as usize).await {
                Ok(payload) => Some(payload),
                Err(e) => {
                    break if e.kind() == std::io::ErrorKind::UnexpectedEof { Disconnect::ClientClosed } else { Disconnect::Io(e) };
                }
            }
        } else {
            None
        };
        let permit = inflight.clone().acquire_owned().await.expect("semaphore is never closed");
        let ctx = ctx.clone();
        let tx = tx.clone();
        crate::tasks::spawn(async move {
            let reply = ctx.execute(request, payload, received).await;
            // The writer only goes away when the socket failed; nothing to do then.
            let _ = tx.send(reply).await;
            drop(permit);
        });
    };
    // Let requests in flight finish and their replies go out (a DISC must
    // not lose writes already received).
    let _ = inflight.acquire_many(depth as u32).await;
    drop(tx);
    match writer_task.await {
        Ok(Ok(())) => reason,
        Ok(Err(e)) if !matches!(reason, Disconnect::Protocol(_)) => Disconnect::Io(e),
        _ => reason,
    }
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

async fn write_replies<W: AsyncWrite + Unpin>(writer: W, mut rx: mpsc::Receiver<Reply>) -> std::io::Result<()> {
    let mut out = BufWriter::with_capacity(NBD_WRITE_BUFFER_BYTES, writer);
    while let Some(reply) = rx.recv().await {
        let mut next = Some(reply);
        while let Some(reply) = next {
            out.write_all(&reply.header).await?;
            if let Some(data) = &reply.data {
                out.write_all(data).await?;
            }
            next = rx.try_recv().ok();
        }
        out.flush().await?;
    }
    out.flush().await?;
    out.into_inner().shutdown().await
}

struct Context {
    volume: Arc<Volume>,
    structured: bool,
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
    async fn execute(&self, request: Request, payload: Option<Bytes>, received: Instant) -> Reply {
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
