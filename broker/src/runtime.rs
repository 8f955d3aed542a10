//! The broker's tokio runtime (timers, the journal, HTTP, TLS connections), the same for the
//! binary and for brokers embedded in tests. Plain TCP connections are served by the event-loop
//! threads instead ([`crate::event_loop`]).

use std::io;
use std::sync::Mutex;

use crate::{Config, Running};

/// The builder of the runtime the broker runs on: the multi-threaded scheduler with
/// [`Config::runtime_threads`] workers.
pub fn builder(config: &Config) -> tokio::runtime::Builder {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(config.runtime_threads()).enable_all();
    builder
}

/// Builds the runtime of [`builder`].
pub fn build(config: &Config) -> io::Result<tokio::runtime::Runtime> {
    builder(config).build()
}

/// Starts a broker on a runtime built by [`build`], whatever runtime the caller runs on: tests get
/// the binary's scheduling. One runtime per thread count, created by the first call that asks for
/// it and never shut down.
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
