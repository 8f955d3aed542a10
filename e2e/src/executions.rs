//! Executions counted on the worker side: the test workers (`gear-workers`, and the `gearman -w`
//! job script) append a line `KEY POD` per job to a file on a hostPath of the node,
//! `/tmp/gearfleet-e2e/<namespace>/log`. Worker pods come and go, so a reader pod shows it.

use std::collections::BTreeMap;

use crate::{BUSYBOX_IMAGE, Namespace};

/// The reader pod `executions`, with the namespace's executions directory at `/executions`.
pub fn reader_pod(ns: &Namespace<'_>) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: executions
spec:
  terminationGracePeriodSeconds: 0
  containers:
    - name: reader
      image: {BUSYBOX_IMAGE}
      imagePullPolicy: Never
      command: [sleep, "3600"]
      volumeMounts: [{{name: executions, mountPath: /executions}}]
  volumes:
    - name: executions
      hostPath: {{path: /tmp/gearfleet-e2e/{ns}, type: DirectoryOrCreate}}
"#,
        ns = ns.name()
    )
}

/// Executions per job key so far; `None` when the reader pod cannot be reached.
pub fn counts(ns: &Namespace<'_>) -> Option<BTreeMap<String, usize>> {
    let out = ns.kubectl(&["exec", "executions", "--", "cat", "/executions/log"], None);
    if !out.status.success() {
        return None;
    }
    let mut counts = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(key) = line.split_whitespace().next() {
            *counts.entry(key.to_string()).or_insert(0) += 1;
        }
    }
    Some(counts)
}
