//! Worker pods that are gone for good (pure): their worker will never close its broker
//! connections, so the broker would hold their jobs until TCP keepalive gives up. The operator
//! closes those connections itself (`fleet disconnect`), and the jobs go back to the queue.
//!
//! A pod is gone for good when
//!
//! * its node is lost: the node's `Ready` condition is `Unknown` (the kubelet stopped reporting
//!   for the node-monitor grace period) or the Node object is gone. Its pods' IPs stay with the
//!   node's pod range, so connections are matched by client id and by address;
//! * or it is in phase `Failed` on a node that is up. Its processes have exited, and the kernel
//!   closed their sockets, so there is rarely anything left; its IP went back to the node and may
//!   be another pod's now, so only connections that name the pod (client id) are its.
//!
//! A node whose kubelet reports `Ready=False` is not lost: the kubelet is alive, the node's
//! containers may still run and their connections are real (a node that dies turns `Unknown`
//! within the grace period). A pod deleted with `--force` on a live node needs nothing: the
//! kubelet kills its containers, and the closed connection re-queues the job.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod};

use super::connections::PodIdentity;

/// What the operator knows of a node that runs pods of the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    /// Its `Ready` condition is `True` or `False`: the kubelet reports.
    Reporting,
    /// Its `Ready` condition is `Unknown` (or missing): the kubelet has stopped reporting.
    Unreachable,
    /// No such Node object.
    Missing,
}

impl NodeState {
    /// The state of a node read from the API (`None`: not found).
    pub fn of(node: Option<&Node>) -> Self {
        let Some(node) = node else { return NodeState::Missing };
        let conditions = node.status.as_ref().and_then(|s| s.conditions.as_ref());
        let ready = conditions.and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
        match ready.map(|c| c.status.as_str()) {
            Some("True" | "False") => NodeState::Reporting,
            _ => NodeState::Unreachable,
        }
    }
}

/// The nodes of the pool's pods, by name.
pub type NodeStates = BTreeMap<String, NodeState>;

/// Why a pod is gone for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gone {
    /// Its node is unreachable or deleted.
    NodeLost,
    /// It failed on a node that is up.
    Failed,
}

impl Gone {
    /// For the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Gone::NodeLost => "its node is unreachable or gone",
            Gone::Failed => "the pod failed",
        }
    }
}

/// Whether `pod` is gone for good, given the states of the nodes (`None` when they could not be
/// read: then only a failed pod is).
pub fn gone_for_good(pod: &Pod, nodes: Option<&NodeStates>) -> Option<Gone> {
    let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
    let lost = node
        .and_then(|n| nodes?.get(n))
        .is_some_and(|state| matches!(state, NodeState::Unreachable | NodeState::Missing));
    if lost {
        return Some(Gone::NodeLost);
    }
    let failed = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed");
    failed.then_some(Gone::Failed)
}

/// The identity a gone pod's connections are matched by: a failed pod's IP may be another pod's
/// now (see the module docs), so it is matched by name only ([`PodIdentity::of`] knows); so is a
/// pod whose IP a pod of the pool that is not gone has (`live_ips`).
pub fn gone_identity(pod: &Pod, gone: Gone, live_ips: &[std::net::IpAddr]) -> PodIdentity {
    let mut identity = PodIdentity::of(pod);
    if gone == Gone::Failed || identity.ips.iter().any(|ip| live_ips.contains(ip)) {
        identity.ips.clear();
    }
    identity
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{NodeCondition, NodeStatus, PodSpec, PodStatus};

    use super::*;

    fn node(ready: Option<&str>) -> Node {
        let conditions =
            ready.map(|s| vec![NodeCondition { type_: "Ready".into(), status: s.into(), ..Default::default() }]);
        Node { status: Some(NodeStatus { conditions, ..Default::default() }), ..Default::default() }
    }

    fn pod(node: Option<&str>, phase: &str) -> Pod {
        Pod {
            spec: Some(PodSpec { node_name: node.map(String::from), ..Default::default() }),
            status: Some(PodStatus { phase: Some(phase.into()), ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn node_states() {
        assert_eq!(NodeState::of(Some(&node(Some("True")))), NodeState::Reporting);
        assert_eq!(NodeState::of(Some(&node(Some("False")))), NodeState::Reporting, "the kubelet is alive");
        assert_eq!(NodeState::of(Some(&node(Some("Unknown")))), NodeState::Unreachable);
        assert_eq!(NodeState::of(Some(&node(None))), NodeState::Unreachable);
        assert_eq!(NodeState::of(None), NodeState::Missing);
    }

    #[test]
    fn gone_pods() {
        let nodes = NodeStates::from([
            ("up".to_string(), NodeState::Reporting),
            ("dark".to_string(), NodeState::Unreachable),
            ("deleted".to_string(), NodeState::Missing),
        ]);
        let nodes = Some(&nodes);
        assert_eq!(gone_for_good(&pod(Some("up"), "Running"), nodes), None);
        assert_eq!(gone_for_good(&pod(Some("up"), "Failed"), nodes), Some(Gone::Failed));
        assert_eq!(gone_for_good(&pod(Some("dark"), "Running"), nodes), Some(Gone::NodeLost));
        assert_eq!(gone_for_good(&pod(Some("deleted"), "Running"), nodes), Some(Gone::NodeLost));
        assert_eq!(gone_for_good(&pod(Some("unlisted"), "Running"), nodes), None, "not looked up: not known lost");
        assert_eq!(gone_for_good(&pod(None, "Pending"), nodes), None, "not scheduled");
        assert_eq!(gone_for_good(&pod(Some("dark"), "Running"), None), None, "nodes unreadable");
        assert_eq!(gone_for_good(&pod(Some("dark"), "Failed"), None), Some(Gone::Failed));
    }
}
