//! Interoperability with Debian's Gearman tools: the `gearman` CLI (client and worker modes)
//! against gearfleet-broker and against gearmand, with the SDK on the other side.
//!
//! Skipped with a message when the tools are missing, unless `GEARFLEET_REQUIRE_PEERS=1`.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use common::{RunningWorker, peer_available, start_broker, within, worker_for};
use gearfleet_worker::{Client, ClientError, Job, JobError, JobEvent, JobOutput, ServerAddr};
use tokio::process::{Child, Command};

const GEARMAN: &str = "/usr/bin/gearman";
const GEARMAND: &str = "/usr/sbin/gearmand";
const LIMIT: Duration = Duration::from_secs(20);

/// gearmand on a free loopback port, killed when dropped.
struct Gearmand {
    addr: SocketAddr,
    _child: Child,
    pid_file: std::path::PathBuf,
}

impl Drop for Gearmand {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

async fn start_gearmand() -> Gearmand {
    common::init_tracing();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let pid_file = std::env::temp_dir().join(format!("gearfleet-worker-test-gearmand-{port}.pid"));
    let child = Command::new(GEARMAND)
        .args(["--listen=127.0.0.1", &format!("--port={port}"), "--threads=1", "--log-file=none"])
        .arg(format!("--pid-file={}", pid_file.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start gearmand");
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    common::eventually(
        LIMIT,
        "gearmand to listen",
        // Not a connection to itself: while nothing listens, the kernel may pick this very port
        // as the source port of the probe.
        || async move {
            tokio::net::TcpStream::connect(addr).await.is_ok_and(|s| s.local_addr().ok() != s.peer_addr().ok())
        },
    )
    .await;
    Gearmand { addr, _child: child, pid_file }
}

async fn reverse(job: Job) -> Result<JobOutput, JobError> {
    let mut v = job.payload().to_vec();
    v.reverse();
    Ok(v.into())
}

/// Runs `gearman -f reverse DATA` as a client and returns its stdout.
async fn gearman_cli_call(addr: SocketAddr, function: &str, data: &str) -> String {
    let out = within(
        LIMIT,
        Command::new(GEARMAN)
            .args(["-h", "127.0.0.1", "-p", &addr.port().to_string(), "-f", function, data])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("run gearman");
    assert!(out.status.success(), "gearman failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn sdk_worker_serves_gearman_cli(addr: SocketAddr) {
    let worker =
        RunningWorker::started(worker_for(addr).concurrency(2).function("reverse", reverse).build().unwrap()).await;
    assert_eq!(gearman_cli_call(addr, "reverse", "hello gearman").await.trim_end(), "namraeg olleh");
    assert_eq!(gearman_cli_call(addr, "reverse", "abc").await.trim_end(), "cba");
    let summary = worker.shutdown().await;
    assert_eq!(summary.jobs_done, 2);
}

/// Starts `gearman -w -f wc -- wc -c`; the SDK client gets its results.
async fn sdk_client_uses_gearman_cli_worker(addr: SocketAddr) {
    let _worker = Command::new(GEARMAN)
        .args(["-w", "-h", "127.0.0.1", "-p", &addr.port().to_string(), "-f", "wc", "--", "wc", "-c"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start gearman worker");
    let client = Client::new([ServerAddr::from(addr)]);
    // Queued until the CLI worker registers, then run.
    let out = within(LIMIT, client.call("wc", "hello world")).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out).trim(), "11");
    let out = within(LIMIT, client.call("wc", "")).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out).trim(), "0");
}

#[tokio::test]
async fn gearman_cli_client_is_served_by_sdk_worker_via_broker() {
    if !peer_available(GEARMAN, "gearman CLI") {
        return;
    }
    let broker = start_broker().await;
    sdk_worker_serves_gearman_cli(broker.gearman_addr).await;
}

#[tokio::test]
async fn sdk_client_gets_results_from_gearman_cli_worker_via_broker() {
    if !peer_available(GEARMAN, "gearman CLI") {
        return;
    }
    let broker = start_broker().await;
    sdk_client_uses_gearman_cli_worker(broker.gearman_addr).await;
}

#[tokio::test]
async fn gearman_cli_client_is_served_by_sdk_worker_via_gearmand() {
    if !peer_available(GEARMAN, "gearman CLI") || !peer_available(GEARMAND, "gearmand") {
        return;
    }
    let gearmand = start_gearmand().await;
    sdk_worker_serves_gearman_cli(gearmand.addr).await;
}

#[tokio::test]
async fn sdk_client_gets_results_from_gearman_cli_worker_via_gearmand() {
    if !peer_available(GEARMAN, "gearman CLI") || !peer_available(GEARMAND, "gearmand") {
        return;
    }
    let gearmand = start_gearmand().await;
    sdk_client_uses_gearman_cli_worker(gearmand.addr).await;
}

#[tokio::test]
async fn sdk_client_and_worker_through_gearmand() {
    if !peer_available(GEARMAND, "gearmand") {
        return;
    }
    let gearmand = start_gearmand().await;
    let addr = gearmand.addr;
    let worker = worker_for(addr)
        .concurrency(2)
        .function("reverse", reverse)
        .function("report", |job: Job| async move {
            job.status(1, 2).await;
            job.data("chunk").await;
            match job.payload().as_ref() {
                b"exception" => Err(JobError::exception("boom")),
                b"fail" => Err(JobError::Fail),
                _ => Ok(JobOutput::new("ok")),
            }
        })
        .build()
        .unwrap();
    let worker = RunningWorker::started(worker).await;
    let client = Client::new([ServerAddr::from(addr)]);

    assert_eq!(within(LIMIT, client.call("reverse", "gearmand")).await.unwrap(), Bytes::from_static(b"dnamraeg"));
    let mut job = within(LIMIT, client.submit("report", "x")).await.unwrap();
    assert_eq!(within(LIMIT, job.next_event()).await, Some(JobEvent::Status { numerator: 1, denominator: 2 }));
    assert_eq!(within(LIMIT, job.next_event()).await, Some(JobEvent::Data(Bytes::from_static(b"chunk"))));
    assert_eq!(within(LIMIT, job.result()).await.unwrap(), Bytes::from_static(b"ok"));
    match within(LIMIT, client.call("report", "exception")).await {
        Err(ClientError::Exception(msg)) => assert_eq!(msg, "boom"),
        other => panic!("expected an exception, got {other:?}"),
    }
    assert!(matches!(within(LIMIT, client.call("report", "fail")).await, Err(ClientError::Failed)));
    let handle = within(LIMIT, client.submit("reverse", "bg").background()).await.unwrap();
    assert!(handle.starts_with("H:"), "{handle}");
    assert_eq!(within(LIMIT, client.echo("ping")).await.unwrap(), Bytes::from_static(b"ping"));
    worker.shutdown().await;
}
