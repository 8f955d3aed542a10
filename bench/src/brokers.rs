//! Several brokers side by side: the foreground workload `fg 4/4` against 1, 2, … N servers of
//! one kind at once (each with its own 4 clients and 4 workers, as a fleet of brokers spreads
//! them), for gearfleet-broker and for gearmand. The figure is the aggregate jobs/s, and the
//! servers' CPU time per job, which says what each more broker would add on a machine with a
//! core to spare for it.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Result;

use crate::load::{PriorityMix, UniqueMode};
use crate::server::{Server, ServerKind, ServerOptions};
use crate::shape::Shape;
use crate::suite::thousands;
use crate::workload::{self, Amount, Sample, Workload};

/// One cell: `brokers` servers of `kind`, the median run.
#[derive(Debug, Clone)]
pub struct Row {
    pub kind: ServerKind,
    pub brokers: usize,
    pub median: Sample,
}

/// The workload each server gets.
pub fn workload(duration: Duration) -> Workload {
    Workload {
        key: "fg-4-4-per-broker".into(),
        title: "fg, 4 clients / 4 workers per broker, 1 in flight".into(),
        label: "fg 4/4 per broker".into(),
        shape: Shape::Fg,
        clients: 4,
        workers: 4,
        in_flight: 1,
        payload: 8,
        priority: PriorityMix::Normal,
        unique: UniqueMode::Empty,
        amount: Amount::Duration(duration),
        settle: Duration::ZERO,
    }
}

/// Runs the sweep: for each kind, 1..=`max` servers, `repeat` runs each; `progress` gets a line
/// per run.
pub fn sweep(
    kinds: &[ServerKind],
    max: usize,
    repeat: usize,
    duration: Duration,
    opts: &ServerOptions,
    gen_threads: usize,
    mut progress: impl FnMut(String),
) -> Result<Vec<Row>> {
    let rt = crate::load::generator_runtime(gen_threads)?;
    let w = workload(duration);
    let mut rows = Vec::new();
    for &kind in kinds {
        for brokers in 1..=max.max(1) {
            let mut samples = Vec::new();
            for run in 0..repeat.max(1) {
                let servers: Vec<Server> =
                    (0..brokers).map(|_| Server::start(kind, opts, Shape::Fg)).collect::<Result<_>>()?;
                let sample = rt.block_on(workload::run_spread(&w, &servers));
                for s in servers {
                    s.stop();
                }
                let sample = sample?;
                progress(format!("{kind} × {brokers}: run {}: {} jobs/s", run + 1, thousands(sample.rate())));
                samples.push(sample);
            }
            samples.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
            let median = samples[samples.len() / 2].clone();
            rows.push(Row { kind, brokers, median });
        }
    }
    Ok(rows)
}

/// The Markdown table: per broker count, each kind's aggregate jobs/s and server CPU per job, and
/// gearfleet's ratio to the first gearmand kind at the same count.
pub fn markdown(rows: &[Row], cores: usize) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Several brokers on this machine ({cores} cores): `{}`, the median of the runs.\n",
        workload(Duration::ZERO).title
    );
    let _ = writeln!(md, "| brokers | server | jobs/s (all brokers) | server CPU µs/job | vs gearmand |");
    let _ = writeln!(md, "|---|---|---|---|---|");
    let max = rows.iter().map(|r| r.brokers).max().unwrap_or(0);
    for brokers in 1..=max {
        let at: Vec<&Row> = rows.iter().filter(|r| r.brokers == brokers).collect();
        let peer = at.iter().find(|r| r.kind.is_gearmand()).map(|r| r.median.rate());
        for r in at {
            let cpu = r.median.server_us_per_job().map_or("–".into(), |v| format!("{v:.1}"));
            let ratio = match peer {
                Some(p) if !r.kind.is_gearmand() && p > 0.0 => format!("{:.2}×", r.median.rate() / p),
                _ => String::new(),
            };
            let _ = writeln!(md, "| {brokers} | {} | {} | {cpu} | {ratio} |", r.kind, thousands(r.median.rate()));
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two in-process gearfleet brokers, one short run each: the sweep runs end to end, and every
    /// broker served jobs (the aggregate of two is not below one broker's share).
    #[test]
    fn sweeps_one_and_two_in_process_brokers() {
        let opts = ServerOptions {
            gearmand_bin: "/usr/sbin/gearmand".into(),
            gearmand_threads: 4,
            hashtable_buckets: 991,
            broker_bin: ServerOptions::default_broker_bin(),
            gearfleet_in_process: true,
            gearfleet_threads: 1,
            floor_bin: None,
        };
        let rows = sweep(&[ServerKind::Gearfleet], 2, 1, Duration::from_millis(300), &opts, 1, |_| {}).expect("sweep");
        assert_eq!(rows.len(), 2);
        assert!(rows.iter().all(|r| r.median.jobs > 0), "{rows:?}");
        let md = markdown(&rows, 2);
        assert!(md.contains("| 2 | gearfleet |"), "{md}");
    }
}
