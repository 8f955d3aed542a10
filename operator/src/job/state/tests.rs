//! Transition-by-transition tests of [`super::plan`].

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
