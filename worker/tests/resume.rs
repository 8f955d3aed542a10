//! A job in hand across a restart of gearfleet-broker (which takes jobs back: `OPTION_REQ
//! gearfleet-resume`): the handler keeps running, the worker reconnects and takes the job back or
//! delivers its outcome, and the retaining client that submitted it (the operator's Job runner)
//! gets that outcome on resubmission: the job runs once.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{RunningWorker, eventually, init_tracing, within, worker_for};
use futures::{SinkExt, StreamExt};
use gearfleet_proto::options::RETAIN_OUTCOMES;
use gearfleet_proto::{Codec, Frame, Packet, PacketType};
use gearfleet_worker::{Job, JobOutput};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_util::codec::Framed;

const LIMIT: Duration = Duration::from_secs(15);

/// A journaled broker on `addr` (port 0 for a free one) keeping its journal in `dir`.
async fn journaled_broker(addr: SocketAddr, dir: &Path) -> gearfleet_broker::Running {
    init_tracing();
    let mut config = gearfleet_broker::Config::for_tests();
    config.listen = addr;
    config.http_listen = None;
    config.data_dir = Some(dir.to_path_buf());
    config.durability = "fsync".into();
    gearfleet_broker::start(config).await.expect("broker starts")
}

/// A client connection that asks the broker to retain its outcomes, as the operator's runner does.
struct RetainingClient(Framed<TcpStream, Codec>);

impl RetainingClient {
    async fn connect(addr: SocketAddr) -> RetainingClient {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let mut c = RetainingClient(Framed::new(stream, Codec::client()));
        c.0.send(Packet::req(PacketType::OptionReq, &[RETAIN_OUTCOMES])).await.expect("send");
        assert_eq!(c.recv().await.ptype, PacketType::OptionRes);
        c
    }

    async fn recv(&mut self) -> Packet {
        match within(LIMIT, self.0.next()).await {
            Some(Ok(Frame::Packet(p))) => p,
            other => panic!("expected a packet, got {other:?}"),
        }
    }

    async fn submit(&mut self, unique: &str, data: &str) {
        let p = Packet::req(PacketType::SubmitJob, &[b"slow", unique.as_bytes(), data.as_bytes()]);
        self.0.send(p).await.expect("send");
        assert_eq!(self.recv().await.ptype, PacketType::JobCreated);
    }

    /// Reads until the job's final packet; returns its result.
    async fn result(&mut self) -> Vec<u8> {
        loop {
            let p = self.recv().await;
            match p.ptype {
                PacketType::WorkComplete => return p.arg(1).to_vec(),
                PacketType::WorkStatus | PacketType::WorkData | PacketType::WorkWarning => {}
                other => panic!("unexpected {other}: {p:?}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_in_hand_is_taken_back_or_delivered_after_the_broker_restarts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = journaled_broker("127.0.0.1:0".parse().expect("addr"), dir.path()).await;
    let addr = broker.gearman_addr;
    let runs = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(Notify::new());
    let (r, n) = (runs.clone(), release.clone());
    let worker = RunningWorker::started(
        worker_for(addr)
            .function("slow", move |job: Job| {
                let (runs, release) = (r.clone(), n.clone());
                async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    job.status(1, 2).await;
                    release.notified().await;
                    let mut out = job.payload().to_vec();
                    out.extend_from_slice(b", done");
                    Ok(JobOutput::new(out))
                }
            })
            .build()
            .expect("worker"),
    )
    .await;

    // 1. Taken back: the handler is still running when the broker is back.
    let mut client = RetainingClient::connect(addr).await;
    client.submit("ns/job-1", "one").await;
    eventually(LIMIT, "the job to start", || {
        let runs = runs.clone();
        async move { runs.load(Ordering::SeqCst) == 1 }
    })
    .await;
    broker.stop().await;
    let broker = journaled_broker(addr, dir.path()).await;
    eventually(LIMIT, "the worker to take its job back", || {
        let b = broker.broker.clone();
        async move { b.with_state(|s| s.held_jobs()) == 0 && b.with_state(|s| s.assigned_jobs()) == 1 }
    })
    .await;
    release.notify_one();
    let mut client = RetainingClient::connect(addr).await;
    client.submit("ns/job-1", "one").await;
    assert_eq!(client.result().await, b"one, done");

    // 2. Delivered: the handler ends while the broker is away.
    client.submit("ns/job-2", "two").await;
    eventually(LIMIT, "the second job to start", || {
        let runs = runs.clone();
        async move { runs.load(Ordering::SeqCst) == 2 }
    })
    .await;
    broker.stop().await;
    release.notify_one();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let broker = journaled_broker(addr, dir.path()).await;
    eventually(LIMIT, "the worker to deliver the outcome", || {
        let b = broker.broker.clone();
        async move { b.with_state(|s| s.held_jobs() == 0 && s.job_count() == 0) }
    })
    .await;
    let mut client = RetainingClient::connect(addr).await;
    client.submit("ns/job-2", "two").await;
    assert_eq!(client.result().await, b"two, done");

    assert_eq!(runs.load(Ordering::SeqCst), 2, "each job ran once");
    let summary = worker.shutdown().await;
    assert_eq!(summary.jobs_done, 2);
    broker.stop().await;
}
