//! The smoke mode end to end: every standard workload against an in-process gearfleet-broker
//! (and gearmand when it is installed), producing the Markdown table and the SVG chart.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;
use gearfleet_bench::cli::{self, Cli};
use gearfleet_bench::server::ServerKind;

fn gearmand_installed() -> bool {
    Path::new("/usr/sbin/gearmand").exists()
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gearfleet-bench-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The throughput cells of a table row, by column header.
fn row_cells<'a>(table: &'a str, title: &str) -> Vec<(&'a str, &'a str)> {
    let header: Vec<&str> =
        table.lines().find(|l| l.starts_with("| workload |")).expect("table header").split('|').collect();
    let row: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with(&format!("| {title} |")))
        .unwrap_or_else(|| panic!("no row for {title:?} in:\n{table}"))
        .split('|')
        .collect();
    header.into_iter().map(str::trim).zip(row.into_iter().map(str::trim)).collect()
}

fn leading_number(cell: &str) -> f64 {
    let digits: String = cell.chars().take_while(|c| c.is_ascii_digit() || *c == ',' || *c == '.').collect();
    digits.replace(',', "").parse().unwrap_or_else(|_| panic!("not a number: {cell:?}"))
}

#[test]
fn smoke_mode_measures_every_workload_and_writes_table_and_chart() {
    let dir = scratch_dir("compare");
    let out = dir.join("results.md");
    let mut args = vec!["gearfleet-bench".to_string(), "--smoke".into(), "--gearfleet-in-process".into()];
    args.extend(["--out".into(), out.display().to_string()]);
    // The floor is served by the gearfleet-bench binary (this test binary is not it).
    args.extend(["--floor-bin".into(), env!("CARGO_BIN_EXE_gearfleet-bench").into()]);
    if !gearmand_installed() {
        assert!(
            std::env::var("GEARFLEET_REQUIRE_PEERS").as_deref() != Ok("1"),
            "gearmand is required here (GEARFLEET_REQUIRE_PEERS=1): install gearman-job-server"
        );
        eprintln!("gearmand not installed: smoke test against gearfleet only");
        args.extend(["--servers".into(), "gearfleet,floor".into()]);
    }
    let cli = Cli::try_parse_from(&args).unwrap();
    let written = cli::compare(&cli.compare).expect("smoke comparison runs");

    let results = &written.results;
    assert_eq!(results.workloads.len(), 10);
    assert!(results.servers.contains(&ServerKind::Gearfleet));
    if gearmand_installed() {
        assert_eq!(results.servers, ServerKind::ALL);
    }
    for (wi, w) in results.workloads.iter().enumerate() {
        for cell in results.cells[wi].iter().filter(|c| c.server.runs(w.shape)) {
            assert!(cell.errors.is_empty(), "{} / {}: {:?}", w.key, cell.server, cell.errors);
            assert!(!cell.samples.is_empty(), "{} / {}: no sample", w.key, cell.server);
            assert!(cell.samples.iter().all(|s| s.jobs > 0 && s.rate() > 0.0), "{} / {}", w.key, cell.server);
        }
    }

    let table = std::fs::read_to_string(&written.markdown).unwrap();
    for w in &results.workloads {
        let cells = row_cells(&table, &w.title);
        for s in results.servers.iter().filter(|s| s.runs(w.shape)) {
            let header = format!("{s} jobs/s");
            let (_, value) = cells.iter().find(|(h, _)| *h == header).unwrap_or_else(|| panic!("no column {header}"));
            assert!(leading_number(value) > 0.0, "{}: {header} is {value:?}", w.key);
        }
    }
    assert!(table.contains("### Memory"), "memory table missing:\n{table}");
    if gearmand_installed() {
        assert!(table.contains("### Goals"), "goals missing:\n{table}");
        assert!(table.contains("| ratio |"));
    }

    let svg = std::fs::read_to_string(&written.svg).unwrap();
    assert!(svg.contains("<svg") && svg.contains("gearfleet"), "not a chart: {}", &svg[..svg.len().min(200)]);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_binary_runs_one_custom_workload() {
    let out = Command::new(env!("CARGO_BIN_EXE_gearfleet-bench"))
        .args(["run", "--gearfleet-in-process", "--mode", "fg", "-n", "2", "-m", "2", "-k", "5"])
        .args(["--jobs", "200", "--payload", "32", "--priority", "mixed", "--unique", "uuid"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("run 1: 200 jobs in"), "{stdout}");
    assert!(stdout.contains("jobs/s"), "{stdout}");
}

#[test]
fn the_floor_runs_foreground_and_background_workloads_and_is_reported() {
    let dir = scratch_dir("floor");
    let out = dir.join("results.md");
    let mut servers = "gearfleet,floor".to_string();
    if gearmand_installed() {
        servers.push_str(",gearmand-tuned");
    }
    let args = [
        "gearfleet-bench",
        "--smoke",
        "--gearfleet-in-process",
        "--servers",
        &servers,
        "--workloads",
        "fg-4-4-x100,bg-1,memory",
        // Enough jobs that each server's CPU time spans several clock ticks.
        "--jobs",
        "2000",
        "--out",
        &out.display().to_string(),
        // The floor is served by the gearfleet-bench binary (this test binary is not it).
        "--floor-bin",
        env!("CARGO_BIN_EXE_gearfleet-bench"),
    ];
    let cli = Cli::try_parse_from(args).unwrap();
    let written = cli::compare(&cli.compare).expect("comparison with the floor runs");
    let r = &written.results;
    let at = |key: &str| r.workloads.iter().position(|w| w.key == key).unwrap();
    let (fg, bg, memory) = (at("fg-4-4-x100"), at("bg-1"), at("memory"));
    // Foreground jobs go through the floor's router: every submitted job completes.
    for w in [fg, bg] {
        let floor = r.cell(w, ServerKind::Floor).unwrap();
        assert!(floor.errors.is_empty(), "{:?}", floor.errors);
        assert!(!floor.samples.is_empty());
        // Its CPU time is read from /proc (a separate process), in clock ticks: present, maybe 0
        // in so short a run.
        assert!(floor.samples.iter().all(|s| s.jobs == 2000 && s.server_us_per_job().is_some()));
    }
    let floor_memory = r.cell(memory, ServerKind::Floor).unwrap();
    assert!(floor_memory.samples.is_empty() && floor_memory.errors.is_empty(), "the floor keeps no queue to measure");
    let table = std::fs::read_to_string(&written.markdown).unwrap();
    let memory_cells = row_cells(&table, &r.workloads[memory].title);
    assert!(memory_cells.iter().any(|(h, v)| *h == "floor jobs/s" && *v == "–"), "{table}");
    // The floor lines need its CPU figure; /proc counts 10 ms ticks, so a run too short to
    // register one has none.
    let has_cpu = |w: usize| r.cell(w, ServerKind::Floor).and_then(|c| c.server_us()).is_some_and(|us| us > 0.0);
    if has_cpu(bg) {
        assert!(table.contains("bg 1: the floor (a server that keeps nothing) spends"), "{table}");
        if r.cell(bg, ServerKind::Gearfleet).and_then(|c| c.server_us()).is_some() {
            assert!(table.contains("× the floor's)"), "gearfleet's cost against the floor's: {table}");
        }
    }
    if has_cpu(fg) {
        assert!(table.contains("fg 4/4 ×100: the floor (a bare FIFO router) spends"), "{table}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
