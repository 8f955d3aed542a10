//! A Gearman client: foreground and background submissions, status queries and echo, with many
//! requests multiplexed on one connection per server.
//!
//! Each server connection is owned by one task (`client/connection.rs`); this module picks the
//! server for each request and hands the request to that server's task.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use gearfleet_proto::{Packet, PacketType};
use tokio::sync::{mpsc, oneshot};

use crate::client::connection::{JobSink, Request, serve_connection};
use crate::config::{self, ConfigError, ServerAddr};
use crate::connect::{DEFAULT_CONNECT_TIMEOUT, connect};

mod connection;
mod reply;

/// Job priority: gearfleet-proto's, which also says which packet submits which.
pub use gearfleet_proto::Priority;
pub use reply::{ClientError, JobEvent, JobStatus};

/// How a client picks a server for each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// The first server in list order that is not in its recovery time: fail-over.
    #[default]
    Sequence,
    /// Rotate the starting server on every request: load spreading.
    RoundRobin,
}

/// A submitted foreground job: its handle, its events, and (awaited) its result.
#[derive(Debug)]
pub struct JobHandle {
    handle: String,
    events: mpsc::UnboundedReceiver<JobEvent>,
    result: oneshot::Receiver<Result<Bytes, ClientError>>,
}

impl JobHandle {
    /// The server's job handle.
    pub fn handle(&self) -> &str {
        &self.handle
    }

    /// The next status/data/warning event; `None` once the job has ended and every event has
    /// been taken.
    pub async fn next_event(&mut self) -> Option<JobEvent> {
        self.events.recv().await
    }

    /// Waits for the result, discarding events not taken yet.
    pub async fn result(self) -> Result<Bytes, ClientError> {
        self.result.await.unwrap_or(Err(ClientError::ConnectionLost))
    }
}

impl IntoFuture for JobHandle {
    type Output = Result<Bytes, ClientError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.result())
    }
}

/// A Gearman client. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let servers: Vec<_> = self.inner.servers.iter().map(|s| s.addr.to_string()).collect();
        f.debug_struct("Client").field("servers", &servers).field("strategy", &self.inner.strategy).finish()
    }
}

struct Inner {
    servers: Vec<Server>,
    strategy: Strategy,
    recovery: Duration,
    connect_timeout: Duration,
    next: AtomicUsize,
}

struct Server {
    addr: ServerAddr,
    conn: tokio::sync::Mutex<Option<mpsc::UnboundedSender<Request>>>,
    failed_until: Mutex<Option<Instant>>,
}

/// Configures a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    servers: Vec<ServerAddr>,
    strategy: Strategy,
    recovery: Duration,
    connect_timeout: Duration,
}

impl ClientBuilder {
    pub fn servers<I, S>(mut self, servers: I) -> ClientBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<ServerAddr>,
    {
        self.servers = servers.into_iter().map(Into::into).collect();
        self
    }

    pub fn strategy(mut self, strategy: Strategy) -> ClientBuilder {
        self.strategy = strategy;
        self
    }

    /// How long a server is skipped after a connection error (default 30s). A skipped server
    /// is still tried when no other one can be reached.
    pub fn recovery_time(mut self, recovery: Duration) -> ClientBuilder {
        self.recovery = recovery;
        self
    }

    pub fn connect_timeout(mut self, timeout: Duration) -> ClientBuilder {
        self.connect_timeout = timeout;
        self
    }

    pub fn build(self) -> Client {
        let servers = if self.servers.is_empty() { vec![ServerAddr::default()] } else { self.servers };
        Client {
            inner: Arc::new(Inner {
                servers: servers
                    .into_iter()
                    .map(|addr| Server { addr, conn: tokio::sync::Mutex::new(None), failed_until: Mutex::new(None) })
                    .collect(),
                strategy: self.strategy,
                recovery: self.recovery,
                connect_timeout: self.connect_timeout,
                next: AtomicUsize::new(0),
            }),
        }
    }
}

impl Client {
    pub fn builder() -> ClientBuilder {
        ClientBuilder {
            servers: Vec::new(),
            strategy: Strategy::Sequence,
            recovery: Duration::from_secs(30),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// A client for `servers` with the default strategy (sequence) and recovery time (30s).
    pub fn new<I, S>(servers: I) -> Client
    where
        I: IntoIterator<Item = S>,
        S: Into<ServerAddr>,
    {
        Client::builder().servers(servers).build()
    }

    /// A client for a comma-separated `host[:port]` list (port 4730 by default).
    pub fn from_list(servers: &str) -> Result<Client, ConfigError> {
        Ok(Client::new(config::parse_servers(servers)?))
    }

    /// A client for the servers named by `GEARMAN_SERVERS` (default `127.0.0.1:4730`).
    pub fn from_env() -> Result<Client, ConfigError> {
        Ok(Client::new(config::servers_from_env()?))
    }

    /// Starts a foreground submission; configure it, then `.await` it for a [`JobHandle`], or
    /// call [`Submit::background`] for a background job.
    pub fn submit(&self, function: impl Into<String>, payload: impl Into<Bytes>) -> Submit {
        Submit {
            client: self.clone(),
            function: function.into(),
            payload: payload.into(),
            unique: Bytes::new(),
            priority: Priority::Normal,
        }
    }

    /// Submits a foreground job and waits for its result.
    pub async fn call(&self, function: impl Into<String>, payload: impl Into<Bytes>) -> Result<Bytes, ClientError> {
        self.submit(function, payload).await?.result().await
    }

    /// Asks for a job's status (GET_STATUS). With several servers, the first that knows the
    /// handle answers; otherwise the last answer (unknown) is returned.
    pub async fn get_status(&self, handle: &str) -> Result<JobStatus, ClientError> {
        let mut last = Err(ClientError::ConnectionLost);
        for idx in self.order() {
            let (reply, rx) = oneshot::channel();
            let req = Request::Status { handle: Bytes::copy_from_slice(handle.as_bytes()), reply };
            let result = match self.send_to(idx, req).await {
                Ok(()) => rx.await.unwrap_or(Err(ClientError::ConnectionLost)),
                Err(e) => Err(e),
            };
            match result {
                Ok(status) if status.known => return Ok(status),
                other => last = other,
            }
        }
        last
    }

    /// Sends ECHO_REQ and returns the echoed bytes: a round-trip check.
    pub async fn echo(&self, data: impl Into<Bytes>) -> Result<Bytes, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.dispatch(Request::Echo { data: data.into(), reply }).await?;
        rx.await.unwrap_or(Err(ClientError::ConnectionLost))
    }

    /// Server indexes to try, in order: healthy ones first (by strategy), then those still in
    /// their recovery time, as a last resort.
    fn order(&self) -> Vec<usize> {
        let n = self.inner.servers.len();
        let start = match self.inner.strategy {
            Strategy::Sequence => 0,
            Strategy::RoundRobin => self.inner.next.fetch_add(1, Ordering::Relaxed) % n,
        };
        let now = Instant::now();
        let (mut healthy, recovering): (Vec<usize>, Vec<usize>) = (0..n).map(|i| (start + i) % n).partition(|&i| {
            let until = *self.inner.servers[i].failed_until.lock().unwrap_or_else(|e| e.into_inner());
            until.is_none_or(|t| t <= now)
        });
        healthy.extend(recovering);
        healthy
    }

    /// Sends a request to the first server (by strategy) that takes it.
    async fn dispatch(&self, mut req: Request) -> Result<(), ClientError> {
        let mut last = None;
        for idx in self.order() {
            match self.try_send(idx, req).await {
                Ok(()) => return Ok(()),
                Err((r, e)) => {
                    req = r;
                    last = Some(e);
                }
            }
        }
        let err = last.unwrap_or(ClientError::ConnectionLost);
        req.fail(ClientError::ConnectionLost);
        Err(err)
    }

    async fn send_to(&self, idx: usize, req: Request) -> Result<(), ClientError> {
        self.try_send(idx, req).await.map_err(|(req, e)| {
            req.fail(ClientError::ConnectionLost);
            e
        })
    }

    /// Sends on server `idx`'s connection, connecting first if needed. Gives the request back
    /// if the server cannot be reached.
    async fn try_send(&self, idx: usize, mut req: Request) -> Result<(), (Request, ClientError)> {
        let server = &self.inner.servers[idx];
        // Twice: a cached connection may have closed since it was last used.
        for _ in 0..2 {
            let tx = match self.connection(server).await {
                Ok(tx) => tx,
                Err(e) => return Err((req, e)),
            };
            match tx.send(req) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::SendError(r)) => req = r,
            }
        }
        Err((req, ClientError::ConnectionLost))
    }

    async fn connection(&self, server: &Server) -> Result<mpsc::UnboundedSender<Request>, ClientError> {
        let mut slot = server.conn.lock().await;
        if let Some(tx) = slot.as_ref().filter(|tx| !tx.is_closed()) {
            return Ok(tx.clone());
        }
        match connect(&server.addr, self.inner.connect_timeout).await {
            Ok(conn) => {
                *server.failed_until.lock().unwrap_or_else(|e| e.into_inner()) = None;
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(serve_connection(server.addr.clone(), conn, rx));
                *slot = Some(tx.clone());
                Ok(tx)
            }
            Err(source) => {
                tracing::warn!(server = %server.addr, error = %source, recovery = ?self.inner.recovery, "gearman server unreachable");
                *server.failed_until.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(Instant::now() + self.inner.recovery);
                Err(ClientError::Connect { server: server.addr.clone(), source })
            }
        }
    }
}

/// A foreground submission being configured. `.await` it to submit.
#[must_use = "a submission does nothing until awaited"]
pub struct Submit {
    client: Client,
    function: String,
    payload: Bytes,
    unique: Bytes,
    priority: Priority,
}

impl Submit {
    /// The unique key: submissions with the same function and unique key while the first is
    /// queued or running share one job (coalescing).
    pub fn unique(mut self, unique: impl Into<Bytes>) -> Submit {
        self.unique = unique.into();
        self
    }

    pub fn priority(mut self, priority: Priority) -> Submit {
        self.priority = priority;
        self
    }

    /// Makes this a background job: `.await` then returns the handle once the server has
    /// queued it.
    pub fn background(self) -> SubmitBackground {
        SubmitBackground {
            client: self.client,
            function: self.function,
            payload: self.payload,
            unique: self.unique,
            priority: self.priority,
            epoch: None,
        }
    }

    async fn send(self) -> Result<JobHandle, ClientError> {
        let packet =
            Packet::req(self.priority.submit_type(false), &[self.function.as_bytes(), &self.unique, &self.payload]);
        let (created, created_rx) = oneshot::channel();
        let (events_tx, events) = mpsc::unbounded_channel();
        let (result_tx, result) = oneshot::channel();
        let sink = JobSink { events: events_tx, result: result_tx };
        self.client.dispatch(Request::Submit { packet, reply: created, sink: Some(sink) }).await?;
        let handle = created_rx.await.unwrap_or(Err(ClientError::ConnectionLost))?;
        Ok(JobHandle { handle: String::from_utf8_lossy(&handle).into_owned(), events, result })
    }
}

impl IntoFuture for Submit {
    type Output = Result<JobHandle, ClientError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}

/// A background submission being configured. `.await` it for the job handle.
#[must_use = "a submission does nothing until awaited"]
pub struct SubmitBackground {
    client: Client,
    function: String,
    payload: Bytes,
    unique: Bytes,
    priority: Priority,
    epoch: Option<u64>,
}

impl SubmitBackground {
    pub fn unique(mut self, unique: impl Into<Bytes>) -> SubmitBackground {
        self.unique = unique.into();
        self
    }

    /// Ignored for scheduled jobs: SUBMIT_JOB_EPOCH carries no priority (they run as normal).
    pub fn priority(mut self, priority: Priority) -> SubmitBackground {
        self.priority = priority;
        self
    }

    /// Runs the job no earlier than this Unix time in seconds (SUBMIT_JOB_EPOCH).
    pub fn at_epoch(mut self, unix_seconds: u64) -> SubmitBackground {
        self.epoch = Some(unix_seconds);
        self
    }

    /// Runs the job no earlier than `time` (rounded down to the second).
    pub fn at(self, time: SystemTime) -> SubmitBackground {
        let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.at_epoch(secs)
    }

    async fn send(self) -> Result<String, ClientError> {
        let fields: [&[u8]; 2] = [self.function.as_bytes(), &self.unique];
        let packet = match self.epoch {
            Some(epoch) => {
                let epoch = epoch.to_string();
                Packet::req(PacketType::SubmitJobEpoch, &[fields[0], fields[1], epoch.as_bytes(), &self.payload])
            }
            None => Packet::req(self.priority.submit_type(true), &[fields[0], fields[1], &self.payload]),
        };
        let (created, created_rx) = oneshot::channel();
        self.client.dispatch(Request::Submit { packet, reply: created, sink: None }).await?;
        let handle = created_rx.await.unwrap_or(Err(ClientError::ConnectionLost))?;
        Ok(String::from_utf8_lossy(&handle).into_owned())
    }
}

impl IntoFuture for SubmitBackground {
    type Output = Result<String, ClientError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}
