//! The TCP proxy: accepts connections on `listen`, connects each to `upstream`, and forwards
//! bytes both ways through the link model, with faults injected on command.

mod pipe;
mod shared;
mod stamped;
mod task;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::limits::SHUTDOWN_GRACE;
use crate::settings::{LinkSettings, LinkUpdate, SettingsError};
use crate::status::{Counters, Direction, LinkStatus, PartitionMode, PartitionState};
pub(crate) use shared::Shared;

/// What to start.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Where to accept connections (port 0 picks a free port; see [`ProxyHandle::local_addr`]).
    pub listen: SocketAddr,
    /// Where each accepted connection is forwarded.
    pub upstream: SocketAddr,
    /// Initial link settings.
    pub link: LinkSettings,
    /// Where to serve the control API, if anywhere.
    pub control: Option<SocketAddr>,
    /// Seed for the jitter random numbers; `None` seeds from the OS.
    pub seed: Option<u64>,
}

impl ProxyConfig {
    /// A proxy with no control API and an OS-seeded jitter.
    pub fn new(listen: SocketAddr, upstream: SocketAddr, link: LinkSettings) -> Self {
        ProxyConfig { listen, upstream, link, control: None, seed: None }
    }
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The initial settings are out of range.
    #[error("invalid link settings: {0}")]
    Settings(#[from] SettingsError),
    /// The proxy's listening address could not be bound.
    #[error("bind proxy address {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The control API's address could not be bound.
    #[error("bind control address {addr}: {source}")]
    BindControl {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Entry point of the proxy.
pub struct Proxy;

impl Proxy {
    /// Binds the listening (and control) sockets and starts serving on the current tokio
    /// runtime. Returns once both sockets are bound, so connecting right away works.
    pub async fn start(config: ProxyConfig) -> Result<ProxyHandle, StartError> {
        config.link.validate()?;
        let listener = TcpListener::bind(config.listen).await.map_err(|source| StartError::Bind { addr: config.listen, source })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Bind { addr: config.listen, source })?;
        let control_listener = match config.control {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|source| StartError::BindControl { addr, source })?),
            None => None,
        };
        let control_addr = match &control_listener {
            Some(l) => {
                Some(l.local_addr().map_err(|source| StartError::BindControl { addr: config.control.unwrap_or(local_addr), source })?)
            }
            None => None,
        };

        let shared = Arc::new(Shared::new(local_addr, config.upstream, config.link, config.seed));
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let mut tasks = vec![tokio::spawn(task::accept_loop(shared.clone(), listener, shutdown_rx.clone()))];
        if let Some(listener) = control_listener {
            tasks.push(tokio::spawn(crate::control::serve(shared.clone(), listener, shutdown_rx)));
        }
        tracing::info!(
            listen = %local_addr,
            upstream = %config.upstream,
            control = ?control_addr,
            "link simulator started: {}",
            shared.settings().summary()
        );
        Ok(ProxyHandle { shared, local_addr, control_addr, shutdown_tx, tasks })
    }
}

/// A running proxy. Dropping it stops the proxy in the background; [`ProxyHandle::shutdown`]
/// stops it and waits.
pub struct ProxyHandle {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    control_addr: Option<SocketAddr>,
    shutdown_tx: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl ProxyHandle {
    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The control API's address, if it was asked for.
    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.control_addr
    }

    /// The current link settings.
    pub fn settings(&self) -> LinkSettings {
        self.shared.settings()
    }

    /// Changes the settings given in `update`; bytes already scheduled keep their timing.
    pub fn update(&self, update: LinkUpdate) -> Result<LinkSettings, SettingsError> {
        self.shared.update(&update)
    }

    /// Starts a partition of `direction` in `mode`; partitions add up until [`Self::heal`].
    pub fn partition(&self, mode: PartitionMode, direction: Direction) {
        self.shared.partition(mode, direction);
    }

    /// Ends all partitions; held bytes flow again.
    pub fn heal(&self) {
        self.shared.heal();
    }

    /// Resets every open connection (RST to both ends); returns how many there were.
    pub fn reset_connections(&self) -> u64 {
        self.shared.reset_connections()
    }

    /// The current partition state.
    pub fn partition_state(&self) -> PartitionState {
        self.shared.partition_state()
    }

    /// Byte and connection counters.
    pub fn counters(&self) -> Counters {
        self.shared.counters()
    }

    /// Everything `GET /link` returns.
    pub fn status(&self) -> LinkStatus {
        self.shared.status()
    }

    /// Stops accepting, resets every connection, stops the control API, and waits for all of
    /// it (at most about [`SHUTDOWN_GRACE`] per task before aborting it).
    pub async fn shutdown(mut self) {
        self.shutdown_tx.send_replace(true);
        for mut task in std::mem::take(&mut self.tasks) {
            // The accept loop has its own grace period; allow for it.
            if tokio::time::timeout(SHUTDOWN_GRACE * 2, &mut task).await.is_err() {
                task.abort();
            }
        }
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        self.shutdown_tx.send_replace(true);
    }
}
