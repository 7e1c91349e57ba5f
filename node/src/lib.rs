//! A geomirror node: opens the volumes of its configuration, serves them to
//! hosts over NBD, mirrors them with its peer (two-site) and exposes an
//! admin endpoint.
//!
//! Entry point: [`run`]. Layout: [`store`] (where bytes live), [`volume`]
//! (the read and write paths), [`engine`] (the runtime around the protocol
//! engine `geomirror-core`: it executes the core's outputs and decides
//! nothing), [`peer`] (TLS, the connections to the other node), [`nbd`]
//! (the host protocol), [`admin`] (`/metrics`, `/status`), [`metrics`],
//! [`limits`].
//!
//! Invariants: a write is acknowledged only after the store accepted it
//! (after fdatasync for FUA); FLUSH returns only when every write completed
//! before it is durable; no input from the network can panic the node.

pub mod admin;
pub mod admission;
pub mod engine;
pub mod events;
pub mod limits;
pub mod metrics;
pub mod nbd;
pub mod peer;
pub mod store;
pub mod tasks;
pub mod volume;
pub mod witness;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use geomirror_config::NodeConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info};

use crate::engine::claims_file::ClaimsFile;
use crate::engine::conflict_file::ConflictFile;
use crate::engine::{Engine, EngineVolume};
use crate::nbd::{Exports, ServerLimits};
use crate::peer::link::{LinkConfig, PeerLink};
use crate::peer::tls::PeerTls;
use crate::store::BlockStore;
use crate::store::file::{DataDirLock, FileStore, VolumeGeometry};
use crate::volume::Volume;
use geomirror_core::CoreConfig;
use geomirror_wire::peer::{VolumeIndex, VolumeInfo};

/// Addresses a running node is bound to (ports may have been 0 in config).
#[derive(Clone, Copy, Debug)]
pub struct BoundAddrs {
    /// NBD listener.
    pub nbd: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    /// Peer listener, for a two-site node.
    pub peer: Option<SocketAddr>,
}

/// Runs a node until `shutdown` is cancelled; `ready` receives the bound
/// addresses once both listeners are up. Everything the node logs carries
/// its name (the `node` span).
pub async fn run(
    config: NodeConfig,
    shutdown: CancellationToken,
    ready: Option<tokio::sync::oneshot::Sender<BoundAddrs>>,
) -> anyhow::Result<()> {
    let span = tracing::info_span!("node", node = %config.node.name);
    serve(config, shutdown, ready).instrument(span).await
}

async fn serve(
    config: NodeConfig,
    shutdown: CancellationToken,
    ready: Option<tokio::sync::oneshot::Sender<BoundAddrs>>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let prometheus = metrics::install_recorder();
    let data_dir = config.node.data_dir.clone();
    let _lock = DataDirLock::acquire(&data_dir).context("lock the data directory")?;

    let mut opened = Vec::new();
    for v in &config.volumes {
        let geometry = VolumeGeometry {
            name: v.name.clone(),
            size: v.size.bytes(),
            block_bytes: v.block_size.bytes() as u32,
            extent_bytes: v.extent_size.bytes() as u32,
        };
        let dir = data_dir.clone();
        let (store, meta) = tasks::spawn_blocking(move || FileStore::open_or_create(&dir, &geometry))
            .await
            .context("join the volume opener")?
            .with_context(|| format!("open volume `{}`", v.name))?;
        info!(volume = %v.name, size = v.size.bytes(), id = %meta.id_hex(), "volume opened");
        opened.push((v.clone(), meta, Arc::new(store) as Arc<dyn BlockStore>));
    }

    let mut exports = Exports::default();
    let mut link = None;
    let mut engine = None;
    let mut peer_listener = None;
    match (&config.peer, &config.tls) {
        (Some(peer), Some(tls)) => {
            let peer_tls =
                PeerTls::load(&tls.ca, &tls.cert, &tls.key, &config.node.name, &peer.name).context("load the peer link's TLS files")?;
            let core_config = CoreConfig::from_node_config(&config).context("derive the protocol engine's settings")?;
            let mut volumes = Vec::new();
            let mut files = Vec::new();
            let mut infos = Vec::new();
            for (_, meta, store) in &opened {
                let dir = data_dir.join("volumes").join(&meta.name);
                let file = ClaimsFile::new(&dir);
                let contents = file.load().with_context(|| format!("open the claims file of volume `{}`", meta.name))?;
                let conflicts = ConflictFile::new(&dir, &meta.name, meta.volume_id);
                let saved = conflicts.read().with_context(|| format!("check the conflict file of volume `{}`", meta.name))?;
                if let Some(saved) = saved.filter(|s| !s.is_empty()) {
                    info!(volume = %meta.name, blocks = saved.len(), path = %conflicts.path().display(), "the conflict file holds blocks saved after outages (`geomirror conflicts list`)");
                }
                if !contents.own.is_empty() || !contents.record.is_empty() {
                    info!(volume = %meta.name, own = contents.own.len(), peer_owned = contents.record.len(), "claims file loaded; own extents will be compared with the peer's");
                }
                infos.push(VolumeInfo {
                    name: meta.name.clone(),
                    size: meta.size,
                    block_bytes: meta.block_bytes,
                    extent_bytes: meta.extent_bytes,
                    volume_id: meta.volume_id,
                    detached: contents.detached,
                });
                files.push(contents);
                volumes.push(EngineVolume { name: meta.name.clone(), store: store.clone(), file, conflicts });
            }
            let e = Engine::new(&config.node.name, core_config, volumes, files);
            e.start(shutdown.clone());
            if let Some(w) = &config.witness {
                let witness_tls = PeerTls::load(&tls.ca, &tls.cert, &tls.key, &config.node.name, &w.name)
                    .context("load the TLS files for the witness link")?;
                let client = witness::client::WitnessClientConfig {
                    own_name: config.node.name.clone(),
                    witness_name: w.name.clone(),
                    connect: w.connect,
                    lease: w.lease.get(),
                };
                tasks::spawn(witness::client::run(client, witness_tls, e.clone(), shutdown.clone()));
            }
            let link_config = LinkConfig {
                own_name: config.node.name.clone(),
                peer_name: peer.name.clone(),
                listen: peer.listen,
                connect: peer.connect,
                peer_timeout: peer.peer_timeout.get(),
                peer_admin: peer.admin,
            };
            link = Some(PeerLink::new(link_config, peer_tls, infos, e.clone()));
            for (i, (_, meta, store)) in opened.into_iter().enumerate() {
                exports.insert(Arc::new(Volume::new(meta, store).with_engine(e.clone(), VolumeIndex(i as u16))));
            }
            peer_listener =
                Some(TcpListener::bind(peer.listen).await.with_context(|| format!("bind the peer listener on {}", peer.listen))?);
            engine = Some(e);
        }
        _ => {
            for (_, meta, store) in opened {
                single_site_claims_check(&data_dir.join("volumes").join(&meta.name), &meta.name)?;
                exports.insert(Arc::new(Volume::new(meta, store)));
            }
        }
    }
    let exports = Arc::new(exports);

    let nbd_listener =
        TcpListener::bind(config.nbd.listen).await.with_context(|| format!("bind the NBD listener on {}", config.nbd.listen))?;
    let admin_listener =
        TcpListener::bind(config.admin.listen).await.with_context(|| format!("bind the admin listener on {}", config.admin.listen))?;
    let bound = BoundAddrs {
        nbd: nbd_listener.local_addr()?,
        admin: admin_listener.local_addr()?,
        peer: peer_listener.as_ref().map(|l| l.local_addr()).transpose()?,
    };
    let link_task = match (&link, peer_listener) {
        (Some(link), Some(listener)) => Some(tasks::spawn(link.clone().run(listener, shutdown.clone()))),
        _ => None,
    };

    let limits = ServerLimits {
        max_connections: config.nbd.max_connections,
        max_inflight_per_connection: config.nbd.max_inflight_per_connection,
        max_request_bytes: config.nbd.max_request_size.bytes() as u32,
    };
    let host_tls = match (&config.nbd.tls, &config.nbd.tls_cert, &config.nbd.tls_key) {
        (geomirror_config::NbdTlsMode::Off, _, _) => nbd::HostTls::off(),
        (mode, Some(cert), Some(key)) => {
            let acceptor = peer::tls::PeerTls::host_acceptor(cert, key, config.nbd.tls_client_ca.as_deref())
                .context("load the host TLS files named in [nbd]")?;
            Arc::new(nbd::HostTls { mode: *mode, acceptor: Some(acceptor) })
        }
        _ => anyhow::bail!("nbd.tls needs nbd.tls_cert and nbd.tls_key"),
    };
    let nbd_task = tasks::spawn(nbd::serve(nbd_listener, exports.clone(), limits, host_tls, shutdown.clone()));
    let token = match &config.admin.token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("read admin.token_file {}", path.display()))?;
            let token = text.trim().to_string();
            if token.len() < 16 || token.chars().any(char::is_whitespace) {
                anyhow::bail!("admin.token_file {}: the token must be at least 16 characters, on one line", path.display());
            }
            Some(token)
        }
        None => None,
    };
    let admin_state = Arc::new(admin::AdminState {
        name: config.node.name.clone(),
        started,
        nbd_listen: bound.nbd.to_string(),
        exports: exports.clone(),
        prometheus,
        link: link.clone(),
        engine: engine.clone(),
        token,
    });
    let admin_task = tasks::spawn(admin::serve(admin_listener, admin_state, shutdown.clone()));
    match (&config.peer, bound.peer) {
        (Some(peer), Some(listen)) => {
            info!(nbd = %bound.nbd, admin = %bound.admin, peer = %peer.name, peer_listen = %listen, peer_connect = %peer.connect, volumes = config.volumes.len(), "node ready")
        }
        _ => info!(nbd = %bound.nbd, admin = %bound.admin, volumes = config.volumes.len(), "node ready"),
    }
    if let Some(ready) = ready {
        let _ = ready.send(bound);
    }

    shutdown.cancelled().await;
    info!("shutting down");
    let _ = nbd_task.await;
    if let Some(task) = link_task {
        let _ = task.await;
    }
    if let Ok(Err(e)) = admin_task.await {
        error!(error = %e, "admin listener failed");
    }
    for volume in exports.volumes() {
        if let Err(e) = volume.sync_at_shutdown().await {
            error!(volume = %volume.name(), error = %e, "failed to flush volume at shutdown");
        }
    }
    info!("stopped");
    Ok(())
}

/// A volume that was mirrored is served without its peer only once an
/// operator took it over (`geomirror takeover --data-dir`): its claims file
/// says which extents the peer may hold newer data for, and serving it
/// alone would serve stale blocks and later diverge silently. A volume
/// whose claims file is clean is marked detached, so that it is not
/// mirrored again as if nothing happened.
fn single_site_claims_check(volume_dir: &std::path::Path, volume: &str) -> anyhow::Result<()> {
    let file = ClaimsFile::new(volume_dir);
    if !volume_dir.join("claims").exists() {
        return Ok(());
    }
    let mut contents = file.load().with_context(|| format!("open the claims file of volume `{volume}`"))?;
    if contents.detached {
        return Ok(());
    }
    if !contents.is_clean() {
        anyhow::bail!(
            "volume `{volume}` was mirrored and its claims file says its peer may hold newer data ({} extents owned by the peer, {} \
             owned here and perhaps not yet at the peer): it is not served without its peer. Start the node with its [peer] section \
             (the peer may stay unreachable; `geomirror takeover` then takes over its extents), or take the volume over offline: \
             `geomirror takeover --data-dir {} --volume {volume}` shows what that loses",
            contents.record.len(),
            contents.own.len(),
            volume_dir.parent().and_then(|p| p.parent()).unwrap_or(volume_dir).display()
        );
    }
    contents.detached = true;
    file.store(&contents).with_context(|| format!("mark volume `{volume}` as served without its peer"))?;
    tracing::warn!(volume, "volume was mirrored and is now served without its peer: it will not be mirrored again automatically");
    Ok(())
}
