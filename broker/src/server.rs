//! The listeners: the Gearman port (with a cap on connections) and the HTTP port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State as AxumState;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use gearfleet_proto::{Packet, PacketType};
use prometheus_client::registry::Registry;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::broker::Broker;
use crate::config::Config;
use crate::connection;
use crate::metrics::StateCollector;

/// A started broker: its bound addresses and a handle to stop it.
pub struct Running {
    pub broker: Arc<Broker>,
    pub gearman_addr: SocketAddr,
    pub http_addr: Option<SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, closes every connection and waits for the listeners to end.
    pub async fn stop(self) {
        self.broker.shutdown.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Binds the ports and starts serving in the background.
pub async fn start(mut config: Config) -> std::io::Result<Running> {
    // Tokens from files (mounted Secrets) are read once, at start.
    config.admin_token = crate::config::resolve_token(&config.admin_token, &config.admin_token_file)?;
    config.metrics_token = crate::config::resolve_token(&config.metrics_token, &config.metrics_token_file)?;
    let broker = Broker::open(config)?;
    let listener = TcpListener::bind(broker.config.listen).await?;
    let gearman_addr = listener.local_addr()?;
    let mut tasks = Vec::new();
    let ready = Arc::new(AtomicBool::new(false));
    let http_addr = match broker.config.http_listen {
        Some(addr) => {
            let http = TcpListener::bind(addr).await?;
            let bound = http.local_addr()?;
            tasks.push(tokio::spawn(serve_http(broker.clone(), http, ready.clone())));
            Some(bound)
        }
        None => None,
    };
    broker.spawn_background();
    tasks.push(tokio::spawn(accept_loop(broker.clone(), listener)));
    ready.store(true, Ordering::Release);
    tracing::info!(%gearman_addr, http = ?http_addr, "gearfleet-broker listening");
    Ok(Running { broker, gearman_addr, http_addr, tasks })
}

async fn accept_loop(broker: Arc<Broker>, listener: TcpListener) {
    let permits = Arc::new(Semaphore::new(broker.config.max_connections));
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = broker.shutdown.cancelled() => break,
        };
        let (mut stream, peer) = match accepted {
            Ok(x) => {
                backoff = Duration::from_millis(5);
                x
            }
            Err(e) => {
                // Out of file descriptors and the like: wait and retry rather than spin or die.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached; refusing");
            tokio::spawn(async move {
                let p = Packet::res(PacketType::Error, &[b"ERR_TOO_MANY_CONNECTIONS", b"connection limit reached"]);
                let _ = stream.write_all(&p.to_bytes()).await;
            });
            continue;
        };
        let broker = broker.clone();
        tokio::spawn(async move {
            connection::serve(broker, stream, peer).await;
            drop(permit);
        });
    }
    // Wait (bounded) for connections to flush and close.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while permits.available_permits() < broker.config.max_connections && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[derive(Clone)]
struct HttpState {
    registry: Arc<Registry>,
    ready: Arc<AtomicBool>,
    /// `/metrics` needs `Authorization: Bearer <token>` when set.
    token: Option<Arc<str>>,
}

async fn serve_http(broker: Arc<Broker>, listener: TcpListener, ready: Arc<AtomicBool>) {
    let mut registry = Registry::default();
    broker.metrics.register(&mut registry);
    registry.register_collector(Box::new(StateCollector(broker.clone())));
    let state =
        HttpState { registry: Arc::new(registry), ready, token: broker.config.metrics_token.clone().map(Arc::from) };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state);
    let shutdown = broker.shutdown.clone();
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await {
        tracing::error!(error = %e, "http server failed");
    }
}

async fn metrics(AxumState(state): AxumState<HttpState>, headers: axum::http::HeaderMap) -> impl IntoResponse {
    if let Some(token) = &state.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !crate::config::token_matches(given.trim(), token) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::CONTENT_TYPE, "text/plain")],
                "metrics token required\n".into(),
            );
        }
    }
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
            body,
        ),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, [(header::CONTENT_TYPE, "text/plain")], String::new()),
    }
}

async fn readyz(AxumState(state): AxumState<HttpState>) -> impl IntoResponse {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}
