//! Transition-by-transition tests of [`super::plan`].

use gearfleet_crd::common::{Backoff, RetryPolicy};
use gearfleet_crd::is_condition_true;
use gearfleet_crd::job::{FailurePolicy, FailurePolicyRule};

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

// ---- spec.failurePolicy ----

/// Failure-policy rules: (action, the kinds it applies to).
type Rules<'a> = &'a [(FailureAction, &'a [AttemptFailure])];

fn with_policy(limit: i32, rules: Rules<'_>) -> JobSpec {
    let mut s = retrying(limit);
    s.timeout = Some("10s".into());
    s.failure_policy = Some(FailurePolicy {
        rules: rules
            .iter()
            .map(|(action, on)| FailurePolicyRule { action: *action, on_failures: on.to_vec() })
            .collect(),
    });
    s
}

/// Ends the first attempt (started, so a timeout only forgets it) with `kind`, at 1 s (or at the
/// 10 s timeout).
fn first_attempt_ends(spec: &JobSpec, kind: AttemptFailure) -> Plan {
    let queued = submitted(spec, &JobStatus::default(), t(0)).status;
    let running = plan(spec, &queued, UID, Some(&obs(|o| o.started = true)), t(0)).status;
    let (o, now) = match kind {
        AttemptFailure::WorkFail => (obs(|o| o.outcome = Some(AttemptOutcome::Fail)), t(1)),
        AttemptFailure::WorkException => (obs(|o| o.outcome = Some(AttemptOutcome::Exception("boom".into()))), t(1)),
        AttemptFailure::Timeout => (obs(|o| o.started = true), t(10)),
    };
    plan(spec, &running, UID, Some(&o), now)
}

#[test]
fn failure_policy_action_per_kind_of_failure() {
    use AttemptFailure::{Timeout, WorkException, WorkFail};
    use FailureAction::{FailJob, Retry};
    let kinds = [WorkFail, WorkException, Timeout];
    // (rules, the kinds that fail the Job at once; every other kind is retried)
    let cases: [(Rules<'_>, &[AttemptFailure]); 5] = [
        (&[], &[]),
        (&[(FailJob, &[WorkException])], &[WorkException]),
        (&[(FailJob, &[WorkFail, Timeout])], &[WorkFail, Timeout]),
        // The first rule naming a kind wins.
        (&[(Retry, &[Timeout]), (FailJob, &[Timeout, WorkFail])], &[WorkFail]),
        (&[(FailJob, &[WorkFail, WorkException, Timeout])], &[WorkFail, WorkException, Timeout]),
    ];
    for (rules, fatal) in cases {
        let s = with_policy(3, rules);
        for kind in kinds {
            let p = first_attempt_ends(&s, kind);
            assert_eq!(p.status.reason.as_deref(), Some(kind.as_str()), "{rules:?} {kind:?}");
            if fatal.contains(&kind) {
                assert_eq!(p.status.phase, JobPhase::Failed, "{rules:?} {kind:?}");
                assert_eq!(p.status.attempts, 1, "retries left, but not used");
                let failed = p.status.conditions.iter().find(|c| c.type_ == condition::FAILED).unwrap();
                assert_eq!(failed.reason, kind.as_str());
                assert!(p.status.message.as_deref().unwrap_or_default().contains("failurePolicy: FailJob"));
                assert_eq!(p.events.last().map(|e| e.reason), Some("Failed"));
            } else {
                assert_eq!(p.status.phase, JobPhase::Pending, "{rules:?} {kind:?}: retried");
                assert_eq!(p.events.last().map(|e| e.reason), Some("Retrying"));
            }
        }
    }
}

#[test]
fn failure_policy_retry_still_stops_at_the_retry_limit() {
    let s = with_policy(0, &[(FailureAction::Retry, &[AttemptFailure::WorkFail])]);
    let p = first_attempt_ends(&s, AttemptFailure::WorkFail);
    assert_eq!(p.status.phase, JobPhase::Failed);
    assert_eq!(p.status.reason.as_deref(), Some(reason::WORK_FAIL));
}

#[test]
fn a_queued_attempt_that_times_out_is_removed_from_the_broker_before_the_retry() {
    let mut s = retrying(1);
    s.timeout = Some("10s".into());
    let queued = submitted(&s, &JobStatus::default(), t(0)).status;
    let p = plan(&s, &queued, UID, Some(&obs(|_| {})), t(10));
    assert_eq!(p.actions, [Action::Cancel { unique: UID.into() }], "not left queued beside the retry");
    assert_eq!(p.status.phase, JobPhase::Pending);
    // Also when nobody followed it (the operator restarted).
    let p = plan(&s, &queued, UID, None, t(10));
    assert!(p.actions.contains(&Action::Cancel { unique: UID.into() }), "{:?}", p.actions);
}

// ---- spec.activeDeadlineSeconds ----

fn deadline(secs: i64, limit: i32) -> JobSpec {
    let mut s = retrying(limit);
    s.active_deadline_seconds = Some(secs);
    s
}

fn assert_deadline_exceeded(p: &Plan) {
    assert_eq!(p.status.phase, JobPhase::Failed);
    assert_eq!(p.status.reason.as_deref(), Some(reason::DEADLINE_EXCEEDED));
    let failed = p.status.conditions.iter().find(|c| c.type_ == condition::FAILED).unwrap();
    assert_eq!((failed.status.as_str(), failed.reason.as_str()), ("True", reason::DEADLINE_EXCEEDED));
    assert!(p.status.message.as_deref().unwrap_or_default().contains("activeDeadlineSeconds (30s)"));
    assert_eq!(p.events.last().map(|e| e.reason), Some("Failed"));
    assert!(!p.actions.iter().any(|a| matches!(a, Action::Submit { .. })), "{:?}", p.actions);
}

#[test]
fn deadline_counts_from_the_start_and_wakes_the_job_when_due() {
    let s = deadline(30, 5);
    let queued = submitted(&s, &JobStatus::default(), t(0));
    assert_eq!(queued.requeue, Some(Duration::from_secs(30)));
    let before = plan(&s, &queued.status, UID, Some(&obs(|_| {})), t(20));
    assert_eq!(before.status.phase, JobPhase::Queued);
    assert_eq!(before.requeue, Some(Duration::from_secs(10)));
}

#[test]
fn deadline_while_queued_cancels_the_attempt_in_the_broker() {
    let s = deadline(30, 5);
    let queued = submitted(&s, &JobStatus::default(), t(0)).status;
    let p = plan(&s, &queued, UID, Some(&obs(|_| {})), t(30));
    assert_deadline_exceeded(&p);
    assert_eq!(p.actions, [Action::Cancel { unique: UID.into() }]);
}

#[test]
fn deadline_while_running_stops_following_and_ignores_the_late_result() {
    let s = deadline(30, 5);
    let queued = submitted(&s, &JobStatus::default(), t(0)).status;
    let running = plan(&s, &queued, UID, Some(&obs(|o| o.started = true)), t(1)).status;
    let p = plan(&s, &running, UID, Some(&obs(|o| o.started = true)), t(31));
    assert_deadline_exceeded(&p);
    assert_eq!(p.actions, [Action::Forget { unique: UID.into() }], "a running attempt cannot be recalled");
    // A result arriving later changes nothing.
    let late = obs(|o| o.outcome = Some(AttemptOutcome::Complete(b"late".to_vec())));
    let after = plan(&s, &p.status, UID, Some(&late), t(40));
    assert_eq!(after.status, p.status);
    assert!(after.actions.is_empty());
}

#[test]
fn deadline_during_a_retry_backoff_submits_no_further_retry() {
    let s = deadline(30, 5);
    let queued = submitted(&s, &JobStatus::default(), t(0)).status;
    let fail = obs(|o| o.outcome = Some(AttemptOutcome::Fail));
    let mut backoff = plan(&s, &queued, UID, Some(&fail), t(25)).status;
    assert_eq!(backoff.phase, JobPhase::Pending);
    backoff.next_attempt_time = Some(Time(t(40)));
    let p = plan(&s, &backoff, UID, None, t(30));
    assert_deadline_exceeded(&p);
    assert!(p.actions.is_empty());
}

#[test]
fn deadline_before_the_first_attempt_is_not_running_yet() {
    // No start time (runAt in the future): the deadline has not begun.
    let mut s = deadline(30, 0);
    s.run_at = Some(Time(t(100)));
    let p = plan(&s, &JobStatus::default(), UID, None, t(50));
    assert_eq!(p.status.phase, JobPhase::Pending);
    assert_eq!(p.requeue, Some(Duration::from_secs(50)));
    let started = submitted(&s, &JobStatus::default(), t(100));
    assert_eq!(started.requeue, Some(Duration::from_secs(30)), "counted from the first submission");
}

#[test]
fn deadline_after_success_changes_nothing() {
    let s = deadline(30, 0);
    let queued = submitted(&s, &JobStatus::default(), t(0)).status;
    let done = plan(&s, &queued, UID, Some(&obs(|o| o.outcome = Some(AttemptOutcome::Complete(b"x".to_vec())))), t(5));
    assert_eq!(done.status.phase, JobPhase::Succeeded);
    let later = plan(&s, &done.status, UID, None, t(100));
    assert_eq!(later.status, done.status);
    assert!(later.actions.is_empty());
}

#[test]
fn deadline_covers_every_step_of_a_chain() {
    let mut s = deadline(30, 0);
    s.next = vec!["upper".into()];
    let queued = submitted(&s, &JobStatus::default(), t(0)).status;
    let o = obs(|o| o.outcome = Some(AttemptOutcome::Complete(b"cba".to_vec())));
    let second = plan(&s, &queued, UID, Some(&o), t(20)).status;
    assert_eq!((second.current_step, second.phase), (1, JobPhase::Queued));
    let p = plan(&s, &second, UID, None, t(30));
    assert_deadline_exceeded(&p);
    assert_eq!(p.status.steps[1].phase, JobPhase::Failed);
}

// ---- spec.suspend ----

fn suspended(mut s: JobSpec) -> JobSpec {
    s.suspend = true;
    s
}

fn condition_of<'a>(status: &'a JobStatus, type_: &str) -> Option<(&'a str, &'a str)> {
    status.conditions.iter().find(|c| c.type_ == type_).map(|c| (c.status.as_str(), c.reason.as_str()))
}

#[test]
fn a_job_created_suspended_submits_nothing_until_resumed() {
    let s = suspended(deadline(30, 0));
    let p = plan(&s, &JobStatus::default(), UID, None, t(0));
    assert_eq!(p.status.phase, JobPhase::Suspended);
    assert_eq!(condition_of(&p.status, condition::SUSPENDED), Some(("True", reason::SUSPENDED)));
    assert!(p.actions.is_empty());
    assert_eq!(p.requeue, None, "nothing to wake up for: a spec change resumes it");
    assert_eq!(p.events.iter().map(|e| e.reason).collect::<Vec<_>>(), ["Suspended"]);
    // Staying suspended is quiet (no second event), however long, and the deadline does not run.
    let later = plan(&s, &p.status, UID, None, t(1000));
    assert_eq!(later.status, p.status);
    assert!(later.events.is_empty() && later.actions.is_empty());
    // Resumed: submitted at once, the deadline counting from the resume.
    let resumed = plan(&deadline(30, 0), &p.status, UID, None, t(2000));
    assert_eq!(resumed.status.phase, JobPhase::Queued);
    assert_eq!(condition_of(&resumed.status, condition::SUSPENDED), Some(("False", reason::RESUMED)));
    assert_eq!(resumed.status.start_time, Some(Time(t(2000))));
    assert_eq!(resumed.requeue, Some(Duration::from_secs(30)));
    assert_eq!(resumed.events.iter().map(|e| e.reason).collect::<Vec<_>>(), ["Resumed", "Submitted"]);
}

#[test]
fn suspending_a_queued_attempt_withdraws_it_and_resuming_resubmits_the_same_key() {
    let s = spec();
    let queued = submitted(&s, &JobStatus::default(), t(0)).status;
    let p = plan(&suspended(spec()), &queued, UID, Some(&obs(|_| {})), t(1));
    assert_eq!(p.actions, [Action::Cancel { unique: UID.into() }]);
    assert_eq!(p.status.phase, JobPhase::Suspended);
    assert_eq!(p.status.attempts, 0, "the withdrawn attempt does not count");
    // Also when nobody followed the attempt (the operator restarted): cancelled by the written handle.
    let p2 = plan(&suspended(spec()), &queued, UID, None, t(1));
    assert_eq!(p2.actions, [Action::Cancel { unique: UID.into() }]);
    let resumed = submitted(&s, &p.status, t(5));
    assert_eq!(resumed.status.phase, JobPhase::Queued);
    assert_eq!(resumed.status.attempts, 1);
    assert_eq!(
        resumed.actions,
        [Action::Submit { unique: UID.into(), function: "reverse".into(), payload: PayloadFrom::Spec }],
        "the same key: the broker coalesces it with a run that slipped past the cancel"
    );
}

#[test]
fn a_running_attempt_finishes_while_suspended_and_its_result_is_kept() {
    let s = spec();
    let queued = submitted(&s, &JobStatus::default(), t(0)).status;
    let running = plan(&s, &queued, UID, Some(&obs(|o| o.started = true)), t(1)).status;
    let p = plan(&suspended(spec()), &running, UID, Some(&obs(|o| o.started = true)), t(2));
    assert_eq!(p.status.phase, JobPhase::Running, "not recalled");
    assert!(p.actions.is_empty());
    assert_eq!(condition_of(&p.status, condition::SUSPENDED), Some(("True", reason::SUSPENDED)));
    let o = obs(|o| o.outcome = Some(AttemptOutcome::Complete(b"cba".to_vec())));
    let done = plan(&suspended(spec()), &p.status, UID, Some(&o), t(3));
    assert_eq!(done.status.phase, JobPhase::Succeeded);
    assert_eq!(done.status.result.as_deref(), Some("cba"));
}

#[test]
fn a_failed_attempt_is_not_retried_while_suspended_but_after_resuming() {
    let s = retrying(2);
    let queued = submitted(&s, &JobStatus::default(), t(0)).status;
    let running = plan(&s, &queued, UID, Some(&obs(|o| o.started = true)), t(1)).status;
    let fail = obs(|o| o.outcome = Some(AttemptOutcome::Fail));
    let p = plan(&suspended(retrying(2)), &running, UID, Some(&fail), t(2));
    assert_eq!(p.status.phase, JobPhase::Suspended);
    assert_eq!(p.actions, [Action::Forget { unique: UID.into() }]);
    // Long past the back-off: still nothing while suspended.
    let later = plan(&suspended(retrying(2)), &p.status, UID, None, t(100));
    assert!(later.actions.is_empty());
    // Resumed: the retry that was due is submitted.
    let resumed = submitted(&s, &later.status, t(101));
    assert_eq!(resumed.status.attempts, 2);
    assert_eq!(resumed.status.unique, Some(attempt_unique(UID, 0, 2)));
}

#[test]
fn resuming_before_the_backoff_ends_waits_for_it() {
    let s = retrying(2);
    let queued = submitted(&s, &JobStatus::default(), t(0)).status;
    let fail = obs(|o| o.outcome = Some(AttemptOutcome::Fail));
    let backoff = plan(&s, &queued, UID, Some(&fail), t(1)).status;
    assert_eq!(backoff.next_attempt_time, Some(Time(t(3))));
    let paused = plan(&suspended(retrying(2)), &backoff, UID, None, t(1));
    assert_eq!(paused.status.phase, JobPhase::Suspended);
    let resumed = plan(&s, &paused.status, UID, None, t(2));
    assert_eq!(resumed.status.phase, JobPhase::Pending);
    assert!(resumed.actions.is_empty());
    assert_eq!(resumed.requeue, Some(Duration::from_secs(1)));
}

#[test]
fn suspending_between_chain_steps_holds_the_next_step() {
    let mut s = spec();
    s.next = vec!["upper".into()];
    let queued = submitted(&s, &JobStatus::default(), t(0)).status;
    let mut held = s.clone();
    held.suspend = true;
    let o = obs(|o| o.outcome = Some(AttemptOutcome::Complete(b"cba".to_vec())));
    let p = plan(&held, &queued, UID, Some(&o), t(1));
    assert_eq!((p.status.current_step, p.status.phase), (1, JobPhase::Suspended));
    assert_eq!(p.actions, [Action::Forget { unique: UID.into() }]);
    let resumed = submitted(&s, &p.status, t(2));
    assert_eq!(resumed.status.unique, Some(attempt_unique(UID, 1, 1)));
}

#[test]
fn suspend_leaves_a_finished_job_alone() {
    let s = spec();
    let queued = submitted(&s, &JobStatus::default(), t(0)).status;
    let done = plan(&s, &queued, UID, Some(&obs(|o| o.outcome = Some(AttemptOutcome::Fail))), t(1)).status;
    let p = plan(&suspended(spec()), &done, UID, None, t(2));
    assert_eq!(p.status, done);
    assert!(p.actions.is_empty() && p.events.is_empty());
}

#[test]
fn a_suspended_job_does_not_hit_its_deadline_and_resuming_restarts_it() {
    let s = deadline(30, 0);
    let queued = submitted(&s, &JobStatus::default(), t(0)).status;
    let paused = plan(&suspended(deadline(30, 0)), &queued, UID, Some(&obs(|_| {})), t(20)).status;
    assert_eq!(paused.phase, JobPhase::Suspended);
    let still = plan(&suspended(deadline(30, 0)), &paused, UID, None, t(100));
    assert_eq!(still.status.phase, JobPhase::Suspended, "the deadline does not run while suspended");
    let resumed = plan(&s, &still.status, UID, None, t(100));
    assert_eq!(resumed.status.start_time, Some(Time(t(100))), "batch/v1 resets startTime on resume");
    assert_eq!(resumed.status.phase, JobPhase::Queued);
    assert_eq!(plan(&s, &resumed.status, UID, Some(&obs(|_| {})), t(129)).status.phase, JobPhase::Queued);
    assert_deadline_exceeded(&plan(&s, &resumed.status, UID, Some(&obs(|_| {})), t(130)));
}
