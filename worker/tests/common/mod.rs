//! Helpers shared by the worker SDK's integration tests: an in-process gearfleet-broker, its
//! text admin protocol, and a worker runner with a shutdown trigger.
#![allow(dead_code)]

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use gearfleet_proto::logging::{self, LogFormat, Writer};
use gearfleet_worker::{RunSummary, ServerAddr, Worker, WorkerBuilder, WorkerError, WorkerStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub fn init_tracing() {
    let _ = logging::try_init(LogFormat::Text, "RUST_LOG", "warn", Writer::Test);
}

pub async fn start_broker() -> gearfleet_broker::Running {
    init_tracing();
    gearfleet_broker::start(gearfleet_broker::Config::for_tests()).await.expect("broker starts")
}

/// A broker on a given address (to restart one on the same port).
pub async fn start_broker_on(addr: SocketAddr) -> gearfleet_broker::Running {
    let mut config = gearfleet_broker::Config::for_tests();
    config.listen = addr;
    config.http_listen = None;
    gearfleet_broker::start(config).await.expect("broker starts")
}

/// A worker builder for tests: no environment, one server, quick reconnects, no HTTP.
pub fn worker_for(addr: SocketAddr) -> WorkerBuilder {
    WorkerBuilder::new()
        .servers([ServerAddr::from(addr)])
        .client_id("test-worker")
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(200))
        .drain_timeout(Duration::from_secs(10))
        .http_addr(None)
}

/// A worker running in the background, stopped by [`Running::shutdown`].
pub struct RunningWorker {
    pub status: WorkerStatus,
    pub task: JoinHandle<Result<RunSummary, WorkerError>>,
    stop: Option<oneshot::Sender<()>>,
}

impl RunningWorker {
    pub fn start(worker: Worker) -> RunningWorker {
        let status = worker.status();
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(worker.run_until(async move {
            let _ = rx.await;
        }));
        RunningWorker { status, task, stop: Some(stop) }
    }

    /// Starts and waits until it is registered.
    pub async fn started(worker: Worker) -> RunningWorker {
        let w = RunningWorker::start(worker);
        within(Duration::from_secs(10), w.status.wait_for(|s| s == gearfleet_worker::WorkerState::Running)).await;
        w
    }

    /// Sends the shutdown signal (like SIGTERM) without waiting.
    pub fn signal(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    /// Signals and waits for the worker to stop.
    pub async fn shutdown(mut self) -> RunSummary {
        self.signal();
        within(Duration::from_secs(20), self.task).await.expect("worker task").expect("worker result")
    }
}

/// Awaits `fut`, failing the test if it takes longer than `limit`.
pub async fn within<F: IntoFuture>(limit: Duration, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut.into_future()).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?}"),
    }
}

/// Polls `cond` until it holds, failing the test after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends one text admin command and returns the reply (a list up to its closing `.` line, or
/// a single line).
pub async fn admin(addr: SocketAddr, command: &str) -> String {
    let mut s = TcpStream::connect(addr).await.expect("admin connect");
    s.write_all(format!("{command}\n").as_bytes()).await.expect("admin write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = within(Duration::from_secs(5), s.read(&mut chunk)).await.expect("admin read");
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        let single = text.starts_with("OK") || text.starts_with("ERR");
        if text == ".\n" || text.ends_with("\n.\n") || (single && text.ends_with('\n')) {
            break;
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// `(total, running, workers)` for `function` from the admin `status` command.
pub async fn function_status(addr: SocketAddr, function: &str) -> Option<(u64, u64, u64)> {
    let text = admin(addr, "status").await;
    text.lines().find_map(|line| {
        let cols: Vec<&str> = line.split('\t').collect();
        (cols.len() == 4 && cols[0] == function)
            .then(|| (cols[1].parse().unwrap(), cols[2].parse().unwrap(), cols[3].parse().unwrap()))
    })
}

/// A minimal HTTP/1.1 GET: `(status code, body)`.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("http connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("http write");
    let mut buf = Vec::new();
    within(Duration::from_secs(5), s.read_to_end(&mut buf)).await.expect("http read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("status line");
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

/// Peers (gearman CLI, gearmand) are optional unless `GEARFLEET_REQUIRE_PEERS=1`.
pub fn peer_available(path: &str, what: &str) -> bool {
    if std::path::Path::new(path).exists() {
        return true;
    }
    if std::env::var("GEARFLEET_REQUIRE_PEERS").is_ok_and(|v| v == "1") {
        panic!("{what} not installed at {path}, and GEARFLEET_REQUIRE_PEERS=1");
    }
    eprintln!("skipping: {what} not installed ({path} missing)");
    false
}
