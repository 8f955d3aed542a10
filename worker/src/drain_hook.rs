//! The pre-stop drain hook: what `gearfleet-drain` does when the kubelet is about to stop a worker
//! pod, whatever Gearman worker runs in it.
//!
//! The operator runs `gearfleet-drain` as a native sidecar of every worker pod and gives each
//! worker container a `preStop` hook that GETs `/drain` from it. The kubelet sends SIGTERM to a
//! container only once its hook has returned, so [`drain_pod`] decides how long a worker keeps
//! running: it sends `fleet drain-self` to every broker until none of the pod's connections holds a
//! job, or until the drain timeout. The broker drains every connection from the hook's own IP
//! (the pod's), so this needs no admin token and no client id: a PHP, Python, Perl, C or `gearman
//! -w` worker is drained exactly like one of ours.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use gearfleet_proto::admin::DrainSelfReply;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, sleep, timeout};
use tokio_util::sync::CancellationToken;

use crate::config::ServerAddr;

/// How the hook drains.
#[derive(Debug, Clone)]
pub struct DrainHookConfig {
    /// Every broker the pod's workers may be connected to.
    pub servers: Vec<ServerAddr>,
    /// The longest the hook waits for busy workers (the pool's `scaling.drainTimeout`).
    pub timeout: Duration,
    /// How often it asks the brokers again.
    pub poll: Duration,
    /// How long one broker may take to connect or answer.
    pub request_timeout: Duration,
    /// Attempts on a broker that cannot be reached before the hook stops waiting for it (a broker
    /// that is down holds no job of this pod).
    pub unreachable_attempts: u32,
}

impl DrainHookConfig {
    /// The defaults for `servers` and `timeout`: ask every 500 ms, 2 s per request, 3 attempts.
    pub fn new(servers: Vec<ServerAddr>, timeout: Duration) -> DrainHookConfig {
        DrainHookConfig {
            servers,
            timeout,
            poll: Duration::from_millis(500),
            request_timeout: Duration::from_secs(2),
            unreachable_attempts: 3,
        }
    }
}

/// How a drain ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainOutcome {
    /// The pod's connections, summed over the brokers, at the last answer of each.
    pub connections: usize,
    /// Of them, those still holding a job when the hook returned (non-zero only on a timeout).
    pub busy: usize,
    /// Brokers given up on because they could not be reached.
    pub unreachable: Vec<String>,
    /// Whether the drain timeout ran out with jobs still held.
    pub timed_out: bool,
    /// How long it took.
    pub waited: Duration,
}

impl DrainOutcome {
    /// One line for the log and the hook's HTTP answer.
    pub fn summary(&self) -> String {
        let mut line = if self.timed_out {
            format!(
                "drain timeout after {:.1}s: {} of {} connections still busy",
                self.waited.as_secs_f64(),
                self.busy,
                self.connections
            )
        } else {
            format!("drained {} connections in {:.1}s", self.connections, self.waited.as_secs_f64())
        };
        if !self.unreachable.is_empty() {
            line.push_str(&format!("; unreachable: {}", self.unreachable.join(",")));
        }
        line
    }
}

/// One `fleet drain-self` on `server`.
async fn ask(server: &ServerAddr, request_timeout: Duration) -> Result<DrainSelfReply, String> {
    let exchange = async {
        let mut stream = TcpStream::connect((server.host.as_str(), server.port)).await.map_err(|e| e.to_string())?;
        stream.write_all(b"fleet drain-self\n").await.map_err(|e| e.to_string())?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).await.map_err(|e| e.to_string())?;
        DrainSelfReply::parse(&line).ok_or_else(|| format!("unexpected answer {:?}", line.trim_end()))
    };
    timeout(request_timeout, exchange).await.unwrap_or_else(|_| Err("no answer in time".to_string()))
}

/// What one broker has said so far.
#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    /// Its last answer.
    answer: Option<DrainSelfReply>,
    /// Its failed attempts in a row.
    failures: u32,
}

impl Progress {
    /// Nothing more to wait for from this broker: none of the pod's connections there is busy, or
    /// it could not be reached `attempts` times in a row.
    fn settled(&self, attempts: u32) -> bool {
        self.answer.is_some_and(|a| a.busy == 0) || self.failures >= attempts
    }
}

/// Drains the pod's connections on every broker and waits until none holds a job, or until
/// `config.timeout`.
pub async fn drain_pod(config: &DrainHookConfig) -> DrainOutcome {
    let started = Instant::now();
    let deadline = started + config.timeout;
    let attempts = config.unreachable_attempts;
    let mut progress = vec![Progress::default(); config.servers.len()];
    let mut unreachable = Vec::new();
    loop {
        for (server, p) in config.servers.iter().zip(progress.iter_mut()) {
            if p.settled(attempts) {
                continue;
            }
            match ask(server, config.request_timeout).await {
                Ok(reply) => *p = Progress { answer: Some(reply), failures: 0 },
                Err(error) => {
                    p.failures += 1;
                    tracing::warn!(%server, %error, attempt = p.failures, "drain request failed");
                    if p.failures >= attempts {
                        unreachable.push(server.to_string());
                    }
                }
            }
        }
        let waiting = progress.iter().any(|p| !p.settled(attempts));
        let now = Instant::now();
        if !waiting || now >= deadline {
            let answers = progress.iter().filter_map(|p| p.answer);
            return DrainOutcome {
                connections: answers.clone().map(|a| a.connections).sum(),
                busy: answers.map(|a| a.busy).sum(),
                unreachable,
                timed_out: waiting,
                waited: now - started,
            };
        }
        sleep(config.poll.min(deadline - now)).await;
    }
}

async fn drain(State(config): State<DrainHookConfig>) -> (StatusCode, String) {
    tracing::info!(servers = config.servers.len(), timeout = ?config.timeout, "pre-stop drain started");
    let outcome = drain_pod(&config).await;
    let summary = outcome.summary();
    if outcome.timed_out {
        // The kubelet records a FailedPreStopHook Event with this text, then stops the container.
        tracing::warn!(busy = outcome.busy, "{summary}");
        (StatusCode::GATEWAY_TIMEOUT, format!("{summary}\n"))
    } else {
        tracing::info!(connections = outcome.connections, "{summary}");
        (StatusCode::OK, format!("{summary}\n"))
    }
}

/// Serves `GET /drain` (runs [`drain_pod`]; 200 once drained, 504 on the drain timeout) and
/// `GET /healthz` until `stop`.
pub async fn serve(listener: TcpListener, config: DrainHookConfig, stop: CancellationToken) -> std::io::Result<()> {
    let app = Router::new().route("/drain", get(drain)).route("/healthz", get(|| async { "ok\n" })).with_state(config);
    axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await
}
