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
use tokio_rustls::TlsAcceptor;

use crate::broker::Broker;
use crate::config::Config;
use crate::connection;
use crate::event_loop::EventLoops;
use crate::keepalive::Keepalive;
use crate::metrics::StateCollector;

/// A started broker: its bound addresses and a handle to stop it.
pub struct Running {
    pub broker: Arc<Broker>,
    pub gearman_addr: SocketAddr,
    pub http_addr: Option<SocketAddr>,
    /// The TLS Gearman listener, with --tls-listen.
    pub tls_addr: Option<SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// What /readyz reports.
    ready: Arc<AtomicBool>,
}

impl Running {
    /// Shuts down gracefully (SIGTERM): reports not ready (the Service stops sending clients
    /// here), refuses submissions and hands out no job (see `state::shutdown`), waits for the jobs
    /// workers hold to finish, but at least `min_wait` (for the Service to take this broker out)
    /// and at most `grace`, then [`stop`](Self::stop)s. Returns the jobs still held when it
    /// stopped (they run again: background ones from the journal).
    pub async fn shut_down(self, min_wait: Duration, grace: Duration) -> u64 {
        self.ready.store(false, Ordering::Release);
        let held = self.broker.with_state(|s| {
            s.begin_shutdown();
            s.assigned_jobs()
        });
        tracing::info!(held, grace = ?grace, "shutting down: no new jobs; waiting for the jobs workers hold");
        let start = tokio::time::Instant::now();
        let min_wait = min_wait.min(grace);
        let mut held = held;
        while (held > 0 || start.elapsed() < min_wait) && start.elapsed() < grace {
            tokio::time::sleep(Duration::from_millis(50)).await;
            held = self.broker.with_state(|s| s.assigned_jobs());
        }
        if held > 0 {
            tracing::warn!(held, "shutdown grace over: stopping with jobs still held by workers");
        } else {
            tracing::info!(waited = ?start.elapsed(), "no job held: stopping");
        }
        self.stop().await;
        held
    }

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
    let permits = Arc::new(Semaphore::new(broker.config.max_connections));
    let mut tls_addr = None;
    if let Some(addr) = broker.config.tls_listen {
        let acceptor = tls_acceptor(&broker.config)?;
        let tls = TcpListener::bind(addr).await?;
        tls_addr = Some(tls.local_addr()?);
        tasks.push(tokio::spawn(accept_loop(broker.clone(), tls, Serve::Tls(acceptor), permits.clone())));
    }
    let loops = crate::event_loop::EventLoops::start(&broker, broker.config.runtime_threads())?;
    tasks.push(tokio::spawn(accept_loop(broker.clone(), listener, Serve::Plain(loops), permits)));
    ready.store(true, Ordering::Release);
    tracing::info!(%gearman_addr, http = ?http_addr, tls = ?tls_addr, "gearfleet-broker listening");
    Ok(Running { broker, gearman_addr, http_addr, tls_addr, tasks, ready })
}

/// The TLS acceptor for --tls-listen, from the PEM files of --tls-cert and --tls-key.
fn tls_acceptor(config: &crate::Config) -> std::io::Result<TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{what}: {e}"))
    };
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Err(bad("--tls-listen", &"needs --tls-cert and --tls-key"));
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(&format!("--tls-cert {}", cert.display()), &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(&format!("--tls-cert {}", cert.display()), &e))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(&format!("--tls-key {}", key.display()), &e))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let server = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("tls", &e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad("--tls-cert/--tls-key", &e))?;
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// How long a TLS handshake may take.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who serves a listener's connections.
enum Serve {
    /// Plain TCP: the event-loop threads.
    Plain(Arc<EventLoops>),
    /// TLS: a tokio task per connection, after its handshake.
    Tls(TlsAcceptor),
}

async fn accept_loop(broker: Arc<Broker>, listener: TcpListener, serve: Serve, permits: Arc<Semaphore>) {
    let keepalive = Keepalive::from_config(&broker.config);
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
        if let Some(k) = &keepalive
            && let Err(e) = k.apply(socket2::SockRef::from(&stream))
        {
            tracing::debug!(%peer, error = %e, "cannot set TCP keepalive");
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached; refusing");
            tokio::spawn(async move {
                let p = Packet::res(PacketType::Error, &[b"ERR_TOO_MANY_CONNECTIONS", b"connection limit reached"]);
                let _ = stream.write_all(&p.to_bytes()).await;
            });
            continue;
        };
        match &serve {
            Serve::Plain(loops) => loops.serve(stream, peer, permit),
            Serve::Tls(acceptor) => {
                let broker = broker.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => connection::serve_tls(broker, stream, peer).await,
                        Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                    }
                    drop(permit);
                });
            }
        }
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
        (StatusCode::SERVICE_UNAVAILABLE, "not ready (starting or shutting down)\n")
    }
}
