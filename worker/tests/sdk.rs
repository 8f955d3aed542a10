//! The SDK worker and client against the real gearfleet-broker: results, events, failures,
//! chaining, priorities, panics, timeouts, coalescing and multiplexing.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::{RunningWorker, eventually, function_status, start_broker, within, worker_for};
use gearfleet_worker::{
    CancelReason, Client, ClientError, Function, Job, JobError, JobEvent, JobOutput, Priority, ServerAddr,
};
use tokio::sync::{Notify, mpsc};

const LIMIT: Duration = Duration::from_secs(10);

async fn reverse(job: Job) -> Result<JobOutput, JobError> {
    let mut v = job.payload().to_vec();
    v.reverse();
    Ok(v.into())
}

fn client_for(addr: std::net::SocketAddr) -> Client {
    Client::new([ServerAddr::from(addr)])
}

#[tokio::test]
async fn foreground_job_round_trip() {
    let broker = start_broker().await;
    let worker =
        RunningWorker::started(worker_for(broker.gearman_addr).function("reverse", reverse).build().unwrap()).await;
    let client = client_for(broker.gearman_addr);

    let out = within(LIMIT, client.call("reverse", "hello")).await.unwrap();
    assert_eq!(out, Bytes::from_static(b"olleh"));
    // Binary payloads with NUL bytes survive both directions.
    let out = within(LIMIT, client.call("reverse", &b"a\0b\0c"[..])).await.unwrap();
    assert_eq!(out.as_ref(), b"c\0b\0a");
    assert_eq!(within(LIMIT, client.echo("ping")).await.unwrap(), Bytes::from_static(b"ping"));

    let summary = worker.shutdown().await;
    assert_eq!(summary.jobs_done, 2);
    assert!(!summary.forced);
}

#[tokio::test]
async fn status_data_and_warning_reach_the_client_in_order() {
    let broker = start_broker().await;
    let worker = worker_for(broker.gearman_addr)
        .function("report", |job: Job| async move {
            job.status(1, 3).await;
            job.data("part-1").await;
            job.warning("careful").await;
            job.status(3, 3).await;
            Ok(JobOutput::new("done"))
        })
        .build()
        .unwrap();
    let worker = RunningWorker::started(worker).await;
    let client = client_for(broker.gearman_addr);

    let mut job = within(LIMIT, client.submit("report", "x")).await.unwrap();
    assert!(job.handle().starts_with("H:"), "handle {}", job.handle());
    let mut events = Vec::new();
    while let Some(e) = within(LIMIT, job.next_event()).await {
        events.push(e);
    }
    assert_eq!(
        events,
        vec![
            JobEvent::Status { numerator: 1, denominator: 3 },
            JobEvent::Data(Bytes::from_static(b"part-1")),
            JobEvent::Warning(Bytes::from_static(b"careful")),
            JobEvent::Status { numerator: 3, denominator: 3 },
        ]
    );
    assert_eq!(within(LIMIT, job.result()).await.unwrap(), Bytes::from_static(b"done"));
    worker.shutdown().await;
}

#[tokio::test]
async fn get_status_sees_a_running_job_and_its_progress() {
    let broker = start_broker().await;
    let release = Arc::new(Notify::new());
    let reported = Arc::new(Notify::new());
    let (r1, r2) = (release.clone(), reported.clone());
    let worker = worker_for(broker.gearman_addr)
        .function("hold", move |job: Job| {
            let (release, reported) = (r1.clone(), r2.clone());
            async move {
                job.status(3, 4).await;
                reported.notify_one();
                release.notified().await;
                Ok(JobOutput::new("released"))
            }
        })
        .build()
        .unwrap();
    let worker = RunningWorker::started(worker).await;
    let client = client_for(broker.gearman_addr);

    let handle = within(LIMIT, client.submit("hold", "").background()).await.unwrap();
    within(LIMIT, reported.notified()).await;
    eventually(LIMIT, "status 3/4", || {
        let client = client.clone();
        let handle = handle.clone();
        async move {
            let s = client.get_status(&handle).await.unwrap();
            s.known && s.running && s.numerator == 3 && s.denominator == 4
        }
    })
    .await;
    release.notify_one();
    eventually(LIMIT, "job to finish", || {
        let client = client.clone();
        let handle = handle.clone();
        async move { !client.get_status(&handle).await.unwrap().known }
    })
    .await;
    let unknown = within(LIMIT, client.get_status("H:test:999999")).await.unwrap();
    assert!(!unknown.known && !unknown.running);
    worker.shutdown().await;
}

#[tokio::test]
async fn exception_and_fail_are_distinct() {
    let broker = start_broker().await;
    let worker = worker_for(broker.gearman_addr)
        .function("fail", |job: Job| async move {
            match job.payload().as_ref() {
                b"exception" => Err(JobError::exception("boom")),
                _ => Err(JobError::Fail),
            }
        })
        .build()
        .unwrap();
    let worker = RunningWorker::started(worker).await;
    let client = client_for(broker.gearman_addr);

    match within(LIMIT, client.call("fail", "exception")).await {
        Err(ClientError::Exception(msg)) => assert_eq!(msg, "boom"),
        other => panic!("expected an exception, got {other:?}"),
    }
    assert!(matches!(within(LIMIT, client.call("fail", "plain")).await, Err(ClientError::Failed)));
    let metrics = worker.status.metrics_text();
    assert!(metrics.contains(r#"gearfleet_worker_jobs_total{function="fail",outcome="exception"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"gearfleet_worker_jobs_total{function="fail",outcome="fail"} 1"#), "{metrics}");
    worker.shutdown().await;
}

#[tokio::test]
async fn background_jobs_and_chaining() {
    let broker = start_broker().await;
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, Bytes)>();
    let sink = move |name: &'static str| {
        let tx = tx.clone();
        move |job: Job| {
            let tx = tx.clone();
            async move {
                tx.send((name.to_string(), job.payload().clone())).unwrap();
                Ok(JobOutput::default())
            }
        }
    };
    let worker = worker_for(broker.gearman_addr)
        .concurrency(2)
        // Dynamic chaining: the handler names the next function.
        .function("first", |job: Job| async move {
            let mut v = job.payload().to_vec();
            v.reverse();
            Ok(JobOutput::new(v).with_next("second"))
        })
        // Static chaining: every output of "second" goes on to "third".
        .register(
            Function::new(
                "second",
                |job: Job| async move { Ok(JobOutput::new([b"2:", job.payload().as_ref()].concat())) },
            )
            .next("third"),
        )
        .function("third", sink("third"))
        .function("plain-bg", sink("plain-bg"))
        .build()
        .unwrap();
    let worker = RunningWorker::started(worker).await;
    let client = client_for(broker.gearman_addr);

    let handle = within(LIMIT, client.submit("plain-bg", "payload").background()).await.unwrap();
    assert!(handle.starts_with("H:"));
    assert_eq!(within(LIMIT, rx.recv()).await.unwrap(), ("plain-bg".into(), Bytes::from_static(b"payload")));

    // A foreground result comes back only after the chained job was accepted.
    let out = within(LIMIT, client.call("first", "abc")).await.unwrap();
    assert_eq!(out, Bytes::from_static(b"cba"));
    assert_eq!(within(LIMIT, rx.recv()).await.unwrap(), ("third".into(), Bytes::from_static(b"2:cba")));
    worker.shutdown().await;
}

#[tokio::test]
async fn scheduled_background_job_runs_at_its_epoch() {
    let broker = start_broker().await;
    let (tx, mut rx) = mpsc::unbounded_channel::<Instant>();
    let worker = worker_for(broker.gearman_addr)
        .function("later", move |_job: Job| {
            let tx = tx.clone();
            async move {
                tx.send(Instant::now()).unwrap();
                Ok(JobOutput::default())
            }
        })
        .build()
        .unwrap();
    let worker = RunningWorker::started(worker).await;
    let client = client_for(broker.gearman_addr);

    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let submitted = Instant::now();
    within(LIMIT, client.submit("later", "x").background().at_epoch(now + 2)).await.unwrap();
    let ran = within(LIMIT, rx.recv()).await.unwrap();
    assert!(ran.duration_since(submitted) >= Duration::from_millis(900), "ran after {:?}", ran - submitted);
    worker.shutdown().await;
}

#[tokio::test]
async fn priorities_are_served_high_normal_low() {
    let broker = start_broker().await;
    let client = client_for(broker.gearman_addr);
    // Queue everything before any worker exists, interleaving priorities.
    for i in 0..3 {
        for (p, name) in [(Priority::Low, "low"), (Priority::Normal, "normal"), (Priority::High, "high")] {
            within(LIMIT, client.submit("prio", format!("{name}-{i}")).priority(p).background()).await.unwrap();
        }
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let worker = worker_for(broker.gearman_addr)
        .function("prio", move |job: Job| {
            let tx = tx.clone();
            async move {
                tx.send(String::from_utf8_lossy(job.payload()).into_owned()).unwrap();
                Ok(JobOutput::default())
            }
        })
        .build()
        .unwrap();
    let worker = RunningWorker::started(worker).await;
    let mut order = Vec::new();
    for _ in 0..9 {
        order.push(within(LIMIT, rx.recv()).await.unwrap());
    }
    assert_eq!(order, ["high-0", "high-1", "high-2", "normal-0", "normal-1", "normal-2", "low-0", "low-1", "low-2"]);
    worker.shutdown().await;
}

#[tokio::test]
async fn a_panicking_handler_fails_its_job_and_the_worker_keeps_serving() {
    let broker = start_broker().await;
    let worker = worker_for(broker.gearman_addr)
        .function("fragile", |job: Job| async move {
            if job.payload().as_ref() == b"panic" {
                panic!("handler exploded");
            }
            Ok(JobOutput::new(job.payload().clone()))
        })
        .build()
        .unwrap();
    let worker = RunningWorker::started(worker).await;
    let client = client_for(broker.gearman_addr);

    assert!(matches!(within(LIMIT, client.call("fragile", "panic")).await, Err(ClientError::Failed)));
    assert_eq!(within(LIMIT, client.call("fragile", "fine")).await.unwrap(), Bytes::from_static(b"fine"));
    // A second panic soon after pauses the slot briefly, but it still serves.
    assert!(matches!(within(LIMIT, client.call("fragile", "panic")).await, Err(ClientError::Failed)));
    assert_eq!(within(LIMIT, client.call("fragile", "again")).await.unwrap(), Bytes::from_static(b"again"));

    let metrics = worker.status.metrics_text();
    assert!(metrics.contains(r#"gearfleet_worker_panics_total{function="fragile"} 2"#), "{metrics}");
    assert!(metrics.contains(r#"gearfleet_worker_jobs_total{function="fragile",outcome="panic"} 2"#), "{metrics}");
    let summary = worker.shutdown().await;
    assert_eq!(summary.jobs_done, 4);
}

#[tokio::test]
async fn function_timeout_cancels_the_job_and_the_worker_goes_on() {
    let broker = start_broker().await;
    let (tx, mut rx) = mpsc::unbounded_channel::<Option<CancelReason>>();
    let worker = worker_for(broker.gearman_addr)
        .cancel_grace(Duration::from_millis(500))
        .register(
            Function::new("slow", move |job: Job| {
                let tx = tx.clone();
                async move {
                    if job.payload().as_ref() == b"quick" {
                        return Ok(JobOutput::new("quick"));
                    }
                    tokio::select! {
                        _ = job.cancelled() => {
                            tx.send(job.cancel_reason()).unwrap();
                            Err(JobError::Fail)
                        }
                        _ = tokio::time::sleep(Duration::from_secs(30)) => Ok(JobOutput::new("late")),
                    }
                }
            })
            .timeout(Duration::from_secs(1)),
        )
        .build()
        .unwrap();
    let worker = RunningWorker::started(worker).await;
    let client = client_for(broker.gearman_addr);

    let start = Instant::now();
    match within(LIMIT, client.call("slow", "forever")).await {
        Err(ClientError::Exception(msg)) => assert!(msg.contains("timed out"), "{msg}"),
        other => panic!("expected a timeout exception, got {other:?}"),
    }
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(4), "took {took:?}");
    assert_eq!(within(LIMIT, rx.recv()).await.unwrap(), Some(CancelReason::Timeout));
    assert_eq!(within(LIMIT, client.call("slow", "quick")).await.unwrap(), Bytes::from_static(b"quick"));
    worker.shutdown().await;
}

#[tokio::test]
async fn coalesced_submissions_on_one_connection_all_get_the_result() {
    let broker = start_broker().await;
    let runs = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(Notify::new());
    let (runs2, release2) = (runs.clone(), release.clone());
    let worker = worker_for(broker.gearman_addr)
        .function("shared", move |job: Job| {
            let (runs, release) = (runs2.clone(), release2.clone());
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                release.notified().await;
                job.data("chunk").await;
                Ok(JobOutput::new("once"))
            }
        })
        .build()
        .unwrap();
    let worker = RunningWorker::started(worker).await;
    let client = client_for(broker.gearman_addr);

    let mut a = within(LIMIT, client.submit("shared", "p").unique("same-key")).await.unwrap();
    let mut b = within(LIMIT, client.submit("shared", "p").unique("same-key")).await.unwrap();
    assert_eq!(a.handle(), b.handle());
    eventually(LIMIT, "the job to start", || {
        let runs = runs.clone();
        async move { runs.load(Ordering::SeqCst) == 1 }
    })
    .await;
    release.notify_one();
    assert_eq!(within(LIMIT, a.next_event()).await, Some(JobEvent::Data(Bytes::from_static(b"chunk"))));
    assert_eq!(within(LIMIT, b.next_event()).await, Some(JobEvent::Data(Bytes::from_static(b"chunk"))));
    assert_eq!(within(LIMIT, a.result()).await.unwrap(), Bytes::from_static(b"once"));
    assert_eq!(within(LIMIT, b.result()).await.unwrap(), Bytes::from_static(b"once"));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    worker.shutdown().await;
}

#[tokio::test]
async fn many_concurrent_submissions_share_one_connection() {
    let broker = start_broker().await;
    let worker = RunningWorker::started(
        worker_for(broker.gearman_addr).concurrency(4).function("reverse", reverse).build().unwrap(),
    )
    .await;
    let client = client_for(broker.gearman_addr);
    let calls: Vec<_> = (0..100)
        .map(|i| {
            let client = client.clone();
            let priority = [Priority::High, Priority::Normal, Priority::Low][i % 3];
            tokio::spawn(async move {
                let payload = format!("job-{i}");
                let out = client.submit("reverse", payload.clone()).priority(priority).await?.await?;
                Ok::<_, ClientError>((payload, out))
            })
        })
        .collect();
    for c in calls {
        let (payload, out) = within(LIMIT, c).await.unwrap().unwrap();
        let expected: Vec<u8> = payload.bytes().rev().collect();
        assert_eq!(out.as_ref(), expected.as_slice());
    }
    // Four worker connections, and without a client id: the client's one connection and the
    // admin connection asking.
    let workers = common::admin(broker.gearman_addr, "workers").await;
    let anonymous = workers.lines().filter(|l| l.ends_with(" - :")).count();
    assert_eq!(anonymous, 2, "{workers}");
    assert_eq!(function_status(broker.gearman_addr, "reverse").await, Some((0, 0, 4)));
    worker.shutdown().await;
}

#[tokio::test]
async fn client_fails_over_to_the_next_server_and_skips_the_dead_one() {
    let broker = start_broker().await;
    let worker =
        RunningWorker::started(worker_for(broker.gearman_addr).function("reverse", reverse).build().unwrap()).await;
    // A port nothing listens on: bind, note the port, close.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let client = Client::builder()
        .servers([ServerAddr::from(dead), ServerAddr::from(broker.gearman_addr)])
        .recovery_time(Duration::from_secs(60))
        .build();
    assert_eq!(within(LIMIT, client.call("reverse", "ab")).await.unwrap(), Bytes::from_static(b"ba"));
    assert_eq!(within(LIMIT, client.call("reverse", "cd")).await.unwrap(), Bytes::from_static(b"dc"));
    worker.shutdown().await;

    // With only dead servers, the error says which one.
    let client = Client::new([ServerAddr::from(dead)]);
    match within(LIMIT, client.call("reverse", "x")).await {
        Err(ClientError::Connect { server, .. }) => assert_eq!(server, ServerAddr::from(dead)),
        other => panic!("expected a connect error, got {other:?}"),
    }
}

#[tokio::test]
async fn sleeping_workers_are_always_woken() {
    let broker = start_broker().await;
    let done = Arc::new(AtomicUsize::new(0));
    let done2 = done.clone();
    // No safety poll: every wake-up must come from a NOOP.
    let worker = worker_for(broker.gearman_addr)
        .concurrency(6)
        .sleep_poll(None)
        .function("tick", move |_job: Job| {
            let done = done2.clone();
            async move {
                done.fetch_add(1, Ordering::SeqCst);
                Ok(JobOutput::default())
            }
        })
        .build()
        .unwrap();
    let worker = RunningWorker::started(worker).await;
    let client = client_for(broker.gearman_addr);
    let mut expected = 0;
    for round in 0..25 {
        // Let every slot fall asleep, then submit a burst of 1..=9 jobs.
        tokio::time::sleep(Duration::from_millis(15)).await;
        let burst = 1 + (round * 7) % 9;
        for _ in 0..burst {
            within(LIMIT, client.submit("tick", "").background()).await.unwrap();
        }
        expected += burst;
        eventually(LIMIT, "the burst to be served", || {
            let done = done.clone();
            async move { done.load(Ordering::SeqCst) == expected }
        })
        .await;
    }
    let summary = worker.shutdown().await;
    assert_eq!(summary.jobs_done, expected as u64);
}

#[tokio::test]
async fn strategies_pick_servers_in_sequence_or_in_turn() {
    let a = start_broker().await;
    let b = start_broker().await;
    let servers = [ServerAddr::from(a.gearman_addr), ServerAddr::from(b.gearman_addr)];

    let sequence = Client::builder().servers(servers.clone()).strategy(gearfleet_worker::Strategy::Sequence).build();
    for _ in 0..3 {
        within(LIMIT, sequence.submit("seq", "").background()).await.unwrap();
    }
    assert_eq!(function_status(a.gearman_addr, "seq").await, Some((3, 0, 0)));
    assert_eq!(function_status(b.gearman_addr, "seq").await, None);

    let round_robin = Client::builder().servers(servers).strategy(gearfleet_worker::Strategy::RoundRobin).build();
    for _ in 0..4 {
        within(LIMIT, round_robin.submit("rr", "").background()).await.unwrap();
    }
    assert_eq!(function_status(a.gearman_addr, "rr").await, Some((2, 0, 0)));
    assert_eq!(function_status(b.gearman_addr, "rr").await, Some((2, 0, 0)));
}
