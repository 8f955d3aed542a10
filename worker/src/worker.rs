//! The worker: configuration, lifecycle, drain and force-stop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::backoff::BackoffPolicy;
use crate::client::Client;
use crate::config::{self, ConfigError, ServerAddr};
use crate::connect::DEFAULT_CONNECT_TIMEOUT;
use crate::function::{BoxError, Function, Handler};
use crate::http;
use crate::lifecycle::WorkerState;
use crate::metrics::Metrics;
use crate::slot;

type InitHook = Box<dyn Fn() -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync>;

/// Why a worker could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("no function registered")]
    NoFunctions,
    #[error("function {0:?} registered twice")]
    DuplicateFunction(String),
    #[error("concurrency must be at least 1")]
    ZeroConcurrency,
    #[error("max_jobs must be at least 1")]
    ZeroMaxJobs,
    #[error("cannot listen for http on {addr}: {source}")]
    Http {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signal(#[source] std::io::Error),
    #[error("init hook failed: {0}")]
    Init(#[source] BoxError),
}

/// Why a worker stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExitReason {
    /// SIGTERM/SIGINT, or the future given to [`Worker::run_until`] resolved.
    Shutdown,
    /// `max_jobs` jobs were handled: the process should exit 0 so it is replaced (recycling).
    MaxJobs,
    /// [`WorkerStatus::drain`] was called.
    Requested,
}

/// What [`Worker::run`] reports when the worker has stopped.
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
    state: watch::Sender<WorkerState>,
    exit_reason: OnceLock<ExitReason>,
    jobs_done: AtomicU64,
    http_addr: Option<SocketAddr>,
}

impl Shared {
    pub(crate) fn state(&self) -> WorkerState {
        *self.state.borrow()
    }

    fn set_state(&self, s: WorkerState) {
        let old = self.state.send_replace(s);
        self.metrics.set_state(s);
        if old != s {
            tracing::info!(from = %old, to = %s, "worker state");
        }
    }

    /// A slot registered with a server: the worker is running unless it has moved past that.
    pub(crate) fn mark_registered(&self) {
        let changed = self.state.send_if_modified(|s| {
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
        let _ = self.exit_reason.set(reason);
        self.drain.cancel();
    }

    /// Counts a handled job; reaching `max_jobs` starts the drain.
    pub(crate) fn job_finished(&self) {
        let done = self.jobs_done.fetch_add(1, Ordering::AcqRel) + 1;
        if self.max_jobs.is_some_and(|max| done >= max) && !self.drain.is_cancelled() {
            tracing::info!(jobs = done, "max_jobs reached; draining so the process can be replaced");
            self.begin_drain(ExitReason::MaxJobs);
        }
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
    pub fn state(&self) -> WorkerState {
        self.shared.state()
    }

    /// Follows state changes.
    pub fn watch(&self) -> watch::Receiver<WorkerState> {
        self.shared.state.subscribe()
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
        self.shared.jobs_done.load(Ordering::Acquire)
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

/// Configures a [`Worker`]. Starts from the environment (see [`crate::config`]); every setter
/// overrides it.
pub struct WorkerBuilder {
    servers: Result<Vec<ServerAddr>, ConfigError>,
    client_id: String,
    concurrency: Result<usize, ConfigError>,
    max_jobs: Result<Option<u64>, ConfigError>,
    drain_timeout: Result<Duration, ConfigError>,
    http: Result<Option<SocketAddr>, ConfigError>,
    cancel_grace: Duration,
    reconnect: BackoffPolicy,
    connect_timeout: Duration,
    sleep_poll: Option<Duration>,
    functions: Vec<Function>,
    init: Option<InitHook>,
    init_retries: u32,
    init_backoff: BackoffPolicy,
}

fn env_parsed<T>(
    key: &'static str,
    parse: impl Fn(&str) -> Result<T, ConfigError>,
    default: T,
) -> Result<T, ConfigError> {
    match config::env_nonempty(key) {
        Some(v) => parse(&v),
        None => Ok(default),
    }
}

fn parse_count(what: &'static str, v: &str) -> Result<u64, ConfigError> {
    v.trim().parse::<u64>().map_err(|e| ConfigError { what, value: v.to_string(), reason: e.to_string() })
}

impl WorkerBuilder {
    /// Defaults taken from the environment: `GEARMAN_SERVERS`, `GEARFLEET_CLIENT_ID` /
    /// `POD_NAME`, `GEARFLEET_CONCURRENCY`, `GEARFLEET_MAX_JOBS`, `GEARFLEET_DRAIN_TIMEOUT`,
    /// `GEARFLEET_WORKER_HTTP`. Invalid values are reported by [`build`](Self::build) unless a
    /// setter replaced them.
    pub fn from_env() -> WorkerBuilder {
        let http = match std::env::var(config::ENV_HTTP) {
            Ok(v) => config::parse_optional_addr(config::ENV_HTTP, &v),
            Err(_) => config::parse_optional_addr(config::ENV_HTTP, config::DEFAULT_HTTP_ADDR),
        };
        WorkerBuilder {
            servers: config::servers_from_env(),
            client_id: config::default_client_id(),
            concurrency: env_parsed(
                config::ENV_CONCURRENCY,
                |v| parse_count(config::ENV_CONCURRENCY, v).map(|n| n as usize),
                1,
            ),
            max_jobs: env_parsed(config::ENV_MAX_JOBS, |v| parse_count(config::ENV_MAX_JOBS, v).map(Some), None),
            drain_timeout: env_parsed(
                config::ENV_DRAIN_TIMEOUT,
                |v| config::parse_duration(config::ENV_DRAIN_TIMEOUT, v),
                config::DEFAULT_DRAIN_TIMEOUT,
            ),
            http,
            ..WorkerBuilder::new()
        }
    }

    /// Defaults without reading the environment: `127.0.0.1:4730`, client id from the host
    /// name, concurrency 1, no `max_jobs`, 45s drain timeout, no HTTP endpoint.
    pub fn new() -> WorkerBuilder {
        WorkerBuilder {
            servers: Ok(vec![ServerAddr::default()]),
            client_id: gethostname::gethostname().to_string_lossy().into_owned(),
            concurrency: Ok(1),
            max_jobs: Ok(None),
            drain_timeout: Ok(config::DEFAULT_DRAIN_TIMEOUT),
            http: Ok(None),
            cancel_grace: Duration::from_millis(500),
            reconnect: BackoffPolicy::new(Duration::from_millis(100), Duration::from_secs(30)),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            sleep_poll: Some(Duration::from_secs(60)),
            functions: Vec::new(),
            init: None,
            init_retries: 0,
            init_backoff: BackoffPolicy::new(Duration::from_secs(1), Duration::from_secs(30)),
        }
    }

    /// The servers to serve (every one gets `concurrency` connections).
    pub fn servers<I, S>(mut self, servers: I) -> WorkerBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<ServerAddr>,
    {
        self.servers = Ok(servers.into_iter().map(Into::into).collect());
        self
    }

    /// The servers as a comma-separated `host[:port]` list, as in `GEARMAN_SERVERS`.
    pub fn server_list(mut self, list: &str) -> WorkerBuilder {
        self.servers = config::parse_servers(list);
        self
    }

    /// The id sent with SET_CLIENT_ID; `fleet drain <id>` on the broker targets it.
    pub fn client_id(mut self, id: impl Into<String>) -> WorkerBuilder {
        self.client_id = id.into();
        self
    }

    /// Connections (each running one job at a time) per server.
    pub fn concurrency(mut self, n: usize) -> WorkerBuilder {
        self.concurrency = Ok(n);
        self
    }

    /// Drain and stop after `n` jobs (so the pod's container is restarted fresh); `None` never.
    pub fn max_jobs(mut self, n: impl Into<Option<u64>>) -> WorkerBuilder {
        self.max_jobs = Ok(n.into());
        self
    }

    /// How long jobs in hand may take to finish once draining starts; after it they are
    /// cancelled and failed. Keep it below the pod's `terminationGracePeriodSeconds`.
    pub fn drain_timeout(mut self, timeout: Duration) -> WorkerBuilder {
        self.drain_timeout = Ok(timeout);
        self
    }

    /// How long a cancelled handler (timeout, force-stop) gets to return on its own before it
    /// is aborted (default 500ms). Its result is discarded either way.
    pub fn cancel_grace(mut self, grace: Duration) -> WorkerBuilder {
        self.cancel_grace = grace;
        self
    }

    /// Where to serve `/healthz`, `/readyz`, `/state`, `/metrics`; `None` disables it. Port 0
    /// picks a free port ([`WorkerStatus::http_addr`] tells which).
    pub fn http_addr(mut self, addr: impl Into<Option<SocketAddr>>) -> WorkerBuilder {
        self.http = Ok(addr.into());
        self
    }

    /// Bounds of the reconnect backoff (default 100ms to 30s, with jitter).
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> WorkerBuilder {
        self.reconnect = BackoffPolicy::new(min, max);
        self
    }

    pub fn connect_timeout(mut self, timeout: Duration) -> WorkerBuilder {
        self.connect_timeout = timeout;
        self
    }

    /// While asleep (after PRE_SLEEP), grab again after this long even without a NOOP: a safety
    /// net against servers that miss wake-ups (default 60s; `None` to rely on NOOP alone).
    pub fn sleep_poll(mut self, every: Option<Duration>) -> WorkerBuilder {
        self.sleep_poll = every;
        self
    }

    /// Serves `name` with `handler`.
    pub fn function(self, name: impl AsRef<str>, handler: impl Handler) -> WorkerBuilder {
        self.register(Function::new(name, handler))
    }

    /// Serves a function with options (timeout, static `next`).
    pub fn register(mut self, function: Function) -> WorkerBuilder {
        self.functions.push(function);
        self
    }

    /// Runs `hook` before taking work (open database pools, warm caches...). If it fails the
    /// state becomes Failed; it is retried [`init_retries`](Self::init_retries) times with
    /// backoff, then `run()` returns [`WorkerError::Init`] and the process should exit non-zero
    /// (Kubernetes then restarts the container with its own backoff).
    pub fn init<F, Fut, E>(mut self, hook: F) -> WorkerBuilder
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.init = Some(Box::new(move || {
            let fut = hook();
            Box::pin(async move { fut.await.map_err(Into::into) })
        }));
        self
    }

    /// Retries of a failed init hook within the process (default 0).
    pub fn init_retries(mut self, retries: u32, min_delay: Duration, max_delay: Duration) -> WorkerBuilder {
        self.init_retries = retries;
        self.init_backoff = BackoffPolicy::new(min_delay, max_delay);
        self
    }

    /// Checks the configuration and binds the HTTP port.
    pub fn build(self) -> Result<Worker, WorkerError> {
        let servers = self.servers?;
        let concurrency = self.concurrency?;
        let max_jobs = self.max_jobs?;
        let drain_timeout = self.drain_timeout?;
        let http = self.http?;
        if self.functions.is_empty() {
            return Err(WorkerError::NoFunctions);
        }
        for (i, f) in self.functions.iter().enumerate() {
            if self.functions[..i].iter().any(|g| g.name == f.name) {
                return Err(WorkerError::DuplicateFunction(f.name.to_string()));
            }
        }
        if concurrency == 0 {
            return Err(WorkerError::ZeroConcurrency);
        }
        if max_jobs == Some(0) {
            return Err(WorkerError::ZeroMaxJobs);
        }
        let servers = if servers.is_empty() { vec![ServerAddr::default()] } else { servers };
        let http_listener = match http {
            Some(addr) => {
                let l = std::net::TcpListener::bind(addr).map_err(|source| WorkerError::Http { addr, source })?;
                l.set_nonblocking(true).map_err(|source| WorkerError::Http { addr, source })?;
                Some(l)
            }
            None => None,
        };
        let http_addr = http_listener.as_ref().and_then(|l| l.local_addr().ok());
        let chain = Client::builder()
            .servers(servers.clone())
            .recovery_time(Duration::from_secs(5))
            .connect_timeout(self.connect_timeout)
            .build();
        let shared = Arc::new(Shared {
            job_permits: max_jobs.map(|n| Semaphore::new(n.min(Semaphore::MAX_PERMITS as u64) as usize)),
            servers,
            client_id: self.client_id,
            concurrency,
            max_jobs,
            drain_timeout,
            cancel_grace: self.cancel_grace,
            reconnect: self.reconnect,
            connect_timeout: self.connect_timeout,
            sleep_poll: self.sleep_poll,
            functions: self.functions,
            metrics: Metrics::new(),
            drain: CancellationToken::new(),
            force: CancellationToken::new(),
            chain,
            state: watch::Sender::new(WorkerState::Disabled),
            exit_reason: OnceLock::new(),
            jobs_done: AtomicU64::new(0),
            http_addr,
        });
        Ok(Worker {
            shared,
            init: self.init,
            init_retries: self.init_retries,
            init_backoff: self.init_backoff,
            http_listener,
        })
    }
}

impl Default for WorkerBuilder {
    fn default() -> WorkerBuilder {
        WorkerBuilder::new()
    }
}

/// A configured worker. Run it with [`run`](Worker::run) (handles SIGTERM/SIGINT) or
/// [`run_until`](Worker::run_until).
pub struct Worker {
    shared: Arc<Shared>,
    init: Option<InitHook>,
    init_retries: u32,
    init_backoff: BackoffPolicy,
    http_listener: Option<std::net::TcpListener>,
}

impl Worker {
    /// A builder initialised from the environment ([`WorkerBuilder::from_env`]).
    pub fn builder() -> WorkerBuilder {
        WorkerBuilder::from_env()
    }

    /// A handle to observe (and drain) the worker while it runs.
    pub fn status(&self) -> WorkerStatus {
        WorkerStatus { shared: self.shared.clone() }
    }

    /// Runs until SIGTERM or SIGINT (then drains), `max_jobs`, or [`WorkerStatus::drain`]. A
    /// second signal while draining force-stops at once.
    pub async fn run(self) -> Result<RunSummary, WorkerError> {
        let first = CancellationToken::new();
        let second = CancellationToken::new();
        let listener = spawn_signal_listener(first.clone(), second.clone())?;
        let result = self.run_inner(first.cancelled_owned(), second.cancelled_owned()).await;
        listener.abort();
        result
    }

    /// Runs until `shutdown` resolves (then drains), `max_jobs`, or [`WorkerStatus::drain`].
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send) -> Result<RunSummary, WorkerError> {
        self.run_inner(shutdown, std::future::pending()).await
    }

    async fn run_inner(
        self,
        shutdown: impl Future<Output = ()> + Send,
        force: impl Future<Output = ()> + Send,
    ) -> Result<RunSummary, WorkerError> {
        let Worker { shared, init, init_retries, init_backoff, http_listener } = self;
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
        let result = lifecycle(&shared, init, init_retries, init_backoff, shutdown, force).await;
        http_stop.cancel();
        if let Some(t) = http_task {
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
        result
    }
}

async fn lifecycle(
    shared: &Arc<Shared>,
    init: Option<InitHook>,
    init_retries: u32,
    init_backoff: BackoffPolicy,
    shutdown: impl Future<Output = ()> + Send,
    force: impl Future<Output = ()> + Send,
) -> Result<RunSummary, WorkerError> {
    tokio::pin!(shutdown);
    tokio::pin!(force);
    let stopped_early = |shared: &Shared| {
        shared.set_state(WorkerState::Stopped);
        RunSummary { reason: ExitReason::Shutdown, jobs_done: 0, forced: false }
    };

    if let Some(hook) = init {
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
        reason: shared.exit_reason.get().copied().unwrap_or(ExitReason::Shutdown),
        jobs_done: shared.jobs_done.load(Ordering::Acquire),
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
fn spawn_signal_listener(
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
fn spawn_signal_listener(
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
