//! Checks of the generated CRDs: committed files are up to date, and the
//! schema carries the names, columns, patterns and CEL rules we rely on.

use std::path::PathBuf;
use std::sync::OnceLock;

use gearfleet_crd::{Job, WorkerPool, rules};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde::Deserialize;
use serde_json::Value;

const REGEN: &str = "run `scripts/generate.sh` from the workspace root";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn schema_of(crd: &CustomResourceDefinition) -> Value {
    let v = &crd.spec.versions[0];
    serde_json::to_value(v.schema.as_ref().unwrap().open_api_v3_schema.as_ref().unwrap()).unwrap()
}

/// Walk a dotted path where `x` means `.properties.x` and `x[]` additionally `.items`.
fn node<'a>(schema: &'a Value, path: &str) -> &'a Value {
    let mut n = schema;
    for part in path.split('.') {
        let (name, items) = match part.strip_suffix("[]") {
            Some(name) => (name, true),
            None => (part, false),
        };
        n = n
            .get("properties")
            .and_then(|p| p.get(name))
            .unwrap_or_else(|| panic!("no property {name:?} in path {path:?}"));
        if items {
            n = n.get("items").unwrap_or_else(|| panic!("{path}: not an array"));
        }
    }
    n
}

// Generating the WorkerPool schema (with two pod templates) is slow in debug
// builds, so do it once per test binary.
fn pool_schema() -> Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| schema_of(&WorkerPool::crd())).clone()
}

fn job_schema() -> Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| schema_of(&Job::crd())).clone()
}

#[test]
fn committed_crds_are_up_to_date() {
    let files = gearfleet_crd::crd_files().unwrap();
    assert_eq!(files.len(), 2);
    for (name, expected) in &files {
        let path = repo_root().join("charts/gearfleet/crds").join(name);
        let actual =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}; {REGEN}", path.display()));
        assert!(actual == *expected, "{} is out of date with crd/src; {REGEN}", path.display());
    }
}

#[test]
fn deploy_crds_equal_chart_crds() {
    let text = std::fs::read_to_string(repo_root().join("deploy/crds.yaml")).unwrap();
    let deployed: Vec<CustomResourceDefinition> = serde_yaml::Deserializer::from_str(&text)
        .map(|doc| CustomResourceDefinition::deserialize(doc).unwrap())
        .collect();
    let expected: Vec<CustomResourceDefinition> = gearfleet_crd::crds().into_iter().map(|(_, crd)| crd).collect();
    assert!(deployed == expected, "deploy/crds.yaml differs from the CRDs of crd/src; {REGEN}");
}

#[test]
fn committed_files_have_header_and_parse() {
    for (name, _) in gearfleet_crd::crds() {
        let text = std::fs::read_to_string(repo_root().join("charts/gearfleet/crds").join(name)).unwrap();
        assert!(text.starts_with(gearfleet_crd::GENERATED_HEADER), "{name}");
        let crd: CustomResourceDefinition = serde_yaml::from_str(&text).unwrap();
        assert_eq!(format!("{}.yaml", crd.metadata.name.unwrap()), name);
    }
}

/// `kubectl apply` (client-side) keeps the whole object in an annotation limited to 256 KiB.
#[test]
fn crds_fit_a_client_side_apply() {
    for (name, yaml) in gearfleet_crd::crd_files().unwrap() {
        let json = serde_json::to_vec(&serde_yaml::from_str::<Value>(&yaml).unwrap()).unwrap();
        assert!(json.len() < 200 * 1024, "{name} is {} bytes of JSON, too close to the 256 KiB limit", json.len());
    }
}

#[test]
fn names_and_subresources() {
    for (crd, plural, kind, short) in
        [(WorkerPool::crd(), "workerpools", "WorkerPool", "wp"), (Job::crd(), "jobs", "Job", "gj")]
    {
        let s = &crd.spec;
        assert_eq!(s.group, "gearfleet.dev");
        assert_eq!(s.scope, "Namespaced");
        assert_eq!(s.names.plural, plural);
        assert_eq!(s.names.kind, kind);
        assert_eq!(s.names.short_names.as_deref(), Some(&[short.to_owned()][..]));
        assert_eq!(s.names.categories.as_deref(), Some(&["gearfleet".to_owned()][..]));
        assert_eq!(s.versions.len(), 1);
        let v = &s.versions[0];
        assert_eq!(v.name, "v1alpha1");
        assert!(v.served && v.storage);
        assert!(v.subresources.as_ref().unwrap().status.is_some());
    }
}

fn columns(crd: &CustomResourceDefinition) -> Vec<(String, String, String)> {
    crd.spec.versions[0]
        .additional_printer_columns
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| (c.name.clone(), c.type_.clone(), c.json_path.clone()))
        .collect()
}

#[test]
fn printer_columns() {
    let cols = columns(&WorkerPool::crd());
    let names: Vec<_> = cols.iter().map(|c| c.0.as_str()).collect();
    let default = ["Ready", "Phase", "Functions", "Desired", "Available", "Queued"];
    assert_eq!(names, [&default[..], &["Degraded", "Pods", "Running", "Paused", "Names", "Age"]].concat());
    assert!(cols.contains(&(
        "Ready".into(),
        "string".into(),
        r#".status.conditions[?(@.type=="Ready")].status"#.into()
    )));
    assert!(cols.contains(&("Queued".into(), "integer".into(), ".status.queued".into())));
    assert!(cols.contains(&("Functions".into(), "string".into(), ".status.readyFunctions".into())));
    // The default `kubectl get wp` shows health at a glance; the rest is for `-o wide`.
    let crd = WorkerPool::crd();
    let wide: Vec<_> = crd.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .filter(|c| c.priority == Some(1))
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(wide, ["Degraded", "Pods", "Running", "Paused", "Names"]);

    let cols = columns(&Job::crd());
    let names: Vec<_> = cols.iter().map(|c| c.0.as_str()).collect();
    assert_eq!(names, ["Function", "Phase", "Progress", "Attempts", "Step", "Age"]);

    // Every column points at a field that exists in the schema.
    for (crd, schema) in [(WorkerPool::crd(), pool_schema()), (Job::crd(), job_schema())] {
        for (_, _, json_path) in columns(&crd) {
            if json_path.starts_with(".metadata") {
                continue;
            }
            // `.a[*].b` and `.a[?(@.x=="y")].b` both become `a[].b`.
            let mut dotted = json_path.trim_start_matches('.').replace("[*]", "[]");
            if let Some(i) = dotted.find("[?(") {
                let j = i + dotted[i..].find(")]").unwrap() + 2;
                dotted.replace_range(i..j, "[]");
            }
            node(&schema, &dotted);
        }
    }
}

#[test]
fn selectable_fields() {
    let crd = Job::crd();
    let fields: Vec<_> =
        crd.spec.versions[0].selectable_fields.as_ref().unwrap().iter().map(|f| f.json_path.clone()).collect();
    assert_eq!(fields, [".spec.function", ".status.phase"]);
}

fn rules_at(schema: &Value, path: &str) -> Vec<(String, String)> {
    node(schema, path)
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .map(|rules| {
            rules
                .iter()
                .map(|r| (r["rule"].as_str().unwrap().to_owned(), r["message"].as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_cel_rule_is_in_place() {
    let mut found = 0;
    for (crd, path, rule) in rules::ALL {
        let schema = match *crd {
            "workerpools" => pool_schema(),
            "jobs" => job_schema(),
            other => panic!("unknown CRD {other}"),
        };
        let at = rules_at(&schema, path);
        assert!(
            at.contains(&(rule.rule.to_owned(), rule.message.to_owned())),
            "rule {:?} missing at {crd}:{path}; found {at:?}",
            rule.rule
        );
        found += 1;
    }
    assert_eq!(found, 9);

    // And no CEL rule exists that is not listed in rules::ALL.
    fn count(v: &Value) -> usize {
        match v {
            Value::Object(m) => {
                m.get("x-kubernetes-validations").and_then(Value::as_array).map_or(0, Vec::len)
                    + m.values().map(count).sum::<usize>()
            }
            Value::Array(a) => a.iter().map(count).sum(),
            _ => 0,
        }
    }
    assert_eq!(count(&pool_schema()) + count(&job_schema()), rules::ALL.len());
}

#[test]
fn specific_rules() {
    let pool = pool_schema();
    assert_eq!(
        rules_at(&pool, "spec.functions[]"),
        [("self.minReplicas <= self.maxReplicas".to_owned(), "minReplicas must not exceed maxReplicas".to_owned())]
    );
    assert_eq!(
        rules_at(&pool, "spec.functions"),
        [("self.all(f, self.exists_one(g, g.name == f.name))".to_owned(), "function names must be unique".to_owned())]
    );
    let job = job_schema();
    let spec_rules = rules_at(&job, "spec");
    assert!(spec_rules.contains(&(
        "!(has(self.payload) && has(self.payloadFrom))".to_owned(),
        "payload and payloadFrom are mutually exclusive".to_owned()
    )));
    // Every field but suspend is immutable (the rule names each one; see cel.rs for its behaviour).
    let immutable = rules::JOB_SPEC_IMMUTABLE;
    assert!(spec_rules.contains(&(immutable.rule.to_owned(), "Job spec is immutable".to_owned())));
    assert!(
        immutable.rule.contains("self.__function__ == oldSelf.__function__") && !immutable.rule.contains("suspend")
    );
}

#[test]
fn functions_list_is_a_map_keyed_by_name() {
    let pool = pool_schema();
    let f = node(&pool, "spec.functions");
    assert_eq!(f["x-kubernetes-list-type"], "map");
    assert_eq!(f["x-kubernetes-list-map-keys"], serde_json::json!(["name"]));
    assert_eq!(f["minItems"], 1);
    assert_eq!(f["maxItems"], 64);
    assert_eq!(node(&pool, "spec.functions[]")["required"], serde_json::json!(["name"]));
    for path in ["status.conditions", "status.functions"] {
        assert_eq!(node(&pool, path)["x-kubernetes-list-type"], "map", "{path}");
    }
    assert_eq!(node(&job_schema(), "status.conditions")["x-kubernetes-list-map-keys"], serde_json::json!(["type"]));
}

#[test]
fn patterns_lengths_ranges_and_defaults() {
    let pool = pool_schema();
    let name = node(&pool, "spec.functions[].name");
    assert_eq!(name["pattern"], gearfleet_crd::names::FUNCTION_NAME_PATTERN);
    assert_eq!(name["maxLength"], 63);
    assert_eq!(name["minLength"], 1);

    let f = |p: &str| node(&pool, &format!("spec.functions[].{p}")).clone();
    assert_eq!(f("minReplicas")["minimum"], 0.0);
    assert_eq!(f("minReplicas")["default"], 0);
    assert_eq!(f("maxReplicas")["minimum"], 1.0);
    assert_eq!(f("maxReplicas")["default"], 10);
    assert_eq!(f("targetJobsPerWorker")["minimum"], 1.0);
    assert_eq!(f("targetJobsPerWorker")["default"], 1);
    assert_eq!(f("activationThreshold")["minimum"], 0.0);
    assert_eq!(f("activationThreshold")["default"], 0);
    assert_eq!(f("timeout")["pattern"], gearfleet_crd::duration::DURATION_PATTERN);
    assert_eq!(f("retries")["properties"]["limit"]["maximum"], 100.0);
    assert_eq!(f("retries")["properties"]["backoff"]["default"], serde_json::json!({"initial": "1s", "max": "5m"}));

    assert_eq!(node(&pool, "spec.maxReplicas")["minimum"], 0.0);
    assert_eq!(node(&pool, "spec.paused")["default"], false);
    assert_eq!(node(&pool, "spec.crashLoopLimit")["minimum"], 0.0);
    assert_eq!(
        node(&pool, "spec.scaling")["default"],
        serde_json::json!({"pollInterval": "5s", "cooldown": "60s", "drainTimeout": "10m"})
    );
    assert_eq!(node(&pool, "spec.scaling.pollInterval")["default"], "5s");
    assert_eq!(node(&pool, "spec.scaling.cooldown")["default"], "60s");
    assert_eq!(node(&pool, "spec.scaling.drainTimeout")["default"], "10m");
    assert_eq!(node(&pool, "spec.scaling.scaleUp.policies[].type")["enum"], serde_json::json!(["Pods", "Percent"]));
    assert_eq!(
        node(&pool, "spec.scaling.scaleDown.selectPolicy")["enum"],
        serde_json::json!(["Max", "Min", "Disabled"])
    );
    assert_eq!(node(&pool, "spec.scaling.scaleDown.selectPolicy")["default"], "Max");
    assert_eq!(node(&pool, "spec.recycle.schedule")["pattern"], gearfleet_crd::cron::CRON_PATTERN);
    assert_eq!(node(&pool, "spec.recycle.maxUnavailable")["default"], 1);
    assert_eq!(node(&pool, "spec.recycle.maxJobs")["minimum"], 1.0);

    let job = job_schema();
    assert_eq!(node(&job, "spec.function")["pattern"], gearfleet_crd::names::FUNCTION_NAME_PATTERN);
    assert_eq!(node(&job, "spec.next")["items"]["pattern"], gearfleet_crd::names::FUNCTION_NAME_PATTERN);
    assert_eq!(node(&job, "spec.next")["maxItems"], 16);
    assert_eq!(node(&job, "spec.unique")["maxLength"], 64);
    assert_eq!(node(&job, "spec.payload")["maxLength"], 262144);
    assert_eq!(node(&job, "spec.priority")["default"], "Normal");
    assert_eq!(node(&job, "spec.priority")["enum"], serde_json::json!(["High", "Normal", "Low"]));
    assert_eq!(node(&job, "spec.retries.limit")["maximum"], 100.0);
    assert_eq!(node(&job, "spec.runAt")["format"], "date-time");
    assert_eq!(node(&job, "spec.ttlSecondsAfterFinished")["minimum"], 0.0);
    assert_eq!(
        node(&job, "status.phase")["enum"],
        serde_json::json!(["Pending", "Suspended", "Queued", "Running", "Succeeded", "Failed"])
    );
    assert_eq!(node(&job, "status.data")["maxLength"], 65536);
    assert_eq!(node(&job, "status.result")["maxLength"], 262144);
    assert_eq!(node(&job, "status.warnings")["maxItems"], 32);
}

#[test]
fn every_field_is_documented() {
    // Walk our own part of the schema (not the embedded pod templates, whose
    // nested descriptions are stripped on purpose, nor k8s types).
    fn walk(v: &Value, path: &str, missing: &mut Vec<String>) {
        if let Some(props) = v.get("properties").and_then(Value::as_object) {
            for (name, child) in props {
                let p = format!("{path}.{name}");
                match child.get("description").and_then(Value::as_str) {
                    Some(d) if !d.trim().is_empty() => {
                        assert!(!d.contains('\n'), "{p}: description not reflowed: {d:?}");
                    }
                    _ => missing.push(p.clone()),
                }
                if name == "template" || name == "conditions" || name.ends_with("Time") {
                    continue;
                }
                walk(child, &p, missing);
                if let Some(items) = child.get("items") {
                    walk(items, &format!("{p}[]"), missing);
                }
            }
        }
    }
    for (crd, schema) in [("workerpools", pool_schema()), ("jobs", job_schema())] {
        let mut missing = Vec::new();
        for top in ["spec", "status"] {
            walk(node(&schema, top), &format!("{crd}.{top}"), &mut missing);
        }
        // apiVersion/kind/metadata are documented by Kubernetes itself.
        assert!(missing.is_empty(), "undocumented fields: {missing:?}");
    }
}

#[test]
fn pod_templates_use_the_real_schema() {
    let pool = pool_schema();
    for path in ["spec.template", "spec.functions[].template"] {
        let t = node(&pool, path);
        assert!(t.get("x-kubernetes-preserve-unknown-fields").is_none(), "{path} must have a real schema");
        let containers = node(t, "spec.containers");
        assert_eq!(containers["type"], "array");
        assert!(containers["items"]["properties"]["image"].is_object());
        assert!(t["description"].as_str().unwrap().len() > 20, "{path}");
        // Nested descriptions are stripped to keep the CRD small.
        assert!(containers.get("description").is_none());
    }
    let json = serde_json::to_string(&WorkerPool::crd()).unwrap();
    assert!(
        json.len() < 200 * 1024,
        "WorkerPool CRD is {} bytes of JSON; keep it below kubectl apply's 256 KiB annotation limit",
        json.len()
    );
}

/// The regular expressions in the schema accept exactly what the Rust
/// validators accept (the API server uses Go's RE2, which agrees with the
/// `regex` crate on these patterns).
#[test]
fn schema_patterns_agree_with_rust_validators() {
    let pool = pool_schema();
    let job = job_schema();
    let re = |v: &Value| regex::Regex::new(v["pattern"].as_str().unwrap()).unwrap();

    let function = re(node(&pool, "spec.functions[].name"));
    let inputs = [
        "a",
        "echo",
        "Echo",
        "image.resize",
        "a_b",
        "a-b",
        "0",
        "a.",
        "-a",
        "_a",
        "a b",
        "a:b",
        "a/b",
        "é",
        "a\u{0}b",
        "",
    ];
    for s in inputs.iter().map(|s| s.to_string()).chain(["x".repeat(63), "x".repeat(64)]) {
        // The pattern alone bounds the length too.
        assert_eq!(function.is_match(&s), gearfleet_crd::is_valid_function_name(&s), "function name {s:?}");
    }

    let duration = re(node(&pool, "spec.scaling.pollInterval"));
    for s in [
        "0s", "500ms", "30s", "5m", "1h30m", "7d", "1m1s1ms", "", "5", "1.5h", "5 min", "5min", "-5s", "5S", "1us",
        "1w", "ms", "5sm", "1h 30m",
    ] {
        assert_eq!(duration.is_match(s), gearfleet_crd::parse_duration(s).is_ok(), "duration {s:?}");
    }

    let cron = re(node(&pool, "spec.recycle.schedule"));
    for (s, valid) in gearfleet_crd::cron::CRON_EXAMPLES {
        assert_eq!(cron.is_match(s), *valid, "cron {s:?} (schema pattern)");
        assert_eq!(gearfleet_crd::cron::is_valid_cron(s), *valid, "cron {s:?}");
    }

    let tz = re(node(&pool, "spec.recycle.timeZone"));
    for s in [
        "UTC",
        "Europe/Berlin",
        "Etc/GMT+5",
        "America/Argentina/Buenos_Aires",
        "",
        "/UTC",
        "UTC/",
        "a//b",
        "1UTC",
        "Europe Berlin",
    ] {
        assert_eq!(tz.is_match(s), gearfleet_crd::cron::is_valid_time_zone(s), "time zone {s:?}");
    }

    let name = re(node(&job, "spec.payloadFrom.configMapKeyRef.name"));
    for s in ["cfg", "my-cfg.v1", "a", "Cfg", "-a", "a-", "a..b", "a_b", ""] {
        assert_eq!(name.is_match(s), gearfleet_crd::names::is_dns1123_subdomain(s), "object name {s:?}");
    }
    let key = re(node(&job, "spec.payloadFrom.secretKeyRef.key"));
    for s in ["payload", "a.json", "_x-Y", "a/b", "a b", ""] {
        assert_eq!(key.is_match(s), gearfleet_crd::names::is_valid_config_key(s), "key {s:?}");
    }

    let unique = re(node(&job, "spec.unique"));
    assert!(unique.is_match("job-1 with spaces/ü"));
    assert!(!unique.is_match("a\u{0}b"));
    assert!(!unique.is_match(""));
}
