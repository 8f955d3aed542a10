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
