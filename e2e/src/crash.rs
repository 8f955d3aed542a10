//! Crashing a container the way the kernel's OOM killer or a sudden power loss of its process
//! would: SIGKILL, with no SIGTERM first and no grace, through the node's containerd (`ctr`). The
//! kubelet then restarts the container in the same pod, on the same volumes.
//!
//! On the project's local cluster containerd's socket is on this host, next to the kubeconfig
//! (`<state>/run/containerd.sock`; `GEARFLEET_CONTAINERD_SOCKET` overrides it). On kind it is
//! inside the node's container: `docker exec <node> ctr ...`.

use std::path::PathBuf;
use std::process::Command;

use crate::Namespace;

/// The local cluster's containerd socket, if this host has one.
fn local_socket() -> Option<PathBuf> {
    if let Ok(s) = std::env::var("GEARFLEET_CONTAINERD_SOCKET") {
        return Some(PathBuf::from(s));
    }
    let kubeconfig = PathBuf::from(std::env::var("KUBECONFIG").ok()?);
    let socket = kubeconfig.parent()?.join("run").join("containerd.sock");
    socket.exists().then_some(socket)
}

/// The restart count of `container` in `pod`.
pub fn restarts(ns: &Namespace<'_>, pod: &str, container: &str) -> u32 {
    let path = format!("jsonpath={{.status.containerStatuses[?(@.name==\"{container}\")].restartCount}}");
    ns.kubectl_ok(&["get", "pod", pod, "-o", &path], None).trim().parse().unwrap_or(0)
}

/// Sends SIGKILL to `container` of `pod` and waits until the kubelet has seen it end.
pub fn sigkill(ns: &Namespace<'_>, pod: &str, container: &str) {
    let path = format!("jsonpath={{.status.containerStatuses[?(@.name==\"{container}\")].containerID}}");
    let id = ns.kubectl_ok(&["get", "pod", pod, "-o", &path], None);
    let id = id.trim().rsplit("://").next().unwrap_or_default().to_string();
    assert!(!id.is_empty(), "no running container {container} in pod {pod}");
    let before = restarts(ns, pod, container);
    let kill = ["-n", "k8s.io", "task", "kill", "--signal", "SIGKILL", id.as_str()];
    let out = match local_socket() {
        Some(socket) => Command::new("ctr").arg("--address").arg(socket).args(kill).output(),
        None => {
            let node = ns.kubectl_ok(&["get", "pod", pod, "-o", "jsonpath={.spec.nodeName}"], None);
            Command::new("docker").args(["exec", node.trim(), "ctr"]).args(kill).output()
        }
    };
    let out = out.unwrap_or_else(|e| panic!("running ctr to kill {pod}/{container}: {e}"));
    assert!(
        out.status.success(),
        "ctr could not kill {pod}/{container}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ns.cluster().eventually(
        std::time::Duration::from_secs(60),
        &format!("{pod}/{container} to be restarted after SIGKILL"),
        || (restarts(ns, pod, container) > before).then_some(()),
    );
}
