//! The pool-wide cap (`spec.maxReplicas`) holds at every instant: two functions with backlogs
//! under a cap of 4, the second backlog arriving while the first function holds all 4 places.
//! Watches on the pool's Deployments and pods (every event, and a sample every 100 ms) see the
//! sum of replicas and the worker pods that exist (terminating ones included) never above 4.
//!
//! Needs the operator binary: `cargo build -p gearfleet-operator` first (or set
//! `GEARFLEET_OPERATOR_BIN`), and the gearman-workers image (e2e/images/build).

use std::collections::BTreeMap;
use std::io::BufReader;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gearfleet_e2e::fixture::Fixture;
use gearfleet_e2e::gearman::{backlog, submit_background};
use gearfleet_e2e::{Cluster, GEARMAN_WORKERS_IMAGE, Namespace, kubectl_command};
use serde_json::Value;

const CAP: usize = 4;

fn capped_pool() -> String {
    format!(
        r#"
apiVersion: gearfleet.dev/v1alpha1
kind: WorkerPool
metadata:
  name: capped
spec:
  maxReplicas: {CAP}
  template:
    spec:
      containers:
        - name: worker
          image: {GEARMAN_WORKERS_IMAGE}
          imagePullPolicy: Never
  functions:
    - {{name: alpha, minReplicas: 0, maxReplicas: 4}}
    - {{name: beta, minReplicas: 0, maxReplicas: 4}}
  scaling:
    pollInterval: 1s
    cooldown: 2s
    drainTimeout: 1m
    scaleDown: {{stabilizationWindow: 1s}}
"#
    )
}

/// What the watches saw: replicas per Deployment, existing pods, and the worst moments.
#[derive(Default)]
struct Seen {
    replicas: BTreeMap<String, usize>,
    pods: BTreeMap<String, bool>,
    max_replicas: usize,
    max_pods: usize,
    samples: usize,
    events: usize,
}

impl Seen {
    fn record(&mut self) {
        let replicas = self.replicas.values().sum();
        let pods = self.pods.values().filter(|&&exists| exists).count();
        self.max_replicas = self.max_replicas.max(replicas);
        self.max_pods = self.max_pods.max(pods);
    }

    fn apply(&mut self, event: &Value) {
        let object = &event["object"];
        let name = object["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let deleted = event["type"] == "DELETED";
        match object["kind"].as_str() {
            Some("Deployment") => {
                let replicas = if deleted { 0 } else { object["spec"]["replicas"].as_u64().unwrap_or(0) as usize };
                self.replicas.insert(name, replicas);
            }
            Some("Pod") => {
                let finished = matches!(object["status"]["phase"].as_str(), Some("Succeeded" | "Failed"));
                self.pods.insert(name, !deleted && !finished);
            }
            _ => {}
        }
        self.events += 1;
        self.record();
    }
}

/// `kubectl get KIND --watch` of the pool's objects, each event applied to `seen`.
fn watch(ns: &Namespace<'_>, kind: &str, seen: Arc<Mutex<Seen>>) -> Child {
    let mut child = kubectl_command()
        .args(["--namespace", ns.name(), "get", kind, "-l", "gearfleet.dev/pool=capped"])
        .args(["--watch", "--output-watch-events", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl watch");
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for event in serde_json::Deserializer::from_reader(BufReader::new(stdout)).into_iter::<Value>() {
            let Ok(event) = event else { break };
            seen.lock().unwrap_or_else(|e| e.into_inner()).apply(&event);
        }
    });
    child
}

#[test]
fn the_pool_cap_holds_at_every_instant_while_replicas_move_between_functions() {
    let Some(cluster) = Cluster::connect() else { return };
    let fixture = Fixture::new(&cluster, "gf-cap");
    let (ns, broker) = (fixture.ns(), fixture.broker());
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut watches = [watch(ns, "deployments", seen.clone()), watch(ns, "pods", seen.clone())];
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (seen, sampling) = (seen.clone(), sampling.clone());
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                seen.record();
                seen.samples += 1;
                drop(seen);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    ns.apply(&capped_pool());
    submit_background(broker, "alpha", "a", "a 4", 40);
    cluster.eventually(Duration::from_secs(120), "alpha at the cap", || {
        (ns.replicas("capped-alpha").and_then(|r| usize::try_from(r).ok()) == Some(CAP)).then_some(())
    });
    cluster.eventually(Duration::from_secs(60), "alpha's workers running jobs", || {
        backlog(broker, "alpha").filter(|&(_, running)| running >= 2).map(|_| ())
    });
    // beta's backlog arrives while alpha holds every place: places move from one to the other.
    submit_background(broker, "beta", "b", "b 4", 40);
    cluster.eventually(Duration::from_secs(180), "beta to get places and run jobs", || {
        let beta = ns.replicas("capped-beta")?;
        let (_, running) = backlog(broker, "beta")?;
        (beta >= 1 && running >= 1).then_some(())
    });
    cluster.eventually(Duration::from_secs(240), "both backlogs drained", || {
        let (a, _) = backlog(broker, "alpha")?;
        let (b, _) = backlog(broker, "beta")?;
        (a == 0 && b == 0).then_some(())
    });

    sampling.store(false, Ordering::Relaxed);
    sampler.join().expect("sampler");
    for w in &mut watches {
        let _ = w.kill();
        let _ = w.wait();
    }
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    assert!(seen.events > 10 && seen.samples > 100, "the watches saw too little: {} events", seen.events);
    assert!(seen.replicas.len() == 2, "both Deployments watched: {:?}", seen.replicas);
    assert_eq!(seen.max_replicas, CAP, "the sum of replicas went above the cap (or never reached it)");
    assert!(seen.max_pods <= CAP, "{} worker pods existed at once, cap {CAP}", seen.max_pods);
}
