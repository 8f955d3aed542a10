//! The WorkerPool controller on a real cluster: the operator binary runs on the host (scoped to the
//! test namespace), talks to a broker Deployment through its Service's ClusterIP (routable from the
//! host on the project's local cluster), and scales a `sleep` function from zero to three workers
//! under a backlog and back to zero after the cooldown; the pool's status (Ready, Degraded, the
//! printer columns) tells a missing image apart from a pool that runs.
//!
//! Needs the operator binary: `cargo build -p gearfleet-operator` first (or set
//! `GEARFLEET_OPERATOR_BIN`).

use std::time::Duration;

use gearfleet_e2e::fixture::Fixture;
use gearfleet_e2e::gearman::{backlog, call, fleet_workers, submit_background};
use gearfleet_e2e::{BUSYBOX_IMAGE, Cluster, EXAMPLE_WORKERS_IMAGE, Namespace};
use gearfleet_proto::admin::WorkerStats;

const POOL: &str = "wp";
const DEPLOYMENT: &str = "wp-sleep";

fn worker_pool() -> String {
    format!(
        r#"
apiVersion: gearfleet.dev/v1alpha1
kind: WorkerPool
metadata:
  name: {POOL}
spec:
  template:
    spec:
      terminationGracePeriodSeconds: 5
      containers:
        - name: worker
          image: {EXAMPLE_WORKERS_IMAGE}
          imagePullPolicy: Never
          args: ["sleep"]
  functions:
    - name: sleep
      minReplicas: 0
      maxReplicas: 3
  scaling:
    pollInterval: 2s
    cooldown: 5s
    drainTimeout: 30s
    scaleDown:
      stabilizationWindow: 1s
"#
    )
}

fn replicas(ns: &Namespace<'_>) -> Option<i32> {
    ns.replicas(DEPLOYMENT)
}

#[test]
fn workerpool_scales_from_zero_under_backlog_and_back_to_zero() {
    let Some(cluster) = Cluster::connect() else { return };
    let fixture = Fixture::new(&cluster, "gf-wp");
    let (ns, broker) = (fixture.ns(), fixture.broker());

    ns.apply(&worker_pool());
    let initial = cluster.eventually(Duration::from_secs(30), "Deployment wp-sleep", || replicas(ns));
    assert_eq!(initial, 0, "an idle function with minReplicas 0 starts at zero");

    submit_background(broker, "sleep", "e2e", "2000", 20);
    cluster.eventually(Duration::from_secs(20), "wp-sleep scaled to 3 replicas", || {
        (replicas(ns) == Some(3)).then_some(())
    });
    cluster.eventually(Duration::from_secs(90), "worker pods taking jobs", || {
        fleet_workers(broker)?
            .iter()
            .any(|w| w.client_id.starts_with("wp-sleep-") && (w.jobs_done > 0 || !w.current_jobs.is_empty()))
            .then_some(())
    });
    let running = ns.kubectl_ok(
        &["get", "pods", "-l", "gearfleet.dev/function=sleep", "--field-selector=status.phase=Running", "-o", "name"],
        None,
    );
    assert!(!running.trim().is_empty(), "no Running worker pods");

    cluster.eventually(Duration::from_secs(120), "the queue to drain", || {
        (backlog(broker, "sleep")? == (0, 0)).then_some(())
    });
    cluster.eventually(Duration::from_secs(60), "wp-sleep back at 0 replicas after the cooldown", || {
        (replicas(ns) == Some(0)).then_some(())
    });
    let status =
        ns.kubectl_ok(&["get", "workerpool", POOL, "-o", "jsonpath={.status.functions[0].lastScaleReason}"], None);
    assert!(!status.is_empty(), "status.functions[0].lastScaleReason is set");
    // One Event per replica change, each with its own numbers (never folded into a series).
    let events = ns.kubectl_ok(
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.kind=WorkerPool",
            "-o",
            "jsonpath={range .items[*]}{.reason}|{.message}{\"\\n\"}{end}",
        ],
        None,
    );
    let lines: Vec<&str> = events.lines().collect();
    assert!(lines.iter().any(|l| l.starts_with("ScaleFromZero|sleep: 0 -> ")), "no ScaleFromZero event: {lines:?}");
    assert!(
        lines.iter().any(|l| l.starts_with("ScaleToZero|sleep: ") && l.contains(" -> 0 replicas")),
        "no ScaleToZero event: {lines:?}"
    );
}

/// A worker image that exits at once: the pool turns Degraded (reason CrashLoopBackOff) within a
/// minute or so, with a Warning Event and the crashing pods counted in the function's status.
#[test]
fn crash_looping_workers_make_the_pool_degraded() {
    let Some(cluster) = Cluster::connect() else { return };
    let fixture = Fixture::new(&cluster, "gf-crash");
    let (ns, broker) = (fixture.ns(), fixture.broker());
    ns.apply(&format!(
        r#"
apiVersion: gearfleet.dev/v1alpha1
kind: WorkerPool
metadata:
  name: crashy
spec:
  crashLoopLimit: 0
  template:
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: worker
          image: {BUSYBOX_IMAGE}
          imagePullPolicy: Never
          command: ["sh", "-c", "echo cannot start; exit 3"]
  functions:
    - {{name: boom, minReplicas: 1, maxReplicas: 3}}
  scaling: {{pollInterval: 2s}}
"#
    ));
    let condition = r#"jsonpath={.status.conditions[?(@.type=="Degraded")].status} {.status.conditions[?(@.type=="Degraded")].reason}"#;
    cluster.eventually(Duration::from_secs(120), "the pool to be Degraded (CrashLoopBackOff)", || {
        let out = ns.kubectl_ok(&["get", "workerpool", "crashy", "-o", condition], None);
        (out.trim() == "True CrashLoopBackOff").then_some(())
    });
    let crashing =
        ns.kubectl_ok(&["get", "workerpool", "crashy", "-o", "jsonpath={.status.functions[0].crashLooping}"], None);
    assert_eq!(crashing.trim(), "1", "one crashing pod counted");
    let events = ns.kubectl_ok(
        &["get", "events", "--field-selector", "involvedObject.kind=WorkerPool,reason=Degraded", "-o", "name"],
        None,
    );
    assert!(!events.trim().is_empty(), "no Degraded event");
    // crashLoopLimit 0: a backlog does not add pods that would only crash too.
    gearfleet_e2e::gearman::submit_background(broker, "boom", "crash", "x", 10);
    std::thread::sleep(Duration::from_secs(6));
    let replicas = ns.kubectl_ok(&["get", "deployment", "crashy-boom", "-o", "jsonpath={.spec.replicas}"], None);
    assert_eq!(replicas.trim(), "1", "scaled up a crash-looping function");
}

/// Status you can trust (issue #21): a function whose image is not there (pull policy Never, so the
/// kubelet waits with ErrImageNeverPull) makes the pool `Degraded` (reason ImagePullBackOff) and
/// not `Ready`, so `kubectl wait --for=condition=Ready` times out; with the real image the pool
/// turns Ready and `kubectl wait` returns, and `kubectl get wp` says so.
#[test]
fn ready_only_when_every_function_has_its_replicas_available() {
    let Some(cluster) = Cluster::connect() else { return };
    let fixture = Fixture::new(&cluster, "gf-status");
    let ns = fixture.ns();
    let pool = |image: &str| {
        format!(
            r#"
apiVersion: gearfleet.dev/v1alpha1
kind: WorkerPool
metadata:
  name: status
spec:
  template:
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: worker
          image: {image}
          imagePullPolicy: Never
          args: ["sleep"]
  functions:
    - {{name: sleep, minReplicas: 1, maxReplicas: 1}}
  scaling: {{pollInterval: 2s}}
"#
        )
    };
    ns.apply(&pool("gearfleet-e2e-no-such-image:never"));
    let conditions = r#"jsonpath={.status.conditions[?(@.type=="Ready")].status} {.status.conditions[?(@.type=="Ready")].reason} {.status.conditions[?(@.type=="Degraded")].status} {.status.conditions[?(@.type=="Degraded")].reason}"#;
    cluster.eventually(Duration::from_secs(60), "Ready=False, Degraded=True (ImagePullBackOff)", || {
        let out = ns.kubectl_ok(&["get", "workerpool", "status", "-o", conditions], None);
        (out.trim() == "False FunctionsNotReady True ImagePullBackOff").then_some(())
    });
    let message = ns.kubectl_ok(
        &["get", "workerpool", "status", "-o", r#"jsonpath={.status.conditions[?(@.type=="Ready")].message}"#],
        None,
    );
    assert_eq!(message.trim(), "sleep: 0/1 available (Degraded)");
    let phase = ns.kubectl_ok(&["get", "workerpool", "status", "-o", "jsonpath={.status.functions[0].phase}"], None);
    assert_eq!(phase.trim(), "Degraded");

    let wait = |timeout: &str| {
        ns.kubectl(&["wait", "--for=condition=Ready", "workerpool/status", &format!("--timeout={timeout}")], None)
    };
    let out = wait("10s");
    assert!(!out.status.success(), "kubectl wait returned for a pool that is not ready: {out:?}");

    ns.apply(&pool(EXAMPLE_WORKERS_IMAGE));
    let out = wait("90s");
    assert!(out.status.success(), "the pool did not turn Ready: {out:?}");
    let out = ns.kubectl_ok(&["get", "workerpool", "status", "-o", conditions], None);
    assert_eq!(out.trim(), "True AllFunctionsReady False Healthy");
    let table = ns.kubectl_ok(&["get", "workerpool", "status"], None);
    let lines: Vec<Vec<&str>> = table.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(lines[0][..7], ["NAME", "READY", "PHASE", "FUNCTIONS", "DESIRED", "AVAILABLE", "QUEUED"], "{table}");
    assert_eq!(lines[1][..6], ["status", "True", "Running", "1/1", "1", "1"], "{table}");
}

/// Scale-in while a worker is busy: three workers, one running a 25 s job and two idle after their
/// short jobs; the operator scales 3 → 1 by removing the two idle pods, the busy pod stays, and the
/// long job's client gets its result.
#[test]
fn scale_in_removes_idle_pods_and_the_busy_worker_finishes_its_job() {
    let Some(cluster) = Cluster::connect() else { return };
    busy_scale_in(&cluster, &Fixture::new(&cluster, "gf-busy"));
}

/// With the broker's admin token on, the operator authenticates: its drains are not refused, so
/// the busy worker still finishes its job and the idle ones go within the test's bounds (a refused
/// drain would hold the scale-in for the whole drainTimeout, 2m).
#[test]
fn with_the_admin_token_on_a_scale_in_still_drains_and_the_busy_worker_finishes() {
    let Some(cluster) = Cluster::connect() else { return };
    let fixture = Fixture::with_admin_token(&cluster, "gf-token", "e2e-secret-token");
    let refused = gearfleet_e2e::gearman::admin_line(fixture.broker(), "fleet drain nobody");
    assert!(refused.is_some_and(|r| r.starts_with("ERR AUTH_REQUIRED")), "the broker enforces its token");
    busy_scale_in(&cluster, &fixture);
}

/// Three `sleep` workers, one busy on a 25 s job when the backlog is gone: the scale-in to one
/// replica removes the idle pods and keeps the busy one until its job is done.
fn busy_scale_in(cluster: &Cluster, fixture: &Fixture<'_>) {
    let (ns, broker) = (fixture.ns(), fixture.broker());
    ns.apply(&format!(
        r#"
apiVersion: gearfleet.dev/v1alpha1
kind: WorkerPool
metadata:
  name: busy
spec:
  template:
    spec:
      terminationGracePeriodSeconds: 60
      containers:
        - name: worker
          image: {EXAMPLE_WORKERS_IMAGE}
          imagePullPolicy: Never
  functions:
    - {{name: sleep, minReplicas: 0, maxReplicas: 3}}
  scaling:
    pollInterval: 2s
    cooldown: 3s
    drainTimeout: 2m
    scaleDown: {{stabilizationWindow: 1s}}
"#
    ));
    let long = {
        let broker = broker.to_string();
        std::thread::spawn(move || call(&broker, "sleep", b"25000", Duration::from_secs(180)))
    };
    let short: Vec<_> = (0..2)
        .map(|_| {
            let broker = broker.to_string();
            std::thread::spawn(move || call(&broker, "sleep", b"1000", Duration::from_secs(180)))
        })
        .collect();
    cluster.eventually(Duration::from_secs(120), "three sleep workers", || {
        (ns.replicas("busy-sleep") == Some(3)).then_some(())
    });
    for s in short {
        assert_eq!(s.join().expect("thread").expect("short job"), b"slept 1000ms");
    }
    // The worker holding the long job.
    let busy_pod = cluster.eventually(Duration::from_secs(60), "the long job to be running", || {
        fleet_workers(broker)?
            .into_iter()
            .find(|w| w.client_id.starts_with("busy-sleep-") && !w.current_jobs.is_empty())
            .map(|w| w.client_id)
    });
    cluster.eventually(Duration::from_secs(60), "scale-in to one replica", || {
        (ns.replicas("busy-sleep") == Some(1)).then_some(())
    });
    cluster.eventually(Duration::from_secs(60), "only the busy pod to remain", || {
        let pods = ns.kubectl_ok(
            &["get", "pods", "-l", "gearfleet.dev/function=sleep", "-o", "jsonpath={.items[*].metadata.name}"],
            None,
        );
        let names: Vec<&str> = pods.split_whitespace().collect();
        assert!(names.contains(&busy_pod.as_str()), "the busy pod {busy_pod} was removed: {names:?}");
        (names == [busy_pod.as_str()]).then_some(())
    });
    assert_eq!(long.join().expect("thread").expect("the long job completes"), b"slept 25000ms");
}

fn two_sleepers(replicas: u32) -> String {
    format!(
        r#"
apiVersion: gearfleet.dev/v1alpha1
kind: WorkerPool
metadata:
  name: keep
spec:
  template:
    spec:
      terminationGracePeriodSeconds: 60
      containers:
        - name: worker
          image: {EXAMPLE_WORKERS_IMAGE}
          imagePullPolicy: Never
  functions:
    - {{name: sleep, minReplicas: {replicas}, maxReplicas: {replicas}}}
  scaling:
    pollInterval: 2s
    drainTimeout: 5m
    scaleDown: {{stabilizationWindow: 1s}}
"#
    )
}

fn sleep_workers(broker: &str) -> Vec<WorkerStats> {
    let workers = fleet_workers(broker).unwrap_or_default();
    workers.into_iter().filter(|w| w.client_id.starts_with("keep-sleep-")).collect()
}

/// The drain state is observed, not remembered: an operator killed while a busy worker is drained
/// for a scale-in, and restarted after the scale-in was called off, undrains that worker, which
/// then takes jobs again.
#[test]
fn a_drain_left_behind_by_a_restarted_operator_is_taken_back() {
    let Some(cluster) = Cluster::connect() else { return };
    let mut fixture = Fixture::new(&cluster, "gf-undrain");
    let broker = fixture.broker().to_string();
    fixture.ns().apply(&two_sleepers(2));
    cluster
        .eventually(Duration::from_secs(90), "two sleep workers", || (sleep_workers(&broker).len() == 2).then_some(()));
    let long: Vec<_> = (0..2)
        .map(|_| {
            let broker = broker.clone();
            std::thread::spawn(move || call(&broker, "sleep", b"20000", Duration::from_secs(180)))
        })
        .collect();
    cluster.eventually(Duration::from_secs(30), "both workers busy", || {
        sleep_workers(&broker).iter().all(|w| !w.current_jobs.is_empty()).then_some(())
    });
    fixture.ns().apply(&two_sleepers(1));
    cluster.eventually(Duration::from_secs(30), "a worker drained for the scale-in", || {
        sleep_workers(&broker).iter().any(|w| w.draining).then_some(())
    });

    fixture.kill_operator();
    fixture.ns().apply(&two_sleepers(2));
    fixture.start_operator();
    cluster.eventually(Duration::from_secs(30), "the drain taken back", || {
        let workers = sleep_workers(&broker);
        (workers.len() == 2 && workers.iter().all(|w| !w.draining)).then_some(())
    });
    for l in long {
        assert_eq!(l.join().expect("thread").expect("long job"), b"slept 20000ms");
    }
    // Both take jobs again.
    submit_background(&broker, "sleep", "after", "2000", 4);
    cluster.eventually(Duration::from_secs(60), "both workers to run more jobs", || {
        let workers = sleep_workers(&broker);
        (workers.len() == 2 && workers.iter().all(|w| w.jobs_done >= 2)).then_some(())
    });
}
