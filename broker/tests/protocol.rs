//! The broker's protocol semantics, exercised over TCP against a real broker.

mod common;

use std::time::Duration;

use common::{Peer, broker};
use gearfleet_proto::PacketType as T;

#[tokio::test]
async fn foreground_job_forwards_every_work_packet() {
    let b = broker().await;
    let mut client = Peer::connect(b.gearman_addr).await;
    let mut worker = Peer::worker(b.gearman_addr, &["reverse"]).await;
    let handle = client.submit(T::SubmitJob, "reverse", "", b"hello").await;
    assert!(handle.starts_with(b"H:test:"), "handle {:?}", String::from_utf8_lossy(&handle));

    let job = worker.grab().await.expect("a job");
    assert_eq!(job.arg(0), handle.as_slice());
    assert_eq!(job.arg(1), b"reverse");
    assert_eq!(job.arg(2), b"");
    assert_eq!(job.arg(3), b"hello");

    worker.send(T::WorkStatus, &[&handle, b"1", b"2"]).await;
    worker.send(T::WorkData, &[&handle, b"ol"]).await;
    worker.send(T::WorkWarning, &[&handle, b"careful"]).await;
    worker.send(T::WorkComplete, &[&handle, b"olleh"]).await;

    let p = client.expect(T::WorkStatus).await;
    assert_eq!((p.arg(1), p.arg(2)), (&b"1"[..], &b"2"[..]));
    assert_eq!(client.expect(T::WorkData).await.arg(1), b"ol");
    assert_eq!(client.expect(T::WorkWarning).await.arg(1), b"careful");
    let done = client.expect(T::WorkComplete).await;
    assert_eq!(done.arg(0), handle.as_slice());
    assert_eq!(done.arg(1), b"olleh");
    b.stop().await;
}

#[tokio::test]
async fn priorities_are_served_high_normal_low_fifo_within_each() {
    let b = broker().await;
    let mut client = Peer::connect(b.gearman_addr).await;
    client.submit(T::SubmitJobLowBg, "f", "", b"low1").await;
    client.submit(T::SubmitJobBg, "f", "", b"normal1").await;
    client.submit(T::SubmitJobHighBg, "f", "", b"high1").await;
    client.submit(T::SubmitJobLowBg, "f", "", b"low2").await;
    client.submit(T::SubmitJobBg, "f", "", b"normal2").await;
    client.submit(T::SubmitJobHighBg, "f", "", b"high2").await;

    let mut worker = Peer::worker(b.gearman_addr, &["f"]).await;
    let mut order = Vec::new();
    while let Some(job) = worker.grab().await {
        order.push(String::from_utf8_lossy(job.arg(3)).into_owned());
        worker.send(T::WorkComplete, &[job.arg(0), b""]).await;
    }
    assert_eq!(order, ["high1", "high2", "normal1", "normal2", "low1", "low2"]);
    b.stop().await;
}

#[tokio::test]
async fn priority_is_global_across_a_workers_functions() {
    let b = broker().await;
    let mut client = Peer::connect(b.gearman_addr).await;
    client.submit(T::SubmitJobBg, "a", "", b"a-normal").await;
    client.submit(T::SubmitJobLowBg, "b", "", b"b-low").await;
    client.submit(T::SubmitJobHighBg, "b", "", b"b-high").await;
    client.submit(T::SubmitJobBg, "b", "", b"b-normal").await;
    let mut worker = Peer::worker(b.gearman_addr, &["a", "b"]).await;
    let mut order = Vec::new();
    while let Some(job) = worker.grab().await {
        order.push(String::from_utf8_lossy(job.arg(3)).into_owned());
        worker.send(T::WorkComplete, &[job.arg(0), b""]).await;
    }
    assert_eq!(order, ["b-high", "a-normal", "b-normal", "b-low"]);
    b.stop().await;
}

#[tokio::test]
async fn same_unique_coalesces_and_every_client_gets_the_result() {
    let b = broker().await;
    let mut c1 = Peer::connect(b.gearman_addr).await;
    let mut c2 = Peer::connect(b.gearman_addr).await;
    let h1 = c1.submit(T::SubmitJob, "f", "key-1", b"x").await;
    let h2 = c2.submit(T::SubmitJob, "f", "key-1", b"y").await;
    assert_eq!(h1, h2, "same (function, unique) shares one job");
    // Empty unique never coalesces.
    let h3 = c1.submit(T::SubmitJob, "f", "", b"x").await;
    let h4 = c1.submit(T::SubmitJob, "f", "", b"x").await;
    assert_ne!(h3, h4);
    // "-" means: the payload is the unique key.
    let h5 = c1.submit(T::SubmitJob, "f", "-", b"same-payload").await;
    let h6 = c2.submit(T::SubmitJob, "f", "-", b"same-payload").await;
    assert_eq!(h5, h6);

    let mut worker = Peer::worker(b.gearman_addr, &["f"]).await;
    let job = worker.grab().await.unwrap();
    assert_eq!(job.arg(0), h1.as_slice());
    assert_eq!(job.arg(3), b"x", "the first submission's payload runs");
    worker.send(T::WorkStatus, &[&h1, b"5", b"10"]).await;
    worker.send(T::WorkComplete, &[&h1, b"shared"]).await;
    for c in [&mut c1, &mut c2] {
        assert_eq!(c.expect(T::WorkStatus).await.arg(1), b"5");
        assert_eq!(c.expect(T::WorkComplete).await.arg(1), b"shared");
    }
    // Once finished, the unique is free again: a new job.
    let h7 = c1.submit(T::SubmitJob, "f", "key-1", b"again").await;
    assert_ne!(h7, h1);
    b.stop().await;
}

#[tokio::test]
async fn exceptions_reach_only_clients_that_asked() {
    let b = broker().await;
    let mut plain = Peer::connect(b.gearman_addr).await;
    let mut wants = Peer::connect(b.gearman_addr).await;
    wants.send(T::OptionReq, &[b"exceptions"]).await;
    assert_eq!(wants.expect(T::OptionRes).await.arg(0), b"exceptions");
    wants.send(T::OptionReq, &[b"no-such-option"]).await;
    assert_eq!(wants.expect(T::Error).await.arg(0), b"UNKNOWN_OPTION");

    let h = plain.submit(T::SubmitJob, "f", "u", b"").await;
    wants.submit(T::SubmitJob, "f", "u", b"").await;
    let mut worker = Peer::worker(b.gearman_addr, &["f"]).await;
    worker.grab().await.unwrap();
    worker.send(T::WorkException, &[&h, b"boom"]).await;
    assert_eq!(wants.expect(T::WorkException).await.arg(1), b"boom");
    assert_eq!(plain.expect(T::WorkFail).await.arg(0), h.as_slice());
    // The exception ended the job: a WORK_FAIL after it names an unknown job.
    worker.send(T::WorkFail, &[&h]).await;
    assert_eq!(worker.expect(T::Error).await.arg(0), b"job_not_found");
    b.stop().await;
}

#[tokio::test]
async fn sleeping_workers_are_woken_and_late_sleepers_are_not_missed() {
    let b = broker().await;
    let mut worker = Peer::worker(b.gearman_addr, &["f"]).await;
    assert!(worker.grab().await.is_none());
    worker.send(T::PreSleep, &[]).await;
    worker.expect_silence(Duration::from_millis(100)).await;
    let mut client = Peer::connect(b.gearman_addr).await;
    client.submit(T::SubmitJobBg, "f", "", b"1").await;
    worker.expect(T::Noop).await;
    let job = worker.grab().await.unwrap();
    worker.send(T::WorkComplete, &[job.arg(0), b""]).await;

    // A job that arrives between NO_JOB and PRE_SLEEP: the PRE_SLEEP itself is answered by NOOP.
    assert!(worker.grab().await.is_none());
    client.submit(T::SubmitJobBg, "f", "", b"2").await;
    worker.send(T::PreSleep, &[]).await;
    worker.expect(T::Noop).await;
    assert!(worker.grab().await.is_some());
    b.stop().await;
}

#[tokio::test]
async fn a_job_held_by_a_worker_that_disconnects_is_requeued() {
    let b = broker().await;
    let mut client = Peer::connect(b.gearman_addr).await;
    let h = client.submit(T::SubmitJob, "f", "", b"payload").await;
    let mut w1 = Peer::worker(b.gearman_addr, &["f"]).await;
    assert!(w1.grab().await.is_some());
    let mut w2 = Peer::worker(b.gearman_addr, &["f"]).await;
    assert!(w2.grab().await.is_none(), "the job is running on w1");
    w2.send(T::PreSleep, &[]).await;
    drop(w1);
    w2.expect(T::Noop).await;
    let job = w2.grab().await.expect("the job comes back");
    assert_eq!(job.arg(0), h.as_slice());
    assert_eq!(job.arg(3), b"payload");
    w2.send(T::WorkComplete, &[&h, b"done"]).await;
    assert_eq!(client.expect(T::WorkComplete).await.arg(1), b"done");
    b.stop().await;
}

#[tokio::test]
async fn a_foreground_job_whose_client_left_before_it_started_is_dropped() {
    let b = broker().await;
    let mut client = Peer::connect(b.gearman_addr).await;
    client.submit(T::SubmitJob, "f", "", b"x").await;
    drop(client);
    let mut admin = Peer::connect(b.gearman_addr).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let status = admin.admin("status").await;
        if status == "f\t0\t0\t0\n.\n" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "job still queued: {status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.stop().await;
}

#[tokio::test]
async fn can_do_timeout_fails_the_job_once_and_never_reassigns_it() {
    let b = broker().await;
    let mut client = Peer::connect(b.gearman_addr).await;
    let mut worker = Peer::connect(b.gearman_addr).await;
    worker.send(T::CanDoTimeout, &[b"slow", b"1"]).await;
    let h = client.submit(T::SubmitJob, "slow", "", b"").await;
    assert!(worker.grab().await.is_some());
    let fail = client.try_recv(Duration::from_secs(3)).await.expect("the timeout fails the job");
    assert_eq!(fail.ptype, T::WorkFail);
    assert_eq!(fail.arg(0), h.as_slice());
    // The late result is refused, and nothing is handed out again.
    worker.send(T::WorkComplete, &[&h, b"late"]).await;
    assert_eq!(worker.expect(T::Error).await.arg(0), b"job_not_found");
    assert!(worker.grab().await.is_none());
    client.expect_silence(Duration::from_millis(200)).await;
    b.stop().await;
}

#[tokio::test]
async fn get_status_and_get_status_unique() {
    let b = broker().await;
    let mut client = Peer::connect(b.gearman_addr).await;
    let h = client.submit(T::SubmitJobBg, "f", "uniq-1", b"").await;
    client.send(T::GetStatus, &[&h]).await;
    let s = client.expect(T::StatusRes).await;
    assert_eq!((s.arg(1), s.arg(2)), (&b"1"[..], &b"0"[..]), "known, not running");

    let mut worker = Peer::worker(b.gearman_addr, &["f"]).await;
    worker.grab().await.unwrap();
    worker.send(T::WorkStatus, &[&h, b"3", b"4"]).await;
    worker.send(T::EchoReq, &[b"sync"]).await;
    worker.expect(T::EchoRes).await;
    client.send(T::GetStatus, &[&h]).await;
    let s = client.expect(T::StatusRes).await;
    assert_eq!([s.arg(1), s.arg(2), s.arg(3), s.arg(4)], [&b"1"[..], b"1", b"3", b"4"]);
    client.send(T::GetStatusUnique, &[b"uniq-1"]).await;
    let s = client.expect(T::StatusResUnique).await;
    assert_eq!(s.arg(0), b"uniq-1", "libgearman matches replies on the unique");
    assert_eq!([s.arg(1), s.arg(2), s.arg(3), s.arg(4), s.arg(5)], [&b"1"[..], b"1", b"3", b"4", b"0"]);

    client.send(T::GetStatus, &[b"H:test:999999"]).await;
    let s = client.expect(T::StatusRes).await;
    assert_eq!((s.arg(1), s.arg(2)), (&b"0"[..], &b"0"[..]));
    b.stop().await;
}

#[tokio::test]
async fn epoch_jobs_wait_for_their_time_then_wake_sleepers() {
    let b = broker().await;
    let mut client = Peer::connect(b.gearman_addr).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let at = (now + 2).to_string();
    client.send(T::SubmitJobEpoch, &[b"f", b"", at.as_bytes(), b"later"]).await;
    client.expect(T::JobCreated).await;
    // A job whose time has passed is queued at once.
    let past = (now - 10).to_string();
    client.send(T::SubmitJobEpoch, &[b"f", b"", past.as_bytes(), b"past"]).await;
    client.expect(T::JobCreated).await;

    let mut worker = Peer::worker(b.gearman_addr, &["f"]).await;
    let job = worker.grab().await.expect("the past-due job");
    assert_eq!(job.arg(3), b"past");
    worker.send(T::WorkComplete, &[job.arg(0), b""]).await;
    assert!(worker.grab().await.is_none(), "the future job is not yet due");
    let mut admin = Peer::connect(b.gearman_addr).await;
    let status = admin.admin("fleet status").await;
    assert!(status.starts_with("f\t0\t0\t0\t1\t"), "one scheduled job: {status:?}");
    worker.send(T::PreSleep, &[]).await;
    let noop = worker.try_recv(Duration::from_secs(4)).await.expect("woken when due");
    assert_eq!(noop.ptype, T::Noop);
    assert_eq!(worker.grab().await.expect("due now").arg(3), b"later");
    b.stop().await;
}

#[tokio::test]
async fn sched_jobs_with_bad_fields_are_refused() {
    let b = broker().await;
    let mut client = Peer::connect(b.gearman_addr).await;
    client.send(T::SubmitJobSched, &[b"f", b"", b"99", b"", b"", b"", b"", b"data"]).await;
    let e = client.expect(T::Error).await;
    assert_eq!(e.arg(0), b"ERR_INVALID_ARGUMENTS");
    // A valid schedule is accepted and waits.
    client.send(T::SubmitJobSched, &[b"f", b"", b"", b"", b"", b"", b"", b"data"]).await;
    client.expect(T::JobCreated).await;
    let mut admin = Peer::connect(b.gearman_addr).await;
    assert!(admin.admin("fleet status").await.starts_with("f\t0\t0\t0\t1\t"));
    b.stop().await;
}

#[tokio::test]
async fn reduce_jobs_are_accepted_and_assigned_with_their_reducer() {
    let b = broker().await;
    let mut client = Peer::connect(b.gearman_addr).await;
    client.send(T::SubmitReduceJob, &[b"map", b"", b"reduce", b"agg", b"input"]).await;
    let h = client.expect(T::JobCreated).await.arg(0).to_vec();
    let mut worker = Peer::worker(b.gearman_addr, &["map"]).await;
    worker.send(T::GrabJobAll, &[]).await;
    let job = worker.expect(T::JobAssignAll).await;
    assert_eq!([job.arg(0), job.arg(1), job.arg(3), job.arg(4)], [&h[..], b"map", b"reduce", b"input"]);
    worker.send(T::WorkComplete, &[&h, b"out"]).await;
    assert_eq!(client.expect(T::WorkComplete).await.arg(1), b"out");
    b.stop().await;
}

#[tokio::test]
async fn plain_grab_job_gets_job_assign() {
    let b = broker().await;
    let mut client = Peer::connect(b.gearman_addr).await;
    let h = client.submit(T::SubmitJobBg, "f", "u", b"data").await;
    let mut worker = Peer::worker(b.gearman_addr, &["f"]).await;
    worker.send(T::GrabJob, &[]).await;
    let job = worker.expect(T::JobAssign).await;
    assert_eq!([job.arg(0), job.arg(1), job.arg(2)], [&h[..], b"f", b"data"]);
    b.stop().await;
}

#[tokio::test]
async fn cant_do_and_reset_abilities_stop_assignment() {
    let b = broker().await;
    let mut client = Peer::connect(b.gearman_addr).await;
    client.submit(T::SubmitJobBg, "f", "", b"").await;
    let mut worker = Peer::worker(b.gearman_addr, &["f", "g"]).await;
    worker.send(T::CantDo, &[b"f"]).await;
    assert!(worker.grab().await.is_none());
    worker.send(T::CanDo, &[b"f"]).await;
    worker.send(T::ResetAbilities, &[]).await;
    assert!(worker.grab().await.is_none());
    worker.send(T::CanDo, &[b"f"]).await;
    assert!(worker.grab().await.is_some());
    b.stop().await;
}

#[tokio::test]
async fn responses_sent_as_requests_get_an_error() {
    let b = broker().await;
    let mut peer = Peer::connect(b.gearman_addr).await;
    peer.send(T::Noop, &[]).await;
    assert_eq!(peer.expect(T::Error).await.arg(0), b"ERR_UNEXPECTED_PACKET");
    peer.send(T::SubmitJob, &[b"", b"", b"x"]).await;
    assert_eq!(peer.expect(T::Error).await.arg(0), b"ERR_INVALID_ARGUMENTS");
    peer.send(T::EchoReq, &[b"still alive"]).await;
    assert_eq!(peer.expect(T::EchoRes).await.arg(0), b"still alive");
    b.stop().await;
}

/// A client that asks for retained outcomes and loses its connection while its job runs (the
/// operator restarting) gets the outcome when it submits the same (function, unique) again; the
/// job never runs twice. Ordinary clients keep Gearman's semantics: the same unique runs again.
#[tokio::test]
async fn retained_outcome_answers_a_resubmission_instead_of_a_second_run() {
    let b = broker().await;
    let mut first = Peer::connect(b.gearman_addr).await;
    first.send(T::OptionReq, &[b"gearfleet-retain-outcomes"]).await;
    assert_eq!(first.expect(T::OptionRes).await.arg(0), b"gearfleet-retain-outcomes");
    first.submit(T::SubmitJob, "once", "job-uid-1", b"payload").await;
    let mut worker = Peer::worker(b.gearman_addr, &["once"]).await;
    let job = worker.grab().await.expect("assigned");
    // A retaining client is told when its job starts (WORK_STATUS 0/0).
    let started = first.expect(T::WorkStatus).await;
    assert_eq!((started.arg(1), started.arg(2)), (&b"0"[..], &b"0"[..]));
    drop(first); // the client is gone while the job runs
    worker.send(T::WorkComplete, &[job.arg(0), b"the result"]).await;
    worker.send(T::EchoReq, &[b"sync"]).await;
    worker.expect(T::EchoRes).await;

    let mut again = Peer::connect(b.gearman_addr).await;
    again.send(T::OptionReq, &[b"exceptions"]).await;
    again.expect(T::OptionRes).await;
    again.send(T::OptionReq, &[b"gearfleet-retain-outcomes"]).await;
    again.expect(T::OptionRes).await;
    again.submit(T::SubmitJob, "once", "job-uid-1", b"payload").await;
    assert_eq!(again.expect(T::WorkComplete).await.arg(1), b"the result");
    worker.send(T::GrabJobUniq, &[]).await;
    worker.expect(T::NoJob).await;

    // Failures are retained too (as exceptions for clients that asked for them).
    again.submit(T::SubmitJob, "once", "job-uid-2", b"").await;
    let job = worker.grab().await.expect("assigned");
    again.expect(T::WorkStatus).await;
    worker.send(T::WorkException, &[job.arg(0), b"boom"]).await;
    assert_eq!(again.expect(T::WorkException).await.arg(1), b"boom");
    again.submit(T::SubmitJob, "once", "job-uid-2", b"").await;
    assert_eq!(again.expect(T::WorkException).await.arg(1), b"boom");

    // A plain client submitting a finished unique runs it again.
    let mut plain = Peer::connect(b.gearman_addr).await;
    plain.submit(T::SubmitJob, "once", "job-uid-1", b"payload").await;
    let rerun = worker.grab().await.expect("a plain client's submission runs");
    worker.send(T::WorkComplete, &[rerun.arg(0), b"second"]).await;
    assert_eq!(plain.expect(T::WorkComplete).await.arg(1), b"second");
    b.stop().await;
}

/// A client with many jobs in flight (its replies may wait for the end of the event loop's round
/// and share a write) gets every JOB_CREATED in order and every result, from several workers,
/// while it still waits on other jobs (two for a function nobody serves): nothing is left held
/// once the broker has nothing else to do.
#[tokio::test]
async fn a_pipelining_client_gets_every_result_from_several_workers() {
    for threads in [1, 2] {
        pipelining_client_gets_every_result(threads).await;
    }
}

async fn pipelining_client_gets_every_result(threads: usize) {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const JOBS: usize = 300;
    let b = common::broker_with_threads(threads).await;
    let done = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let mut w = Peer::worker(b.gearman_addr, &["reverse"]).await;
        let done = done.clone();
        workers.push(tokio::spawn(async move {
            while done.load(Ordering::SeqCst) < JOBS {
                let Some(job) = w.grab().await else {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                };
                let reversed: Vec<u8> = job.arg(3).iter().rev().copied().collect();
                w.send(T::WorkComplete, &[job.arg(0), &reversed]).await;
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    let mut client = Peer::connect(b.gearman_addr).await;
    let mut burst = Vec::new();
    for _ in 0..2 {
        burst.extend_from_slice(&gearfleet_proto::Packet::req(T::SubmitJob, &[b"never", b"", b""]).to_bytes());
    }
    for i in 0..JOBS {
        let data = format!("job-{i:03}");
        burst.extend_from_slice(
            &gearfleet_proto::Packet::req(T::SubmitJob, &[b"reverse", b"", data.as_bytes()]).to_bytes(),
        );
    }
    client.send_raw(&burst).await;
    let mut created = Vec::new();
    let mut results = HashMap::new();
    while created.len() < JOBS + 2 || results.len() < JOBS {
        let p = client.recv().await;
        match p.ptype {
            T::JobCreated => created.push(p.arg(0).to_vec()),
            T::WorkComplete => assert!(results.insert(p.arg(0).to_vec(), p.arg(1).to_vec()).is_none()),
            other => panic!("unexpected {other}"),
        }
    }
    for (i, handle) in created[2..].iter().enumerate() {
        let want: Vec<u8> = format!("job-{i:03}").bytes().rev().collect();
        assert_eq!(results.get(handle), Some(&want), "result of submission {i}");
    }
    for w in workers {
        w.await.unwrap();
    }
    b.stop().await;
}
