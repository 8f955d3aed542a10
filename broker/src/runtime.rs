//! The broker's runtime: the scheduler, its thread count and its park hooks, the same for the
//! binary and for brokers embedded in tests.

use std::io;
use std::sync::Mutex;

use crate::{Config, Running};

/// The builder of the runtime the broker runs on: the multi-threaded scheduler with
/// [`Config::runtime_threads`] workers, even for one thread (measured: its single worker serves
/// latency-bound loads with less CPU per job than the current-thread scheduler, whose thread also
/// drives `block_on`). Before a worker parks it writes the replies it held back for pipelining
/// peers ([`crate::outbox::before_park`]) and then polls briefly for new input
/// ([`crate::idle_poll`], unless `--idle-poll 0`; the process's first builder installs it).
pub fn builder(config: &Config) -> tokio::runtime::Builder {
    if !config.idle_poll.is_zero() {
        match crate::idle_poll::IdlePoll::new(config.idle_poll) {
            Ok(poll) => {
                crate::idle_poll::install(poll);
            }
            Err(e) => tracing::warn!(error = %e, "idle poll unavailable; the event loop sleeps at once"),
        }
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder
        .worker_threads(config.runtime_threads())
        .on_thread_park(before_park)
        .on_thread_unpark(crate::idle_poll::after_unpark)
        .enable_all();
    builder
}

/// Builds the runtime of [`builder`].
pub fn build(config: &Config) -> io::Result<tokio::runtime::Runtime> {
    builder(config).build()
}

fn before_park() {
    crate::outbox::before_park();
    crate::idle_poll::before_park();
}

/// Starts a broker on a runtime built by [`build`], whatever runtime the caller runs on: tests get
/// the binary's scheduling, park hooks and idle poll. One runtime per thread count, created by
/// the first call that asks for it and never shut down.
pub async fn start_detached(config: Config) -> io::Result<Running> {
    static RUNTIMES: Mutex<Vec<(usize, &'static tokio::runtime::Runtime)>> = Mutex::new(Vec::new());
    let threads = config.runtime_threads();
    let runtime = {
        let mut runtimes = RUNTIMES.lock().unwrap_or_else(|e| e.into_inner());
        match runtimes.iter().find(|(t, _)| *t == threads) {
            Some((_, rt)) => *rt,
            None => {
                // Leaked: a runtime may not be dropped from within another's context.
                let rt: &'static tokio::runtime::Runtime = Box::leak(Box::new(build(&config)?));
                runtimes.push((threads, rt));
                rt
            }
        }
    };
    runtime.spawn(crate::start(config)).await.map_err(io::Error::other)?
}
