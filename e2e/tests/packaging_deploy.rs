//! `kubectl apply -f deploy/` (plain, client-side) installs gearfleet with default values into
//! `gearfleet-system`; the example WorkerPool's workers then serve jobs through the broker Service;
//! `kubectl delete -f deploy/gearfleet.yaml` removes it again.

use std::time::Duration;

use gearfleet_e2e::gearman::{admin, call};
use gearfleet_e2e::{Cluster, repo_root};

#[test]
fn kubectl_apply_of_deploy_installs_a_working_gearfleet() {
    let Some(cluster) = Cluster::connect() else { return };
    let deploy = repo_root().join("deploy");
    let deploy = deploy.to_str().expect("utf-8 path");
    // Plain client-side apply, as a user would type it; twice, to show it is repeatable.
    for _ in 0..2 {
        let out = cluster.kubectl(&["apply", "-f", deploy], None);
        assert!(
            out.status.success(),
            "kubectl apply -f deploy/ failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let system = ["--namespace", "gearfleet-system"];
    let rollout = [&system[..], &["rollout", "status", "statefulset/gearfleet", "--timeout=180s"]].concat();
    cluster.kubectl_ok(&rollout, None);
    let get_ip = [&system[..], &["get", "service", "gearfleet-broker", "-o", "jsonpath={.spec.clusterIP}"]].concat();
    let broker = format!("{}:4730", cluster.kubectl_ok(&get_ip, None).trim());
    cluster.eventually(Duration::from_secs(60), "the broker to answer", || admin(&broker, "status").map(|_| ()));

    let ns = cluster.namespace("gf-deploy");
    let example = repo_root().join("examples/workerpool.yaml");
    ns.kubectl_ok(&["apply", "-f", example.to_str().expect("utf-8 path")], None);
    ns.wait_for_rollout("demo-echo", Duration::from_secs(120));
    let echoed = call(&broker, "echo", b"installed with kubectl", Duration::from_secs(60)).expect("echo job");
    assert_eq!(echoed, b"installed with kubectl");

    ns.kubectl_ok(&["delete", "-f", example.to_str().expect("utf-8 path"), "--wait=true"], None);
    let manifest = repo_root().join("deploy/gearfleet.yaml");
    cluster
        .kubectl_ok(&["delete", "-f", manifest.to_str().expect("utf-8 path"), "--wait=true", "--timeout=120s"], None);
    let left = cluster.kubectl(&["get", "namespace", "gearfleet-system"], None);
    assert!(!left.status.success(), "gearfleet-system still exists after kubectl delete -f deploy/gearfleet.yaml");
}
