//! The pre-stop drain hook (`gearfleet_worker::drain_hook`) against a real broker with a stock
//! worker, Debian's `gearman -w` CLI, which knows nothing of gearfleet: the hook returns only once
//! the stock worker's job is done, and the drained worker takes no new job. The hook and the
//! worker share 127.0.0.1, as the containers of one pod share the pod IP.
//!
//! Skipped with a message when the CLI is missing, unless `GEARFLEET_REQUIRE_PEERS=1`.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{eventually, function_status, http_get, peer_available, start_broker, within};
use gearfleet_worker::drain_hook::{DrainHookConfig, drain_pod, serve};
use gearfleet_worker::{Client, ServerAddr};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

const GEARMAN: &str = "/usr/bin/gearman";
const LIMIT: Duration = Duration::from_secs(20);

/// `gearman -w -f FUNCTION -- sh -c 'sleep SECONDS; cat'`: a stock worker whose jobs take that long.
fn stock_worker(addr: SocketAddr, function: &str, seconds: u32) -> Child {
    Command::new(GEARMAN)
        .args(["-w", "-h", "127.0.0.1", "-p", &addr.port().to_string(), "-f", function, "--"])
        .args(["sh", "-c", &format!("sleep {seconds}; cat")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start gearman worker")
}

async fn wait_until_running(addr: SocketAddr, function: &str) {
    eventually(LIMIT, "the stock worker to take the job", || async move {
        function_status(addr, function).await.is_some_and(|(_, running, _)| running == 1)
    })
    .await;
}

#[tokio::test]
async fn the_hook_returns_once_a_stock_workers_job_is_done_and_the_worker_gets_no_more() {
    if !peer_available(GEARMAN, "the gearman CLI (gearman-tools)") {
        return;
    }
    let broker = start_broker().await;
    let addr = broker.gearman_addr;
    let _worker = stock_worker(addr, "slow", 2);
    let client = Client::new([ServerAddr::from(addr)]);
    let call = tokio::spawn(async move { client.call("slow", "first").await });
    wait_until_running(addr, "slow").await;

    let hook = DrainHookConfig::new(vec![ServerAddr::from(addr)], Duration::from_secs(30));
    let started = Instant::now();
    let outcome = within(LIMIT, drain_pod(&hook)).await;
    assert!(!outcome.timed_out, "{outcome:?}");
    // The stock worker, and the test's client while it is still connected.
    assert!(outcome.connections >= 1 && outcome.busy == 0, "{outcome:?}");
    assert!(call.is_finished(), "the hook returned before the job was done: {outcome:?}");
    let result = within(LIMIT, call).await.expect("join").expect("the job completes on its first run");
    assert_eq!(result, "first");
    assert!(started.elapsed() >= Duration::from_millis(1000), "it waited for the job: {outcome:?}");

    // Drained: a new job stays queued although the stock worker is idle.
    let bg = Client::new([ServerAddr::from(addr)]);
    within(LIMIT, bg.submit("slow", "second").background()).await.expect("submit");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(function_status(addr, "slow").await, Some((1, 0, 1)), "queued, not running");
    broker.stop().await;
}

#[tokio::test]
async fn the_hook_answers_504_at_the_drain_timeout_and_gives_up_on_an_unreachable_broker() {
    if !peer_available(GEARMAN, "the gearman CLI (gearman-tools)") {
        return;
    }
    let broker = start_broker().await;
    let addr = broker.gearman_addr;
    let _worker = stock_worker(addr, "long", 30);
    let client = Client::new([ServerAddr::from(addr)]);
    let _call = tokio::spawn(async move { client.call("long", "x").await });
    wait_until_running(addr, "long").await;

    // A second broker that nothing listens on: given up after its attempts, not waited for.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut hook = DrainHookConfig::new(vec![ServerAddr::from(addr), ServerAddr::from(closed)], Duration::from_secs(2));
    hook.poll = Duration::from_millis(200);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let server = tokio::spawn(serve(listener, hook, stop.clone()));

    assert_eq!(http_get(http, "/healthz").await.0, 200);
    let started = Instant::now();
    let (code, body) = http_get(http, "/drain").await;
    let waited = started.elapsed();
    assert_eq!(code, 504, "{body}");
    // The stock worker and the test's client both come from 127.0.0.1; only the worker holds a job.
    assert!(body.contains("1 of 2 connections still busy"), "{body}");
    assert!(body.contains(&format!("unreachable: {closed}")), "{body}");
    assert!(waited >= Duration::from_millis(1900) && waited < Duration::from_secs(10), "{waited:?}");
    stop.cancel();
    within(LIMIT, server).await.expect("join").expect("serve");
    broker.stop().await;
}
