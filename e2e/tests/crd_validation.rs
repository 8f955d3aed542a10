//! The CRDs on a real apiserver: they install, the examples are accepted, and the schema and CEL
//! rules refuse bad specs at `kubectl apply` with their readable messages.

use gearfleet_e2e::{Cluster, repo_root};

const BAD_POOLS: &[(&str, &str)] = &[
    ("minReplicas must not exceed maxReplicas", r#"{"name":"a","minReplicas":5,"maxReplicas":2}"#),
    ("function names must be unique", r#"{"name":"a"},{"name":"a"}"#),
];

fn pool(functions: &str) -> String {
    format!(
        r#"{{"apiVersion":"gearfleet.dev/v1alpha1","kind":"WorkerPool","metadata":{{"name":"bad-pool"}},
        "spec":{{"template":{{"spec":{{"containers":[{{"name":"w","image":"busybox"}}]}}}},"functions":[{functions}]}}}}"#
    )
}

#[test]
fn crds_install_and_refuse_bad_specs_with_readable_messages() {
    let Some(cluster) = Cluster::connect() else { return };
    cluster.install_crds();

    for example in ["examples/workerpool.yaml", "examples/job.yaml"] {
        let path = repo_root().join(example);
        cluster.kubectl_ok(&["apply", "--dry-run=server", "-f", path.to_str().unwrap()], None);
    }

    for (message, functions) in BAD_POOLS {
        let out = cluster.kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&pool(functions)));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted a bad pool: {functions}");
        assert!(stderr.contains(message), "expected {message:?} in {stderr}");
    }

    let job = r#"{"apiVersion":"gearfleet.dev/v1alpha1","kind":"Job","metadata":{"name":"bad-job"},
        "spec":{"function":"f","payload":"x","payloadFrom":{"configMapKeyRef":{"name":"c","key":"k"}}}}"#;
    let out = cluster.kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(job));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("payload and payloadFrom are mutually exclusive"));
}
