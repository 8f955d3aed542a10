//! Smoke test of the images and the cluster plumbing the rest of the suite relies on: the broker image
//! runs as a Deployment behind a Service, and a pod elsewhere in the cluster finds it by its DNS name
//! and speaks Gearman's text admin protocol and HTTP to it through the Service.

use std::time::Duration;

use gearfleet_e2e::local_operator::broker_manifests;
use gearfleet_e2e::{BUSYBOX_IMAGE, Cluster, EXAMPLE_WORKERS_IMAGE};

/// The broker Deployment and Service, and a busybox pod `client` to probe them from.
fn manifests() -> String {
    let broker = broker_manifests();
    format!(
        r#"{broker}
---
apiVersion: v1
kind: Pod
metadata:
  name: client
spec:
  terminationGracePeriodSeconds: 0
  containers:
    - name: client
      image: {BUSYBOX_IMAGE}
      imagePullPolicy: Never
      command: ["sleep", "3600"]
"#
    )
}

#[test]
fn broker_is_reachable_by_service_name_from_another_pod() {
    let Some(cluster) = Cluster::connect() else { return };
    let ns = cluster.namespace("gearfleet-smoke");
    ns.apply(&manifests());
    ns.kubectl_ok(&["rollout", "status", "deployment/gearfleet-broker", "--timeout=120s"], None);
    ns.kubectl_ok(&["wait", "--for=condition=Ready", "pod/client", "--timeout=120s"], None);

    let fqdn = format!("gearfleet-broker.{}.svc.cluster.local", ns.name());
    let host = format!("gearfleet-broker.{}.svc", ns.name());
    let cluster_ip = ns.kubectl_ok(&["get", "service", "gearfleet-broker", "-o", "jsonpath={.spec.clusterIP}"], None);
    let exec = |script: &str| ns.kubectl(&["exec", "client", "--", "sh", "-c", script], None);

    // Cluster DNS: the Service's name resolves to its ClusterIP (busybox's nslookup uses no search
    // list, hence the full name here; nc and wget below go through the libc resolver and its list).
    let lookup = cluster.eventually(Duration::from_secs(60), &format!("{fqdn} to resolve"), || {
        let out = exec(&format!("nslookup {fqdn}"));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success() && text.contains(cluster_ip.trim())).then_some(text)
    });
    eprintln!("{lookup}");

    // Gearman text protocol through the Service (kube-proxy) to the broker pod.
    let reply = cluster.eventually(Duration::from_secs(60), "the broker to answer `version`", || {
        let out = exec(&format!("printf 'version\\n' | nc -w 2 {host} 4730"));
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (!text.is_empty()).then_some(text)
    });
    eprintln!("version: {reply}");
    assert!(reply.starts_with("OK "), "`version` answered {reply:?}, expected `OK <version>`");

    // The short name, through the pod's search list (the client is in the same namespace).
    let status = exec("printf 'status\\n' | nc -w 2 gearfleet-broker 4730");
    let status = String::from_utf8_lossy(&status.stdout);
    assert_eq!(status.lines().last(), Some("."), "`status` should end with a `.` line, got {status:?}");

    // HTTP port through the same Service name.
    // (Debian's busybox-static 1.35 wget crashes on its own -T option, hence `timeout`.)
    let out = exec(&format!(
        "timeout 10 wget -q -O /dev/null http://{host}:9730/healthz && timeout 10 wget -q -O - http://{host}:9730/metrics"
    ));
    assert!(out.status.success(), "HTTP on 9730 failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(!out.stdout.is_empty(), "/metrics returned nothing");
}

#[test]
fn example_worker_registers_with_the_broker_through_its_service() {
    let Some(cluster) = Cluster::connect() else { return };
    let ns = cluster.namespace("gearfleet-worker-smoke");
    ns.apply(&manifests());
    ns.apply(&format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: example-workers
spec:
  replicas: 1
  selector:
    matchLabels: {{app: example-workers}}
  template:
    metadata:
      labels: {{app: example-workers}}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
        - name: worker
          image: {EXAMPLE_WORKERS_IMAGE}
          imagePullPolicy: Never
          args: ["echo", "reverse"]
          env:
            - {{name: GEARMAN_SERVERS, value: "gearfleet-broker:4730"}}
"#
    ));
    for deployment in ["deployment/gearfleet-broker", "deployment/example-workers"] {
        ns.kubectl_ok(&["rollout", "status", deployment, "--timeout=120s"], None);
    }
    ns.kubectl_ok(&["wait", "--for=condition=Ready", "pod/client", "--timeout=120s"], None);

    // `status` lines are FUNCTION\tTOTAL\tRUNNING\tAVAILABLE_WORKERS: both functions get a worker.
    let status = cluster.eventually(Duration::from_secs(60), "the worker's functions in `status`", || {
        let out = ns
            .kubectl(&["exec", "client", "--", "sh", "-c", "printf 'status\\n' | nc -w 2 gearfleet-broker 4730"], None);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let workers = |function: &str| {
            text.lines()
                .map(|line| line.split('\t').collect::<Vec<_>>())
                .find(|fields| fields.first() == Some(&function))
                .and_then(|fields| fields.get(3)?.parse::<u32>().ok())
        };
        (workers("echo") >= Some(1) && workers("reverse") >= Some(1)).then_some(text)
    });
    eprintln!("{status}");
}
