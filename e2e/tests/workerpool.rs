//! The WorkerPool controller on a real cluster: the operator binary runs on the host (scoped to the
//! test namespace), talks to a broker Deployment through its Service's ClusterIP (routable from the
//! host on the project's local cluster), and scales a `sleep` function from zero to three workers
//! under a backlog and back to zero after the cooldown.
//!
//! Needs the operator binary: `cargo build -p gearfleet-operator` first (or set
//! `GEARFLEET_OPERATOR_BIN`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gearfleet_e2e::gearman::{admin, backlog, submit_background};
use gearfleet_e2e::{BROKER_IMAGE, Cluster, EXAMPLE_WORKERS_IMAGE, Namespace, repo_root};
use gearfleet_proto::admin::WorkerStats;

const POOL: &str = "wp";
const DEPLOYMENT: &str = "wp-sleep";

fn broker_manifests() -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: gearfleet-broker
  labels: {{app: gearfleet-broker}}
spec:
  replicas: 1
  selector:
    matchLabels: {{app: gearfleet-broker}}
  template:
    metadata:
      labels: {{app: gearfleet-broker}}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
        - name: broker
          image: {BROKER_IMAGE}
          imagePullPolicy: Never
          ports:
            - {{name: gearman, containerPort: 4730}}
            - {{name: http, containerPort: 9730}}
          readinessProbe:
            httpGet: {{path: /readyz, port: http}}
            periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata:
  name: gearfleet-broker
spec:
  selector: {{app: gearfleet-broker}}
  ports:
    - {{name: gearman, port: 4730, targetPort: gearman}}
    - {{name: http, port: 9730, targetPort: http}}
"#
    )
}

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

/// The operator process, killed when dropped.
struct Operator(Child);

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn operator_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo_root().join("target"), PathBuf::from);
    let path = std::env::var_os("GEARFLEET_OPERATOR_BIN")
        .map_or_else(|| target.join("debug/gearfleet-operator"), PathBuf::from);
    assert!(path.exists(), "{} not found: run `cargo build -p gearfleet-operator` first", path.display());
    path
}

fn start_operator(ns: &Namespace<'_>, broker: &str, log: &PathBuf) -> Operator {
    let out = std::fs::File::create(log).expect("create operator log");
    let child = Command::new(operator_binary())
        .args(["--broker-address", broker, "--workers-broker-address", "gearfleet-broker:4730"])
        .args(["--namespace", ns.name(), "--metrics-address", "127.0.0.1:0"])
        .env("RUST_LOG", "info,gearfleet_operator=debug")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("clone log"))
        .stderr(out)
        .spawn()
        .expect("operator starts");
    Operator(child)
}

fn replicas(ns: &Namespace<'_>) -> Option<i32> {
    let out = ns.kubectl(&["get", "deployment", DEPLOYMENT, "-o", "jsonpath={.spec.replicas}"], None);
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().parse().ok()).flatten()
}

#[test]
fn workerpool_scales_from_zero_under_backlog_and_back_to_zero() {
    let Some(cluster) = Cluster::connect() else { return };
    cluster.install_crds();

    let ns = cluster.namespace("gf-wp");
    ns.apply(&broker_manifests());
    ns.kubectl_ok(&["rollout", "status", "deployment/gearfleet-broker", "--timeout=120s"], None);
    let ip = ns.kubectl_ok(&["get", "service", "gearfleet-broker", "-o", "jsonpath={.spec.clusterIP}"], None);
    let broker = format!("{}:4730", ip.trim());
    cluster.eventually(Duration::from_secs(30), "the broker's ClusterIP from the host", || {
        admin(&broker, "fleet status").map(|_| ())
    });

    let log = std::env::temp_dir().join(format!("gearfleet-operator-{}.log", ns.name()));
    let operator = start_operator(&ns, &broker, &log);
    let dump_log = || eprintln!("--- operator log\n{}", std::fs::read_to_string(&log).unwrap_or_default());

    ns.apply(&worker_pool());
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let initial = cluster.eventually(Duration::from_secs(30), "Deployment wp-sleep", || replicas(&ns));
        assert_eq!(initial, 0, "an idle function with minReplicas 0 starts at zero");

        submit_background(&broker, "sleep", "e2e", "2000", 20);
        cluster.eventually(Duration::from_secs(20), "wp-sleep scaled to 3 replicas", || {
            (replicas(&ns) == Some(3)).then_some(())
        });
        cluster.eventually(Duration::from_secs(90), "worker pods taking jobs", || {
            let workers = admin(&broker, "fleet workers")?;
            workers
                .lines()
                .filter_map(WorkerStats::parse)
                .any(|w| w.client_id.starts_with("wp-sleep-") && (w.jobs_done > 0 || !w.current_jobs.is_empty()))
                .then_some(())
        });
        let running = ns.kubectl_ok(
            &[
                "get",
                "pods",
                "-l",
                "gearfleet.dev/function=sleep",
                "--field-selector=status.phase=Running",
                "-o",
                "name",
            ],
            None,
        );
        assert!(!running.trim().is_empty(), "no Running worker pods");

        cluster.eventually(Duration::from_secs(120), "the queue to drain", || {
            (backlog(&broker, "sleep")? == (0, 0)).then_some(())
        });
        cluster.eventually(Duration::from_secs(60), "wp-sleep back at 0 replicas after the cooldown", || {
            (replicas(&ns) == Some(0)).then_some(())
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
    }));
    if result.is_err() {
        dump_log();
    }
    drop(operator);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
