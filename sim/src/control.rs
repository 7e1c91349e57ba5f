//! The control API: HTTP/1.1 with JSON bodies.
//!
//! | method and path | body | effect |
//! |---|---|---|
//! | `GET /link` | | the [`LinkStatus`] snapshot |
//! | `PUT /link`, `POST /link` | [`LinkUpdate`] | change the given settings |
//! | `POST /partition` | [`PartitionRequest`], may be empty | start a partition |
//! | `POST /heal` | | end all partitions |
//! | `POST /reset` | | reset all connections |
//!
//! Every answer is the [`LinkStatus`] after the change; errors are `{"error": "..."}` with a
//! 4xx status.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::limits::CONTROL_BODY_BYTES_MAX;
use crate::proxy::Shared;
use crate::settings::LinkUpdate;
use crate::status::{LinkStatus, PartitionRequest};

/// Serves the control API until `shutdown` turns true.
pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
    let app = router(shared);
    let stop = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
        tracing::warn!("control API stopped: {e}");
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/link", get(get_link).put(put_link).post(put_link))
        .route("/partition", post(partition))
        .route("/heal", post(heal))
        .route("/reset", post(reset))
        .layer(DefaultBodyLimit::max(CONTROL_BODY_BYTES_MAX))
        .with_state(shared)
}

/// An error answer: `{"error": message}`.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

/// Parses a JSON body; an empty body means the type's default.
fn parse_body<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("invalid request body: {e}")))
}

async fn get_link(State(shared): State<Arc<Shared>>) -> Json<LinkStatus> {
    Json(shared.status())
}

async fn put_link(State(shared): State<Arc<Shared>>, body: Bytes) -> Result<Json<LinkStatus>, ApiError> {
    let update: LinkUpdate = parse_body(&body)?;
    shared.update(&update).map_err(|e| ApiError(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    Ok(Json(shared.status()))
}

async fn partition(State(shared): State<Arc<Shared>>, body: Bytes) -> Result<Json<LinkStatus>, ApiError> {
    let request: PartitionRequest = parse_body(&body)?;
    shared.partition(request.mode, request.direction);
    Ok(Json(shared.status()))
}

async fn heal(State(shared): State<Arc<Shared>>) -> Json<LinkStatus> {
    shared.heal();
    Json(shared.status())
}

async fn reset(State(shared): State<Arc<Shared>>) -> Json<LinkStatus> {
    shared.reset_connections();
    Json(shared.status())
}
