use clap::Parser;
use gearfleet_broker::Config;
use gearfleet_proto::logging::{self, LogFormat, Writer};

fn main() -> anyhow::Result<()> {
    tune_malloc();
    let config = Config::parse();
    let format: LogFormat = config.log_format.parse()?;
    logging::init(format, "GEARFLEET_LOG", "info", Writer::Stdout);
    gearfleet_broker::runtime::build(&config)?.block_on(run(config))
}

async fn run(config: Config) -> anyhow::Result<()> {
    let running = gearfleet_broker::start(config).await?;
    let shutdown = running.broker.shutdown.clone();
    let (min_wait, grace) = (running.broker.config.shutdown_min_wait, running.broker.config.shutdown_grace);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {
            tracing::info!("SIGTERM: shutting down");
            running.shut_down(min_wait, grace).await;
        }
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("interrupt: shutting down");
            running.shut_down(min_wait, grace).await;
        }
        _ = shutdown.cancelled() => running.stop().await,
    }
    Ok(())
}

/// Memory a drained backlog used goes back to the system: large blocks (the job table of a deep
/// backlog) always get their own mapping, and one malloc arena serves every thread (the job state
/// is behind one lock anyway, and per-thread caches serve the small allocations). Measured: with
/// glibc's defaults a quarter of a 100,000-job backlog's memory stayed in a thread's arena after
/// the drain, whatever `malloc_trim` did; with these settings all of it is returned.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
