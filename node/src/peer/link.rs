//! The link to the peer node: connections only. Two mutually authenticated
//! TLS connections per session, the priority lane and the bulk lane; the
//! node whose name sorts first dials both, the other accepts. After the
//! hello (versions, names, the volumes compared), the session is handed to
//! the engine; from then on each lane has a reader (frames to the core, in
//! arrival order, pausing while the core has no room) and an outbox (the
//! core's sends, in the order it produced them: [`super::outbox`]). The link knows sessions and
//! frames, not volumes: every protocol decision, the session-start sync,
//! heartbeats and the idle deadline included, is the core's.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use geomirror_core::{Role, SessionGen};
use geomirror_wire::peer::{Lane, Message, PROTOCOL_VERSION, VolumeInfo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Framed, FramedRead, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::codec::codec;
use super::outbox::{CountSent, Outbox};
use super::tls::PeerTls;
use crate::engine::{Engine, SessionIo};
use crate::limits::{
    BULK_LANE_QUEUE_MESSAGES, LANE_WRITE_BATCH_BYTES, PEER_BACKOFF_MAX, PEER_CONNECT_TIMEOUT, PRIORITY_LANE_QUEUE_MESSAGES,
};

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
    /// Bounds the TLS handshake and the hello of a new connection.
    pub peer_timeout: Duration,
    /// The peer's admin address, reported in `/status` for operators' tools.
    pub peer_admin: Option<SocketAddr>,
}

impl LinkConfig {
    /// Whether this node dials (its name sorts first).
    pub fn dials(&self) -> bool {
        self.own_name < self.peer_name
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

type PeerFramed<S> = Framed<S, LengthDelimitedCodec>;

/// The link to the peer.
pub struct PeerLink {
    /// Settings.
    pub config: LinkConfig,
    tls: PeerTls,
    volumes: Vec<VolumeInfo>,
    engine: Arc<Engine>,
    next_session: AtomicU64,
    /// The session the accepter's next bulk connection belongs to.
    accepting: Mutex<Option<(SessionGen, Handles)>>,
    status: Mutex<LinkStatus>,
}

impl PeerLink {
    /// A link carrying `volumes` (in the hello's order) for `engine`.
    pub fn new(config: LinkConfig, tls: PeerTls, volumes: Vec<VolumeInfo>, engine: Arc<Engine>) -> Arc<PeerLink> {
        Arc::new(PeerLink {
            config,
            tls,
            volumes,
            engine,
            next_session: AtomicU64::new(1),
            accepting: Mutex::new(None),
            status: Mutex::new(LinkStatus { state: "down", since: Instant::now(), last_error: None }),
        })
    }

    /// Link state for status.
    pub fn status(&self) -> LinkStatus {
        self.status.lock().expect("status lock").clone()
    }

    fn set_status(&self, state: &'static str, error: Option<String>) {
        crate::metrics::set_peer_link_up(&self.config.peer_name, state == "up");
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
        let acceptor = crate::tasks::spawn(self.clone().accept_loop(listener, shutdown.clone()));
        if self.config.dials() {
            self.clone().dial_loop(shutdown.clone()).await;
        } else {
            shutdown.cancelled().await;
        }
        acceptor.abort();
        if let Some((_, handles)) = self.accepting.lock().expect("accepting lock").take() {
            handles.cancel.cancel();
        }
    }

    fn new_session(&self) -> SessionGen {
        SessionGen(self.next_session.fetch_add(1, Ordering::Relaxed))
    }

    // ---------------------------------------------------------------- dialer

    async fn dial_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(50);
        let mut last_error: Option<String> = None;
        loop {
            self.set_status("connecting", None);
            match tokio::select! { _ = shutdown.cancelled() => return, r = self.establish() => r } {
                Ok((session, io)) => {
                    backoff = Duration::from_millis(50);
                    last_error = None;
                    info!(peer = %self.config.peer_name, session = session.0, "peer link up");
                    self.set_status("up", None);
                    let reason = tokio::select! {
                        _ = shutdown.cancelled() => { io.cancel.cancel(); "node shutting down".to_string() }
                        r = wait_closed(&io) => r,
                    };
                    self.end(session, reason);
                }
                Err(e) => {
                    let text = format!("{e:#}");
                    if last_error.as_deref() != Some(&text) {
                        info!(peer = %self.config.peer_name, reason = %text, "peer link not established; retrying");
                        last_error = Some(text.clone());
                    }
                    self.set_status("down", Some(text));
                }
            }
            tokio::select! { _ = shutdown.cancelled() => return, _ = tokio::time::sleep(crate::tasks::jittered(backoff)) => {} }
            backoff = (backoff * 2).min(PEER_BACKOFF_MAX);
        }
    }

    /// Dials both lanes, says hello on each, and hands the session to the engine.
    async fn establish(self: &Arc<Self>) -> anyhow::Result<(SessionGen, Handles)> {
        let (priority, volume_errors) = self.dial(Lane::Priority).await?;
        let (bulk, _) = self.dial(Lane::Bulk).await?;
        let session = self.new_session();
        let cancel = CancellationToken::new();
        let reason = Arc::new(Mutex::new(None));
        let handles = Handles { cancel: cancel.clone(), reason: reason.clone() };
        let priority = self.spawn_lane(session, Lane::Priority, priority, &handles);
        let bulk = self.spawn_lane(session, Lane::Bulk, bulk, &handles);
        let errors = volume_errors.into_iter().map(|e| (!e.is_empty()).then_some(e)).collect();
        self.engine.session_up(
            session,
            Role::Dialer,
            errors,
            SessionIo { cancel, reason, priority, bulk: Some(bulk), bulk_reserved: true },
        );
        Ok((session, handles))
    }

    async fn dial(&self, lane: Lane) -> anyhow::Result<(PeerFramed<tokio_rustls::client::TlsStream<TcpStream>>, Vec<String>)> {
        use anyhow::Context;
        let tcp = tokio::time::timeout(PEER_CONNECT_TIMEOUT, TcpStream::connect(self.config.connect))
            .await
            .map_err(|_| anyhow::anyhow!("connecting to {} timed out", self.config.connect))?
            .with_context(|| format!("connect to {}", self.config.connect))?;
        let _ = tcp.set_nodelay(true);
        let mut tls = tokio::time::timeout(self.config.peer_timeout, self.tls.connect(tcp))
            .await
            .map_err(|_| anyhow::anyhow!("the TLS handshake with {} timed out", self.config.connect))??;
        tls.get_mut().1.set_buffer_limit(Some(LANE_WRITE_BATCH_BYTES));
        let mut framed = Framed::new(tls, codec());
        let hello =
            Message::Hello { protocol_version: PROTOCOL_VERSION, node: self.config.own_name.clone(), lane, volumes: self.volumes.clone() };
        framed.send(hello.encode()).await?;
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
                    anyhow::bail!("peer answered as `{node}` with protocol {protocol_version} (this node speaks {PROTOCOL_VERSION})");
                }
                // Per volume of our list: empty when it matches.
                let ours = (0..self.volumes.len())
                    .map(|i| volume_errors.get(i).cloned().unwrap_or_else(|| "the peer does not have this volume".into()))
                    .collect();
                Ok((framed, ours))
            }
            other => anyhow::bail!("expected a hello reply, got {}", other.kind()),
        }
    }

    fn end(&self, session: SessionGen, reason: String) {
        let reason = plain_reason(&reason);
        warn!(peer = %self.config.peer_name, session = session.0, reason, "peer link down");
        self.set_status("down", Some(reason.clone()));
        self.engine.session_down(session, reason);
    }

    // ---------------------------------------------------------------- accepter

    async fn accept_loop(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        let admission = crate::admission::Admission::new(crate::limits::PEER_SETUPS_PER_SOURCE_MAX, crate::limits::PEER_SETUPS_MAX);
        let refusals = crate::admission::RefusalLog::default();
        loop {
            let (tcp, addr) = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(pair) => pair,
                    Err(e) => { warn!(error = %e, "peer accept failed"); tokio::time::sleep(Duration::from_millis(50)).await; continue }
                },
            };
            let setting_up = match admission.admit(addr.ip()) {
                Ok(ticket) => ticket,
                Err(refused) => {
                    if let Some(count) = refusals.note() {
                        warn!(%addr, reason = %refused, refused_since_last = count, "refused a peer connection at accept");
                    }
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let link = self.clone();
            crate::tasks::spawn(async move {
                if let Err(e) = link.clone().serve_incoming(tcp, setting_up).await {
                    warn!(%addr, reason = %format!("{e:#}"), "refused a peer connection");
                }
            });
        }
    }

    async fn serve_incoming(self: Arc<Self>, tcp: TcpStream, setting_up: crate::admission::Ticket) -> anyhow::Result<()> {
        let mut tls = tokio::time::timeout(self.config.peer_timeout, self.tls.accept(tcp))
            .await
            .map_err(|_| anyhow::anyhow!("the TLS handshake timed out after {:?}", self.config.peer_timeout))??;
        // A writer's whole batch is encrypted and handed to the socket at once.
        tls.get_mut().1.set_buffer_limit(Some(LANE_WRITE_BATCH_BYTES));
        let mut framed = Framed::new(tls, codec());
        let hello = tokio::time::timeout(self.config.peer_timeout, framed.next())
            .await
            .map_err(|_| anyhow::anyhow!("no hello within {:?}", self.config.peer_timeout))?
            .ok_or_else(|| anyhow::anyhow!("closed before the hello"))??;
        let Message::Hello { protocol_version, node, lane, volumes } = Message::decode(&hello)? else {
            anyhow::bail!("the first message was not a hello");
        };
        // Authenticated (TLS) and speaking the protocol: its setup place goes.
        drop(setting_up);
        let mut refusal = String::new();
        if protocol_version != PROTOCOL_VERSION {
            refusal = format!("protocol version {protocol_version} is not supported (this node speaks {PROTOCOL_VERSION})");
        } else if node != self.config.peer_name {
            refusal = format!("node `{node}` is not the configured peer `{}`", self.config.peer_name);
        } else if self.config.dials() {
            refusal = format!("both nodes think they dial: `{}` dials `{}`", self.config.own_name, self.config.peer_name);
        }
        // A bulk connection joins the session its priority connection set
        // up, once: a second one is refused and the session goes on.
        let bulk_for = match lane {
            Lane::Bulk if refusal.is_empty() => {
                let current = self.accepting.lock().expect("accepting lock").clone();
                match current.filter(|(_, h)| !h.cancel.is_cancelled()) {
                    None => {
                        refusal = "no session (priority connection) for this bulk connection to join".into();
                        None
                    }
                    Some((session, handles)) => match self.engine.reserve_bulk(session) {
                        Ok(()) => Some((session, handles)),
                        Err(refused) => {
                            refusal = format!("session {}: {refused}", session.0);
                            None
                        }
                    },
                }
            }
            _ => None,
        };
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
                let ours: Vec<Option<String>> = (0..self.volumes.len())
                    .map(|i| match volume_errors.get(i) {
                        Some(e) if e.is_empty() => None,
                        Some(e) => Some(e.clone()),
                        None => Some("the peer does not have this volume".into()),
                    })
                    .collect();
                let session = self.new_session();
                let cancel = CancellationToken::new();
                let reason = Arc::new(Mutex::new(None));
                let handles = Handles { cancel: cancel.clone(), reason: reason.clone() };
                if let Some((_, old)) = self.accepting.lock().expect("accepting lock").replace((session, handles.clone())) {
                    old.cancel.cancel();
                }
                let priority = self.spawn_lane(session, Lane::Priority, framed, &handles);
                self.engine.session_up(
                    session,
                    Role::Accepter,
                    ours,
                    SessionIo { cancel, reason, priority, bulk: None, bulk_reserved: false },
                );
                info!(peer = %self.config.peer_name, session = session.0, "peer link up");
                self.set_status("up", None);
                let link = self.clone();
                crate::tasks::spawn(async move {
                    let reason = wait_closed(&handles).await;
                    link.end(session, reason);
                });
            }
            Lane::Bulk => {
                // The bulk lane shares the session's token and reason: its
                // failure is the reason the session's end is logged with.
                let Some((session, handles)) = bulk_for else {
                    anyhow::bail!("internal: a bulk connection accepted without a reserved session");
                };
                let bulk = self.spawn_lane(session, Lane::Bulk, framed, &handles);
                if let Err(refused) = self.engine.bulk_up(session, bulk) {
                    // The session ended while the hello was answered; its
                    // token (which the lane's tasks share) says so too.
                    close_with(&handles.cancel, &handles.reason, refused.to_string());
                    anyhow::bail!("{refused}");
                }
            }
        }
        Ok(())
    }

    // ---------------------------------------------------------------- lanes

    /// The reader and the writer of one lane; returns the lane's outbox.
    /// Either failing ends the session.
    fn spawn_lane<S>(self: &Arc<Self>, session: SessionGen, lane: Lane, framed: PeerFramed<S>, h: &Handles) -> Arc<Outbox>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // The hello is done: the reader keeps the codec (and any bytes it
        // read past the hello); the outbox writes whole batches of frames.
        let parts = framed.into_parts();
        let (read_half, write_half) = tokio::io::split(parts.io);
        let mut stream = FramedRead::new(read_half, codec());
        stream.read_buffer_mut().extend_from_slice(&parts.read_buf);
        let capacity = match lane {
            Lane::Priority => PRIORITY_LANE_QUEUE_MESSAGES,
            Lane::Bulk => BULK_LANE_QUEUE_MESSAGES,
        };
        let counter: Arc<dyn CountSent> = self.engine.clone();
        let outbox = Outbox::new(lane, capacity, Box::new(write_half), counter, h.cancel.clone(), h.reason.clone());
        crate::tasks::spawn(outbox.clone().run());
        let (cancel, reason) = (h.cancel.clone(), h.reason.clone());
        let engine = self.engine.clone();
        crate::tasks::spawn(async move {
            let why = loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = engine.room_for(lane) => {}
                }
                let next = tokio::select! {
                    _ = cancel.cancelled() => return,
                    n = stream.next() => n,
                };
                let frame = match next {
                    None => break format!("{lane:?} connection closed by the peer"),
                    Some(Err(e)) => break format!("{lane:?} connection error: {e}"),
                    Some(Ok(frame)) => frame,
                };
                match Message::decode(&frame) {
                    Ok(message) => engine.frame(session, lane, message),
                    Err(e) => break format!("protocol violation on the {lane:?} lane: {e}"),
                }
            };
            close_with(&cancel, &reason, why);
        });
        outbox
    }
}

/// What a session's tasks share: the token that ends it and the first reason.
#[derive(Clone)]
struct Handles {
    cancel: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
}

fn close_with(cancel: &CancellationToken, reason: &Mutex<Option<String>>, why: String) {
    let mut r = reason.lock().expect("reason lock");
    if r.is_none() {
        *r = Some(why);
    }
    cancel.cancel();
}

async fn wait_closed(h: &Handles) -> String {
    h.cancel.cancelled().await;
    h.reason.lock().expect("reason lock").clone().unwrap_or_else(|| "replaced by a new connection".into())
}

/// A connection error as an operator reads it: library texts lose the
/// documentation links some of them append (rustls: "...: https://docs.rs/..."),
/// and an end of stream without TLS close_notify is said plainly.
pub fn plain_reason(reason: &str) -> String {
    let text = match reason.find(": https://").or_else(|| reason.find(" https://")) {
        Some(at) => &reason[..at],
        None => reason,
    };
    text.replace("peer closed connection without sending TLS close_notify", "the peer closed the connection")
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
            Some(o) if o.detached || t.detached => format!(
                "volume `{}` was taken over offline and served without its peer at {}: its contents may differ anywhere, so it is \
                 not mirrored again automatically (serve it from one site only, or recreate it at the other)",
                o.name,
                if o.detached && t.detached {
                    "both sites"
                } else if o.detached {
                    "this site"
                } else {
                    "the peer"
                }
            ),
            Some(_) => String::new(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn library_links_are_dropped_from_reasons() {
        let raw = "Priority connection error: peer closed connection without sending TLS close_notify: https://docs.rs/rustls/latest/rustls/manual/_03_howto/index.html#unexpected-eof";
        assert_eq!(super::plain_reason(raw), "Priority connection error: the peer closed the connection");
        assert_eq!(super::plain_reason("heartbeat timeout"), "heartbeat timeout");
    }
}
