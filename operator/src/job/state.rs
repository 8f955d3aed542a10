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

use std::time::Duration;

use gearfleet_crd::job::{JobPhase, JobProgress, JobSpec, JobStatus, JobStepStatus, job_condition as condition};
use gearfleet_crd::{new_condition, set_condition};
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

    match s.phase {
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
        }
        JobPhase::Queued | JobPhase::Running => {
            let unique = s.unique.clone().unwrap_or_else(|| attempt_unique(base, index, s.attempts.max(1)));
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
                    attempt_failed(spec, p, reason::WORK_FAIL, "the worker reported WORK_FAIL".into(), now);
                }
                Some(AttemptOutcome::Exception(message)) => {
                    p.actions.push(Action::Forget { unique });
                    attempt_failed(spec, p, reason::WORK_EXCEPTION, message.clone(), now);
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
    let unique = unique.or_else(|| p.status.unique.clone());
    if let Some(unique) = unique {
        p.actions.push(Action::Forget { unique });
    }
    let message = format!("attempt {} ran longer than the timeout {}", p.status.attempts, humantime(timeout));
    attempt_failed(spec, p, reason::TIMEOUT, message, now);
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

fn attempt_failed(spec: &JobSpec, p: &mut Plan, why: &'static str, message: String, now: Timestamp) {
    let policy = spec.retry_policy();
    let s = &mut p.status;
    s.reason = Some(why.to_string());
    s.message = Some(message.clone());
    if s.attempts <= policy.limit {
        let delay = policy.backoff.delay(u32::try_from(s.attempts).unwrap_or(1)).unwrap_or(Duration::from_secs(1));
        s.phase = JobPhase::Pending;
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
mod tests {
    use gearfleet_crd::common::{Backoff, RetryPolicy};
    use gearfleet_crd::is_condition_true;

    use super::*;

    const UID: &str = "0b0c6a4e-5a8e-4a42-9a3e-6f1f4f2d9b10";

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn spec() -> JobSpec {
        JobSpec::new("reverse").with_payload("abc")
    }

    fn retrying(limit: i32) -> JobSpec {
        let mut s = spec();
        s.retries = Some(RetryPolicy { limit, backoff: Backoff { initial: "2s".into(), max: "5s".into() } });
        s
    }

    fn obs(f: impl FnOnce(&mut Observation)) -> Observation {
        let mut o = Observation { handle: Some("H:b:1".into()), ..Default::default() };
        f(&mut o);
        o
    }

    /// Plans from `status` with `o`, asserting the one Submit it must contain, and returns the plan.
    fn submitted(spec: &JobSpec, status: &JobStatus, now: Timestamp) -> Plan {
        let p = plan(spec, status, UID, None, now);
        assert!(p.actions.iter().any(|a| matches!(a, Action::Submit { .. })), "{:?}", p.actions);
        p
    }

    #[test]
    fn unique_keys_per_attempt_fit_gearman() {
        assert_eq!(attempt_unique(UID, 0, 1), UID);
        assert_eq!(attempt_unique(UID, 0, 2), format!("{UID}/0/2"));
        assert_eq!(attempt_unique(UID, 3, 1), format!("{UID}/3/1"));
        let long = "x".repeat(100);
        assert_eq!(attempt_unique(&long, 0, 1).len(), 64);
        assert_eq!(attempt_unique(&long, 15, 101).len(), 64);
        assert!(attempt_unique(&long, 15, 101).ends_with("/15/101"));
        assert_eq!(attempt_unique(&"é".repeat(40), 0, 1).len(), 64);
    }

    #[test]
    fn pending_job_is_submitted_and_queued() {
        let p = submitted(&spec(), &JobStatus::default(), t(0));
        assert_eq!(p.status.phase, JobPhase::Queued);
        assert_eq!(p.status.attempts, 1);
        assert_eq!(p.status.unique.as_deref(), Some(UID));
        assert_eq!(p.status.start_time, Some(Time(t(0))));
        assert_eq!(
            p.actions,
            [Action::Submit { unique: UID.into(), function: "reverse".into(), payload: PayloadFrom::Spec }]
        );
        assert_eq!(p.events[0].reason, "Submitted");
        assert_eq!(p.requeue, None, "no timeout: nothing to wake up for");
    }

    #[test]
    fn run_at_in_the_future_waits() {
        let mut s = spec();
        s.run_at = Some(Time(t(30)));
        let p = plan(&s, &JobStatus::default(), UID, None, t(0));
        assert_eq!(p.status.phase, JobPhase::Pending);
        assert!(p.actions.is_empty());
        assert_eq!(p.requeue, Some(Duration::from_secs(30)));
        assert_eq!(submitted(&s, &JobStatus::default(), t(30)).status.phase, JobPhase::Queued);
    }

    #[test]
    fn started_attempt_runs_with_progress_data_and_warnings() {
        let queued = submitted(&spec(), &JobStatus::default(), t(0)).status;
        let o = obs(|o| {
            o.started = true;
            o.progress = Some((3, 4));
            o.data = b"partial".to_vec();
            o.warnings = vec!["careful".into()];
        });
        let p = plan(&spec(), &queued, UID, Some(&o), t(1));
        assert_eq!(p.status.phase, JobPhase::Running);
        assert_eq!(p.status.handle.as_deref(), Some("H:b:1"));
        assert_eq!(p.status.progress.as_ref().map(|p| p.percent), Some(75));
        assert_eq!(p.status.data.as_deref(), Some("partial"));
        assert_eq!(p.status.warnings, ["careful"]);
        assert!(p.actions.is_empty());
        // Applying the same observation again changes nothing (idempotent).
        let again = plan(&spec(), &p.status, UID, Some(&o), t(2));
        assert_eq!(again.status, p.status);
    }

    #[test]
    fn data_is_capped_and_marked_truncated() {
        let queued = submitted(&spec(), &JobStatus::default(), t(0)).status;
        let o = obs(|o| o.data = vec![b'x'; gearfleet_crd::job::DATA_MAX_BYTES + 10]);
        let p = plan(&spec(), &queued, UID, Some(&o), t(1));
        assert_eq!(p.status.data.as_ref().map(String::len), Some(gearfleet_crd::job::DATA_MAX_BYTES));
        assert!(p.status.data_truncated);
    }

    #[test]
    fn completion_succeeds_with_the_result_and_condition() {
        let mut s = spec();
        s.ttl_seconds_after_finished = Some(60);
        let queued = submitted(&s, &JobStatus::default(), t(0)).status;
        let o = obs(|o| o.outcome = Some(AttemptOutcome::Complete(b"cba".to_vec())));
        let p = plan(&s, &queued, UID, Some(&o), t(5));
        assert_eq!(p.status.phase, JobPhase::Succeeded);
        assert_eq!(p.status.result.as_deref(), Some("cba"));
        assert_eq!(p.status.completion_time, Some(Time(t(5))));
        assert!(is_condition_true(&p.status.conditions, condition::COMPLETE));
        assert_eq!(p.actions, [Action::Forget { unique: UID.into() }]);
        assert_eq!(p.events.last().map(|e| e.reason), Some("Succeeded"));
        assert_eq!(p.requeue, Some(Duration::from_secs(60)));
        // Finished: nothing happens until the TTL, then the Job is deleted.
        let later = plan(&s, &p.status, UID, None, t(30));
        assert!(later.actions.is_empty());
        assert_eq!(later.requeue, Some(Duration::from_secs(35)));
        assert_eq!(plan(&s, &p.status, UID, None, t(65)).actions, [Action::Delete]);
    }

    #[test]
    fn failure_retries_with_backoff_under_a_new_key_then_fails_for_good() {
        let s = retrying(2);
        let mut status = submitted(&s, &JobStatus::default(), t(0)).status;
        let fail = obs(|o| o.outcome = Some(AttemptOutcome::Exception("boom".into())));
        let mut now = 0;
        for attempt in 1..=3 {
            assert_eq!(status.attempts, attempt);
            assert_eq!(status.unique.clone(), Some(attempt_unique(UID, 0, attempt)));
            let p = plan(&s, &status, UID, Some(&fail), t(now));
            if attempt == 3 {
                assert_eq!(p.status.phase, JobPhase::Failed, "attempts = limit + 1");
                assert_eq!(p.status.reason.as_deref(), Some(reason::WORK_EXCEPTION));
                assert_eq!(p.status.message.as_deref(), Some("boom"));
                assert!(is_condition_true(&p.status.conditions, condition::FAILED));
                assert_eq!(p.events.last().map(|e| e.reason), Some("Failed"));
                return;
            }
            assert_eq!(p.status.phase, JobPhase::Pending);
            let delay = if attempt == 1 { 2 } else { 4 };
            assert_eq!(p.requeue, Some(Duration::from_secs(delay)));
            assert_eq!(p.status.next_attempt_time, Some(Time(t(now + delay as i64))));
            assert_eq!(p.events[0].reason, "Retrying");
            // Before the back-off ends nothing is submitted.
            let early = plan(&s, &p.status, UID, None, t(now + 1));
            assert!(early.actions.is_empty());
            now += delay as i64;
            status = submitted(&s, &p.status, t(now)).status;
        }
    }

    #[test]
    fn work_fail_without_retries_fails_at_once() {
        let queued = submitted(&spec(), &JobStatus::default(), t(0)).status;
        let o = obs(|o| o.outcome = Some(AttemptOutcome::Fail));
        let p = plan(&spec(), &queued, UID, Some(&o), t(1));
        assert_eq!(p.status.phase, JobPhase::Failed);
        assert_eq!(p.status.reason.as_deref(), Some(reason::WORK_FAIL));
        assert_eq!(p.status.attempts, 1);
    }

    #[test]
    fn timeout_fails_the_attempt_and_stops_following_it() {
        let mut s = retrying(1);
        s.timeout = Some("10s".into());
        let queued = submitted(&s, &JobStatus::default(), t(0));
        assert_eq!(queued.requeue, Some(Duration::from_secs(10)));
        let running = obs(|o| o.started = true);
        let before = plan(&s, &queued.status, UID, Some(&running), t(9));
        assert_eq!(before.status.phase, JobPhase::Running);
        assert_eq!(before.requeue, Some(Duration::from_secs(1)));
        let p = plan(&s, &before.status, UID, Some(&running), t(10));
        assert_eq!(p.status.reason.as_deref(), Some(reason::TIMEOUT));
        assert_eq!(p.status.phase, JobPhase::Pending, "retried");
        assert_eq!(p.actions, [Action::Forget { unique: UID.into() }]);
    }

    #[test]
    fn a_restarted_operator_resubmits_the_same_attempt_under_the_same_key() {
        let queued = submitted(&spec(), &JobStatus::default(), t(0)).status;
        let mut running = plan(&spec(), &queued, UID, Some(&obs(|o| o.started = true)), t(1)).status;
        running.phase = JobPhase::Running;
        // No observation: nobody follows the attempt any more.
        let p = plan(&spec(), &running, UID, None, t(100));
        assert_eq!(
            p.actions,
            [Action::Submit { unique: UID.into(), function: "reverse".into(), payload: PayloadFrom::Spec }]
        );
        assert_eq!(p.status.attempts, 1, "not a new attempt");
        assert_eq!(p.status.phase, JobPhase::Running);
    }

    #[test]
    fn a_chain_runs_each_step_on_the_previous_result() {
        let mut s = spec();
        s.next = vec!["upper".into(), "echo".into()];
        let mut status = submitted(&s, &JobStatus::default(), t(0)).status;
        assert_eq!(status.steps.len(), 1);
        for (i, (function, result)) in [("upper", "cba"), ("echo", "CBA"), ("", "CBA!")].into_iter().enumerate() {
            let o = obs(|o| o.outcome = Some(AttemptOutcome::Complete(result.as_bytes().to_vec())));
            let p = plan(&s, &status, UID, Some(&o), t(i as i64 + 1));
            status = p.status;
            assert_eq!(status.result.as_deref(), Some(result));
            if function.is_empty() {
                assert_eq!(status.phase, JobPhase::Succeeded);
                assert!(status.steps.iter().all(|st| st.phase == JobPhase::Succeeded), "{:?}", status.steps);
                assert_eq!(status.steps.len(), 3);
                return;
            }
            // The next step is submitted in the same pass, with the result as its payload.
            assert_eq!(status.current_step, i as i32 + 1);
            assert_eq!(status.phase, JobPhase::Queued);
            assert_eq!(status.attempts, 1);
            assert_eq!(
                p.actions,
                [
                    Action::Forget { unique: attempt_unique(UID, i, 1) },
                    Action::Submit {
                        unique: attempt_unique(UID, i + 1, 1),
                        function: function.into(),
                        payload: PayloadFrom::PreviousResult
                    },
                ]
            );
            assert_eq!(status.steps[i].phase, JobPhase::Succeeded);
        }
    }

    #[test]
    fn finished_jobs_without_ttl_stay_untouched() {
        let queued = submitted(&spec(), &JobStatus::default(), t(0)).status;
        let done = plan(&spec(), &queued, UID, Some(&obs(|o| o.outcome = Some(AttemptOutcome::Fail))), t(1)).status;
        let p = plan(&spec(), &done, UID, None, t(1000));
        assert_eq!(p.status, done);
        assert!(p.actions.is_empty() && p.requeue.is_none() && p.events.is_empty());
    }
}
