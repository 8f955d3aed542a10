//! Helpers for the end-to-end suite. The suite needs only a KUBECONFIG: a kind cluster
//! (`e2e/kind.yaml`) or the project's own local cluster. With no cluster reachable each test prints
//! one line saying so and returns; with `GEARFLEET_REQUIRE_CLUSTER=1` that is a failure instead.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// A reachable cluster, driven through `kubectl`.
pub struct Cluster {
    kubeconfig: Option<String>,
}

impl Cluster {
    /// The cluster named by `KUBECONFIG` (or kubectl's default), if it answers.
    pub fn connect() -> Option<Cluster> {
        let cluster = Cluster { kubeconfig: std::env::var("KUBECONFIG").ok() };
        let reachable = Command::new("kubectl")
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
        let mut child = Command::new("kubectl")
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

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("e2e/ has a parent").to_path_buf()
}
