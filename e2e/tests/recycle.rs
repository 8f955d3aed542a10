//! Recycling on a real cluster: `recycle.maxAge` replaces pods one at a time (the Deployment never
//! drops below its ready count minus maxUnavailable), a pod busy with a 10 s job during its recycle
//! finishes the job (the client gets the result), and the restart annotation replaces every pod.
//!
//! The operator binary runs on the host: `cargo build -p gearfleet-operator` first.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use gearfleet_e2e::fixture::Fixture;
use gearfleet_e2e::gearman::call;
use gearfleet_e2e::{Cluster, EXAMPLE_WORKERS_IMAGE, Namespace};

fn pool(name: &str, functions: &str, recycle: &str) -> String {
    format!(
        r#"
apiVersion: gearfleet.dev/v1alpha1
kind: WorkerPool
metadata:
  name: {name}
spec:
  template:
    spec:
      terminationGracePeriodSeconds: 30
      containers:
        - name: worker
          image: {EXAMPLE_WORKERS_IMAGE}
          imagePullPolicy: Never
          readinessProbe:
            httpGet: {{path: /readyz, port: 9731}}
            periodSeconds: 1
  functions:
{functions}
  scaling: {{pollInterval: 2s, drainTimeout: 60s}}
{recycle}
"#
    )
}

fn pods(ns: &Namespace<'_>, function: &str) -> Vec<String> {
    let out = ns.kubectl_ok(
        &[
            "get",
            "pods",
            "-l",
            &format!("gearfleet.dev/function={function}"),
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ],
        None,
    );
    out.split_whitespace().map(String::from).collect()
}

fn ready(ns: &Namespace<'_>, deployment: &str) -> i32 {
    let out = ns.kubectl(&["get", "deployment", deployment, "-o", "jsonpath={.status.readyReplicas}"], None);
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

#[test]
fn max_age_replaces_pods_in_turn_and_a_busy_pod_finishes_its_job() {
    let Some(cluster) = Cluster::connect() else { return };
    let fixture = Fixture::new(&cluster, "gf-recycle");
    let (ns, broker) = (fixture.ns(), fixture.broker());
    let functions =
        "    - {name: echo, minReplicas: 2, maxReplicas: 2}\n    - {name: sleep, minReplicas: 1, maxReplicas: 1}";
    ns.apply(&pool("aging", functions, "  recycle: {maxAge: 20s, maxUnavailable: 1}"));
    ns.wait_for_rollout("aging-echo", Duration::from_secs(120));
    ns.wait_for_rollout("aging-sleep", Duration::from_secs(120));
    let first_echo: HashSet<String> = pods(ns, "echo").into_iter().collect();
    let first_sleep = pods(ns, "sleep");
    assert_eq!((first_echo.len(), first_sleep.len()), (2, 1));

    // A 10 s job on the sleep worker, started before the pod turns 20 s old.
    let long = {
        let broker = broker.to_string();
        std::thread::spawn(move || call(&broker, "sleep", b"10000", Duration::from_secs(120)))
    };

    // Watch the echo Deployment while its pods are replaced: never below 2 - 1 ready.
    let started = Instant::now();
    let mut seen: HashSet<String> = first_echo.clone();
    let mut lowest = i32::MAX;
    while started.elapsed() < Duration::from_secs(75) {
        lowest = lowest.min(ready(ns, "aging-echo"));
        seen.extend(pods(ns, "echo"));
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(lowest >= 1, "aging-echo dropped to {lowest} ready pods (maxUnavailable 1 of 2)");
    let now: HashSet<String> = pods(ns, "echo").into_iter().collect();
    assert!(now.is_disjoint(&first_echo), "original echo pods still there after 75 s: {now:?}");
    assert!(seen.len() >= 4, "pods were not replaced in turn: {seen:?}");

    // The busy pod finished its job before it went.
    assert_eq!(long.join().expect("thread").expect("the long job completes"), b"slept 10000ms");
    assert!(!pods(ns, "sleep").contains(&first_sleep[0]), "the sleep pod was not recycled");
    let events = ns.kubectl_ok(
        &["get", "events", "--field-selector", "involvedObject.kind=WorkerPool,reason=Recycle", "-o", "name"],
        None,
    );
    assert!(events.lines().count() >= 3, "Recycle events: {events}");
    let last = ns.kubectl_ok(&["get", "workerpool", "aging", "-o", "jsonpath={.status.lastRecycleTime}"], None);
    assert!(!last.trim().is_empty(), "status.lastRecycleTime is not set");
}

#[test]
fn restart_annotation_replaces_every_pod() {
    let Some(cluster) = Cluster::connect() else { return };
    let fixture = Fixture::new(&cluster, "gf-restart");
    let ns = fixture.ns();
    ns.apply(&pool("hot", "    - {name: reverse, minReplicas: 2, maxReplicas: 2}", ""));
    ns.wait_for_rollout("hot-reverse", Duration::from_secs(120));
    cluster.eventually(Duration::from_secs(60), "two ready reverse pods", || {
        (ready(ns, "hot-reverse") == 2).then_some(())
    });
    let before: HashSet<String> = pods(ns, "reverse").into_iter().collect();
    // Pods created in this second are not "before" the request: wait a second.
    std::thread::sleep(Duration::from_secs(1));
    let now = std::process::Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"]).output().expect("date");
    let stamp = String::from_utf8_lossy(&now.stdout).trim().to_string();
    ns.kubectl_ok(
        &["annotate", "workerpool", "hot", &format!("gearfleet.dev/restart-requested-at={stamp}"), "--overwrite"],
        None,
    );
    cluster.eventually(Duration::from_secs(120), "every pod replaced", || {
        let current: HashSet<String> = pods(ns, "reverse").into_iter().collect();
        (current.is_disjoint(&before) && ready(ns, "hot-reverse") == 2).then_some(())
    });
}

/// `paused: true` drains the pool (busy workers finish, then zero replicas) with the queue intact;
/// `paused: false` resumes and the queue drains.
#[test]
fn pause_drains_keeps_the_queue_and_resume_drains_it() {
    let Some(cluster) = Cluster::connect() else { return };
    let fixture = Fixture::new(&cluster, "gf-pause");
    let (ns, broker) = (fixture.ns(), fixture.broker());
    ns.apply(&pool("maint", "    - {name: sleep, minReplicas: 1, maxReplicas: 1}", ""));
    ns.wait_for_rollout("maint-sleep", Duration::from_secs(120));
    cluster
        .eventually(Duration::from_secs(60), "a ready sleep worker", || (ready(ns, "maint-sleep") == 1).then_some(()));
    gearfleet_e2e::gearman::submit_background(broker, "sleep", "pause", "3000", 6);
    cluster.eventually(Duration::from_secs(30), "a job running", || {
        (gearfleet_e2e::gearman::backlog(broker, "sleep")?.1 == 1).then_some(())
    });
    ns.kubectl_ok(&["patch", "workerpool", "maint", "--type=merge", "-p", r#"{"spec":{"paused":true}}"#], None);
    let phase =
        |ns: &Namespace<'_>| ns.kubectl_ok(&["get", "workerpool", "maint", "-o", "jsonpath={.status.phase}"], None);
    cluster.eventually(Duration::from_secs(30), "phase Draining", || (phase(ns) == "Draining").then_some(()));
    cluster.eventually(Duration::from_secs(90), "phase Drained", || (phase(ns) == "Drained").then_some(()));
    let (queued, running) = gearfleet_e2e::gearman::backlog(broker, "sleep").expect("fleet status");
    assert_eq!(running, 0, "no job runs on a drained pool");
    assert!((1..=5).contains(&queued), "the queue keeps the jobs not started: {queued}");
    let drained = ns.kubectl_ok(
        &["get", "workerpool", "maint", "-o", r#"jsonpath={.status.conditions[?(@.type=="Drained")].status}"#],
        None,
    );
    assert_eq!(drained, "True");

    ns.kubectl_ok(&["patch", "workerpool", "maint", "--type=merge", "-p", r#"{"spec":{"paused":false}}"#], None);
    cluster.eventually(Duration::from_secs(120), "the queue to drain after resume", || {
        (gearfleet_e2e::gearman::backlog(broker, "sleep")? == (0, 0)).then_some(())
    });
    assert_eq!(phase(ns), "Running");
}
