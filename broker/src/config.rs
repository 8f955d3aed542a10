//! Command-line flags, each also settable from the environment.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

/// An address that may be left empty (`Option<SocketAddr>`). Written through an alias so that
/// clap hands the whole `Option` to [`parse_optional_addr`] instead of treating the flag as
/// optional: an empty value must parse to `None`, not be refused as an address.
pub type OptionalAddr = Option<SocketAddr>;

#[derive(Debug, Clone, Parser)]
#[command(name = "gearfleet-broker", version, about = "A Gearman-protocol job server")]
pub struct Config {
    /// Address for the Gearman protocol (binary and text admin).
    #[arg(long, env = "GEARFLEET_LISTEN", default_value = "0.0.0.0:4730")]
    pub listen: SocketAddr,

    /// Address for HTTP: /metrics, /healthz, /readyz. Empty to disable.
    #[arg(long, env = "GEARFLEET_HTTP_LISTEN", default_value = "0.0.0.0:9730", value_parser = parse_optional_addr)]
    pub http_listen: OptionalAddr,

    /// Host name used in job handles (H:<host>:<n>). Defaults to the machine's host name.
    #[arg(long, env = "GEARFLEET_HANDLE_HOST")]
    pub handle_host: Option<String>,

    /// Most connections served at once; further ones get an ERROR packet and are closed.
    #[arg(long, env = "GEARFLEET_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Largest packet body accepted, in bytes; larger ones are refused before being read.
    #[arg(long, env = "GEARFLEET_MAX_PACKET_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_packet_bytes: usize,

    /// How long the rest of a half-received packet may take to arrive. Idle connections (no
    /// partial packet) are never timed out: Gearman peers legitimately sit idle for hours.
    #[arg(long, env = "GEARFLEET_PARTIAL_PACKET_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub partial_packet_timeout: Duration,

    /// Bytes of unsent replies after which the broker stops reading from that connection.
    #[arg(long, env = "GEARFLEET_OUTBOX_LIMIT_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub outbox_limit_bytes: usize,

    /// Most queued jobs across all functions (0 = unlimited); submissions beyond get an ERROR.
    #[arg(long, env = "GEARFLEET_MAX_QUEUED_JOBS", default_value_t = 0)]
    pub max_queued_jobs: u64,

    /// Default per-function, per-priority queue limit (0 = unlimited); `maxqueue` overrides it.
    #[arg(long, env = "GEARFLEET_DEFAULT_MAX_QUEUE", default_value_t = 0)]
    pub default_max_queue: u32,

    /// Directory for the journal of background jobs. Without it, jobs live in memory only.
    #[arg(long, env = "GEARFLEET_DATA_DIR")]
    pub data_dir: Option<std::path::PathBuf>,

    /// With --data-dir: `fsync` (JOB_CREATED only after the job is on disk, commits batched across
    /// submitters), `async` (flushed every --async-flush-interval), or `memory` (no journal).
    #[arg(long, env = "GEARFLEET_DURABILITY", default_value = "fsync", value_parser = ["fsync", "async", "memory"])]
    pub durability: String,

    /// How often `async` durability flushes the journal.
    #[arg(long, env = "GEARFLEET_ASYNC_FLUSH_INTERVAL", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub async_flush_interval: Duration,

    /// Journal segment size after which a snapshot replaces older segments.
    #[arg(long, env = "GEARFLEET_COMPACT_AFTER_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub compact_after_bytes: u64,

    /// Retries for a failed background job (WORK_FAIL, WORK_EXCEPTION, timeout) before it is
    /// dead-lettered; `fleet retries` sets it per function.
    #[arg(long, env = "GEARFLEET_DEFAULT_RETRIES", default_value_t = 0)]
    pub default_retries: u32,

    /// First retry delay; it doubles per try up to --retry-backoff-max.
    #[arg(long, env = "GEARFLEET_RETRY_BACKOFF_INITIAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub retry_backoff_initial: Duration,

    #[arg(long, env = "GEARFLEET_RETRY_BACKOFF_MAX", default_value = "5m", value_parser = humantime::parse_duration)]
    pub retry_backoff_max: Duration,

    /// How long a worker whose job ran past its CAN_DO_TIMEOUT keeps holding it after its clients
    /// were told (it counts as busy, and the job is not run again meanwhile), unless it answers
    /// for the job or disconnects first; only then may a background job's retry run (0 = hand it
    /// back at the timeout).
    #[arg(long, env = "GEARFLEET_TIMEOUT_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout_grace: Duration,

    /// A background job handed back this many times by workers that disconnected while holding
    /// it is dead-lettered (0 = never).
    #[arg(long, env = "GEARFLEET_MAX_REQUEUES", default_value_t = 10)]
    pub max_requeues: u32,

    /// Dead-lettered jobs kept per function; the oldest beyond it are dropped (0 = no limit).
    #[arg(long, env = "GEARFLEET_DEAD_LETTER_LIMIT", default_value_t = 10_000)]
    pub dead_letter_limit: usize,

    /// Outcomes of finished foreground jobs kept for clients that ask with
    /// `OPTION_REQ gearfleet-retain-outcomes` (the operator's Job controller), so a resubmission
    /// after a lost connection gets the result instead of a second run (0 = keep none).
    #[arg(long, env = "GEARFLEET_RETAINED_OUTCOMES", default_value_t = 100_000)]
    pub retained_outcomes: usize,

    /// How long a retained outcome is kept.
    #[arg(long, env = "GEARFLEET_RETAINED_OUTCOME_TTL", default_value = "15m", value_parser = humantime::parse_duration)]
    pub retained_outcome_ttl: std::time::Duration,

    /// How long a retaining client's job is held for the resuming worker that was running it
    /// (`OPTION_REQ gearfleet-resume`, the gearfleet SDK) after that worker lost its connection
    /// or this broker restarted, for it to take the job back or deliver its outcome instead of
    /// the job running again elsewhere (0 = never hold: queue such jobs again at once).
    #[arg(long, env = "GEARFLEET_CLAIM_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub claim_grace: std::time::Duration,

    /// Also serve the Gearman protocol over TLS on this address (for clients that support it,
    /// e.g. libgearman's and python-gear's SSL options); needs --tls-cert and --tls-key.
    #[arg(long, env = "GEARFLEET_TLS_LISTEN", requires_all = ["tls_cert", "tls_key"])]
    pub tls_listen: Option<SocketAddr>,

    /// PEM certificate chain for --tls-listen.
    #[arg(long, env = "GEARFLEET_TLS_CERT")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// PEM private key for --tls-listen.
    #[arg(long, env = "GEARFLEET_TLS_KEY")]
    pub tls_key: Option<std::path::PathBuf>,

    /// Admin token: when set, admin commands that change state (cancel job, maxqueue, fleet drain,
    /// retries, dead letters, shutdown, …) need `auth TOKEN` first on the connection; read-only
    /// ones stay open. Mount it from a Kubernetes Secret.
    #[arg(long, env = "GEARFLEET_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Read the admin token from this file instead (e.g. a mounted Secret key).
    #[arg(long, env = "GEARFLEET_ADMIN_TOKEN_FILE", conflicts_with = "admin_token")]
    pub admin_token_file: Option<std::path::PathBuf>,

    /// Metrics token: when set, `/metrics` needs `Authorization: Bearer TOKEN` (the health
    /// endpoints stay open for probes).
    #[arg(long, env = "GEARFLEET_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,

    /// Read the metrics token from this file instead.
    #[arg(long, env = "GEARFLEET_METRICS_TOKEN_FILE", conflicts_with = "metrics_token")]
    pub metrics_token_file: Option<std::path::PathBuf>,

    /// On SIGTERM, how long jobs workers hold may take to finish. Meanwhile the broker refuses new
    /// submissions (ERROR SHUTTING_DOWN), hands out no job and reports not ready; queued
    /// background jobs stay in the journal. 0 stops at once. Keep it below the pod's
    /// terminationGracePeriodSeconds.
    #[arg(long, env = "GEARFLEET_SHUTDOWN_GRACE", default_value = "20s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// On SIGTERM, the least time the broker keeps listening (refusing submissions), even with no
    /// job held, so that Services stop routing new connections to it before it is gone: a client
    /// connecting meanwhile gets `ERROR SHUTTING_DOWN` at once rather than a connection to an
    /// address that no longer answers. Capped by --shutdown-grace.
    #[arg(long, env = "GEARFLEET_SHUTDOWN_MIN_WAIT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub shutdown_min_wait: Duration,

    /// Accept the unauthenticated `shutdown` admin command, as gearmand does.
    #[arg(long, env = "GEARFLEET_ALLOW_ADMIN_SHUTDOWN", default_value_t = false)]
    pub allow_admin_shutdown: bool,

    /// TCP keepalive on every accepted connection (plain and TLS): quiet time before the first
    /// probe. With --tcp-keepalive-interval and --tcp-keepalive-count it bounds how long a peer
    /// that vanished without closing goes unnoticed: idle + interval × count (90s by default),
    /// also set as TCP_USER_TIMEOUT for a peer that vanished with replies unacknowledged. Whole
    /// seconds; 0 (here or in either other flag) turns both off.
    #[arg(long, env = "GEARFLEET_TCP_KEEPALIVE_IDLE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub tcp_keepalive_idle: Duration,

    /// Time between keepalive probes (0 = no keepalive).
    #[arg(long, env = "GEARFLEET_TCP_KEEPALIVE_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub tcp_keepalive_interval: Duration,

    /// Unanswered keepalive probes after which the connection is dropped (0 = no keepalive).
    #[arg(long, env = "GEARFLEET_TCP_KEEPALIVE_COUNT", default_value_t = 6)]
    pub tcp_keepalive_count: u32,

    /// Log format: text or json.
    #[arg(long, env = "GEARFLEET_LOG_FORMAT", default_value = "text")]
    pub log_format: String,

    /// Event-loop threads serving plain TCP connections (0 = one fewer than the cores, at least
    /// one); the async runtime (timers, the journal, HTTP, TLS connections) gets as many. One
    /// thread gives the lowest latency and CPU per job (the job state is behind one lock anyway);
    /// more threads add parallel socket I/O for many busy connections. See docs/performance.md.
    #[arg(long, env = "GEARFLEET_THREADS", default_value_t = 0)]
    pub threads: usize,

    /// How long an event-loop thread polls the connections before it sleeps (0 = sleep at
    /// once). Polling spares the next packet a wake-up of the thread, the costliest step of a
    /// round trip on a virtual machine; it yields the CPU to anything else runnable meanwhile and
    /// costs nothing while the broker gets no traffic. At most 1ms (a timer falling due during a
    /// poll waits for its end). See docs/performance.md.
    #[arg(long, env = "GEARFLEET_IDLE_POLL", default_value = "50us", value_parser = parse_idle_poll)]
    pub idle_poll: Duration,
}

impl Config {
    /// The runtime's thread count: `--threads`, or one fewer than the cores (at least one), which
    /// leaves a core for the kernel's network processing and everything else on the node.
    pub fn runtime_threads(&self) -> usize {
        if self.threads > 0 { self.threads } else { Config::default_threads() }
    }

    /// What `--threads 0` comes to on this machine.
    pub fn default_threads() -> usize {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        cores.saturating_sub(1).max(1)
    }

    /// Defaults for tests and embedding: loopback, OS-assigned ports.
    pub fn for_tests() -> Config {
        let mut c = Config::parse_from(["gearfleet-broker"]);
        c.listen = "127.0.0.1:0".parse().expect("valid address");
        c.http_listen = Some("127.0.0.1:0".parse().expect("valid address"));
        c.handle_host = Some("test".into());
        c
    }
}

/// Reads a token given inline or in a file (trailing whitespace trimmed); an empty token is none.
pub fn resolve_token(inline: &Option<String>, file: &Option<std::path::PathBuf>) -> std::io::Result<Option<String>> {
    let token = match (inline, file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(path)) => Some(std::fs::read_to_string(path)?),
        (None, None) => None,
    };
    Ok(token.map(|t| t.trim().to_string()).filter(|t| !t.is_empty()))
}

/// Compares two secrets in time independent of where they differ.
pub fn token_matches(given: &str, expected: &str) -> bool {
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    let mut diff = a.len() ^ b.len();
    for (i, &x) in b.iter().enumerate() {
        diff |= usize::from(x ^ a.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

/// An address, or none for the empty string (`--http-listen ''`).
fn parse_optional_addr(s: &str) -> Result<OptionalAddr, String> {
    if s.trim().is_empty() {
        return Ok(None);
    }
    s.trim().parse::<SocketAddr>().map(Some).map_err(|e| format!("{s:?}: {e} (empty to disable)"))
}

/// `--idle-poll`: a duration of at most a millisecond.
fn parse_idle_poll(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d > Duration::from_millis(1) {
        return Err(format!("{s} is longer than the 1ms an idle poll may last"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("gearfleet-broker").chain(args.iter().copied()))
    }

    #[test]
    fn an_empty_http_listen_disables_http() {
        assert_eq!(parse(&[]).unwrap().http_listen, Some("0.0.0.0:9730".parse().unwrap()));
        assert_eq!(parse(&["--http-listen", ""]).unwrap().http_listen, None);
        assert_eq!(parse(&["--http-listen", "127.0.0.1:1"]).unwrap().http_listen, Some("127.0.0.1:1".parse().unwrap()));
        assert!(parse(&["--http-listen", "nonsense"]).is_err());
    }
}
