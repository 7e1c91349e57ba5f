//! The runtime around the protocol engine (`geomirror-core`): it hands the
//! core its inputs (host requests, frames, link changes, I/O completions,
//! time) and carries out its outputs (sends, session closes, store and
//! claims file I/O on the blocking pool, host replies, log lines). It
//! decides nothing: every rule lives in the core.
//!
//! One lock guards the core; outputs are executed under it, and none of
//! them blocks (sends are queued on bounded per-lane outboxes, I/O goes to
//! the blocking pool), so the order of messages on a lane is the core's.
//! Once the lock is released, the thread that handled the input writes the
//! lanes it queued on and runs the small writes it asked for ([`AfterLock`]). Owned-extent
//! writes and local reads take the core's synchronous fast paths and touch
//! the store directly.
//!
//! Time: the core sees `tokio::time::Instant` since the engine started, so
//! tokio's paused clock drives every timer in tests.

pub mod claims_file;
pub mod conflict_file;
pub mod recent;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use dashmap::DashMap;
use geomirror_core::claims_file::{ClaimsFileContents, ClaimsWrite};
use geomirror_core::{
    CoreConfig, CoreStatus, Event, HostError, HostRequest, HostRequestId, Input, IoFault, IoFaultKind, IoOp, IoOutcome, IoToken, NodeCore,
    Output, Role, SessionGen, StoreWrite, Time, WitnessLinkGen, ZeroMode,
};
use geomirror_wire::peer::{Lane, Message, VolumeIndex};
use geomirror_wire::witness::WitnessMessage;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use self::claims_file::ClaimsFile;
use self::conflict_file::ConflictFile;
use self::recent::RecentWrites;
use crate::metrics::ReplicationMetrics;
use crate::peer::outbox::{CountSent, Outbox, OutboxFull, Written};
use crate::store::{BlockStore, StoreError};

/// The outboxes of one session's lanes, as the core's sends need them.
pub struct SessionIo {
    /// Cancelled when the session ends (either lane failed, or the core
    /// closed it); the link then reports the end.
    pub cancel: CancellationToken,
    /// Why it ended, if the core or the runtime closed it.
    pub reason: Arc<Mutex<Option<String>>>,
    /// The priority lane's outbox.
    pub priority: Arc<Outbox>,
    /// The bulk lane's outbox, once attached.
    pub bulk: Option<Arc<Outbox>>,
    /// A bulk connection was accepted for this session (from its hello on;
    /// see [`Engine::reserve_bulk`]), attached or not yet.
    pub bulk_reserved: bool,
}

impl SessionIo {
    /// Ends the session with `reason` (the first reason given wins).
    pub fn close(&self, reason: String) {
        let mut r = self.reason.lock().expect("reason lock");
        if r.is_none() {
            *r = Some(reason);
        }
        self.cancel.cancel();
    }
}

/// One replicated volume's store, claims file and conflict file.
pub struct EngineVolume {
    /// Export name.
    pub name: String,
    /// Where its bytes live.
    pub store: Arc<dyn BlockStore>,
    /// Its claims file.
    pub file: ClaimsFile,
    /// Where its blocks replaced after an outage are saved first.
    pub conflicts: ConflictFile,
}

/// The witness connection's writer, as the core's sends need it.
pub struct WitnessIo {
    /// The connection.
    pub link: WitnessLinkGen,
    /// Cancelled to close it (the core found a protocol violation).
    pub cancel: CancellationToken,
    /// Its writer.
    pub tx: mpsc::Sender<WitnessMessage>,
}

/// The runtime of one two-site node.
pub struct Engine {
    node: String,
    core: Mutex<NodeCore>,
    origin: tokio::time::Instant,
    volumes: Vec<EngineVolume>,
    /// Per volume, the host writes kept in memory for the copy stream.
    recent: Vec<RecentWrites>,
    metrics: Vec<ReplicationMetrics>,
    sessions: Mutex<HashMap<SessionGen, SessionIo>>,
    replies: DashMap<HostRequestId, oneshot::Sender<Result<Option<Bytes>, HostError>>>,
    next_host: AtomicU64,
    /// The time (nanoseconds since `origin`) the timer task sleeps until.
    timer_at: AtomicU64,
    timer: Notify,
    /// Readers waiting for the core to accept frames again.
    room: Notify,
    /// The witness connection, while up.
    witness: Mutex<Option<WitnessIo>>,
    /// Recent events, for `GET /events`.
    pub events: crate::events::EventRing,
    /// Frame bytes sent to the peer on both lanes (without TLS).
    pub link_sent_bytes: AtomicU64,
    handle: tokio::runtime::Handle,
    /// The node's span (the caller's at [`Engine::new`]): the parent of
    /// every line the engine logs and of its blocking I/O, whichever task
    /// happened to run the core.
    span: tracing::Span,
}

impl Engine {
    /// An engine for `config`, with each volume's claims file as loaded.
    pub fn new(node: &str, config: CoreConfig, volumes: Vec<EngineVolume>, files: Vec<ClaimsFileContents>) -> Arc<Engine> {
        let origin = tokio::time::Instant::now();
        let metrics = volumes.iter().map(|v| ReplicationMetrics::new(&v.name)).collect();
        let recent = config.volumes.iter().map(|v| RecentWrites::new(v.geometry.block_bytes, config.volumes.len())).collect();
        let core = NodeCore::new(config, files, Time::ZERO);
        crate::metrics::set_health(core.health().0);
        Arc::new(Engine {
            node: node.to_string(),
            core: Mutex::new(core),
            origin,
            volumes,
            recent,
            metrics,
            sessions: Mutex::new(HashMap::new()),
            replies: DashMap::new(),
            next_host: AtomicU64::new(1),
            timer_at: AtomicU64::new(u64::MAX),
            timer: Notify::new(),
            room: Notify::new(),
            events: crate::events::EventRing::default(),
            link_sent_bytes: AtomicU64::new(0),
            witness: Mutex::new(None),
            handle: tokio::runtime::Handle::current(),
            span: tracing::Span::current(),
        })
    }

    /// Starts the timer task (every deadline of the core) and the metrics refresh.
    pub fn start(self: &Arc<Self>, shutdown: CancellationToken) {
        let me = self.clone();
        let stop = shutdown.clone();
        crate::tasks::spawn(async move { me.timer_task(stop).await });
        let me = self.clone();
        crate::tasks::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => me.refresh_metrics(),
                }
            }
        });
        self.with_core(|_, _| ());
    }

    fn now(&self) -> Time {
        Time::from_nanos(u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    /// Runs `f` on the core, then carries out its outputs and re-arms the timer.
    fn with_core<R>(self: &Arc<Self>, f: impl FnOnce(&mut NodeCore, Time) -> R) -> R {
        self.with_core_on(AfterLock::on_runtime(), f)
    }

    fn with_core_on<R>(self: &Arc<Self>, mut after: AfterLock, f: impl FnOnce(&mut NodeCore, Time) -> R) -> R {
        let result = self.locked(f, &mut after);
        self.run_inline(after);
        result
    }

    /// [`with_core`](Self::with_core) without the inline writes: those the
    /// outputs asked for are added to `after` (within its budget). The lanes
    /// they queued messages on are written once the lock is released.
    fn locked<R>(self: &Arc<Self>, f: impl FnOnce(&mut NodeCore, Time) -> R, after: &mut AfterLock) -> R {
        tracing::trace!(parent: &self.span, "core input");
        let mut core = self.core.lock().expect("core lock");
        let now = self.now();
        let result = f(&mut core, now);
        self.execute(&mut core, after);
        let next = core.poll_timeout();
        drop(core);
        after.write_lanes();
        if let Some(t) = next {
            self.arm(t.as_nanos());
        }
        self.room.notify_waiters();
        result
    }

    /// Carries out the small page-cache writes the core's outputs asked
    /// for, on this thread and after the core's lock is released, and hands
    /// each result back (which may ask for more, within the budget).
    fn run_inline(self: &Arc<Self>, mut after: AfterLock) {
        while let Some(next) = after.next() {
            match next {
                Queued::Here(token, volume, op) => {
                    let result = self.run_io_here(volume, op);
                    self.locked(|core, now| core.handle(now, Input::IoDone { token, result }), &mut after);
                }
                Queued::Pool(token, volume, op) => self.spawn_io(token, volume, op),
            }
        }
    }

    fn arm(&self, at: u64) {
        if self.timer_at.fetch_min(at, Ordering::AcqRel) > at {
            self.timer.notify_one();
        }
    }

    async fn timer_task(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let at = self.timer_at.load(Ordering::Acquire);
            let sleep = async {
                if at == u64::MAX {
                    std::future::pending::<()>().await
                } else {
                    tokio::time::sleep_until(self.origin + Duration::from_nanos(at)).await
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.timer.notified() => continue,
                _ = sleep => {}
            }
            self.timer_at.store(u64::MAX, Ordering::Release);
            self.with_core(|core, now| core.handle(now, Input::Tick));
        }
    }

    /// Carries out the core's outputs; nothing here blocks (messages are
    /// queued and small page-cache writes kept in `after`, both done once
    /// the lock is released).
    fn execute(self: &Arc<Self>, core: &mut NodeCore, after: &mut AfterLock) {
        while let Some(output) = core.poll_output() {
            tracing::trace!(parent: &self.span, ?output, "core output");
            match output {
                Output::Send { session, lane, message } => self.send(session, lane, message, after),
                Output::CloseSession { session, reason } => {
                    if let Some(io) = self.sessions.lock().expect("sessions lock").get(&session) {
                        io.close(reason);
                    }
                }
                Output::Io { token, volume, op } => {
                    if let Some((token, volume, op)) = after.offer(token, volume, op) {
                        self.spawn_io(token, volume, op);
                    }
                }
                Output::Reply { id, result } => {
                    if let Some((_, tx)) = self.replies.remove(&id) {
                        let _ = tx.send(result);
                    }
                }
                Output::Event(event) => self.log_event(event),
                Output::SendWitness { link, message } => {
                    let witness = self.witness.lock().expect("witness lock");
                    if let Some(w) = witness.as_ref().filter(|w| w.link == link)
                        && w.tx.try_send(message).is_err()
                    {
                        // The witness does not read: drop the connection, it reconnects.
                        w.cancel.cancel();
                    }
                }
                Output::CloseWitness { link, reason } => {
                    warn!(parent: &self.span, reason, "closing the witness link");
                    if let Some(w) = self.witness.lock().expect("witness lock").as_ref().filter(|w| w.link == link) {
                        w.cancel.cancel();
                    }
                }
            }
        }
    }

    // ------------------------------------------------------------ witness link

    /// The witness link is up (hello done).
    pub fn witness_up(self: &Arc<Self>, io: WitnessIo) {
        let link = io.link;
        *self.witness.lock().expect("witness lock") = Some(io);
        self.with_core(|core, now| core.handle(now, Input::WitnessUp { link }));
    }

    /// A frame from the witness.
    pub fn witness_frame(self: &Arc<Self>, link: WitnessLinkGen, message: WitnessMessage) {
        self.with_core(|core, now| core.handle(now, Input::WitnessFrame { link, message }));
    }

    /// The witness link ended.
    pub fn witness_down(self: &Arc<Self>, link: WitnessLinkGen, reason: String) {
        {
            let mut w = self.witness.lock().expect("witness lock");
            if w.as_ref().is_some_and(|w| w.link == link) {
                *w = None;
            }
        }
        self.with_core(|core, now| core.handle(now, Input::WitnessDown { link, reason }));
    }

    /// The index of the volume named `name`.
    pub fn volume_index(&self, name: &str) -> Option<VolumeIndex> {
        self.volumes.iter().position(|v| v.name == name).map(|i| VolumeIndex(i as u16))
    }

    /// The lease length this node counts with (for the witness hello).
    pub fn lease(&self) -> Option<Duration> {
        self.core.lock().expect("core lock").config().witness.map(|w| w.lease)
    }

    /// What an operator's takeover of `volume` would take now.
    pub fn exposure(self: &Arc<Self>, volume: VolumeIndex) -> Option<geomirror_core::Exposure> {
        self.with_core(|core, _| core.exposure(volume))
    }

    /// Why a takeover of `volume` would be refused now (see
    /// `NodeCore::takeover_refusal`).
    pub fn takeover_refusal(self: &Arc<Self>, volume: VolumeIndex, peer_is_down: bool) -> Option<geomirror_core::TakeoverRefused> {
        self.with_core(|core, now| core.takeover_refusal(now, volume, peer_is_down))
    }

    /// An operator changes a volume's replication mode; returns the mode before.
    pub fn set_mode(
        self: &Arc<Self>,
        volume: VolumeIndex,
        mode: geomirror_config::ReplicationMode,
    ) -> Result<geomirror_config::ReplicationMode, geomirror_core::replication::ModeRefused> {
        self.with_core(|core, now| core.set_mode(now, volume, mode))
    }

    /// Whether a witness is configured.
    pub fn has_witness(&self) -> bool {
        self.core.lock().expect("core lock").witness_up().is_some()
    }

    /// An operator's takeover of `volume` (see `NodeCore::take_over`).
    pub fn take_over(
        self: &Arc<Self>,
        volume: VolumeIndex,
        peer_is_down: bool,
    ) -> Result<geomirror_core::Exposure, geomirror_core::TakeoverRefused> {
        self.with_core(|core, now| core.take_over(now, volume, peer_is_down))
    }

    /// Whether the node may answer hosts now (fast paths check it again
    /// after their store I/O: a lease may have ended meanwhile).
    pub fn may_serve(&self) -> bool {
        self.core.lock().expect("core lock").may_serve()
    }

    /// Queues `message` on its lane; `after` writes the lane once the core's
    /// lock is released.
    fn send(&self, session: SessionGen, lane: Lane, message: Message, after: &mut AfterLock) {
        let sessions = self.sessions.lock().expect("sessions lock");
        let Some(io) = sessions.get(&session) else { return };
        let outbox = match lane {
            Lane::Priority => Some(&io.priority),
            Lane::Bulk => io.bulk.as_ref(),
        };
        let Some(outbox) = outbox else {
            io.close(format!("the core sent on the {lane:?} lane before it was attached"));
            return;
        };
        match outbox.push(message) {
            Ok(()) => after.note_queued(outbox),
            Err(OutboxFull) => io.close(format!("the {lane:?} lane's queue is full: the peer does not read fast enough")),
        }
    }

    fn spawn_io(self: &Arc<Self>, token: IoToken, volume: VolumeIndex, op: IoOp) {
        let me = self.clone();
        crate::tasks::spawn_blocking_in(&self.handle, self.span.clone(), move || {
            let result = me.run_io_here(volume, op);
            tracing::trace!(token = token.0, ok = result.is_ok(), "I/O done");
            me.with_core_on(AfterLock::on_pool(), |core, now| core.handle(now, Input::IoDone { token, result }));
        });
    }

    /// Runs one of the core's I/O operations on this thread.
    fn run_io_here(&self, volume: VolumeIndex, op: IoOp) -> Result<IoOutcome, IoFault> {
        let v = volume.0 as usize;
        let kept = KeptWrites { recent: &self.recent[v], metrics: &self.metrics[v] };
        run_io(&*self.volumes[v].store, kept, &self.volumes[v].file, &self.volumes[v].conflicts, op)
    }

    /// Keeps `event` in the ring of recent events (`GET /events`); stale
    /// copies dropped are only counted (they come in bursts and are harmless).
    fn record_event(&self, event: &Event) {
        use geomirror_wire::status::NodeEvent as E;
        let name = |v: &VolumeIndex| self.volumes.get(v.0 as usize).map(|x| x.name.as_str());
        let (volume, record) = match event {
            Event::SessionReady { .. } => (None, E::LinkUp),
            Event::SessionEnded { reason, .. } => (None, E::LinkDown { reason: reason.clone() }),
            Event::Serving { volume, problem: None } => (name(volume), E::VolumeServing),
            Event::Serving { volume, problem: Some(p) } => (name(volume), E::VolumeNotServed { reason: p.clone() }),
            Event::VolumeStopped { volume, reason } => (name(volume), E::VolumeStopped { reason: reason.clone() }),
            Event::StoreFault { volume, doing, fault } => {
                (name(volume), E::StoreFault { doing: doing.to_string(), fault: fault.to_string() })
            }
            Event::PeerRefused { volume, request, message } => {
                (name(volume), E::PeerRefused { request: request.to_string(), message: message.clone() })
            }
            Event::StaleCopiesDropped { .. } => return,
            Event::HandoverRevoked { volume, extent } => (name(volume), E::HandoverRevoked { extent: extent.0 }),
            Event::HealthChanged { health, reason } => (None, E::Health { health: health.as_str().into(), reason: reason.clone() }),
            Event::WitnessProblem { message } => (None, E::WitnessProblem { message: message.clone() }),
            Event::ActingAlone { generation } => (None, E::ActingAlone { generation: *generation }),
            Event::TookOver { volume, extents, generation } => {
                (name(volume), E::TookOver { extents: *extents as u64, generation: *generation })
            }
            Event::ConflictsSaved { volume, extent, blocks, .. } => (name(volume), E::ConflictsSaved { extent: extent.0, blocks: *blocks }),
            Event::ResyncDone { volume, extents, blocks_differing } => {
                (name(volume), E::ResyncDone { extents: *extents, blocks_differing: *blocks_differing })
            }
            Event::OutageResolved { generation } => (None, E::OutageResolved { generation: *generation }),
            Event::Degraded { volume, mode, reason } => (name(volume), E::Degraded { mode: mode.as_str().into(), reason: reason.clone() }),
            Event::CaughtUp { volume, mode, after } => {
                (name(volume), E::CaughtUp { mode: mode.as_str().into(), after_seconds: after.as_secs_f64() })
            }
            Event::ModeChanged { volume, from, to } => {
                (name(volume), E::ModeChanged { from: from.as_str().into(), to: to.as_str().into() })
            }
        };
        self.events.push(volume, record);
    }

    fn log_event(&self, event: Event) {
        self.record_event(&event);
        let name = |v: VolumeIndex| self.volumes.get(v.0 as usize).map_or("?", |x| x.name.as_str());
        let parent = &self.span;
        match event {
            Event::SessionReady { session } => info!(parent: parent, session = session.0, "peer link ready (claims synced)"),
            Event::SessionEnded { session, reason } => info!(parent: parent, session = session.0, reason, "peer session ended"),
            Event::Serving { volume, problem: None } => info!(parent: parent, volume = name(volume), "volume matches the peer's; serving"),
            Event::Serving { volume, problem: Some(p) } => {
                warn!(parent: parent, volume = name(volume), problem = p, "volume not served: it does not match the peer's")
            }
            Event::VolumeStopped { volume, reason } => {
                error!(parent: parent, volume = name(volume), reason, "volume stopped: restart the node once the fault is fixed")
            }
            Event::StoreFault { volume, doing, fault } => {
                error!(parent: parent, volume = name(volume), doing, fault = %fault, "store fault")
            }
            Event::PeerRefused { volume, request, message } => {
                warn!(parent: parent, volume = name(volume), request, message, "the peer refused a request")
            }
            Event::StaleCopiesDropped { volume, runs } => debug!(parent: parent, volume = name(volume), runs, "stale copies dropped"),
            Event::HandoverRevoked { volume, extent } => {
                info!(
                    parent: parent,
                    volume = name(volume),
                    extent = extent.0,
                    "a handover never applied here was revoked; the peer owns the extent again"
                )
            }
            Event::HealthChanged { health, reason } => {
                crate::metrics::set_health(health);
                match health {
                    geomirror_core::Health::Fenced => {
                        warn!(parent: parent, health = health.as_str(), reason, "health changed: hosts are not served")
                    }
                    geomirror_core::Health::Survivor => warn!(parent: parent, health = health.as_str(), reason, "health changed"),
                    _ => info!(parent: parent, health = health.as_str(), reason, "health changed"),
                }
            }
            Event::WitnessProblem { message } => warn!(parent: parent, message, "the witness refused a request"),
            Event::ActingAlone { generation } => {
                warn!(parent: parent, generation, "acting alone: clean extents are claimed without the peer until it is back")
            }
            Event::TookOver { volume, extents, generation } => {
                warn!(parent: parent, volume = name(volume), extents, generation, "took over the extents the lost peer owned")
            }
            Event::ConflictsSaved { volume, extent, blocks, kind } => {
                warn!(parent: parent, volume = name(volume), extent = extent.0, blocks, kind = ?kind, "blocks the peer's data replaces were saved to the conflict file")
            }
            Event::ResyncDone { volume, extents, blocks_differing } => {
                info!(parent: parent, volume = name(volume), extents, blocks_differing, "resync with the peer done")
            }
            Event::OutageResolved { generation } => info!(parent: parent, generation, "the outage is over"),
            Event::Degraded { volume, mode, reason } => warn!(
                parent: parent,
                volume = name(volume),
                mode = mode.as_str(),
                reason,
                "volume degraded (on_peer_loss = degrade): writes are acknowledged without the peer until it has caught up"
            ),
            Event::CaughtUp { volume, mode, after } => info!(
                parent: parent,
                volume = name(volume),
                mode = mode.as_str(),
                degraded_for = ?after,
                "the peer has caught up: the volume's mode holds again"
            ),
            Event::ModeChanged { volume, from, to } => {
                info!(parent: parent, volume = name(volume), from = from.as_str(), to = to.as_str(), "replication mode changed")
            }
        }
    }

    // ------------------------------------------------------------ host I/O

    /// A host write; FUA writes and writes that need the peer take the
    /// general path, the rest the owned-extent fast path.
    pub async fn write(self: &Arc<Self>, volume: VolumeIndex, offset: u64, data: Bytes, fua: bool) -> Result<(), HostError> {
        let length = data.len() as u64;
        if !fua && let Some(ticket) = self.with_core(|core, now| core.try_write(now, volume, offset, length)) {
            let store = &self.volumes[volume.0 as usize].store;
            // Kept in memory for the copy stream once written (before the
            // core learns of the write and queues its blocks).
            let writing = self.recent[volume.0 as usize].begin(offset, length);
            let result = crate::store::write(store, offset, data).await;
            writing.end(result.as_ref().ok());
            self.with_core(|core, now| core.finish_write(now, ticket));
            return result.map(|_| ()).map_err(|e| HostError::Store(fault_of(&e)));
        }
        self.request(volume, HostRequest::Write { offset, data, fua }).await.map(|_| ())
    }

    /// Whether `offset..offset+length` can be read from this store now (no
    /// extent of it owned by the peer or being received).
    pub fn read_is_local(&self, volume: VolumeIndex, offset: u64, length: u64) -> bool {
        self.core.lock().expect("core lock").read_is_local(volume, offset, length)
    }

    /// A host read; a read of extents the peer does not own is served
    /// from the store directly.
    pub async fn read(self: &Arc<Self>, volume: VolumeIndex, offset: u64, length: u32) -> Result<Bytes, HostError> {
        if self.read_is_local(volume, offset, length.into()) {
            let store = &self.volumes[volume.0 as usize].store;
            return crate::store::read(store, offset, length as usize).await.map_err(|e| HostError::Store(fault_of(&e)));
        }
        self.request(volume, HostRequest::Read { offset, length }).await.map(|d| d.unwrap_or_default())
    }

    /// A host trim.
    pub async fn trim(self: &Arc<Self>, volume: VolumeIndex, offset: u64, length: u64, fua: bool) -> Result<(), HostError> {
        self.request(volume, HostRequest::Trim { offset, length, fua }).await.map(|_| ())
    }

    /// A host zero-write.
    pub async fn write_zeroes(
        self: &Arc<Self>,
        volume: VolumeIndex,
        offset: u64,
        length: u64,
        mode: ZeroMode,
        fast_only: bool,
        fua: bool,
    ) -> Result<(), HostError> {
        self.request(volume, HostRequest::WriteZeroes { offset, length, mode, fast_only, fua }).await.map(|_| ())
    }

    /// A host flush.
    pub async fn flush(self: &Arc<Self>, volume: VolumeIndex) -> Result<(), HostError> {
        self.request(volume, HostRequest::Flush).await.map(|_| ())
    }

    async fn request(self: &Arc<Self>, volume: VolumeIndex, request: HostRequest) -> Result<Option<Bytes>, HostError> {
        let id = HostRequestId(self.next_host.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = oneshot::channel();
        self.replies.insert(id, tx);
        self.with_core(|core, now| core.handle(now, Input::Host { id, volume, request }));
        rx.await.unwrap_or_else(|_| Err(HostError::NotServing("the node is shutting down".into())))
    }

    // ------------------------------------------------------------ the link

    /// A session's connections are up (the dialer's both lanes, the
    /// accepter's priority lane); `io` carries its sends from now on.
    pub fn session_up(self: &Arc<Self>, session: SessionGen, role: Role, volume_errors: Vec<Option<String>>, io: SessionIo) {
        self.sessions.lock().expect("sessions lock").insert(session, io);
        self.with_core(|core, now| core.handle(now, Input::LinkUp { session, role, volume_errors }));
    }

    /// Reserves `session`'s bulk lane for a bulk connection whose hello is
    /// being answered: at most one per session, checked and taken at once,
    /// so two bulk connections arriving together cannot both be accepted.
    /// Refused (nothing changes) if the session has ended or its bulk lane
    /// is taken.
    pub fn reserve_bulk(&self, session: SessionGen) -> Result<(), BulkRefused> {
        let mut sessions = self.sessions.lock().expect("sessions lock");
        let Some(io) = sessions.get_mut(&session) else { return Err(BulkRefused::SessionEnded) };
        // Set for every session with a bulk lane (the dialer's from the start).
        if io.bulk_reserved {
            return Err(BulkRefused::AlreadyAttached);
        }
        io.bulk_reserved = true;
        Ok(())
    }

    /// The accepter's bulk lane, reserved by [`reserve_bulk`](Self::reserve_bulk),
    /// attaches to `session`. Refused (nothing changes here; the caller ends
    /// the session, whose token the lane's tasks share) if the session has
    /// ended meanwhile.
    pub fn bulk_up(self: &Arc<Self>, session: SessionGen, bulk: Arc<Outbox>) -> Result<(), BulkRefused> {
        {
            let mut sessions = self.sessions.lock().expect("sessions lock");
            let Some(io) = sessions.get_mut(&session) else { return Err(BulkRefused::SessionEnded) };
            if io.bulk.is_some() {
                return Err(BulkRefused::AlreadyAttached);
            }
            io.bulk = Some(bulk);
        }
        self.with_core(|core, now| core.handle(now, Input::BulkUp { session }));
        Ok(())
    }

    /// A frame arrived.
    pub fn frame(self: &Arc<Self>, session: SessionGen, lane: Lane, message: Message) {
        tracing::trace!(parent: &self.span, session = session.0, ?lane, kind = message.kind(), id = ?message.id(), "frame");
        self.with_core(|core, now| core.handle(now, Input::Frame { session, lane, message }));
    }

    /// The session ended: tells the core (`LinkDown`) and forgets its outboxes.
    pub fn session_down(self: &Arc<Self>, session: SessionGen, reason: String) {
        self.sessions.lock().expect("sessions lock").remove(&session);
        self.with_core(|core, now| core.handle(now, Input::LinkDown { session, reason }));
    }

    /// Waits until the core accepts frames of `lane` again (back-pressure:
    /// the reader stops reading, TCP pushes back on the peer).
    pub async fn room_for(&self, lane: Lane) {
        loop {
            let notified = self.room.notified();
            if self.core.lock().expect("core lock").accepts_frames(lane) {
                return;
            }
            notified.await;
        }
    }

    // ------------------------------------------------------------ status

    /// The core's status.
    pub fn status(&self) -> CoreStatus {
        self.core.lock().expect("core lock").status()
    }

    /// Sets the replication metrics from the core's figures.
    pub fn refresh_metrics(&self) {
        let status = self.status();
        for (v, m) in status.volumes.iter().zip(&self.metrics) {
            m.set(v, self.volume_block_bytes(&v.name));
        }
    }

    /// A volume's `max_owned_extents` (0: no such volume).
    pub fn max_owned(&self, name: &str) -> u64 {
        let core = self.core.lock().expect("core lock");
        core.config().volumes.iter().find(|v| v.name == name).map_or(0, |v| v.knobs.max_owned as u64)
    }

    fn volume_block_bytes(&self, name: &str) -> u64 {
        let core = self.core.lock().expect("core lock");
        core.config().volumes.iter().find(|v| v.name == name).map_or(0, |v| v.geometry.block_bytes)
    }

    /// The node's name.
    pub fn node(&self) -> &str {
        &self.node
    }
}

impl CountSent for Engine {
    /// Bytes of a frame sent: the link's total, and the per-volume
    /// counters of the bulk lane's copy-stream messages.
    fn count_sent(&self, message: &Message, bytes: usize) {
        self.link_sent_bytes.fetch_add(bytes as u64, std::sync::atomic::Ordering::Relaxed);
        let volume = match message {
            Message::Copy { volume, .. } | Message::Release { volume, .. } | Message::Destage { volume, .. } => *volume,
            _ => return,
        };
        if let Some(m) = self.metrics.get(volume.0 as usize) {
            m.bulk_sent_bytes.increment(bytes as u64);
        }
    }
}

/// The fault a store error is to the core.
pub fn fault_of(e: &StoreError) -> IoFault {
    let kind = match e {
        StoreError::NotFast => IoFaultKind::NotFast,
        StoreError::Io(io) if io.raw_os_error() == Some(libc::ENOSPC) => IoFaultKind::NoSpace,
        _ => IoFaultKind::Io,
    };
    IoFault { kind, message: e.to_string() }
}

/// Largest read of one piece of a checksum pass (one buffer per pass).
const DIGEST_READ_BYTES: u64 = 1 << 20;

/// A volume's host writes kept for the copy stream, and what it counts.
struct KeptWrites<'a> {
    recent: &'a RecentWrites,
    metrics: &'a ReplicationMetrics,
}

/// What an input's outputs leave for after the core's lock is released, on
/// the thread that handled the input.
///
/// First the lanes they queued messages on: this thread writes them itself
/// if that needs no waiting ([`Outbox::write_here`]), so a sync mode's copy
/// leaves before the input's other work, and the answer to a `sync` write
/// leaves from the pool thread that made it durable, without waking a
/// runtime thread for the lane's writer task.
///
/// Then the small page-cache writes: a write of at most
/// [`INLINE_WRITE_BYTES_MAX`] bytes of data, not synced (copies applied at
/// the peer, a `sync-memory` or `sync` host write's local write), runs here
/// instead of on the blocking pool, which saves the two thread switches of
/// a trip through the pool (on a round trip per write, the sync modes, they
/// sit on the host's critical path). At most [`INLINE_IO_PER_INPUT_MAX`]
/// per input, so one input never holds its thread for long; the rest go to
/// the pool. If a message was left to a lane's writer task on a runtime
/// thread, the writes still kept go to the pool too: that task runs on this
/// thread only after the input's handling yields, and nobody waits for
/// these writes as much as the other site waits for that message.
///
/// [`INLINE_WRITE_BYTES_MAX`]: crate::limits::INLINE_WRITE_BYTES_MAX
/// [`INLINE_IO_PER_INPUT_MAX`]: crate::limits::INLINE_IO_PER_INPUT_MAX
struct AfterLock {
    /// Lanes with messages queued by this input's outputs (a session has
    /// two: no allocation per input).
    lanes: smallvec::SmallVec<[Arc<Outbox>; 2]>,
    queued: std::collections::VecDeque<(IoToken, VolumeIndex, IoOp)>,
    budget: usize,
    /// A message of this input was left to a lane's writer task.
    left_to_writer: bool,
    /// This is a runtime thread: a lane's writer task woken here runs only
    /// when the input's handling yields (on a blocking-pool thread, which
    /// hands a finished I/O back, it runs on a runtime thread meanwhile).
    writer_waits_for_us: bool,
}

/// Why a bulk lane was not attached ([`Engine::bulk_up`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BulkRefused {
    #[error("the session this bulk connection would join has ended")]
    SessionEnded,
    #[error("the session already has its bulk connection")]
    AlreadyAttached,
}

/// Where a kept write runs ([`AfterLock::next`]).
enum Queued {
    /// On this thread, now.
    Here(IoToken, VolumeIndex, IoOp),
    /// On the blocking pool, because a message to the peer waits for this
    /// thread to yield.
    Pool(IoToken, VolumeIndex, IoOp),
}

impl AfterLock {
    /// For an input handled on a runtime thread.
    fn on_runtime() -> AfterLock {
        AfterLock {
            lanes: smallvec::SmallVec::new(),
            queued: std::collections::VecDeque::new(),
            budget: crate::limits::INLINE_IO_PER_INPUT_MAX,
            left_to_writer: false,
            writer_waits_for_us: true,
        }
    }

    /// For an I/O's completion handled on the blocking-pool thread that ran it.
    fn on_pool() -> AfterLock {
        AfterLock { writer_waits_for_us: false, ..AfterLock::on_runtime() }
    }

    /// The outputs queued a message on `outbox`.
    fn note_queued(&mut self, outbox: &Arc<Outbox>) {
        if !self.lanes.iter().any(|o| Arc::ptr_eq(o, outbox)) {
            self.lanes.push(outbox.clone());
        }
    }

    /// Writes the lanes the outputs queued on (called without the core's lock).
    fn write_lanes(&mut self) {
        for outbox in self.lanes.drain(..) {
            if outbox.write_here() == Written::LeftToWriter {
                self.left_to_writer = true;
            }
        }
    }

    /// Keeps `op` to run inline if it is a small unsynced data write and
    /// the budget allows; gives it back otherwise.
    fn offer(&mut self, token: IoToken, volume: VolumeIndex, op: IoOp) -> Option<(IoToken, VolumeIndex, IoOp)> {
        if self.budget > 0 && is_small_page_cache_write(&op) {
            self.budget -= 1;
            self.queued.push_back((token, volume, op));
            None
        } else {
            Some((token, volume, op))
        }
    }

    /// The next kept write, in the order the core asked, and where it runs.
    fn next(&mut self) -> Option<Queued> {
        let (token, volume, op) = self.queued.pop_front()?;
        Some(if self.left_to_writer && self.writer_waits_for_us {
            Queued::Pool(token, volume, op)
        } else {
            Queued::Here(token, volume, op)
        })
    }
}

/// A write of data only (no trim or zeroing, which may take long), not
/// synced, of at most [`INLINE_WRITE_BYTES_MAX`] bytes in all.
///
/// [`INLINE_WRITE_BYTES_MAX`]: crate::limits::INLINE_WRITE_BYTES_MAX
fn is_small_page_cache_write(op: &IoOp) -> bool {
    let IoOp::Write { writes, sync: false } = op else { return false };
    let mut bytes = 0usize;
    for w in writes {
        let StoreWrite::Data { data, .. } = w else { return false };
        bytes += data.len();
    }
    bytes <= crate::limits::INLINE_WRITE_BYTES_MAX
}

/// Carries out one I/O of the core (on the blocking pool, or a small write
/// inline: [`AfterLock`]).
fn run_io(
    store: &dyn BlockStore,
    kept: KeptWrites<'_>,
    file: &ClaimsFile,
    conflicts: &ConflictFile,
    op: IoOp,
) -> Result<IoOutcome, IoFault> {
    let recent = kept.recent;
    match op {
        IoOp::Read { ranges, for_copy } => ranges
            .into_iter()
            .map(|(offset, length)| {
                if for_copy {
                    if let Some(data) = recent.take(offset, length) {
                        kept.metrics.copy_read_memory_bytes.increment(length);
                        return Ok(data);
                    }
                    // Part of it may be kept: it goes out now, read back.
                    recent.discard(offset, length);
                    kept.metrics.copy_read_store_bytes.increment(length);
                }
                store.read_bytes(offset, length as usize)
            })
            .collect::<Result<Vec<Bytes>, StoreError>>()
            .map(IoOutcome::Read)
            .map_err(|e| fault_of(&e)),
        IoOp::Write { writes, sync } => {
            for w in writes {
                // Not kept (these are the core's writes: peer data, slow
                // host writes), but they make what is kept of their blocks
                // stale.
                let (offset, length) = w.range();
                let _writing = recent.begin(offset, length);
                let result = match w {
                    StoreWrite::Data { offset, data } => store.write_at(&data, offset),
                    StoreWrite::Trim { offset, length } => store.trim(offset, length),
                    StoreWrite::Zeroes { offset, length, mode, fast_only } => store.write_zeroes(offset, length, mode, fast_only),
                };
                result.map_err(|e| fault_of(&e))?;
            }
            if sync {
                kept.metrics.store_syncs.increment(1);
                store.sync().map_err(|e| fault_of(&e))?;
            }
            Ok(IoOutcome::Done)
        }
        IoOp::Sync => {
            kept.metrics.store_syncs.increment(1);
            store.sync().map(|()| IoOutcome::Done).map_err(|e| fault_of(&e))
        }
        IoOp::Persist { write } => {
            let written = match &write {
                ClaimsWrite::Full(contents) => file.store(contents),
                ClaimsWrite::Delta(delta) => file.append(delta),
            };
            written.map(|()| IoOutcome::Done).map_err(|e| IoFault { kind: IoFaultKind::Io, message: e.to_string() })
        }
        IoOp::Digest { ranges, block } => {
            // In pieces of at most DIGEST_READ_BYTES (whole blocks): an
            // extent may be up to 1 GiB.
            let piece_max = (DIGEST_READ_BYTES / block).max(1) * block;
            let mut crcs = Vec::new();
            let mut buf = BytesMut::new();
            for (offset, length) in ranges {
                let mut at = 0;
                while at < length {
                    let n = (length - at).min(piece_max) as usize;
                    buf.resize(n, 0);
                    store.read_at(&mut buf[..n], offset + at).map_err(|e| fault_of(&e))?;
                    crcs.extend(buf[..n].chunks(block as usize).map(crc32c::crc32c));
                    at += n as u64;
                }
            }
            Ok(IoOutcome::Digest(crcs))
        }
        IoOp::SaveConflicts { records } => {
            let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
            conflicts
                .append(&records, now_ms)
                .map(|()| IoOutcome::Done)
                .map_err(|e| IoFault { kind: IoFaultKind::Io, message: e.to_string() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use geomirror_core::{Geometry, Knobs, VolumeSettings};

    fn engine(dir: &std::path::Path, peer_timeout: Duration) -> Arc<Engine> {
        let geometry = Geometry { block_bytes: 4096, extent_bytes: 1 << 20, size: 16 << 20 };
        let knobs = Knobs { max_owned: 8, predict: 0, release_after: Duration::from_secs(30) };
        let config = CoreConfig {
            node: "site-a".into(),
            wins_ties: true,
            peer_timeout,
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(3),
            witness: None,
            volumes: vec![VolumeSettings {
                name: "vol0".into(),
                geometry,
                knobs,
                mode: geomirror_config::ReplicationMode::Async,
                on_peer_loss: geomirror_config::PeerLossPolicy::Suspend,
            }],
        };
        let volume = EngineVolume {
            name: "vol0".into(),
            store: Arc::new(MemoryStore::new(geometry.size)),
            file: ClaimsFile::new(dir),
            conflicts: ConflictFile::new(dir, "vol0", [0; 16]),
        };
        Engine::new("site-a", config, vec![volume], vec![ClaimsFileContents::default()])
    }

    /// Every timer of the core runs on tokio's clock: with the clock paused,
    /// a write that needs the absent peer fails after `peer_timeout` of
    /// virtual time, at once in real time.
    #[test]
    fn only_small_unsynced_data_writes_run_inline_and_at_most_the_budget() {
        let data = |n: usize| StoreWrite::Data { offset: 0, data: Bytes::from(vec![7u8; n]) };
        let write = |writes: Vec<StoreWrite>, sync: bool| IoOp::Write { writes, sync };
        let max = crate::limits::INLINE_WRITE_BYTES_MAX;
        assert!(is_small_page_cache_write(&write(vec![data(4096)], false)));
        assert!(is_small_page_cache_write(&write(vec![data(max / 2), data(max / 2)], false)));
        assert!(!is_small_page_cache_write(&write(vec![data(max / 2), data(max / 2 + 1)], false)), "over the size");
        assert!(!is_small_page_cache_write(&write(vec![data(4096)], true)), "an fdatasync follows");
        assert!(!is_small_page_cache_write(&write(vec![StoreWrite::Trim { offset: 0, length: 4096 }], false)), "a trim");
        assert!(!is_small_page_cache_write(&IoOp::Sync));

        let mut inline = AfterLock::on_runtime();
        let v = VolumeIndex(0);
        for t in 0..crate::limits::INLINE_IO_PER_INPUT_MAX as u64 {
            assert!(inline.offer(IoToken(t), v, write(vec![data(4096)], false)).is_none(), "kept within the budget");
        }
        let over = inline.offer(IoToken(99), v, write(vec![data(4096)], false));
        assert!(over.is_some_and(|(t, _, _)| t == IoToken(99)), "past the budget it goes to the pool");
        assert!(inline.offer(IoToken(100), v, IoOp::Sync).is_some());
        let first = inline.next();
        assert!(matches!(first, Some(Queued::Here(IoToken(0), ..))), "in the order the core asked, here");
        // A message for the peer left to the lane's writer task, which runs
        // on this thread only after the input: the rest go to the pool.
        inline.left_to_writer = true;
        let rest: Vec<u64> = std::iter::from_fn(|| inline.next())
            .map(|q| match q {
                Queued::Pool(t, _, _) => t.0,
                Queued::Here(t, _, _) => panic!("write {} ran here after a message was queued", t.0),
            })
            .collect();
        assert_eq!(rest, (1..crate::limits::INLINE_IO_PER_INPUT_MAX as u64).collect::<Vec<_>>());
        // On the pool thread that finished an I/O, a message does not wait
        // for it: the writes stay here.
        let mut pool = AfterLock::on_pool();
        assert!(pool.offer(IoToken(1), v, write(vec![data(4096)], false)).is_none());
        pool.left_to_writer = true;
        assert!(matches!(pool.next(), Some(Queued::Here(IoToken(1), ..))));
    }

    /// Bulk connections of one session whose hellos are answered at the
    /// same time: exactly one reserves the lane, every other is refused as
    /// `AlreadyAttached`, and a session that is not there refuses all.
    #[test]
    fn of_bulk_connections_racing_for_one_session_exactly_one_is_accepted() {
        const ROUNDS: u64 = 300;
        const RACERS: usize = 4;
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let _guard = runtime.enter();
        let dir = tempfile::tempdir().unwrap();
        let e = engine(dir.path(), Duration::from_secs(10));
        for round in 0..ROUNDS {
            let session = SessionGen(round);
            let cancel = CancellationToken::new();
            let reason = Arc::new(Mutex::new(None));
            let priority = Outbox::new(Lane::Priority, 16, Box::new(tokio::io::sink()), e.clone(), cancel.clone(), reason.clone());
            let io = SessionIo { cancel, reason, priority, bulk: None, bulk_reserved: false };
            e.sessions.lock().unwrap().insert(session, io);
            let start = std::sync::Barrier::new(RACERS);
            let results: Vec<Result<(), BulkRefused>> = std::thread::scope(|s| {
                let racers: Vec<_> = (0..RACERS)
                    .map(|_| {
                        s.spawn(|| {
                            start.wait();
                            e.reserve_bulk(session)
                        })
                    })
                    .collect();
                racers.into_iter().map(|r| r.join().unwrap()).collect()
            });
            let accepted = results.iter().filter(|r| r.is_ok()).count();
            assert_eq!(accepted, 1, "round {round}: {results:?}");
            assert!(results.iter().all(|r| matches!(r, Ok(()) | Err(BulkRefused::AlreadyAttached))), "{results:?}");
            assert_eq!(e.reserve_bulk(session), Err(BulkRefused::AlreadyAttached), "and any later one");
        }
        assert_eq!(e.reserve_bulk(SessionGen(ROUNDS + 1)), Err(BulkRefused::SessionEnded));
    }

    #[tokio::test(start_paused = true)]
    async fn the_paused_clock_drives_the_cores_timers() {
        let dir = tempfile::tempdir().unwrap();
        let e = engine(dir.path(), Duration::from_secs(600));
        let shutdown = CancellationToken::new();
        e.start(shutdown.clone());
        let (virtual_start, real_start) = (tokio::time::Instant::now(), std::time::Instant::now());
        let result = e.write(VolumeIndex(0), 0, Bytes::from(vec![7u8; 4096]), false).await;
        assert!(matches!(result, Err(HostError::PeerUnavailable(_))), "{result:?}");
        let waited = virtual_start.elapsed();
        assert!(waited >= Duration::from_secs(600) && waited < Duration::from_secs(602), "waited {waited:?} of virtual time");
        assert!(real_start.elapsed() < Duration::from_secs(30), "the wait took real time: {:?}", real_start.elapsed());
        shutdown.cancel();
    }
}
