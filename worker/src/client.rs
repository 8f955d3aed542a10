//! A Gearman client: foreground and background submissions, status queries and echo, with many
//! requests multiplexed on one connection per server.
//!
//! Each server connection is owned by one task. Replies that answer a request (JOB_CREATED,
//! STATUS_RES, ECHO_RES, OPTION_RES, ERROR) come back in request order, so the task keeps a FIFO
//! of requests awaiting a reply; WORK_* packets are routed by job handle to every submission
//! waiting on that handle (two submissions coalesced onto one job share a handle).

use std::collections::{HashMap, VecDeque};
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use gearfleet_proto::{Frame, Packet, PacketType};
use tokio::sync::{mpsc, oneshot};

use crate::config::{self, ConfigError, ServerAddr};
use crate::connect::{Conn, DEFAULT_CONNECT_TIMEOUT, connect};

/// How a client picks a server for each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// The first server in list order that is not in its recovery time: fail-over.
    #[default]
    Sequence,
    /// Rotate the starting server on every request: load spreading.
    RoundRobin,
}

/// Job priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Priority {
    High,
    #[default]
    Normal,
    Low,
}

/// Why a request or job did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The worker sent WORK_FAIL (or the job was cancelled or timed out).
    #[error("job failed")]
    Failed,
    /// The worker sent WORK_EXCEPTION with this message.
    #[error("job raised an exception: {0}")]
    Exception(String),
    /// The server answered with an ERROR packet.
    #[error("server error {code}: {message}")]
    Server { code: String, message: String },
    /// No server could be reached.
    #[error("cannot connect to {server}: {source}")]
    Connect {
        server: ServerAddr,
        #[source]
        source: std::io::Error,
    },
    /// The connection closed before the reply or the job's result arrived. A foreground job
    /// may still run: the server keeps it while any client waits and drops it otherwise.
    #[error("connection to the server lost")]
    ConnectionLost,
    /// The server sent something that does not fit the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// Progress reported by the worker of a foreground job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEvent {
    /// WORK_STATUS.
    Status { numerator: u64, denominator: u64 },
    /// WORK_DATA.
    Data(Bytes),
    /// WORK_WARNING.
    Warning(Bytes),
}

/// STATUS_RES fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobStatus {
    pub handle: String,
    /// The server knows the job (queued or running).
    pub known: bool,
    pub running: bool,
    pub numerator: u64,
    pub denominator: u64,
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
        let ptype = match self.priority {
            Priority::High => PacketType::SubmitJobHigh,
            Priority::Normal => PacketType::SubmitJob,
            Priority::Low => PacketType::SubmitJobLow,
        };
        let packet = Packet::req(ptype, &[self.function.as_bytes(), &self.unique, &self.payload]);
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
            None => {
                let ptype = match self.priority {
                    Priority::High => PacketType::SubmitJobHighBg,
                    Priority::Normal => PacketType::SubmitJobBg,
                    Priority::Low => PacketType::SubmitJobLowBg,
                };
                Packet::req(ptype, &[fields[0], fields[1], &self.payload])
            }
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

// ---- the connection task ------------------------------------------------------------------

/// Where a foreground job's packets go.
struct JobSink {
    events: mpsc::UnboundedSender<JobEvent>,
    result: oneshot::Sender<Result<Bytes, ClientError>>,
}

enum Request {
    Submit {
        packet: Packet,
        reply: oneshot::Sender<Result<Bytes, ClientError>>,
        /// `None` for background jobs.
        sink: Option<JobSink>,
    },
    Status {
        handle: Bytes,
        reply: oneshot::Sender<Result<JobStatus, ClientError>>,
    },
    Echo {
        data: Bytes,
        reply: oneshot::Sender<Result<Bytes, ClientError>>,
    },
}

impl Request {
    fn fail(self, e: ClientError) {
        match self {
            Request::Submit { reply, .. } => drop(reply.send(Err(e))),
            Request::Status { reply, .. } => drop(reply.send(Err(e))),
            Request::Echo { reply, .. } => drop(reply.send(Err(e))),
        }
    }
}

/// A request sent and waiting for its reply.
enum Pending {
    Option,
    Submit { reply: oneshot::Sender<Result<Bytes, ClientError>>, sink: Option<JobSink> },
    Status { reply: oneshot::Sender<Result<JobStatus, ClientError>> },
    Echo { reply: oneshot::Sender<Result<Bytes, ClientError>> },
}

impl Pending {
    fn fail(self, e: ClientError) {
        match self {
            Pending::Option => {}
            Pending::Submit { reply, .. } => drop(reply.send(Err(e))),
            Pending::Status { reply } => drop(reply.send(Err(e))),
            Pending::Echo { reply } => drop(reply.send(Err(e))),
        }
    }
}

struct ConnState {
    server: ServerAddr,
    pending: VecDeque<Pending>,
    jobs: HashMap<Bytes, Vec<JobSink>>,
}

async fn serve_connection(server: ServerAddr, mut conn: Conn, mut requests: mpsc::UnboundedReceiver<Request>) {
    let mut st = ConnState { server, pending: VecDeque::new(), jobs: HashMap::new() };
    // Ask for WORK_EXCEPTION packets; without this option servers turn exceptions into WORK_FAIL.
    let mut alive = conn.send(Packet::req(PacketType::OptionReq, &[b"exceptions"])).await.is_ok();
    if alive {
        st.pending.push_back(Pending::Option);
    }
    let mut accepting = true;
    while alive && (accepting || !st.pending.is_empty() || !st.jobs.is_empty()) {
        tokio::select! {
            req = requests.recv(), if accepting => match req {
                Some(req) => {
                    let (packet, pending) = match req {
                        Request::Submit { packet, reply, sink } => (packet, Pending::Submit { reply, sink }),
                        Request::Status { handle, reply } => {
                            (Packet::req(PacketType::GetStatus, &[&handle]), Pending::Status { reply })
                        }
                        Request::Echo { data, reply } => (Packet::req(PacketType::EchoReq, &[&data]), Pending::Echo { reply }),
                    };
                    st.pending.push_back(pending);
                    if let Err(e) = conn.send(packet).await {
                        tracing::debug!(server = %st.server, error = %e, "send failed");
                        alive = false;
                    }
                }
                // Every client handle is gone; finish the jobs still awaited, then close.
                None => accepting = false,
            },
            frame = conn.next() => match frame {
                Some(Ok(Frame::Packet(p))) => st.on_packet(p),
                Some(Ok(Frame::Admin(_))) => {}
                Some(Err(e)) => {
                    tracing::warn!(server = %st.server, error = %e, "bad data from gearman server; closing");
                    alive = false;
                }
                None => alive = false,
            },
        }
    }
    // Requests queued but not sent, sent but unanswered, and jobs still running all fail.
    requests.close();
    while let Ok(req) = requests.try_recv() {
        req.fail(ClientError::ConnectionLost);
    }
    for p in st.pending.drain(..) {
        p.fail(ClientError::ConnectionLost);
    }
    for (_, sinks) in st.jobs.drain() {
        for s in sinks {
            let _ = s.result.send(Err(ClientError::ConnectionLost));
        }
    }
}

impl ConnState {
    fn on_packet(&mut self, p: Packet) {
        use PacketType as T;
        match p.ptype {
            T::JobCreated => match self.pending.pop_front() {
                Some(Pending::Submit { reply, sink }) => {
                    let handle = p.arg_bytes(0);
                    if let Some(sink) = sink {
                        self.jobs.entry(handle.clone()).or_default().push(sink);
                    }
                    let _ = reply.send(Ok(handle));
                }
                other => self.mismatch(&p, other),
            },
            T::StatusRes => match self.pending.pop_front() {
                Some(Pending::Status { reply }) => {
                    let _ = reply.send(Ok(JobStatus {
                        handle: String::from_utf8_lossy(p.arg(0)).into_owned(),
                        known: p.arg(1) == b"1",
                        running: p.arg(2) == b"1",
                        numerator: parse_u64(p.arg(3)),
                        denominator: parse_u64(p.arg(4)),
                    }));
                }
                other => self.mismatch(&p, other),
            },
            T::EchoRes => match self.pending.pop_front() {
                Some(Pending::Echo { reply }) => drop(reply.send(Ok(p.arg_bytes(0)))),
                other => self.mismatch(&p, other),
            },
            T::OptionRes => match self.pending.pop_front() {
                Some(Pending::Option) => {}
                other => self.mismatch(&p, other),
            },
            T::Error => {
                let code = String::from_utf8_lossy(p.arg(0)).into_owned();
                let message = String::from_utf8_lossy(p.arg(1)).into_owned();
                match self.pending.pop_front() {
                    Some(Pending::Option) => {
                        tracing::info!(server = %self.server, %code, %message, "server refused the exceptions option");
                    }
                    Some(pending) => pending.fail(ClientError::Server { code, message }),
                    None => tracing::warn!(server = %self.server, %code, %message, "error from gearman server"),
                }
            }
            T::WorkStatus => {
                let event = JobEvent::Status { numerator: parse_u64(p.arg(1)), denominator: parse_u64(p.arg(2)) };
                self.event(p.arg(0), event);
            }
            T::WorkData => self.event(p.arg(0), JobEvent::Data(p.arg_bytes(1))),
            T::WorkWarning => self.event(p.arg(0), JobEvent::Warning(p.arg_bytes(1))),
            T::WorkComplete => self.finish(p.arg(0), || Ok(p.arg_bytes(1))),
            T::WorkFail => self.finish(p.arg(0), || Err(ClientError::Failed)),
            T::WorkException => {
                self.finish(p.arg(0), || Err(ClientError::Exception(String::from_utf8_lossy(p.arg(1)).into_owned())))
            }
            T::Noop => {}
            other => tracing::debug!(server = %self.server, packet = %other, "unexpected packet for a client; ignored"),
        }
    }

    fn event(&mut self, handle: &[u8], event: JobEvent) {
        if let Some(sinks) = self.jobs.get(handle) {
            for s in sinks {
                let _ = s.events.send(event.clone());
            }
        }
    }

    fn finish(&mut self, handle: &[u8], result: impl Fn() -> Result<Bytes, ClientError>) {
        // Servers that send WORK_EXCEPTION may follow it with WORK_FAIL; the first one wins.
        if let Some(sinks) = self.jobs.remove(handle) {
            for s in sinks {
                let _ = s.result.send(result());
            }
        }
    }

    fn mismatch(&mut self, p: &Packet, pending: Option<Pending>) {
        tracing::warn!(server = %self.server, packet = %p.ptype, "reply does not match the oldest request");
        if let Some(pending) = pending {
            pending.fail(ClientError::Protocol(format!("unexpected {} reply", p.ptype)));
        }
    }
}

fn parse_u64(b: &[u8]) -> u64 {
    std::str::from_utf8(b).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}
