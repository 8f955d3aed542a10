//! A worker's run, from start to stop: the init hook (retried with backoff), the connection
//! slots, the HTTP endpoint, the drain and the force-stop, and the signals that start them.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::backoff::BackoffPolicy;
use crate::error::WorkerError;
use crate::function::BoxError;
use crate::http;
use crate::lifecycle::WorkerState;
use crate::shared::{ExitReason, RunSummary, Shared};
use crate::slot;

pub(crate) type InitHook = Box<dyn Fn() -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync>;

/// The init hook and how a failed one is retried.
pub(crate) struct Init {
    pub(crate) hook: InitHook,
    pub(crate) retries: u32,
    pub(crate) backoff: BackoffPolicy,
}

/// Serves HTTP on `http_listener` (if any) while the worker runs: init, then the slots until
/// `shutdown` resolves (then drains), `max_jobs`, or a requested drain; `force` force-stops.
pub(crate) async fn run(
    shared: Arc<Shared>,
    init: Option<Init>,
    http_listener: Option<std::net::TcpListener>,
    shutdown: impl Future<Output = ()> + Send,
    force: impl Future<Output = ()> + Send,
) -> Result<RunSummary, WorkerError> {
    let http_stop = CancellationToken::new();
    let http_task = match http_listener {
        Some(l) => {
            let addr = l.local_addr().ok();
            let l = tokio::net::TcpListener::from_std(l).map_err(|source| WorkerError::Http {
                addr: addr.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
                source,
            })?;
            tracing::info!(addr = ?addr, "worker http endpoint listening");
            Some(tokio::spawn(http::serve(l, shared.clone(), http_stop.clone())))
        }
        None => None,
    };
    let result = lifecycle(&shared, init, shutdown, force).await;
    http_stop.cancel();
    if let Some(t) = http_task {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
    result
}

async fn lifecycle(
    shared: &Arc<Shared>,
    init: Option<Init>,
    shutdown: impl Future<Output = ()> + Send,
    force: impl Future<Output = ()> + Send,
) -> Result<RunSummary, WorkerError> {
    tokio::pin!(shutdown);
    tokio::pin!(force);
    let stopped_early = |shared: &Shared| {
        shared.set_state(WorkerState::Stopped);
        RunSummary { reason: ExitReason::Shutdown, jobs_done: 0, forced: false }
    };

    if let Some(Init { hook, retries: init_retries, backoff: init_backoff }) = init {
        let mut backoff = init_backoff.start();
        let mut attempt = 0u32;
        loop {
            let outcome = tokio::select! {
                r = hook() => r,
                _ = &mut shutdown => return Ok(stopped_early(shared)),
            };
            let Err(e) = outcome else { break };
            shared.set_state(WorkerState::Failed);
            if attempt >= init_retries {
                tracing::error!(error = %e, attempts = attempt + 1, "init hook failed; giving up");
                return Err(WorkerError::Init(e));
            }
            attempt += 1;
            let delay = backoff.next_delay();
            tracing::warn!(error = %e, retry_in = ?delay, attempt, "init hook failed; retrying");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = &mut shutdown => return Ok(stopped_early(shared)),
            }
        }
    }
    shared.set_state(WorkerState::Initialized);
    let functions: Vec<&str> = shared.functions.iter().map(|f| f.name()).collect();
    let servers: Vec<String> = shared.servers.iter().map(ToString::to_string).collect();
    tracing::info!(?functions, ?servers, client_id = %shared.client_id, concurrency = shared.concurrency, "worker starting");

    let mut slots = JoinSet::new();
    for server in &shared.servers {
        for index in 0..shared.concurrency {
            slots.spawn(slot::run(shared.clone(), server.clone(), index));
        }
    }

    tokio::select! {
        biased;
        _ = shared.drain.cancelled() => {}
        _ = &mut shutdown => {
            tracing::info!("shutdown requested");
            shared.begin_drain(ExitReason::Shutdown);
        }
    }
    shared.set_state(WorkerState::Draining);
    tracing::info!(
        busy = shared.metrics.busy.get(),
        timeout = ?shared.drain_timeout,
        "draining: taking no new jobs, waiting for the jobs in hand"
    );

    let deadline = tokio::time::sleep(shared.drain_timeout);
    let forced = tokio::select! {
        _ = join_all(&mut slots) => false,
        _ = deadline => {
            tracing::warn!(busy = shared.metrics.busy.get(), "drain timeout passed; cancelling and failing the jobs in hand");
            true
        }
        _ = &mut force => {
            tracing::warn!(busy = shared.metrics.busy.get(), "second signal; cancelling and failing the jobs in hand");
            true
        }
    };
    if forced {
        shared.force.cancel();
        // Slots cancel their jobs, wait at most the cancel grace, send WORK_FAIL and close.
        let bound = shared.cancel_grace + Duration::from_secs(3);
        if tokio::time::timeout(bound, join_all(&mut slots)).await.is_err() {
            tracing::error!("connections did not close after force-stop; aborting them");
            slots.abort_all();
            join_all(&mut slots).await;
        }
    }
    shared.set_state(WorkerState::Stopped);
    let summary = RunSummary {
        reason: shared.exit_reason().unwrap_or(ExitReason::Shutdown),
        jobs_done: shared.jobs_done(),
        forced,
    };
    tracing::info!(reason = ?summary.reason, jobs = summary.jobs_done, forced, "worker stopped");
    Ok(summary)
}

async fn join_all(slots: &mut JoinSet<()>) {
    while let Some(r) = slots.join_next().await {
        if let Err(e) = r
            && e.is_panic()
        {
            tracing::error!(error = %e, "worker connection task panicked");
        }
    }
}

#[cfg(unix)]
pub(crate) fn spawn_signal_listener(
    first: CancellationToken,
    second: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, WorkerError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(WorkerError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(WorkerError::Signal)?;
    Ok(tokio::spawn(async move {
        let mut count = 0;
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            count += 1;
            if count == 1 {
                tracing::info!(signal = name, "signal received; draining");
                first.cancel();
            } else {
                tracing::warn!(signal = name, "second signal received; force-stopping");
                second.cancel();
                return;
            }
        }
    }))
}

#[cfg(not(unix))]
pub(crate) fn spawn_signal_listener(
    first: CancellationToken,
    second: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, WorkerError> {
    Ok(tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            first.cancel();
        }
        if tokio::signal::ctrl_c().await.is_ok() {
            second.cancel();
        }
    }))
}
