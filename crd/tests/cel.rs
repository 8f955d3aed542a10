//! Evaluates the CRDs' CEL rules client-side (kube's CEL interpreter) and
//! checks that they agree with the Rust `validate()` methods.
//!
//! Needs the `cel` feature: `cargo test -p gearfleet-crd --features cel`.
#![cfg(feature = "cel")]

use gearfleet_crd::{Job, JobSpec, WorkerPool, WorkerPoolSpec, rules};
use kube::CustomResourceExt;
use kube::core::cel::Validator;
use serde_json::{Value, json};

fn schema(crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition) -> Value {
    let v = &crd.spec.versions[0];
    serde_json::to_value(v.schema.as_ref().unwrap().open_api_v3_schema.as_ref().unwrap()).unwrap()
}

/// CEL failure messages for `object` (and `old` for transition rules).
fn cel_messages(schema: &Value, object: &Value, old: Option<&Value>) -> Vec<String> {
    match Validator::new().validate(schema, object, old) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(|e| e.message.clone()).collect(),
    }
}

fn pool_object(spec: Value) -> Value {
    json!({
        "apiVersion": "gearfleet.dev/v1alpha1",
        "kind": "WorkerPool",
        "metadata": {"name": "p", "namespace": "default"},
        "spec": spec,
    })
}

fn job_object(spec: Value) -> Value {
    json!({
        "apiVersion": "gearfleet.dev/v1alpha1",
        "kind": "Job",
        "metadata": {"name": "j", "namespace": "default"},
        "spec": spec,
    })
}

fn tmpl() -> Value {
    json!({"spec": {"containers": [{"name": "w", "image": "x"}]}})
}

/// `(spec, expected CEL message or None)`; written as raw JSON (not through
/// the Rust types) so that omitted fields really are absent, as in a
/// user's manifest.
fn pool_cases() -> Vec<(Value, Option<&'static str>)> {
    vec![
        (json!({"template": tmpl(), "functions": [{"name": "a"}]}), None),
        (json!({"template": tmpl(), "functions": [{"name": "a", "minReplicas": 3, "maxReplicas": 3}]}), None),
        (
            json!({"template": tmpl(), "functions": [{"name": "a", "minReplicas": 11}]}),
            Some(rules::FUNCTION_MIN_MAX.message),
        ),
        (
            json!({"template": tmpl(), "functions": [{"name": "a", "minReplicas": 4, "maxReplicas": 3}]}),
            Some(rules::FUNCTION_MIN_MAX.message),
        ),
        (
            json!({"template": tmpl(), "functions": [{"name": "a"}, {"name": "b"}, {"name": "a"}]}),
            Some(rules::FUNCTION_NAMES_UNIQUE.message),
        ),
        (json!({"template": tmpl(), "functions": [{"name": "a"}, {"name": "A"}]}), None),
        (
            json!({"template": tmpl(), "maxReplicas": 5, "functions": [
                {"name": "a", "minReplicas": 2}, {"name": "b", "minReplicas": 3}]}),
            None,
        ),
        (
            json!({"template": tmpl(), "maxReplicas": 4, "functions": [
                {"name": "a", "minReplicas": 2}, {"name": "b", "minReplicas": 3}]}),
            Some(rules::POOL_MIN_REPLICAS_WITHIN_MAX.message),
        ),
        (json!({"functions": [{"name": "a", "template": tmpl()}, {"name": "b", "template": tmpl()}]}), None),
        (
            json!({"functions": [{"name": "a", "template": tmpl()}, {"name": "b"}]}),
            Some(rules::POOL_TEMPLATE_REQUIRED.message),
        ),
        (json!({"template": tmpl(), "functions": [{"name": "a"}], "recycle": {"maxJobs": 5}}), None),
        (
            json!({"template": tmpl(), "functions": [{"name": "a"}], "recycle": {"maxUnavailable": 2}}),
            Some(rules::RECYCLE_HAS_TRIGGER.message),
        ),
        (
            json!({"template": tmpl(), "functions": [{"name": "a"}],
                   "recycle": {"schedule": "0 3 * * *", "timeZone": "UTC"}}),
            None,
        ),
        (
            json!({"template": tmpl(), "functions": [{"name": "a"}],
                   "recycle": {"maxAge": "1d", "timeZone": "UTC"}}),
            Some(rules::RECYCLE_TIME_ZONE_NEEDS_SCHEDULE.message),
        ),
    ]
}

fn job_cases() -> Vec<(Value, Option<&'static str>)> {
    let cm = json!({"configMapKeyRef": {"name": "c", "key": "k"}});
    let sec = json!({"secretKeyRef": {"name": "s", "key": "k"}});
    vec![
        (json!({"function": "f"}), None),
        (json!({"function": "f", "payload": "x"}), None),
        (json!({"function": "f", "payloadFrom": cm}), None),
        (json!({"function": "f", "payloadFrom": sec}), None),
        (json!({"function": "f", "payload": "x", "payloadFrom": cm}), Some(rules::JOB_PAYLOAD_EXCLUSIVE.message)),
        (json!({"function": "f", "payloadFrom": {}}), Some(rules::PAYLOAD_FROM_EXACTLY_ONE.message)),
        (
            json!({"function": "f", "payloadFrom": {
                "configMapKeyRef": {"name": "c", "key": "k"},
                "secretKeyRef": {"name": "s", "key": "k"}}}),
            Some(rules::PAYLOAD_FROM_EXACTLY_ONE.message),
        ),
    ]
}

#[test]
fn workerpool_cel_rules_match_validate() {
    let schema = schema(WorkerPool::crd());
    for (spec, expected) in pool_cases() {
        let got = cel_messages(&schema, &pool_object(spec.clone()), None);
        let expected_cel: Vec<String> = expected.iter().map(|m| m.to_string()).collect();
        assert_eq!(got, expected_cel, "CEL on {spec}");

        let typed: WorkerPoolSpec = serde_json::from_value(spec.clone()).unwrap();
        let rust: Vec<String> = typed.validation_errors().iter().map(ToString::to_string).collect();
        match expected {
            None => assert!(rust.is_empty(), "validate() on {spec}: {rust:?}"),
            Some(m) => assert!(rust.len() == 1 && rust[0].ends_with(m), "validate() on {spec}: {rust:?}"),
        }
    }
}

#[test]
fn job_cel_rules_match_validate() {
    let schema = schema(Job::crd());
    for (spec, expected) in job_cases() {
        let got = cel_messages(&schema, &job_object(spec.clone()), None);
        let expected_cel: Vec<String> = expected.iter().map(|m| m.to_string()).collect();
        assert_eq!(got, expected_cel, "CEL on {spec}");

        let typed: JobSpec = serde_json::from_value(spec.clone()).unwrap();
        let rust: Vec<String> = typed.validation_errors().iter().map(ToString::to_string).collect();
        match expected {
            None => assert!(rust.is_empty(), "validate() on {spec}: {rust:?}"),
            Some(m) => assert!(rust.len() == 1 && rust[0].ends_with(m), "validate() on {spec}: {rust:?}"),
        }
    }
}

#[test]
fn job_spec_is_immutable() {
    let schema = schema(Job::crd());
    let old = job_object(json!({"function": "f", "payload": "a"}));
    // Unchanged spec (metadata may change).
    let mut same = old.clone();
    same["metadata"]["labels"] = json!({"x": "y"});
    assert!(cel_messages(&schema, &same, Some(&old)).is_empty());
    // Changed spec.
    let changed = job_object(json!({"function": "f", "payload": "b"}));
    assert_eq!(cel_messages(&schema, &changed, Some(&old)), [rules::JOB_SPEC_IMMUTABLE.message]);
    // Not evaluated on create.
    assert!(cel_messages(&schema, &changed, None).is_empty());
}

#[test]
fn only_suspend_may_change() {
    let schema = schema(Job::crd());
    let old = job_object(json!({"function": "f", "payload": "a", "activeDeadlineSeconds": 30}));
    for (spec, ok) in [
        (json!({"function": "f", "payload": "a", "activeDeadlineSeconds": 30, "suspend": true}), true),
        (json!({"function": "f", "payload": "a", "activeDeadlineSeconds": 30, "suspend": false}), true),
        (json!({"function": "g", "payload": "a", "activeDeadlineSeconds": 30}), false),
        (json!({"function": "f", "activeDeadlineSeconds": 30}), false),
        (json!({"function": "f", "payload": "a"}), false),
        (json!({"function": "f", "payload": "a", "activeDeadlineSeconds": 60}), false),
        (json!({"function": "f", "payload": "a", "activeDeadlineSeconds": 30, "timeout": "1s"}), false),
        (
            json!({"function": "f", "payload": "a", "activeDeadlineSeconds": 30,
                   "failurePolicy": {"rules": [{"action": "FailJob", "onFailures": ["Timeout"]}]}}),
            false,
        ),
    ] {
        let got = cel_messages(&schema, &job_object(spec.clone()), Some(&old));
        let expected: &[&str] = if ok { &[] } else { &[rules::JOB_SPEC_IMMUTABLE.message] };
        assert_eq!(got, expected, "{spec}");
        // validate_update agrees.
        let typed: JobSpec = serde_json::from_value(spec).unwrap();
        let old_typed: JobSpec = serde_json::from_value(old["spec"].clone()).unwrap();
        assert_eq!(typed.validate_update(&old_typed).is_ok(), ok);
    }
}

#[test]
fn examples_pass_cel() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let pool: Value =
        serde_yaml::from_str(&std::fs::read_to_string(root.join("examples/workerpool.yaml")).unwrap()).unwrap();
    assert!(cel_messages(&schema(WorkerPool::crd()), &pool, None).is_empty());
    let job: Value = serde_yaml::from_str(&std::fs::read_to_string(root.join("examples/job.yaml")).unwrap()).unwrap();
    assert!(cel_messages(&schema(Job::crd()), &job, None).is_empty());
}
