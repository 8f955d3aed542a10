//! `validate()` accepts good specs and reports every rule violation with the
//! right field and message.

use gearfleet_crd::{
    Backoff, DurationString, FunctionSpec, JobSpec, KeyRef, PayloadSource, RecycleSpec, RetryPolicy, ScalingPolicy,
    ScalingPolicyType, ScalingRules, SelectPolicy, ValidationError, WorkerPoolSpec, rules,
};
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};

fn template(image: &str) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: None,
        spec: Some(PodSpec {
            containers: vec![Container { name: "worker".into(), image: Some(image.into()), ..Default::default() }],
            ..Default::default()
        }),
    }
}

fn pool() -> WorkerPoolSpec {
    WorkerPoolSpec::new(template("example/worker:1"), vec![FunctionSpec::new("echo"), FunctionSpec::new("reverse")])
}

/// Assert that `errors` contains exactly one error, for `field`, whose message contains `text`.
#[track_caller]
fn assert_one(errors: Vec<ValidationError>, field: &str, text: &str) {
    assert_eq!(errors.len(), 1, "expected exactly one error, got {errors:#?}");
    let e = &errors[0];
    assert_eq!(e.field(), field, "{e}");
    let msg = e.to_string();
    assert!(msg.contains(text), "{msg:?} does not contain {text:?}");
    assert!(msg.starts_with(&format!("{field}: ")), "{msg:?}");
}

#[track_caller]
fn pool_err(f: impl FnOnce(&mut WorkerPoolSpec), field: &str, text: &str) {
    let mut p = pool();
    f(&mut p);
    assert!(p.validate().is_err());
    assert_one(p.validation_errors(), field, text);
}

#[test]
fn good_pools() {
    pool().validate().unwrap();

    let mut p = pool();
    p.max_replicas = Some(0);
    p.paused = true;
    p.crash_loop_limit = Some(0);
    p.functions[0].min_replicas = 0;
    p.functions[0].max_replicas = 1;
    p.functions[0].timeout = Some("1h30m".into());
    p.functions[0].retries =
        Some(RetryPolicy { limit: 100, backoff: Backoff { initial: "1s".into(), max: "1s".into() } });
    p.scaling.scale_up = Some(ScalingRules {
        stabilization_window: Some("0s".into()),
        policies: vec![ScalingPolicy { type_: ScalingPolicyType::Percent, value: 100, period: "15s".into() }],
        select_policy: SelectPolicy::Disabled,
    });
    p.recycle = Some(RecycleSpec {
        schedule: Some("@daily".into()),
        time_zone: Some("Europe/Berlin".into()),
        ..Default::default()
    });
    p.validate().unwrap();

    // Per-function templates instead of a pool template.
    let mut p = pool();
    p.template = None;
    for f in &mut p.functions {
        f.template = Some(template("example/other:1"));
    }
    p.validate().unwrap();

    // minReplicas summing exactly to the pool cap.
    let mut p = pool();
    p.functions[0].min_replicas = 2;
    p.functions[1].min_replicas = 3;
    p.max_replicas = Some(5);
    p.validate().unwrap();

    // 64 functions is the maximum.
    let mut p = pool();
    p.functions = (0..64).map(|i| FunctionSpec::new(format!("f{i}"))).collect();
    p.validate().unwrap();
}

#[test]
fn function_list_bounds() {
    pool_err(|p| p.functions.clear(), "spec.functions", "at least 1");
    pool_err(
        |p| p.functions = (0..65).map(|i| FunctionSpec::new(format!("f{i}"))).collect(),
        "spec.functions",
        "at most 64",
    );
}

#[test]
fn function_names_must_be_unique() {
    pool_err(|p| p.functions[1].name = "echo".into(), "spec.functions", "function names must be unique");
    // Names differing only in case are distinct functions.
    let mut p = pool();
    p.functions[1].name = "Echo".into();
    p.validate().unwrap();
}

#[test]
fn function_name_format() {
    for bad in ["", "-echo", "echo-", "a b", "a:b", "é", &"x".repeat(64)] {
        pool_err(|p| p.functions[0].name = bad.into(), "spec.functions[0].name", "invalid function name");
    }
}

#[test]
fn min_must_not_exceed_max() {
    pool_err(
        |p| {
            p.functions[1].min_replicas = 5;
            p.functions[1].max_replicas = 4;
        },
        "spec.functions[1]",
        rules::FUNCTION_MIN_MAX.message,
    );
    let mut p = pool();
    p.functions[1].min_replicas = 4;
    p.functions[1].max_replicas = 4;
    p.validate().unwrap();
}

#[test]
fn function_ranges() {
    pool_err(|p| p.functions[0].min_replicas = -1, "spec.functions[0].minReplicas", "at least 0");
    pool_err(
        |p| {
            p.functions[0].max_replicas = 0;
        },
        "spec.functions[0].maxReplicas",
        "at least 1",
    );
    pool_err(|p| p.functions[0].target_jobs_per_worker = 0, "spec.functions[0].targetJobsPerWorker", "at least 1");
    pool_err(|p| p.functions[0].activation_threshold = -1, "spec.functions[0].activationThreshold", "at least 0");
}

#[test]
fn function_timeout_and_retries() {
    pool_err(|p| p.functions[0].timeout = Some("30 seconds".into()), "spec.functions[0].timeout", "invalid duration");
    pool_err(|p| p.functions[0].timeout = Some("0s".into()), "spec.functions[0].timeout", "greater than zero");
    pool_err(
        |p| p.functions[0].retries = Some(RetryPolicy { limit: 101, backoff: Backoff::default() }),
        "spec.functions[0].retries.limit",
        "between 0 and 100",
    );
    pool_err(
        |p| {
            p.functions[0].retries =
                Some(RetryPolicy { limit: 1, backoff: Backoff { initial: "10m".into(), max: "5m".into() } })
        },
        "spec.functions[0].retries.backoff",
        rules::BACKOFF_ORDER_MESSAGE,
    );
    pool_err(
        |p| {
            p.functions[0].retries =
                Some(RetryPolicy { limit: 1, backoff: Backoff { initial: "1x".into(), max: "5m".into() } })
        },
        "spec.functions[0].retries.backoff.initial",
        "invalid duration",
    );
}

#[test]
fn pool_max_replicas() {
    pool_err(|p| p.max_replicas = Some(-1), "spec.maxReplicas", "at least 0");
    pool_err(
        |p| {
            p.functions[0].min_replicas = 3;
            p.functions[1].min_replicas = 3;
            p.max_replicas = Some(5);
        },
        "spec",
        rules::POOL_MIN_REPLICAS_WITHIN_MAX.message,
    );
}

#[test]
fn template_required_somewhere() {
    pool_err(
        |p| {
            p.template = None;
            p.functions[0].template = Some(template("x"));
        },
        "spec",
        rules::POOL_TEMPLATE_REQUIRED.message,
    );
}

#[test]
fn scaling_durations_and_policies() {
    pool_err(|p| p.scaling.poll_interval = "0s".into(), "spec.scaling.pollInterval", "greater than zero");
    pool_err(|p| p.scaling.cooldown = "1.5m".into(), "spec.scaling.cooldown", "invalid duration");
    pool_err(|p| p.scaling.drain_timeout = DurationString::new(""), "spec.scaling.drainTimeout", "must not be empty");
    pool_err(
        |p| {
            p.scaling.scale_down =
                Some(ScalingRules { stabilization_window: Some("5 m".into()), ..ScalingRules::default_scale_down() })
        },
        "spec.scaling.scaleDown.stabilizationWindow",
        "invalid duration",
    );
    let policy = ScalingPolicy { type_: ScalingPolicyType::Pods, value: 1, period: "1m".into() };
    pool_err(
        |p| {
            p.scaling.scale_up =
                Some(ScalingRules { policies: vec![policy.clone(); 9], ..ScalingRules::default_scale_up() })
        },
        "spec.scaling.scaleUp.policies",
        "at most 8",
    );
    pool_err(
        |p| {
            p.scaling.scale_up = Some(ScalingRules {
                policies: vec![ScalingPolicy { value: 0, ..policy.clone() }],
                ..ScalingRules::default_scale_up()
            })
        },
        "spec.scaling.scaleUp.policies[0].value",
        "at least 1",
    );
    pool_err(
        |p| {
            p.scaling.scale_up = Some(ScalingRules {
                policies: vec![ScalingPolicy { period: "0s".into(), ..policy.clone() }],
                ..ScalingRules::default_scale_up()
            })
        },
        "spec.scaling.scaleUp.policies[0].period",
        "greater than zero",
    );
}

#[test]
fn recycle_rules() {
    pool_err(|p| p.recycle = Some(RecycleSpec::default()), "spec.recycle", rules::RECYCLE_HAS_TRIGGER.message);
    pool_err(
        |p| {
            p.recycle =
                Some(RecycleSpec { max_age: Some("24h".into()), time_zone: Some("UTC".into()), ..Default::default() })
        },
        "spec.recycle",
        rules::RECYCLE_TIME_ZONE_NEEDS_SCHEDULE.message,
    );
    for bad in ["0 3 * *", "61 * * * *", "@every 5m", "0 3 * * * *"] {
        pool_err(
            |p| p.recycle = Some(RecycleSpec { schedule: Some(bad.into()), ..Default::default() }),
            "spec.recycle.schedule",
            "invalid cron schedule",
        );
    }
    pool_err(
        |p| {
            p.recycle =
                Some(RecycleSpec { schedule: Some(format!("0 3 * * {}", "1,".repeat(70) + "1")), ..Default::default() })
        },
        "spec.recycle.schedule",
        "at most 128 characters",
    );
    pool_err(
        |p| {
            p.recycle = Some(RecycleSpec {
                schedule: Some("0 3 * * *".into()),
                time_zone: Some("Europe Berlin".into()),
                ..Default::default()
            })
        },
        "spec.recycle.timeZone",
        "invalid time zone",
    );
    pool_err(
        |p| p.recycle = Some(RecycleSpec { max_jobs: Some(0), ..Default::default() }),
        "spec.recycle.maxJobs",
        "at least 1",
    );
    pool_err(
        |p| p.recycle = Some(RecycleSpec { max_age: Some("0s".into()), ..Default::default() }),
        "spec.recycle.maxAge",
        "greater than zero",
    );
    pool_err(
        |p| p.recycle = Some(RecycleSpec { max_jobs: Some(100), max_unavailable: 0, ..Default::default() }),
        "spec.recycle.maxUnavailable",
        "at least 1",
    );
}

#[test]
fn crash_loop_limit() {
    pool_err(|p| p.crash_loop_limit = Some(-1), "spec.crashLoopLimit", "at least 0");
}

#[test]
fn all_errors_are_reported() {
    let mut p = pool();
    p.functions[0].name = "bad name".into();
    p.functions[1].min_replicas = 20;
    p.scaling.poll_interval = "soon".into();
    let errors = p.validation_errors();
    let fields: Vec<_> = errors.iter().map(ValidationError::field).collect();
    assert_eq!(fields, ["spec.functions[0].name", "spec.functions[1]", "spec.scaling.pollInterval"]);
    // validate() returns the first one.
    assert_eq!(p.validate().unwrap_err(), errors[0]);
}

// ---------------------------------------------------------------- Job

fn job() -> JobSpec {
    JobSpec::new("reverse").with_payload("hello")
}

#[track_caller]
fn job_err(f: impl FnOnce(&mut JobSpec), field: &str, text: &str) {
    let mut j = job();
    f(&mut j);
    assert!(j.validate().is_err());
    assert_one(j.validation_errors(), field, text);
}

#[test]
fn good_jobs() {
    job().validate().unwrap();
    JobSpec::new("reverse").validate().unwrap();

    let mut j = JobSpec::new("image.resize");
    j.payload_from =
        Some(PayloadSource { secret_key_ref: Some(KeyRef::new("job-input", "payload.bin")), ..Default::default() });
    j.unique = Some("x".repeat(64));
    j.timeout = Some("10m".into());
    j.retries = Some(RetryPolicy::default());
    j.next = (0..16).map(|i| format!("step-{i}")).collect();
    j.ttl_seconds_after_finished = Some(0);
    j.validate().unwrap();
}

#[test]
fn job_function_names() {
    job_err(|j| j.function = "no spaces".into(), "spec.function", "invalid function name");
    job_err(|j| j.next = vec!["ok".into(), "not ok".into()], "spec.next[1]", "invalid function name");
    job_err(|j| j.next = (0..17).map(|i| format!("s{i}")).collect(), "spec.next", "at most 16");
}

#[test]
fn payload_rules() {
    job_err(
        |j| {
            j.payload_from =
                Some(PayloadSource { config_map_key_ref: Some(KeyRef::new("cfg", "payload")), ..Default::default() })
        },
        "spec",
        rules::JOB_PAYLOAD_EXCLUSIVE.message,
    );
    job_err(
        |j| {
            j.payload = None;
            j.payload_from = Some(PayloadSource::default());
        },
        "spec.payloadFrom",
        rules::PAYLOAD_FROM_EXACTLY_ONE.message,
    );
    job_err(
        |j| {
            j.payload = None;
            j.payload_from = Some(PayloadSource {
                config_map_key_ref: Some(KeyRef::new("cfg", "payload")),
                secret_key_ref: Some(KeyRef::new("sec", "payload")),
            });
        },
        "spec.payloadFrom",
        rules::PAYLOAD_FROM_EXACTLY_ONE.message,
    );
    job_err(
        |j| {
            j.payload = None;
            j.payload_from = Some(PayloadSource {
                config_map_key_ref: Some(KeyRef::new("Bad_Name", "payload")),
                ..Default::default()
            });
        },
        "spec.payloadFrom.configMapKeyRef.name",
        "invalid object name",
    );
    job_err(
        |j| {
            j.payload = None;
            j.payload_from =
                Some(PayloadSource { secret_key_ref: Some(KeyRef::new("sec", "a/b")), ..Default::default() });
        },
        "spec.payloadFrom.secretKeyRef.key",
        "invalid key",
    );
    job_err(|j| j.payload = Some("x".repeat(256 * 1024 + 1)), "spec.payload", "at most 262144 characters");
    // The limit counts characters, like the API server.
    let mut j = job();
    j.payload = Some("é".repeat(256 * 1024));
    j.validate().unwrap();
}

#[test]
fn unique_rules() {
    job_err(|j| j.unique = Some("x".repeat(65)), "spec.unique", "at most 64");
    job_err(|j| j.unique = Some(String::new()), "spec.unique", "must not be empty");
    job_err(|j| j.unique = Some("a\0b".into()), "spec.unique", "NUL");
}

#[test]
fn job_timeout_retries_ttl() {
    job_err(|j| j.timeout = Some("forever".into()), "spec.timeout", "invalid duration");
    job_err(|j| j.timeout = Some("0ms".into()), "spec.timeout", "greater than zero");
    job_err(
        |j| j.retries = Some(RetryPolicy { limit: -1, backoff: Backoff::default() }),
        "spec.retries.limit",
        "between 0 and 100",
    );
    job_err(
        |j| j.retries = Some(RetryPolicy { limit: 3, backoff: Backoff { initial: "1h".into(), max: "1m".into() } }),
        "spec.retries.backoff",
        "backoff.initial must not exceed backoff.max",
    );
    job_err(|j| j.ttl_seconds_after_finished = Some(-5), "spec.ttlSecondsAfterFinished", "at least 0");
}

#[test]
fn job_spec_is_immutable() {
    let old = job();
    job().validate_update(&old).unwrap();
    let mut new = job();
    new.payload = Some("changed".into());
    let err = new.validate_update(&old).unwrap_err();
    assert_eq!(err.to_string(), "spec: Job spec is immutable");
}

#[test]
fn job_deadline_and_failure_policy() {
    use gearfleet_crd::job::{AttemptFailure, FailureAction, FailurePolicy, FailurePolicyRule};
    job_err(|j| j.active_deadline_seconds = Some(0), "spec.activeDeadlineSeconds", "at least 1");
    let mut j = job();
    j.active_deadline_seconds = Some(1);
    j.suspend = true;
    j.validate().unwrap();
    let rule = |on: Vec<AttemptFailure>| FailurePolicyRule { action: FailureAction::FailJob, on_failures: on };
    job_err(
        |j| j.failure_policy = Some(FailurePolicy { rules: vec![rule(vec![])] }),
        "spec.failurePolicy.rules[0].onFailures",
        "at least 1",
    );
    job_err(
        |j| j.failure_policy = Some(FailurePolicy { rules: vec![rule(vec![AttemptFailure::Timeout]); 4] }),
        "spec.failurePolicy.rules",
        "at most 3",
    );
    let mut j = job();
    j.failure_policy = Some(FailurePolicy { rules: vec![rule(vec![AttemptFailure::WorkException])] });
    j.validate().unwrap();
    assert_eq!(j.failure_action(AttemptFailure::WorkException), FailureAction::FailJob);
    assert_eq!(j.failure_action(AttemptFailure::WorkFail), FailureAction::Retry, "no rule: retried");
    assert_eq!(job().failure_action(AttemptFailure::Timeout), FailureAction::Retry, "no policy: retried");
}

#[test]
fn job_suspend_is_the_only_mutable_field() {
    let old = job();
    let mut new = job();
    new.suspend = true;
    new.validate_update(&old).unwrap();
    old.validate_update(&new).unwrap();
    new.active_deadline_seconds = Some(5);
    assert_eq!(new.validate_update(&old).unwrap_err().to_string(), "spec: Job spec is immutable");
}
