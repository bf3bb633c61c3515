//! The daemon's local HTTP endpoint (`status_listen`, default `127.0.0.1:9411`):
//! `GET /status` (JSON, [`crate::status::StatusDoc`]) and `GET /metrics` (OpenMetrics text,
//! [`crate::metrics`]). Anything else is 404.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;

use crate::metrics;
use crate::status::Shared;

#[derive(Clone)]
struct AppState {
    shared: Arc<Shared>,
    registry: Arc<Registry>,
}

async fn status(State(s): State<AppState>) -> Response {
    axum::Json(s.shared.status()).into_response()
}

async fn metrics_page(State(s): State<AppState>) -> Response {
    match metrics::render(&s.registry) {
        Ok(text) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "metrics encoding failed\n",
        )
            .into_response(),
    }
}

/// The endpoint's routes over `shared`.
pub fn router(shared: Arc<Shared>) -> Router {
    let registry = Arc::new(metrics::registry(shared.clone()));
    Router::new()
        .route("/status", get(status))
        .route("/metrics", get(metrics_page))
        .with_state(AppState { shared, registry })
}

/// Binds `addr` (so a taken port is reported at startup) and returns the server to spawn.
pub async fn bind(
    addr: SocketAddr,
    shared: Arc<Shared>,
) -> std::io::Result<impl std::future::Future<Output = std::io::Result<()>>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app = router(shared);
    Ok(async move { axum::serve(listener, app).await })
}
