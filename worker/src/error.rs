//! Why a worker could not start or run.

use std::net::SocketAddr;

use crate::config::ConfigError;
use crate::function::BoxError;

/// Why a worker could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("no function registered")]
    NoFunctions,
    #[error("function {0:?} registered twice")]
    DuplicateFunction(String),
    #[error("concurrency must be at least 1")]
    ZeroConcurrency,
    #[error("max_jobs must be at least 1")]
    ZeroMaxJobs,
    #[error("cannot listen for http on {addr}: {source}")]
    Http {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signal(#[source] std::io::Error),
    #[error("init hook failed: {0}")]
    Init(#[source] BoxError),
}
