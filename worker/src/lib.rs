//! gearfleet-worker: write Gearman workers and clients that behave well in Kubernetes.
//!
//! * [`Worker`]: serves functions on one or more Gearman servers, with N connection slots per
//!   server, reconnects with jittered exponential backoff, stops taking work on SIGTERM and
//!   finishes the jobs in hand (bounded by a force-stop timeout), recycles itself after
//!   `max_jobs`, and exposes `/healthz`, `/readyz`, `/state` and `/metrics`.
//! * [`Job`]: what a handler gets: the payload, the job's identity, progress reporting
//!   ([`Job::status`], [`Job::data`], [`Job::warning`]) and a cancellation token.
//! * [`Client`]: submits foreground and background jobs (priorities, unique keys, scheduled
//!   epochs), multiplexing many submissions on one connection per server.
//!
//! ```no_run
//! use gearfleet_worker::{Job, JobError, JobOutput, Worker};
//!
//! async fn reverse(job: Job) -> Result<JobOutput, JobError> {
//!     let mut bytes = job.payload().to_vec();
//!     bytes.reverse();
//!     Ok(bytes.into())
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let worker = Worker::builder().function("reverse", reverse).build()?;
//!     worker.run().await?;
//!     Ok(())
//! }
//! ```
//!
//! See `docs/worker-sdk.md` for configuration, lifecycle and drain semantics.

mod backoff;
pub mod client;
pub mod config;
mod connect;
pub mod drain_hook;
mod error;
mod function;
mod http;
mod in_hand;
mod job;
mod lifecycle;
mod metrics;
mod run;
mod shared;
mod slot;
mod worker;

pub use client::{
    Client, ClientBuilder, ClientError, JobEvent, JobHandle, JobStatus, Priority, Strategy, Submit, SubmitBackground,
};
pub use config::ServerAddr;
pub use error::WorkerError;
pub use function::{BoxError, Function, Handler};
pub use job::{CancelReason, Job, JobError, JobOutput};
pub use lifecycle::WorkerState;
pub use shared::{ExitReason, RunSummary, WorkerStatus};
pub use worker::{Worker, WorkerBuilder};

/// Re-exported so handlers can hold or combine the job's token without a direct dependency.
pub use tokio_util::sync::CancellationToken;
