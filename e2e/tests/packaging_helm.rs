//! The Helm chart on a real cluster: lint and render (default and all-features values), server-side
//! dry-run of what it renders, bad values refused by values.schema.json, then a real `helm install`
//! that runs the operator and its broker sidecar from the project's image, serves the example
//! WorkerPool, keeps queued background jobs across a pod replacement (the PVC), and uninstalls
//! without leaving anything behind but the CRDs.

use std::time::Duration;

use gearfleet_e2e::gearman::{admin, admin_line, backlog, call, submit_background};
use gearfleet_e2e::{Cluster, Namespace, repo_root};

const CHART: &str = "charts/gearfleet";
const ALL_FEATURES: &str = "charts/gearfleet/ci/all-features-values.yaml";
const KUBE_VERSION: &str = "1.36.0";

#[test]
fn chart_lints_renders_and_passes_a_server_side_dry_run() {
    let Some(cluster) = Cluster::connect() else { return };
    cluster.install_crds();
    cluster.helm_ok(&["lint", "--strict", CHART]);
    cluster.helm_ok(&["lint", "--strict", CHART, "-f", ALL_FEATURES]);

    let ns = cluster.namespace("gf-chart");
    let watch = format!("operator.watchNamespace={}", ns.name());
    for extra in [vec![], vec!["-f", ALL_FEATURES, "--set", watch.as_str()]] {
        let mut args = vec!["template", "gf", CHART, "--namespace", ns.name(), "--kube-version", KUBE_VERSION];
        args.extend(extra.iter().copied());
        let rendered = cluster.helm_ok(&args);
        assert!(rendered.contains("kind: StatefulSet"), "{rendered}");
        let out = ns.kubectl_ok(&["apply", "--dry-run=server", "-f", "-"], Some(&rendered));
        assert!(out.contains("statefulset.apps/gf-gearfleet created (server dry run)"), "{out}");
    }

    // Optional objects appear only when asked for, the ServiceMonitor only where its CRD exists.
    let all = cluster.helm_ok(&["template", "gf", CHART, "-f", ALL_FEATURES, "--kube-version", KUBE_VERSION]);
    for kind in ["NetworkPolicy", "PodDisruptionBudget", "ConfigMap", "Lease"] {
        assert!(all.contains(&format!("kind: {kind}\n")), "all-features values render no {kind}");
    }
    // Three brokers: each pod's journal from the claim template, each broker behind a Service of its
    // own (selecting its pod alone), every one of them named for workers.
    assert!(all.contains("volumeClaimTemplates:"), "no volume per broker");
    for i in 0..3 {
        assert!(
            all.contains(&format!("  name: gf-gearfleet-{i}\n"))
                && all.contains(&format!("statefulset.kubernetes.io/pod-name: gf-gearfleet-{i}\n")),
            "no Service of broker {i} alone"
        );
    }
    let servers = (0..3).map(|i| format!("gf-gearfleet-{i}.default.svc:4730")).collect::<Vec<_>>();
    assert!(all.contains(&servers.join(",")), "GEARMAN_SERVERS does not list the three brokers");
    assert!(!all.contains("kind: ServiceMonitor"), "ServiceMonitor rendered without its CRD");
    let with_monitoring = cluster.helm_ok(&[
        "template",
        "gf",
        CHART,
        "-f",
        ALL_FEATURES,
        "--kube-version",
        KUBE_VERSION,
        "--api-versions",
        "monitoring.coreos.com/v1/ServiceMonitor",
    ]);
    assert!(with_monitoring.contains("kind: ServiceMonitor"));
    let defaults = cluster.helm_ok(&["template", "gf", CHART, "--kube-version", KUBE_VERSION]);
    for kind in ["NetworkPolicy", "ConfigMap", "ServiceMonitor"] {
        assert!(!defaults.contains(&format!("kind: {kind}\n")), "default values render a {kind}");
    }
    assert!(defaults.contains("replicas: 1\n"), "one broker by default");

    // values.schema.json refuses bad values with a message naming the value.
    for (set, needle) in [
        ("broker.durability=sometimes", "/broker/durability"),
        ("broker.port=70000", "/broker/port"),
        ("persistence.sizee=1Gi", "sizee"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("broker.replicas=0", "/broker/replicas"),
    ] {
        let out = cluster.helm(&["template", "gf", CHART, "--kube-version", KUBE_VERSION, "--set", set]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "helm accepted --set {set}");
        assert!(stderr.contains(needle), "helm's error for --set {set} does not name it: {stderr}");
    }
}

fn broker_address(ns: &Namespace<'_>, service: &str) -> String {
    let ip = ns.kubectl_ok(&["get", "service", service, "-o", "jsonpath={.spec.clusterIP}"], None);
    format!("{}:4730", ip.trim())
}

fn wait_for_broker(ns: &Namespace<'_>, addr: &str) {
    ns.cluster().eventually(Duration::from_secs(60), "the broker to answer through its Service", || {
        admin(addr, "status").map(|_| ())
    });
}

#[test]
fn helm_install_serves_the_example_pool_keeps_jobs_and_uninstalls_cleanly() {
    let Some(cluster) = Cluster::connect() else { return };
    cluster.install_crds();
    let ns = cluster.namespace("gf-helm");
    let watch = format!("operator.watchNamespace={}", ns.name());
    let install = ["install", "gf", CHART, "--namespace", ns.name(), "--set", &watch];
    cluster
        .helm_ok(&[&install[..], &["--set", "security.adminToken.enabled=true", "--wait", "--timeout", "3m"]].concat());
    let broker = broker_address(&ns, "gf-gearfleet-broker");
    wait_for_broker(&ns, &broker);
    // The admin token is on: state changes need it, read-only commands do not.
    let refused = admin_line(&broker, "fleet drain someone").unwrap_or_default();
    assert!(refused.starts_with("ERR AUTH_REQUIRED"), "the admin token is not enforced: {refused:?}");

    // The operator holds the chart's Lease under its pod's name and UID.
    let pod = ns.kubectl_ok(
        &["get", "pods", "-l", "app.kubernetes.io/instance=gf", "-o", "jsonpath={.items[0].metadata.name}"],
        None,
    );
    cluster.eventually(Duration::from_secs(60), "the operator to hold its Lease", || {
        let holder = ns.kubectl(&["get", "lease", "gf-gearfleet", "-o", "jsonpath={.spec.holderIdentity}"], None);
        String::from_utf8_lossy(&holder.stdout).trim().starts_with(&format!("{}_", pod.trim())).then_some(())
    });

    // The example pool, as it is in the repository.
    let example = repo_root().join("examples/workerpool.yaml");
    ns.kubectl_ok(&["apply", "-f", example.to_str().expect("utf-8 path")], None);
    ns.wait_for_rollout("demo-echo", Duration::from_secs(120));
    cluster.eventually(Duration::from_secs(60), "demo-echo to have a ready worker", || {
        let out = ns.kubectl(&["get", "deployment", "demo-echo", "-o", "jsonpath={.status.readyReplicas}"], None);
        (String::from_utf8_lossy(&out.stdout).trim() == "1").then_some(())
    });
    let echoed = call(&broker, "echo", b"hello through the chart", Duration::from_secs(60)).expect("echo job");
    assert_eq!(echoed, b"hello through the chart");
    // reverse starts at zero replicas: the in-cluster operator has to scale it up for this to answer.
    let reversed = call(&broker, "reverse", b"gearfleet", Duration::from_secs(120)).expect("reverse job");
    assert_eq!(reversed, b"teelfraeg");

    // Queued background jobs survive the pod (the broker's journal is on the PVC).
    submit_background(&broker, "e2e-nobody", "durable", "x", 5);
    assert_eq!(backlog(&broker, "e2e-nobody"), Some((5, 0)));
    ns.kubectl_ok(&["delete", "pod", "-l", "app.kubernetes.io/instance=gf", "--wait=true"], None);
    ns.kubectl_ok(&["rollout", "status", "statefulset/gf-gearfleet", "--timeout=120s"], None);
    cluster.eventually(Duration::from_secs(90), "the new broker to report the 5 queued jobs", || {
        (backlog(&broker, "e2e-nobody")? == (5, 0)).then_some(())
    });

    // Uninstall: the WorkerPool goes first (its Deployments with it), then the release.
    ns.kubectl_ok(&["delete", "-f", example.to_str().expect("utf-8 path"), "--wait=true"], None);
    cluster.helm_ok(&["uninstall", "gf", "--namespace", ns.name(), "--wait", "--timeout", "2m"]);
    cluster.eventually(Duration::from_secs(60), "nothing of the release to remain", || {
        let out = ns.kubectl_ok(
            &["get", "all,pvc,configmap,secret,serviceaccount,role,rolebinding,lease,networkpolicy,pdb", "-o", "name"],
            None,
        );
        let left: Vec<&str> = out
            .lines()
            .filter(|l| !l.ends_with("/kube-root-ca.crt") && !l.ends_with("serviceaccount/default"))
            .collect();
        left.is_empty().then_some(()).or_else(|| {
            eprintln!("still there: {left:?}");
            None
        })
    });
    let crds = cluster.kubectl_ok(&["get", "crd", "workerpools.gearfleet.dev", "-o", "name"], None);
    assert!(crds.contains("workerpools.gearfleet.dev"), "the CRDs stay (documented)");
}
