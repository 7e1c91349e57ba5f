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
pub async fn serve(listener: TcpListener, exports: Arc<Exports>, limits: ServerLimits, shutdown: CancellationToken) {
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
        let shutdown = shutdown.clone();
        let open = open.clone();
        let span = tracing::info_span!("host", %peer);
        crate::tasks::spawn(
            async move {
                serve_connection(stream, ticket, exports, limits, shutdown).await;
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
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let (read_half, mut write_half) = stream.into_split();
    let mut reader = tokio::io::BufReader::with_capacity(crate::limits::NBD_READ_BUFFER_BYTES, read_half);
    info!("host connected");
    let outcome = tokio::time::timeout(
        crate::limits::NBD_HANDSHAKE_TIMEOUT,
        handshake::negotiate(&mut reader, &mut write_half, &exports, limits.max_request_bytes),
    )
    .await;
    let session = match outcome {
        Ok(Ok(handshake::Outcome::Transmission(session))) => session,
        Ok(Ok(handshake::Outcome::Aborted)) => {
            info!("host disconnected: handshake ended by the client");
            return;
        }
        Ok(Err(e)) => {
            if e.is_protocol_violation() {
                metrics::counter!(m::NBD_PROTOCOL_ERRORS).increment(1);
                warn!(reason = %e, "host disconnected during handshake");
            } else {
                info!(reason = %e, "host disconnected during handshake");
            }
            return;
        }
        Err(_) => {
            metrics::counter!(m::NBD_PROTOCOL_ERRORS).increment(1);
            warn!("host disconnected: handshake not finished within {:?}", crate::limits::NBD_HANDSHAKE_TIMEOUT);
            return;
        }
    };
    // Past the handshake: its place goes to the next one.
    drop(handshaking);
    let span = tracing::info_span!("export", volume = %session.volume.name());
    async move {
        info!(structured = session.structured, "host entered transmission");
        let reason = transmission::serve(reader, write_half, session, limits, shutdown).await;
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
