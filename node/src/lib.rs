//! A geomirror node: opens the volumes of its configuration, serves them to
//! hosts over NBD, mirrors them with its peer (two-site) and exposes an
//! admin endpoint.
//!
//! Entry point: [`run`]. Layout: [`store`] (where bytes live), [`volume`]
//! (the read and write paths), [`claims`] (the claims state machine, record
//! and replica), [`peer`] (TLS, the link to the other node), [`nbd`] (the
//! host protocol), [`admin`] (`/metrics`, `/status`), [`metrics`],
//! [`limits`].
//!
//! Invariants: a write is acknowledged only after the store accepted it
//! (after fdatasync for FUA); FLUSH returns only when every write completed
//! before it is durable; no input from the network can panic the node.

pub mod admin;
pub mod claims;
pub mod limits;
pub mod metrics;
pub mod nbd;
pub mod peer;
pub mod store;
pub mod volume;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use geomirror_config::NodeConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::claims::record::RecordFile;
use crate::claims::replica::Replica;
use crate::claims::state::{Geometry, Knobs};
use crate::nbd::{Exports, ServerLimits};
use crate::peer::link::{LinkConfig, PeerLink};
use crate::peer::tls::PeerTls;
use crate::store::BlockStore;
use crate::store::file::{DataDirLock, FileStore, VolumeGeometry};
use crate::volume::Volume;
use geomirror_wire::peer::VolumeInfo;

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
/// addresses once both listeners are up.
pub async fn run(
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
        let (store, meta) = tokio::task::spawn_blocking(move || FileStore::open_or_create(&dir, &geometry))
            .await
            .context("join the volume opener")?
            .with_context(|| format!("open volume `{}`", v.name))?;
        info!(volume = %v.name, size = v.size.bytes(), id = %meta.id_hex(), "volume opened");
        opened.push((v.clone(), meta, Arc::new(store) as Arc<dyn BlockStore>));
    }

    let mut exports = Exports::default();
    let mut link = None;
    let mut peer_listener = None;
    match (&config.peer, &config.tls) {
        (Some(peer), Some(tls)) => {
            let peer_tls =
                PeerTls::load(&tls.ca, &tls.cert, &tls.key, &config.node.name, &peer.name).context("load the peer link's TLS files")?;
            let infos = opened
                .iter()
                .map(|(_, meta, _)| VolumeInfo {
                    name: meta.name.clone(),
                    size: meta.size,
                    block_bytes: meta.block_bytes,
                    extent_bytes: meta.extent_bytes,
                    volume_id: meta.volume_id,
                })
                .collect();
            let link_config = LinkConfig {
                own_name: config.node.name.clone(),
                peer_name: peer.name.clone(),
                listen: peer.listen,
                connect: peer.connect,
                peer_timeout: peer.peer_timeout.get(),
                heartbeat_interval: peer.heartbeat_interval.get(),
            };
            let peer_link = PeerLink::new(link_config, peer_tls, infos);
            let mut replicas = Vec::new();
            for (slot, (v, meta, store)) in opened.into_iter().enumerate() {
                let geometry = Geometry { block_bytes: meta.block_bytes.into(), extent_bytes: meta.extent_bytes.into(), size: meta.size };
                let knobs = Knobs {
                    max_owned: v.max_owned_extents as usize,
                    predict: v.predict_extents,
                    release_after: v.release_after.get(),
                    wins_ties: config.node.name < peer.name,
                };
                let record = RecordFile::new(&data_dir.join("volumes").join(&meta.name));
                let replica = Replica::open(
                    slot as u16,
                    &meta.name,
                    geometry,
                    knobs,
                    store.clone(),
                    record,
                    peer_link.clone(),
                    peer.peer_timeout.get(),
                )
                .with_context(|| format!("open the claims record of volume `{}`", meta.name))?;
                replicas.push(replica.clone());
                exports.insert(Arc::new(Volume::new(meta, store).with_replica(replica)));
            }
            peer_link.attach(replicas.clone());
            for r in &replicas {
                r.start(shutdown.clone());
            }
            peer_listener =
                Some(TcpListener::bind(peer.listen).await.with_context(|| format!("bind the peer listener on {}", peer.listen))?);
            link = Some(peer_link);
        }
        _ => {
            for (_, meta, store) in opened {
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
        (Some(link), Some(listener)) => Some(tokio::spawn(link.clone().run(listener, shutdown.clone()))),
        _ => None,
    };

    let limits = ServerLimits {
        max_connections: config.nbd.max_connections,
        max_inflight_per_connection: config.nbd.max_inflight_per_connection,
        max_request_bytes: config.nbd.max_request_size.bytes() as u32,
    };
    let nbd_task = tokio::spawn(nbd::serve(nbd_listener, exports.clone(), limits, shutdown.clone()));
    let admin_state = Arc::new(admin::AdminState {
        name: config.node.name.clone(),
        started,
        nbd_listen: bound.nbd.to_string(),
        exports: exports.clone(),
        prometheus,
        link: link.clone(),
    });
    let admin_task = tokio::spawn(admin::serve(admin_listener, admin_state, shutdown.clone()));
    match (&config.peer, bound.peer) {
        (Some(peer), Some(listen)) => {
            info!(node = %config.node.name, nbd = %bound.nbd, admin = %bound.admin, peer = %peer.name, peer_listen = %listen, peer_connect = %peer.connect, volumes = config.volumes.len(), "node ready")
        }
        _ => info!(node = %config.node.name, nbd = %bound.nbd, admin = %bound.admin, volumes = config.volumes.len(), "node ready"),
    }
    if let Some(ready) = ready {
        let _ = ready.send(bound);
    }

    shutdown.cancelled().await;
    info!(node = %config.node.name, "shutting down");
    let _ = nbd_task.await;
    if let Some(task) = link_task {
        let _ = task.await;
    }
    if let Ok(Err(e)) = admin_task.await {
        error!(error = %e, "admin listener failed");
    }
    for volume in exports.volumes() {
        if let Err(e) = volume.flush().await {
            error!(volume = %volume.name(), error = %e, "failed to flush volume at shutdown");
        }
    }
    info!(node = %config.node.name, "stopped");
    Ok(())
}
