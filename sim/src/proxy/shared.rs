//! State shared by the accept loop, the connection tasks, the control API and the handle.
//!
//! Lock order, to stay deadlock-free: `registry` → `DirState::core`, and `Pipe::queue` →
//! `DirState::core`. Nothing holds a core while taking a pipe or the registry, and the registry
//! is released before pipes are locked.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::{Semaphore, watch};

use super::pipe::Pipe;
use crate::limits::CONNECTIONS_MAX;
use crate::link::{LinkDirection, LinkTime, StreamClock};
use crate::settings::{Dir, LinkSettings, LinkUpdate, SettingsError};
use crate::status::{Counters, Direction, DirectionCounters, Flow, LinkStatus, PartitionMode, PartitionState};
use crate::timer::lock;

/// One direction of the link: the model, its randomness and its partition flow.
struct DirCore {
    link: LinkDirection,
    rng: StdRng,
    /// Copy of the registry's partition state for this direction, read by every read.
    flow: Flow,
}

/// One direction of the link, shared by all connections going that way.
pub(crate) struct DirState {
    core: Mutex<DirCore>,
    received_bytes: AtomicU64,
    delivered_bytes: AtomicU64,
    queued_bytes: AtomicU64,
    discarded_bytes: AtomicU64,
}

impl DirState {
    fn new(settings: &LinkSettings, dir: Dir, seed: Option<u64>) -> Self {
        let rng = match seed {
            // Different streams per direction, reproducible from one seed.
            Some(seed) => StdRng::seed_from_u64(seed ^ (dir.index() as u64 + 1)),
            None => StdRng::from_os_rng(),
        };
        DirState {
            core: Mutex::new(DirCore { link: LinkDirection::new(settings.direction(dir)), rng, flow: Flow::Open }),
            received_bytes: AtomicU64::new(0),
            delivered_bytes: AtomicU64::new(0),
            queued_bytes: AtomicU64::new(0),
            discarded_bytes: AtomicU64::new(0),
        }
    }

    /// Delivery instant of a chunk offered now, or `None` while this direction is partitioned
    /// (the chunk is held until heal).
    pub(crate) fn schedule(&self, now: LinkTime, bytes: usize, stream: &mut StreamClock) -> Option<LinkTime> {
        let mut core = lock(&self.core);
        if core.flow != Flow::Open {
            return None;
        }
        let DirCore { link, rng, .. } = &mut *core;
        Some(link.transmit(now, bytes, stream, rng))
    }

    pub(crate) fn count_received(&self, bytes: usize) {
        self.received_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.queued_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn count_delivered(&self, bytes: usize) {
        self.delivered_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.queued_bytes.fetch_sub(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn count_discarded(&self, bytes: usize) {
        self.discarded_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.queued_bytes.fetch_sub(bytes as u64, Ordering::Relaxed);
    }

    fn counters(&self) -> DirectionCounters {
        DirectionCounters {
            received_bytes: self.received_bytes.load(Ordering::Relaxed),
            delivered_bytes: self.delivered_bytes.load(Ordering::Relaxed),
            queued_bytes: self.queued_bytes.load(Ordering::Relaxed),
            discarded_bytes: self.discarded_bytes.load(Ordering::Relaxed),
        }
    }
}

/// A live connection, as the fault handlers see it.
struct ConnEntry {
    /// `[ab, ba]`, to hold and release their chunks.
    pipes: [Arc<Pipe>; 2],
    /// Set to `true` to reset the connection.
    kill: watch::Sender<bool>,
}

#[derive(Default)]
struct Registry {
    conns: HashMap<u64, ConnEntry>,
    next_id: u64,
    /// The authoritative partition state; `refuses_connections()` is checked here, under the
    /// same lock as registration, so no connection slips past a reset partition.
    partition: PartitionState,
    /// Set at shutdown: no new registrations.
    closed: bool,
}

#[derive(Default)]
struct ConnCounters {
    open: AtomicU64,
    total: AtomicU64,
    reset: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
}

pub(crate) struct Shared {
    pub(crate) listen: SocketAddr,
    pub(crate) upstream: SocketAddr,
    /// Zero of the link clock.
    epoch: Instant,
    settings: Mutex<LinkSettings>,
    dirs: [DirState; 2],
    registry: Mutex<Registry>,
    /// One permit per proxied connection ([`CONNECTIONS_MAX`]).
    pub(crate) conn_slots: Arc<Semaphore>,
    conn_counters: ConnCounters,
}

impl Shared {
    pub(crate) fn new(listen: SocketAddr, upstream: SocketAddr, settings: LinkSettings, seed: Option<u64>) -> Self {
        Shared {
            listen,
            upstream,
            epoch: Instant::now(),
            dirs: [DirState::new(&settings, Dir::Ab, seed), DirState::new(&settings, Dir::Ba, seed)],
            settings: Mutex::new(settings),
            registry: Mutex::default(),
            conn_slots: Arc::new(Semaphore::new(CONNECTIONS_MAX)),
            conn_counters: ConnCounters::default(),
        }
    }

    pub(crate) fn dir(&self, dir: Dir) -> &DirState {
        &self.dirs[dir.index()]
    }

    /// Now on the link clock.
    pub(crate) fn now(&self) -> LinkTime {
        LinkTime(self.epoch.elapsed())
    }

    /// A link-clock instant on the system clock (far future if it does not fit).
    pub(crate) fn instant(&self, t: LinkTime) -> Instant {
        self.epoch.checked_add(t.0).unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365))
    }

    pub(crate) fn settings(&self) -> LinkSettings {
        lock(&self.settings).clone()
    }

    pub(crate) fn update(&self, update: &LinkUpdate) -> Result<LinkSettings, SettingsError> {
        let mut settings = lock(&self.settings);
        let new = update.apply(&settings)?;
        for dir in Dir::ALL {
            lock(&self.dir(dir).core).link.set_params(new.direction(dir));
        }
        *settings = new.clone();
        tracing::info!("link settings: {}", new.summary());
        Ok(new)
    }

    pub(crate) fn partition_state(&self) -> PartitionState {
        lock(&self.registry).partition
    }

    pub(crate) fn refuses_connections(&self) -> bool {
        let registry = lock(&self.registry);
        registry.closed || registry.partition.refuses_connections()
    }

    /// Starts (or extends) a partition.
    pub(crate) fn partition(&self, mode: PartitionMode, direction: Direction) {
        let flow = match mode {
            PartitionMode::Hold => Flow::Hold,
            PartitionMode::Reset => Flow::Reset,
        };
        let mut registry = lock(&self.registry);
        for dir in Dir::ALL.into_iter().filter(|d| direction.includes(*d)) {
            match dir {
                Dir::Ab => registry.partition.ab = flow,
                Dir::Ba => registry.partition.ba = flow,
            }
            lock(&self.dir(dir).core).flow = flow;
        }
        tracing::info!(?mode, ?direction, "partition: {:?}", registry.partition);
        match mode {
            PartitionMode::Reset => {
                let killed = kill_all(&registry);
                self.conn_counters.reset.fetch_add(killed, Ordering::Relaxed);
            }
            PartitionMode::Hold => {
                let pipes = pipes_of(&registry, |dir| direction.includes(dir));
                drop(registry);
                for pipe in pipes {
                    pipe.hold_all();
                }
            }
        }
    }

    /// Ends every partition; held bytes are offered to the link now.
    pub(crate) fn heal(&self) {
        let mut registry = lock(&self.registry);
        registry.partition = PartitionState::default();
        for dir in Dir::ALL {
            lock(&self.dir(dir).core).flow = Flow::Open;
        }
        let pipes = pipes_of(&registry, |_| true);
        drop(registry);
        tracing::info!("partition healed");
        for pipe in pipes {
            let dir = pipe.dir();
            pipe.release_held(self.now(), self.dir(dir));
        }
    }

    /// Resets every open connection; returns how many.
    pub(crate) fn reset_connections(&self) -> u64 {
        let killed = kill_all(&lock(&self.registry));
        self.conn_counters.reset.fetch_add(killed, Ordering::Relaxed);
        tracing::info!(connections = killed, "reset all connections");
        killed
    }

    /// At shutdown: refuse new registrations and reset every connection.
    pub(crate) fn close(&self) {
        let mut registry = lock(&self.registry);
        registry.closed = true;
        kill_all(&registry);
    }

    /// Registers a connection, or returns `None` if connections are refused right now.
    pub(crate) fn register(&self, pipes: [Arc<Pipe>; 2], kill: watch::Sender<bool>) -> Option<u64> {
        let mut registry = lock(&self.registry);
        if registry.closed || registry.partition.refuses_connections() {
            return None;
        }
        let id = registry.next_id;
        registry.next_id += 1;
        registry.conns.insert(id, ConnEntry { pipes, kill });
        self.conn_counters.open.fetch_add(1, Ordering::Relaxed);
        self.conn_counters.total.fetch_add(1, Ordering::Relaxed);
        Some(id)
    }

    pub(crate) fn deregister(&self, id: u64) {
        if lock(&self.registry).conns.remove(&id).is_some() {
            self.conn_counters.open.fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn count_refused(&self) {
        self.conn_counters.refused.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_failed(&self) {
        self.conn_counters.failed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn counters(&self) -> Counters {
        let c = &self.conn_counters;
        Counters {
            ab: self.dir(Dir::Ab).counters(),
            ba: self.dir(Dir::Ba).counters(),
            connections_open: c.open.load(Ordering::Relaxed),
            connections_total: c.total.load(Ordering::Relaxed),
            connections_reset: c.reset.load(Ordering::Relaxed),
            connections_refused: c.refused.load(Ordering::Relaxed),
            connections_failed: c.failed.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn status(&self) -> LinkStatus {
        LinkStatus {
            listen: self.listen,
            upstream: self.upstream,
            settings: self.settings(),
            partition: self.partition_state(),
            counters: self.counters(),
        }
    }
}

/// Signals every registered connection to reset; returns how many were signalled.
fn kill_all(registry: &Registry) -> u64 {
    for entry in registry.conns.values() {
        entry.kill.send_replace(true);
    }
    registry.conns.len() as u64
}

fn pipes_of(registry: &Registry, wanted: impl Fn(Dir) -> bool) -> Vec<Arc<Pipe>> {
    registry.conns.values().flat_map(|entry| entry.pipes.iter()).filter(|pipe| wanted(pipe.dir())).cloned().collect()
}
