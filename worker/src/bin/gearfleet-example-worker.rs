//! The example worker shipped in gearfleet's container image and used by the end-to-end tests.
//!
//! `gearfleet-example-worker echo reverse sleep fail chain` serves the named functions:
//!
//! | function  | does |
//! |-----------|------|
//! | `echo`    | returns the payload |
//! | `reverse` | returns the payload reversed (by character when it is UTF-8) |
//! | `sleep`   | sleeps for the payload (`1500` = milliseconds, or `5s`, `2m`), reporting progress every 100ms; stops early when cancelled |
//! | `fail`    | `panic` panics, `exception` raises an exception, anything else fails |
//! | `chain`   | reverses the payload and passes it on to the function named by a `next=NAME;` payload prefix or by `GEARFLEET_NEXT` |
//!
//! Every execution prints one line on stdout, `exec function=F unique=U handle=H count=N`,
//! where N counts executions of the same unique key (or handle, without one) in this process:
//! tests read it to detect duplicate executions. Logs go to stderr.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use gearfleet_proto::logging::{self, LogFormat, Writer};
use gearfleet_worker::config::{parse_duration, parse_optional_addr};
use gearfleet_worker::{Function, Job, JobError, JobOutput, Worker};

#[derive(Debug, Parser)]
#[command(
    name = "gearfleet-example-worker",
    version,
    about = "Example Gearman worker: echo, reverse, sleep, fail, chain",
    after_help = "Environment: GEARMAN_SERVERS, GEARFLEET_CLIENT_ID / POD_NAME, GEARFLEET_CONCURRENCY, \
                  GEARFLEET_MAX_JOBS, GEARFLEET_DRAIN_TIMEOUT, GEARFLEET_WORKER_HTTP, GEARFLEET_NEXT, \
                  GEARFLEET_FUNCTION (functions when none are given), RUST_LOG."
)]
struct Args {
    /// Functions to serve (echo, reverse, sleep, fail, chain). Default: GEARFLEET_FUNCTIONS or
    /// GEARFLEET_FUNCTION (comma-separated).
    functions: Vec<String>,

    /// Gearman servers, comma-separated HOST or HOST:PORT (overrides GEARMAN_SERVERS).
    #[arg(long)]
    servers: Option<String>,

    /// Client id sent to the servers (overrides GEARFLEET_CLIENT_ID and POD_NAME).
    #[arg(long)]
    client_id: Option<String>,

    /// Connections (jobs at once) per server (overrides GEARFLEET_CONCURRENCY).
    #[arg(long)]
    concurrency: Option<usize>,

    /// Exit with status 0 after this many jobs (overrides GEARFLEET_MAX_JOBS).
    #[arg(long)]
    max_jobs: Option<u64>,

    /// Time jobs in hand get to finish after SIGTERM, e.g. 45s (overrides GEARFLEET_DRAIN_TIMEOUT).
    #[arg(long)]
    drain_timeout: Option<String>,

    /// Health and metrics listen address, or "off" (overrides GEARFLEET_WORKER_HTTP).
    #[arg(long)]
    http: Option<String>,

    /// Per-function timeout, FUNCTION=DURATION (e.g. sleep=10s); repeatable.
    #[arg(long = "timeout", value_name = "FUNCTION=DURATION")]
    timeouts: Vec<String>,

    /// Log format: text or json.
    #[arg(long, env = "GEARFLEET_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
}

/// Executions per unique key (or handle), printed for the tests.
#[derive(Default)]
struct Executions(Mutex<HashMap<String, u64>>);

impl Executions {
    fn record(&self, job: &Job) {
        let key = if job.unique().is_empty() { job.handle().to_string() } else { job.unique_str().into_owned() };
        let count = {
            let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
            let n = map.entry(key).or_insert(0);
            *n += 1;
            *n
        };
        let unique = if job.unique().is_empty() { "-".into() } else { job.unique_str() };
        println!("exec function={} unique={} handle={} count={}", job.function(), unique, job.handle(), count);
    }
}

async fn echo(job: Job) -> Result<JobOutput, JobError> {
    Ok(job.payload().clone().into())
}

fn reversed(data: &[u8]) -> Vec<u8> {
    match std::str::from_utf8(data) {
        Ok(s) => s.chars().rev().collect::<String>().into_bytes(),
        Err(_) => data.iter().rev().copied().collect(),
    }
}

async fn reverse(job: Job) -> Result<JobOutput, JobError> {
    Ok(reversed(job.payload()).into())
}

fn sleep_duration(payload: &[u8]) -> Result<Duration, JobError> {
    let text = std::str::from_utf8(payload).map_err(|_| JobError::exception("payload is not text"))?.trim();
    if text.is_empty() {
        return Ok(Duration::ZERO);
    }
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(Duration::from_millis(ms));
    }
    humantime::parse_duration(text).map_err(|e| JobError::exception(format!("bad duration {text:?}: {e}")))
}

async fn sleep(job: Job) -> Result<JobOutput, JobError> {
    let total = sleep_duration(job.payload())?;
    let start = Instant::now();
    let total_ms = total.as_millis() as u64;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        let elapsed = start.elapsed();
        if elapsed >= total {
            break;
        }
        tokio::select! {
            _ = job.cancelled() => {
                tracing::info!(reason = ?job.cancel_reason(), "sleep cancelled");
                return Err(JobError::Fail);
            }
            _ = tokio::time::sleep(total - elapsed) => break,
            _ = tick.tick() => job.status(elapsed.as_millis() as u64, total_ms).await,
        }
    }
    job.status(total_ms, total_ms).await;
    Ok(format!("slept {total_ms}ms").into())
}

async fn fail(job: Job) -> Result<JobOutput, JobError> {
    match job.payload().as_ref() {
        b"panic" => panic!("requested panic"),
        b"exception" => Err(JobError::exception("requested exception")),
        _ => Err(JobError::Fail),
    }
}

/// `next=NAME;DATA` names the next function in the payload; otherwise `GEARFLEET_NEXT` does.
fn chain_target(payload: &[u8]) -> (Option<String>, &[u8]) {
    if let Some(rest) = payload.strip_prefix(b"next=")
        && let Some(pos) = rest.iter().position(|&b| b == b';')
    {
        let name = String::from_utf8_lossy(&rest[..pos]).trim().to_string();
        return (Some(name).filter(|n| !n.is_empty()), &rest[pos + 1..]);
    }
    let from_env = std::env::var("GEARFLEET_NEXT").ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    (from_env, payload)
}

async fn chain(job: Job) -> Result<JobOutput, JobError> {
    let (next, data) = chain_target(job.payload());
    let out = JobOutput::new(reversed(data));
    Ok(match next {
        Some(next) => out.with_next(next),
        None => out,
    })
}

fn function(name: &str, executions: &Arc<Executions>) -> Result<Function, String> {
    macro_rules! counted {
        ($handler:expr) => {{
            let executions = executions.clone();
            Function::new(name, move |job: Job| {
                executions.record(&job);
                $handler(job)
            })
        }};
    }
    Ok(match name {
        "echo" => counted!(echo),
        "reverse" => counted!(reverse),
        "sleep" => counted!(sleep),
        "fail" => counted!(fail),
        "chain" => counted!(chain),
        other => return Err(format!("unknown function {other:?} (known: echo, reverse, sleep, fail, chain)")),
    })
}

fn configure(args: Args) -> Result<Worker, String> {
    let mut names = args.functions;
    if names.is_empty() {
        let env =
            std::env::var("GEARFLEET_FUNCTIONS").or_else(|_| std::env::var("GEARFLEET_FUNCTION")).unwrap_or_default();
        names = env.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    }
    if names.is_empty() {
        return Err("no function given: name some of echo, reverse, sleep, fail, chain".into());
    }
    let mut timeouts = HashMap::new();
    for t in &args.timeouts {
        let (f, d) = t.split_once('=').ok_or_else(|| format!("--timeout {t:?}: expected FUNCTION=DURATION"))?;
        timeouts.insert(f.to_string(), parse_duration("timeout", d).map_err(|e| e.to_string())?);
    }
    let executions = Arc::new(Executions::default());
    let mut builder = Worker::builder();
    for name in &names {
        let mut f = function(name, &executions)?;
        if let Some(t) = timeouts.get(name) {
            f = f.timeout(*t);
        }
        builder = builder.register(f);
    }
    if let Some(s) = args.servers {
        builder = builder.server_list(&s);
    }
    if let Some(id) = args.client_id {
        builder = builder.client_id(id);
    }
    if let Some(n) = args.concurrency {
        builder = builder.concurrency(n);
    }
    if let Some(n) = args.max_jobs {
        builder = builder.max_jobs(n);
    }
    if let Some(d) = args.drain_timeout {
        builder = builder.drain_timeout(parse_duration("--drain-timeout", &d).map_err(|e| e.to_string())?);
    }
    if let Some(h) = args.http {
        let addr: Option<SocketAddr> = parse_optional_addr("--http", &h).map_err(|e| e.to_string())?;
        builder = builder.http_addr(addr);
    }
    builder.build().map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    logging::init(args.log_format, "RUST_LOG", "info", Writer::Stderr);
    let worker = match configure(args) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("gearfleet-example-worker: {e}");
            return ExitCode::from(2);
        }
    };
    match worker.run().await {
        Ok(summary) => {
            tracing::info!(reason = ?summary.reason, jobs = summary.jobs_done, forced = summary.forced, "exiting");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "worker failed");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_target_from_prefix() {
        assert_eq!(chain_target(b"next=reverse;hello"), (Some("reverse".into()), &b"hello"[..]));
        assert_eq!(chain_target(b"next=;hello").1, b"hello");
    }

    #[test]
    fn sleep_payloads() {
        assert_eq!(sleep_duration(b"1500").unwrap(), Duration::from_millis(1500));
        assert_eq!(sleep_duration(b"5s").unwrap(), Duration::from_secs(5));
        assert_eq!(sleep_duration(b"").unwrap(), Duration::ZERO);
        assert!(sleep_duration(b"soon").is_err());
    }

    #[test]
    fn reverse_by_character() {
        assert_eq!(reversed("héllo".as_bytes()), "olléh".as_bytes());
        assert_eq!(reversed(&[0xff, 0x00, 0x01]), vec![0x01, 0x00, 0xff]);
    }
}
