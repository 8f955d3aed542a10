//! Job resources on a real cluster, with the example workers of a WorkerPool: a Job completes with
//! its result in status and `kubectl wait` returns; a failing Job is retried and ends Failed after
//! limit + 1 attempts; a timeout; a chain of three functions; and the operator SIGKILLed while 50
//! Jobs run: after its restart every Job succeeds and no worker ran any of them twice (the example
//! worker logs each execution with its unique key, which the operator derives from the Job); and
//! the Kubernetes Job habits: `activeDeadlineSeconds` fails a Job whose worker is too slow, and a
//! Job created with `suspend: true` runs nothing until it is resumed.
//!
//! The operator binary runs on the host against a broker Deployment (so it can be killed alone);
//! build it first: `cargo build -p gearfleet-operator` (or set `GEARFLEET_OPERATOR_BIN`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use gearfleet_e2e::fixture::Fixture;
use gearfleet_e2e::{Cluster, EXAMPLE_WORKERS_IMAGE, Namespace};

/// A WorkerPool of the example workers with a fixed number of replicas per function.
fn pool(name: &str, functions: &[(&str, u32)]) -> String {
    let functions: String =
        functions.iter().map(|(f, n)| format!("    - {{name: {f}, minReplicas: {n}, maxReplicas: {n}}}\n")).collect();
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
{functions}"#
    )
}

fn worker_pool() -> String {
    pool("jobs", &[("echo", 1), ("reverse", 1), ("fail", 1), ("sleep", 3)])
}

fn job(name: &str, spec: &str) -> String {
    format!("apiVersion: gearfleet.dev/v1alpha1\nkind: Job\nmetadata:\n  name: {name}\nspec:\n{spec}\n")
}

fn field(ns: &Namespace<'_>, job: &str, path: &str) -> String {
    ns.kubectl_ok(&["get", "jobs.gearfleet.dev", job, "-o", &format!("jsonpath={{{path}}}")], None)
}

fn wait_for(ns: &Namespace<'_>, job: &str, condition: &str, timeout: &str) {
    let out = ns.kubectl(&["wait", &format!("--for=condition={condition}"), &format!("gj/{job}"), timeout], None);
    assert!(
        out.status.success(),
        "kubectl wait --for=condition={condition} gj/{job}: {}{}\nstatus: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        field(ns, job, ".status")
    );
}

/// The fixture (which deletes the Jobs while the operator still runs, so their finalizers go) with
/// the pool's four Deployments rolled out.
fn setup(cluster: &Cluster) -> Fixture<'_> {
    let fixture = Fixture::new(cluster, "gf-jobs");
    fixture.ns().apply(&worker_pool());
    for d in ["jobs-echo", "jobs-reverse", "jobs-fail", "jobs-sleep"] {
        fixture.ns().wait_for_rollout(d, Duration::from_secs(180));
    }
    fixture
}

#[test]
fn jobs_complete_retry_time_out_and_chain() {
    let Some(cluster) = Cluster::connect() else { return };
    let fixture = setup(&cluster);
    let ns = fixture.ns();
    ns.apply(&job("reverse-one", "  function: reverse\n  payload: hello gearfleet"));
    ns.apply(&job(
        "fails",
        "  function: fail\n  payload: exception\n  retries: {limit: 2, backoff: {initial: 1s, max: 2s}}",
    ));
    ns.apply(&job("too-slow", "  function: sleep\n  payload: \"8000\"\n  timeout: 2s"));
    ns.apply(&job("chain", "  function: reverse\n  payload: abc\n  next: [echo, reverse]\n  priority: High"));

    wait_for(ns, "reverse-one", "Complete", "--timeout=120s");
    assert_eq!(field(ns, "reverse-one", ".status.result"), "teelfraeg olleh");
    assert_eq!(field(ns, "reverse-one", ".status.phase"), "Succeeded");
    assert_eq!(field(ns, "reverse-one", ".status.attempts"), "1");
    assert!(!field(ns, "reverse-one", ".status.completionTime").is_empty());

    wait_for(ns, "fails", "Failed", "--timeout=120s");
    assert_eq!(field(ns, "fails", ".status.attempts"), "3", "limit 2 → 3 attempts");
    assert_eq!(field(ns, "fails", ".status.reason"), "WorkException");
    assert_eq!(field(ns, "fails", ".status.message"), "requested exception");

    wait_for(ns, "too-slow", "Failed", "--timeout=60s");
    assert_eq!(field(ns, "too-slow", ".status.reason"), "Timeout");

    wait_for(ns, "chain", "Complete", "--timeout=120s");
    assert_eq!(field(ns, "chain", ".status.result"), "abc", "reverse, echo, reverse");
    assert_eq!(
        field(ns, "chain", ".status.steps[*].phase"),
        "Succeeded Succeeded Succeeded",
        "{}",
        field(ns, "chain", ".status")
    );

    // Events tell the story: the failing Job's retries and its end.
    let events = ns.kubectl_ok(
        &["get", "events", "--field-selector", "involvedObject.name=fails", "-o", "jsonpath={.items[*].reason}"],
        None,
    );
    for reason in ["Submitted", "Retrying", "Failed"] {
        assert!(events.contains(reason), "no {reason} event for the failing Job: {events}");
    }

    // Deleting a finished Job releases its finalizer.
    ns.kubectl_ok(&["delete", "gj", "reverse-one", "--timeout=30s"], None);
}

#[test]
fn operator_killed_while_50_jobs_run_loses_none_and_runs_none_twice() {
    let Some(cluster) = Cluster::connect() else { return };
    let mut fixture = setup(&cluster);
    let ns = fixture.ns();
    let jobs: String =
        (0..50).map(|i| job(&format!("batch-{i}"), "  function: sleep\n  payload: \"1500\"") + "---\n").collect();
    ns.apply(&jobs);
    // Let the first jobs start, then kill the operator without warning.
    cluster.eventually(Duration::from_secs(60), "some Jobs to be Running", || {
        let phases = ns.kubectl_ok(&["get", "gj", "-o", "jsonpath={.items[*].status.phase}"], None);
        (phases.split_whitespace().filter(|p| *p == "Running").count() >= 2).then_some(())
    });
    fixture.kill_operator();
    std::thread::sleep(Duration::from_secs(4));
    fixture.start_operator();
    let ns = fixture.ns();
    cluster.eventually(Duration::from_secs(180), "all 50 Jobs to succeed", || {
        let phases = ns.kubectl_ok(&["get", "gj", "-o", "jsonpath={.items[*].status.phase}"], None);
        let done = phases.split_whitespace().filter(|p| *p == "Succeeded").count();
        assert!(!phases.contains("Failed"), "a Job failed: {phases}");
        (done == 50).then_some(())
    });
    // Every Job ran exactly once: one `exec` line per unique key across all sleep workers.
    let logs =
        ns.kubectl_ok(&["logs", "-l", "gearfleet.dev/function=sleep", "--tail=-1", "--max-log-requests=10"], None);
    let mut runs: HashMap<&str, usize> = HashMap::new();
    for line in logs.lines().filter(|l| l.starts_with("exec function=sleep ")) {
        let unique = line.split_whitespace().find_map(|w| w.strip_prefix("unique=")).unwrap_or_default();
        *runs.entry(unique).or_default() += 1;
    }
    let uids = ns.kubectl_ok(&["get", "gj", "-o", "jsonpath={.items[*].metadata.uid}"], None);
    for uid in uids.split_whitespace() {
        assert_eq!(runs.get(uid), Some(&1), "Job {uid} ran {:?} times", runs.get(uid));
    }
    assert_eq!(runs.len(), 50, "executions of unknown uniques: {runs:?}");
}

/// A small pool for the deadline/suspend test: one echo and one sleep worker.
fn small_pool() -> String {
    pool("habits", &[("echo", 1), ("sleep", 1)])
}

fn condition(ns: &Namespace<'_>, job: &str, type_: &str, what: &str) -> String {
    field(ns, job, &format!(".status.conditions[?(@.type==\"{type_}\")].{what}"))
}

#[test]
fn deadline_fails_a_slow_job_and_a_suspended_job_waits_to_be_resumed() {
    let Some(cluster) = Cluster::connect() else { return };
    let fixture = Fixture::new(&cluster, "gf-jobs-habits");
    let ns = fixture.ns();
    ns.apply(&small_pool());
    for d in ["habits-echo", "habits-sleep"] {
        ns.wait_for_rollout(d, Duration::from_secs(180));
    }
    let started = Instant::now();
    // The worker sleeps 8 s; the Job may be active 3 s (retries would be allowed, but none follows).
    ns.apply(&job(
        "too-late",
        "  function: sleep\n  payload: \"8000\"\n  activeDeadlineSeconds: 3\n  retries: {limit: 2, backoff: {initial: 1s, max: 1s}}",
    ));
    ns.apply(&job("held", "  function: echo\n  payload: later\n  suspend: true"));

    wait_for(ns, "too-late", "Failed", "--timeout=20s");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(12), "DeadlineExceeded after {took:?}, expected ~3 s");
    assert_eq!(field(ns, "too-late", ".status.reason"), "DeadlineExceeded");
    assert_eq!(condition(ns, "too-late", "Failed", "reason"), "DeadlineExceeded");
    assert_eq!(field(ns, "too-late", ".status.attempts"), "1", "no retry after the deadline");

    // Created suspended: nothing submitted, however long it waits.
    assert_eq!(field(ns, "held", ".status.phase"), "Suspended", "{}", field(ns, "held", ".status"));
    assert_eq!(condition(ns, "held", "Suspended", "status"), "True");
    assert_eq!(field(ns, "held", ".status.attempts"), "0");
    assert_eq!(field(ns, "held", ".status.startTime"), "");
    ns.kubectl_ok(&["patch", "gj", "held", "--type=merge", "-p", r#"{"spec":{"suspend":false}}"#], None);
    wait_for(ns, "held", "Complete", "--timeout=60s");
    assert_eq!(field(ns, "held", ".status.result"), "later");
    assert_eq!(condition(ns, "held", "Suspended", "reason"), "JobResumed");

    // The slow attempt's late result (at ~8 s) is ignored: the Job stays Failed.
    std::thread::sleep(Duration::from_secs(10).saturating_sub(started.elapsed()));
    assert_eq!(field(ns, "too-late", ".status.phase"), "Failed");
    assert_eq!(field(ns, "too-late", ".status.result"), "");
    // Events tell the story of the suspended Job (published right after its status writes).
    cluster.eventually(Duration::from_secs(10), "Suspended, Resumed, Submitted and Succeeded events", || {
        let events = ns.kubectl_ok(
            &["get", "events", "--field-selector", "involvedObject.name=held", "-o", "jsonpath={.items[*].reason}"],
            None,
        );
        ["Suspended", "Resumed", "Submitted", "Succeeded"].iter().all(|r| events.contains(r)).then_some(())
    });
}
