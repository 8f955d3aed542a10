//! Closing the broker connections of pods gone for good, one table row each.

use super::*;

#[test]
fn connections_of_gone_pods_are_closed() {
    use NodeState::{Missing, Reporting, Unreachable};
    struct Case {
        name: &'static str,
        fx: Fx,
        disconnects: &'static [&'static str],
    }
    let case = |name, fx, disconnects| Case { name, fx, disconnects };
    let cases = [
        case(
            "a pod on an unreachable node (Ready=Unknown): its named worker is disconnected by name",
            fx().nodes(&[("dark", Unreachable), ("up", Reporting)])
                .backlog(0, 1)
                .pods([pod("lost").busy().on("dark"), pod("fine").on("up")]),
            &["disconnect lost"],
        ),
        case(
            "a stock worker on a deleted node: disconnected by its pod IP",
            fx().nodes(&[("deleted", Missing)]).backlog(0, 1).pods([pod("php").stock("10.1.0.1").busy().on("deleted")]),
            &["disconnect php via 10.1.0.1"],
        ),
        case(
            "a failed pod whose named worker the broker still lists: disconnected",
            fx().nodes(&[("up", Reporting)]).pods([pod("died").failed().on("up")]),
            &["disconnect died"],
        ),
        case(
            "a failed stock pod on a live node: not matched by address (its IP may be another pod's now)",
            fx().nodes(&[("up", Reporting)]).pods([pod("died").stock("10.1.0.3").failed().on("up")]),
            &[],
        ),
        case(
            "a lost pod's IP that a live pod of the pool has: not matched by address",
            fx().nodes(&[("dark", Unreachable), ("up", Reporting)])
                .pods([pod("old").stock("10.1.0.1").on("dark"), pod("new").stock("10.1.0.1").on("up")]),
            &[],
        ),
        case(
            "a node whose kubelet reports (Ready=True or False): nothing",
            fx().nodes(&[("up", Reporting)]).backlog(0, 1).pods([pod("a").busy().on("up")]),
            &[],
        ),
        case(
            "nodes not known yet: a pod on a node is not taken for lost",
            fx().nodes_unknown().backlog(0, 1).pods([pod("a").busy().on("dark")]),
            &[],
        ),
        case(
            "a lost pod whose connections are gone already: nothing",
            fx().nodes(&[("dark", Unreachable)]).pods([PodFx { worker: None, ..pod("a").on("dark") }]),
            &[],
        ),
        case(
            "worker list unavailable: nothing",
            fx().nodes(&[("dark", Unreachable)]).no_worker_list().pods([pod("a").busy().on("dark")]),
            &[],
        ),
    ];
    for c in cases {
        let plan = c.fx.plan();
        let disconnects: Vec<String> = plan.disconnects.iter().map(describe).collect();
        assert_eq!(disconnects, c.disconnects, "{}", c.name);
    }
}
