//! The witness process (`geomirror witness --config witness.toml`): a TLS
//! listener for the two nodes it serves, the witness engine
//! (`geomirror_core::witness::WitnessCore`) behind one lock, and its state
//! kept durably in `<data_dir>/witness-state` (replaced atomically; a grant
//! is answered only once the state that records it is durable).
//!
//! State file (little-endian): `magic "GMWITNS1" | generation u64 | survivor
//! name length u16 (0: none) | name | crc32c u32`. A damaged file is refused
//! at start: a witness that forgot a grant could make two survivors.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use geomirror_config::WitnessConfig;
use geomirror_core::witness::{WitnessConn, WitnessCore, WitnessOutput, WitnessState};
use geomirror_wire::witness::{WITNESS_PROTOCOL_VERSION, WitnessMessage};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, warn};

use crate::limits::{PEER_CONNECT_TIMEOUT, WITNESS_CONNECTIONS_MAX, WITNESS_QUEUE_MESSAGES};
use crate::peer::codec::witness_codec;
use crate::peer::tls::PeerTls;
use crate::store::file::DataDirLock;
use crate::store::meta::write_atomically;

const STATE_MAGIC: &[u8; 8] = b"GMWITNS1";

/// Encodes the witness's durable state.
pub fn encode_state(s: &WitnessState) -> Vec<u8> {
    let name = s.survivor.as_deref().unwrap_or("").as_bytes();
    let mut out = STATE_MAGIC.to_vec();
    out.extend_from_slice(&s.generation.to_le_bytes());
    out.extend_from_slice(&(name.len() as u16).to_le_bytes());
    out.extend_from_slice(name);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes the witness's durable state; None if damaged.
pub fn decode_state(b: &[u8]) -> Option<WitnessState> {
    if b.len() < 8 + 8 + 2 + 4 || &b[..8] != STATE_MAGIC {
        return None;
    }
    let (body, crc) = b.split_at(b.len() - 4);
    if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().ok()?) {
        return None;
    }
    let generation = u64::from_le_bytes(body[8..16].try_into().ok()?);
    let len = u16::from_le_bytes(body[16..18].try_into().ok()?) as usize;
    if body.len() != 18 + len {
        return None;
    }
    let name = String::from_utf8(body[18..].to_vec()).ok()?;
    Some(WitnessState { generation, survivor: (!name.is_empty()).then_some(name) })
}

fn load_state(path: &Path) -> anyhow::Result<WitnessState> {
    match std::fs::read(path) {
        Ok(bytes) => decode_state(&bytes).with_context(|| {
            format!(
                "the witness state {} is damaged; refusing to start (a witness that forgot a grant could make both nodes \
                 survivors). Restore it from a backup, or remove it only once both nodes are connected to each other",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(WitnessState::default()),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

struct Shared {
    core: Mutex<WitnessCore>,
    conns: Mutex<BTreeMap<WitnessConn, mpsc::Sender<WitnessMessage>>>,
    /// The newest state to write and its version: a write covers every
    /// version before it, so only the newest waits (one slot, never more).
    persist: tokio::sync::watch::Sender<Option<(WitnessState, u64)>>,
}

impl Shared {
    /// Carries out the engine's outputs.
    fn drive(&self) {
        let outputs: Vec<WitnessOutput> = {
            let mut core = self.core.lock().expect("core lock");
            std::iter::from_fn(|| core.poll_output()).collect()
        };
        for out in outputs {
            match out {
                WitnessOutput::Send { conn, message } => {
                    if let Some(tx) = self.conns.lock().expect("conns lock").get(&conn) {
                        let _ = tx.try_send(message);
                    }
                }
                WitnessOutput::Persist { state, version } => {
                    self.persist.send_replace(Some((state, version)));
                }
                WitnessOutput::Log(line) => info!("{line}"),
            }
        }
    }
}

/// Runs the witness until `shutdown`; `ready` receives its listen address.
pub async fn run(
    config: WitnessConfig,
    shutdown: CancellationToken,
    ready: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> anyhow::Result<()> {
    let span = tracing::info_span!("witness", witness = %config.node.name);
    serve(config, shutdown, ready).instrument(span).await
}

async fn serve(
    config: WitnessConfig,
    shutdown: CancellationToken,
    ready: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> anyhow::Result<()> {
    let _lock = DataDirLock::acquire(&config.node.data_dir).context("lock the witness's data directory")?;
    let state_path: PathBuf = config.node.data_dir.join("witness-state");
    let state = load_state(&state_path)?;
    info!(generation = state.generation, survivor = ?state.survivor, "witness state loaded");
    let nodes = config.witness.nodes.clone();
    let tls = PeerTls::load(&config.tls.ca, &config.tls.cert, &config.tls.key, &config.node.name, &nodes[0])
        .context("load the witness's TLS files")?;
    let (persist_tx, mut persist_rx) = tokio::sync::watch::channel::<Option<(WitnessState, u64)>>(None);
    let shared = Arc::new(Shared {
        core: Mutex::new(WitnessCore::new(nodes.clone(), state)),
        conns: Mutex::new(BTreeMap::new()),
        persist: persist_tx,
    });
    // One writer: each write is the newest state, and makes its version
    // (and every one before it) durable.
    let writer = {
        let shared = shared.clone();
        let path = state_path.clone();
        let stop = shutdown.clone();
        crate::tasks::spawn(async move {
            while persist_rx.changed().await.is_ok() {
                let Some((state, version)) = persist_rx.borrow_and_update().clone() else { continue };
                let bytes = encode_state(&state);
                let path = path.clone();
                match crate::tasks::blocking(move || write_atomically(&path, &bytes)).await {
                    Ok(()) => {
                        shared.core.lock().expect("core lock").persisted(version);
                        shared.drive();
                    }
                    Err(e) => {
                        // It cannot tell what it granted: stop rather than guess.
                        error!(error = %e, path = %state_path.display(), "writing the witness state failed; the witness stops");
                        stop.cancel();
                        return;
                    }
                }
            }
        })
    };
    let listener = TcpListener::bind(config.witness.listen)
        .await
        .with_context(|| format!("bind the witness listener on {}", config.witness.listen))?;
    let addr = listener.local_addr()?;
    info!(listen = %addr, nodes = ?nodes, "witness ready");
    if let Some(ready) = ready {
        let _ = ready.send(addr);
    }
    let mut next_conn = 1u64;
    let connections = Arc::new(tokio::sync::Semaphore::new(WITNESS_CONNECTIONS_MAX));
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => { warn!(error = %e, "witness accept failed"); tokio::time::sleep(std::time::Duration::from_millis(50)).await; continue }
            },
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            warn!(%peer, max = WITNESS_CONNECTIONS_MAX, "too many connections to the witness; refused this one");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let conn = WitnessConn(next_conn);
        next_conn += 1;
        let (shared, tls, nodes, stop, name) = (shared.clone(), tls.clone(), nodes.clone(), shutdown.clone(), config.node.name.clone());
        crate::tasks::spawn(
            async move {
                let reason = serve_conn(conn, tcp, &shared, &tls, &nodes, &name, &stop).await;
                drop(permit);
                shared.conns.lock().expect("conns lock").remove(&conn);
                shared.core.lock().expect("core lock").closed(conn);
                info!(reason = %reason, "node connection ended");
            }
            .instrument(tracing::info_span!("conn", %peer)),
        );
    }
    writer.abort();
    info!("witness stopped");
    Ok(())
}

async fn serve_conn(
    conn: WitnessConn,
    tcp: tokio::net::TcpStream,
    shared: &Arc<Shared>,
    tls: &PeerTls,
    nodes: &[String],
    witness: &str,
    shutdown: &CancellationToken,
) -> String {
    let (stream, cert_name) = match tls.accept_one_of(tcp, nodes).await {
        Ok(pair) => pair,
        Err(e) => return format!("refused: {e}"),
    };
    let mut framed = Framed::new(stream, witness_codec());
    let hello = match tokio::time::timeout(PEER_CONNECT_TIMEOUT, framed.next()).await {
        Ok(Some(Ok(bytes))) => WitnessMessage::decode(&bytes),
        Ok(Some(Err(e))) => return format!("read failed: {e}"),
        Ok(None) => return "closed before the hello".into(),
        Err(_) => return "no hello".into(),
    };
    let refusal = match &hello {
        Ok(WitnessMessage::Hello { protocol_version, node, lease_ms }) => {
            if *protocol_version != WITNESS_PROTOCOL_VERSION {
                Some(format!("protocol version {protocol_version} is not supported (the witness speaks {WITNESS_PROTOCOL_VERSION})"))
            } else if *node != cert_name {
                Some(format!("the hello says `{node}` but the certificate names `{cert_name}`"))
            } else {
                shared.core.lock().expect("core lock").hello(conn, node, *lease_ms)
            }
        }
        Ok(other) => Some(format!("expected a hello, got {}", other.kind())),
        Err(e) => Some(format!("protocol violation: {e}")),
    };
    let reply = WitnessMessage::HelloReply {
        protocol_version: WITNESS_PROTOCOL_VERSION,
        witness: witness.to_string(),
        refusal: refusal.clone().unwrap_or_default(),
    };
    if framed.send(reply.encode()).await.is_err() {
        return "write failed during the hello".into();
    }
    if let Some(why) = refusal {
        warn!(node = %cert_name, reason = %why, "refused a node");
        return format!("refused: {why}");
    }
    info!(node = %cert_name, "node connected");
    let (tx, mut rx) = mpsc::channel(WITNESS_QUEUE_MESSAGES);
    shared.conns.lock().expect("conns lock").insert(conn, tx);
    let (mut sink, mut stream) = framed.split();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return "witness shutting down".into(),
            out = rx.recv() => match out {
                Some(message) => {
                    if let Err(e) = sink.send(message.encode()).await {
                        return format!("write failed: {e}");
                    }
                }
                None => return "dropped".into(),
            },
            frame = stream.next() => match frame {
                Some(Ok(bytes)) => {
                    let result = match WitnessMessage::decode(&bytes) {
                        Ok(message) => shared.core.lock().expect("core lock").frame(conn, message),
                        Err(e) => Err(e.to_string()),
                    };
                    if let Err(why) = result {
                        warn!(node = %cert_name, reason = %why, "protocol violation; closing the connection");
                        return format!("protocol violation: {why}");
                    }
                    shared.drive();
                }
                Some(Err(e)) => return format!("read failed: {e}"),
                None => return format!("{cert_name} closed the connection"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_round_trips_and_damage_is_refused() {
        for s in [WitnessState::default(), WitnessState { generation: 7, survivor: Some("site-b".into()) }] {
            assert_eq!(decode_state(&encode_state(&s)), Some(s));
        }
        let good = encode_state(&WitnessState { generation: 7, survivor: Some("site-b".into()) });
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            assert_eq!(decode_state(&bad), None, "a flip at byte {i} went unnoticed");
        }
        assert_eq!(decode_state(&good[..good.len() - 1]), None);
    }
}
