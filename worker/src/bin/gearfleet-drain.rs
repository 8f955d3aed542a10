//! `gearfleet-drain`: the pre-stop drain hook the operator runs beside every worker pod's
//! containers (a native sidecar). `GET /drain` drains the pod's Gearman connections on every
//! broker and returns once none of them holds a job, or at the drain timeout; the worker
//! containers' `preStop` hooks call it, so the kubelet stops a worker only once it is idle,
//! whatever language it is written in. See `gearfleet_worker::drain_hook`.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use gearfleet_proto::logging::{self, LogFormat, Writer};
use gearfleet_worker::config::{ENV_SERVERS, parse_duration, parse_servers};
use gearfleet_worker::drain_hook::{DrainHookConfig, serve};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "gearfleet-drain", version, about = "Pre-stop drain hook for Gearman worker pods")]
struct Args {
    /// Address the hook listens on (the kubelet calls GET /drain on the pod's IP).
    #[arg(long, env = "GEARFLEET_DRAIN_LISTEN", default_value = "0.0.0.0:9741")]
    listen: SocketAddr,
    /// The brokers, `host:port` comma-separated (the pod's GEARMAN_SERVERS).
    #[arg(long, env = ENV_SERVERS, default_value = "")]
    servers: String,
    /// The longest a drain waits for busy workers (e.g. 300s, 5m).
    #[arg(long, env = "GEARFLEET_DRAIN_TIMEOUT", default_value = "300s")]
    timeout: String,
    /// Log format: text or json.
    #[arg(long, env = "GEARFLEET_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    logging::init(args.log_format, "RUST_LOG", "info", Writer::Stderr);
    let config = match (parse_servers(&args.servers), parse_duration("--timeout", &args.timeout)) {
        (Ok(servers), Ok(timeout)) => DrainHookConfig::new(servers, timeout),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("gearfleet-drain: {e}");
            return ExitCode::from(2);
        }
    };
    let listener = match TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("gearfleet-drain: cannot listen on {}: {e}", args.listen);
            return ExitCode::from(1);
        }
    };
    let servers: Vec<String> = config.servers.iter().map(ToString::to_string).collect();
    tracing::info!(listen = %args.listen, servers = %servers.join(","), timeout = ?config.timeout, "drain hook ready");
    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        on_signal.cancel();
    });
    match serve(listener, config, stop).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gearfleet-drain: {e}");
            ExitCode::from(1)
        }
    }
}

/// SIGTERM (the kubelet stops the sidecar after the workers) or Ctrl-C.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
