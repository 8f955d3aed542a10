//! Lost wake-ups are gearmand's best-known bug class: jobs stay queued while able workers sleep.
//! Many sleeping workers, bursts of jobs, workers reconnecting mid-run: every job must be done.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{Peer, broker_with_threads};
use gearfleet_proto::PacketType as T;

/// A worker that follows the protocol strictly: GRAB until NO_JOB, PRE_SLEEP, wait for NOOP.
/// It reconnects after `reconnect_every` jobs. Stops when `done` reaches `target`.
async fn run_worker(addr: std::net::SocketAddr, done: Arc<AtomicU64>, target: u64, reconnect_every: u64) {
    let mut handled = 0u64;
    'outer: loop {
        let mut w = Peer::worker(addr, &["burst"]).await;
        loop {
            if done.load(Ordering::SeqCst) >= target {
                break 'outer;
            }
            match w.grab().await {
                Some(job) => {
                    w.send(T::WorkComplete, &[job.arg(0), b""]).await;
                    done.fetch_add(1, Ordering::SeqCst);
                    handled += 1;
                    if reconnect_every > 0 && handled.is_multiple_of(reconnect_every) {
                        continue 'outer;
                    }
                }
                None => {
                    w.send(T::PreSleep, &[]).await;
                    // Sleep until NOOP; wake now and then only to notice the end of the test.
                    loop {
                        match w.try_recv(Duration::from_millis(500)).await {
                            Some(p) if p.ptype == T::Noop => break,
                            Some(p) => panic!("unexpected {p:?} while asleep"),
                            None if done.load(Ordering::SeqCst) >= target => break 'outer,
                            None => {}
                        }
                    }
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_to_many_sleeping_workers_with_reconnects_leave_nothing_queued() {
    let b = broker_with_threads(2).await;
    let rounds = 8u64;
    let per_round = 250u64;
    let target = rounds * per_round;
    let done = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for i in 0..24u64 {
        // A third of the workers reconnect every few jobs.
        let reconnect = if i % 3 == 0 { 7 + i } else { 0 };
        workers.push(tokio::spawn(run_worker(b.gearman_addr, done.clone(), target, reconnect)));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut client = Peer::connect(b.gearman_addr).await;
    let mut admin = Peer::connect(b.gearman_addr).await;
    for round in 0..rounds {
        for _ in 0..per_round {
            client.send(T::SubmitJobBg, &[b"burst", b"", b"x"]).await;
        }
        for _ in 0..per_round {
            client.expect(T::JobCreated).await;
        }
        // Let the fleet go back to sleep between bursts, so each burst hits sleepers.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while done.load(Ordering::SeqCst) < (round + 1) * per_round {
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: {} of {} done; broker says {:?}",
                done.load(Ordering::SeqCst),
                (round + 1) * per_round,
                admin.admin("status").await
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(done.load(Ordering::SeqCst), target);
    let status = admin.admin("status").await;
    assert!(status.starts_with("burst\t0\t0\t"), "nothing left queued or running: {status:?}");
    b.stop().await;
}

/// 300 workers asleep on one function: each job wakes one of them (a handful of NOOPs, not 300),
/// and a stuck worker that was woken but never asks is replaced after the wake-up grace, so the
/// job is still done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_wakes_one_of_many_sleepers_and_a_stuck_one_is_replaced() {
    let b = broker_with_threads(2).await;
    let mut sleepers = Vec::new();
    for _ in 0..300 {
        let mut w = Peer::worker(b.gearman_addr, &["crowd"]).await;
        w.send(T::PreSleep, &[]).await;
        sleepers.push(w);
    }
    let mut admin = Peer::connect(b.gearman_addr).await;
    // Every PRE_SLEEP is in before the job: the admin reply comes after them on the broker.
    for w in &mut sleepers {
        w.send(T::EchoReq, &[b"synced"]).await;
        w.expect(T::EchoRes).await;
    }
    let mut client = Peer::connect(b.gearman_addr).await;
    client.send(T::SubmitJob, &[b"crowd", b"", b"one"]).await;
    client.expect(T::JobCreated).await;
    let mut woken = Vec::new();
    for (i, w) in sleepers.iter_mut().enumerate() {
        if let Some(p) = w.try_recv(Duration::from_millis(if woken.is_empty() { 300 } else { 5 })).await {
            assert_eq!(p.ptype, T::Noop);
            woken.push(i);
        }
    }
    assert_eq!(woken.len(), 1, "one job, one NOOP: {woken:?}");

    // The woken worker is stuck: it never asks. Within the grace another one is woken instead.
    let stuck = woken[0];
    let mut rescuer = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while rescuer.is_none() && tokio::time::Instant::now() < deadline {
        for (i, w) in sleepers.iter_mut().enumerate() {
            if i != stuck && w.try_recv(Duration::from_millis(1)).await.is_some_and(|p| p.ptype == T::Noop) {
                rescuer = Some(i);
                break;
            }
        }
    }
    let rescuer = rescuer.expect("another sleeper woken in the stuck one's place");
    let job = sleepers[rescuer].grab().await.expect("the job");
    sleepers[rescuer].send(T::WorkComplete, &[job.arg(0), b"done"]).await;
    let done = client.expect(T::WorkComplete).await;
    assert_eq!(done.arg(1), b"done");
    let metrics = admin.admin("status").await;
    assert!(metrics.starts_with("crowd\t0\t0\t300"), "{metrics:?}");
    b.stop().await;
}
