//! The Deployment the operator wants for each function of a `WorkerPool`
//! (pure: no I/O).
//!
//! Every Deployment is named [`WorkerPool::deployment_name`], owned by the
//! pool (controller owner reference, so deleting the pool deletes it), and
//! labelled with [`LABEL_POOL`] and [`LABEL_FUNCTION`] on the Deployment, its
//! selector and its pod template. The pod template is the function's own
//! template or else the pool's; every container of it gets the environment a
//! gearfleet worker reads (see [`worker_env`]).

use std::collections::BTreeMap;

use gearfleet_crd::{ENV_FUNCTION, ENV_POOL, ENV_SERVERS, FunctionSpec, LABEL_FUNCTION, LABEL_POOL, WorkerPool};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::{Resource, ResourceExt};

use super::drain_hook::{DrainHook, add_drain_hook};

/// Environment variable with the function's `timeout`, when set.
pub const ENV_FUNCTION_TIMEOUT: &str = "GEARFLEET_FUNCTION_TIMEOUT";
/// Environment variable with the pod's name (the worker's client id).
pub const ENV_POD_NAME: &str = "POD_NAME";
/// `app.kubernetes.io/managed-by` value on everything the operator creates.
pub const MANAGED_BY: &str = "gearfleet-operator";

/// Why no Deployment can be built for a function.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DesiredError {
    /// Neither the function nor the pool has a pod template.
    #[error("function {0} has no pod template and the pool has none either")]
    NoTemplate(String),
    /// The pool has no uid yet (it was never stored by the API server).
    #[error("the WorkerPool has no metadata.uid")]
    NoUid,
}

/// Labels that select the pods of one function of one pool.
pub fn selector_labels(pool: &str, function: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(LABEL_POOL.to_string(), pool.to_string()), (LABEL_FUNCTION.to_string(), function.to_string())])
}

/// What the operator gives every worker pod, whatever the pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerPods {
    /// The brokers, `GEARMAN_SERVERS` in every worker container.
    pub broker_address: String,
    /// The drain hook, unless the operator runs without one (`--drain-hook-image ''`).
    pub drain_hook: Option<DrainHook>,
}

impl WorkerPods {
    /// Workers given `broker_address`, without a drain hook.
    pub fn new(broker_address: impl Into<String>) -> WorkerPods {
        WorkerPods { broker_address: broker_address.into(), drain_hook: None }
    }
}

/// The variables injected into every worker container, in this order.
pub fn worker_env(pool: &str, function: &FunctionSpec, broker_address: &str) -> Vec<EnvVar> {
    let plain = |name: &str, value: &str| EnvVar {
        name: name.to_string(),
        value: Some(value.to_string()),
        ..Default::default()
    };
    let mut env = vec![plain(ENV_SERVERS, broker_address), plain(ENV_POOL, pool), plain(ENV_FUNCTION, &function.name)];
    if let Some(timeout) = &function.timeout {
        env.push(plain(ENV_FUNCTION_TIMEOUT, timeout.as_str()));
    }
    env.push(EnvVar {
        name: ENV_POD_NAME.to_string(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: "metadata.name".to_string(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    });
    env
}

/// The Deployment for `function` of `pool` with `replicas` pods, set up as `pods` says (the
/// brokers, and the drain hook unless the pool turns it off with `spec.drainHook: false`).
pub fn desired_deployment(
    pool: &WorkerPool,
    function: &FunctionSpec,
    replicas: i32,
    pods: &WorkerPods,
) -> Result<Deployment, DesiredError> {
    let broker_address = pods.broker_address.as_str();
    let pool_name = pool.name_any();
    let owner = pool.controller_owner_ref(&()).ok_or(DesiredError::NoUid)?;
    let mut template =
        pool.spec.pod_template(function).cloned().ok_or_else(|| DesiredError::NoTemplate(function.name.clone()))?;
    let selector = selector_labels(&pool_name, &function.name);

    let meta = template.metadata.get_or_insert_with(ObjectMeta::default);
    meta.labels.get_or_insert_with(BTreeMap::new).extend(selector.clone());

    let injected = worker_env(&pool_name, function, broker_address);
    if let Some(spec) = template.spec.as_mut() {
        for container in &mut spec.containers {
            let env = container.env.get_or_insert_with(Vec::new);
            env.retain(|e| !injected.iter().any(|i| i.name == e.name));
            env.extend(injected.iter().cloned());
        }
        if let Some(hook) = pods.drain_hook.as_ref().filter(|_| pool.spec.drain_hook) {
            add_drain_hook(spec, hook, broker_address, pool.spec.scaling.drain_timeout());
        }
    }

    let mut labels = selector.clone();
    labels.insert("app.kubernetes.io/managed-by".to_string(), MANAGED_BY.to_string());
    Ok(Deployment {
        metadata: ObjectMeta {
            name: Some(pool.deployment_name(&function.name)),
            namespace: pool.namespace(),
            labels: Some(labels),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas.max(0)),
            selector: LabelSelector { match_labels: Some(selector), ..Default::default() },
            template,
            ..Default::default()
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const POOL: &str = r#"
apiVersion: gearfleet.dev/v1alpha1
kind: WorkerPool
metadata:
  name: media
  namespace: jobs
  uid: 0b6f6a1e-1111-2222-3333-444455556666
spec:
  template:
    metadata:
      labels: {team: media}
    spec:
      containers:
        - name: worker
          image: example/workers:1
          env:
            - {name: GEARMAN_SERVERS, value: "wrong:1"}
            - {name: LOG, value: debug}
        - name: sidecar
          image: example/sidecar:1
  functions:
    - name: resize
      maxReplicas: 4
      timeout: 30s
    - name: encode
      template:
        spec:
          containers:
            - name: encoder
              image: example/encoder:2
"#;

    fn pool() -> WorkerPool {
        serde_yaml::from_str(POOL).expect("fixture parses")
    }

    fn env_of(dep: &Deployment, container: usize) -> Vec<(String, Option<String>, Option<String>)> {
        let spec = dep.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        spec.containers[container]
            .env
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|e| {
                let field = e.value_from.and_then(|v| v.field_ref).map(|f| f.field_path);
                (e.name, e.value, field)
            })
            .collect()
    }

    #[test]
    fn deployment_has_name_owner_labels_selector_and_replicas() {
        let pool = pool();
        let dep =
            desired_deployment(&pool, &pool.spec.functions[0], 3, &WorkerPods::new("gearfleet-broker:4730")).unwrap();
        assert_eq!(dep.metadata.name.as_deref(), Some("media-resize"));
        assert_eq!(dep.metadata.namespace.as_deref(), Some("jobs"));
        let owner = &dep.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("WorkerPool", "media"));
        assert_eq!(owner.uid, "0b6f6a1e-1111-2222-3333-444455556666");
        assert_eq!(owner.controller, Some(true));
        let labels = dep.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[LABEL_POOL], "media");
        assert_eq!(labels[LABEL_FUNCTION], "resize");
        let spec = dep.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.selector.match_labels.as_ref().unwrap(), &selector_labels("media", "resize"));
        let pod_labels = spec.template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
        assert_eq!(pod_labels["team"], "media");
        assert_eq!(pod_labels[LABEL_POOL], "media");
        assert_eq!(pod_labels[LABEL_FUNCTION], "resize");
    }

    #[test]
    fn env_is_injected_into_every_container_and_overrides_the_template() {
        let pool = pool();
        let dep =
            desired_deployment(&pool, &pool.spec.functions[0], 1, &WorkerPods::new("broker.example:4730")).unwrap();
        let s = |v: &str| Some(v.to_string());
        let expected_tail = vec![
            ("GEARMAN_SERVERS".to_string(), s("broker.example:4730"), None),
            ("GEARFLEET_POOL".to_string(), s("media"), None),
            ("GEARFLEET_FUNCTION".to_string(), s("resize"), None),
            ("GEARFLEET_FUNCTION_TIMEOUT".to_string(), s("30s"), None),
            ("POD_NAME".to_string(), None, s("metadata.name")),
        ];
        let worker = env_of(&dep, 0);
        assert_eq!(worker[0], ("LOG".to_string(), s("debug"), None));
        assert_eq!(worker[1..].to_vec(), expected_tail);
        assert_eq!(env_of(&dep, 1), expected_tail);
    }

    #[test]
    fn function_template_overrides_the_pool_template_and_timeout_is_optional() {
        let pool = pool();
        let dep = desired_deployment(&pool, &pool.spec.functions[1], 0, &WorkerPods::new("b:4730")).unwrap();
        assert_eq!(dep.metadata.name.as_deref(), Some("media-encode"));
        let spec = dep.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(0));
        let containers = &spec.template.spec.as_ref().unwrap().containers;
        assert_eq!(containers.len(), 1);
        assert_eq!(containers[0].image.as_deref(), Some("example/encoder:2"));
        let names: Vec<String> = env_of(&dep, 0).into_iter().map(|e| e.0).collect();
        assert_eq!(names, ["GEARMAN_SERVERS", "GEARFLEET_POOL", "GEARFLEET_FUNCTION", "POD_NAME"]);
    }

    #[test]
    fn missing_template_or_uid_is_an_error() {
        let mut pool = pool();
        pool.spec.template = None;
        assert_eq!(
            desired_deployment(&pool, &pool.spec.functions[0], 1, &WorkerPods::new("b:4730")),
            Err(DesiredError::NoTemplate("resize".to_string()))
        );
        let mut pool = self::pool();
        pool.metadata.uid = None;
        assert_eq!(
            desired_deployment(&pool, &pool.spec.functions[0], 1, &WorkerPods::new("b:4730")),
            Err(DesiredError::NoUid)
        );
    }

    #[test]
    fn the_drain_hook_is_added_unless_the_operator_or_the_pool_turns_it_off() {
        let mut pool = pool();
        let hook = DrainHook { image: "gearfleet/gearfleet:1".into(), port: 9741 };
        let pods = WorkerPods { broker_address: "b:4730".into(), drain_hook: Some(hook) };
        let pod_spec = |pool: &WorkerPool, pods: &WorkerPods| {
            let dep = desired_deployment(pool, &pool.spec.functions[0], 1, pods).unwrap();
            dep.spec.unwrap().template.spec.unwrap()
        };
        let with = pod_spec(&pool, &pods);
        let sidecar = &with.init_containers.as_ref().expect("the sidecar")[0];
        assert_eq!(sidecar.name, "gearfleet-drain");
        let env = sidecar.env.as_ref().unwrap();
        assert!(env.iter().any(|e| e.name == "GEARFLEET_DRAIN_TIMEOUT" && e.value.as_deref() == Some("600s")));
        assert_eq!(with.termination_grace_period_seconds, Some(630), "the default drainTimeout, 10m, + 30 s");
        assert!(with.containers.iter().all(|c| c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()).is_some()));

        assert!(pod_spec(&pool, &WorkerPods::new("b:4730")).init_containers.is_none(), "operator without a hook");
        pool.spec.drain_hook = false;
        let without = pod_spec(&pool, &pods);
        assert!(without.init_containers.is_none() && without.termination_grace_period_seconds.is_none());
        assert!(without.containers.iter().all(|c| c.lifecycle.is_none()));
    }

    #[test]
    fn serializes_with_api_version_and_kind_for_server_side_apply() {
        let pool = pool();
        let dep = desired_deployment(&pool, &pool.spec.functions[0], 2, &WorkerPods::new("b:4730")).unwrap();
        let json = serde_json::to_value(&dep).unwrap();
        assert_eq!(json["apiVersion"], "apps/v1");
        assert_eq!(json["kind"], "Deployment");
        assert!(json.get("status").is_none());
    }
}
