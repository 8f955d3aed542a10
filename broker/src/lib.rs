//! gearfleet-broker: a Gearman-protocol job server.
//!
//! * [`queue`]: the job state and every protocol transition (no I/O).
//! * [`broker`]: the shared state, timers, scheduler and watch publisher.
//! * [`connection`]: a connection's protocol session; TLS connections' reader and writer tasks.
//! * [`event_loop`]: the threads that serve plain TCP connections (one `epoll` each).
//! * [`server`]: listeners for the Gearman port and HTTP (metrics, health).
//! * [`admin`]: the text admin protocol.
//! * [`runtime`]: the tokio runtime the broker runs on (timers, journal, HTTP, TLS connections).

pub mod admin;
pub mod broker;
pub mod config;
pub mod connection;
pub mod event_loop;
pub mod id_table;
pub mod idle_poll;
pub mod metrics;
pub mod outbox;
pub mod outcomes;
pub mod queue;
pub mod runtime;
pub mod schedule;
pub mod server;
pub mod store;
pub mod unique_index;

pub use config::Config;
pub use server::{Running, start};
