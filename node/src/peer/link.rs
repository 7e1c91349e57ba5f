//! The link to the peer node: two mutually authenticated TLS connections,
//! a priority lane (claims, handovers, pulls, sync, heartbeats) and a bulk
//! lane (copy stream, progress, releases).
//!
//! One node dials both connections (the one whose name sorts first); the
//! other accepts. Each connection carries both directions, so every
//! message a node sends on a lane reaches the peer in the order the node's
//! state machine produced it. That order matters: a handover reply must not
//! be overtaken by a later request for the same extent. Messages are
//! therefore queued in an [`Outbox`] while the volume's state lock is held;
//! a reply that still needs I/O (a durable record, block data) reserves its
//! place in the queue and is filled in later. Incoming priority messages are
//! applied to the state in arrival order by one reader task.
//!
//! A session is ready for requests once the dialer's `Sync` of every volume
//! has been answered; until then, and while the link is down, requests wait
//! for a ready session up to `peer_timeout`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use futures::{SinkExt, StreamExt};
use geomirror_wire::peer::{Extent, Lane, Message, PROTOCOL_VERSION, VolumeInfo, VolumeSlot, codec};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::tls::PeerTls;
use crate::claims::replica::Replica;
use crate::limits::{BULK_QUEUE_MESSAGES_MAX, OUTBOX_MESSAGES_MAX, PEER_BACKOFF_MAX, PEER_CONNECT_TIMEOUT};

/// Sync exchanges per volume at session start.
const SYNC_ROUNDS: usize = 2;

/// Settings of the link, from `[peer]`.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// This node's name.
    pub own_name: String,
    /// The peer's name.
    pub peer_name: String,
    /// Where we accept the peer.
    pub listen: SocketAddr,
    /// Where we reach the peer.
    pub connect: SocketAddr,
    /// How long requests wait for the peer.
    pub peer_timeout: Duration,
    /// Heartbeat period.
    pub heartbeat_interval: Duration,
}

impl LinkConfig {
    /// Whether this node dials (its name sorts first).
    pub fn dials(&self) -> bool {
        self.own_name < self.peer_name
    }
}

/// Why a request to the peer failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum LinkError {
    /// No ready session within the deadline.
    #[error("peer `{0}` is unreachable")]
    Unreachable(String),
    /// The session ended before the answer came.
    #[error("the link to the peer went down")]
    Down,
    /// No answer within the deadline.
    #[error("the peer did not answer in time")]
    Timeout,
    /// The peer answered with an error.
    #[error("the peer refused: {0}")]
    Refused(String),
}

/// What a pending request was, so its answer (or its failure) can be
/// applied to the volume's state by the reader.
#[derive(Clone, Debug)]
pub enum RequestKind {
    /// A claim of these extents.
    Claim(Vec<Extent>),
    /// A handover of this extent.
    Handover(Extent),
    /// A pull.
    Pull,
    /// A session-start sync.
    Sync,
    /// A heartbeat.
    Heartbeat,
}

struct Pending {
    volume: VolumeSlot,
    kind: RequestKind,
    reply: oneshot::Sender<Result<Message, LinkError>>,
}

enum Slot {
    Ready(Message, OwnedSemaphorePermit),
    Later(oneshot::Receiver<Message>, OwnedSemaphorePermit),
}

/// A place in the priority lane's outgoing queue.
pub struct OutboxPermit(OwnedSemaphorePermit);

/// A reserved place in the queue, to be filled with the message later; if
/// dropped unfilled, the place is skipped.
pub type Reserved = oneshot::Sender<Message>;

/// One connected session with the peer.
pub struct Session {
    /// Distinguishes sessions (copy streams restart per session).
    pub generation: u64,
    outbox: mpsc::UnboundedSender<Slot>,
    outbox_room: Arc<Semaphore>,
    bulk: watch::Sender<Option<mpsc::Sender<Bytes>>>,
    pending: DashMap<u64, Pending>,
    closed: CancellationToken,
    synced: AtomicUsize,
}

impl Session {
    fn new(generation: u64) -> (Arc<Session>, mpsc::UnboundedReceiver<Slot>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let session = Arc::new(Session {
            generation,
            outbox: tx,
            outbox_room: Arc::new(Semaphore::new(OUTBOX_MESSAGES_MAX)),
            bulk: watch::channel(None).0,
            pending: DashMap::new(),
            closed: CancellationToken::new(),
            synced: AtomicUsize::new(0),
        });
        (session, rx)
    }

    /// Waits for room in the priority queue (back-pressure, bounded).
    pub async fn permit(&self) -> Result<OutboxPermit, LinkError> {
        tokio::select! {
            _ = self.closed.cancelled() => Err(LinkError::Down),
            p = self.outbox_room.clone().acquire_owned() => p.map(OutboxPermit).map_err(|_| LinkError::Down),
        }
    }

    /// Queues a message now (call with the volume's state lock held when
    /// its order relative to state changes matters).
    pub fn send(&self, permit: OutboxPermit, message: Message) {
        let _ = self.outbox.send(Slot::Ready(message, permit.0));
    }

    /// Reserves the next place in the queue for a message produced later.
    pub fn reserve(&self, permit: OutboxPermit) -> Reserved {
        let (tx, rx) = oneshot::channel();
        let _ = self.outbox.send(Slot::Later(rx, permit.0));
        tx
    }

    /// Registers a request and queues it; the answer arrives on the
    /// returned channel after the reader has applied it to the state.
    pub fn request(
        &self,
        permit: OutboxPermit,
        next_id: &AtomicU64,
        volume: VolumeSlot,
        kind: RequestKind,
        make: impl FnOnce(u64) -> Message,
    ) -> (u64, oneshot::Receiver<Result<Message, LinkError>>) {
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.insert(id, Pending { volume, kind, reply: tx });
        self.send(permit, make(id));
        (id, rx)
    }

    /// Takes back a pending request that the session's clean-up may have
    /// missed (it was registered as the session closed); the caller then
    /// applies its failure. The clean-up sets `closed` before draining, so
    /// one of the two always finds it.
    pub fn settle_if_closed(&self, id: u64) -> Option<RequestKind> {
        if !self.is_closed() {
            return None;
        }
        self.pending.remove(&id).map(|(_, p)| {
            let _ = p.reply.send(Err(LinkError::Down));
            p.kind
        })
    }

    /// The bulk lane's sender (of encoded messages, so the encoding happens
    /// on the producer's task), once attached.
    pub fn bulk(&self) -> Option<mpsc::Sender<Bytes>> {
        self.bulk.borrow().clone()
    }

    /// Waits until the bulk lane is attached or the session ends.
    pub async fn bulk_ready(&self) -> Option<mpsc::Sender<Bytes>> {
        let mut rx = self.bulk.subscribe();
        loop {
            if let Some(tx) = rx.borrow_and_update().clone() {
                return Some(tx);
            }
            tokio::select! {
                _ = self.closed.cancelled() => return None,
                r = rx.changed() => if r.is_err() { return None },
            }
        }
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Resolves when the session ends.
    pub async fn closed(&self) {
        self.closed.cancelled().await
    }
}

/// Link state for `/status`.
#[derive(Clone, Debug)]
pub struct LinkStatus {
    /// `up`, `connecting` or `down`.
    pub state: &'static str,
    /// When it entered that state.
    pub since: Instant,
    /// The last reason it went down or failed to come up.
    pub last_error: Option<String>,
}

/// The link to the peer, shared by all volumes.
pub struct PeerLink {
    /// Settings.
    pub config: LinkConfig,
    tls: PeerTls,
    volumes: Vec<VolumeInfo>,
    replicas: OnceLock<Vec<Arc<Replica>>>,
    ready: watch::Sender<Option<Arc<Session>>>,
    accepting: Mutex<Option<Arc<Session>>>,
    next_id: AtomicU64,
    generation: AtomicU64,
    status: Mutex<LinkStatus>,
}

impl PeerLink {
    /// A link for `volumes` (by slot); call [`attach`](Self::attach) next.
    pub fn new(config: LinkConfig, tls: PeerTls, volumes: Vec<VolumeInfo>) -> Arc<PeerLink> {
        Arc::new(PeerLink {
            config,
            tls,
            volumes,
            replicas: OnceLock::new(),
            ready: watch::channel(None).0,
            accepting: Mutex::new(None),
            next_id: AtomicU64::new(1),
            generation: AtomicU64::new(1),
            status: Mutex::new(LinkStatus { state: "down", since: Instant::now(), last_error: None }),
        })
    }

    /// Gives the link its replicas (by slot).
    pub fn attach(&self, replicas: Vec<Arc<Replica>>) {
        assert_eq!(replicas.len(), self.volumes.len(), "one replica per volume");
        if self.replicas.set(replicas).is_err() {
            panic!("replicas attached twice");
        }
    }

    fn replicas(&self) -> &[Arc<Replica>] {
        self.replicas.get().map(Vec::as_slice).unwrap_or(&[])
    }

    fn replica(&self, slot: VolumeSlot) -> Option<&Arc<Replica>> {
        self.replicas().get(slot as usize)
    }

    /// The request id counter.
    pub fn ids(&self) -> &AtomicU64 {
        &self.next_id
    }

    /// The ready session, if any.
    pub fn current(&self) -> Option<Arc<Session>> {
        self.ready.borrow().clone().filter(|s| !s.is_closed())
    }

    /// Waits for a ready session until `deadline`.
    pub async fn ready_session(&self, deadline: tokio::time::Instant) -> Result<Arc<Session>, LinkError> {
        let mut rx = self.ready.subscribe();
        loop {
            if let Some(s) = rx.borrow_and_update().clone().filter(|s| !s.is_closed()) {
                return Ok(s);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return Err(LinkError::Unreachable(self.config.peer_name.clone())),
            }
        }
    }

    /// Waits for any change of the ready session (for tasks that follow it).
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Session>>> {
        self.ready.subscribe()
    }

    /// Link state for status.
    pub fn status(&self) -> LinkStatus {
        self.status.lock().expect("status lock").clone()
    }

    fn set_status(&self, state: &'static str, error: Option<String>) {
        let mut s = self.status.lock().expect("status lock");
        if s.state != state {
            s.state = state;
            s.since = Instant::now();
        }
        if error.is_some() {
            s.last_error = error;
        }
    }

    /// Runs the link until `shutdown`: accepts the peer, and dials it if we
    /// are the dialer.
    pub async fn run(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        let acceptor = tokio::spawn(self.clone().accept_loop(listener, shutdown.clone()));
        if self.config.dials() {
            self.clone().dial_loop(shutdown.clone()).await;
        } else {
            shutdown.cancelled().await;
        }
        acceptor.abort();
        if let Some(s) = self.current() {
            s.closed.cancel();
        }
    }

    // ---------------------------------------------------------------- dialer

    async fn dial_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(50);
        let mut last_error: Option<String> = None;
        loop {
            self.set_status("connecting", None);
            match tokio::select! { _ = shutdown.cancelled() => return, r = self.establish() => r } {
                Ok(session) => {
                    backoff = Duration::from_millis(50);
                    last_error = None;
                    info!(peer = %self.config.peer_name, "peer link up");
                    tokio::select! {
                        _ = shutdown.cancelled() => { session.closed.cancel(); return }
                        _ = self.heartbeats(&session) => {}
                    }
                    self.end_session(&session, "connection lost");
                }
                Err(e) => {
                    let text = e.to_string();
                    if last_error.as_deref() != Some(&text) {
                        info!(peer = %self.config.peer_name, reason = %text, "peer link not established; retrying");
                        last_error = Some(text.clone());
                    }
                    self.set_status("down", Some(text));
                }
            }
            let jitter = Duration::from_millis(rand::random::<u64>() % 20);
            tokio::select! { _ = shutdown.cancelled() => return, _ = tokio::time::sleep(backoff + jitter) => {} }
            backoff = (backoff * 2).min(PEER_BACKOFF_MAX);
        }
    }

    async fn dial(
        &self,
        lane: Lane,
    ) -> anyhow::Result<Framed<tokio_rustls::client::TlsStream<TcpStream>, tokio_util::codec::LengthDelimitedCodec>> {
        use anyhow::Context;
        let tcp = tokio::time::timeout(PEER_CONNECT_TIMEOUT, TcpStream::connect(self.config.connect))
            .await
            .map_err(|_| anyhow::anyhow!("connecting to {} timed out", self.config.connect))?
            .with_context(|| format!("connect to {}", self.config.connect))?;
        let _ = tcp.set_nodelay(true);
        let tls = self.tls.connect(tcp).await?;
        let mut framed = Framed::new(tls, codec());
        framed
            .send(
                Message::Hello {
                    protocol_version: PROTOCOL_VERSION,
                    node: self.config.own_name.clone(),
                    lane,
                    volumes: self.volumes.clone(),
                }
                .encode(),
            )
            .await?;
        let reply = tokio::time::timeout(self.config.peer_timeout, framed.next())
            .await
            .map_err(|_| anyhow::anyhow!("no hello reply"))?
            .ok_or_else(|| anyhow::anyhow!("the peer closed the connection during the hello (refused our certificate?)"))??;
        match Message::decode(&reply)? {
            Message::HelloReply { protocol_version, node, refusal, volume_errors } => {
                if !refusal.is_empty() {
                    anyhow::bail!("peer refused the link: {refusal}");
                }
                if protocol_version != PROTOCOL_VERSION || node != self.config.peer_name {
                    anyhow::bail!("peer answered as `{node}` with protocol {protocol_version}");
                }
                if lane == Lane::Priority {
                    self.apply_volume_errors(&volume_errors);
                }
                Ok(framed)
            }
            other => anyhow::bail!("expected a hello reply, got {other:?}"),
        }
    }

    fn apply_volume_errors(&self, errors: &[String]) {
        for (slot, replica) in self.replicas().iter().enumerate() {
            match errors.get(slot).map(String::as_str) {
                Some("") => replica.set_serving(true, None),
                Some(e) => replica.set_serving(false, Some(e.to_string())),
                None => replica.set_serving(false, Some("the peer does not have this volume".into())),
            }
        }
    }

    async fn establish(self: &Arc<Self>) -> anyhow::Result<Arc<Session>> {
        let priority = self.dial(Lane::Priority).await?;
        let bulk = self.dial(Lane::Bulk).await?;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let (session, outbox) = Session::new(generation);
        self.spawn_priority(session.clone(), priority, outbox);
        self.spawn_bulk(session.clone(), bulk);
        if let Err(e) = self.sync_all(&session).await {
            self.end_session(&session, "session start failed");
            return Err(e);
        }
        self.set_ready(&session);
        Ok(session)
    }

    async fn sync_all(&self, session: &Arc<Session>) -> anyhow::Result<()> {
        // Reconcile every volume's claims before any other request. Two
        // rounds: what the first round changes on our side (a revoked
        // handover the accepter gave us) reaches the accepter in the second.
        let deadline = tokio::time::Instant::now() + self.config.peer_timeout;
        for replica in self.replicas().iter().flat_map(|r| std::iter::repeat_n(r, SYNC_ROUNDS)) {
            if replica.is_serving() {
                let reply = replica.send_sync(session).await?;
                match tokio::time::timeout_at(deadline, reply).await {
                    Ok(Ok(Ok(_))) => {}
                    Ok(Ok(Err(e))) => anyhow::bail!("sync of volume `{}` failed: {e}", replica.name()),
                    _ => anyhow::bail!("sync of volume `{}` was not answered", replica.name()),
                }
            }
        }
        Ok(())
    }

    async fn heartbeats(&self, session: &Arc<Session>) {
        let mut tick = tokio::time::interval(self.config.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = session.closed() => return,
                _ = tick.tick() => {}
            }
            let Ok(permit) = session.permit().await else { return };
            let (_, rx) = session.request(permit, &self.next_id, 0, RequestKind::Heartbeat, |id| Message::Heartbeat { id });
            match tokio::time::timeout(self.config.peer_timeout, rx).await {
                Ok(Ok(Ok(_))) => {}
                _ => {
                    warn!(peer = %self.config.peer_name, "peer did not answer a heartbeat within {:?}", self.config.peer_timeout);
                    return;
                }
            }
        }
    }

    fn set_ready(&self, session: &Arc<Session>) {
        for replica in self.replicas() {
            replica.on_session_start(session);
        }
        self.ready.send_replace(Some(session.clone()));
        self.set_status("up", None);
    }

    fn end_session(&self, session: &Arc<Session>, reason: &str) {
        session.closed.cancel();
        let was_current = self.ready.borrow().as_ref().is_some_and(|s| Arc::ptr_eq(s, session));
        if was_current {
            self.ready.send_replace(None);
            self.set_status("down", Some(reason.to_string()));
            info!(peer = %self.config.peer_name, reason, "peer link down");
        }
        let ids: Vec<u64> = session.pending.iter().map(|e| *e.key()).collect();
        for id in ids {
            if let Some((_, p)) = session.pending.remove(&id) {
                if let Some(r) = self.replica(p.volume) {
                    r.on_request_failed(&p.kind);
                }
                let _ = p.reply.send(Err(LinkError::Down));
            }
        }
    }

    // ---------------------------------------------------------------- accepter

    async fn accept_loop(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        loop {
            let (tcp, addr) = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(pair) => pair,
                    Err(e) => { warn!(error = %e, "peer accept failed"); tokio::time::sleep(Duration::from_millis(50)).await; continue }
                },
            };
            let _ = tcp.set_nodelay(true);
            let link = self.clone();
            tokio::spawn(async move {
                if let Err(e) = link.clone().serve_incoming(tcp).await {
                    warn!(%addr, reason = %format!("{e:#}"), "refused a peer connection");
                }
            });
        }
    }

    async fn serve_incoming(self: Arc<Self>, tcp: TcpStream) -> anyhow::Result<()> {
        let tls = self.tls.accept(tcp).await?;
        let mut framed = Framed::new(tls, codec());
        let hello = tokio::time::timeout(self.config.peer_timeout, framed.next())
            .await
            .map_err(|_| anyhow::anyhow!("no hello within {:?}", self.config.peer_timeout))?
            .ok_or_else(|| anyhow::anyhow!("closed before the hello"))??;
        let Message::Hello { protocol_version, node, lane, volumes } = Message::decode(&hello)? else {
            anyhow::bail!("the first message was not a hello");
        };
        let mut refusal = String::new();
        if protocol_version != PROTOCOL_VERSION {
            refusal = format!("protocol version {protocol_version} is not supported (this node speaks {PROTOCOL_VERSION})");
        } else if node != self.config.peer_name {
            refusal = format!("node `{node}` is not the configured peer `{}`", self.config.peer_name);
        } else if self.config.dials() {
            refusal = format!("both nodes think they accept: `{}` dials `{}`", self.config.own_name, self.config.peer_name);
        }
        let volume_errors = compare_volumes(&self.volumes, &volumes);
        let reply = Message::HelloReply {
            protocol_version: PROTOCOL_VERSION,
            node: self.config.own_name.clone(),
            refusal: refusal.clone(),
            volume_errors: volume_errors.clone(),
        };
        framed.send(reply.encode()).await?;
        if !refusal.is_empty() {
            anyhow::bail!("{refusal}");
        }
        match lane {
            Lane::Priority => {
                let ours: Vec<String> = (0..self.volumes.len())
                    .map(|i| volume_errors.get(i).cloned().unwrap_or_else(|| "the peer does not have this volume".into()))
                    .collect();
                self.apply_volume_errors(&ours);
                let generation = self.generation.fetch_add(1, Ordering::Relaxed);
                let (session, outbox) = Session::new(generation);
                let old = self.accepting.lock().expect("accepting lock").replace(session.clone());
                if let Some(old) = old {
                    self.end_session(&old, "replaced by a new connection");
                }
                self.spawn_priority(session.clone(), framed, outbox);
                if self.replicas().iter().all(|r| !r.is_serving()) {
                    self.set_ready(&session);
                }
            }
            Lane::Bulk => {
                let session = self.accepting.lock().expect("accepting lock").clone();
                match session {
                    Some(s) if !s.is_closed() => self.spawn_bulk(s, framed),
                    _ => anyhow::bail!("bulk connection without a priority connection"),
                }
            }
        }
        Ok(())
    }

    // ---------------------------------------------------------------- connection tasks

    fn spawn_priority<S>(
        self: &Arc<Self>,
        session: Arc<Session>,
        framed: Framed<S, tokio_util::codec::LengthDelimitedCodec>,
        mut outbox: mpsc::UnboundedReceiver<Slot>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sink, mut stream) = framed.split();
        let writer_session = session.clone();
        tokio::spawn(async move {
            loop {
                let slot = tokio::select! {
                    _ = writer_session.closed() => break,
                    s = outbox.recv() => match s { Some(s) => s, None => break },
                };
                let message = match slot {
                    Slot::Ready(m, _permit) => m,
                    Slot::Later(rx, _permit) => match tokio::select! { _ = writer_session.closed() => break, m = rx => m } {
                        Ok(m) => m,
                        Err(_) => continue, // abandoned place
                    },
                };
                if let Err(e) = sink.feed(message.encode()).await {
                    info!(error = %e, "peer priority lane write failed");
                    break;
                }
                if outbox.is_empty() && sink.flush().await.is_err() {
                    break;
                }
            }
            writer_session.closed.cancel();
        });
        let link = self.clone();
        let idle = self.config.peer_timeout + self.config.heartbeat_interval;
        tokio::spawn(async move {
            let reason = loop {
                let next = tokio::select! {
                    _ = session.closed() => break "session closed".to_string(),
                    n = tokio::time::timeout(idle, stream.next()) => n,
                };
                let frame = match next {
                    Err(_) => break format!("nothing received for {idle:?}"),
                    Ok(None) => break "connection closed by the peer".to_string(),
                    Ok(Some(Err(e))) => break format!("connection error: {e}"),
                    Ok(Some(Ok(frame))) => frame,
                };
                let message = match Message::decode(&frame) {
                    Ok(m) => m,
                    Err(e) => break format!("protocol violation: {e}"),
                };
                if let Err(e) = link.dispatch_priority(&session, message).await {
                    break format!("protocol violation: {e}");
                }
            };
            link.end_session(&session, &reason);
        });
    }

    async fn dispatch_priority(self: &Arc<Self>, session: &Arc<Session>, message: Message) -> Result<(), String> {
        match message {
            Message::Heartbeat { id } => {
                let permit = session.permit().await.map_err(|e| e.to_string())?;
                session.send(permit, Message::HeartbeatReply { id });
            }
            Message::Sync { id, volume, counter, own, record, gives } => {
                let r = self.replica(volume).ok_or_else(|| format!("sync of unknown volume slot {volume}"))?;
                r.on_sync_request(session, id, counter, &own, &record, &gives).await;
                // The dialer syncs every volume twice (see `establish`).
                let serving = self.replicas().iter().filter(|r| r.is_serving()).count();
                if session.synced.fetch_add(1, Ordering::Relaxed) + 1 == SYNC_ROUNDS * serving {
                    self.set_ready(session);
                    info!(peer = %self.config.peer_name, "peer link up");
                }
            }
            Message::Claim { id, volume, counter, extents } => {
                let r = self.replica(volume).ok_or_else(|| format!("claim on unknown volume slot {volume}"))?;
                r.on_claim_request(session, id, counter, &extents).await;
            }
            Message::Handover { id, volume, counter, extent } => {
                let r = self.replica(volume).ok_or_else(|| format!("handover on unknown volume slot {volume}"))?;
                let (r, s) = (r.clone(), session.clone());
                // May wait for host writes in flight: off the reader.
                tokio::spawn(async move { r.on_handover_request(&s, id, counter, extent).await });
            }
            Message::HandoverAck { volume, extent, epoch } => {
                let r = self.replica(volume).ok_or_else(|| format!("handover ack on unknown volume slot {volume}"))?;
                r.on_handover_ack(extent, epoch);
            }
            Message::Pull { id, volume, offset, length } => {
                let r = self.replica(volume).ok_or_else(|| format!("pull on unknown volume slot {volume}"))?;
                r.on_pull_request(session, id, offset, length).await;
            }
            reply @ (Message::SyncReply { .. }
            | Message::ClaimReply { .. }
            | Message::HandoverReply { .. }
            | Message::PullReply { .. }
            | Message::HeartbeatReply { .. }
            | Message::Error { .. }) => {
                let id = reply.id().expect("replies carry ids");
                let Some((_, pending)) = session.pending.remove(&id) else {
                    return Err(format!("answer to unknown request {id}"));
                };
                let result = match reply {
                    Message::Error { message, .. } => {
                        if let Some(r) = self.replica(pending.volume) {
                            r.on_request_failed(&pending.kind);
                        }
                        Err(LinkError::Refused(message))
                    }
                    reply => {
                        if let Some(r) = self.replica(pending.volume) {
                            r.on_reply(session, &pending.kind, &reply).await;
                        }
                        Ok(reply)
                    }
                };
                let _ = pending.reply.send(result);
            }
            other => return Err(format!("unexpected message on the priority lane: {}", variant_name(&other))),
        }
        Ok(())
    }

    fn spawn_bulk<S>(self: &Arc<Self>, session: Arc<Session>, framed: Framed<S, tokio_util::codec::LengthDelimitedCodec>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sink, mut stream) = framed.split();
        let (tx, mut rx) = mpsc::channel::<Bytes>(BULK_QUEUE_MESSAGES_MAX);
        let writer_session = session.clone();
        tokio::spawn(async move {
            loop {
                let frame = tokio::select! {
                    _ = writer_session.closed() => break,
                    m = rx.recv() => match m { Some(m) => m, None => break },
                };
                if sink.feed(frame).await.is_err() {
                    break;
                }
                if rx.is_empty() && sink.flush().await.is_err() {
                    break;
                }
            }
            writer_session.closed.cancel();
        });
        session.bulk.send_replace(Some(tx));
        let link = self.clone();
        tokio::spawn(async move {
            let reason = loop {
                let next = tokio::select! {
                    _ = session.closed() => break "session closed".to_string(),
                    n = stream.next() => n,
                };
                let frame = match next {
                    None => break "bulk connection closed by the peer".to_string(),
                    Some(Err(e)) => break format!("bulk connection error: {e}"),
                    Some(Ok(frame)) => frame,
                };
                let message = match Message::decode(&frame) {
                    Ok(m) => m,
                    Err(e) => break format!("protocol violation on the bulk lane: {e}"),
                };
                if let Err(e) = link.dispatch_bulk(&session, message).await {
                    break format!("protocol violation on the bulk lane: {e}");
                }
            };
            link.end_session(&session, &reason);
        });
    }

    async fn dispatch_bulk(&self, session: &Arc<Session>, message: Message) -> Result<(), String> {
        match message {
            Message::Copy { seq, volume, items } => {
                let r = self.replica(volume).ok_or_else(|| format!("copy to unknown volume slot {volume}"))?;
                r.apply_copy(session, seq, items).await
            }
            Message::CopyProgress { volume, received, durable } => {
                let r = self.replica(volume).ok_or_else(|| format!("progress of unknown volume slot {volume}"))?;
                r.on_copy_progress(session, received, durable);
                Ok(())
            }
            Message::Release { volume, extents } => {
                let r = self.replica(volume).ok_or_else(|| format!("release on unknown volume slot {volume}"))?;
                r.on_release(&extents);
                Ok(())
            }
            other => Err(format!("unexpected message on the bulk lane: {}", variant_name(&other))),
        }
    }
}

/// Per volume of the dialer's list: empty when it matches ours at the same
/// position, else what differs.
pub fn compare_volumes(ours: &[VolumeInfo], theirs: &[VolumeInfo]) -> Vec<String> {
    theirs
        .iter()
        .enumerate()
        .map(|(i, t)| match ours.get(i) {
            None => format!("volume `{}` is not configured on this node", t.name),
            Some(o) if o.name != t.name => {
                format!("volume #{i} is `{}` here but `{}` at the peer (list volumes in the same order)", o.name, t.name)
            }
            Some(o) if (o.size, o.block_bytes, o.extent_bytes) != (t.size, t.block_bytes, t.extent_bytes) => format!(
                "volume `{}` differs: here size {} block {} extent {}, at the peer size {} block {} extent {}",
                o.name, o.size, o.block_bytes, o.extent_bytes, t.size, t.block_bytes, t.extent_bytes
            ),
            Some(_) => String::new(),
        })
        .collect()
}

fn variant_name(m: &Message) -> &'static str {
    match m {
        Message::Hello { .. } => "Hello",
        Message::HelloReply { .. } => "HelloReply",
        Message::Copy { .. } => "Copy",
        Message::CopyProgress { .. } => "CopyProgress",
        Message::Release { .. } => "Release",
        _ => "request",
    }
}
