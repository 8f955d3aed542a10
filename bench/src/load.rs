//! The load itself: client connections that keep K submissions in flight, and workers that
//! grab, echo and complete jobs the way real Gearman workers do (GRAB_JOB_UNIQ, NO_JOB →
//! PRE_SLEEP, NOOP → GRAB_JOB_UNIQ).

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use bytes::Bytes;
use gearfleet_proto::{PacketType, Priority};
use tokio::sync::{Notify, Semaphore};

use crate::conn::Conn;

/// The function every benchmark job is submitted to.
pub const FUNCTION: &[u8] = b"gearfleet_bench_echo";

/// Which priorities submissions use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PriorityMix {
    Normal,
    High,
    Low,
    /// High, normal and low in turn.
    Mixed,
}

impl PriorityMix {
    fn pick(self, seq: u64) -> Priority {
        match self {
            PriorityMix::Normal => Priority::Normal,
            PriorityMix::High => Priority::High,
            PriorityMix::Low => Priority::Low,
            PriorityMix::Mixed => Priority::ALL[(seq % 3) as usize],
        }
    }
}

/// The unique key each submission carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UniqueMode {
    /// Empty: never coalesced (what most client libraries send when none is given).
    Empty,
    /// A distinct 36-character UUID-shaped key per job (what libgearman generates by default).
    Uuid,
}

/// How much work a run does: a number of jobs shared by all clients, or submissions until a
/// deadline (jobs already in flight then still finish and count).
#[derive(Debug)]
pub enum Budget {
    Jobs(AtomicI64),
    Until(Instant),
}

impl Budget {
    pub fn jobs(n: u64) -> Arc<Budget> {
        Arc::new(Budget::Jobs(AtomicI64::new(i64::try_from(n).unwrap_or(i64::MAX))))
    }

    pub fn until(deadline: Instant) -> Arc<Budget> {
        Arc::new(Budget::Until(deadline))
    }

    /// Claims one more submission; false once the budget is spent.
    fn take(&self) -> bool {
        match self {
            Budget::Jobs(left) => left.fetch_sub(1, Ordering::Relaxed) > 0,
            Budget::Until(deadline) => Instant::now() < *deadline,
        }
    }
}

/// What a client connection submits.
#[derive(Debug, Clone)]
pub struct SubmitSpec {
    pub background: bool,
    pub in_flight: usize,
    pub payload: Bytes,
    pub priority: PriorityMix,
    pub unique: UniqueMode,
}

fn submit(conn: &mut Conn, spec: &SubmitSpec, client: u64, seq: &mut u64, unique: &mut Vec<u8>) {
    let ptype = spec.priority.pick(*seq).submit_type(spec.background);
    unique.clear();
    if spec.unique == UniqueMode::Uuid {
        let _ = write!(unique, "{:08x}-0000-4000-8000-{:012x}", client & 0xffff_ffff, *seq & 0xffff_ffff_ffff);
    }
    conn.queue(ptype, &[FUNCTION, unique, &spec.payload]);
    *seq += 1;
}

/// One client connection: keeps `spec.in_flight` submissions outstanding while the budget
/// lasts, and returns how many jobs it got through. A foreground job counts when its
/// WORK_COMPLETE arrives (carrying the payload back), a background one when JOB_CREATED does.
pub async fn client(addr: SocketAddr, client_id: u64, spec: Arc<SubmitSpec>, budget: Arc<Budget>) -> Result<u64> {
    let mut conn = Conn::connect(addr).await?;
    let mut seq = 0u64;
    let mut unique = Vec::with_capacity(40);
    let mut outstanding = 0usize;
    let mut done = 0u64;
    while outstanding < spec.in_flight && budget.take() {
        submit(&mut conn, &spec, client_id, &mut seq, &mut unique);
        outstanding += 1;
    }
    conn.flush().await?;
    while outstanding > 0 {
        let mut next = Some(conn.recv().await?);
        while let Some(p) = next {
            let finished = match p.ptype {
                PacketType::JobCreated => spec.background,
                PacketType::WorkComplete => {
                    if p.arg(1).len() != spec.payload.len() {
                        bail!(
                            "WORK_COMPLETE carried {} bytes, expected the {}-byte payload",
                            p.arg(1).len(),
                            spec.payload.len()
                        );
                    }
                    true
                }
                PacketType::WorkData | PacketType::WorkWarning | PacketType::WorkStatus => false,
                PacketType::WorkFail | PacketType::WorkException => bail!("a benchmark job failed: {p:?}"),
                PacketType::Error => bail!("server error: {p:?}"),
                other => bail!("unexpected {other} sent to a client"),
            };
            if finished {
                done += 1;
                outstanding -= 1;
                if budget.take() {
                    submit(&mut conn, &spec, client_id, &mut seq, &mut unique);
                    outstanding += 1;
                }
            }
            next = conn.try_recv()?;
        }
        conn.flush().await?;
    }
    Ok(done)
}

/// State shared by the worker connections of one run.
#[derive(Debug)]
pub struct Workers {
    /// Jobs completed (WORK_COMPLETE written) by all workers.
    pub completed: AtomicU64,
    /// When `completed` reaches this, `reached` is notified (0: never).
    target: u64,
    pub reached: Notify,
    /// One permit per worker once the server has answered its first request (so its CAN_DO
    /// has been processed).
    pub ready: Semaphore,
}

impl Workers {
    pub fn new(target: u64) -> Arc<Workers> {
        Arc::new(Workers { completed: AtomicU64::new(0), target, reached: Notify::new(), ready: Semaphore::new(0) })
    }
}

/// One worker connection: CAN_DO, then GRAB_JOB_UNIQ; each JOB_ASSIGN_UNIQ is answered with a
/// WORK_COMPLETE echoing the payload and the next GRAB_JOB_UNIQ in the same write; NO_JOB with
/// PRE_SLEEP; a NOOP wakes a sleeping worker into GRAB_JOB_UNIQ. Runs until aborted.
pub async fn worker(addr: SocketAddr, shared: Arc<Workers>) -> Result<()> {
    let mut conn = Conn::connect(addr).await?;
    conn.queue(PacketType::CanDo, &[FUNCTION]);
    conn.queue(PacketType::GrabJobUniq, &[]);
    conn.flush().await?;
    let mut sleeping = false;
    let mut announced = false;
    loop {
        let mut next = Some(conn.recv().await?);
        if !announced {
            announced = true;
            shared.ready.add_permits(1);
        }
        let mut completed = 0u64;
        while let Some(p) = next {
            match p.ptype {
                PacketType::JobAssignUniq => {
                    conn.queue(PacketType::WorkComplete, &[p.arg(0), p.arg(3)]);
                    conn.queue(PacketType::GrabJobUniq, &[]);
                    sleeping = false;
                    completed += 1;
                }
                PacketType::NoJob => {
                    conn.queue(PacketType::PreSleep, &[]);
                    sleeping = true;
                }
                PacketType::Noop => {
                    if sleeping {
                        conn.queue(PacketType::GrabJobUniq, &[]);
                        sleeping = false;
                    }
                }
                PacketType::Error => bail!("server error: {p:?}"),
                other => bail!("unexpected {other} sent to a worker"),
            }
            next = conn.try_recv()?;
        }
        conn.flush().await?;
        if completed > 0 {
            let total = shared.completed.fetch_add(completed, Ordering::AcqRel) + completed;
            if shared.target > 0 && total >= shared.target && total - completed < shared.target {
                shared.reached.notify_one();
            }
        }
    }
}

/// Waits until `n` workers are registered, failing if one of them ends first or it takes over
/// `limit`.
pub async fn wait_ready(
    shared: &Workers,
    n: usize,
    handles: &mut [tokio::task::JoinHandle<Result<()>>],
    limit: Duration,
) -> Result<()> {
    let wait = shared.ready.acquire_many(n as u32);
    match tokio::time::timeout(limit, wait).await {
        Ok(Ok(permits)) => {
            permits.forget();
            Ok(())
        }
        _ => Err(worker_failure(handles).await.unwrap_or_else(|| anyhow::anyhow!("workers not ready after {limit:?}"))),
    }
}

/// The error of the first worker that has ended, if any has.
pub async fn worker_failure(handles: &mut [tokio::task::JoinHandle<Result<()>>]) -> Option<anyhow::Error> {
    for h in handles.iter_mut() {
        if h.is_finished() {
            return Some(match h.await {
                Ok(Ok(())) => anyhow::anyhow!("a worker ended"),
                Ok(Err(e)) => e.context("worker failed"),
                Err(e) => anyhow::anyhow!("worker task failed: {e}"),
            });
        }
    }
    None
}

/// The load generator's runtime: one thread runs everything (no cross-thread wake-ups), more
/// threads share the connections.
pub fn generator_runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    b.thread_name("gfbench").enable_all().build()
}

/// A payload of `len` bytes.
pub fn payload(len: usize) -> Bytes {
    Bytes::from((0..len).map(|i| b'a' + (i % 26) as u8).collect::<Vec<u8>>())
}
