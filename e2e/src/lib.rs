//! Helpers for the end-to-end suite. The suite needs only a KUBECONFIG: a kind cluster
//! (`e2e/kind.yaml`) or the project's own local cluster. With no cluster reachable each test prints
//! one line saying so and returns; with `GEARFLEET_REQUIRE_CLUSTER=1` that is a failure instead.
//!
//! kubectl is taken from `GEARFLEET_KUBECTL` when set, else from `PATH`. Tests use the images that
//! `e2e/images/build` makes (see [`BROKER_IMAGE`] and friends) with `imagePullPolicy: Never`, so the
//! cluster must have them loaded (`e2e/cluster/up` does; for kind, `kind load image-archive`).

pub mod crash;
pub mod executions;
pub mod fixture;
pub mod gearman;
pub mod local_operator;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The gearfleet image: `gearfleet-broker` (the entrypoint; Gearman on 4730, HTTP on 9730),
/// `gearfleet-operator` and `gearfleet-drain` (the worker pods' drain hook).
pub const BROKER_IMAGE: &str = "gearfleet/gearfleet:dev";
/// The example worker image (`gearfleet-example-worker`).
pub const EXAMPLE_WORKERS_IMAGE: &str = "gearfleet/example-workers:dev";
/// Debian's stock `gearman -w` worker, for `GEARFLEET_FUNCTION`: payload `KEY SECONDS`, result
/// `done KEY`, each execution appended to `GEARFLEET_EXECUTIONS_FILE` (e2e/images/gearman-workers).
pub const GEARMAN_WORKERS_IMAGE: &str = "gearfleet/gearman-workers:dev";
/// A Python worker on PyPI's `gear`, with the same contract as [`GEARMAN_WORKERS_IMAGE`]
/// (e2e/images/gear-workers).
pub const GEAR_WORKERS_IMAGE: &str = "gearfleet/gear-workers:dev";
/// A busybox image for test pods (sh, nc, nslookup, wget).
pub const BUSYBOX_IMAGE: &str = "gearfleet/busybox:dev";

/// `kubectl` (or `GEARFLEET_KUBECTL`), for tests that run it themselves (e.g. a `--watch`).
pub fn kubectl_command() -> Command {
    Command::new(std::env::var("GEARFLEET_KUBECTL").unwrap_or_else(|_| "kubectl".to_string()))
}

/// A reachable cluster, driven through `kubectl`.
#[derive(Clone)]
pub struct Cluster {
    kubeconfig: Option<String>,
}

impl Cluster {
    /// The cluster named by `KUBECONFIG` (or kubectl's default), if it answers.
    pub fn connect() -> Option<Cluster> {
        let cluster = Cluster { kubeconfig: std::env::var("KUBECONFIG").ok() };
        let reachable = kubectl_command()
            .args(["get", "--raw", "/readyz", "--request-timeout=5s"])
            .envs(cluster.env())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if reachable {
            return Some(cluster);
        }
        assert!(
            std::env::var("GEARFLEET_REQUIRE_CLUSTER").as_deref() != Ok("1"),
            "GEARFLEET_REQUIRE_CLUSTER=1 but no Kubernetes cluster is reachable (KUBECONFIG={:?})",
            cluster.kubeconfig
        );
        eprintln!("skipping: no Kubernetes cluster reachable (set KUBECONFIG to run the e2e suite)");
        None
    }

    fn env(&self) -> Vec<(String, String)> {
        self.kubeconfig.iter().map(|k| ("KUBECONFIG".to_string(), k.clone())).collect()
    }

    /// Runs kubectl with `args`, feeding `stdin` if given.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = kubectl_command()
            .args(args)
            .envs(self.env())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        if let Some(input) = stdin {
            child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
        }
        drop(child.stdin.take());
        child.wait_with_output().expect("kubectl finishes")
    }

    /// Runs kubectl and fails the test with its output unless it succeeds.
    pub fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Cluster {
    /// Runs Helm (`scripts/helm.sh`, which builds it once from the Go module proxy) against this
    /// cluster.
    pub fn helm(&self, args: &[&str]) -> Output {
        Command::new("bash")
            .arg(repo_root().join("scripts/helm.sh"))
            .args(args)
            .envs(self.env())
            .current_dir(repo_root())
            .stdin(Stdio::null())
            .output()
            .expect("scripts/helm.sh runs")
    }

    /// Runs Helm and fails the test with its output unless it succeeds.
    pub fn helm_ok(&self, args: &[&str]) -> String {
        let out = self.helm(args);
        assert!(
            out.status.success(),
            "helm {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Creates a namespace named `<prefix>-<unique suffix>`, deleted again when the returned guard
    /// is dropped (also when the test panics), unless `GEARFLEET_E2E_KEEP=1`. Waits for its `default`
    /// ServiceAccount, without which no pod can be created in it.
    pub fn namespace(&self, prefix: &str) -> Namespace<'_> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let name = format!("{prefix}-{}-{:x}", std::process::id(), nanos % 0x10000);
        self.kubectl_ok(&["create", "namespace", &name], None);
        let ns = Namespace { cluster: self, name };
        ns.cluster.eventually(Duration::from_secs(60), "the namespace's default ServiceAccount", || {
            let out = ns.kubectl(&["get", "serviceaccount", "default", "-o", "name"], None);
            out.status.success().then_some(())
        });
        ns
    }

    /// Installs (or updates) the gearfleet CRDs from `deploy/crds.yaml` and waits until both are
    /// Established.
    pub fn install_crds(&self) {
        let crds = repo_root().join("deploy/crds.yaml");
        self.kubectl_ok(&["apply", "--server-side", "-f", crds.to_str().expect("utf-8 path")], None);
        // Right after creation a CRD has no status.conditions yet and `kubectl wait` fails outright on
        // that ("accessor error: <nil> is of the type <nil>") instead of waiting, so retry it.
        self.eventually(Duration::from_secs(60), "the CRDs to be Established", || {
            let args = [
                "wait",
                "--for=condition=Established",
                "--timeout=5s",
                "crd/workerpools.gearfleet.dev",
                "crd/jobs.gearfleet.dev",
            ];
            self.kubectl(&args, None).status.success().then_some(())
        });
    }

    /// Calls `probe` every half second until it returns `Some`, and fails the test with `what` after
    /// `timeout`.
    pub fn eventually<T>(&self, timeout: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = probe() {
                return value;
            }
            assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// A namespace that a test owns: every kubectl call through it is made in that namespace.
pub struct Namespace<'a> {
    cluster: &'a Cluster,
    name: String,
}

impl Namespace<'_> {
    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cluster it lives in.
    pub fn cluster(&self) -> &Cluster {
        self.cluster
    }

    fn args<'b>(&'b self, args: &[&'b str]) -> Vec<&'b str> {
        let mut all = vec!["--namespace", self.name.as_str()];
        all.extend_from_slice(args);
        all
    }

    /// Runs kubectl in this namespace.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        self.cluster.kubectl(&self.args(args), stdin)
    }

    /// Runs kubectl in this namespace and fails the test with its output unless it succeeds.
    pub fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        self.cluster.kubectl_ok(&self.args(args), stdin)
    }

    /// `spec.replicas` of `deployment`, if it exists.
    pub fn replicas(&self, deployment: &str) -> Option<i32> {
        let out = self.kubectl(&["get", "deployment", deployment, "-o", "jsonpath={.spec.replicas}"], None);
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().parse().ok()).flatten()
    }

    /// Waits until `deployment` exists (the operator may not have created it yet) and has rolled out.
    pub fn wait_for_rollout(&self, deployment: &str, timeout: Duration) {
        let started = Instant::now();
        self.cluster.eventually(timeout, &format!("deployment {deployment} to be created"), || {
            self.kubectl(&["get", "deployment", deployment], None).status.success().then_some(())
        });
        let left = timeout.saturating_sub(started.elapsed()).max(Duration::from_secs(5));
        let timeout_arg = format!("--timeout={}s", left.as_secs());
        self.kubectl_ok(&["rollout", "status", &format!("deployment/{deployment}"), &timeout_arg], None);
    }

    /// `kubectl apply -f -` of `manifest` (YAML or JSON) in this namespace.
    pub fn apply(&self, manifest: &str) -> String {
        self.kubectl_ok(&["apply", "-f", "-"], Some(manifest))
    }

    /// Prints the namespace's pods, events and container logs to stderr: call it before failing.
    pub fn dump(&self) {
        let pods = self.kubectl(&["get", "pods", "-o", "name"], None);
        let pods = String::from_utf8_lossy(&pods.stdout).into_owned();
        let mut commands: Vec<Vec<&str>> =
            vec![vec!["get", "all", "-o", "wide"], vec!["get", "events", "--sort-by=.lastTimestamp"]];
        for pod in pods.lines() {
            commands.push(vec!["logs", pod, "--all-containers", "--prefix", "--tail=50"]);
        }
        for args in &commands {
            let out = self.kubectl(args, None);
            eprintln!(
                "--- kubectl {}\n{}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

impl Drop for Namespace<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump();
        }
        if std::env::var("GEARFLEET_E2E_KEEP").as_deref() == Ok("1") {
            eprintln!("keeping namespace {} (GEARFLEET_E2E_KEEP=1)", self.name);
            return;
        }
        let out = self.cluster.kubectl(&["delete", "namespace", &self.name, "--wait=true", "--timeout=90s"], None);
        if !out.status.success() {
            eprintln!("could not delete namespace {}: {}", self.name, String::from_utf8_lossy(&out.stderr));
        }
    }
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("e2e/ has a parent").to_path_buf()
}
