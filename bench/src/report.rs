//! The Markdown report: conditions, the throughput/CPU table, the memory table, and the goals.

use std::fmt::Write as _;

use crate::server::ServerKind;
use crate::shape::Shape;
use crate::suite::{Cell, Results, thousands};
use crate::timestamp::utc_timestamp;
use crate::workload::Sample;

/// Median, min and max of some values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

pub fn spread(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
    let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
    Some(Spread { median, min: v[0], max: v[n - 1] })
}

impl Cell {
    pub fn rate(&self) -> Option<Spread> {
        spread(self.samples.iter().map(Sample::rate))
    }

    pub fn server_us(&self) -> Option<f64> {
        spread(self.samples.iter().filter_map(Sample::server_us_per_job)).map(|s| s.median)
    }

    pub fn gen_us(&self) -> Option<f64> {
        spread(self.samples.iter().map(Sample::gen_us_per_job)).map(|s| s.median)
    }

    pub fn mem(&self, f: impl Fn(&crate::workload::MemSample) -> f64) -> Option<f64> {
        spread(self.samples.iter().filter_map(|s| s.mem.as_ref()).map(f)).map(|s| s.median)
    }
}

/// Ratios of gearfleet to the best gearmand for one workload.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ratios {
    /// gearfleet median jobs/s over the higher of the gearmand medians.
    pub throughput: f64,
    /// gearfleet CPU µs/job over the lower of the gearmand ones.
    pub cpu: Option<f64>,
}

impl Results {
    /// Ratios for workload `w`, when gearfleet and at least one gearmand produced numbers.
    pub fn ratios(&self, w: usize) -> Option<Ratios> {
        let gf = self.cell(w, ServerKind::Gearfleet)?;
        let gf_rate = gf.rate()?.median;
        let best_rate = self.best_gearmand_rate(w)?;
        let cpu = match (gf.server_us(), self.best_gearmand_cpu(w)) {
            (Some(g), Some(best)) => Some(g / best),
            _ => None,
        };
        Some(Ratios { throughput: gf_rate / best_rate, cpu })
    }

    /// The higher of the gearmand median jobs/s for workload `w`.
    pub fn best_gearmand_rate(&self, w: usize) -> Option<f64> {
        let gearmands = self.cells[w].iter().filter(|c| c.server.is_gearmand());
        let best = gearmands.filter_map(Cell::rate).map(|s| s.median).fold(f64::NAN, f64::max);
        (best.is_finite() && best > 0.0).then_some(best)
    }

    /// The lower of the gearmand CPU µs per job for workload `w`.
    pub fn best_gearmand_cpu(&self, w: usize) -> Option<f64> {
        let gearmands = self.cells[w].iter().filter(|c| c.server.is_gearmand());
        let best = gearmands.filter_map(Cell::server_us).fold(f64::NAN, f64::min);
        (best.is_finite() && best > 0.0).then_some(best)
    }

    pub fn memory_workload(&self) -> Option<usize> {
        self.workloads.iter().position(|w| w.shape == Shape::Memory)
    }
}

fn fmt_us(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.1}"),
        None => "–".into(),
    }
}

fn fmt_mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
}

/// The work tree's commit, marked when it has uncommitted changes (None outside a git checkout).
fn git_revision() -> Option<String> {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("git").args(args).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let rev = run(&["rev-parse", "--short", "HEAD"])?;
    let dirty = run(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{rev} with uncommitted changes") } else { rev })
}

/// The whole report as Markdown.
pub fn markdown(r: &Results) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# gearfleet-broker against gearmand\n");
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(
        out,
        "Measured {} on {cores} cores; load average (1/5/15 min) {} before, {} after; {} run{} per cell, \
         {:.0} s in total; the load generator (gearfleet-bench, {} threads) ran on the same machine.\n",
        utc_timestamp(r.started),
        r.load_before.as_deref().unwrap_or("?"),
        r.load_after.as_deref().unwrap_or("?"),
        r.repeat,
        if r.repeat == 1 { "" } else { "s" },
        r.elapsed.as_secs_f64(),
        r.gen_threads,
    );
    if let Some(others) = r.others_cores {
        let _ = writeln!(
            out,
            "- other processes used {others:.2} of the {cores} cores on average during the run{}",
            if others > 0.25 { " (busy machine: absolute figures are low, compare ratios only)" } else { "" }
        );
    }
    if let Some(rev) = git_revision() {
        let _ = writeln!(out, "- source: commit {rev}");
    }
    for (kind, note) in &r.server_notes {
        let _ = writeln!(out, "- **{kind}**: {note}");
    }
    if let Some(w) = r.workloads.first() {
        let _ = writeln!(
            out,
            "- jobs: {}-byte payloads (memory workload: see its row), echoed back by the workers; \
             priority {:?}, unique {:?}",
            w.payload, w.priority, w.unique
        );
    }
    out.push('\n');
    out.push_str(&throughput_table(r));
    out.push('\n');
    if let Some(table) = memory_table(r) {
        out.push_str(&table);
        out.push('\n');
    }
    if let Some(goals) = goals(r) {
        out.push_str(&goals);
        out.push('\n');
    }
    let errors: Vec<String> = r
        .cells
        .iter()
        .enumerate()
        .flat_map(|(wi, cells)| {
            cells.iter().flat_map(move |c| {
                c.errors.iter().map(move |e| format!("- {} / {}: {e}", r.workloads[wi].key, c.server))
            })
        })
        .collect();
    if !errors.is_empty() {
        let _ = writeln!(out, "## Failed runs\n");
        for e in errors {
            let _ = writeln!(out, "{e}");
        }
    }
    out
}

/// Jobs/s per server (median, min–max), the ratio, and CPU per job.
pub fn throughput_table(r: &Results) -> String {
    let mut out = String::new();
    let has_ratio = r.servers.contains(&ServerKind::Gearfleet) && r.servers.iter().any(|s| s.is_gearmand());
    let mut head = vec!["workload".to_string()];
    head.extend(r.servers.iter().map(|s| format!("{s} jobs/s")));
    if has_ratio {
        head.push("ratio".into());
    }
    head.extend(r.servers.iter().map(|s| format!("CPU µs/job {s}")));
    if has_ratio {
        head.push("CPU ratio".into());
    }
    head.push(format!(
        "generator CPU µs/job ({})",
        r.servers.iter().map(|s| s.label()).collect::<Vec<_>>().join(" / ")
    ));
    let _ = writeln!(out, "| {} |", head.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(head.len()));
    for (wi, w) in r.workloads.iter().enumerate() {
        let mut row = vec![w.title.clone()];
        for &s in &r.servers {
            let cell = r.cell(wi, s);
            row.push(match cell.and_then(Cell::rate) {
                Some(sp) if sp.min != sp.max => {
                    format!("{} ({}–{})", thousands(sp.median), thousands(sp.min), thousands(sp.max))
                }
                Some(sp) => thousands(sp.median),
                None if cell.is_some_and(|c| !c.errors.is_empty()) => "failed".into(),
                None => "–".into(),
            });
        }
        let ratios = r.ratios(wi);
        if has_ratio {
            row.push(ratios.map_or("–".into(), |x| format!("**{:.2}×**", x.throughput)));
        }
        for &s in &r.servers {
            row.push(fmt_us(r.cell(wi, s).and_then(Cell::server_us)));
        }
        if has_ratio {
            row.push(ratios.and_then(|x| x.cpu).map_or("–".into(), |c| format!("{c:.2}×")));
        }
        row.push(
            r.servers.iter().map(|&s| fmt_us(r.cell(wi, s).and_then(Cell::gen_us))).collect::<Vec<_>>().join(" / "),
        );
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
    out
}

/// Server RSS around the memory workload.
pub fn memory_table(r: &Results) -> Option<String> {
    let wi = r.memory_workload()?;
    let w = &r.workloads[wi];
    let crate::workload::Amount::Jobs(n) = w.amount else { return None };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### Memory: {} queued background jobs of {} bytes\n\nRSS after the drain is the lowest reading within a few seconds (servers may give memory back from a timer).\n",
        thousands(n as f64),
        w.payload
    );
    let _ = writeln!(
        out,
        "| server | RSS idle | RSS with the queue | bytes per queued job | RSS after the drain | returned after the drain |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for &s in r.servers.iter().filter(|s| s.runs(Shape::Memory)) {
        let Some(c) = r.cell(wi, s) else { continue };
        let (Some(idle), Some(queued), Some(per_job), Some(drained), Some(returned)) = (
            c.mem(|m| m.idle as f64),
            c.mem(|m| m.queued as f64),
            c.mem(|m| m.bytes_per_job()),
            c.mem(|m| m.drained as f64),
            c.mem(|m| m.returned()),
        ) else {
            let _ = writeln!(out, "| {s} | – | – | – | – | – |");
            continue;
        };
        let _ = writeln!(
            out,
            "| {s} | {} | {} | {per_job:.0} | {} | {:.0}% |",
            fmt_mib(idle),
            fmt_mib(queued),
            fmt_mib(drained),
            returned * 100.0
        );
    }
    Some(out)
}

/// The project's goals, checked against these results.
pub mod targets {
    /// gearfleet jobs/s over the best gearmand, on every workload.
    pub const THROUGHPUT: f64 = 2.0;
    /// The same on fg 1/1 (latency-bound: one job in flight).
    pub const THROUGHPUT_FG_1_1: f64 = 3.0;
    /// gearfleet CPU per job over the best gearmand's, at most.
    pub const CPU: f64 = 1.0 / 3.0;
    /// Bytes of RSS per queued 64-byte background job, at most.
    pub const BYTES_PER_JOB: f64 = 300.0;
    /// Share of the queue's memory given back after the drain, at least.
    pub const RETURNED: f64 = 0.9;
}

fn mark(ok: bool) -> &'static str {
    if ok { "holds" } else { "**fails**" }
}

/// A ratio next to a goal's verdict: two decimals, or three when two would round it onto the
/// other side of `target` (2.997 shown as "3.00" beside "fails").
fn goal_ratio(v: f64, target: f64, at_least: bool) -> String {
    let two = format!("{v:.2}");
    let shown = two.parse().unwrap_or(v);
    if meets(shown, target, at_least) == meets(v, target, at_least) { two } else { format!("{v:.3}") }
}

/// Whether `v` meets a goal of at least (or at most) `target`; "at most" allows for the rounding
/// of a target like 1/3.
fn meets(v: f64, target: f64, at_least: bool) -> bool {
    if at_least { v >= target } else { v <= target + 1e-9 }
}

/// Gearfleet against the floor (background: a server that keeps nothing and sleeps between
/// packets; foreground: a bare FIFO router) on the workloads the floor runs: how much of a job's
/// cost is the exchange itself.
fn floor_lines(r: &Results) -> Option<String> {
    let mut out = String::new();
    for (wi, w) in r.workloads.iter().enumerate() {
        let Some(floor) = r.cell(wi, ServerKind::Floor).and_then(Cell::server_us) else { continue };
        let what = if w.shape == Shape::Fg {
            "the floor (a bare FIFO router)"
        } else {
            "the floor (a server that keeps nothing)"
        };
        let _ = write!(out, "  - {}: {what} spends {} µs/job", w.label, fmt_us(Some(floor)));
        if let Some(best_cpu) = r.best_gearmand_cpu(wi) {
            let _ = write!(out, " ({:.2}× gearmand's)", floor / best_cpu);
        }
        let floor_rate = r.cell(wi, ServerKind::Floor).and_then(Cell::rate).map(|s| s.median);
        if let (Some(fr), Some(best_rate)) = (floor_rate, r.best_gearmand_rate(wi)) {
            let _ = write!(out, " and does {} jobs/s ({:.2}× gearmand)", thousands(fr), fr / best_rate);
        }
        let ours = r.cell(wi, ServerKind::Gearfleet);
        if let Some(us) = ours.and_then(Cell::server_us) {
            let _ = write!(out, "; gearfleet spends {} µs/job ({:.2}× the floor's)", fmt_us(Some(us)), us / floor);
        }
        if let (Some(rate), Some(fr)) = (ours.and_then(Cell::rate).map(|s| s.median), floor_rate) {
            let _ = write!(out, " and does {:.2}× its jobs/s", rate / fr);
        }
        out.push('\n');
    }
    (!out.is_empty()).then_some(out)
}

/// The disk's sync latency against the durable server's one-in-flight workloads: a client that
/// waits for each acknowledgement cannot get more than one per sync.
fn disk_lines(r: &Results) -> Option<String> {
    let d = r.disk_sync?;
    let per_client = d.max_per_second();
    let mut out = format!(
        "- this disk makes a 100-byte write durable (write + fdatasync into preallocated space) in {} µs \
         (median of {}, p90 {} µs): at most {} acknowledgements per second to a client that waits for each\n",
        fmt_us(Some(d.median.as_secs_f64() * 1e6)),
        d.samples,
        fmt_us(Some(d.p90.as_secs_f64() * 1e6)),
        thousands(per_client)
    );
    for (wi, w) in r.workloads.iter().enumerate() {
        if w.shape != Shape::Bg || w.in_flight != 1 {
            continue;
        }
        let Some(best) = r.best_gearmand_rate(wi) else { continue };
        let ceiling = per_client * w.clients as f64;
        let reach = if ceiling >= best { "reachable" } else { "**out of reach on this disk**" };
        let _ = write!(
            out,
            "  - {}: `fsync` can acknowledge at most {} jobs/s here ({} client{} × one sync each), gearmand in \
             memory does {}: {reach}",
            w.label,
            thousands(ceiling),
            w.clients,
            if w.clients == 1 { "" } else { "s" },
            thousands(best)
        );
        if let Some(fs) = r.cell(wi, ServerKind::GearfleetFsync).and_then(Cell::rate) {
            let _ = write!(
                out,
                "; gearfleet-fsync did {} ({:.0}% of that ceiling)",
                thousands(fs.median),
                fs.median / ceiling * 100.0
            );
        }
        out.push('\n');
    }
    Some(out)
}

/// Which goals hold, when gearfleet and gearmand were both measured.
pub fn goals(r: &Results) -> Option<String> {
    let ratios: Vec<(usize, Ratios)> = (0..r.workloads.len()).filter_map(|w| r.ratios(w).map(|x| (w, x))).collect();
    if ratios.is_empty() {
        return None;
    }
    let mut out = String::from("### Goals\n\n");
    let list = |f: &dyn Fn(&Ratios) -> Option<f64>| {
        ratios
            .iter()
            .filter_map(|(w, x)| f(x).map(|v| format!("{} {v:.2}×", r.workloads[*w].label)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let min_tp = ratios.iter().map(|(_, x)| x.throughput).fold(f64::INFINITY, f64::min);
    let _ = writeln!(
        out,
        "- jobs/s ≥ {:.0}× the best gearmand on every workload: {} (lowest {}×; {})",
        targets::THROUGHPUT,
        mark(meets(min_tp, targets::THROUGHPUT, true)),
        goal_ratio(min_tp, targets::THROUGHPUT, true),
        list(&|x| Some(x.throughput))
    );
    if let Some((_, x)) = ratios.iter().find(|(w, _)| r.workloads[*w].key == "fg-1-1") {
        let _ = writeln!(
            out,
            "- jobs/s ≥ {:.0}× on fg 1/1: {} ({}×)",
            targets::THROUGHPUT_FG_1_1,
            mark(meets(x.throughput, targets::THROUGHPUT_FG_1_1, true)),
            goal_ratio(x.throughput, targets::THROUGHPUT_FG_1_1, true)
        );
    }
    let cpus: Vec<f64> = ratios.iter().filter_map(|(_, x)| x.cpu).collect();
    if !cpus.is_empty() {
        let max_cpu = cpus.iter().copied().fold(0.0, f64::max);
        let _ = writeln!(
            out,
            "- server CPU per job ≤ 1/3 of the best gearmand's on every workload: {} (highest {}×; {})",
            mark(meets(max_cpu, targets::CPU, false)),
            goal_ratio(max_cpu, targets::CPU, false),
            list(&|x| x.cpu)
        );
    }
    if let Some(floor) = floor_lines(r) {
        out.push_str("- for reference, the floor (no work of its own; it sleeps between packets):\n");
        out.push_str(&floor);
    }
    if let Some(disk) = disk_lines(r) {
        out.push_str(&disk);
    }
    if let Some(c) = r.memory_workload().and_then(|w| r.cell(w, ServerKind::Gearfleet)) {
        let payload = r.memory_workload().map_or(0, |w| r.workloads[w].payload);
        if let (Some(per_job), Some(returned)) = (c.mem(|m| m.bytes_per_job()), c.mem(|m| m.returned())) {
            let _ = writeln!(
                out,
                "- ≤ {:.0} bytes per queued {payload}-byte job: {} ({per_job:.0} bytes)",
                targets::BYTES_PER_JOB,
                mark(per_job <= targets::BYTES_PER_JOB)
            );
            let _ = writeln!(
                out,
                "- that memory returned after the drain (≥ {:.0}% of it): {} ({:.0}%)",
                targets::RETURNED * 100.0,
                mark(returned >= targets::RETURNED),
                returned * 100.0
            );
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ratio_beside_a_verdict_never_rounds_onto_the_other_side() {
        assert_eq!(goal_ratio(2.997, 3.0, true), "2.997");
        assert_eq!(goal_ratio(2.95, 3.0, true), "2.95");
        assert_eq!(goal_ratio(3.004, 3.0, true), "3.00");
        assert_eq!(goal_ratio(0.334, 1.0 / 3.0, false), "0.334");
        assert_eq!(goal_ratio(0.333, 1.0 / 3.0, false), "0.33");
        assert_eq!(goal_ratio(0.41, 1.0 / 3.0, false), "0.41");
    }

    #[test]
    fn spread_of_odd_and_even_counts() {
        assert_eq!(spread([3.0, 1.0, 2.0]), Some(Spread { median: 2.0, min: 1.0, max: 3.0 }));
        assert_eq!(spread([4.0, 1.0]), Some(Spread { median: 2.5, min: 1.0, max: 4.0 }));
        assert_eq!(spread(Vec::<f64>::new()), None);
    }
}
