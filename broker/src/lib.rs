//! gearfleet-broker: a Gearman-protocol job server.
//!
//! * [`state`]: the job state and every protocol transition (no I/O, no clock).
//! * [`broker`]: the shared state, timers, scheduler and watch publisher.
//! * [`connection`]: a connection's protocol session; TLS connections' reader and writer tasks.
//! * [`event_loop`]: the threads that serve plain TCP connections (one `epoll` each).
//! * [`server`]: listeners for the Gearman port and HTTP (metrics, health); [`keepalive`]: the
//!   TCP keepalive and user timeout set on every accepted connection.
//! * [`admin`]: the text admin protocol.
//! * [`store`]: the journal that keeps background jobs across restarts.
//! * [`runtime`]: the tokio runtime the broker runs on (timers, journal, HTTP, TLS connections).
//!
//! # A job's life, file by file
//! 1. **Bytes in**: `event_loop.rs` (or a TLS task) reads, `connection.rs` decodes a batch of
//!    packets under one lock, reads the clock ([`clock`]) and calls `State::handle`
//!    (`state/mod.rs`), whose dispatch table names the method for every packet type.
//! 2. **Submit**: `state/submit.rs` creates the job, or attaches the client to the job holding
//!    its unique key; a retaining client may be answered from a kept outcome (`state/finish.rs`,
//!    `outcomes.rs`). A scheduled job waits in `State::scheduled` until `broker.rs`'s scheduler
//!    calls `release_due`.
//! 3. **Queue and wake**: `state/submit.rs`'s `enqueue` puts it in its function's queue
//!    (`state/function.rs`) and sends NOOP to the function's sleeping workers.
//! 4. **Grab**: `state/workers.rs` hands the oldest job of the highest priority to a worker and
//!    asks (through `Effects`) for its CAN_DO_TIMEOUT timer, which `broker.rs` runs.
//! 5. **Updates**: WORK_STATUS/DATA/WARNING go to the attached clients (`state/finish.rs`).
//! 6. **Finish**: WORK_COMPLETE/FAIL/EXCEPTION end the try (`state/finish.rs`); a timeout ends
//!    it for its clients, but the worker holds the job until it answers, leaves or the grace ends
//!    (`state/timeout.rs`, its timers in `broker.rs`); a failed background job is retried after
//!    its backoff or dead-lettered (`state/retry.rs`); a worker that disconnects hands its jobs
//!    back (`state/connections.rs`, `state/retry.rs`).
//! 7. **Journal**: background jobs are appended to the journal at each step
//!    (`state/durability.rs`, `store/`), and replies wait for it in fsync mode
//!    (`connection.rs`, `outbox.rs`).

pub mod admin;
pub mod broker;
pub mod clock;
pub mod config;
pub mod connection;
pub mod event_loop;
pub mod id_table;
pub mod idle_poll;
pub mod keepalive;
pub mod metrics;
pub mod outbox;
pub mod outcomes;
pub mod runtime;
pub mod schedule;
pub mod server;
pub mod state;
pub mod store;
pub mod unique_index;

pub use config::Config;
pub use server::{Running, start};
