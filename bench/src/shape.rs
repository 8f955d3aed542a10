//! The shapes of workloads: what the servers, the runs and the report all tell apart.

/// The shape of a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// Foreground jobs: the workers connect and go to sleep first, then the clients submit and
    /// wait for each WORK_COMPLETE. Counts completed jobs.
    Fg,
    /// Background submissions with no worker connected: counts acknowledged JOB_CREATED.
    Bg,
    /// The job count is queued as background jobs first (not timed), then the workers connect
    /// and drain the queue (timed).
    Drain,
    /// As drain, but the queueing is what is timed, and the server's RSS is read idle, with the
    /// whole queue, and after the drain.
    Memory,
}
