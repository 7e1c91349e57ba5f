//! The admin HTTP listener: `GET /metrics` (Prometheus text) and
//! `GET /status` (JSON [`NodeStatus`]). Binds to loopback by default.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use geomirror_wire::status::{NodeStatus, PeerStatus, ReplicationStatus, VolumeStatus};
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
                            peer_owned_extents: f.peer_owned_extents,
                            unsent_bytes: f.unsent_blocks * block,
                            not_durable_at_peer_bytes: f.not_durable_blocks * block,
                            received_not_durable_bytes: f.received_not_durable_bytes,
                            claim_round_trips: view.counters.claim_round_trips,
                            pulls: view.counters.pulls,
                            handovers: view.counters.handovers_received,
                            problem: view.problem.clone(),
                            tracking_bytes: f.tracking_bytes,
                        }
                    });
                    VolumeStatus {
                        name: v.name().to_string(),
                        size_bytes: v.size(),
                        block_bytes: v.meta().block_bytes,
                        extent_bytes: v.meta().extent_bytes,
                        reads_total: v.reads_total(),
                        writes_total: v.writes_total(),
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
                }
            }),
        }
    }
}

/// Serves the admin API on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, shutdown: CancellationToken) -> std::io::Result<()> {
    let app = Router::new().route("/metrics", get(metrics_handler)).route("/status", get(status_handler)).with_state(state);
    axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
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
