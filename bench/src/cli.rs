//! Command line: the comparison (default), or one custom workload (`run`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

use crate::load::{PriorityMix, UniqueMode};
use crate::server::{Server, ServerKind, ServerOptions};
use crate::shape::Shape;
use crate::suite::{self, SuiteOptions, thousands};
use crate::workload::{self, Amount, Workload};
use crate::{chart, report};

#[derive(Debug, Parser)]
#[command(
    name = "gearfleet-bench",
    version,
    about = "Benchmarks gearfleet-broker against gearmand, side by side, on loopback",
    long_about = "Without a subcommand: starts each server in turn on a loopback port (gearmand, gearmand \
                  tuned for deep queues, gearfleet-broker), runs the standard workloads against each, \
                  repeats them, and writes a Markdown table and an SVG chart.\n\n\
                  `run`: one custom workload against one server.",
    args_conflicts_with_subcommands = true,
    args_override_self = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub compare: CompareArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// One workload with custom sizes against one server (started here, or already running).
    Run(RunArgs),
    /// Several brokers: `fg 4/4` against 1..=--max servers of each kind at once, aggregate jobs/s.
    Brokers(BrokersArgs),
    /// Serves the floor server (started by the comparison for `--servers floor`).
    #[command(hide = true)]
    FloorServer {
        #[arg(long)]
        listen: SocketAddr,
        /// Route foreground jobs (the foreground floor) instead of answering with made-up jobs.
        #[arg(long)]
        route: bool,
        /// With --route: poll this long before sleeping (an experiment; the standard floor
        /// sleeps at once). Read from the environment, so that `run --server floor` passes it on.
        #[arg(long, env = "GEARFLEET_FLOOR_IDLE_POLL", value_parser = humantime::parse_duration, default_value = "0s")]
        idle_poll: std::time::Duration,
    },
}

/// How to find and start the servers.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// gearmand binary (Debian package gearman-job-server).
    #[arg(long, env = "GEARMAND", default_value = "/usr/sbin/gearmand")]
    pub gearmand: PathBuf,
    /// gearmand `--threads`.
    #[arg(long, default_value_t = 4)]
    pub gearmand_threads: u32,
    /// `--hashtable-buckets` of the tuned gearmand (default 991 is sized for shallow queues).
    #[arg(long, default_value_t = 200_003)]
    pub hashtable_buckets: u32,
    /// gearfleet-broker binary [default: $CARGO_TARGET_DIR/release/gearfleet-broker, with
    /// CARGO_TARGET_DIR defaulting to $HOME/.cache/gearfleet/target].
    #[arg(long, env = "GEARFLEET_BROKER_BIN")]
    pub broker_bin: Option<PathBuf>,
    /// Run gearfleet-broker inside this process instead of its binary (smoke tests only: its RSS
    /// is then this process's).
    #[arg(long)]
    pub gearfleet_in_process: bool,
    /// gearfleet-broker `--threads` (0: its default, one fewer than the cores, at least one).
    #[arg(long, default_value_t = 0)]
    pub gearfleet_threads: usize,
    /// The gearfleet-bench binary serving `--servers floor` [default: this program].
    #[arg(long, hide = true)]
    pub floor_bin: Option<PathBuf>,
}

impl ServerArgs {
    pub fn options(&self) -> ServerOptions {
        ServerOptions {
            gearmand_bin: self.gearmand.clone(),
            gearmand_threads: self.gearmand_threads,
            hashtable_buckets: self.hashtable_buckets,
            broker_bin: self.broker_bin.clone().unwrap_or_else(ServerOptions::default_broker_bin),
            gearfleet_in_process: self.gearfleet_in_process,
            gearfleet_threads: self.gearfleet_threads,
            floor_bin: self.floor_bin.clone(),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Tiny job counts, one run each: checks the tool end to end in seconds. Servers that are
    /// not installed are skipped, and gearfleet runs in process if its binary is missing.
    #[arg(long)]
    pub smoke: bool,
    /// Runs per workload and server [default: 3, smoke: 1].
    #[arg(long, short = 'r')]
    pub repeat: Option<usize>,
    /// Length of each throughput run (fg and bg submit workloads).
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// A job count per throughput run instead of a duration [smoke: 300].
    #[arg(long)]
    pub jobs: Option<u64>,
    /// Background jobs queued by the drain and memory workloads [default: 200000, smoke: 2000].
    #[arg(long)]
    pub queue_jobs: Option<u64>,
    /// Payload bytes of the throughput and drain jobs.
    #[arg(long, default_value_t = 8)]
    pub payload: usize,
    /// Payload bytes of the memory workload's jobs.
    #[arg(long, default_value_t = 64)]
    pub memory_payload: usize,
    #[arg(long, value_enum, default_value = "normal")]
    pub priority: PriorityMix,
    #[arg(long, value_enum, default_value = "empty")]
    pub unique: UniqueMode,
    /// Servers to compare, comma-separated [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub servers: Vec<ServerKind>,
    /// Only these workloads (keys: fg-1-1, fg-4-4, fg-16-4, fg-4-4-x100, fg-1-300, bg-1, bg-4, bg-4-x100, drain, memory).
    #[arg(long, value_delimiter = ',')]
    pub workloads: Vec<String>,
    /// Threads of the load generator's runtime.
    #[arg(long, default_value_t = 2)]
    pub gen_threads: usize,
    /// Markdown output [default: docs/benchmarks/results.md; smoke: a temporary directory].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// SVG chart output [default: the Markdown path with .svg].
    #[arg(long)]
    pub svg: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub server_args: ServerArgs,
    /// Server to start for the run.
    #[arg(long, value_enum, default_value = "gearfleet")]
    pub server: ServerKind,
    /// Use a server already listening here instead of starting one (loopback only unless
    /// --allow-non-loopback).
    #[arg(long)]
    pub addr: Option<SocketAddr>,
    /// With --addr: the server's process id, to measure its CPU time and RSS.
    #[arg(long, requires = "addr")]
    pub pid: Option<u32>,
    #[arg(long)]
    pub allow_non_loopback: bool,
    #[arg(long, value_enum, default_value = "fg")]
    pub mode: Shape,
    /// Client connections (N).
    #[arg(long, short = 'n', default_value_t = 1)]
    pub clients: usize,
    /// Worker connections (M).
    #[arg(long, short = 'm', default_value_t = 1)]
    pub workers: usize,
    /// Jobs in flight per client (K).
    #[arg(long, short = 'k', default_value_t = 1)]
    pub in_flight: usize,
    #[arg(long, default_value_t = 8)]
    pub payload: usize,
    #[arg(long, value_enum, default_value = "normal")]
    pub priority: PriorityMix,
    #[arg(long, value_enum, default_value = "empty")]
    pub unique: UniqueMode,
    /// A fixed job count (required for drain and memory).
    #[arg(long, conflicts_with = "duration")]
    pub jobs: Option<u64>,
    /// Run for this long [default: 3s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    #[arg(long, short = 'r', default_value_t = 1)]
    pub repeat: usize,
    #[arg(long, default_value_t = 2)]
    pub gen_threads: usize,
}

#[derive(Debug, Clone, Args)]
pub struct BrokersArgs {
    #[command(flatten)]
    pub server_args: ServerArgs,
    /// Servers, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "gearmand,gearfleet")]
    pub servers: Vec<ServerKind>,
    /// Up to this many servers of each kind at once.
    #[arg(long, default_value_t = 3)]
    pub max: usize,
    #[arg(long, short = 'r', default_value_t = 3)]
    pub repeat: usize,
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    #[arg(long, default_value_t = 2)]
    pub gen_threads: usize,
    /// Markdown output.
    #[arg(long, default_value = "docs/benchmarks/brokers.md")]
    pub out: PathBuf,
}

/// The several-brokers sweep: prints and writes its table.
pub fn several_brokers(a: &BrokersArgs) -> Result<()> {
    let opts = a.server_args.options();
    for &kind in &a.servers {
        if !opts.available(kind) {
            bail!("{kind} is not available here (see --gearmand, --broker-bin)");
        }
    }
    let rows =
        crate::brokers::sweep(&a.servers, a.max, a.repeat, a.duration, &opts, a.gen_threads, |l| eprintln!("{l}"))?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let md = crate::brokers::markdown(&rows, cores);
    println!("{md}");
    write_file(&a.out, &md)?;
    eprintln!("wrote {}", a.out.display());
    Ok(())
}

pub fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Run(args)) => run_one(&args),
        Some(Command::Brokers(args)) => several_brokers(&args),
        Some(Command::FloorServer { listen, route: false, .. }) => Ok(crate::floor::serve(listen)?),
        Some(Command::FloorServer { listen, route: true, idle_poll }) => {
            Ok(crate::router_floor::serve(std::net::TcpListener::bind(listen)?, idle_poll)?)
        }
        None => compare(&cli.compare).map(|_| ()),
    }
}

/// Where the comparison wrote its outputs.
#[derive(Debug, Clone)]
pub struct Written {
    pub markdown: PathBuf,
    pub svg: PathBuf,
    pub results: suite::Results,
}

/// The comparison: runs the suite, prints and writes the table and the chart.
pub fn compare(args: &CompareArgs) -> Result<Written> {
    let mut opts = args.server.options();
    let mut suite_opts = if args.smoke { SuiteOptions::smoke() } else { SuiteOptions::full() };
    suite_opts.duration = args.duration;
    if args.jobs.is_some() {
        suite_opts.jobs = args.jobs;
    }
    if let Some(q) = args.queue_jobs {
        suite_opts.queue_jobs = q;
    }
    suite_opts.payload = args.payload;
    suite_opts.memory_payload = args.memory_payload;
    suite_opts.priority = args.priority;
    suite_opts.unique = args.unique;

    let requested: Vec<ServerKind> =
        if args.servers.is_empty() { ServerKind::ALL.to_vec() } else { args.servers.clone() };
    let mut servers = Vec::new();
    for kind in requested {
        if opts.available(kind) {
            servers.push(kind);
        } else if args.smoke && kind == ServerKind::Gearfleet {
            eprintln!("note: {} not found; smoke run uses gearfleet-broker in process", opts.broker_bin.display());
            opts.gearfleet_in_process = true;
            servers.push(kind);
        } else if args.smoke {
            eprintln!("note: {kind} not available ({}); skipped in smoke mode", opts.gearmand_bin.display());
        } else {
            match kind {
                ServerKind::Gearfleet => bail!(
                    "{} not found: build it with `cargo build --release -p gearfleet-broker`, or pass --broker-bin",
                    opts.broker_bin.display()
                ),
                _ => bail!(
                    "{} not found: install gearman-job-server (scripts/bench.sh does), or pass --servers gearfleet",
                    opts.gearmand_bin.display()
                ),
            }
        }
    }
    servers.sort();
    servers.dedup();

    let mut workloads = suite::standard_workloads(&suite_opts);
    if !args.workloads.is_empty() {
        for k in &args.workloads {
            if !workloads.iter().any(|w| &w.key == k) {
                bail!("unknown workload {k:?}");
            }
        }
        workloads.retain(|w| args.workloads.contains(&w.key));
    }
    let repeat = args.repeat.unwrap_or(if args.smoke { 1 } else { 3 }).max(1);
    let out = match &args.out {
        Some(p) => p.clone(),
        None if args.smoke => std::env::temp_dir().join("gearfleet-bench-smoke/results.md"),
        None => PathBuf::from("docs/benchmarks/results.md"),
    };
    let svg = args.svg.clone().unwrap_or_else(|| out.with_extension("svg"));

    eprintln!(
        "comparing {} on {} workloads, {repeat} run(s) each",
        servers.iter().map(|s| s.label()).collect::<Vec<_>>().join(", "),
        workloads.len()
    );
    let results = suite::compare(workloads, &servers, &opts, repeat, args.gen_threads, |line| eprintln!("{line}"))?;
    let md = report::markdown(&results);
    println!("{md}");
    write_file(&out, &md)?;
    if let Some(dir) = svg.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    chart::write_svg(&results, &svg)?;
    eprintln!("wrote {} and {}", out.display(), svg.display());
    Ok(Written { markdown: out, svg, results })
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// One custom workload.
pub fn run_one(a: &RunArgs) -> Result<()> {
    let amount = match (a.jobs, a.duration) {
        (Some(n), _) => Amount::Jobs(n),
        (None, Some(d)) => Amount::Duration(d),
        (None, None) => Amount::Duration(Duration::from_secs(3)),
    };
    let w = Workload {
        key: "custom".into(),
        title: format!(
            "{:?}, {} clients / {} workers, {} in flight, {} B",
            a.mode, a.clients, a.workers, a.in_flight, a.payload
        ),
        label: "custom".into(),
        shape: a.mode,
        clients: a.clients,
        workers: a.workers,
        in_flight: a.in_flight,
        payload: a.payload,
        priority: a.priority,
        unique: a.unique,
        amount,
        settle: Duration::from_secs(3),
    };
    if matches!(a.mode, Shape::Fg | Shape::Drain | Shape::Memory) && a.workers == 0 {
        bail!("{:?} needs at least one worker", a.mode);
    }
    if let Some(addr) = a.addr
        && !addr.ip().is_loopback()
        && !a.allow_non_loopback
    {
        bail!("{addr} is not a loopback address; pass --allow-non-loopback to load a server elsewhere");
    }
    let rt = crate::load::generator_runtime(a.gen_threads)?;
    let opts = a.server_args.options();
    println!("{}", w.title);
    for i in 0..a.repeat.max(1) {
        let server = match a.addr {
            Some(addr) => Server::attach(a.server, addr, a.pid),
            None => Server::start(a.server, &opts, a.mode)?,
        };
        let s = rt.block_on(workload::run(&w, &server))?;
        server.stop();
        let cpu = s.server_us_per_job().map_or("–".into(), |v| format!("{v:.1}"));
        print!(
            "run {}: {} jobs in {:.2} s = {} jobs/s; server CPU {cpu} µs/job; generator CPU {:.1} µs/job",
            i + 1,
            thousands(s.jobs as f64),
            s.elapsed.as_secs_f64(),
            thousands(s.rate()),
            s.gen_us_per_job()
        );
        if let Some(m) = s.mem {
            print!(
                "; RSS idle {} KiB, queued {} KiB ({:.0} B/job), drained {} KiB",
                m.idle / 1024,
                m.queued / 1024,
                m.bytes_per_job(),
                m.drained / 1024
            );
        }
        println!();
    }
    Ok(())
}
