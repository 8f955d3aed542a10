//! The broker's runtime: the scheduler, its thread count and its park hooks, the same for the
//! binary and for brokers embedded in tests.

use std::io;
use std::sync::OnceLock;

use crate::{Config, Running};

/// Builds the runtime the broker runs on: the multi-threaded scheduler with
/// [`Config::runtime_threads`] workers, even for one thread (measured: its single worker serves
/// latency-bound loads with less CPU per job than the current-thread scheduler, whose thread also
/// drives `block_on`). Before a worker parks it writes the replies it held back for pipelining
/// peers ([`crate::outbox::before_park`]) and then polls briefly for new input
/// ([`crate::idle_poll`], unless `--idle-poll 0`).
pub fn build(config: &Config) -> io::Result<tokio::runtime::Runtime> {
    if !config.idle_poll.is_zero() {
        match crate::idle_poll::IdlePoll::new(config.idle_poll) {
            Ok(poll) => {
                crate::idle_poll::install(poll);
            }
            Err(e) => tracing::warn!(error = %e, "idle poll unavailable; the event loop sleeps at once"),
        }
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.runtime_threads())
        .on_thread_park(before_park)
        .on_thread_unpark(crate::idle_poll::after_unpark)
        .enable_all()
        .build()
}

fn before_park() {
    crate::outbox::before_park();
    crate::idle_poll::before_park();
}

/// Starts a broker on a runtime built by [`build`] (one per process, created by the first call
/// and never shut down), whatever runtime the caller runs on: tests get the binary's scheduling,
/// park hooks and idle poll.
pub async fn start_detached(config: Config) -> io::Result<Running> {
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| build(&config).map_err(|e| e.to_string()));
    let runtime = runtime.as_ref().map_err(|e| io::Error::other(e.clone()))?;
    runtime.spawn(crate::start(config)).await.map_err(io::Error::other)?
}
