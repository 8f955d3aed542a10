//! The worker's public face: [`WorkerBuilder`] (configuration from the environment and setters,
//! checked by `build`) and [`Worker`], whose run is in `run.rs`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::backoff::BackoffPolicy;
use crate::client::Client;
use crate::config::{self, ConfigError, ServerAddr};
use crate::connect::DEFAULT_CONNECT_TIMEOUT;
use crate::error::WorkerError;
use crate::function::{BoxError, Function, Handler};
use crate::metrics::Metrics;
use crate::run::{self, Init, InitHook};
use crate::shared::{Progress, RunSummary, Shared, WorkerStatus};

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
            http_addr,
            progress: Progress::new(),
        });
        let init = self.init.map(|hook| Init { hook, retries: self.init_retries, backoff: self.init_backoff });
        Ok(Worker { shared, init, http_listener })
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
    init: Option<Init>,
    http_listener: Option<std::net::TcpListener>,
}

impl Worker {
    /// A builder initialised from the environment ([`WorkerBuilder::from_env`]).
    pub fn builder() -> WorkerBuilder {
        WorkerBuilder::from_env()
    }

    /// A handle to observe (and drain) the worker while it runs.
    pub fn status(&self) -> WorkerStatus {
        WorkerStatus::new(self.shared.clone())
    }

    /// Runs until SIGTERM or SIGINT (then drains), `max_jobs`, or [`WorkerStatus::drain`]. A
    /// second signal while draining force-stops at once.
    pub async fn run(self) -> Result<RunSummary, WorkerError> {
        let first = CancellationToken::new();
        let second = CancellationToken::new();
        let listener = run::spawn_signal_listener(first.clone(), second.clone())?;
        let result =
            run::run(self.shared, self.init, self.http_listener, first.cancelled_owned(), second.cancelled_owned())
                .await;
        listener.abort();
        result
    }

    /// Runs until `shutdown` resolves (then drains), `max_jobs`, or [`WorkerStatus::drain`].
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send) -> Result<RunSummary, WorkerError> {
        run::run(self.shared, self.init, self.http_listener, shutdown, std::future::pending()).await
    }
}
