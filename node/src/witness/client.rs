//! A node's connection to the witness: dial, mutual TLS (the witness's
//! certificate must name the configured witness), hello (the node's name
//! and lease), then frames both ways between the witness and the engine.
//! Reconnects with capped exponential back-off and jitter; the engine hears
//! of each connection's start and end, and decides everything else.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use geomirror_core::WitnessLinkGen;
use geomirror_wire::witness::{WITNESS_PROTOCOL_VERSION, WitnessMessage};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::engine::{Engine, WitnessIo};
use crate::limits::{PEER_BACKOFF_MAX, PEER_CONNECT_TIMEOUT, WITNESS_QUEUE_MESSAGES};
use crate::peer::codec::witness_codec;
use crate::peer::tls::PeerTls;

/// How a node reaches its witness.
#[derive(Clone, Debug)]
pub struct WitnessClientConfig {
    /// This node's name.
    pub own_name: String,
    /// The witness's name.
    pub witness_name: String,
    /// Where the witness listens.
    pub connect: SocketAddr,
    /// This node's lease (announced in the hello).
    pub lease: Duration,
}

/// Keeps the node connected to its witness until `shutdown`.
pub async fn run(config: WitnessClientConfig, tls: PeerTls, engine: Arc<Engine>, shutdown: CancellationToken) {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let mut backoff = Duration::from_millis(50);
    let mut last_error: Option<String> = None;
    loop {
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = connect(&config, &tls) => r,
        };
        match attempt {
            Ok(framed) => {
                backoff = Duration::from_millis(50);
                last_error = None;
                let link = WitnessLinkGen(NEXT.fetch_add(1, Ordering::Relaxed));
                info!(witness = %config.witness_name, link = link.0, "witness link up");
                let reason = crate::peer::link::plain_reason(&serve(link, framed, &engine, &shutdown).await);
                info!(witness = %config.witness_name, link = link.0, reason, "witness link down");
                engine.witness_down(link, reason);
            }
            Err(e) => {
                let text = format!("{e:#}");
                if last_error.as_deref() != Some(&text) {
                    warn!(witness = %config.witness_name, reason = %text, "witness link not established; retrying");
                    last_error = Some(text);
                }
            }
        }
        tokio::select! { _ = shutdown.cancelled() => return, _ = tokio::time::sleep(crate::tasks::jittered(backoff)) => {} }
        backoff = (backoff * 2).min(PEER_BACKOFF_MAX);
    }
}

type WitnessFramed = Framed<tokio_rustls::client::TlsStream<TcpStream>, tokio_util::codec::LengthDelimitedCodec>;

async fn connect(config: &WitnessClientConfig, tls: &PeerTls) -> anyhow::Result<WitnessFramed> {
    use anyhow::Context;
    let tcp = tokio::time::timeout(PEER_CONNECT_TIMEOUT, TcpStream::connect(config.connect))
        .await
        .map_err(|_| anyhow::anyhow!("connecting to {} timed out", config.connect))?
        .with_context(|| format!("connect to {}", config.connect))?;
    let _ = tcp.set_nodelay(true);
    let tls = tokio::time::timeout(PEER_CONNECT_TIMEOUT, tls.connect(tcp))
        .await
        .map_err(|_| anyhow::anyhow!("the TLS handshake with {} timed out", config.connect))??;
    let mut framed = Framed::new(tls, witness_codec());
    let lease_ms = u64::try_from(config.lease.as_millis()).unwrap_or(u64::MAX);
    framed
        .send(WitnessMessage::Hello { protocol_version: WITNESS_PROTOCOL_VERSION, node: config.own_name.clone(), lease_ms }.encode())
        .await?;
    let reply = tokio::time::timeout(PEER_CONNECT_TIMEOUT, framed.next())
        .await
        .map_err(|_| anyhow::anyhow!("no hello reply from the witness"))?
        .ok_or_else(|| anyhow::anyhow!("the witness closed the connection during the hello (refused our certificate?)"))??;
    match WitnessMessage::decode(&reply)? {
        WitnessMessage::HelloReply { protocol_version, witness, refusal } => {
            if !refusal.is_empty() {
                anyhow::bail!("the witness refused: {refusal}");
            }
            if protocol_version != WITNESS_PROTOCOL_VERSION || witness != config.witness_name {
                anyhow::bail!(
                    "the witness answered as `{witness}` with protocol {protocol_version} (this node speaks {WITNESS_PROTOCOL_VERSION})"
                );
            }
            Ok(framed)
        }
        other => anyhow::bail!("expected a hello reply from the witness, got {}", other.kind()),
    }
}

/// Moves frames between the witness and the engine until the connection
/// ends; returns why.
async fn serve(link: WitnessLinkGen, framed: WitnessFramed, engine: &Arc<Engine>, shutdown: &CancellationToken) -> String {
    let (mut sink, mut stream) = framed.split();
    let (tx, mut rx) = mpsc::channel::<WitnessMessage>(WITNESS_QUEUE_MESSAGES);
    let cancel = CancellationToken::new();
    engine.witness_up(WitnessIo { link, cancel: cancel.clone(), tx });
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return "node shutting down".into(),
            _ = cancel.cancelled() => return "closed by the engine".into(),
            out = rx.recv() => match out {
                Some(message) => {
                    if let Err(e) = sink.send(message.encode()).await {
                        return format!("write failed: {e}");
                    }
                }
                None => return "the engine dropped the link".into(),
            },
            frame = stream.next() => match frame {
                Some(Ok(bytes)) => match WitnessMessage::decode(&bytes) {
                    Ok(message) => engine.witness_frame(link, message),
                    Err(e) => return format!("protocol violation: {e}"),
                },
                Some(Err(e)) => return format!("read failed: {e}"),
                None => return "closed by the witness".into(),
            },
        }
    }
}
