//! Real Gearman peers against the broker: Debian's `gearman` CLI and `gearadmin` (libgearman),
//! Python `gear` (PyPI) and Perl `Gearman::Client`. A peer that is not installed is skipped with
//! a message, unless GEARFLEET_REQUIRE_PEERS=1 (as in CI), where that is a failure.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Peer, broker};
use gearfleet_proto::PacketType as T;
use gearfleet_proto::admin::{FunctionStats, StatusRow, WorkerState, WorkerStats, split_list};

fn have(tool: &str, probe: &[&str]) -> bool {
    let ok =
        Command::new(tool).args(probe).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("GEARFLEET_REQUIRE_PEERS").as_deref() != Ok("1"),
            "{tool} is required (GEARFLEET_REQUIRE_PEERS=1) but not usable"
        );
        eprintln!("skipping: {tool} is not installed");
    }
    ok
}

fn have_gearman() -> bool {
    have("gearman", &["-H"]) && have("gearadmin", &["--help"])
}

fn have_gear() -> bool {
    have("python3", &["-c", "import gear"])
}

fn have_perl_client() -> bool {
    have("perl", &["-MGearman::Client", "-e", "1"])
}

fn peers_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers")
}

/// Runs a command to completion (bounded), returning its output.
async fn run(cmd: &mut tokio::process::Command) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(30), cmd.output()).await.expect("peer finished in time").expect("peer ran")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn gearman_cmd(port: u16) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("gearman");
    c.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    c
}

fn gear_cmd(port: u16, args: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("python3");
    c.arg(peers_dir().join("gear_peer.py"));
    c.arg(args[0]).args(["127.0.0.1", &port.to_string()]).args(&args[1..]);
    c
}

async fn wait_for_workers(addr: std::net::SocketAddr, function: &str, n: u64) {
    let mut admin = Peer::connect(addr).await;
    for _ in 0..500 {
        let status = admin.admin("status").await;
        let count = status
            .lines()
            .filter_map(StatusRow::parse)
            .find(|r| r.function == function)
            .map_or(0, |r| r.available_workers);
        if count >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{n} workers for {function} never registered");
}

#[tokio::test]
async fn gearman_cli_foreground_background_and_priorities() {
    if !have_gearman() {
        return;
    }
    let b = broker().await;
    let port = b.gearman_addr.port();
    let mut worker = gearman_cmd(port).args(["-w", "-f", "rev", "--", "rev"]).kill_on_drop(true).spawn().unwrap();
    wait_for_workers(b.gearman_addr, "rev", 1).await;
    let out = run(gearman_cmd(port).args(["-f", "rev", "hello gearfleet"])).await;
    assert_eq!(stdout(&out).trim(), "teelfraeg olleh", "stderr: {}", String::from_utf8_lossy(&out.stderr));
    worker.kill().await.unwrap();
    let _ = worker.wait().await;

    // Background jobs at three priorities, queued with no worker, then served in priority order.
    for (flag, payload) in [("-L", "low"), ("-b", "normal"), ("-I", "high")] {
        let mut cmd = gearman_cmd(port);
        if flag == "-b" {
            cmd.args(["-b", "-f", "order", payload]);
        } else {
            cmd.args(["-b", flag, "-f", "order", payload]);
        }
        let out = run(&mut cmd).await;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let mut admin = Peer::connect(b.gearman_addr).await;
    assert!(admin.admin("prioritystatus").await.contains("order\t1\t1\t1\t0\n"));
    let mut w = Peer::worker(b.gearman_addr, &["order"]).await;
    let mut order = Vec::new();
    while let Some(job) = w.grab().await {
        order.push(String::from_utf8_lossy(job.arg(3)).into_owned());
        w.send(T::WorkComplete, &[job.arg(0), b""]).await;
    }
    assert_eq!(order, ["high", "normal", "low"]);
    b.stop().await;
}

#[tokio::test]
async fn gearadmin_reads_every_admin_reply() {
    if !have_gearman() {
        return;
    }
    let b = broker().await;
    let port = b.gearman_addr.port().to_string();
    let gearadmin = |args: &[&str]| {
        let mut c = tokio::process::Command::new("gearadmin");
        c.args(["-h", "127.0.0.1", "-p", &port]).args(args);
        c
    };
    let mut w = Peer::worker(b.gearman_addr, &["alpha", "beta"]).await;
    w.send(T::SetClientId, &[b"worker-7"]).await;
    let mut c = Peer::connect(b.gearman_addr).await;
    c.submit(T::SubmitJobBg, "alpha", "uniq-a", b"").await;

    let status = stdout(&run(&mut gearadmin(&["--status"])).await);
    assert!(status.contains("alpha\t1\t0\t1"), "{status:?}");
    assert!(status.contains("beta\t0\t0\t1"), "{status:?}");
    let workers = stdout(&run(&mut gearadmin(&["--workers"])).await);
    assert!(workers.lines().any(|l| l.contains("worker-7 : alpha beta")), "{workers:?}");
    let version = stdout(&run(&mut gearadmin(&["--server-version"])).await);
    assert!(version.contains(gearfleet_broker::admin::VERSION), "{version:?}");
    let pid = stdout(&run(&mut gearadmin(&["--getpid"])).await);
    assert!(pid.contains(&std::process::id().to_string()), "{pid:?}");
    let unique = stdout(&run(&mut gearadmin(&["--show-unique-jobs"])).await);
    assert!(unique.contains("uniq-a"), "{unique:?}");
    let prio = stdout(&run(&mut gearadmin(&["--priority-status"])).await);
    assert!(prio.contains("alpha\t0\t1\t0\t1"), "{prio:?}");
    run(&mut gearadmin(&["--create-function", "made-by-gearadmin"])).await;
    let status = stdout(&run(&mut gearadmin(&["--status"])).await);
    assert!(status.contains("made-by-gearadmin\t0\t0\t0"), "{status:?}");
    run(&mut gearadmin(&["--drop-function", "made-by-gearadmin"])).await;
    let status = stdout(&run(&mut gearadmin(&["--status"])).await);
    assert!(!status.contains("made-by-gearadmin"), "{status:?}");
    b.stop().await;
}

#[tokio::test]
async fn python_gear_client_and_worker_with_status_data_and_failures() {
    if !have_gear() {
        return;
    }
    let b = broker().await;
    let port = b.gearman_addr.port();
    let mut worker = gear_cmd(port, &["worker", "pyrev", "reverse", "1"]).kill_on_drop(true).spawn().unwrap();
    wait_for_workers(b.gearman_addr, "pyrev", 1).await;
    let out = run(&mut gear_cmd(port, &["client", "pyrev", "abc"])).await;
    assert_eq!(stdout(&out), "STATUS 1/2\nDATA a\nCOMPLETE cba\n", "{}", String::from_utf8_lossy(&out.stderr));
    let _ = worker.wait().await;

    for (mode, expected) in [("fail", "FAIL\n"), ("exception", "FAIL\n")] {
        let mut worker = gear_cmd(port, &["worker", mode, mode, "1"]).kill_on_drop(true).spawn().unwrap();
        wait_for_workers(b.gearman_addr, mode, 1).await;
        let out = run(&mut gear_cmd(port, &["client", mode, "x"])).await;
        assert_eq!(stdout(&out), expected, "mode {mode}: {}", String::from_utf8_lossy(&out.stderr));
        let _ = worker.wait().await;
    }

    // Background with a priority, served later by a gear worker.
    let out = run(&mut gear_cmd(port, &["client", "pybg", "later", "--background", "--priority", "high"])).await;
    assert!(stdout(&out).starts_with("CREATED H:test:"), "{}", stdout(&out));
    let out = run(&mut gear_cmd(port, &["worker", "pybg", "reverse", "1"])).await;
    assert_eq!(stdout(&out), "DID later\n");
    b.stop().await;
}

#[tokio::test]
async fn a_worker_crash_mid_job_requeues_it_for_another_worker() {
    if !have_gear() {
        return;
    }
    let b = broker().await;
    let port = b.gearman_addr.port();
    let mut crasher = gear_cmd(port, &["worker", "fragile", "crash", "1"]).kill_on_drop(true).spawn().unwrap();
    wait_for_workers(b.gearman_addr, "fragile", 1).await;
    let client = tokio::spawn(run_owned(gear_cmd(port, &["client", "fragile", "payload"])));
    let status = tokio::time::timeout(Duration::from_secs(20), crasher.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(3), "the worker died holding the job");
    let mut rescuer = gear_cmd(port, &["worker", "fragile", "reverse", "1"]).kill_on_drop(true).spawn().unwrap();
    let out = client.await.unwrap();
    assert_eq!(stdout(&out), "STATUS 1/2\nDATA p\nCOMPLETE daolyap\n");
    let _ = rescuer.wait().await;
    b.stop().await;
}

async fn run_owned(mut cmd: tokio::process::Command) -> Output {
    run(&mut cmd).await
}

#[tokio::test]
async fn can_do_timeout_from_python_gear_fails_the_client() {
    if !have_gear() {
        return;
    }
    let b = broker().await;
    let port = b.gearman_addr.port();
    let _hanging =
        gear_cmd(port, &["worker", "stuck", "hang", "1", "--timeout", "1"]).kill_on_drop(true).spawn().unwrap();
    wait_for_workers(b.gearman_addr, "stuck", 1).await;
    let out = run(&mut gear_cmd(port, &["client", "stuck", "x"])).await;
    assert_eq!(stdout(&out), "FAIL\n", "the timeout fails the job instead of leaving the client hanging");
    b.stop().await;
}

#[tokio::test]
async fn perl_gearman_client_and_worker() {
    if !have_perl_client() {
        return;
    }
    let b = broker().await;
    let server = b.gearman_addr.to_string();
    let script = peers_dir().join("perl_peer.pl");
    let mut worker = tokio::process::Command::new("perl")
        .arg(&script)
        .args(["worker", &server, "upper", "2"])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_for_workers(b.gearman_addr, "upper", 1).await;
    let out = run(tokio::process::Command::new("perl").arg(&script).args(["client", &server, "upper", "shout"])).await;
    assert_eq!(stdout(&out), "RESULT SHOUT\n", "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(tokio::process::Command::new("perl").arg(&script).args(["background", &server, "upper", "bg"])).await;
    // Gearman::Client prefixes the handle with the server it came from.
    assert!(stdout(&out).starts_with("HANDLE ") && stdout(&out).contains("//H:test:"), "{}", stdout(&out));
    let status = tokio::time::timeout(Duration::from_secs(20), worker.wait()).await.unwrap().unwrap();
    assert!(status.success(), "the perl worker served both jobs and exited");
    b.stop().await;
}

#[tokio::test]
async fn gearman_cli_client_talks_to_a_perl_worker_and_gear_client_to_a_cli_worker() {
    if !(have_gearman() && have_perl_client() && have_gear()) {
        return;
    }
    let b = broker().await;
    let port = b.gearman_addr.port();
    let server = b.gearman_addr.to_string();
    let script = peers_dir().join("perl_peer.pl");
    let mut perl = tokio::process::Command::new("perl")
        .arg(&script)
        .args(["worker", &server, "up", "1"])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_for_workers(b.gearman_addr, "up", 1).await;
    let out = run(gearman_cmd(port).args(["-f", "up", "mixed"])).await;
    assert_eq!(stdout(&out).trim(), "MIXED");
    let _ = perl.wait().await;

    let mut cli =
        gearman_cmd(port).args(["-w", "-c", "1", "-f", "count", "--", "wc", "-c"]).kill_on_drop(true).spawn().unwrap();
    wait_for_workers(b.gearman_addr, "count", 1).await;
    let out = run(&mut gear_cmd(port, &["client", "count", "12345"])).await;
    assert_eq!(stdout(&out).split_whitespace().collect::<Vec<_>>(), ["COMPLETE", "5"]);
    let _ = cli.wait().await;
    b.stop().await;
}

#[tokio::test]
async fn drain_and_undrain_by_ip_reach_a_gearman_cli_worker_without_a_client_id() {
    if !have_gearman() {
        return;
    }
    let b = broker().await;
    let port = b.gearman_addr.port();
    let mut worker = gearman_cmd(port).args(["-w", "-f", "drained", "--", "rev"]).kill_on_drop(true).spawn().unwrap();
    wait_for_workers(b.gearman_addr, "drained", 1).await;
    let mut admin = Peer::connect(b.gearman_addr).await;
    let reply = admin.admin("fleet drain 127.0.0.1").await;
    let n: usize = reply.strip_prefix("OK ").and_then(|n| n.trim().parse().ok()).expect("OK <n>");
    assert!(n >= 2, "the CLI worker and this admin connection at least: {reply:?}");
    let workers = admin.admin("fleet workers").await;
    let row = split_list(&workers)
        .unwrap()
        .into_iter()
        .filter_map(WorkerStats::parse)
        .find(|w| w.functions == ["drained"])
        .expect("the CLI worker is listed");
    assert_eq!((row.client_id.as_str(), row.draining), ("-", true), "no client id, drained by its IP");

    let mut client = Peer::connect(b.gearman_addr).await;
    let h = client.submit(T::SubmitJob, "drained", "", b"abc").await;
    client.expect_silence(Duration::from_secs(1)).await;
    assert!(admin.admin("status").await.contains("drained\t1\t0\t1\n"), "queued, not running");

    assert!(admin.admin("fleet undrain 127.0.0.1").await.starts_with("OK "));
    let done = loop {
        let p = client.recv().await;
        if p.ptype == T::WorkComplete {
            break p;
        }
    };
    assert_eq!(done.arg(0), h.as_slice());
    assert!(String::from_utf8_lossy(done.arg(1)).contains("cba"), "{done:?}");
    worker.kill().await.unwrap();
    let _ = worker.wait().await;
    b.stop().await;
}

/// A gear worker that registers `function` with `registerFunction(name, timeout=b"1500")`, which
/// gear sends as CAN_DO_TIMEOUT 1500 (milliseconds), takes one job, sleeps `secs`, answers it
/// (late) and leaves.
fn late_gear_worker(port: u16, function: &str, secs: &str) -> tokio::process::Child {
    gear_cmd(port, &["worker", function, "late", "1", "--timeout", "1500", "--sleep", secs])
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Waits until `function` has a running job.
async fn wait_until_running(admin: &mut Peer, function: &str) {
    for _ in 0..250 {
        let status = admin.admin("status").await;
        if status.lines().filter_map(StatusRow::parse).any(|r| r.function == function && r.running == 1) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no job of {function} started");
}

/// `fleet workers`, parsed.
async fn fleet_workers(admin: &mut Peer) -> Vec<WorkerStats> {
    let reply = admin.admin("fleet workers").await;
    split_list(&reply).unwrap().into_iter().filter_map(WorkerStats::parse).collect()
}

/// `status`'s row for `function`.
async fn status_row(admin: &mut Peer, function: &str) -> StatusRow {
    let status = admin.admin("status").await;
    status.lines().filter_map(StatusRow::parse).find(|r| r.function == function).expect("function listed")
}

/// While a timed-out worker holds its job: the job counts as running, the worker as busy with it.
async fn assert_held(admin: &mut Peer, function: &str, handle: &[u8]) {
    let row = status_row(admin, function).await;
    assert_eq!((row.total, row.running, row.available_workers), (1, 1, 2), "{row:?}");
    let workers = fleet_workers(admin).await;
    let holder = workers.iter().find(|w| w.client_id == "interop-worker").expect("the gear worker");
    assert_eq!(holder.state, WorkerState::Busy);
    assert_eq!(holder.current_jobs, [String::from_utf8_lossy(handle).into_owned()]);
    let fleet = admin.admin("fleet status").await;
    let stats =
        split_list(&fleet).unwrap().into_iter().filter_map(FunctionStats::parse).find(|s| s.function == function);
    assert_eq!(
        stats.map(|s| (s.running, s.workers, s.idle_workers)),
        Some((1, 2, 1)),
        "only the second worker is idle"
    );
}

#[tokio::test]
async fn a_timed_out_foreground_job_fails_once_and_no_other_worker_gets_it() {
    if !have_gear() {
        return;
    }
    let b = broker().await;
    let port = b.gearman_addr.port();
    let mut slow = late_gear_worker(port, "slowfg", "5");
    wait_for_workers(b.gearman_addr, "slowfg", 1).await;
    let mut admin = Peer::connect(b.gearman_addr).await;
    let mut client = Peer::connect(b.gearman_addr).await;
    let started = Instant::now();
    let h = client.submit(T::SubmitJob, "slowfg", "", b"x").await;
    wait_until_running(&mut admin, "slowfg").await;
    // A second worker of the function, idle the whole time.
    let mut idle = Peer::worker(b.gearman_addr, &["slowfg"]).await;
    assert!(idle.grab().await.is_none());
    idle.send(T::PreSleep, &[]).await;

    let fail = client.try_recv(Duration::from_secs(4)).await.expect("the timeout fails the job");
    let elapsed = started.elapsed();
    assert_eq!((fail.ptype, fail.arg(0)), (T::WorkFail, h.as_slice()));
    assert!(elapsed >= Duration::from_millis(1200) && elapsed <= Duration::from_secs(3), "WORK_FAIL after {elapsed:?}");
    assert_held(&mut admin, "slowfg", &h).await;

    // The gear worker answers 5 s in, then leaves; meanwhile and after, the job goes nowhere.
    let status = tokio::time::timeout(Duration::from_secs(15), slow.wait()).await.expect("it answers").unwrap();
    assert!(status.success(), "the gear worker answered its job late and left");
    idle.expect_silence(Duration::from_millis(300)).await;
    assert!(idle.grab().await.is_none(), "a timed-out foreground job never runs again");
    client.expect_silence(Duration::from_millis(300)).await;
    let row = status_row(&mut admin, "slowfg").await;
    assert_eq!((row.total, row.running), (0, 0), "handed back once answered: {row:?}");
    b.stop().await;
}

#[tokio::test]
async fn a_timed_out_background_job_is_retried_only_after_its_worker_answers() {
    if !have_gear() {
        return;
    }
    let b = broker().await;
    let port = b.gearman_addr.port();
    let mut admin = Peer::connect(b.gearman_addr).await;
    assert_eq!(admin.admin("fleet retries slowbg 1 100ms 100ms").await, "OK\r\n");
    let mut slow = late_gear_worker(port, "slowbg", "4");
    wait_for_workers(b.gearman_addr, "slowbg", 1).await;
    let mut client = Peer::connect(b.gearman_addr).await;
    let started = Instant::now();
    let h = client.submit(T::SubmitJobBg, "slowbg", "", b"x").await;
    wait_until_running(&mut admin, "slowbg").await;
    let mut idle = Peer::worker(b.gearman_addr, &["slowbg"]).await;
    assert!(idle.grab().await.is_none());
    idle.send(T::PreSleep, &[]).await;

    // Past the timeout (1.5 s) and its retry's backoff (100 ms), the first worker still holds it.
    tokio::time::sleep(Duration::from_millis(2500).saturating_sub(started.elapsed())).await;
    assert_held(&mut admin, "slowbg", &h).await;
    let woken = idle.try_recv(Duration::from_secs(10)).await.expect("the retry, once the first worker answered");
    let at = started.elapsed();
    assert_eq!(woken.ptype, T::Noop);
    assert!(
        at >= Duration::from_millis(3800),
        "the retry was released {at:?} in, before the first worker answered (4 s)"
    );
    let status = tokio::time::timeout(Duration::from_secs(10), slow.wait()).await.expect("it left").unwrap();
    assert!(status.success(), "the gear worker answered its job late and left");
    let job = idle.grab().await.expect("the retry");
    assert_eq!(job.arg(0), h.as_slice());
    idle.send(T::WorkComplete, &[&h, b""]).await;
    idle.send(T::EchoReq, &[b""]).await;
    idle.expect(T::EchoRes).await;
    let row = status_row(&mut admin, "slowbg").await;
    assert_eq!((row.total, row.running), (0, 0), "{row:?}");
    assert_eq!(admin.admin("show dead").await, ".\n");
    b.stop().await;
}
