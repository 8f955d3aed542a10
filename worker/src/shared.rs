//! State shared by a running worker's slots, its HTTP endpoint and its [`WorkerStatus`] handles,
//! and what the worker reports when it stops. A leaf: the worker, its slots and its HTTP
//! endpoint all use it, and it uses none of them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::backoff::BackoffPolicy;
use crate::client::Client;
use crate::config::ServerAddr;
use crate::function::Function;
use crate::lifecycle::WorkerState;
use crate::metrics::Metrics;

/// Why a worker stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExitReason {
    /// SIGTERM/SIGINT, or the future given to [`Worker::run_until`](crate::Worker::run_until) resolved.
    Shutdown,
    /// `max_jobs` jobs were handled: the process should exit 0 so it is replaced (recycling).
    MaxJobs,
    /// [`WorkerStatus::drain`] was called.
    Requested,
}

/// What [`Worker::run`](crate::Worker::run) reports when the worker has stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunSummary {
    pub reason: ExitReason,
    /// Jobs handled (any outcome except a lost connection).
    pub jobs_done: u64,
    /// Jobs still running when the force-stop timeout passed were cancelled and failed.
    pub forced: bool,
}

/// State shared by the worker's slots, its HTTP endpoint and [`WorkerStatus`] handles.
pub(crate) struct Shared {
    pub(crate) servers: Vec<ServerAddr>,
    pub(crate) client_id: String,
    pub(crate) concurrency: usize,
    pub(crate) max_jobs: Option<u64>,
    pub(crate) drain_timeout: Duration,
    pub(crate) cancel_grace: Duration,
    pub(crate) reconnect: BackoffPolicy,
    pub(crate) connect_timeout: Duration,
    pub(crate) sleep_poll: Option<Duration>,
    pub(crate) functions: Vec<Function>,
    pub(crate) metrics: Metrics,
    /// Stop taking jobs (drain).
    pub(crate) drain: CancellationToken,
    /// Cancel the jobs in hand and fail them (force-stop).
    pub(crate) force: CancellationToken,
    /// Grabs allowed before `max_jobs` is reached: a permit is taken before GRAB_JOB, given back
    /// on NO_JOB and kept (forgotten) when a job is assigned.
    pub(crate) job_permits: Option<Semaphore>,
    /// Submits chained jobs.
    pub(crate) chain: Client,
    /// The bound address of the HTTP endpoint, if enabled.
    pub(crate) http_addr: Option<SocketAddr>,
    pub(crate) progress: Progress,
}

/// Where a worker is and what it has done; changed only through [`Shared`]'s methods.
pub(crate) struct Progress {
    state: watch::Sender<WorkerState>,
    exit_reason: OnceLock<ExitReason>,
    jobs_done: AtomicU64,
}

impl Progress {
    /// A worker that has not started: state Disabled, no jobs done.
    pub(crate) fn new() -> Progress {
        Progress {
            state: watch::Sender::new(WorkerState::Disabled),
            exit_reason: OnceLock::new(),
            jobs_done: AtomicU64::new(0),
        }
    }
}

impl Shared {
    pub(crate) fn state(&self) -> WorkerState {
        *self.progress.state.borrow()
    }

    pub(crate) fn set_state(&self, s: WorkerState) {
        let old = self.progress.state.send_replace(s);
        self.metrics.set_state(s);
        if old != s {
            tracing::info!(from = %old, to = %s, "worker state");
        }
    }

    /// A slot registered with a server: the worker is running unless it has moved past that.
    pub(crate) fn mark_registered(&self) {
        let changed = self.progress.state.send_if_modified(|s| {
            if *s == WorkerState::Initialized {
                *s = WorkerState::Running;
                true
            } else {
                false
            }
        });
        if changed {
            self.metrics.set_state(WorkerState::Running);
            tracing::info!(from = "initialized", to = "running", "worker state");
        }
    }

    pub(crate) fn begin_drain(&self, reason: ExitReason) {
        let _ = self.progress.exit_reason.set(reason);
        self.drain.cancel();
    }

    /// Counts a handled job; reaching `max_jobs` starts the drain.
    pub(crate) fn job_finished(&self) {
        let done = self.progress.jobs_done.fetch_add(1, Ordering::AcqRel) + 1;
        if self.max_jobs.is_some_and(|max| done >= max) && !self.drain.is_cancelled() {
            tracing::info!(jobs = done, "max_jobs reached; draining so the process can be replaced");
            self.begin_drain(ExitReason::MaxJobs);
        }
    }

    /// Jobs handled so far.
    pub(crate) fn jobs_done(&self) -> u64 {
        self.progress.jobs_done.load(Ordering::Acquire)
    }

    /// Why the worker is draining, once it is.
    pub(crate) fn exit_reason(&self) -> Option<ExitReason> {
        self.progress.exit_reason.get().copied()
    }

    pub(crate) fn function(&self, name: &[u8]) -> Option<&Function> {
        self.functions.iter().find(|f| f.name.as_bytes() == name)
    }
}

/// A read-only (plus [`drain`](WorkerStatus::drain)) view of a worker, usable while it runs.
#[derive(Clone)]
pub struct WorkerStatus {
    shared: Arc<Shared>,
}

impl WorkerStatus {
    pub(crate) fn new(shared: Arc<Shared>) -> WorkerStatus {
        WorkerStatus { shared }
    }

    pub fn state(&self) -> WorkerState {
        self.shared.state()
    }

    /// Follows state changes.
    pub fn watch(&self) -> watch::Receiver<WorkerState> {
        self.shared.progress.state.subscribe()
    }

    /// Waits until the state satisfies `pred` (returns at once if it already does).
    pub async fn wait_for(&self, pred: impl Fn(WorkerState) -> bool) -> WorkerState {
        let mut rx = self.watch();
        match rx.wait_for(|s| pred(*s)).await {
            Ok(s) => *s,
            Err(_) => self.state(),
        }
    }

    /// Jobs handled so far.
    pub fn jobs_done(&self) -> u64 {
        self.shared.jobs_done()
    }

    /// Jobs running now.
    pub fn busy(&self) -> i64 {
        self.shared.metrics.busy.get()
    }

    /// Connections currently registered with a server.
    pub fn connections(&self) -> i64 {
        self.shared.metrics.connections.get()
    }

    /// The bound address of the HTTP endpoint, if enabled.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.shared.http_addr
    }

    /// The client id sent to the servers.
    pub fn client_id(&self) -> &str {
        &self.shared.client_id
    }

    /// Starts draining, as SIGTERM does: no new jobs, finish those in hand, then stop.
    pub fn drain(&self) {
        self.shared.begin_drain(ExitReason::Requested);
    }

    /// The metrics in OpenMetrics text form, as served on `/metrics`.
    pub fn metrics_text(&self) -> String {
        self.shared.metrics.encode()
    }
}
