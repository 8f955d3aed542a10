//! The Job state machine, as a pure function: from the spec, the status last written, what the
//! broker reported for the current attempt and the time, [`plan`] computes the next status and the
//! actions to take (submit, stop following, delete). No I/O, no clock reads.
//!
//! Phases: `Pending` (waiting for `runAt`, a retry back-off, or the next step of a chain) →
//! `Queued` (submitted; the broker has the job) → `Running` (a worker took it) → `Succeeded` or
//! `Failed`. Each attempt is submitted under its own Gearman unique key ([`attempt_unique`]): a
//! resubmission of the same attempt (after an operator restart or a lost connection) is coalesced
//! by the broker with the job still queued or running, or answered from its retained outcome, so
//! an attempt never runs twice; a retry is a new attempt with a new key.
//!
//! Kubernetes Job habits: `spec.failurePolicy` decides per kind of failure (WORK_FAIL,
//! WORK_EXCEPTION, timeout) whether a failed attempt is retried or fails the Job;
//! `spec.activeDeadlineSeconds` fails the Job (`DeadlineExceeded`) once it has been active that
//! long since `status.startTime`; `spec.suspend` parks it in `Suspended` (a still-queued attempt
//! is withdrawn from the broker, a running one finishes but is not retried) until it is resumed,
//! which restarts the deadline as batch/v1 does.

use std::time::Duration;

use gearfleet_crd::job::{
    AttemptFailure, FailureAction, JobPhase, JobProgress, JobSpec, JobStatus, JobStepStatus, job_condition as condition,
};
use gearfleet_crd::{is_condition_true, new_condition, set_condition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

pub use super::unique::attempt_unique;

/// What the broker reported for one attempt (accumulated by the runner).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observation {
    /// JOB_CREATED's handle.
    pub handle: Option<String>,
    /// A worker took the job.
    pub started: bool,
    /// Latest WORK_STATUS (numerator, denominator).
    pub progress: Option<(i64, i64)>,
    /// WORK_DATA chunks, concatenated (the runner stops appending past the status cap).
    pub data: Vec<u8>,
    /// Whether the runner dropped data past the cap.
    pub data_truncated: bool,
    /// WORK_WARNING texts, oldest first.
    pub warnings: Vec<String>,
    /// How the attempt ended, once it has.
    pub outcome: Option<AttemptOutcome>,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// WORK_COMPLETE with the result.
    Complete(Vec<u8>),
    /// WORK_FAIL.
    Fail,
    /// WORK_EXCEPTION with its message.
    Exception(String),
}

/// Where a submission's payload comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadFrom {
    /// `spec.payload` or `spec.payloadFrom` (the first step).
    Spec,
    /// The previous step's result (`status.result` or its ConfigMap).
    PreviousResult,
}

/// Something the controller must do for a Job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Submit (or resubmit: it is idempotent) an attempt to the broker and follow it.
    Submit {
        /// The attempt's unique key.
        unique: String,
        /// The step's function.
        function: String,
        /// The payload's source.
        payload: PayloadFrom,
    },
    /// Stop following an attempt (it ended or timed out).
    Forget {
        /// The attempt's unique key.
        unique: String,
    },
    /// Stop following an attempt that no worker has taken yet and remove it from the broker
    /// (admin `cancel job HANDLE`), so that it never runs. A worker that took it in the meantime
    /// is not recalled: that run's outcome is ignored.
    Cancel {
        /// The attempt's unique key.
        unique: String,
    },
    /// Delete the Job (ttlSecondsAfterFinished passed).
    Delete,
}

/// A Kubernetes Event to publish about the Job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobEvent {
    /// Warning rather than Normal.
    pub warning: bool,
    /// The Event's reason.
    pub reason: &'static str,
    /// The Event's note.
    pub note: String,
}

/// The outcome of [`plan`].
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The status to write.
    pub status: JobStatus,
    /// What to do, in order.
    pub actions: Vec<Action>,
    /// Reconcile again after this long at the latest (timeouts, back-offs, runAt, TTL).
    pub requeue: Option<Duration>,
    /// Events to publish.
    pub events: Vec<JobEvent>,
}

impl Plan {
    fn requeue_within(&mut self, after: Duration) {
        self.requeue = Some(self.requeue.map_or(after, |r| r.min(after)));
    }
}

/// Machine-readable reasons in `status.reason`.
pub mod reason {
    /// The worker sent WORK_FAIL.
    pub const WORK_FAIL: &str = "WorkFail";
    /// The worker sent WORK_EXCEPTION.
    pub const WORK_EXCEPTION: &str = "WorkException";
    /// The attempt ran past `spec.timeout`.
    pub const TIMEOUT: &str = "Timeout";
    /// The Job (every step) succeeded.
    pub const SUCCEEDED: &str = "Succeeded";
    /// The spec is invalid.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The Job was active longer than `spec.activeDeadlineSeconds`.
    pub const DEADLINE_EXCEEDED: &str = "DeadlineExceeded";
    /// `spec.suspend` holds the Job (the Suspended condition's reason, as in batch/v1).
    pub const SUSPENDED: &str = "JobSuspended";
    /// The Job was resumed (the Suspended condition's reason once False).
    pub const RESUMED: &str = "JobResumed";
}

fn at(ts: Timestamp) -> Time {
    Time(ts)
}

fn until(now: Timestamp, then: Timestamp) -> Duration {
    let d = then.duration_since(now);
    if d.is_negative() { Duration::ZERO } else { d.unsigned_abs() }
}

fn plus(now: Timestamp, d: Duration) -> Timestamp {
    now.checked_add(SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)).unwrap_or(Timestamp::MAX)
}

/// The next status and actions of a Job.
///
/// * `base`: the Job's unique base ([`unique_base`](super::unique::unique_base): `<namespace>/<spec.unique>`, or its UID);
/// * `observation`: what the runner has for the current attempt's unique key, if it follows it;
/// * `now`: the time.
pub fn plan(spec: &JobSpec, status: &JobStatus, base: &str, observation: Option<&Observation>, now: Timestamp) -> Plan {
    let mut p = Plan { status: status.clone(), actions: Vec::new(), requeue: None, events: Vec::new() };
    // A chain step that finished moves straight on to the next one in the same pass.
    for _ in 0..=spec.step_count() {
        let before = p.status.current_step;
        let obs = if p.status.current_step == status.current_step { observation } else { None };
        step(spec, base, obs, now, &mut p);
        if p.status.current_step == before || p.status.phase != JobPhase::Pending {
            break;
        }
    }
    p
}

fn step(spec: &JobSpec, base: &str, obs: Option<&Observation>, now: Timestamp, p: &mut Plan) {
    let s = &mut p.status;
    if s.phase.is_finished() {
        if let (Some(ttl), Some(done)) = (spec.ttl_seconds_after_finished, s.completion_time.as_ref()) {
            let due = plus(done.0, Duration::from_secs(u64::try_from(ttl).unwrap_or(0)));
            if now >= due {
                p.actions.push(Action::Delete);
            } else {
                p.requeue_within(until(now, due));
            }
        }
        return;
    }
    let index = usize::try_from(s.current_step).unwrap_or(0);
    let Some(function) = spec.step_function(index).map(str::to_string) else {
        // The chain is shorter than the recorded step (cannot happen: the spec is immutable).
        finish_failed(spec, p, reason::INVALID_SPEC, format!("step {index} does not exist"), now);
        return;
    };

    if spec.suspend {
        mark_suspended(p, now);
    } else if is_condition_true(&p.status.conditions, condition::SUSPENDED) {
        resume(p, now);
    }
    if !spec.suspend && deadline_passed(spec, p, now) {
        return;
    }

    match p.status.phase {
        JobPhase::Suspended => {}
        JobPhase::Pending if spec.suspend => p.status.phase = JobPhase::Suspended,
        JobPhase::Pending => {
            if index == 0
                && p.status.attempts == 0
                && let Some(run_at) = &spec.run_at
                && run_at.0 > now
            {
                p.requeue_within(until(now, run_at.0));
                return;
            }
            if let Some(next) = p.status.next_attempt_time.clone()
                && next.0 > now
            {
                p.requeue_within(until(now, next.0));
                return;
            }
            let s = &mut p.status;
            s.attempts += 1;
            s.phase = JobPhase::Queued;
            s.next_attempt_time = None;
            s.attempt_start_time = Some(at(now));
            s.start_time.get_or_insert_with(|| at(now));
            s.handle = None;
            s.progress = None;
            s.data = None;
            s.data_truncated = false;
            let unique = attempt_unique(base, index, s.attempts);
            s.unique = Some(unique.clone());
            if !spec.next.is_empty() {
                while s.steps.len() <= index {
                    let f = spec.step_function(s.steps.len()).unwrap_or_default();
                    s.steps.push(JobStepStatus { function: f.to_string(), ..Default::default() });
                }
                let st = &mut s.steps[index];
                st.phase = JobPhase::Queued;
                st.attempts = s.attempts;
                st.start_time.get_or_insert_with(|| at(now));
            }
            let attempts = s.attempts;
            p.actions.push(Action::Submit {
                unique,
                function: function.clone(),
                payload: if index == 0 { PayloadFrom::Spec } else { PayloadFrom::PreviousResult },
            });
            if attempts == 1 {
                p.events.push(JobEvent {
                    warning: false,
                    reason: "Submitted",
                    note: format!("step {index}: submitted to {function}"),
                });
            }
            if let Some(t) = spec.timeout() {
                p.requeue_within(t);
            }
            if let (Some(deadline), Some(started)) = (spec.active_deadline(), p.status.start_time.as_ref()) {
                let due = plus(started.0, deadline);
                p.requeue_within(until(now, due));
            }
        }
        JobPhase::Queued | JobPhase::Running => {
            let s = &mut p.status;
            let unique = s.unique.clone().unwrap_or_else(|| attempt_unique(base, index, s.attempts.max(1)));
            if spec.suspend && s.phase == JobPhase::Queued && obs.is_none_or(|o| !o.started && o.outcome.is_none()) {
                withdraw(p, unique);
                return;
            }
            let Some(obs) = obs else {
                // Nobody follows this attempt (the operator restarted, or the broker connection was
                // lost): submit it again under the same key. The broker attaches to the job if it is
                // still queued or running, or answers with its retained outcome: no second run.
                p.actions.push(Action::Submit {
                    unique,
                    function,
                    payload: if index == 0 { PayloadFrom::Spec } else { PayloadFrom::PreviousResult },
                });
                check_timeout(spec, p, now, None);
                return;
            };
            s.handle = obs.handle.clone().or(s.handle.take());
            if obs.started && s.phase == JobPhase::Queued {
                s.phase = JobPhase::Running;
                if let Some(st) = s.steps.get_mut(index) {
                    st.phase = JobPhase::Running;
                }
            }
            if let Some((n, d)) = obs.progress {
                s.progress = Some(JobProgress::new(n, d));
            }
            s.data = None;
            s.data_truncated = false;
            if !obs.data.is_empty() {
                s.append_data(&String::from_utf8_lossy(&obs.data));
            }
            s.data_truncated |= obs.data_truncated;
            s.warnings.clear();
            for w in &obs.warnings {
                s.push_warning(w);
            }
            match &obs.outcome {
                Some(AttemptOutcome::Complete(result)) => {
                    p.actions.push(Action::Forget { unique });
                    step_succeeded(spec, p, String::from_utf8_lossy(result).into_owned(), now);
                }
                Some(AttemptOutcome::Fail) => {
                    p.actions.push(Action::Forget { unique });
                    let message = "the worker reported WORK_FAIL".into();
                    attempt_failed(spec, p, AttemptFailure::WorkFail, message, now);
                }
                Some(AttemptOutcome::Exception(message)) => {
                    p.actions.push(Action::Forget { unique });
                    attempt_failed(spec, p, AttemptFailure::WorkException, message.clone(), now);
                }
                None => check_timeout(spec, p, now, Some(unique)),
            }
        }
        JobPhase::Succeeded | JobPhase::Failed => {}
    }
}

/// Fails the attempt when it has run past `spec.timeout`, else asks to be woken when it would.
fn check_timeout(spec: &JobSpec, p: &mut Plan, now: Timestamp, unique: Option<String>) {
    let (Some(timeout), Some(started)) = (spec.timeout(), p.status.attempt_start_time.as_ref()) else { return };
    let due = plus(started.0, timeout);
    if now < due {
        p.requeue_within(until(now, due));
        return;
    }
    stop_attempt(p, unique);
    let message = format!("attempt {} ran longer than the timeout {}", p.status.attempts, humantime(timeout));
    attempt_failed(spec, p, AttemptFailure::Timeout, message, now);
}

/// Stops following the attempt in flight: a running one is only forgotten (a stock worker cannot
/// be recalled; its late outcome is ignored), a still-queued one is also removed from the broker,
/// so it never runs beside the next attempt.
fn stop_attempt(p: &mut Plan, unique: Option<String>) {
    let Some(unique) = unique.or_else(|| p.status.unique.clone()) else { return };
    p.actions.push(if p.status.phase == JobPhase::Queued {
        Action::Cancel { unique }
    } else {
        Action::Forget { unique }
    });
}

/// Sets the Suspended condition (once) while `spec.suspend` holds the Job.
fn mark_suspended(p: &mut Plan, now: Timestamp) {
    if is_condition_true(&p.status.conditions, condition::SUSPENDED) {
        return;
    }
    let note = "suspended (spec.suspend): nothing is submitted until it is resumed".to_string();
    let c = new_condition(condition::SUSPENDED, true, reason::SUSPENDED, &note, None, at(now));
    set_condition(&mut p.status.conditions, c);
    p.events.push(JobEvent { warning: false, reason: "Suspended", note });
}

/// `spec.suspend` went back to false: the Job continues where it stopped, and (as batch/v1
/// resets `status.startTime`) its active deadline counts again from now.
fn resume(p: &mut Plan, now: Timestamp) {
    let s = &mut p.status;
    let note = "resumed (spec.suspend is false)".to_string();
    set_condition(&mut s.conditions, new_condition(condition::SUSPENDED, false, reason::RESUMED, &note, None, at(now)));
    if s.start_time.is_some() {
        s.start_time = Some(at(now));
    }
    if s.phase == JobPhase::Suspended {
        s.phase = JobPhase::Pending;
    }
    p.events.push(JobEvent { warning: false, reason: "Resumed", note });
}

/// Takes back an attempt no worker has taken yet because the Job was suspended: it is removed
/// from the broker and counted as not made, so resuming submits it again under the same key (which
/// the broker coalesces with the run, should a worker have taken it before the cancel).
fn withdraw(p: &mut Plan, unique: String) {
    let s = &mut p.status;
    s.attempts = (s.attempts - 1).max(0);
    s.phase = JobPhase::Suspended;
    s.handle = None;
    s.attempt_start_time = None;
    let index = usize::try_from(s.current_step).unwrap_or(0);
    if let Some(st) = s.steps.get_mut(index) {
        st.phase = JobPhase::Pending;
        st.attempts = s.attempts;
    }
    p.events.push(JobEvent {
        warning: false,
        reason: "Suspended",
        note: format!("the queued attempt of step {index} was withdrawn from the broker"),
    });
    p.actions.push(Action::Cancel { unique });
}

/// Fails the Job once it has been active `spec.activeDeadlineSeconds` since `status.startTime`
/// (stopping the attempt in flight), else asks to be woken then. Returns whether it failed.
fn deadline_passed(spec: &JobSpec, p: &mut Plan, now: Timestamp) -> bool {
    let (Some(deadline), Some(started)) = (spec.active_deadline(), p.status.start_time.as_ref()) else { return false };
    let due = plus(started.0, deadline);
    if now < due {
        p.requeue_within(until(now, due));
        return false;
    }
    if matches!(p.status.phase, JobPhase::Queued | JobPhase::Running) {
        stop_attempt(p, None);
    }
    let message = format!("the Job was active longer than activeDeadlineSeconds ({})", humantime(deadline));
    finish_failed(spec, p, reason::DEADLINE_EXCEEDED, message, now);
    true
}

fn humantime(d: Duration) -> String {
    if d.subsec_millis() == 0 { format!("{}s", d.as_secs()) } else { format!("{}ms", d.as_millis()) }
}

fn step_succeeded(spec: &JobSpec, p: &mut Plan, result: String, now: Timestamp) {
    let s = &mut p.status;
    let index = usize::try_from(s.current_step).unwrap_or(0);
    if let Some(st) = s.steps.get_mut(index) {
        st.phase = JobPhase::Succeeded;
        st.completion_time = Some(at(now));
    }
    // The result is the next step's payload, and the Job's result after the last step.
    s.result = Some(result);
    s.result_config_map = None;
    s.reason = None;
    s.message = None;
    if index + 1 < spec.step_count() {
        s.current_step += 1;
        s.attempts = 0;
        s.phase = JobPhase::Pending;
        s.unique = None;
        s.handle = None;
        s.attempt_start_time = None;
        return;
    }
    s.phase = JobPhase::Succeeded;
    s.completion_time = Some(at(now));
    s.attempt_start_time = None;
    let steps = spec.step_count();
    let note = if steps > 1 { format!("all {steps} steps succeeded") } else { "succeeded".to_string() };
    set_condition(&mut s.conditions, new_condition(condition::COMPLETE, true, reason::SUCCEEDED, &note, None, at(now)));
    p.events.push(JobEvent { warning: false, reason: "Succeeded", note });
    if let Some(ttl) = spec.ttl_seconds_after_finished {
        p.requeue_within(Duration::from_secs(u64::try_from(ttl).unwrap_or(0)));
    }
}

fn attempt_failed(spec: &JobSpec, p: &mut Plan, kind: AttemptFailure, message: String, now: Timestamp) {
    let why = kind.as_str();
    let policy = spec.retry_policy();
    let s = &mut p.status;
    s.reason = Some(why.to_string());
    s.message = Some(message.clone());
    if spec.failure_action(kind) == FailureAction::FailJob {
        let message = format!("{message} (failurePolicy: FailJob on {why})");
        finish_failed(spec, p, why, message, now);
        return;
    }
    if s.attempts <= policy.limit {
        let delay = policy.backoff.delay(u32::try_from(s.attempts).unwrap_or(1)).unwrap_or(Duration::from_secs(1));
        // A suspended Job keeps its back-off but submits nothing until it is resumed.
        s.phase = if spec.suspend { JobPhase::Suspended } else { JobPhase::Pending };
        s.next_attempt_time = Some(at(plus(now, delay)));
        s.attempt_start_time = None;
        let index = usize::try_from(s.current_step).unwrap_or(0);
        if let Some(st) = s.steps.get_mut(index) {
            st.phase = JobPhase::Pending;
        }
        p.events.push(JobEvent {
            warning: true,
            reason: "Retrying",
            note: format!("attempt {} failed ({why}: {message}); retrying in {}", s.attempts, humantime(delay)),
        });
        p.requeue_within(delay);
        return;
    }
    finish_failed(spec, p, why, message, now);
}

fn finish_failed(spec: &JobSpec, p: &mut Plan, why: &'static str, message: String, now: Timestamp) {
    let s = &mut p.status;
    let index = usize::try_from(s.current_step).unwrap_or(0);
    if let Some(st) = s.steps.get_mut(index) {
        st.phase = JobPhase::Failed;
        st.completion_time = Some(at(now));
    }
    s.phase = JobPhase::Failed;
    s.reason = Some(why.to_string());
    s.message = Some(message.clone());
    s.completion_time = Some(at(now));
    s.attempt_start_time = None;
    s.next_attempt_time = None;
    let note = format!("failed after {} attempt(s) of step {index}: {why}: {message}", s.attempts);
    set_condition(&mut s.conditions, new_condition(condition::FAILED, true, why, &note, None, at(now)));
    p.events.push(JobEvent { warning: true, reason: "Failed", note });
    if let Some(ttl) = spec.ttl_seconds_after_finished {
        p.requeue_within(Duration::from_secs(u64::try_from(ttl).unwrap_or(0)));
    }
}

#[cfg(test)]
mod tests;
