//! The NBD server: accepts host connections, runs the fixed newstyle
//! handshake ([`handshake`]) and serves pipelined requests
//! ([`transmission`]) against the node's volumes.
//!
//! Written against the protocol specification (NetworkBlockDevice/nbd
//! `doc/proto.md`); the byte-level codec is in `geomirror_wire::nbd`. This
//! module is the only place that knows NBD error numbers ([`errno_for`]).
//!
//! Bad input never changes data: a malformed header or an oversized WRITE
//! closes that connection with a logged reason; out-of-range or unknown
//! requests get the protocol's error reply; other clients are unaffected.

pub mod handshake;
pub mod transmission;

use std::collections::BTreeMap;
use std::sync::Arc;

use geomirror_wire::nbd::{Command, Errno};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, warn};

use crate::metrics as m;
use crate::store::StoreError;
use crate::volume::{Volume, VolumeError};

/// The volumes offered to hosts, by export name.
#[derive(Default)]
pub struct Exports {
    volumes: BTreeMap<String, Arc<Volume>>,
}

impl Exports {
    /// Offers `volume` under its name.
    pub fn insert(&mut self, volume: Arc<Volume>) {
        self.volumes.insert(volume.name().to_string(), volume);
    }

    /// Looks an export up; the empty name means the only export, if there is
    /// exactly one (as qemu-nbd's default export).
    pub fn get(&self, name: &str) -> Option<&Arc<Volume>> {
        if name.is_empty() && self.volumes.len() == 1 {
            return self.volumes.values().next();
        }
        self.volumes.get(name)
    }

    /// Export names in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.volumes.keys().map(String::as_str)
    }

    /// All volumes.
    pub fn volumes(&self) -> impl Iterator<Item = &Arc<Volume>> {
        self.volumes.values()
    }
}

/// Server limits, from `[nbd]` in the config.
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Requests in flight per connection.
    pub max_inflight_per_connection: usize,
    /// Largest READ/WRITE payload.
    pub max_request_bytes: u32,
}

/// Serves hosts on `listener` until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, exports: Arc<Exports>, limits: ServerLimits, tls: Arc<HostTls>, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let open = metrics::gauge!(m::NBD_CONNECTIONS_OPEN);
    let admission = crate::admission::Admission::new(crate::limits::NBD_HANDSHAKES_PER_SOURCE_MAX, crate::limits::NBD_HANDSHAKES_MAX);
    let refusals = crate::admission::RefusalLog::default();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = slots.clone().acquire_owned() => permit.expect("semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "NBD accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        metrics::counter!(m::NBD_CONNECTIONS).increment(1);
        let ticket = match admission.admit(peer.ip()) {
            Ok(ticket) => ticket,
            Err(refused) => {
                metrics::counter!(m::NBD_PROTOCOL_ERRORS).increment(1);
                if let Some(count) = refusals.note() {
                    warn!(%peer, reason = %refused, refused_since_last = count, "host connection refused at accept");
                }
                drop(stream);
                continue;
            }
        };
        open.increment(1.0);
        let exports = exports.clone();
        let tls = tls.clone();
        let shutdown = shutdown.clone();
        let open = open.clone();
        let span = tracing::info_span!("host", %peer);
        crate::tasks::spawn(
            async move {
                serve_connection(stream, ticket, exports, limits, tls, shutdown).await;
                open.decrement(1.0);
                drop(permit);
            }
            .instrument(span),
        );
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    handshaking: crate::admission::Ticket,
    exports: Arc<Exports>,
    limits: ServerLimits,
    tls: Arc<HostTls>,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let deadline = tokio::time::Instant::now() + crate::limits::NBD_HANDSHAKE_TIMEOUT;
    let (read_half, mut write_half) = stream.into_split();
    let mut reader = tokio::io::BufReader::with_capacity(crate::limits::NBD_READ_BUFFER_BYTES, read_half);
    info!("host connected");
    let stage = handshake::TlsStage { mode: tls.mode, active: false };
    let outcome = tokio::time::timeout_at(
        deadline,
        handshake::negotiate(&mut reader, &mut write_half, &exports, limits.max_request_bytes, stage, false),
    )
    .await;
    match handshake_result(outcome) {
        Some((handshake::Outcome::Transmission(session), _)) => {
            drop(handshaking);
            transmit(reader, write_half, session, limits, shutdown).await
        }
        Some((handshake::Outcome::StartTls, no_zeroes)) => {
            let Some(acceptor) = &tls.acceptor else { return };
            if !reader.buffer().is_empty() {
                metrics::counter!(m::NBD_PROTOCOL_ERRORS).increment(1);
                warn!("host disconnected during handshake: it sent data before the TLS handshake");
                return;
            }
            let stream = match reader.into_inner().reunite(write_half) {
                Ok(stream) => stream,
                Err(e) => {
                    warn!(error = %e, "host disconnected during handshake: the connection could not be upgraded");
                    return;
                }
            };
            let tls_stream = match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    metrics::counter!(m::NBD_PROTOCOL_ERRORS).increment(1);
                    warn!(reason = %e, "host disconnected: the TLS handshake failed");
                    return;
                }
                Err(_) => {
                    metrics::counter!(m::NBD_PROTOCOL_ERRORS).increment(1);
                    warn!("host disconnected: handshake not finished within {:?}", crate::limits::NBD_HANDSHAKE_TIMEOUT);
                    return;
                }
            };
            let (r, mut w) = tokio::io::split(tls_stream);
            let mut reader = tokio::io::BufReader::with_capacity(crate::limits::NBD_READ_BUFFER_BYTES, r);
            let stage = handshake::TlsStage { mode: tls.mode, active: true };
            let outcome = tokio::time::timeout_at(
                deadline,
                handshake::negotiate(&mut reader, &mut w, &exports, limits.max_request_bytes, stage, no_zeroes),
            )
            .await;
            if let Some((handshake::Outcome::Transmission(session), _)) = handshake_result(outcome) {
                drop(handshaking);
                info!("host upgraded to TLS");
                transmit(reader, w, session, limits, shutdown).await
            }
        }
        Some((handshake::Outcome::Aborted, _)) | None => {}
    }
}

/// The handshake's outcome, or None after logging why the host left.
fn handshake_result(
    outcome: Result<Result<(handshake::Outcome, bool), handshake::HandshakeError>, tokio::time::error::Elapsed>,
) -> Option<(handshake::Outcome, bool)> {
    match outcome {
        Ok(Ok((handshake::Outcome::Aborted, _))) => {
            info!("host disconnected: handshake ended by the client");
            None
        }
        Ok(Ok(done)) => Some(done),
        Ok(Err(e)) => {
            if e.is_protocol_violation() {
                metrics::counter!(m::NBD_PROTOCOL_ERRORS).increment(1);
                warn!(reason = %e, "host disconnected during handshake");
            } else {
                info!(reason = %e, "host disconnected during handshake");
            }
            None
        }
        Err(_) => {
            metrics::counter!(m::NBD_PROTOCOL_ERRORS).increment(1);
            warn!("host disconnected: handshake not finished within {:?}", crate::limits::NBD_HANDSHAKE_TIMEOUT);
            None
        }
    }
}

/// Serves the transmission phase, plain or over TLS.
async fn transmit<R, W>(reader: R, writer: W, session: handshake::Session, limits: ServerLimits, shutdown: CancellationToken)
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let span = tracing::info_span!("export", volume = %session.volume.name());
    async move {
        info!(structured = session.structured, "host entered transmission");
        let reason = transmission::serve(reader, writer, session, limits, shutdown).await;
        if reason.is_protocol_violation() {
            metrics::counter!(m::NBD_PROTOCOL_ERRORS).increment(1);
            warn!(reason = %reason, "host disconnected");
        } else {
            info!(reason = %reason, "host disconnected");
        }
    }
    .instrument(span)
    .await
}

/// TLS for hosts: the configured mode and, unless off, the acceptor.
pub struct HostTls {
    /// Off, optional or required.
    pub mode: geomirror_config::NbdTlsMode,
    /// The server side of the TLS handshake.
    pub acceptor: Option<tokio_rustls::TlsAcceptor>,
}

impl HostTls {
    /// No TLS.
    pub fn off() -> Arc<HostTls> {
        Arc::new(HostTls { mode: geomirror_config::NbdTlsMode::Off, acceptor: None })
    }
}

/// The NBD error for a failed request: the one mapping from our errors to
/// the protocol's numbers.
pub fn errno_for(command: Command, error: &VolumeError) -> Errno {
    match error {
        VolumeError::Store(StoreError::OutOfRange { .. }) => match command {
            Command::Write | Command::WriteZeroes => Errno::NoSpc,
            _ => Errno::Inval,
        },
        VolumeError::Store(StoreError::NotFast) => Errno::NotSup,
        VolumeError::PeerUnavailable(_) | VolumeError::NotServing(_) => Errno::Io,
        VolumeError::Fault(fault) => match fault.kind {
            geomirror_core::IoFaultKind::NoSpace => Errno::NoSpc,
            geomirror_core::IoFaultKind::NotFast => Errno::NotSup,
            geomirror_core::IoFaultKind::Io => Errno::Io,
        },
        VolumeError::Store(StoreError::Io(e)) => match e.raw_os_error() {
            Some(libc::ENOSPC) => Errno::NoSpc,
            Some(libc::ENOMEM) => Errno::NoMem,
            _ => Errno::Io,
        },
    }
}
