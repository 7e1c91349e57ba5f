//! The async layer of one mirrored volume: host reads and writes consult
//! the claims state, requests and answers travel on the peer link, the copy
//! stream ships written blocks, and the durable record is rewritten when it
//! changes.
//!
//! Ordering rule: every message whose order matters relative to a state
//! change is queued on the link while the state lock is held (a reply that
//! needs I/O first reserves its place). Every incoming priority message is
//! applied to the state by the link's single reader, in arrival order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use geomirror_wire::peer::{BlockIndex, BlockRun, ClaimOutcome, CopyItem, DATA_BYTES_MAX, Epoch, Extent, ExtentClaim, Message, VolumeSlot};
use tokio::sync::{Notify, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::record::{RecordContents, RecordError, RecordFile};
use super::state::{Figures, Geometry, HandoverStep, Knobs, ReadSource, ReplicaState, WriteAccess};
use crate::limits::{
    BACKPRESSURE_WAIT_MAX, CLAIM_EXTENTS_MAX, COPY_BATCH_BLOCKS_MAX, COPY_BATCH_RUNS_MAX, COPY_INFLIGHT_MESSAGES_MAX, COPY_LINGER,
    COPY_SYNC_LINGER, WRITE_GROUP_EXTENTS_MAX,
};
use crate::metrics::ReplicaMetrics;
use crate::peer::link::{LinkError, PeerLink, RequestKind, Session};
use crate::store::{BlockStore, StoreError, ZeroMode};
use crate::volume::{VolumeError, blocking};

/// What a host write does to the store.
#[derive(Clone, Debug)]
pub enum WriteOp {
    /// Write these bytes.
    Data(Bytes),
    /// Discard.
    Trim,
    /// Write zeroes.
    Zero {
        /// Hole allowed or not.
        mode: ZeroMode,
        /// Fail rather than write zeroes slowly.
        fast_only: bool,
    },
}

/// The copy stream's receiving side, per session.
#[derive(Default)]
struct Incoming {
    generation: u64,
    received: u64,
    reported: u64,
    session: Option<Arc<Session>>,
}

/// Replication figures for status.
#[derive(Clone, Debug, Default)]
pub struct ReplicaStatus {
    /// From the state machine.
    pub figures: Figures,
    /// Whether hosts are served.
    pub serving: bool,
    /// Why not, if not.
    pub problem: Option<String>,
}

/// One mirrored volume.
pub struct Replica {
    slot: VolumeSlot,
    name: String,
    geometry: Geometry,
    state: Mutex<ReplicaState>,
    changed: watch::Sender<u64>,
    store: Arc<dyn BlockStore>,
    record: RecordFile,
    persist_lock: tokio::sync::Mutex<()>,
    apply_gate: tokio::sync::RwLock<()>,
    link: Arc<PeerLink>,
    copy_wake: Notify,
    incoming: Mutex<Incoming>,
    incoming_wake: Notify,
    serving: AtomicBool,
    /// The session whose bulk lane carries our copy stream (set with the
    /// state lock held, together with the stream's reset).
    copy_generation: std::sync::atomic::AtomicU64,
    problem: Mutex<Option<String>>,
    peer_timeout: Duration,
    /// The owned-extent limit (from the knobs; fixed), bounding write groups.
    max_owned: usize,
    metrics: ReplicaMetrics,
}

fn unavailable(e: impl std::fmt::Display) -> VolumeError {
    VolumeError::PeerUnavailable(e.to_string())
}

impl Replica {
    /// Opens the replica of a volume: loads its record (refusing a corrupt
    /// one) and restores the state (own claims become suspect: re-sent).
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        slot: VolumeSlot,
        name: &str,
        geometry: Geometry,
        knobs: Knobs,
        store: Arc<dyn BlockStore>,
        record: RecordFile,
        link: Arc<PeerLink>,
        peer_timeout: Duration,
    ) -> Result<Arc<Replica>, RecordError> {
        let contents = record.load()?;
        let state =
            ReplicaState::restore(geometry, knobs, contents.counter, &contents.own, &contents.record, &contents.gives, Instant::now());
        if !contents.own.is_empty() || !contents.record.is_empty() {
            info!(volume = %name, own = contents.own.len(), peer_owned = contents.record.len(), "claims record loaded; own extents will be re-sent");
        }
        Ok(Arc::new(Replica {
            slot,
            name: name.to_string(),
            geometry,
            state: Mutex::new(state),
            changed: watch::channel(0).0,
            store,
            record,
            persist_lock: tokio::sync::Mutex::new(()),
            apply_gate: tokio::sync::RwLock::new(()),
            link,
            copy_wake: Notify::new(),
            incoming: Mutex::new(Incoming::default()),
            incoming_wake: Notify::new(),
            // Not served until the peer confirms the volume matches.
            serving: AtomicBool::new(true),
            copy_generation: std::sync::atomic::AtomicU64::new(0),
            problem: Mutex::new(None),
            peer_timeout,
            max_owned: knobs.max_owned,
            metrics: ReplicaMetrics::new(name),
        }))
    }

    /// Volume name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether hosts are served.
    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Relaxed)
    }

    /// Marks the volume served or not (a mismatch with the peer).
    pub fn set_serving(&self, serving: bool, problem: Option<String>) {
        let was = self.serving.swap(serving, Ordering::Relaxed);
        if was && !serving {
            warn!(volume = %self.name, problem = problem.as_deref().unwrap_or(""), "volume not served: it does not match the peer's");
        } else if !was && serving {
            info!(volume = %self.name, "volume matches the peer's again; serving");
        }
        *self.problem.lock().expect("problem lock") = problem;
    }

    /// Status figures.
    pub fn status(&self) -> ReplicaStatus {
        ReplicaStatus {
            figures: self.state.lock().expect("state lock").figures(),
            serving: self.is_serving(),
            problem: self.problem.lock().expect("problem lock").clone(),
        }
    }

    /// Metric handles.
    pub fn metrics(&self) -> &ReplicaMetrics {
        &self.metrics
    }

    fn bump(&self) {
        self.changed.send_modify(|g| *g = g.wrapping_add(1));
    }

    fn check_serving(&self) -> Result<(), VolumeError> {
        if self.is_serving() {
            Ok(())
        } else {
            Err(VolumeError::NotServing(self.problem.lock().expect("problem lock").clone().unwrap_or_default()))
        }
    }

    /// Starts the background tasks: copy stream, durability reports, timers.
    pub fn start(self: &Arc<Self>, shutdown: CancellationToken) {
        tokio::spawn(self.clone().copy_sender(shutdown.clone()));
        tokio::spawn(self.clone().durability_reporter(shutdown.clone()));
        tokio::spawn(self.clone().ticker(shutdown));
    }

    // ================================================================ host writes

    /// A host write (or trim, or zero-write) of `length` bytes at `offset`.
    pub async fn write(&self, offset: u64, length: u64, op: WriteOp, fua: bool) -> Result<(), VolumeError> {
        self.check_serving()?;
        if length == 0 {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + self.peer_timeout;
        let mut waited = false;
        let g = self.geometry;
        let extents = g.extents_of(offset, length);
        let group = WRITE_GROUP_EXTENTS_MAX.min(self.max_owned as u64).max(1);
        let mut start = *extents.start();
        while start <= *extents.end() {
            let end = (start + group - 1).min(*extents.end());
            let piece_off = offset.max(start * g.extent_bytes);
            let piece_end = (offset + length).min((end + 1) * g.extent_bytes);
            self.acquire(start..=end, deadline, &mut waited).await?;
            let piece_op = match &op {
                WriteOp::Data(d) => WriteOp::Data(d.slice((piece_off - offset) as usize..(piece_end - offset) as usize)),
                other => other.clone(),
            };
            let result = self.store_write(piece_off, piece_end - piece_off, piece_op).await;
            {
                let mut st = self.state.lock().expect("state lock");
                match &result {
                    Ok(()) => st.end_write(piece_off, piece_end - piece_off, Instant::now()),
                    Err(_) => st.abort_write(piece_off, piece_end - piece_off),
                }
            }
            self.bump();
            self.copy_wake.notify_one();
            result?;
            start = end + 1;
        }
        if fua {
            let store = self.store.clone();
            blocking(move || store.sync()).await?;
        }
        if waited {
            self.metrics.claim_round_trips.increment(1);
        }
        Ok(())
    }

    async fn store_write(&self, offset: u64, length: u64, op: WriteOp) -> Result<(), VolumeError> {
        let store = self.store.clone();
        Ok(blocking(move || match op {
            WriteOp::Data(d) => store.write_at(&d, offset),
            WriteOp::Trim => store.trim(offset, length),
            WriteOp::Zero { mode, fast_only } => store.write_zeroes(offset, length, mode, fast_only),
        })
        .await?)
    }

    /// Waits until every extent of `range` is owned and admits the write.
    async fn acquire(
        &self,
        range: std::ops::RangeInclusive<u64>,
        deadline: tokio::time::Instant,
        waited: &mut bool,
    ) -> Result<(), VolumeError> {
        enum Next {
            Admitted,
            Wait,
            NeedSession,
            Reply(Arc<Session>, u64, oneshot::Receiver<Result<Message, LinkError>>),
        }
        // Writes are admitted only outside a handover's application (which
        // holds the gate until the new ownership is durable); the gate is
        // never held across a wait.
        // The common case: every extent already owned, no message needed.
        {
            let _gate = self.apply_gate.read().await;
            let mut st = self.state.lock().expect("state lock");
            if st.would_admit(range.clone()) {
                let admitted = st.begin_write(range.clone(), Instant::now());
                assert_eq!(admitted, WriteAccess::Admitted, "would_admit and begin_write disagree");
                return Ok(());
            }
        }
        let patience = tokio::time::Instant::now() + BACKPRESSURE_WAIT_MAX;
        loop {
            let mut changed = self.changed.subscribe();
            let session = self.link.current();
            let permit = match &session {
                Some(s) => s.permit().await.ok(),
                None => None,
            };
            let gate = self.apply_gate.read().await;
            let next = {
                let mut st = self.state.lock().expect("state lock");
                let now = Instant::now();
                match (permit, &session) {
                    (Some(permit), Some(session)) => match st.begin_write(range.clone(), now) {
                        WriteAccess::Admitted => Next::Admitted,
                        WriteAccess::Wait => Next::Wait,
                        WriteAccess::Claim(extents) => {
                            *waited = true;
                            let counter = st.counter();
                            let volume = self.slot;
                            let list = extents.clone();
                            let (id, rx) = session.request(permit, self.link.ids(), volume, RequestKind::Claim(extents), |id| {
                                Message::Claim { id, volume, counter, extents: list }
                            });
                            Next::Reply(session.clone(), id, rx)
                        }
                        WriteAccess::Handover(extent) => {
                            *waited = true;
                            let counter = st.counter();
                            let volume = self.slot;
                            let (id, rx) = session.request(permit, self.link.ids(), volume, RequestKind::Handover(extent), |id| {
                                Message::Handover { id, volume, counter, extent }
                            });
                            Next::Reply(session.clone(), id, rx)
                        }
                    },
                    _ if st.would_admit(range.clone()) => {
                        let admitted = st.begin_write(range.clone(), now);
                        assert_eq!(admitted, WriteAccess::Admitted, "would_admit and begin_write disagree");
                        Next::Admitted
                    }
                    _ => Next::NeedSession,
                }
            };
            drop(gate);
            // begin_write may have released an extent to make room.
            self.copy_wake.notify_one();
            match next {
                Next::Admitted => return Ok(()),
                Next::Wait => {
                    // Back-pressure (the limit, with the copy stream still
                    // busy) or another request acting on the extent: while
                    // the link is up progress is coming, so the wait is
                    // bounded by BACKPRESSURE_WAIT_MAX rather than peer_timeout.
                    let limit = if self.link.current().is_some() { patience } else { deadline };
                    if tokio::time::timeout_at(limit.min(patience), changed.changed()).await.is_err() {
                        return Err(unavailable(format!("no extent of {range:?} could be owned in time")));
                    }
                }
                Next::NeedSession => {
                    self.link.ready_session(deadline).await.map_err(unavailable)?;
                }
                Next::Reply(session, id, rx) => {
                    if let Some(kind) = session.settle_if_closed(id) {
                        self.on_request_failed(&kind);
                    }
                    match tokio::time::timeout_at(deadline, rx).await {
                        Ok(Ok(Ok(_))) => {}
                        Ok(Ok(Err(LinkError::Down))) | Ok(Err(_)) => {
                            if tokio::time::Instant::now() >= deadline {
                                return Err(unavailable("the link to the peer went down"));
                            }
                        }
                        Ok(Ok(Err(e))) => return Err(unavailable(e)),
                        Err(_) => return Err(unavailable(format!("the peer did not answer within {:?}", self.peer_timeout))),
                    }
                }
            }
        }
    }

    // ================================================================ host reads

    /// A host read.
    pub async fn read(&self, offset: u64, length: u32) -> Result<Bytes, VolumeError> {
        self.check_serving()?;
        let g = self.geometry;
        let all_local = {
            let st = self.state.lock().expect("state lock");
            g.extents_of(offset, length.into()).all(|e| st.read_source(Extent(e)) == ReadSource::Local)
        };
        if all_local {
            return self.read_local(offset, length as usize).await;
        }
        let mut buf = BytesMut::with_capacity(length as usize);
        let end = offset + u64::from(length);
        let mut at = offset;
        while at < end {
            let piece_end = end.min((at / g.extent_bytes + 1) * g.extent_bytes);
            let piece = self.read_piece(at, (piece_end - at) as u32).await?;
            buf.extend_from_slice(&piece);
            at = piece_end;
        }
        Ok(buf.freeze())
    }

    async fn read_local(&self, offset: u64, length: usize) -> Result<Bytes, VolumeError> {
        let store = self.store.clone();
        Ok(blocking(move || {
            let mut buf = BytesMut::zeroed(length);
            store.read_at(&mut buf, offset).map(|()| buf.freeze())
        })
        .await?)
    }

    /// Reads a range within one extent, pulling it if the peer owns it.
    async fn read_piece(&self, offset: u64, length: u32) -> Result<Bytes, VolumeError> {
        let deadline = tokio::time::Instant::now() + self.peer_timeout;
        let extent = Extent(offset / self.geometry.extent_bytes);
        loop {
            let session = self.link.current();
            let permit = match &session {
                Some(s) => s.permit().await.ok(),
                None => None,
            };
            let request = {
                let st = self.state.lock().expect("state lock");
                match (st.read_source(extent), permit, &session) {
                    (ReadSource::Local, _, _) => None,
                    (ReadSource::Peer, Some(permit), Some(session)) => {
                        let volume = self.slot;
                        let (id, rx) = session.request(permit, self.link.ids(), volume, RequestKind::Pull, |id| Message::Pull {
                            id,
                            volume,
                            offset,
                            length,
                        });
                        Some(Some((session.clone(), id, rx)))
                    }
                    (ReadSource::Peer, _, _) => Some(None),
                }
            };
            match request {
                None => return self.read_local(offset, length as usize).await,
                Some(None) => {
                    self.link.ready_session(deadline).await.map_err(unavailable)?;
                }
                Some(Some((session, id, rx))) => {
                    session.settle_if_closed(id);
                    let answer = tokio::time::timeout_at(deadline, rx).await;
                    match answer {
                        Ok(Ok(Ok(Message::PullReply { data: Some(data), .. }))) if data.len() == length as usize => {
                            self.metrics.pulls.increment(1);
                            return Ok(data);
                        }
                        Ok(Ok(Ok(_))) => {
                            // The peer no longer holds the newest data: ownership
                            // moved; look again after the state settles.
                            let mut changed = self.changed.subscribe();
                            let _ = tokio::time::timeout(Duration::from_millis(5), changed.changed()).await;
                        }
                        Ok(Ok(Err(LinkError::Down))) | Ok(Err(_)) => {}
                        Ok(Ok(Err(e))) => return Err(unavailable(e)),
                        Err(_) => return Err(unavailable(format!("the peer did not answer a pull within {:?}", self.peer_timeout))),
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(unavailable(format!("extent {} is owned by the peer, which is unreachable", extent.0)));
            }
        }
    }

    /// Makes completed writes durable locally.
    pub async fn flush(&self) -> Result<(), VolumeError> {
        let store = self.store.clone();
        Ok(blocking(move || store.sync()).await?)
    }

    // ================================================================ session start

    /// Sends our view of the claims (dialer, at session start).
    pub async fn send_sync(&self, session: &Arc<Session>) -> Result<oneshot::Receiver<Result<Message, LinkError>>, LinkError> {
        let permit = session.permit().await?;
        let st = self.state.lock().expect("state lock");
        let (own, record) = st.snapshot();
        let gives = st.gives();
        let counter = st.counter();
        let volume = self.slot;
        Ok(session
            .request(permit, self.link.ids(), volume, RequestKind::Sync, |id| Message::Sync { id, volume, counter, own, record, gives })
            .1)
    }

    /// The peer's view of the claims (accepter, at session start).
    #[allow(clippy::too_many_arguments)]
    pub async fn on_sync_request(
        &self,
        session: &Arc<Session>,
        id: u64,
        counter: Epoch,
        own: &[ExtentClaim],
        record: &[ExtentClaim],
        gives: &[ExtentClaim],
    ) {
        let _gate = self.apply_gate.write().await;
        let Ok(permit) = session.permit().await else { return };
        {
            let mut st = self.state.lock().expect("state lock");
            st.on_sync(counter, own, record, gives, Instant::now());
            let (own, record) = st.snapshot();
            let gives = st.gives();
            session.send(permit, Message::SyncReply { id, counter: st.counter(), own, record, gives });
        }
        self.bump();
        self.copy_wake.notify_one();
        self.persist_logged().await;
    }

    /// A new session is ready: the copy stream starts over on it.
    pub fn on_session_start(&self, session: &Arc<Session>) {
        {
            let mut st = self.state.lock().expect("state lock");
            st.on_copy_session_reset();
            self.copy_generation.store(session.generation, Ordering::Relaxed);
        }
        self.copy_wake.notify_one();
        self.bump();
    }

    // ================================================================ answers to our requests

    /// Applies the answer to one of our requests (called by the reader, in order).
    pub async fn on_reply(&self, session: &Arc<Session>, kind: &RequestKind, reply: &Message) {
        match (kind, reply) {
            (RequestKind::Claim(extents), Message::ClaimReply { outcomes, counter, .. }) => {
                self.state.lock().expect("state lock").on_claim_reply(extents, outcomes, *counter, Instant::now());
                self.bump();
                // Own claims are persisted lazily (the peer's record is the authority).
            }
            (RequestKind::Handover(extent), Message::HandoverReply { granted, counter, blocks, .. }) => {
                match granted {
                    Some(epoch) => {
                        let _gate = self.apply_gate.write().await;
                        if let Err(e) = self.apply_handover_blocks(*extent, blocks).await {
                            warn!(volume = %self.name, extent = extent.0, error = %e, "handover blocks could not be applied");
                            self.state.lock().expect("state lock").on_handover_failed(*extent);
                            self.bump();
                            return;
                        }
                        self.state.lock().expect("state lock").on_handover_reply(*extent, Some(*epoch), *counter, Instant::now());
                        self.metrics.handovers.increment(1);
                        // Our ownership must survive a crash before we write
                        // under it (writes wait for the gate we hold), and
                        // before the giver forgets what it gave.
                        if self.persist().await.is_ok() {
                            if let Ok(permit) = session.permit().await {
                                session.send(permit, Message::HandoverAck { volume: self.slot, extent: *extent, epoch: *epoch });
                            }
                        } else {
                            error!(volume = %self.name, extent = extent.0, "failed to persist a handover; the giver will revoke it at the next session");
                        }
                    }
                    None => self.state.lock().expect("state lock").on_handover_reply(*extent, None, *counter, Instant::now()),
                }
                self.bump();
            }
            (RequestKind::Sync, Message::SyncReply { counter, own, record, gives, .. }) => {
                let _gate = self.apply_gate.write().await;
                self.state.lock().expect("state lock").on_sync(*counter, own, record, gives, Instant::now());
                self.bump();
                self.copy_wake.notify_one();
                self.persist_logged().await;
            }
            (RequestKind::Pull, Message::PullReply { .. }) | (RequestKind::Heartbeat, Message::HeartbeatReply { .. }) => {}
            (kind, other) => {
                warn!(volume = %self.name, ?kind, reply = ?other.id(), "answer does not match the request");
                self.on_request_failed(kind);
            }
        }
    }

    async fn apply_handover_blocks(&self, extent: Extent, runs: &[BlockRun]) -> Result<(), String> {
        let g = self.geometry;
        let range = g.blocks_in(extent);
        for run in runs {
            let count = run.data.len() as u64 / g.block_bytes;
            if !(run.data.len() as u64).is_multiple_of(g.block_bytes) || run.first.0 < range.start || run.first.0 + count > range.end {
                return Err(format!("run at block {} of {} bytes is outside extent {}", run.first.0, run.data.len(), extent.0));
            }
        }
        let store = self.store.clone();
        let runs = runs.to_vec();
        let block = g.block_bytes;
        blocking(move || {
            for run in &runs {
                store.write_at(&run.data, run.first.0 * block)?;
            }
            store.sync()
        })
        .await
        .map_err(|e| e.to_string())
    }

    /// A request of ours failed without an answer.
    pub fn on_request_failed(&self, kind: &RequestKind) {
        {
            let mut st = self.state.lock().expect("state lock");
            match kind {
                RequestKind::Claim(extents) => st.on_claim_failed(extents),
                RequestKind::Handover(extent) => st.on_handover_failed(*extent),
                _ => {}
            }
        }
        self.bump();
    }

    // ================================================================ the peer's requests

    /// The peer claims extents: record them durably, then grant.
    pub async fn on_claim_request(self: &Arc<Self>, session: &Arc<Session>, id: u64, counter: Epoch, extents: &[Extent]) {
        let Ok(permit) = session.permit().await else { return };
        if extents.is_empty() || extents.len() > CLAIM_EXTENTS_MAX {
            session.send(permit, Message::Error { id, message: format!("a claim names 1 to {CLAIM_EXTENTS_MAX} extents") });
            return;
        }
        let (slot, outcomes, counter) = {
            let mut st = self.state.lock().expect("state lock");
            let outcomes = st.on_claim_request(extents, counter);
            (session.reserve(permit), outcomes, st.counter())
        };
        self.bump();
        let granted = outcomes.iter().filter(|o| matches!(o, ClaimOutcome::Granted(_))).count();
        let me = self.clone();
        tokio::spawn(async move {
            let outcomes = match me.persist().await {
                Ok(()) => {
                    me.metrics.claims_granted.increment(granted as u64);
                    outcomes
                }
                Err(e) => {
                    error!(volume = %me.name, error = %e, "failed to persist the claims record; declining the claim");
                    vec![ClaimOutcome::Declined; outcomes.len()]
                }
            };
            let _ = slot.send(Message::ClaimReply { id, counter, outcomes });
        });
    }

    /// The peer asks for an extent we own.
    pub async fn on_handover_request(self: &Arc<Self>, session: &Arc<Session>, id: u64, counter: Epoch, extent: Extent) {
        if extent.0 >= self.geometry.extents() {
            if let Ok(permit) = session.permit().await {
                session.send(permit, Message::Error { id, message: format!("extent {} is outside the volume", extent.0) });
            }
            return;
        }
        loop {
            let mut changed = self.changed.subscribe();
            let Ok(permit) = session.permit().await else {
                self.state.lock().expect("state lock").abandon_handover(extent);
                self.bump();
                return;
            };
            let (step, slot, counter_now) = {
                let mut st = self.state.lock().expect("state lock");
                let step = st.on_handover_request(extent, counter);
                let counter_now = st.counter();
                match step {
                    HandoverStep::NotOwner => {
                        session.send(permit, Message::HandoverReply { id, counter: counter_now, granted: None, blocks: vec![] });
                        (step, None, counter_now)
                    }
                    HandoverStep::WaitForWrites => (step, None, counter_now),
                    HandoverStep::Give { .. } => (step, Some(session.reserve(permit)), counter_now),
                }
            };
            self.bump();
            match step {
                HandoverStep::NotOwner => return,
                HandoverStep::WaitForWrites => {
                    tokio::select! {
                        _ = session.closed() => {
                            self.state.lock().expect("state lock").abandon_handover(extent);
                            self.bump();
                            return;
                        }
                        _ = changed.changed() => {}
                    }
                }
                HandoverStep::Give { epoch, blocks } => {
                    let slot = slot.expect("reserved for a give");
                    if let Err(e) = self.persist().await {
                        // The record could not say the peer owns it; the state
                        // does. Reads then pull from the peer, which is safe.
                        error!(volume = %self.name, error = %e, "failed to persist the claims record during a handover");
                    }
                    let runs = match self.read_runs(&blocks).await {
                        Ok(runs) => runs,
                        Err(e) => {
                            error!(volume = %self.name, extent = extent.0, error = %e, "failed to read blocks for a handover");
                            Vec::new()
                        }
                    };
                    let _ = slot.send(Message::HandoverReply { id, counter: counter_now, granted: Some(epoch), blocks: runs });
                    return;
                }
            }
        }
    }

    /// Reads blocks as runs of consecutive blocks.
    async fn read_runs(&self, blocks: &[BlockIndex]) -> Result<Vec<BlockRun>, StoreError> {
        let mut spans: Vec<(u64, u64)> = Vec::new();
        for b in blocks {
            match spans.last_mut() {
                Some((first, count)) if *first + *count == b.0 => *count += 1,
                _ => spans.push((b.0, 1)),
            }
        }
        let store = self.store.clone();
        let block = self.geometry.block_bytes;
        blocking(move || {
            spans
                .into_iter()
                .map(|(first, count)| {
                    let mut buf = BytesMut::zeroed((count * block) as usize);
                    store.read_at(&mut buf, first * block)?;
                    Ok(BlockRun { first: BlockIndex(first), data: buf.freeze() })
                })
                .collect()
        })
        .await
    }

    /// The peer reads from an extent it believes we own.
    pub async fn on_pull_request(&self, session: &Arc<Session>, id: u64, offset: u64, length: u32) {
        let Ok(permit) = session.permit().await else { return };
        let g = self.geometry;
        let in_range = length > 0
            && (length as usize) <= DATA_BYTES_MAX
            && offset.checked_add(length.into()).is_some_and(|end| end <= g.size)
            && offset / g.extent_bytes == (offset + u64::from(length) - 1) / g.extent_bytes;
        if !in_range {
            session.send(permit, Message::Error { id, message: format!("pull of {length} bytes at {offset} is out of range") });
            return;
        }
        let slot = {
            let st = self.state.lock().expect("state lock");
            if st.can_serve_pull(Extent(offset / g.extent_bytes)) {
                Some(session.reserve(permit))
            } else {
                session.send(permit, Message::PullReply { id, data: None });
                None
            }
        };
        if let Some(slot) = slot {
            let data = self.read_local(offset, length as usize).await.ok();
            let _ = slot.send(Message::PullReply { id, data });
        }
    }

    /// The peer applied a handover we gave.
    pub fn on_handover_ack(&self, extent: Extent, epoch: Epoch) {
        self.state.lock().expect("state lock").on_handover_ack(extent, epoch);
    }

    /// The peer released extents.
    pub fn on_release(&self, extents: &[ExtentClaim]) {
        self.state.lock().expect("state lock").on_release(extents);
        self.bump();
    }

    // ================================================================ copy stream, receiving side

    /// Applies one copy message from the peer; runs whose epoch is stale
    /// are dropped. Malformed runs close the session (the caller's error).
    pub async fn apply_copy(&self, session: &Arc<Session>, seq: u64, items: Vec<CopyItem>) -> Result<(), String> {
        let g = self.geometry;
        if items.is_empty() {
            return Err("empty copy".into());
        }
        for item in &items {
            let count = u64::from(item.count);
            let range = g.blocks_in(item.extent);
            if count == 0 || item.extent.0 >= g.extents() || item.first.0 < range.start || item.first.0 + count > range.end {
                return Err(format!("copy of blocks {}+{count} is outside extent {}", item.first.0, item.extent.0));
            }
            if !item.data.is_empty() && item.data.len() as u64 != count * g.block_bytes {
                return Err(format!("copy of {count} blocks carries {} bytes", item.data.len()));
            }
        }
        {
            let _gate = self.apply_gate.read().await;
            let (accepted, stale): (Vec<CopyItem>, Vec<CopyItem>) = {
                let st = self.state.lock().expect("state lock");
                items.into_iter().partition(|item| st.accept_copy(item.extent, item.epoch))
            };
            self.metrics.copies_stale.increment(stale.len() as u64);
            if !accepted.is_empty() {
                let applied = accepted.len() as u64;
                let store = self.store.clone();
                let block = g.block_bytes;
                let result = blocking(move || {
                    for item in accepted {
                        let (offset, length) = (item.first.0 * block, u64::from(item.count) * block);
                        if item.data.is_empty() {
                            store.write_zeroes(offset, length, ZeroMode::MayUnmap, false)?;
                        } else {
                            store.write_at(&item.data, offset)?;
                        }
                    }
                    Ok::<(), StoreError>(())
                })
                .await;
                if let Err(e) = result {
                    error!(volume = %self.name, error = %e, "failed to apply a copy from the peer");
                    return Err(format!("store failure: {e}"));
                }
                self.metrics.copies_applied.increment(applied);
            }
        }
        {
            let mut inc = self.incoming.lock().expect("incoming lock");
            if inc.generation != session.generation {
                *inc = Incoming { generation: session.generation, received: 0, reported: 0, session: Some(session.clone()) };
            }
            inc.received = inc.received.max(seq);
        }
        self.incoming_wake.notify_one();
        Ok(())
    }

    /// Makes applied copies durable and reports it, grouping many copies
    /// into one fdatasync.
    async fn durability_reporter(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.incoming_wake.notified() => {}
            }
            // Let more copies arrive: one fdatasync for all of them.
            tokio::time::sleep(COPY_SYNC_LINGER).await;
            let (generation, received, durable, session) = {
                let inc = self.incoming.lock().expect("incoming lock");
                if inc.received == inc.reported {
                    continue;
                }
                (inc.generation, inc.received, inc.reported, inc.session.clone())
            };
            let Some(session) = session else { continue };
            // Received (in our page cache) now; durable after the fdatasync.
            if let Some(bulk) = session.bulk() {
                let _ = bulk.send(Message::CopyProgress { volume: self.slot, received, durable }.encode()).await;
            }
            let store = self.store.clone();
            if let Err(e) = blocking(move || store.sync()).await {
                error!(volume = %self.name, error = %e, "fdatasync of copies failed");
                continue;
            }
            {
                let mut inc = self.incoming.lock().expect("incoming lock");
                if inc.generation == generation {
                    inc.reported = received;
                }
            }
            if let Some(bulk) = session.bulk() {
                let _ = bulk.send(Message::CopyProgress { volume: self.slot, received, durable: received }.encode()).await;
            }
            // More may have arrived while we synced.
            self.incoming_wake.notify_one();
        }
    }

    // ================================================================ copy stream, sending side

    /// The peer reports copies received (in its memory) and durable.
    pub fn on_copy_progress(&self, session: &Arc<Session>, received: u64, durable: u64) {
        if self.link.current().is_some_and(|s| Arc::ptr_eq(&s, session)) {
            let mut st = self.state.lock().expect("state lock");
            st.on_copy_received(received);
            st.on_copy_durable(durable);
            drop(st);
            self.bump();
            self.copy_wake.notify_one();
        }
    }

    async fn copy_sender(self: Arc<Self>, shutdown: CancellationToken) {
        let mut sessions = self.link.subscribe();
        loop {
            let session = loop {
                if let Some(s) = sessions.borrow_and_update().clone().filter(|s| !s.is_closed()) {
                    break s;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = sessions.changed() => if r.is_err() { return },
                }
            };
            let Some(bulk) = (tokio::select! { _ = shutdown.cancelled() => return, b = session.bulk_ready() => b }) else {
                continue;
            };
            if self.send_copies(&session, &bulk, &shutdown).await.is_err() {
                return;
            }
            // The session ended or was superseded: wait for the next one.
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = sessions.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        }
    }

    /// Sends copies and releases on one session until it ends (Ok) or the
    /// node shuts down (Err).
    async fn send_copies(
        &self,
        session: &Arc<Session>,
        bulk: &tokio::sync::mpsc::Sender<Bytes>,
        shutdown: &CancellationToken,
    ) -> Result<(), ()> {
        let g = self.geometry;
        loop {
            if session.is_closed() {
                return Ok(());
            }
            let (releases, seq, runs) = {
                let mut st = self.state.lock().expect("state lock");
                if self.copy_generation.load(Ordering::Relaxed) != session.generation {
                    // A newer session restarted the stream: copies taken now
                    // belong to it, not to this one.
                    return Ok(());
                }
                let releases = st.take_releases();
                let runs = if st.copies_in_flight() < COPY_INFLIGHT_MESSAGES_MAX {
                    st.next_copy_batch(COPY_BATCH_BLOCKS_MAX, COPY_BATCH_RUNS_MAX)
                } else {
                    Vec::new()
                };
                (releases, runs.first().map(|r| r.seq), runs)
            };
            if !releases.is_empty() {
                self.metrics.releases.increment(releases.len() as u64);
                let frame = Message::Release { volume: self.slot, extents: releases }.encode();
                self.metrics.bulk_sent_bytes.increment(frame.len() as u64 + 4);
                if bulk.send(frame).await.is_err() {
                    return Ok(());
                }
            }
            let Some(seq) = seq else {
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(()),
                    _ = session.closed() => return Ok(()),
                    _ = self.copy_wake.notified() => {
                        // Writes are trickling in: gather a few into one message.
                        tokio::time::sleep(COPY_LINGER).await;
                    }
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
                continue;
            };
            let store = self.store.clone();
            let block = g.block_bytes;
            let spans: Vec<(u64, u64)> = runs.iter().map(|r| (r.first.0, r.count)).collect();
            let data = match blocking(move || {
                spans
                    .into_iter()
                    .map(|(first, count)| {
                        let mut buf = BytesMut::zeroed((count * block) as usize);
                        store.read_at(&mut buf, first * block).map(|()| buf.freeze())
                    })
                    .collect::<Result<Vec<Bytes>, StoreError>>()
            })
            .await
            {
                Ok(d) => d,
                Err(e) => {
                    error!(volume = %self.name, error = %e, "failed to read blocks for the copy stream");
                    return Ok(());
                }
            };
            let items: Vec<CopyItem> = runs
                .iter()
                .zip(data)
                .map(|(run, data)| {
                    let zeroes = data.iter().all(|&b| b == 0);
                    if !zeroes {
                        self.metrics.copy_sent_bytes.increment(data.len() as u64);
                    }
                    CopyItem {
                        extent: run.extent,
                        epoch: run.epoch,
                        first: run.first,
                        count: run.count as u32,
                        data: if zeroes { Bytes::new() } else { data },
                    }
                })
                .collect();
            let frame = Message::Copy { seq, volume: self.slot, items }.encode();
            // The frame as it goes on the wire (plus its 4-byte length; TLS adds ~22 bytes per record).
            self.metrics.bulk_sent_bytes.increment(frame.len() as u64 + 4);
            if bulk.send(frame).await.is_err() {
                return Ok(());
            }
        }
    }

    // ================================================================ timers and the record

    async fn ticker(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let link_up = self.link.current().is_some();
            let figures = {
                let mut st = self.state.lock().expect("state lock");
                // Releasing while the peer is unreachable would only make the
                // next session re-adopt (and re-send) the extent.
                if link_up && st.release_idle(Instant::now()) > 0 {
                    self.copy_wake.notify_one();
                }
                st.figures()
            };
            let block = self.geometry.block_bytes as f64;
            self.metrics.owned.set(figures.owned_extents as f64);
            self.metrics.peer_owned.set(figures.peer_owned_extents as f64);
            self.metrics.unsent.set(figures.unsent_blocks as f64 * block);
            self.metrics.not_durable.set(figures.not_durable_blocks as f64 * block);
            self.persist_logged().await;
        }
    }

    /// Rewrites the record if it changed since the last write; concurrent
    /// callers share one write (group commit).
    async fn persist(&self) -> Result<(), RecordError> {
        let _one_at_a_time = self.persist_lock.lock().await;
        let contents = {
            let mut st = self.state.lock().expect("state lock");
            if !st.take_record_changed() {
                return Ok(());
            }
            let (own, record) = st.snapshot();
            RecordContents { counter: st.counter(), own, record, gives: st.gives() }
        };
        let file = self.record.clone();
        let result = blocking(move || file.store(&contents)).await;
        if result.is_err() {
            self.state.lock().expect("state lock").mark_record_changed();
        }
        result
    }

    async fn persist_logged(&self) {
        if let Err(e) = self.persist().await {
            error!(volume = %self.name, error = %e, "failed to write the claims record");
        }
    }
}
