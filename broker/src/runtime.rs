//! The broker's tokio runtime (timers, the journal, HTTP, TLS connections), the same for the
//! binary and for brokers embedded in tests. Plain TCP connections are served by the event-loop
//! threads instead ([`crate::event_loop`]).

use std::io;
use std::sync::OnceLock;

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
/// the binary's scheduling. The runtime is the first caller's, shared by every later broker and
/// never shut down; each broker has its own event-loop threads (`config.threads` of them).
pub async fn start_detached(config: Config) -> io::Result<Running> {
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| build(&config).map_err(|e| e.to_string()));
    let runtime = runtime.as_ref().map_err(|e| io::Error::other(e.clone()))?;
    runtime.spawn(crate::start(config)).await.map_err(io::Error::other)?
}
