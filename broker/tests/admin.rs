//! The text admin protocol, in gearmand's formats, plus the `fleet` commands.

mod common;

use std::time::Duration;

use common::{Peer, broker};
use gearfleet_proto::PacketType as T;
use gearfleet_proto::admin::{FunctionStats, StatusRow, WorkerRow, WorkerState, WorkerStats, split_list};

#[tokio::test]
async fn status_workers_and_prioritystatus_use_gearmand_formats() {
    let b = broker().await;
    let mut client = Peer::connect(b.gearman_addr).await;
    client.submit(T::SubmitJobHighBg, "f", "", b"").await;
    client.submit(T::SubmitJobLowBg, "f", "", b"").await;
    client.submit(T::SubmitJobBg, "f", "", b"").await;
    let mut worker = Peer::worker(b.gearman_addr, &["f", "g"]).await;
    worker.send(T::SetClientId, &[b"pod-a"]).await;
    assert!(worker.grab().await.is_some());

    let mut admin = Peer::connect(b.gearman_addr).await;
    let status = admin.admin("status").await;
    let rows: Vec<_> = split_list(&status).unwrap().into_iter().filter_map(StatusRow::parse).collect();
    let f = rows.iter().find(|r| r.function == "f").expect("f listed");
    assert_eq!((f.total, f.running, f.available_workers), (3, 1, 1), "TOTAL counts queued plus running");
    assert!(rows.iter().any(|r| r.function == "g" && r.total == 0 && r.available_workers == 1));

    let prio = admin.admin("prioritystatus").await;
    assert!(prio.contains("f\t0\t1\t1\t1\n"), "high one taken, normal and low queued: {prio:?}");

    let workers = admin.admin("workers").await;
    let rows: Vec<_> = split_list(&workers).unwrap().into_iter().filter_map(WorkerRow::parse).collect();
    let w = rows.iter().find(|r| r.client_id == "pod-a").expect("worker listed by client id");
    assert_eq!(w.functions, ["f", "g"]);
    assert_eq!(w.address, "127.0.0.1");
    assert!(rows.iter().any(|r| r.client_id == "-"), "connections without a client id show '-'");
    b.stop().await;
}

#[tokio::test]
async fn single_line_commands() {
    let b = broker().await;
    let mut admin = Peer::connect(b.gearman_addr).await;
    assert!(admin.admin("version").await.starts_with("OK "));
    assert_eq!(admin.admin("getpid").await, format!("OK {}\n", std::process::id()));
    assert_eq!(admin.admin("verbose").await, "OK INFO\n");
    assert_eq!(admin.admin("create function made").await, "OK\r\n");
    assert_eq!(admin.admin("status").await, "made\t0\t0\t0\n.\n");
    assert_eq!(admin.admin("drop function made").await, "OK\r\n");
    assert_eq!(admin.admin("status").await, ".\n");
    assert_eq!(admin.admin("drop function made").await, "ERR function not found\r\n");
    assert!(admin.admin("bogus").await.starts_with("ERR UNKNOWN_COMMAND"));
    assert_eq!(admin.admin("show nothing").await, "ERR UNKNOWN_SHOW_ARGUMENTS\r\n");
    assert!(admin.admin("shutdown").await.starts_with("ERR SHUTDOWN_DISABLED"));
    // The connection still works for binary packets after admin lines.
    admin.send(T::EchoReq, &[b"x"]).await;
    admin.expect(T::EchoRes).await;
    b.stop().await;
}

#[tokio::test]
async fn maxqueue_refuses_submissions_beyond_the_limit_even_before_the_function_exists() {
    let b = broker().await;
    let mut admin = Peer::connect(b.gearman_addr).await;
    assert_eq!(admin.admin("maxqueue limited 2").await, "OK\r\n");
    let mut client = Peer::connect(b.gearman_addr).await;
    client.submit(T::SubmitJobBg, "limited", "", b"1").await;
    client.submit(T::SubmitJobBg, "limited", "", b"2").await;
    client.send(T::SubmitJobBg, &[b"limited", b"", b"3"]).await;
    let e = client.expect(T::Error).await;
    assert_eq!(e.arg(0), b"QUEUE_ERROR");
    // Per-priority limits: high still has room when set separately.
    assert_eq!(admin.admin("maxqueue limited 5 2 2").await, "OK\r\n");
    client.submit(T::SubmitJobHighBg, "limited", "", b"h").await;
    // Lifting the limit.
    assert_eq!(admin.admin("maxqueue limited").await, "OK\r\n");
    client.submit(T::SubmitJobBg, "limited", "", b"3").await;
    b.stop().await;
}

#[tokio::test]
async fn a_function_with_dead_letters_is_not_dropped() {
    let b = broker().await;
    let mut client = Peer::connect(b.gearman_addr).await;
    client.submit(T::SubmitJobBg, "doomed", "", b"x").await;
    let mut worker = Peer::worker(b.gearman_addr, &["doomed"]).await;
    let job = worker.grab().await.unwrap();
    worker.send(T::WorkFail, &[job.arg(0)]).await;
    drop(worker);
    let mut admin = Peer::connect(b.gearman_addr).await;
    // Once the worker is gone, only the dead letter holds the function.
    let mut reply = String::new();
    for _ in 0..100 {
        reply = admin.admin("drop function doomed").await;
        if !reply.contains("workers") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(reply.starts_with("ERR ") && reply.contains("dead-lettered"), "{reply:?}");
    assert!(admin.admin("show dead").await.contains("\tdoomed\t"), "the dead letter is kept");
    assert_eq!(admin.admin("purge dead doomed").await, "OK 1\n");
    assert_eq!(admin.admin("drop function doomed").await, "OK\r\n");
    b.stop().await;
}

#[tokio::test]
async fn show_jobs_show_unique_jobs_and_cancel() {
    let b = broker().await;
    let mut client = Peer::connect(b.gearman_addr).await;
    let h1 = String::from_utf8(client.submit(T::SubmitJobBg, "f", "u-1", b"").await).unwrap();
    let h2 = String::from_utf8(client.submit(T::SubmitJob, "f", "", b"").await).unwrap();
    let mut admin = Peer::connect(b.gearman_addr).await;
    let jobs = admin.admin("show jobs").await;
    assert!(jobs.contains(&format!("{h1}\t0\t0\t1\n")), "{jobs:?}");
    assert!(jobs.contains(&format!("{h2}\t0\t0\t1\n")), "{jobs:?}");
    assert_eq!(admin.admin("show unique jobs").await, format!("u-1\t{h1}\n.\n"));

    assert_eq!(admin.admin(&format!("cancel job {h2}")).await, "OK\r\n");
    assert_eq!(client.expect(T::WorkFail).await.arg(0), h2.as_bytes(), "the waiting client is told");
    assert_eq!(admin.admin(&format!("cancel job {h2}")).await, "ERR UNKNOWN_JOB\r\n");
    // Cancelled jobs are gone at once, not when a worker next looks.
    assert_eq!(admin.admin("status").await, "f\t1\t0\t0\n.\n");
    let mut worker = Peer::worker(b.gearman_addr, &["f"]).await;
    assert_eq!(worker.grab().await.unwrap().arg(0), h1.as_bytes());
    assert!(worker.grab().await.is_none());
    // A running job cannot be cancelled from under its worker.
    assert_eq!(admin.admin(&format!("cancel job {h1}")).await, "ERR JOB_RUNNING\r\n");
    b.stop().await;
}

#[tokio::test]
async fn fleet_status_and_workers_report_what_the_operator_scales_on() {
    let b = broker().await;
    let mut client = Peer::connect(b.gearman_addr).await;
    for _ in 0..3 {
        client.submit(T::SubmitJobBg, "work", "", b"").await;
    }
    client.submit(T::SubmitJobLowBg, "work", "", b"").await;
    let mut busy = Peer::worker(b.gearman_addr, &["work"]).await;
    busy.send(T::SetClientId, &[b"pod-busy"]).await;
    let job = busy.grab().await.unwrap();
    let mut idle = Peer::worker(b.gearman_addr, &["work"]).await;
    idle.send(T::SetClientId, &[b"pod-idle"]).await;
    idle.send(T::CantDo, &[b"work"]).await;
    idle.send(T::CanDo, &[b"other"]).await;
    idle.send(T::PreSleep, &[]).await;

    let mut admin = Peer::connect(b.gearman_addr).await;
    let status = admin.admin("fleet status").await;
    let stats: Vec<_> = split_list(&status).unwrap().into_iter().map(|l| FunctionStats::parse(l).unwrap()).collect();
    let work = stats.iter().find(|s| s.function == "work").unwrap();
    assert_eq!(work.queued, [0, 2, 1]);
    assert_eq!((work.running, work.workers, work.idle_workers), (1, 1, 0));

    let workers = admin.admin("fleet workers").await;
    let rows: Vec<_> = split_list(&workers).unwrap().into_iter().map(|l| WorkerStats::parse(l).unwrap()).collect();
    let b_row = rows.iter().find(|w| w.client_id == "pod-busy").unwrap();
    assert_eq!(b_row.state, WorkerState::Busy);
    assert_eq!(b_row.current_jobs, [String::from_utf8_lossy(job.arg(0)).into_owned()]);
    let i_row = rows.iter().find(|w| w.client_id == "pod-idle").unwrap();
    assert_eq!(i_row.state, WorkerState::Sleeping);
    assert_eq!(i_row.functions, ["other"]);

    busy.send(T::WorkComplete, &[job.arg(0), b""]).await;
    busy.send(T::EchoReq, &[b""]).await;
    busy.expect(T::EchoRes).await;
    let workers = admin.admin("fleet workers").await;
    let row = split_list(&workers)
        .unwrap()
        .into_iter()
        .map(|l| WorkerStats::parse(l).unwrap())
        .find(|w| w.client_id == "pod-busy")
        .unwrap();
    assert_eq!((row.state, row.jobs_done), (WorkerState::Idle, 1));
    b.stop().await;
}

#[tokio::test]
async fn drained_workers_get_no_jobs_until_undrained() {
    let b = broker().await;
    let mut client = Peer::connect(b.gearman_addr).await;
    let mut worker = Peer::worker(b.gearman_addr, &["f"]).await;
    worker.send(T::SetClientId, &[b"pod-x"]).await;
    // Requests on one connection are handled in order: once the echo is back, so is the id.
    worker.send(T::EchoReq, &[b""]).await;
    worker.expect(T::EchoRes).await;
    let mut admin = Peer::connect(b.gearman_addr).await;
    assert_eq!(admin.admin("fleet drain pod-x").await, "OK 1\n");
    client.submit(T::SubmitJobBg, "f", "", b"").await;
    assert!(worker.grab().await.is_none(), "draining: no new work");
    worker.send(T::PreSleep, &[]).await;
    worker.expect_silence(Duration::from_millis(150)).await;
    assert_eq!(admin.admin("fleet undrain pod-x").await, "OK 1\n");
    worker.expect(T::Noop).await;
    assert!(worker.grab().await.is_some());
    assert_eq!(admin.admin("fleet drain nobody").await, "OK 0\n");
    b.stop().await;
}

#[tokio::test]
async fn fleet_watch_streams_a_status_block_after_changes() {
    let b = broker().await;
    let mut watcher = Peer::connect(b.gearman_addr).await;
    assert_eq!(watcher.admin("fleet watch").await, ".\n", "initial snapshot of an empty broker");
    let mut client = Peer::connect(b.gearman_addr).await;
    for _ in 0..5 {
        client.submit(T::SubmitJobBg, "burst", "", b"").await;
    }
    let started = std::time::Instant::now();
    let mut seen = None;
    while started.elapsed() < Duration::from_secs(2) {
        let block = watcher.read_text(true).await;
        let stats: Vec<_> = split_list(&block).unwrap().into_iter().filter_map(FunctionStats::parse).collect();
        if let Some(s) = stats.iter().find(|s| s.function == "burst" && s.queued_total() == 5) {
            seen = Some(s.clone());
            break;
        }
    }
    assert!(seen.is_some(), "a block showing the 5 queued jobs arrives without polling");
    b.stop().await;
}

#[tokio::test]
async fn fleet_disconnect_by_ip_drops_a_holding_worker_and_its_job_goes_to_another() {
    let b = broker().await;
    let elsewhere: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let mut client = Peer::connect_from(b.gearman_addr, elsewhere).await;
    let h = client.submit(T::SubmitJob, "f", "", b"x").await;
    let mut holder = Peer::worker(b.gearman_addr, &["f"]).await;
    assert_eq!(holder.grab().await.expect("the job").arg(0), h.as_slice());
    let mut rescuer = Peer::connect_from(b.gearman_addr, elsewhere).await;
    rescuer.send(T::CanDo, &[b"f"]).await;
    assert!(rescuer.grab().await.is_none(), "the job is held");
    rescuer.send(T::PreSleep, &[]).await;
    rescuer.send(T::EchoReq, &[b""]).await;
    rescuer.expect(T::EchoRes).await;

    // The admin connection comes from 127.0.0.1 too: it is never closed by its own command.
    let mut admin = Peer::connect(b.gearman_addr).await;
    let started = std::time::Instant::now();
    assert_eq!(admin.admin("fleet disconnect 127.0.0.1").await, "OK 1\n");
    let woken = rescuer.try_recv(Duration::from_secs(1)).await.expect("woken within a second");
    assert_eq!(woken.ptype, T::Noop);
    let job = rescuer.grab().await.expect("the disconnected worker's job");
    assert!(started.elapsed() < Duration::from_secs(1), "handed on in {:?}", started.elapsed());
    assert_eq!(job.arg(0), h.as_slice());
    let waited = std::time::Instant::now();
    assert!(holder.try_recv(Duration::from_secs(3)).await.is_none());
    assert!(waited.elapsed() < Duration::from_secs(2), "the holder's connection is closed, not just silent");

    rescuer.send(T::WorkComplete, &[&h, b"done"]).await;
    assert_eq!(client.expect(T::WorkComplete).await.arg(1), b"done", "its client got the result");
    assert_eq!(admin.admin("fleet disconnect 127.0.0.1").await, "OK 0\n");
    assert!(admin.admin("status").await.ends_with(".\n"));
    b.stop().await;
}
