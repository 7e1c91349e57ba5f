//! The admin HTTP listener: `GET /metrics` (Prometheus text), `GET /status`
//! (JSON [`NodeStatus`]), and for two-site nodes `GET /takeover?volume=NAME`
//! (what an operator's takeover would take) and `POST
//! /takeover?volume=NAME&confirm=yes[&peer_is_down=yes]` (take it), and
//! `POST /mode?volume=NAME&set=MODE` (change a volume's replication mode),
//! and `GET /events?since=N` (recent events, [`crate::events`]).
//! Binds to loopback by default.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use geomirror_wire::status::{
    AckLatency, ExposedExtent, ModeChange, NodeStatus, PeerStatus, ReplicationStatus, ResyncStatus, StandingStatus, TakeoverStatus,
    VolumeStatus,
};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::nbd::Exports;

/// What the admin handlers read.
pub struct AdminState {
    /// Node name.
    pub name: String,
    /// When the node started.
    pub started: Instant,
    /// The NBD listen address, as bound.
    pub nbd_listen: String,
    /// The volumes.
    pub exports: Arc<Exports>,
    /// Renders the metrics.
    pub prometheus: PrometheusHandle,
    /// The peer link, for a two-site node.
    pub link: Option<Arc<crate::peer::link::PeerLink>>,
    /// The engine, for a two-site node.
    pub engine: Option<Arc<crate::engine::Engine>>,
    /// The bearer token every request must carry, if one is configured.
    pub token: Option<String>,
}

impl AdminState {
    /// The status snapshot.
    pub fn status(&self) -> NodeStatus {
        let core = self.engine.as_ref().map(|e| e.status());
        NodeStatus {
            name: self.name.clone(),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            nbd_listen: self.nbd_listen.clone(),
            volumes: self
                .exports
                .volumes()
                .map(|v| {
                    let view = core.as_ref().and_then(|c| c.volumes.iter().find(|x| x.name == v.name()));
                    let replication = view.map(|view| {
                        let block = u64::from(v.meta().block_bytes);
                        let f = &view.figures;
                        ReplicationStatus {
                            owned_extents: f.owned_extents,
                            max_owned_extents: self.engine.as_ref().map_or(0, |e| e.max_owned(v.name())),
                            peer_owned_extents: f.peer_owned_extents,
                            unsent_bytes: f.unsent_blocks * block,
                            not_durable_at_peer_bytes: f.not_durable_blocks * block,
                            received_not_durable_bytes: f.received_not_durable_bytes,
                            claim_round_trips: view.counters.claim_round_trips,
                            pulls: view.counters.pulls,
                            handovers: view.counters.handovers_received,
                            problem: view.problem.clone(),
                            tracking_bytes: f.tracking_bytes,
                            copy_sent_bytes_total: view.counters.copy_sent_bytes,
                            oldest_unsent_seconds: view.oldest_unsent.map(|d| d.as_secs_f64()),
                            oldest_not_durable_seconds: view.oldest_not_durable.map(|d| d.as_secs_f64()),
                            taken_extents: view.taken_extents,
                            resync: view.resync.started_at.map(|started| {
                                let r = view.resync;
                                let elapsed = core.as_ref().map_or(0.0, |c| c.now.since(started).as_secs_f64());
                                let rate = if elapsed > 0.0 { r.bytes_done as f64 / elapsed } else { 0.0 };
                                let left = r.bytes_total.saturating_sub(r.bytes_done) as f64;
                                ResyncStatus {
                                    bytes_done: r.bytes_done,
                                    bytes_total: r.bytes_total,
                                    blocks_differing: r.blocks_differing,
                                    blocks_saved: r.blocks_saved,
                                    rate_bytes_per_second: rate,
                                    eta_seconds: (rate > 0.0).then(|| left / rate),
                                }
                            }),
                            mode: view.replication.mode.as_str().to_string(),
                            on_peer_loss: match view.replication.on_peer_loss {
                                geomirror_config::PeerLossPolicy::Suspend => "suspend".into(),
                                geomirror_config::PeerLossPolicy::Degrade => "degrade".into(),
                            },
                            degraded_seconds: view.replication.degraded_for.map(|d| d.as_secs_f64()),
                            degradations: view.replication.degradations,
                            writes_waiting_for_peer: view.replication.waiting_for_peer,
                            last_ack: view.replication.last_ack.map(|a| AckLatency {
                                local_seconds: a.local.as_secs_f64(),
                                peer_received_seconds: a.peer_received.map(|d| d.as_secs_f64()),
                                peer_durable_seconds: a.peer_durable.map(|d| d.as_secs_f64()),
                            }),
                        }
                    });
                    VolumeStatus {
                        name: v.name().to_string(),
                        size_bytes: v.size(),
                        block_bytes: v.meta().block_bytes,
                        extent_bytes: v.meta().extent_bytes,
                        reads_total: v.reads_total(),
                        writes_total: v.writes_total(),
                        read_bytes_total: v.read_bytes_total(),
                        write_bytes_total: v.write_bytes_total(),
                        serving: view.is_none_or(|view| view.problem.is_none()),
                        replication,
                    }
                })
                .collect(),
            peer: self.link.as_ref().map(|link| {
                let s = link.status();
                PeerStatus {
                    name: link.config.peer_name.clone(),
                    link: s.state.to_string(),
                    since_seconds: s.since.elapsed().as_secs_f64(),
                    last_error: s.last_error,
                    dials: link.config.dials(),
                    connect: link.config.connect.to_string(),
                    listen: link.config.listen.to_string(),
                    rtt_ms: core.as_ref().and_then(|c| c.session.and_then(|s| s.rtt)).map(|d| d.as_secs_f64() * 1e3),
                    admin: link.config.peer_admin.map(|a| a.to_string()),
                    sent_bytes_total: self.engine.as_ref().map_or(0, |e| e.link_sent_bytes.load(std::sync::atomic::Ordering::Relaxed)),
                }
            }),
            standing: core.as_ref().map(|c| StandingStatus {
                health: c.health.as_str().to_string(),
                reason: c.health_reason.clone(),
                serving_hosts: c.serving_hosts,
                generation: c.generation,
                survivor_generation: c.survivor.map(|s| s.generation),
                acting_alone_in_seconds: c.survivor.map(|s| if s.acting_at > c.now { s.acting_at.since(c.now).as_secs_f64() } else { 0.0 }),
                witness: c.witness_up.map(|up| if up { "connected".into() } else { "unreachable".into() }),
                lease_left_seconds: c.lease_left.map(|d| d.as_secs_f64()),
            }),
        }
    }
}

/// The query of `/takeover`.
#[derive(Debug, serde::Deserialize)]
pub struct TakeoverQuery {
    /// The volume.
    pub volume: String,
    /// `yes` to take over (POST).
    #[serde(default)]
    pub confirm: Option<String>,
    /// `yes`: the operator says the peer is down (needed without a witness).
    #[serde(default)]
    pub peer_is_down: Option<String>,
}

fn exposure_status(volume: &str, e: &geomirror_core::Exposure, taken: bool, witness: bool) -> TakeoverStatus {
    TakeoverStatus {
        volume: volume.to_string(),
        taken,
        extents: e
            .extents
            .iter()
            .map(|(x, since)| ExposedExtent { extent: x.0, since_last_copy_seconds: since.map(|d| d.as_secs_f64()) })
            .collect(),
        bytes: e.bytes,
        generation: e.generation,
        refused: None,
        witness,
    }
}

async fn takeover_get(
    State(state): State<Arc<AdminState>>,
    Query(q): Query<TakeoverQuery>,
) -> Result<Json<TakeoverStatus>, (StatusCode, String)> {
    let (engine, index) = state.find(&q.volume)?;
    let e = engine.exposure(index).ok_or((StatusCode::NOT_FOUND, format!("no volume `{}`", q.volume)))?;
    let mut shown = exposure_status(&q.volume, &e, false, engine.has_witness());
    let peer_is_down = q.peer_is_down.as_deref() == Some("yes");
    shown.refused = engine.takeover_refusal(index, peer_is_down).map(|r| r.to_string());
    Ok(Json(shown))
}

async fn takeover_post(
    State(state): State<Arc<AdminState>>,
    Query(q): Query<TakeoverQuery>,
) -> Result<Json<TakeoverStatus>, (StatusCode, String)> {
    let (engine, index) = state.find(&q.volume)?;
    if q.confirm.as_deref() != Some("yes") {
        return Err((StatusCode::BAD_REQUEST, "a takeover needs confirm=yes (GET /takeover shows what it takes)".into()));
    }
    let peer_is_down = q.peer_is_down.as_deref() == Some("yes");
    match engine.take_over(index, peer_is_down) {
        Ok(e) => {
            tracing::warn!(volume = %q.volume, extents = e.extents.len(), bytes = e.bytes, generation = e.generation, peer_is_down, "an operator took over the lost peer's extents");
            Ok(Json(exposure_status(&q.volume, &e, true, engine.has_witness())))
        }
        Err(refused) => {
            tracing::warn!(volume = %q.volume, reason = %refused, "takeover refused");
            Err((StatusCode::CONFLICT, refused.to_string()))
        }
    }
}

/// The query of `GET /events`.
#[derive(Debug, serde::Deserialize)]
pub struct EventsQuery {
    /// Only events after this position (0: all still held).
    #[serde(default)]
    pub since: u64,
}

/// The node's recent events after `since` (a single-site node has none).
async fn events_handler(State(state): State<Arc<AdminState>>, Query(q): Query<EventsQuery>) -> Json<geomirror_wire::status::EventsPage> {
    Json(state.engine.as_ref().map(|e| e.events.since(q.since)).unwrap_or_default())
}

/// The query of `POST /mode`.
#[derive(Debug, serde::Deserialize)]
pub struct ModeQuery {
    /// The volume.
    pub volume: String,
    /// The new mode: `async`, `sync-memory` or `sync`.
    pub set: String,
}

/// Changes a volume's replication mode; a switch to a sync mode answers
/// once every write acknowledged before it is durable at the peer (or why
/// not, after `peer_timeout`). The config file stays the mode at start.
async fn mode_post(State(state): State<Arc<AdminState>>, Query(q): Query<ModeQuery>) -> Result<Json<ModeChange>, (StatusCode, String)> {
    let (engine, index) = state.find(&q.volume)?;
    let mode: geomirror_config::ReplicationMode = q.set.parse().map_err(|e: String| (StatusCode::BAD_REQUEST, e))?;
    let from = engine.set_mode(index, mode).map_err(|e| (StatusCode::NOT_FOUND, e.to_string()))?;
    tracing::info!(volume = %q.volume, from = from.as_str(), to = mode.as_str(), "an operator changed the replication mode");
    let mut change = ModeChange {
        volume: q.volume.clone(),
        from: from.as_str().into(),
        to: mode.as_str().into(),
        backlog_durable: false,
        backlog_error: None,
    };
    if mode != geomirror_config::ReplicationMode::Async {
        // A FLUSH in a sync mode waits until everything before it is
        // durable at both sites: the backlog of the earlier mode included.
        match engine.flush(index).await {
            Ok(()) => change.backlog_durable = true,
            Err(e) => {
                tracing::warn!(volume = %q.volume, error = %e, "mode switched, but the backlog is not yet durable at the peer");
                change.backlog_error = Some(e.to_string());
            }
        }
    }
    Ok(Json(change))
}

impl AdminState {
    fn find(&self, volume: &str) -> Result<(Arc<crate::engine::Engine>, geomirror_wire::peer::VolumeIndex), (StatusCode, String)> {
        let engine = self.engine.clone().ok_or((StatusCode::BAD_REQUEST, "a single-site node has no peer to take over from".into()))?;
        let index = engine.volume_index(volume).ok_or((StatusCode::NOT_FOUND, format!("no volume `{volume}`")))?;
        Ok((engine, index))
    }
}

/// Whether a request may be served: with a token configured, it must carry
/// it; without one, anything that changes the node (every method but GET)
/// must come from this host.
pub fn check_access(
    token: Option<&str>,
    method: &axum::http::Method,
    client: std::net::IpAddr,
    authorization: Option<&axum::http::HeaderValue>,
) -> Result<(), (StatusCode, String)> {
    match token {
        Some(token) => {
            let given = authorization.and_then(|h| h.to_str().ok()).and_then(|h| h.strip_prefix("Bearer ")).unwrap_or("");
            // Compared in time independent of where they differ.
            let same = given.len() == token.len() && given.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
            if same {
                Ok(())
            } else if authorization.is_none() {
                Err((StatusCode::UNAUTHORIZED, "this admin API needs `Authorization: Bearer <token>` (admin.token_file)".into()))
            } else {
                Err((StatusCode::UNAUTHORIZED, "wrong admin token".into()))
            }
        }
        None if method != axum::http::Method::GET && !client.is_loopback() => Err((
            StatusCode::FORBIDDEN,
            "changes through the admin API are accepted only from this host unless admin.token_file is set".into(),
        )),
        None => Ok(()),
    }
}

async fn authorize(
    State(state): State<Arc<AdminState>>,
    axum::extract::ConnectInfo(client): axum::extract::ConnectInfo<std::net::SocketAddr>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let header = request.headers().get(header::AUTHORIZATION);
    match check_access(state.token.as_deref(), request.method(), client.ip(), header) {
        Ok(()) => next.run(request).await,
        Err((code, why)) => {
            tracing::warn!(client = %client, method = %request.method(), path = request.uri().path(), reason = why, "admin request refused");
            (code, why).into_response()
        }
    }
}

/// Serves the admin API on `listener` until `shutdown`: HTTP/1.1, each
/// connection admitted per source address, its request headers within
/// [`ADMIN_HEADER_READ_TIMEOUT`](crate::limits::ADMIN_HEADER_READ_TIMEOUT)
/// and its whole life within
/// [`ADMIN_CONNECTION_MAX`](crate::limits::ADMIN_CONNECTION_MAX).
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, shutdown: CancellationToken) -> std::io::Result<()> {
    use crate::limits::{ADMIN_CONNECTION_MAX, ADMIN_CONNECTIONS_MAX, ADMIN_CONNECTIONS_PER_SOURCE_MAX, ADMIN_HEADER_READ_TIMEOUT};
    let app = router(state);
    let admission = crate::admission::Admission::new(ADMIN_CONNECTIONS_PER_SOURCE_MAX, ADMIN_CONNECTIONS_MAX);
    let refusals = crate::admission::RefusalLog::default();
    loop {
        let (stream, client) = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let ticket = match admission.admit(client.ip()) {
            Ok(ticket) => ticket,
            Err(refused) => {
                if let Some(count) = refusals.note() {
                    tracing::warn!(%client, reason = %refused, refused_since_last = count, "admin connection refused at accept");
                }
                continue;
            }
        };
        let app = app.clone();
        let shutdown = shutdown.clone();
        crate::tasks::spawn(async move {
            let _ticket = ticket;
            let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(axum::extract::ConnectInfo(client));
                tower::ServiceExt::oneshot(app.clone(), request)
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(ADMIN_HEADER_READ_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::select! {
                _ = shutdown.cancelled() => {}
                done = tokio::time::timeout(ADMIN_CONNECTION_MAX, connection) => {
                    if let Ok(Err(e)) = done {
                        tracing::debug!(%client, error = %e, "admin connection ended");
                    }
                }
            }
        });
    }
}

/// The admin API's routes.
fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/status", get(status_handler))
        .route("/takeover", get(takeover_get).post(takeover_post))
        .route("/mode", axum::routing::post(mode_post))
        .route("/events", get(events_handler))
        .layer(axum::middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state)
}

async fn metrics_handler(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    if let Some(engine) = &state.engine {
        engine.refresh_metrics();
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.prometheus.render())
}

async fn status_handler(State(state): State<Arc<AdminState>>) -> Json<NodeStatus> {
    Json(state.status())
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderValue, Method};

    use super::*;

    #[test]
    fn without_a_token_changes_come_only_from_this_host_and_with_one_every_request_needs_it() {
        let local: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let remote: std::net::IpAddr = "192.0.2.7".parse().unwrap();
        assert!(check_access(None, &Method::GET, remote, None).is_ok(), "reading is open where the operator allowed it");
        assert!(check_access(None, &Method::POST, local, None).is_ok());
        assert_eq!(check_access(None, &Method::POST, remote, None).unwrap_err().0, StatusCode::FORBIDDEN);
        let token = Some("0123456789abcdef");
        let right = HeaderValue::from_static("Bearer 0123456789abcdef");
        let wrong = HeaderValue::from_static("Bearer 0123456789abcdeX");
        let short = HeaderValue::from_static("Bearer 0123");
        assert!(check_access(token, &Method::POST, remote, Some(&right)).is_ok());
        for (given, method) in [(None, Method::GET), (Some(&wrong), Method::GET), (Some(&short), Method::POST)] {
            assert_eq!(check_access(token, &method, local, given).unwrap_err().0, StatusCode::UNAUTHORIZED, "{given:?}");
        }
    }
}
