//! Workloads: what runs against a server, and what one run measures.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use tokio::task::JoinHandle;

use crate::load::{self, Budget, PriorityMix, SubmitSpec, UniqueMode, Workers};
use crate::procstat;
use crate::server::Server;
use crate::shape::Shape;

/// How long a run goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    Jobs(u64),
    Duration(Duration),
}

impl Amount {
    fn budget(self) -> Arc<Budget> {
        match self {
            Amount::Jobs(n) => Budget::jobs(n),
            Amount::Duration(d) => Budget::until(Instant::now() + d),
        }
    }

    /// How long a phase may take before the run is declared stuck.
    fn limit(self) -> Duration {
        match self {
            Amount::Jobs(n) => Duration::from_secs(120) + Duration::from_millis(n / 2),
            Amount::Duration(d) => d + Duration::from_secs(60),
        }
    }
}

/// One workload.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Short stable name, e.g. `fg-4-4-x100`.
    pub key: String,
    /// What a reader sees in the table.
    pub title: String,
    /// Short label for the chart.
    pub label: String,
    pub shape: Shape,
    pub clients: usize,
    pub workers: usize,
    pub in_flight: usize,
    pub payload: usize,
    pub priority: PriorityMix,
    pub unique: UniqueMode,
    pub amount: Amount,
    /// Memory workload: how long RSS is watched after the drain (servers that give memory back
    /// may do it from housekeeping timers). Sampled every 250 ms; the lowest reading counts.
    pub settle: Duration,
}

/// Server RSS during a memory workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemSample {
    pub idle: u64,
    pub queued: u64,
    pub drained: u64,
    pub jobs: u64,
}

impl MemSample {
    /// Bytes of server memory per queued job.
    pub fn bytes_per_job(&self) -> f64 {
        self.queued.saturating_sub(self.idle) as f64 / self.jobs.max(1) as f64
    }

    /// Share of the memory the queue took that is given back after the drain (0..=1).
    pub fn returned(&self) -> f64 {
        let grown = self.queued.saturating_sub(self.idle);
        if grown == 0 {
            return 1.0;
        }
        (self.queued.saturating_sub(self.drained) as f64 / grown as f64).clamp(0.0, 1.0)
    }
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct Sample {
    pub jobs: u64,
    pub elapsed: Duration,
    /// CPU time the server spent during the timed phase (None: not measurable).
    pub server_cpu: Option<Duration>,
    /// CPU time the load generator spent during the timed phase.
    pub gen_cpu: Duration,
    pub mem: Option<MemSample>,
}

impl Sample {
    pub fn rate(&self) -> f64 {
        self.jobs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn server_us_per_job(&self) -> Option<f64> {
        self.server_cpu.map(|c| c.as_secs_f64() * 1e6 / self.jobs.max(1) as f64)
    }

    pub fn gen_us_per_job(&self) -> f64 {
        self.gen_cpu.as_secs_f64() * 1e6 / self.jobs.max(1) as f64
    }
}

/// Wall clock and CPU at the start of a timed phase, of one server or of several together.
struct Meter {
    at: Instant,
    server: Option<Duration>,
    me: Duration,
}

/// The servers' CPU time together (`None` if any cannot be measured).
fn servers_cpu(servers: &[Server]) -> Result<Option<Duration>> {
    let mut total = Duration::ZERO;
    for s in servers {
        match s.cpu()? {
            Some(c) => total += c,
            None => return Ok(None),
        }
    }
    Ok(Some(total))
}

impl Meter {
    fn start(servers: &[Server]) -> Result<Meter> {
        Ok(Meter { server: servers_cpu(servers)?, me: procstat::self_cpu(), at: Instant::now() })
    }

    /// (elapsed, server CPU, generator CPU) since the start.
    fn stop(self, servers: &[Server]) -> Result<(Duration, Option<Duration>, Duration)> {
        let elapsed = self.at.elapsed();
        let server_cpu = match (servers_cpu(servers)?, self.server) {
            (Some(now), Some(then)) => Some(now.saturating_sub(then)),
            _ => None,
        };
        let mut gen_cpu = procstat::self_cpu().saturating_sub(self.me);
        if servers.iter().any(Server::in_process) {
            gen_cpu = gen_cpu.saturating_sub(server_cpu.unwrap_or_default());
        }
        Ok((elapsed, server_cpu, gen_cpu))
    }
}

/// Runs `w` once against `server`, on the current (generator) runtime.
pub async fn run(w: &Workload, server: &Server) -> Result<Sample> {
    let addr = server.addr;
    let one = std::slice::from_ref(server);
    match w.shape {
        Shape::Fg => {
            let shared = Workers::new(0);
            let mut workers = spawn_workers(addr, w.workers, &shared);
            let result = async {
                load::wait_ready(&shared, w.workers, &mut workers, Duration::from_secs(10)).await?;
                let meter = Meter::start(one)?;
                let jobs = submit_all(addr, w, false, w.amount, &mut workers).await?;
                let (elapsed, server_cpu, gen_cpu) = meter.stop(one)?;
                Ok(Sample { jobs, elapsed, server_cpu, gen_cpu, mem: None })
            }
            .await;
            abort(workers);
            result
        }
        Shape::Bg => {
            let meter = Meter::start(one)?;
            let jobs = submit_all(addr, w, true, w.amount, &mut []).await?;
            let (elapsed, server_cpu, gen_cpu) = meter.stop(one)?;
            Ok(Sample { jobs, elapsed, server_cpu, gen_cpu, mem: None })
        }
        Shape::Drain => {
            let n = queue_jobs(w)?;
            let queued = submit_all(addr, w, true, Amount::Jobs(n), &mut []).await.context("queueing")?;
            let meter = Meter::start(one)?;
            drain(addr, w, queued).await?;
            let (elapsed, server_cpu, gen_cpu) = meter.stop(one)?;
            Ok(Sample { jobs: queued, elapsed, server_cpu, gen_cpu, mem: None })
        }
        Shape::Memory => {
            let n = queue_jobs(w)?;
            let idle = server.rss()?;
            let meter = Meter::start(one)?;
            let queued = submit_all(addr, w, true, Amount::Jobs(n), &mut []).await.context("queueing")?;
            let (elapsed, server_cpu, gen_cpu) = meter.stop(one)?;
            let full = server.rss()?;
            drain(addr, w, queued).await?;
            let drained = settled_rss(server, w.settle).await?;
            let mem = match (idle, full, drained) {
                (Some(idle), Some(full), Some(drained)) => {
                    Some(MemSample { idle, queued: full, drained, jobs: queued })
                }
                _ => None,
            };
            Ok(Sample { jobs: queued, elapsed, server_cpu, gen_cpu, mem })
        }
    }
}

/// Runs the foreground workload `w` against every one of `servers` at once, as a fleet of brokers
/// serves it: each server gets the workload's clients and workers (a worker serving several
/// brokers holds one connection to each). The sample sums the jobs and the servers' CPU time.
pub async fn run_spread(w: &Workload, servers: &[Server]) -> Result<Sample> {
    if w.shape != Shape::Fg {
        return Err(anyhow!("{}: spreading over brokers is for foreground workloads", w.key));
    }
    let mut pools = Vec::new();
    for server in servers {
        let shared = Workers::new(0);
        let mut workers = spawn_workers(server.addr, w.workers, &shared);
        load::wait_ready(&shared, w.workers, &mut workers, Duration::from_secs(10)).await?;
        pools.push(workers);
    }
    let result = async {
        let meter = Meter::start(servers)?;
        let runs =
            servers.iter().zip(pools.iter_mut()).map(|(s, workers)| submit_all(s.addr, w, false, w.amount, workers));
        let jobs: u64 = futures::future::try_join_all(runs).await?.into_iter().sum();
        let (elapsed, server_cpu, gen_cpu) = meter.stop(servers)?;
        Ok(Sample { jobs, elapsed, server_cpu, gen_cpu, mem: None })
    }
    .await;
    for workers in pools {
        abort(workers);
    }
    result
}

/// The server's lowest RSS over `settle` after a drain, sampled every 250 ms.
async fn settled_rss(server: &Server, settle: Duration) -> Result<Option<u64>> {
    let step = Duration::from_millis(250).min(settle.max(Duration::from_millis(1)));
    let start = Instant::now();
    let mut lowest = server.rss()?;
    while start.elapsed() < settle {
        tokio::time::sleep(step).await;
        lowest = match (lowest, server.rss()?) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    Ok(lowest)
}

fn queue_jobs(w: &Workload) -> Result<u64> {
    match w.amount {
        Amount::Jobs(n) => Ok(n),
        Amount::Duration(_) => Err(anyhow!("{}: drain and memory workloads take a job count, not a duration", w.key)),
    }
}

fn spawn_workers(addr: SocketAddr, n: usize, shared: &Arc<Workers>) -> Vec<JoinHandle<Result<()>>> {
    (0..n).map(|_| tokio::spawn(load::worker(addr, shared.clone()))).collect()
}

fn abort(handles: Vec<JoinHandle<Result<()>>>) {
    for h in handles {
        h.abort();
    }
}

/// Runs the workload's clients until `amount` is used up; returns the jobs they got through.
/// Fails early if a worker fails.
async fn submit_all(
    addr: SocketAddr,
    w: &Workload,
    background: bool,
    amount: Amount,
    workers: &mut [JoinHandle<Result<()>>],
) -> Result<u64> {
    let spec = Arc::new(SubmitSpec {
        background,
        in_flight: w.in_flight.max(1),
        payload: load::payload(w.payload),
        priority: w.priority,
        unique: w.unique,
    });
    let budget = amount.budget();
    let mut clients: Vec<JoinHandle<Result<u64>>> = (0..w.clients.max(1))
        .map(|i| tokio::spawn(load::client(addr, i as u64, spec.clone(), budget.clone())))
        .collect();
    let deadline = tokio::time::Instant::now() + amount.limit();
    let mut total = 0u64;
    for c in clients.iter_mut() {
        loop {
            tokio::select! {
                r = &mut *c => {
                    total += r.map_err(|e| anyhow!("client task failed: {e}"))??;
                    break;
                }
                _ = tokio::time::sleep(Duration::from_millis(200)), if !workers.is_empty() => {
                    if let Some(e) = load::worker_failure(workers).await {
                        clients.iter().for_each(|c| c.abort());
                        return Err(e);
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    clients.iter().for_each(|c| c.abort());
                    return Err(anyhow!("clients still waiting after {:?}: the server looks stuck", amount.limit()));
                }
            }
        }
    }
    Ok(total)
}

/// Connects the workload's workers and waits until they have completed `jobs` jobs.
async fn drain(addr: SocketAddr, w: &Workload, jobs: u64) -> Result<()> {
    let shared = Workers::new(jobs);
    let reached = shared.reached.notified();
    let mut workers = spawn_workers(addr, w.workers.max(1), &shared);
    let limit = Amount::Jobs(jobs).limit();
    let deadline = tokio::time::Instant::now() + limit;
    tokio::pin!(reached);
    let result = loop {
        tokio::select! {
            _ = &mut reached => break Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if let Some(e) = load::worker_failure(&mut workers).await {
                    break Err(e);
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                let done = shared.completed.load(std::sync::atomic::Ordering::Relaxed);
                break Err(anyhow!("only {done} of {jobs} queued jobs drained after {limit:?}: the server looks stuck"));
            }
        }
    };
    abort(workers);
    result
}
