//! A broker Deployment in the test namespace and the operator binary running on the host against
//! it (scoped to that namespace), for tests that need to stop and restart the operator alone.
//!
//! Needs the operator binary: `cargo build -p gearfleet-operator` first (or set
//! `GEARFLEET_OPERATOR_BIN`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::gearman::admin;
use crate::{BROKER_IMAGE, Namespace, repo_root};

/// A broker Deployment and Service named `gearfleet-broker`.
pub fn broker_manifests() -> String {
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

/// Deploys the broker in `ns` and returns its ClusterIP address once it answers from the host.
pub fn deploy_broker(ns: &Namespace<'_>) -> String {
    deploy_broker_with(ns, None)
}

/// [`deploy_broker`], with `admin_token` as the broker's admin token when given.
pub fn deploy_broker_with(ns: &Namespace<'_>, admin_token: Option<&str>) -> String {
    let mut manifests = broker_manifests();
    if let Some(token) = admin_token {
        let env = format!("          env: [{{name: GEARFLEET_ADMIN_TOKEN, value: \"{token}\"}}]\n          ports:");
        manifests = manifests.replacen("          ports:", &env, 1);
    }
    ns.apply(&manifests);
    ns.kubectl_ok(&["rollout", "status", "deployment/gearfleet-broker", "--timeout=120s"], None);
    let ip = ns.kubectl_ok(&["get", "service", "gearfleet-broker", "-o", "jsonpath={.spec.clusterIP}"], None);
    let broker = format!("{}:4730", ip.trim());
    ns.cluster().eventually(Duration::from_secs(30), "the broker's ClusterIP from the host", || {
        admin(&broker, "fleet status").map(|_| ())
    });
    broker
}

/// How the e2e operator runs.
#[derive(Clone, Debug, Default)]
pub struct OperatorOptions {
    /// Watch every namespace (workers in any namespace get the broker's Service by its full
    /// name), instead of the test's namespace only.
    pub cluster_wide: bool,
    /// The broker's admin token, for the operator to send.
    pub admin_token: Option<String>,
}

/// The operator process, killed when dropped.
pub struct Operator {
    child: Child,
    log: PathBuf,
}

impl Operator {
    /// Starts the operator for `ns`, talking to the broker at `broker` (workers get the Service
    /// name), logging to a file in the temp directory.
    pub fn start(ns: &Namespace<'_>, broker: &str) -> Operator {
        Operator::launch(ns, broker, &OperatorOptions::default())
    }

    /// Starts the operator as `options` say.
    pub fn launch(ns: &Namespace<'_>, broker: &str, options: &OperatorOptions) -> Operator {
        let log = std::env::temp_dir().join(format!("gearfleet-operator-{}.log", ns.name()));
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("operator log");
        let mut command = Command::new(binary());
        if options.cluster_wide {
            let service = format!("gearfleet-broker.{}.svc:4730", ns.name());
            command.args(["--broker-address", broker, "--workers-broker-address", &service]);
        } else {
            command.args(["--broker-address", broker, "--workers-broker-address", "gearfleet-broker:4730"]);
            command.args(["--namespace", ns.name()]);
        }
        if let Some(token) = &options.admin_token {
            command.env("GEARFLEET_ADMIN_TOKEN", token);
        }
        let child = command
            .args(["--metrics-address", "127.0.0.1:0"])
            // As the chart does: every worker pod gets the drain hook from the gearfleet image.
            .args(["--drain-hook-image", BROKER_IMAGE])
            .env("RUST_LOG", "info,gearfleet_operator=debug")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone log"))
            .stderr(out)
            .spawn()
            .expect("operator starts");
        Operator { child, log }
    }

    /// The operator's process id (to read its memory from /proc).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILLs the operator (no graceful shutdown) and waits for it to be gone.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Prints the operator's log to stderr.
    pub fn dump_log(&self) {
        eprintln!("--- operator log\n{}", std::fs::read_to_string(&self.log).unwrap_or_default());
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo_root().join("target"), PathBuf::from);
    let path = std::env::var_os("GEARFLEET_OPERATOR_BIN")
        .map_or_else(|| target.join("debug/gearfleet-operator"), PathBuf::from);
    assert!(path.exists(), "{} not found: run `cargo build -p gearfleet-operator` first", path.display());
    path
}
