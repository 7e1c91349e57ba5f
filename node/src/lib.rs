//! A geomirror node: opens the volumes of its configuration, serves them to
//! hosts over NBD and exposes an admin endpoint.
//!
//! Entry point: [`run`]. Layout: [`store`] (where bytes live), [`volume`]
//! (the read and write paths), [`nbd`] (the host protocol), [`admin`]
//! (`/metrics`, `/status`), [`metrics`] (names and handles), [`limits`].
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

use crate::nbd::{Exports, ServerLimits};
use crate::store::file::{DataDirLock, FileStore, VolumeGeometry};
use crate::volume::Volume;

/// Addresses a running node is bound to (ports may have been 0 in config).
#[derive(Clone, Copy, Debug)]
pub struct BoundAddrs {
    /// NBD listener.
    pub nbd: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
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

    let mut exports = Exports::default();
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
        exports.insert(Arc::new(Volume::new(meta, Arc::new(store))));
    }
    let exports = Arc::new(exports);

    let nbd_listener = TcpListener::bind(config.nbd.listen)
        .await
        .with_context(|| format!("bind the NBD listener on {}", config.nbd.listen))?;
    let admin_listener = TcpListener::bind(config.admin.listen)
        .await
        .with_context(|| format!("bind the admin listener on {}", config.admin.listen))?;
    let bound = BoundAddrs { nbd: nbd_listener.local_addr()?, admin: admin_listener.local_addr()? };

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
    });
    let admin_task = tokio::spawn(admin::serve(admin_listener, admin_state, shutdown.clone()));
    info!(node = %config.node.name, nbd = %bound.nbd, admin = %bound.admin, volumes = config.volumes.len(), "node ready");
    if let Some(ready) = ready {
        let _ = ready.send(bound);
    }

    shutdown.cancelled().await;
    info!(node = %config.node.name, "shutting down");
    let _ = nbd_task.await;
    match admin_task.await {
        Ok(Err(e)) => error!(error = %e, "admin listener failed"),
        _ => {}
    }
    for volume in exports.volumes() {
        if let Err(e) = volume.flush().await {
            error!(volume = %volume.name(), error = %e, "failed to flush volume at shutdown");
        }
    }
    info!(node = %config.node.name, "stopped");
    Ok(())
}
