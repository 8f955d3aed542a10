//! The `gearfleet-example-worker` binary as a process: its functions, its `exec` lines, SIGTERM
//! drain and `--max-jobs` exit status.
#![cfg(feature = "example-bin")]

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{eventually, function_status, start_broker, within};
use gearfleet_worker::{Client, ClientError, JobEvent, ServerAddr};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

const BIN: &str = env!("CARGO_BIN_EXE_gearfleet-example-worker");
const LIMIT: Duration = Duration::from_secs(15);

struct Proc {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Proc {
    fn start(addr: SocketAddr, args: &[&str]) -> Proc {
        let mut child = Command::new(BIN)
            .args(args)
            .env("GEARMAN_SERVERS", addr.to_string())
            .env("GEARFLEET_WORKER_HTTP", "off")
            .env("GEARFLEET_CLIENT_ID", "example-bin-test")
            .env("RUST_LOG", "warn")
            .env_remove("GEARFLEET_NEXT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start example worker");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let _ = tx.send(line);
            }
        });
        Proc { child, lines }
    }

    /// The next `exec` line on stdout.
    async fn exec_line(&mut self) -> String {
        loop {
            let line = within(LIMIT, self.lines.recv()).await.expect("stdout closed");
            if line.starts_with("exec ") {
                return line;
            }
        }
    }

    fn signal(&self, name: &str) {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill").args(["-s", name, &pid]).status().expect("kill");
        assert!(status.success());
    }
}

async fn wait_registered(addr: SocketAddr, function: &str) {
    eventually(LIMIT, "the example worker to register", || async move {
        function_status(addr, function).await.is_some_and(|(_, _, workers)| workers >= 1)
    })
    .await;
}

#[tokio::test]
async fn example_functions_and_exec_lines() {
    let broker = start_broker().await;
    let addr = broker.gearman_addr;
    let mut proc = Proc::start(addr, &["echo", "reverse", "sleep", "fail", "chain"]);
    wait_registered(addr, "chain").await;
    let client = Client::new([ServerAddr::from(addr)]);

    assert_eq!(within(LIMIT, client.call("echo", "hi")).await.unwrap(), Bytes::from_static(b"hi"));
    assert!(proc.exec_line().await.starts_with("exec function=echo unique=- handle=H:"));
    let out = within(LIMIT, client.submit("reverse", "héllo").unique("u-1")).await.unwrap().result().await.unwrap();
    assert_eq!(out, Bytes::from("olléh"));
    let line = proc.exec_line().await;
    assert!(line.starts_with("exec function=reverse unique=u-1 handle=H:") && line.ends_with(" count=1"), "{line}");

    // Same unique again (not coalesced: the first has finished): counted twice.
    within(LIMIT, client.submit("reverse", "x").unique("u-1")).await.unwrap().result().await.unwrap();
    let line = proc.exec_line().await;
    assert!(line.starts_with("exec function=reverse unique=u-1 ") && line.ends_with(" count=2"), "{line}");

    let mut job = within(LIMIT, client.submit("sleep", "350")).await.unwrap();
    let mut statuses = 0;
    while let Some(e) = within(LIMIT, job.next_event()).await {
        assert!(matches!(e, JobEvent::Status { denominator: 350, .. }), "{e:?}");
        statuses += 1;
    }
    assert!(statuses >= 3, "progress every 100ms, got {statuses}");
    assert_eq!(job.result().await.unwrap(), Bytes::from_static(b"slept 350ms"));
    proc.exec_line().await;

    match within(LIMIT, client.call("fail", "exception")).await {
        Err(ClientError::Exception(m)) => assert_eq!(m, "requested exception"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(within(LIMIT, client.call("fail", "panic")).await, Err(ClientError::Failed)));
    assert!(matches!(within(LIMIT, client.call("fail", "other")).await, Err(ClientError::Failed)));
    for _ in 0..3 {
        assert!(proc.exec_line().await.starts_with("exec function=fail "));
    }

    // chain: reverses and passes the result on to the function named in the payload.
    let out = within(LIMIT, client.call("chain", "next=echo;abc")).await.unwrap();
    assert_eq!(out, Bytes::from_static(b"cba"));
    assert!(proc.exec_line().await.starts_with("exec function=chain "));
    assert!(proc.exec_line().await.starts_with("exec function=echo "));
}

#[tokio::test]
async fn example_worker_drains_on_sigterm_and_exits_zero() {
    let broker = start_broker().await;
    let addr = broker.gearman_addr;
    let mut proc = Proc::start(addr, &["--concurrency", "2", "--drain-timeout", "10s", "sleep", "echo"]);
    wait_registered(addr, "sleep").await;
    let client = Client::new([ServerAddr::from(addr)]);

    let job = within(LIMIT, client.submit("sleep", "1200")).await.unwrap();
    assert!(proc.exec_line().await.starts_with("exec function=sleep "));
    let signalled = Instant::now();
    proc.signal("TERM");
    eventually(LIMIT, "the idle slot to leave", || async move {
        function_status(addr, "echo").await.is_some_and(|(_, _, workers)| workers <= 1)
    })
    .await;
    let late = within(LIMIT, client.submit("echo", "late")).await.unwrap();
    assert_eq!(within(LIMIT, job.result()).await.unwrap(), Bytes::from_static(b"slept 1200ms"));
    let status = within(LIMIT, proc.child.wait()).await.unwrap();
    assert!(status.success(), "{status:?}");
    assert!(signalled.elapsed() < Duration::from_secs(5), "exit took {:?}", signalled.elapsed());
    assert_eq!(function_status(addr, "echo").await, Some((1, 0, 0)), "the late job stays queued");
    drop(late);
}

#[tokio::test]
async fn example_worker_exits_zero_after_max_jobs() {
    let broker = start_broker().await;
    let addr = broker.gearman_addr;
    let client = Client::new([ServerAddr::from(addr)]);
    for i in 0..3 {
        within(LIMIT, client.submit("echo", format!("{i}")).unique(format!("job-{i}")).background()).await.unwrap();
    }
    let mut proc = Proc::start(addr, &["--max-jobs", "2", "echo"]);
    let status = within(LIMIT, proc.child.wait()).await.unwrap();
    assert!(status.success(), "{status:?}");
    let mut lines = Vec::new();
    while let Ok(line) = proc.lines.try_recv() {
        lines.push(line);
    }
    // stdout may still be draining into the channel.
    while lines.len() < 2 {
        lines.push(within(LIMIT, proc.lines.recv()).await.expect("exec line"));
    }
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines.iter().all(|l| l.starts_with("exec function=echo unique=job-") && l.ends_with(" count=1")));
    assert_eq!(function_status(addr, "echo").await, Some((1, 0, 0)));
}

#[tokio::test]
async fn example_worker_rejects_unknown_functions() {
    let out = Command::new(BIN).arg("nonsense").env("GEARFLEET_WORKER_HTTP", "off").output().await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown function"));
}
