//! The worker's lifecycle states.

use std::fmt;

/// Where a worker is in its life. Transitions only move forward:
///
/// ```text
/// Disabled ──init ok──▶ Initialized ──registered──▶ Running ──signal / max_jobs──▶ Draining ──▶ Stopped
///     └──init failed──▶ Failed (run() returns an error; the process should exit non-zero)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WorkerState {
    /// Built, not taking work yet: `run()` not called, or the init hook is running.
    Disabled,
    /// The init hook succeeded; connecting to the servers and registering functions.
    Initialized,
    /// Registered with at least one server and taking jobs.
    Running,
    /// A stop was requested (signal, `max_jobs`, or [`crate::WorkerStatus::drain`]): no new job
    /// is taken, jobs in hand are finishing.
    Draining,
    /// Every connection is closed; `run()` is returning.
    Stopped,
    /// The init hook failed (after its retries).
    Failed,
}

impl WorkerState {
    pub const ALL: [WorkerState; 6] = [
        WorkerState::Disabled,
        WorkerState::Initialized,
        WorkerState::Running,
        WorkerState::Draining,
        WorkerState::Stopped,
        WorkerState::Failed,
    ];

    /// The lower-case name served on `/state` and used as the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Disabled => "disabled",
            WorkerState::Initialized => "initialized",
            WorkerState::Running => "running",
            WorkerState::Draining => "draining",
            WorkerState::Stopped => "stopped",
            WorkerState::Failed => "failed",
        }
    }

    /// `/healthz`: alive unless failed.
    pub fn is_healthy(self) -> bool {
        self != WorkerState::Failed
    }

    /// `/readyz`: ready only while taking work.
    pub fn is_ready(self) -> bool {
        self == WorkerState::Running
    }
}

impl fmt::Display for WorkerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
