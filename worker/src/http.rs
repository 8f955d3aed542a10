//! `/healthz`, `/readyz`, `/state` and `/metrics` for the kubelet and Prometheus.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::shared::Shared;

pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/state", get(state))
        .route("/metrics", get(metrics))
        .with_state(shared);
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await {
        tracing::error!(error = %e, "worker http endpoint failed");
    }
}

async fn healthz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let s = shared.state();
    let code = if s.is_healthy() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, format!("{s}\n"))
}

async fn readyz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let s = shared.state();
    let code = if s.is_ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, format!("{s}\n"))
}

async fn state(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    format!("{}\n", shared.state())
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], shared.metrics.encode())
}
