//! gearfleet-bench: a Gearman load generator (speaking the protocol through gearfleet-proto) and
//! a side-by-side comparison of gearfleet-broker with gearmand.
//!
//! * [`conn`]: a client-side connection with batched writes.
//! * [`load`]: client connections (K jobs in flight) and workers (GRAB_JOB_UNIQ, PRE_SLEEP, NOOP).
//! * [`shape`], [`workload`]: the workload shapes, and what one run measures (jobs/s, CPU, RSS).
//! * [`disk`]: this disk's sync latency, the floor of an fsync-acknowledged submission.
//! * [`floor`]: the cheapest possible answer to a background submission (what the kernel costs).
//! * [`router_floor`]: the least a server can do to route foreground jobs (the same for them).
//! * [`server`]: starting gearmand and gearfleet-broker on loopback ports, one at a time.
//! * [`suite`]: the standard workloads and the comparison loop; [`brokers`]: the same foreground
//!   workload against 1..N servers at once (several brokers).
//! * [`report`], [`chart`]: the Markdown table, the goals check, and the SVG chart;
//!   [`timestamp`]: their dates.

pub mod brokers;
pub mod chart;
pub mod cli;
pub mod conn;
pub mod disk;
pub mod floor;
pub mod load;
pub mod procstat;
pub mod report;
pub mod router_floor;
pub mod server;
pub mod shape;
pub mod suite;
pub mod timestamp;
pub mod workload;
