//! The job model: ids, jobs and the states they move through, how a try ended, the retry policy
//! and limits the state enforces, what a transition asks its caller to do, and the time a
//! transition happens at. Plain data: no I/O, no clock, nothing of the rest of the crate.

use std::time::{Duration, Instant};

use bytes::Bytes;
use gearfleet_proto::Priority;
use thin_vec::ThinVec;

/// A connection, numbered by the broker as it accepts it.
pub type ConnId = u64;
/// A job, numbered by the broker in submission order (its handle is `H:<host>:<id>`).
pub type JobId = u64;
/// A function's slot in the state's function table.
pub(super) type FnId = u32;

/// The moment a transition happens, read from the clocks by the caller (the state never reads
/// them itself, so its time-dependent rules can be tested by stepping this).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Wall-clock time, unix milliseconds: scheduled times and retry backoffs, which are
    /// journaled and compared with the times peers send (`SUBMIT_JOB_EPOCH`).
    pub unix_ms: u64,
    /// Monotonic time: how long jobs waited and ran (metrics), how long outcomes are retained.
    pub instant: Instant,
}

impl Now {
    /// The same clocks `d` later.
    pub fn after(self, d: Duration) -> Now {
        Now { unix_ms: self.unix_ms + d.as_millis() as u64, instant: self.instant + d }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum JobState {
    /// Waiting in its function's queue.
    Queued,
    /// Waiting for its scheduled time (SUBMIT_JOB_EPOCH / SUBMIT_JOB_SCHED, or a retry's backoff),
    /// in unix milliseconds.
    Scheduled { at: u64 },
    /// Out of tries: kept in its function's dead-letter queue until retried or purged.
    Dead,
    /// Assigned to a worker connection.
    Running { worker: ConnId },
    /// Its try ran past `worker`'s CAN_DO_TIMEOUT, and that worker may still be running it: held
    /// by it until it answers, disconnects or the timeout grace passes; only then retried or
    /// dead-lettered (background jobs only: a foreground job is finished at the timeout).
    TimedOut { worker: ConnId },
    /// A retaining client's job whose resuming worker (`OPTION_REQ gearfleet-resume`) lost its
    /// connection, or that such a worker ran when the broker stopped: held, still counted as
    /// running, for that worker (its client id is `JobExtra::claimant`) to take back or finish
    /// until `until` (unix milliseconds); then queued again if a client waits, else dropped
    /// (`state/resume.rs`).
    Held { until: u64 },
}

/// A try that ran past its timeout and is still held by its worker (see `state/timeout.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TimedOutTry {
    pub(super) job: JobId,
    pub(super) attempt: u32,
    pub(super) fid: FnId,
}

/// Rarely used job fields, boxed so the common job stays small.
#[derive(Debug, Default)]
pub(super) struct JobExtra {
    pub(super) reducer: Bytes,
    pub(super) status: Option<(Bytes, Bytes)>,
    /// Why the last try failed (retries and dead letters).
    pub(super) last_error: Bytes,
    /// The client id of the resuming worker running the job, who may take it back while it is
    /// `JobState::Held`.
    pub(super) claimant: Bytes,
}

#[derive(Debug)]
pub(super) struct Job {
    pub(super) fid: FnId,
    pub(super) priority: Priority,
    pub(super) background: bool,
    pub(super) state: JobState,
    /// Increases each time the job is assigned, so a stale timeout cannot fail a later attempt.
    pub(super) attempt: u32,
    pub(super) unique: Bytes,
    pub(super) data: Bytes,
    /// Connections waiting for this job's results (foreground submitters).
    pub(super) clients: ThinVec<ConnId>,
    /// Keep the outcome after it finishes (a retaining client submitted or attached to it).
    pub(super) retain: bool,
    pub(super) created: Instant,
    pub(super) extra: Option<Box<JobExtra>>,
}

/// How a job's try ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    Complete,
    Fail,
    Exception,
    /// Ran past its function's CAN_DO_TIMEOUT.
    Timeout,
}

/// Which GRAB_JOB a worker sent, so which JOB_ASSIGN it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum GrabKind {
    Plain,
    Uniq,
    All,
}

/// A function a worker connection can do.
#[derive(Debug)]
pub(super) struct Ability {
    pub(super) fid: FnId,
    /// From CAN_DO_TIMEOUT: a try still running after this is failed.
    pub(super) timeout: Option<Duration>,
}

/// Work to do once the lock is released.
#[derive(Debug, Default)]
pub struct Effects {
    /// Fail `job` if attempt `attempt` is still running after the duration.
    pub timers: Vec<(JobId, u32, Duration)>,
    /// Hand back the timed-out try `attempt` of `job` held by worker connection `conn` after
    /// the duration (the timeout grace), unless the worker answered or left before:
    /// `(conn, job, attempt, grace)`.
    pub graces: Vec<(ConnId, JobId, u32, Duration)>,
    /// The earliest scheduled time may have changed.
    pub schedule_changed: bool,
    /// Queue or worker counts changed (for `fleet watch`).
    pub stats_changed: bool,
    /// Replies to the current connection may go out only once the journal is durable up to here.
    pub durable_seq: u64,
}

/// How failed background jobs are retried before they are dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first try (0: a failure dead-letters the job at once).
    pub limit: u32,
    pub initial: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy { limit: 0, initial: Duration::from_secs(1), max: Duration::from_secs(300) }
    }
}

impl RetryPolicy {
    /// Delay before try `attempt + 1`, doubling from `initial` up to `max`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(30));
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// Limits the state enforces.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// Queued jobs across all functions; 0 = unlimited.
    pub max_queued_jobs: u64,
    /// Default per-function queue limit; 0 = unlimited.
    pub default_max_queue: u32,
    /// Retry policy for functions that have none of their own.
    pub default_retry: RetryPolicy,
    /// Times a background job may be handed back by a worker that disconnected before it is
    /// dead-lettered as a likely poison job (0 = no limit).
    pub max_requeues: u32,
    /// Dead-lettered jobs kept per function (0 = no limit); the oldest beyond it are dropped.
    pub dead_letter_limit: usize,
    /// How long a worker whose try timed out keeps holding it (busy, the job not run again)
    /// unless it answers or disconnects first; zero hands it back at the timeout.
    pub timeout_grace: Duration,
    /// Finished-job outcomes kept for retaining clients (0 = none), and for how long.
    pub retained_outcomes: usize,
    pub retained_outcome_ttl: Duration,
    /// How long a retaining client's job is held for its resuming worker after that worker lost
    /// its connection or the broker restarted (zero: such jobs are queued again at once, and
    /// `OPTION_REQ gearfleet-resume` is refused).
    pub claim_grace: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queued_job_stays_small() {
        // Every queued job pays this (plus its payload): the memory goal is 300 bytes per
        // queued 64-byte job, unique key included.
        assert!(size_of::<Job>() <= 128, "Job grew to {} bytes", size_of::<Job>());
        assert_eq!(size_of::<Option<Job>>(), size_of::<Job>(), "the id table's empty slots cost nothing extra");
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let p = RetryPolicy { limit: 5, initial: Duration::from_millis(100), max: Duration::from_millis(350) };
        let delays: Vec<_> = (1..=4).map(|a| p.backoff(a).as_millis()).collect();
        assert_eq!(delays, [100, 200, 350, 350]);
    }
}
