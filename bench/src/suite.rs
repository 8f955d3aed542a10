//! The comparison: the standard workloads, run against each server in turn, R times.

use std::time::Duration;

use anyhow::Result;

use crate::load::{PriorityMix, UniqueMode};
use crate::server::{Server, ServerKind, ServerOptions};
use crate::shape::Shape;
use crate::workload::{self, Amount, Sample, Workload};

/// Sizes of the standard workloads.
#[derive(Debug, Clone)]
pub struct SuiteOptions {
    /// How long each throughput run lasts (fg and bg submit).
    pub duration: Duration,
    /// Job count for the throughput runs instead of a duration (smoke mode).
    pub jobs: Option<u64>,
    /// Background jobs queued for the drain and memory workloads.
    pub queue_jobs: u64,
    /// Payload of the throughput and drain workloads.
    pub payload: usize,
    /// Payload of the memory workload.
    pub memory_payload: usize,
    pub priority: PriorityMix,
    pub unique: UniqueMode,
    /// How long the memory workload lets RSS settle after the drain.
    pub settle: Duration,
}

impl SuiteOptions {
    pub fn full() -> SuiteOptions {
        SuiteOptions {
            duration: Duration::from_secs(3),
            jobs: None,
            queue_jobs: 200_000,
            payload: 8,
            memory_payload: 64,
            priority: PriorityMix::Normal,
            unique: UniqueMode::Empty,
            settle: Duration::from_secs(3),
        }
    }

    /// Tiny counts: the whole suite in a couple of seconds.
    pub fn smoke() -> SuiteOptions {
        SuiteOptions { jobs: Some(300), queue_jobs: 2_000, settle: Duration::from_millis(250), ..SuiteOptions::full() }
    }
}

/// The standard workloads, in report order.
pub fn standard_workloads(o: &SuiteOptions) -> Vec<Workload> {
    let amount = match o.jobs {
        Some(n) => Amount::Jobs(n),
        None => Amount::Duration(o.duration),
    };
    let q = o.queue_jobs;
    let w = |key: &str, title: String, label: &str, shape, clients, workers, in_flight, payload, amount| Workload {
        key: key.to_string(),
        title,
        label: label.to_string(),
        shape,
        clients,
        workers,
        in_flight,
        payload,
        priority: o.priority,
        unique: o.unique,
        amount,
        settle: o.settle,
    };
    let p = o.payload;
    vec![
        w("fg-1-1", "fg, 1 client / 1 worker, 1 in flight".into(), "fg 1/1", Shape::Fg, 1, 1, 1, p, amount),
        w("fg-4-4", "fg, 4 clients / 4 workers, 1 in flight".into(), "fg 4/4", Shape::Fg, 4, 4, 1, p, amount),
        w("fg-16-4", "fg, 16 clients / 4 workers, 1 in flight".into(), "fg 16/4", Shape::Fg, 16, 4, 1, p, amount),
        w(
            "fg-4-4-x100",
            "fg, 4 clients / 4 workers, 100 in flight each".into(),
            "fg 4/4 ×100",
            Shape::Fg,
            4,
            4,
            100,
            p,
            amount,
        ),
        w(
            "fg-1-300",
            "fg, 1 client / 300 workers (the others asleep), 1 in flight".into(),
            "fg 1/300",
            Shape::Fg,
            1,
            300,
            1,
            p,
            amount,
        ),
        w("bg-1", "bg submit, 1 client, 1 in flight".into(), "bg 1", Shape::Bg, 1, 0, 1, p, amount),
        w("bg-4", "bg submit, 4 clients, 1 in flight".into(), "bg 4", Shape::Bg, 4, 0, 1, p, amount),
        w("bg-4-x100", "bg submit, 4 clients, 100 in flight each".into(), "bg 4 ×100", Shape::Bg, 4, 0, 100, p, amount),
        w(
            "drain",
            format!("drain of {} queued bg jobs by 4 workers", thousands(q as f64)),
            "drain",
            Shape::Drain,
            4,
            4,
            100,
            p,
            Amount::Jobs(q),
        ),
        w(
            "memory",
            format!(
                "memory: queue {} bg jobs of {} B (4 clients, 100 in flight)",
                thousands(q as f64),
                o.memory_payload
            ),
            "queue (mem)",
            Shape::Memory,
            4,
            4,
            100,
            o.memory_payload,
            Amount::Jobs(q),
        ),
    ]
}

/// Every run of one workload against one server.
#[derive(Debug, Clone)]
pub struct Cell {
    pub server: ServerKind,
    pub samples: Vec<Sample>,
    pub errors: Vec<String>,
}

/// All the results of a comparison.
#[derive(Debug, Clone)]
pub struct Results {
    pub workloads: Vec<Workload>,
    pub servers: Vec<ServerKind>,
    /// `cells[w][s]`: workload `w` against `servers[s]`.
    pub cells: Vec<Vec<Cell>>,
    pub repeat: usize,
    pub started: std::time::SystemTime,
    pub elapsed: Duration,
    /// Average CPU (in cores) used by other processes on the machine during the run.
    pub others_cores: Option<f64>,
    pub load_before: Option<String>,
    pub load_after: Option<String>,
    pub server_notes: Vec<(ServerKind, String)>,
    pub gen_threads: usize,
    /// When a durable server was measured: this disk's write + fdatasync latency.
    pub disk_sync: Option<crate::disk::SyncLatency>,
}

impl Results {
    pub fn cell(&self, w: usize, server: ServerKind) -> Option<&Cell> {
        self.cells.get(w)?.iter().find(|c| c.server == server)
    }
}

/// Runs every workload `repeat` times against every server, one server at a time: for each
/// workload and repetition, each server is started fresh, measured and stopped in turn, so slow
/// drifts in machine load hit all servers alike.
pub fn compare(
    workloads: Vec<Workload>,
    servers: &[ServerKind],
    opts: &ServerOptions,
    repeat: usize,
    gen_threads: usize,
    mut progress: impl FnMut(&str),
) -> Result<Results> {
    // The durable servers' floor: how long this disk takes to make a small write durable.
    let disk_sync = if servers.contains(&ServerKind::GearfleetFsync) {
        match crate::disk::sync_latency(&std::env::temp_dir(), 300) {
            Ok(l) => Some(l),
            Err(e) => {
                progress(&format!("could not measure the disk's sync latency: {e}"));
                None
            }
        }
    } else {
        None
    };
    let rt = crate::load::generator_runtime(gen_threads)?;
    let started = std::time::SystemTime::now();
    let t0 = std::time::Instant::now();
    let load_before = crate::procstat::load_average();
    let ours_before = crate::procstat::self_cpu() + crate::procstat::children_cpu();
    let machine_before = crate::procstat::machine_cpu();
    let mut cells: Vec<Vec<Cell>> = workloads
        .iter()
        .map(|_| servers.iter().map(|&s| Cell { server: s, samples: Vec::new(), errors: Vec::new() }).collect())
        .collect();
    for (wi, w) in workloads.iter().enumerate() {
        for rep in 0..repeat {
            for (si, &kind) in servers.iter().enumerate() {
                if !kind.runs(w.shape) {
                    continue;
                }
                let outcome = Server::start(kind, opts, w.shape).and_then(|server| {
                    let r = rt.block_on(workload::run(w, &server));
                    let r = r.map_err(|e| {
                        let tail = server.stderr_tail();
                        if tail.is_empty() { e } else { e.context(format!("{kind} stderr: {tail}")) }
                    });
                    server.stop();
                    r
                });
                let cell = &mut cells[wi][si];
                match outcome {
                    Ok(s) => {
                        progress(&format!(
                            "{:<12} run {}/{} {:<15} {:>10.0} jobs/s  server {:>7.1} µs/job  generator {:>6.1} µs/job",
                            w.key,
                            rep + 1,
                            repeat,
                            kind.label(),
                            s.rate(),
                            s.server_us_per_job().unwrap_or(f64::NAN),
                            s.gen_us_per_job()
                        ));
                        cell.samples.push(s);
                    }
                    Err(e) => {
                        let msg = format!("{e:#}");
                        progress(&format!(
                            "{:<12} run {}/{} {:<15} FAILED: {msg}",
                            w.key,
                            rep + 1,
                            repeat,
                            kind.label()
                        ));
                        cell.errors.push(msg);
                    }
                }
            }
        }
    }
    let server_notes = servers.iter().map(|&s| (s, opts.describe(s))).collect();
    let elapsed = t0.elapsed();
    // CPU the rest of the machine used meanwhile, in cores: what disturbed the measurements.
    let ours = (crate::procstat::self_cpu() + crate::procstat::children_cpu()).saturating_sub(ours_before);
    let others_cores = match (machine_before, crate::procstat::machine_cpu()) {
        (Some(before), Some(after)) => {
            Some(after.saturating_sub(before).saturating_sub(ours).as_secs_f64() / elapsed.as_secs_f64().max(1e-9))
        }
        _ => None,
    };
    Ok(Results {
        workloads,
        servers: servers.to_vec(),
        cells,
        repeat,
        started,
        elapsed,
        others_cores,
        load_before,
        load_after: crate::procstat::load_average(),
        server_notes,
        gen_threads,
        disk_sync,
    })
}

/// 200000 → "200,000".
pub fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    if n < 0 { format!("-{out}") } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(4012.4), "4,012");
        assert_eq!(thousands(200_000.0), "200,000");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
    }

    #[test]
    fn standard_suite_has_the_ten_workloads() {
        let ws = standard_workloads(&SuiteOptions::full());
        let keys: Vec<_> = ws.iter().map(|w| w.key.as_str()).collect();
        assert_eq!(
            keys,
            ["fg-1-1", "fg-4-4", "fg-16-4", "fg-4-4-x100", "fg-1-300", "bg-1", "bg-4", "bg-4-x100", "drain", "memory"]
        );
        assert!(ws.iter().all(|w| w.shape != Shape::Drain || w.amount == Amount::Jobs(200_000)));
    }
}
