//! Lifecycle: drain on shutdown, force-stop, max_jobs recycling, init hook, HTTP endpoints,
//! reconnects; plus exact drain behaviour checked against a scripted server.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{RunningWorker, eventually, function_status, http_get, start_broker, start_broker_on, within, worker_for};
use futures::{SinkExt, StreamExt};
use gearfleet_proto::{Codec, Frame, Packet, PacketType};
use gearfleet_worker::{
    CancelReason, Client, ClientError, ExitReason, Function, Job, JobError, JobOutput, ServerAddr, WorkerBuilder,
    WorkerError, WorkerState,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio_util::codec::Framed;

const LIMIT: Duration = Duration::from_secs(10);

/// Sleeps for the payload in milliseconds, honouring cancellation; counts starts.
fn sleeper(
    starts: Arc<AtomicUsize>,
    started: Arc<Notify>,
) -> impl Fn(Job) -> futures::future::BoxFuture<'static, Result<JobOutput, JobError>> + Send + Sync + 'static {
    move |job: Job| {
        let (starts, started) = (starts.clone(), started.clone());
        Box::pin(async move {
            starts.fetch_add(1, Ordering::SeqCst);
            started.notify_one();
            let ms: u64 = std::str::from_utf8(job.payload()).unwrap().parse().unwrap();
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(ms)) => Ok(JobOutput::new(format!("slept {ms}"))),
                _ = job.cancelled() => Err(JobError::Fail),
            }
        })
    }
}

#[tokio::test]
async fn drain_finishes_the_job_in_hand_and_takes_no_new_job() {
    let broker = start_broker().await;
    let starts = Arc::new(AtomicUsize::new(0));
    let started = Arc::new(Notify::new());
    // Two slots: one will be busy, the other asleep when the signal comes.
    let worker = worker_for(broker.gearman_addr)
        .concurrency(2)
        .drain_timeout(Duration::from_secs(10))
        .http_addr(Some("127.0.0.1:0".parse().unwrap()))
        .function("sleep", sleeper(starts.clone(), started.clone()))
        .build()
        .unwrap();
    let http = worker.status().http_addr().unwrap();
    let mut worker = RunningWorker::started(worker).await;
    let client = Client::new([ServerAddr::from(broker.gearman_addr)]);

    let first = within(LIMIT, client.submit("sleep", "1500")).await.unwrap();
    within(LIMIT, started.notified()).await;
    let signalled = Instant::now();
    worker.signal();
    within(LIMIT, worker.status.wait_for(|s| s == WorkerState::Draining)).await;
    // Draining: still alive, no longer ready.
    assert_eq!(http_get(http, "/readyz").await, (503, "draining\n".into()));
    assert_eq!(http_get(http, "/healthz").await.0, 200);

    // Submitted after the signal: must not be taken by this worker.
    let second = within(LIMIT, client.submit("sleep", "10")).await.unwrap();
    assert_eq!(within(LIMIT, first.result()).await.unwrap(), Bytes::from_static(b"slept 1500"));
    let summary = within(LIMIT, worker.task).await.unwrap().unwrap();
    let took = signalled.elapsed();
    assert!(took < Duration::from_secs(4), "worker took {took:?} to stop");
    assert_eq!(summary.reason, ExitReason::Shutdown);
    assert!(!summary.forced);
    assert_eq!(summary.jobs_done, 1);
    assert_eq!(worker.status.state(), WorkerState::Stopped);
    assert_eq!(starts.load(Ordering::SeqCst), 1, "no job may start after the signal");
    // The second job waits in the queue, with no worker left for it.
    assert_eq!(function_status(broker.gearman_addr, "sleep").await, Some((1, 0, 0)));
    drop(second);
}

#[tokio::test]
async fn force_stop_fails_jobs_still_running_at_the_drain_timeout() {
    let broker = start_broker().await;
    let (tx, mut rx) = mpsc::unbounded_channel::<Option<CancelReason>>();
    let started = Arc::new(Notify::new());
    let started2 = started.clone();
    let worker = worker_for(broker.gearman_addr)
        .drain_timeout(Duration::from_secs(1))
        .cancel_grace(Duration::from_millis(200))
        .function("stubborn", move |job: Job| {
            let (tx, started) = (tx.clone(), started2.clone());
            async move {
                // A helper task sees the token; the handler itself ignores it.
                let watcher = job.clone();
                tokio::spawn(async move {
                    watcher.cancelled().await;
                    tx.send(watcher.cancel_reason()).unwrap();
                });
                started.notify_one();
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok(JobOutput::new("too late"))
            }
        })
        .build()
        .unwrap();
    let mut worker = RunningWorker::started(worker).await;
    let client = Client::new([ServerAddr::from(broker.gearman_addr)]);

    let job = within(LIMIT, client.submit("stubborn", "")).await.unwrap();
    within(LIMIT, started.notified()).await;
    let signalled = Instant::now();
    worker.signal();
    assert!(matches!(within(LIMIT, job.result()).await, Err(ClientError::Failed)));
    let summary = within(LIMIT, worker.task).await.unwrap().unwrap();
    let took = signalled.elapsed();
    assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(4), "stopped after {took:?}");
    assert!(summary.forced);
    assert_eq!(within(LIMIT, rx.recv()).await.unwrap(), Some(CancelReason::ForceStop));
    let metrics = worker.status.metrics_text();
    assert!(
        metrics.contains(r#"gearfleet_worker_jobs_total{function="stubborn",outcome="force_stop"} 1"#),
        "{metrics}"
    );
    assert_eq!(function_status(broker.gearman_addr, "stubborn").await, Some((0, 0, 0)));
}

#[tokio::test]
async fn max_jobs_drains_and_exits_after_n_jobs() {
    let broker = start_broker().await;
    let client = Client::new([ServerAddr::from(broker.gearman_addr)]);
    for i in 0..5 {
        within(LIMIT, client.submit("count", format!("{i}")).background()).await.unwrap();
    }
    let runs = Arc::new(AtomicUsize::new(0));
    let runs2 = runs.clone();
    let worker = worker_for(broker.gearman_addr)
        .concurrency(2)
        .max_jobs(3)
        .function("count", move |_job: Job| {
            let runs = runs2.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok(JobOutput::default())
            }
        })
        .build()
        .unwrap();
    let worker = RunningWorker::start(worker);
    // No signal: the worker stops by itself.
    let summary = within(LIMIT, worker.task).await.unwrap().unwrap();
    assert_eq!(summary.reason, ExitReason::MaxJobs);
    assert_eq!(summary.jobs_done, 3);
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    assert_eq!(function_status(broker.gearman_addr, "count").await, Some((2, 0, 0)));
}

#[tokio::test]
async fn http_endpoints_follow_the_lifecycle() {
    let broker = start_broker().await;
    let release_init = Arc::new(Notify::new());
    let release = release_init.clone();
    let worker = worker_for(broker.gearman_addr)
        .http_addr(Some("127.0.0.1:0".parse().unwrap()))
        .init(move || {
            let release = release.clone();
            async move {
                release.notified().await;
                Ok::<(), std::io::Error>(())
            }
        })
        .function("echo", |job: Job| async move { Ok(JobOutput::new(job.payload().clone())) })
        .build()
        .unwrap();
    let http = worker.status().http_addr().expect("http enabled");
    let worker = RunningWorker::start(worker);

    // The init hook is running: alive, not ready.
    eventually(LIMIT, "http endpoint", || async move { tokio::net::TcpStream::connect(http).await.is_ok() }).await;
    assert_eq!(http_get(http, "/state").await, (200, "disabled\n".into()));
    assert_eq!(http_get(http, "/healthz").await.0, 200);
    assert_eq!(http_get(http, "/readyz").await.0, 503);

    release_init.notify_one();
    within(LIMIT, worker.status.wait_for(|s| s == WorkerState::Running)).await;
    assert_eq!(http_get(http, "/readyz").await, (200, "running\n".into()));
    assert_eq!(http_get(http, "/state").await.1, "running\n");

    let client = Client::new([ServerAddr::from(broker.gearman_addr)]);
    within(LIMIT, client.call("echo", "x")).await.unwrap();
    let (code, metrics) = http_get(http, "/metrics").await;
    assert_eq!(code, 200);
    for needle in [
        r#"gearfleet_worker_jobs_total{function="echo",outcome="complete"} 1"#,
        r#"gearfleet_worker_state{state="running"} 1"#,
        r#"gearfleet_worker_state{state="draining"} 0"#,
        "gearfleet_worker_busy 0",
        "gearfleet_worker_connections 1",
        "gearfleet_worker_job_duration_seconds_count{function=\"echo\"} 1",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
    assert_eq!(http_get(http, "/nope").await.0, 404);

    worker.shutdown().await;
    // The endpoint closes with the worker.
    assert!(tokio::net::TcpStream::connect(http).await.is_err());
}

#[tokio::test]
async fn init_failures_are_retried_then_reported() {
    let broker = start_broker().await;
    let echo = |job: Job| async move { Ok(JobOutput::new(job.payload().clone())) };

    // Fails twice, then works: retried with backoff, reported Failed in between.
    let attempts = Arc::new(AtomicUsize::new(0));
    let a = attempts.clone();
    let worker = worker_for(broker.gearman_addr)
        .http_addr(Some("127.0.0.1:0".parse().unwrap()))
        .init(move || {
            let a = a.clone();
            async move { if a.fetch_add(1, Ordering::SeqCst) < 2 { Err("database not up yet") } else { Ok(()) } }
        })
        .init_retries(3, Duration::from_millis(400), Duration::from_millis(800))
        .function("echo", echo)
        .build()
        .unwrap();
    let http = worker.status().http_addr().unwrap();
    let worker = RunningWorker::start(worker);
    within(LIMIT, worker.status.wait_for(|s| s == WorkerState::Failed)).await;
    assert_eq!(http_get(http, "/healthz").await.0, 503);
    assert_eq!(http_get(http, "/state").await.1, "failed\n");
    within(LIMIT, worker.status.wait_for(|s| s == WorkerState::Running)).await;
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    assert_eq!(http_get(http, "/healthz").await.0, 200);
    worker.shutdown().await;

    // Always fails: run() returns the error after the retries.
    let attempts = Arc::new(AtomicUsize::new(0));
    let a = attempts.clone();
    let worker = worker_for(broker.gearman_addr)
        .init(move || {
            a.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>("config missing") }
        })
        .init_retries(1, Duration::from_millis(10), Duration::from_millis(20))
        .function("echo", echo)
        .build()
        .unwrap();
    let status = worker.status();
    let result = within(LIMIT, worker.run_until(std::future::pending())).await;
    assert!(matches!(result, Err(WorkerError::Init(ref e)) if e.to_string() == "config missing"), "{result:?}");
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    assert_eq!(status.state(), WorkerState::Failed);
}

#[tokio::test]
async fn worker_reconnects_and_reregisters_after_the_broker_restarts() {
    let broker = start_broker().await;
    let addr = broker.gearman_addr;
    let worker = RunningWorker::started(
        worker_for(addr)
            .concurrency(2)
            .function("echo", |job: Job| async move { Ok(JobOutput::new(job.payload().clone())) })
            .build()
            .unwrap(),
    )
    .await;
    assert_eq!(function_status(addr, "echo").await, Some((0, 0, 2)));
    broker.stop().await;
    eventually(LIMIT, "connections to drop", || {
        let status = worker.status.clone();
        async move { status.connections() == 0 }
    })
    .await;

    let broker = start_broker_on(addr).await;
    eventually(LIMIT, "both slots to re-register", || async move {
        function_status(addr, "echo").await.is_some_and(|(_, _, workers)| workers == 2)
    })
    .await;
    let client = Client::new([ServerAddr::from(addr)]);
    assert_eq!(within(LIMIT, client.call("echo", "back")).await.unwrap(), Bytes::from_static(b"back"));
    worker.shutdown().await;
    broker.stop().await;
}

// ---- a scripted server, for the exact order of packets around a drain --------------------

type ServerConn = Framed<TcpStream, Codec>;

async fn expect(conn: &mut ServerConn, ptype: PacketType) -> Packet {
    match within(LIMIT, conn.next()).await {
        Some(Ok(Frame::Packet(p))) if p.ptype == ptype => p,
        other => panic!("expected {ptype}, got {other:?}"),
    }
}

/// Everything the worker sends until it closes the connection.
async fn rest(conn: &mut ServerConn) -> Vec<PacketType> {
    let mut seen = Vec::new();
    while let Some(frame) = within(LIMIT, conn.next()).await {
        match frame {
            Ok(Frame::Packet(p)) => seen.push(p.ptype),
            Ok(Frame::Admin(_)) => panic!("text from a worker"),
            Err(_) => break,
        }
    }
    seen
}

async fn scripted_worker() -> (RunningWorker, ServerConn) {
    let (worker, conn, _listener) = scripted_worker_with(|b| b).await;
    (worker, conn)
}

/// A worker serving `rev` (reverses) and `hold` (waits until cancelled) on a scripted server;
/// returns once the first connection has registered.
async fn scripted_worker_with(
    configure: impl FnOnce(WorkerBuilder) -> WorkerBuilder,
) -> (RunningWorker, ServerConn, TcpListener) {
    common::init_tracing();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let builder = worker_for(listener.local_addr().unwrap())
        .client_id("scripted")
        .sleep_poll(None)
        .function("rev", |job: Job| async move {
            let mut v = job.payload().to_vec();
            v.reverse();
            Ok(JobOutput::new(v))
        })
        .function("hold", |job: Job| async move {
            job.cancelled().await;
            Err(JobError::Fail)
        });
    let worker = RunningWorker::start(configure(builder).build().unwrap());
    let conn = accept_registered(&listener).await;
    (worker, conn, listener)
}

async fn accept_registered(listener: &TcpListener) -> ServerConn {
    let (sock, _) = within(LIMIT, listener.accept()).await.unwrap();
    let mut conn = Framed::new(sock, Codec::server());
    // This server, like a stock one, does not take jobs back: it leaves the option unanswered.
    assert_eq!(expect(&mut conn, PacketType::OptionReq).await.arg(0), gearfleet_proto::options::RESUME);
    assert_eq!(expect(&mut conn, PacketType::SetClientId).await.arg(0), b"scripted");
    assert_eq!(expect(&mut conn, PacketType::CanDo).await.arg(0), b"rev");
    assert_eq!(expect(&mut conn, PacketType::CanDo).await.arg(0), b"hold");
    conn
}

#[tokio::test]
async fn a_job_lost_with_its_connection_does_not_count_towards_max_jobs() {
    let (worker, mut conn, listener) = scripted_worker_with(|b| b.max_jobs(1)).await;
    expect(&mut conn, PacketType::GrabJobUniq).await;
    conn.send(Packet::res(PacketType::JobAssignUniq, &[b"H:s:1", b"hold", b"", b""])).await.unwrap();
    eventually(LIMIT, "the job to start", || {
        let status = worker.status.clone();
        async move { status.busy() == 1 }
    })
    .await;
    drop(conn);

    // The worker reconnects, registers again, and still has its one job to do.
    let mut conn = accept_registered(&listener).await;
    expect(&mut conn, PacketType::GrabJobUniq).await;
    conn.send(Packet::res(PacketType::JobAssignUniq, &[b"H:s:2", b"rev", b"", b"ab"])).await.unwrap();
    assert_eq!(expect(&mut conn, PacketType::WorkComplete).await.arg(1), b"ba");
    let summary = within(LIMIT, worker.task).await.unwrap().unwrap();
    assert_eq!((summary.reason, summary.jobs_done), (ExitReason::MaxJobs, 1));
    assert_eq!(rest(&mut conn).await, vec![]);
    let metrics = worker.status.metrics_text();
    assert!(
        metrics.contains(r#"gearfleet_worker_jobs_total{function="hold",outcome="connection_lost"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn registers_function_timeouts_in_whole_seconds_unless_local() {
    common::init_tracing();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let noop = |_job: Job| async { Ok(JobOutput::default()) };
    let worker = worker_for(listener.local_addr().unwrap())
        .register(Function::new("a", noop).timeout(Duration::from_millis(1500)))
        .register(Function::new("b", noop).local_timeout(Duration::from_secs(5)))
        .build()
        .unwrap();
    let worker = RunningWorker::start(worker);
    let (sock, _) = within(LIMIT, listener.accept()).await.unwrap();
    let mut conn = Framed::new(sock, Codec::server());
    expect(&mut conn, PacketType::OptionReq).await;
    expect(&mut conn, PacketType::SetClientId).await;
    let a = expect(&mut conn, PacketType::CanDoTimeout).await;
    assert_eq!((a.arg(0), a.arg(1)), (&b"a"[..], &b"1500"[..]));
    assert_eq!(expect(&mut conn, PacketType::CanDo).await.arg(0), b"b");
    expect(&mut conn, PacketType::GrabJobUniq).await;
    conn.send(Packet::res(PacketType::NoJob, &[])).await.unwrap();
    expect(&mut conn, PacketType::PreSleep).await;
    worker.shutdown().await;
}

#[tokio::test]
async fn a_sleeping_worker_woken_after_the_drain_does_not_grab() {
    let (mut worker, mut conn) = scripted_worker().await;
    expect(&mut conn, PacketType::GrabJobUniq).await;
    conn.send(Packet::res(PacketType::NoJob, &[])).await.unwrap();
    expect(&mut conn, PacketType::PreSleep).await;

    worker.signal();
    within(LIMIT, worker.status.wait_for(|s| s >= WorkerState::Draining)).await;
    // The wake-up arrives after the signal; the connection may already be closed.
    let _ = conn.send(Packet::res(PacketType::Noop, &[])).await;
    assert_eq!(rest(&mut conn).await, vec![], "nothing may be sent after the signal");
    let summary = within(LIMIT, worker.task).await.unwrap().unwrap();
    assert_eq!(summary.jobs_done, 0);
}

#[tokio::test]
async fn a_job_assigned_for_a_grab_sent_before_the_drain_is_run() {
    let (mut worker, mut conn) = scripted_worker().await;
    expect(&mut conn, PacketType::GrabJobUniq).await;
    worker.signal();
    within(LIMIT, worker.status.wait_for(|s| s >= WorkerState::Draining)).await;
    conn.send(Packet::res(PacketType::JobAssignUniq, &[b"H:s:1", b"rev", b"u1", b"abc"])).await.unwrap();
    let done = expect(&mut conn, PacketType::WorkComplete).await;
    assert_eq!((done.arg(0), done.arg(1)), (&b"H:s:1"[..], &b"cba"[..]));
    assert_eq!(rest(&mut conn).await, vec![], "no GRAB after the job finished");
    let summary = within(LIMIT, worker.task).await.unwrap().unwrap();
    assert_eq!(summary.jobs_done, 1);
}

#[tokio::test]
async fn a_noop_wakes_a_sleeping_worker_and_errors_are_survived() {
    let (worker, mut conn) = scripted_worker().await;
    expect(&mut conn, PacketType::GrabJobUniq).await;
    conn.send(Packet::res(PacketType::NoJob, &[])).await.unwrap();
    expect(&mut conn, PacketType::PreSleep).await;
    // An ERROR while asleep is logged, not fatal; a NOOP then wakes the worker.
    conn.send(Packet::res(PacketType::Error, &[b"SOME_ERROR", b"something odd"])).await.unwrap();
    conn.send(Packet::res(PacketType::Noop, &[])).await.unwrap();
    expect(&mut conn, PacketType::GrabJobUniq).await;
    conn.send(Packet::res(PacketType::JobAssignUniq, &[b"H:s:2", b"rev", b"", b"xy"])).await.unwrap();
    let done = expect(&mut conn, PacketType::WorkComplete).await;
    assert_eq!(done.arg(1), b"yx");
    expect(&mut conn, PacketType::GrabJobUniq).await;
    conn.send(Packet::res(PacketType::NoJob, &[])).await.unwrap();
    expect(&mut conn, PacketType::PreSleep).await;
    let summary = worker.shutdown().await;
    assert_eq!(summary.jobs_done, 1);
    assert_eq!(rest(&mut conn).await, vec![]);
}
