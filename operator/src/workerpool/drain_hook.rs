//! The drain hook the operator adds to every worker pod (pure: no I/O), so that whatever ends a
//! pod (scale-in, rollout, recycling, eviction, node drain, pool deletion) its workers are drained
//! first, whatever Gearman worker runs in it.
//!
//! Kubernetes delays a container's SIGTERM only for its `preStop` hook, and a hook that execs a
//! program needs that program in the container's own image (a distroless or scratch image has no
//! shell). So the hook is an HTTP one, served by a native sidecar (an init container with
//! `restartPolicy: Always`, which the kubelet stops only after the worker containers):
//! `gearfleet-drain` from the operator's own image. Each worker container gets
//! `preStop: httpGet /drain` on the sidecar's port; the sidecar sends `fleet drain-self` to the
//! brokers until none of the pod's connections holds a job, or until `scaling.drainTimeout`. The
//! pod's `terminationGracePeriodSeconds` covers that wait plus [`SIGTERM_MARGIN`] unless the
//! template sets its own.

use std::time::Duration;

use gearfleet_crd::ENV_SERVERS;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, HTTPGetAction, Lifecycle, LifecycleHandler, PodSpec,
    ResourceRequirements, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The sidecar's container name.
pub const CONTAINER: &str = "gearfleet-drain";
/// The path the hooks GET.
pub const PATH: &str = "/drain";
/// The program in the operator's image.
pub const PROGRAM: &str = "/usr/local/bin/gearfleet-drain";
/// Time the grace period leaves a worker after its drain for its own SIGTERM handling.
pub const SIGTERM_MARGIN: Duration = Duration::from_secs(30);

/// Where the hook comes from (operator flags `--drain-hook-image` and `--drain-hook-port`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DrainHook {
    /// The image holding [`PROGRAM`] (the operator's own image).
    pub image: String,
    /// The port it listens on in every worker pod (must not clash with the workers' ports).
    pub port: u16,
}

/// Adds the drain hook to `spec` (a worker pod template's spec): the sidecar, a `preStop` hook on
/// every container that has none, and a grace period that covers `drain_timeout`. `servers` is
/// the pod's `GEARMAN_SERVERS`. A `hostNetwork` pod gets nothing: it shares the node's IP, so a
/// drain by IP would reach every hostNetwork worker of the node.
pub fn add_drain_hook(spec: &mut PodSpec, hook: &DrainHook, servers: &str, drain_timeout: Duration) {
    if spec.host_network == Some(true) {
        return;
    }
    let handler = LifecycleHandler {
        http_get: Some(HTTPGetAction {
            path: Some(PATH.to_string()),
            port: IntOrString::Int(i32::from(hook.port)),
            ..Default::default()
        }),
        ..Default::default()
    };
    for container in &mut spec.containers {
        let lifecycle = container.lifecycle.get_or_insert_with(Lifecycle::default);
        if lifecycle.pre_stop.is_none() {
            lifecycle.pre_stop = Some(handler.clone());
        }
    }
    let init = spec.init_containers.get_or_insert_with(Vec::new);
    init.retain(|c| c.name != CONTAINER);
    // First, so that it is up before any other init container or worker starts.
    init.insert(0, sidecar(hook, servers, drain_timeout));
    if spec.termination_grace_period_seconds.is_none() {
        let seconds = (drain_timeout + SIGTERM_MARGIN).as_secs();
        spec.termination_grace_period_seconds = Some(i64::try_from(seconds).unwrap_or(i64::MAX));
    }
}

fn sidecar(hook: &DrainHook, servers: &str, drain_timeout: Duration) -> Container {
    let env = |name: &str, value: String| EnvVar { name: name.to_string(), value: Some(value), ..Default::default() };
    let quantity = |q: &str| Quantity(q.to_string());
    Container {
        name: CONTAINER.to_string(),
        image: Some(hook.image.clone()),
        command: Some(vec![PROGRAM.to_string()]),
        restart_policy: Some("Always".to_string()),
        env: Some(vec![
            env(ENV_SERVERS, servers.to_string()),
            env("GEARFLEET_DRAIN_TIMEOUT", format!("{}s", drain_timeout.as_secs())),
            env("GEARFLEET_DRAIN_LISTEN", format!("0.0.0.0:{}", hook.port)),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("drain-hook".to_string()),
            container_port: i32::from(hook.port),
            protocol: Some("TCP".to_string()),
            ..Default::default()
        }]),
        resources: Some(ResourceRequirements {
            requests: Some([("cpu".to_string(), quantity("5m")), ("memory".to_string(), quantity("8Mi"))].into()),
            limits: Some([("memory".to_string(), quantity("32Mi"))].into()),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".to_string()]), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook() -> DrainHook {
        DrainHook { image: "gearfleet/gearfleet:1".into(), port: 9741 }
    }

    fn spec(yaml: &str) -> PodSpec {
        serde_yaml::from_str(yaml).expect("pod spec")
    }

    fn pre_stop(c: &Container) -> Option<&LifecycleHandler> {
        c.lifecycle.as_ref()?.pre_stop.as_ref()
    }

    #[test]
    fn every_worker_container_gets_a_pre_stop_hook_served_by_the_sidecar() {
        let mut s =
            spec("containers: [{name: a, image: x}, {name: b, image: y}]\ninitContainers: [{name: setup, image: z}]");
        add_drain_hook(&mut s, &hook(), "broker:4730", Duration::from_secs(120));
        for c in &s.containers {
            let get = pre_stop(c).and_then(|h| h.http_get.as_ref()).expect("preStop httpGet");
            assert_eq!((get.path.as_deref(), &get.port), (Some("/drain"), &IntOrString::Int(9741)), "{}", c.name);
            assert!(get.host.is_none(), "the kubelet calls the pod's own IP");
        }
        let init = s.init_containers.as_ref().unwrap();
        let names: Vec<&str> = init.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["gearfleet-drain", "setup"], "the sidecar starts first");
        let sidecar = &init[0];
        assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"), "a native sidecar outlives the workers");
        assert_eq!(sidecar.image.as_deref(), Some("gearfleet/gearfleet:1"));
        assert_eq!(sidecar.command.as_deref(), Some(&["/usr/local/bin/gearfleet-drain".to_string()][..]));
        let env: Vec<(&str, &str)> = sidecar
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_deref().unwrap_or_default()))
            .collect();
        assert_eq!(
            env,
            [
                ("GEARMAN_SERVERS", "broker:4730"),
                ("GEARFLEET_DRAIN_TIMEOUT", "120s"),
                ("GEARFLEET_DRAIN_LISTEN", "0.0.0.0:9741")
            ]
        );
        assert_eq!(s.termination_grace_period_seconds, Some(150), "drain timeout + 30 s");
    }

    #[test]
    fn the_templates_own_hooks_and_grace_period_win_and_applying_twice_changes_nothing() {
        let mut s = spec(
            "terminationGracePeriodSeconds: 40\ncontainers:\n- name: a\n  image: x\n  lifecycle: {preStop: {exec: {command: [/bin/stop]}}}\n- {name: b, image: y}",
        );
        add_drain_hook(&mut s, &hook(), "broker:4730", Duration::from_secs(600));
        let once = s.clone();
        add_drain_hook(&mut s, &hook(), "broker:4730", Duration::from_secs(600));
        assert_eq!(s, once, "idempotent");
        assert!(pre_stop(&s.containers[0]).unwrap().exec.is_some(), "the container's own hook is kept");
        assert!(pre_stop(&s.containers[1]).unwrap().http_get.is_some());
        assert_eq!(s.termination_grace_period_seconds, Some(40), "the template's own grace period is kept");
        assert_eq!(s.init_containers.as_ref().unwrap().len(), 1);
    }

    #[test]
    fn host_network_pods_get_no_hook() {
        let mut s = spec("hostNetwork: true\ncontainers: [{name: a, image: x}]");
        let before = s.clone();
        add_drain_hook(&mut s, &hook(), "broker:4730", Duration::from_secs(60));
        assert_eq!(s, before);
    }
}
