//! Two teams, two namespaces, one broker (an operator that watches every namespace): a Gearman
//! function name is served and scaled by one pool only, the other shows `Conflict` naming the
//! owner and takes the name over when the owner is deleted; two Jobs with one `spec.unique` in
//! the two namespaces run twice and keep their own results.
//!
//! A test binary of its own: its operator watches every namespace. Needs the operator binary:
//! `cargo build -p gearfleet-operator` first (or set `GEARFLEET_OPERATOR_BIN`).

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use gearfleet_e2e::fixture::Fixture;
use gearfleet_e2e::gearman::submit_background;
use gearfleet_e2e::{Cluster, EXAMPLE_WORKERS_IMAGE, Namespace};

/// The tests of this binary run one at a time: each starts an operator that watches every
/// namespace, and two of them would reconcile each other's pools and Jobs.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn pool(name: &str, function: &str, max: u32) -> String {
    format!(
        r#"
apiVersion: gearfleet.dev/v1alpha1
kind: WorkerPool
metadata:
  name: {name}
spec:
  template:
    spec:
      terminationGracePeriodSeconds: 5
      containers:
        - name: worker
          image: {EXAMPLE_WORKERS_IMAGE}
          imagePullPolicy: Never
  functions:
    - {{name: {function}, minReplicas: 1, maxReplicas: {max}}}
  scaling:
    pollInterval: 2s
    cooldown: 3s
    drainTimeout: 30s
    scaleDown: {{stabilizationWindow: 1s}}
"#
    )
}

fn get(ns: &Namespace<'_>, kind_name: &str, path: &str) -> String {
    let out = ns.kubectl(&["get", kind_name, "-o", &format!("jsonpath={{{path}}}")], None);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn function_field(ns: &Namespace<'_>, pool: &str, field: &str) -> String {
    get(ns, &format!("workerpool/{pool}"), &format!(".status.functions[0].{field}"))
}

fn condition(ns: &Namespace<'_>, pool: &str, type_: &str) -> (String, String) {
    let status = get(ns, &format!("workerpool/{pool}"), &format!(".status.conditions[?(@.type==\"{type_}\")].status"));
    let message =
        get(ns, &format!("workerpool/{pool}"), &format!(".status.conditions[?(@.type==\"{type_}\")].message"));
    (status, message)
}

#[test]
fn one_function_name_is_served_by_one_pool_and_handed_over_when_its_owner_goes() {
    let _serial = one_at_a_time();
    let Some(cluster) = Cluster::connect() else { return };
    let fixture = Fixture::cluster_wide(&cluster, "gf-own-a");
    let team_b = cluster.namespace("gf-own-b");
    let (team_a, broker) = (fixture.ns(), fixture.broker());

    team_a.apply(&pool("first", "sleep", 2));
    cluster.eventually(Duration::from_secs(90), "the first pool to serve sleep", || {
        (function_field(team_a, "first", "phase") == "Ready").then_some(())
    });
    team_b.apply(&pool("second", "sleep", 2));
    let owner = format!("{}/first", team_a.name());
    cluster.eventually(Duration::from_secs(30), "the second pool in Conflict", || {
        (function_field(&team_b, "second", "phase") == "Conflict").then_some(())
    });
    assert_eq!(function_field(&team_b, "second", "owner"), owner);
    let (status, message) = condition(&team_b, "second", "Conflict");
    assert_eq!(status, "True");
    assert!(message.contains(&format!("function sleep is served by pool {owner}")), "{message}");
    assert_eq!(condition(&team_b, "second", "Ready").0, "False");
    assert_eq!(condition(team_a, "first", "Conflict").0, "False");
    let events =
        team_b.kubectl_ok(&["get", "events", "--field-selector", "reason=FunctionConflict", "-o", "name"], None);
    assert!(!events.trim().is_empty(), "a FunctionConflict Event in the second team's namespace");

    // A backlog scales the owner only.
    submit_background(broker, "sleep", "backlog", "3000", 12);
    cluster.eventually(Duration::from_secs(60), "the owner scaled to 2", || {
        (team_a.replicas("first-sleep") == Some(2)).then_some(())
    });
    assert_eq!(team_b.replicas("second-sleep"), Some(0), "the other pool does not scale on the owner's queue");
    let pods_b = team_b.kubectl_ok(&["get", "pods", "-l", "gearfleet.dev/pool=second", "-o", "name"], None);
    assert!(pods_b.trim().is_empty(), "the other pool runs no worker: {pods_b}");

    // Deleting the owner hands the name over within seconds.
    team_a.kubectl_ok(&["delete", "workerpool", "first", "--wait=false"], None);
    cluster.eventually(Duration::from_secs(20), "the second pool to take sleep over", || {
        let phase = function_field(&team_b, "second", "phase");
        (phase != "Conflict" && !phase.is_empty() && team_b.replicas("second-sleep").is_some_and(|r| r >= 1))
            .then_some(())
    });
    assert_eq!(condition(&team_b, "second", "Conflict").0, "False");
    assert_eq!(function_field(&team_b, "second", "owner"), "");
}

fn job(ns: &Namespace<'_>, name: &str, payload: &str) {
    ns.apply(&format!(
        "apiVersion: gearfleet.dev/v1alpha1\nkind: Job\nmetadata:\n  name: {name}\nspec:\n  function: reverse\n  \
         payload: {payload}\n  unique: same-key\n"
    ));
}

#[test]
fn jobs_with_one_unique_in_two_namespaces_run_twice_and_keep_their_own_results() {
    let _serial = one_at_a_time();
    let Some(cluster) = Cluster::connect() else { return };
    let fixture = Fixture::cluster_wide(&cluster, "gf-uniq-a");
    let team_b = cluster.namespace("gf-uniq-b");
    let team_a = fixture.ns();
    team_a.apply(&pool("workers", "reverse", 1));
    // Both submitted before any worker runs, so that one would coalesce into the other if the
    // unique key crossed namespaces.
    job(team_a, "mine", "abc");
    job(&team_b, "theirs", "xyz");
    for (ns, name, result) in [(team_a, "mine", "cba"), (&team_b, "theirs", "zyx")] {
        let out = ns.kubectl(&["wait", "--for=condition=Complete", &format!("gj/{name}"), "--timeout=120s"], None);
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(get(ns, &format!("gj/{name}"), ".status.result"), result, "{name} keeps its own result");
    }
    // Finalizers go while the operator still runs.
    team_b.kubectl_ok(&["delete", "gj", "--all", "--wait=true", "--timeout=60s"], None);
}
