//! Which of the broker's worker connections belong to which pod, and how to name them to the
//! broker: the one place that matches them.
//!
//! A gearfleet worker sets its Gearman client id to its pod's name (`POD_NAME`, see
//! [`desired`](super::desired)); stock Gearman workers (PHP, Python, `gearman -w`, …) send no
//! SET_CLIENT_ID, so the broker knows them only by their connection's peer address (`IP:PORT`,
//! the `fleet workers` ADDRESS column), which is the pod's IP on an ordinary pod network. So a
//! connection belongs to a pod
//!
//! * if its client id is the pod's name;
//! * else, if its address's IP is one of the pod's IPs (`status.podIPs`), unless its client id
//!   names a sibling: another pod of the same Deployment (`<deployment>-<hash>-<suffix>`, what a
//!   gearfleet worker of that pod sends), a stale connection of a gone pod whose IP this pod was
//!   given. Stock workers send no client id (`-`), or one of their own (Python `gear` sends the
//!   name its code gives, PHP what `setId` set): those are matched by address. A `hostNetwork`
//!   pod's IP is its node's, shared by every host-network pod there, and a finished pod's
//!   (`Failed`, `Succeeded`) went back to its node, so such pods are matched by client id only.
//!
//! A pod may have several connections (a multi-process worker): it is busy if any of them is.
//! The broker's `fleet drain|undrain|disconnect <arg>` take a client id, an `IP:PORT` or a bare IP
//! (every connection from it); [`broker_target`] picks the argument for a pod.

use std::net::{IpAddr, SocketAddr};

use gearfleet_proto::admin::WorkerStats;
use k8s_openapi::api::core::v1::Pod;

/// The client id `fleet workers` shows for a connection that sent none.
const NO_CLIENT_ID: &str = "-";

/// What identifies a worker pod to the broker.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodIdentity {
    /// The pod's name (its workers' client id, when they set one).
    pub name: String,
    /// The pod's IPs, its workers' connection addresses; empty for a `hostNetwork` pod.
    pub ips: Vec<IpAddr>,
}

impl PodIdentity {
    /// The identity of `pod`: its name and, unless it uses the host's network or has finished
    /// (phase `Failed` or `Succeeded`: its IP went back to the node and may be another pod's
    /// now, though its status still shows it), its IPs.
    pub fn of(pod: &Pod) -> Self {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let host_network = pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false);
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        let finished = matches!(phase, Some("Failed" | "Succeeded"));
        let mut ips = Vec::new();
        if !host_network
            && !finished
            && let Some(status) = &pod.status
        {
            let listed = status.pod_ips.iter().flatten().map(|p| p.ip.as_str());
            for ip in listed.chain(status.pod_ip.as_deref()).filter_map(|ip| ip.parse::<IpAddr>().ok()) {
                if !ips.contains(&ip) {
                    ips.push(ip);
                }
            }
        }
        Self { name, ips }
    }
}

/// Whether the connection sent a client id.
fn has_client_id(worker: &WorkerStats) -> bool {
    !worker.client_id.is_empty() && worker.client_id != NO_CLIENT_ID
}

/// The IP of a connection's address (`IP:PORT`, `[IPv6]:PORT`, or a bare IP).
pub fn address_ip(address: &str) -> Option<IpAddr> {
    address
        .parse::<SocketAddr>()
        .map(|a| a.ip())
        .ok()
        .or_else(|| address.parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
}

/// `<deployment>-` for a pod named `<deployment>-<replicaset hash>-<suffix>`, as a Deployment
/// names its pods; `None` for a name of another form.
fn deployment_prefix(pod_name: &str) -> Option<&str> {
    let mut dashes = pod_name.rmatch_indices('-').map(|(i, _)| i);
    let (_suffix, hash) = (dashes.next()?, dashes.next()?);
    (hash > 0).then(|| &pod_name[..=hash])
}

/// Whether the client id names another pod of `pod`'s Deployment.
fn names_a_sibling(client_id: &str, pod: &PodIdentity) -> bool {
    client_id != pod.name && deployment_prefix(&pod.name).is_some_and(|prefix| client_id.starts_with(prefix))
}

/// Whether the broker's worker connection `worker` belongs to `pod`.
pub fn belongs_to(worker: &WorkerStats, pod: &PodIdentity) -> bool {
    if worker.client_id == pod.name {
        return true;
    }
    if has_client_id(worker) && names_a_sibling(&worker.client_id, pod) {
        return false;
    }
    address_ip(&worker.address).is_some_and(|ip| pod.ips.iter().any(|p| p.to_canonical() == ip))
}

/// The connections of `workers` that belong to `pod`.
pub fn connections_of<'w>(workers: &'w [WorkerStats], pod: &PodIdentity) -> impl Iterator<Item = &'w WorkerStats> {
    workers.iter().filter(move |w| belongs_to(w, pod))
}

/// The argument of `fleet drain|undrain|disconnect` that reaches `pod`'s `connections` (those
/// [`connections_of`] found): the pod's name when every connection carries it as its client id
/// (or there is none to look at), else the IP the others come from (a bare IP reaches every
/// connection from the pod, whatever its client id); the name again if the pod has no usable IP
/// (a `hostNetwork` pod, matched by name only).
pub fn broker_target(pod: &PodIdentity, connections: &[&WorkerStats]) -> String {
    let unnamed_ip = connections.iter().filter(|w| w.client_id != pod.name).find_map(|w| address_ip(&w.address));
    match unnamed_ip {
        Some(ip) => ip.to_string(),
        None => pod.name.clone(),
    }
}

#[cfg(test)]
mod tests {
    use gearfleet_proto::admin::WorkerState;
    use k8s_openapi::api::core::v1::{PodIP, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn worker(client_id: &str, address: &str) -> WorkerStats {
        WorkerStats {
            client_id: client_id.into(),
            address: address.into(),
            state: WorkerState::Idle,
            draining: false,
            jobs_done: 0,
            current_jobs: Vec::new(),
            functions: vec!["f".into()],
        }
    }

    fn identity(name: &str, ips: &[&str]) -> PodIdentity {
        PodIdentity { name: name.into(), ips: ips.iter().map(|ip| ip.parse().expect("ip")).collect() }
    }

    fn k8s_pod(name: &str, ips: &[&str], host_network: bool) -> Pod {
        Pod {
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
            spec: Some(PodSpec { host_network: Some(host_network), ..Default::default() }),
            status: Some(PodStatus {
                pod_ip: ips.first().map(|ip| ip.to_string()),
                pod_ips: Some(ips.iter().map(|ip| PodIP { ip: ip.to_string() }).collect()),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_connection_belongs_to_the_pod_named_by_its_client_id() {
        let workers = [
            worker("pod-a", "10.0.0.1:40000"),
            worker("pod-b", "10.0.0.2:40000"),
            worker("pod-a", "10.0.0.1:40001"),
            worker("-", "10.0.0.9:40000"),
        ];
        let pod = identity("pod-a", &["10.0.0.1"]);
        assert_eq!(connections_of(&workers, &pod).count(), 2, "both connections of one worker");
        assert!(!belongs_to(&workers[1], &pod));
        assert_eq!(connections_of(&workers, &identity("pod-c", &[])).count(), 0);
    }

    #[test]
    fn a_connection_without_client_id_belongs_to_the_pod_with_its_ip() {
        let workers = [
            worker("-", "10.0.0.1:40000"),
            worker("-", "10.0.0.1:40001"),
            worker("-", "10.0.0.2:40000"),
            worker("-", "[fd00::1]:40000"),
            worker("-", "not an address"),
        ];
        let pod = identity("php-a", &["10.0.0.1", "fd00::1"]);
        let mine: Vec<&str> = connections_of(&workers, &pod).map(|w| w.address.as_str()).collect();
        assert_eq!(mine, ["10.0.0.1:40000", "10.0.0.1:40001", "[fd00::1]:40000"], "every process, both families");
        assert!(!belongs_to(&workers[2], &pod));
    }

    #[test]
    fn a_client_id_naming_a_sibling_pod_is_honoured_before_the_address() {
        // From pod a's IP but naming pod b of the same Deployment (a stale connection whose IP was
        // given to pod a).
        let (a, b) = ("pool-echo-5d8f7c9b4-abcde", "pool-echo-5d8f7c9b4-vwxyz");
        let stale = worker(b, "10.0.0.1:40000");
        assert!(!belongs_to(&stale, &identity(a, &["10.0.0.1"])));
        assert!(belongs_to(&stale, &identity(b, &["10.0.0.7"])));
        // Of an older ReplicaSet of the same Deployment, too.
        assert!(!belongs_to(&worker("pool-echo-77f6d5c8b-qwert", "10.0.0.1:1"), &identity(a, &["10.0.0.1"])));
    }

    #[test]
    fn a_stock_worker_with_a_client_id_of_its_own_is_matched_by_address() {
        // Python gear sends the name its code gives; PHP whatever setId set.
        let pod = identity("pool-echo-5d8f7c9b4-abcde", &["10.0.0.1"]);
        let gear = worker("gear-worker", "10.0.0.1:40000");
        assert!(belongs_to(&gear, &pod));
        assert!(!belongs_to(&gear, &identity("pool-echo-5d8f7c9b4-vwxyz", &["10.0.0.2"])));
        assert_eq!(broker_target(&pod, &[&gear]), "10.0.0.1", "drained by its address");
        assert_eq!(deployment_prefix("pool-echo-5d8f7c9b4-abcde"), Some("pool-echo-"));
        assert_eq!(deployment_prefix("pod-a"), None);
        assert_eq!(deployment_prefix("-a-b"), None);
    }

    #[test]
    fn identity_of_a_pod_has_its_ips_unless_it_uses_the_host_network() {
        let pod = k8s_pod("php-a", &["10.0.0.1", "fd00::1"], false);
        assert_eq!(PodIdentity::of(&pod), identity("php-a", &["10.0.0.1", "fd00::1"]));
        let host = k8s_pod("php-h", &["192.168.1.10"], true);
        assert_eq!(PodIdentity::of(&host), identity("php-h", &[]));
        assert!(!belongs_to(&worker("-", "192.168.1.10:40000"), &PodIdentity::of(&host)), "node IP is shared");
        assert_eq!(PodIdentity::of(&Pod::default()), identity("", &[]), "no status yet");
        for phase in ["Failed", "Succeeded"] {
            let mut finished = k8s_pod("php-f", &["10.0.0.3"], false);
            finished.status.as_mut().expect("status").phase = Some(phase.into());
            assert_eq!(PodIdentity::of(&finished), identity("php-f", &[]), "{phase}: its IP may be reused");
        }
    }

    #[test]
    fn the_broker_target_is_the_name_when_every_connection_carries_it_else_the_ip() {
        let pod = identity("pod-a", &["10.0.0.1"]);
        let named = [worker("pod-a", "10.0.0.1:40000"), worker("pod-a", "10.0.0.1:40001")];
        assert_eq!(broker_target(&pod, &named.iter().collect::<Vec<_>>()), "pod-a");
        let stock = [worker("-", "10.0.0.1:40000"), worker("-", "10.0.0.1:40001")];
        assert_eq!(broker_target(&pod, &stock.iter().collect::<Vec<_>>()), "10.0.0.1");
        let mixed = [worker("pod-a", "10.0.0.1:40000"), worker("-", "10.0.0.1:40001")];
        assert_eq!(broker_target(&pod, &mixed.iter().collect::<Vec<_>>()), "10.0.0.1", "the IP reaches both");
        assert_eq!(broker_target(&pod, &[]), "pod-a", "nothing observed: by name");
        let v6 = [worker("-", "[fd00::1]:40000")];
        assert_eq!(broker_target(&identity("p", &["fd00::1"]), &v6.iter().collect::<Vec<_>>()), "fd00::1");
    }
}
