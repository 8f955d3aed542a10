//! The example manifests (examples/*.yaml) and the YAML examples in
//! docs/api.md parse and pass validation.

use std::path::PathBuf;

use gearfleet_crd::{Job, WorkerPool};
use kube::ResourceExt;
use serde::Deserialize;

fn repo_file(rel: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn example_workerpool() {
    let pool: WorkerPool = serde_yaml::from_str(&repo_file("examples/workerpool.yaml")).unwrap();
    pool.spec.validate().unwrap();
    assert_eq!(pool.name_any(), "demo");
    let names: Vec<_> = pool.spec.functions.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["echo", "reverse", "sleep"]);
    for f in &pool.spec.functions {
        let t = pool.spec.pod_template(f).expect("template");
        let c = &t.spec.as_ref().unwrap().containers[0];
        // The image of this release (e2e/images/build and the Dockerfile tag it so); its entrypoint
        // serves the function the operator names in GEARFLEET_FUNCTION, so no command or args.
        let image = format!("gearfleet/example-workers:{}", env!("CARGO_PKG_VERSION"));
        assert_eq!(c.image.as_deref(), Some(image.as_str()));
        assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
        assert!(c.command.is_none() && c.args.is_none(), "{:?} {:?}", c.command, c.args);
    }
    assert_eq!(pool.deployment_name("reverse"), "demo-reverse");
}

#[test]
fn example_job() {
    let job: Job = serde_yaml::from_str(&repo_file("examples/job.yaml")).unwrap();
    job.spec.validate().unwrap();
    assert_eq!(job.spec.function, "reverse");
    assert_eq!(job.spec.payload.as_deref(), Some("hello gearfleet"));
}

/// Every ```yaml block of docs/api.md that is a WorkerPool or Job parses and
/// validates (blocks marked `# invalid` must fail validation instead).
#[test]
fn docs_examples() {
    let doc = repo_file("docs/api.md");
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in doc.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```yaml") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), l) => {
                block.push_str(l);
                block.push('\n');
            }
            _ => {}
        }
    }
    let (mut pools, mut jobs) = (0, 0);
    for block in &blocks {
        for doc in serde_yaml::Deserializer::from_str(block) {
            let value = serde_yaml::Value::deserialize(doc).unwrap();
            let invalid = block.contains("# invalid");
            match value.get("kind").and_then(|k| k.as_str()) {
                Some("WorkerPool") if value.get("apiVersion").is_some() => {
                    let pool: WorkerPool = serde_yaml::from_value(value).unwrap();
                    assert_eq!(pool.spec.validate().is_err(), invalid, "{block}");
                    pools += 1;
                }
                Some("Job") if value.get("apiVersion").is_some() => {
                    let job: Job = serde_yaml::from_value(value).unwrap();
                    assert_eq!(job.spec.validate().is_err(), invalid, "{block}");
                    jobs += 1;
                }
                _ => {}
            }
        }
    }
    assert!(pools >= 1 && jobs >= 1, "docs/api.md has no complete examples");
}
