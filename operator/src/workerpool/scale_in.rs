//! Which pods go when a function scales in (pure, no I/O).
//!
//! Pods are ranked by what their worker is doing, cheapest to lose first:
//! not ready, then ready without a registered worker, then idle or sleeping,
//! then busy; within a rank the newest pod goes first (ties by name). The
//! first `remove` pods are the victims.
//!
//! # Deletion costs
//!
//! The operator removes pods by lowering the Deployment's replicas and lets
//! the ReplicaSet controller pick them, steered by the
//! `controller.kubernetes.io/pod-deletion-cost` annotation (lower goes first)
//! that it sets on every pod from [`PodPlan::deletion_cost`]:
//!
//! * the victim at position `i` (0-based) of `remove` gets `i - remove`, i.e.
//!   `-remove ..= -1`: all victims rank below every kept pod, earlier victims
//!   below later ones, so lowering replicas in steps removes them in order;
//! * a kept pod that is not busy gets [`KEEP_DELETION_COST`] (0, the implicit
//!   default of unannotated pods);
//! * a kept busy pod gets [`BUSY_DELETION_COST`], so any later scale-in that
//!   bypasses this plan still prefers idle pods.
//!
//! Victims with [`PodPlan::drain`] set are busy: the operator must wait for
//! them to go idle, or for `scaling.drainTimeout`, before lowering the
//! replicas past them. It drains (`fleet drain <pod>`) every victim that has a
//! broker connection, busy or idle, before lowering them (`plan/pods.rs`). The
//! controller ranks not-ready pods before any cost, which agrees with the
//! ranking here.

use std::cmp::Reverse;
use std::net::IpAddr;
use std::time::Duration;

use gearfleet_proto::admin::{WorkerState, WorkerStats};

use super::connections::{PodIdentity, connections_of};

/// Annotation the ReplicaSet controller reads to choose pods to delete.
pub const POD_DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";
/// Deletion cost of a kept pod whose worker is not busy.
pub const KEEP_DELETION_COST: i32 = 0;
/// Deletion cost of a kept pod whose worker is busy.
pub const BUSY_DELETION_COST: i32 = 100;

/// The parts of a worker pod that matter for scaling in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    /// Pod name; gearfleet workers use it as their Gearman client id.
    pub name: String,
    /// The pod's IPs, the addresses of workers without a client id (empty for a `hostNetwork`
    /// pod); see [`connections`](super::connections).
    pub ips: Vec<IpAddr>,
    /// Whether the pod's Ready condition is true.
    pub ready: bool,
    /// Creation time, since any fixed epoch.
    pub created_at: Duration,
}

/// What a pod's worker is doing, in the order pods are removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PodActivity {
    /// The pod is not ready.
    NotReady,
    /// Ready, but no worker connection of the pod is registered.
    Unregistered,
    /// Every connection of its worker is idle or sleeping.
    Idle,
    /// At least one connection of its worker holds a job.
    Busy,
}

/// The plan for one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodPlan {
    /// Pod name.
    pub name: String,
    /// What its worker is doing.
    pub activity: PodActivity,
    /// Whether the pod is to be removed.
    pub remove: bool,
    /// Whether it is a busy victim, whose job the scale-in waits for (every victim with a broker
    /// connection, busy or not, is drained before removal).
    pub drain: bool,
    /// Value for the pod's [`POD_DELETION_COST`] annotation.
    pub deletion_cost: i32,
}

/// Plans removing `remove` of `pods` (all of them if `remove` is larger),
/// given the broker's worker connections. Returns one plan per pod, victims
/// first in removal order, then the kept pods in the same ranking.
pub fn scale_in_plan(pods: &[PodView], workers: &[WorkerStats], remove: usize) -> Vec<PodPlan> {
    let activity = |pod: &PodView| {
        let identity = PodIdentity { name: pod.name.clone(), ips: pod.ips.clone() };
        let mut conns = connections_of(workers, &identity).peekable();
        if !pod.ready {
            PodActivity::NotReady
        } else if conns.peek().is_none() {
            PodActivity::Unregistered
        } else if conns.any(|w| w.state == WorkerState::Busy) {
            PodActivity::Busy
        } else {
            PodActivity::Idle
        }
    };
    let mut ranked: Vec<(PodActivity, &PodView)> = pods.iter().map(|p| (activity(p), p)).collect();
    ranked.sort_by_key(|&(a, p)| (a, Reverse(p.created_at), p.name.as_str()));
    let remove = remove.min(ranked.len());
    ranked
        .into_iter()
        .enumerate()
        .map(|(i, (activity, pod))| {
            let victim = i < remove;
            let busy = activity == PodActivity::Busy;
            let deletion_cost = if victim {
                -i32::try_from(remove - i).unwrap_or(i32::MAX)
            } else if busy {
                BUSY_DELETION_COST
            } else {
                KEEP_DELETION_COST
            };
            PodPlan { name: pod.name.clone(), activity, remove: victim, drain: victim && busy, deletion_cost }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ready: bool, created: u64) -> PodView {
        PodView { name: name.into(), ips: Vec::new(), ready, created_at: Duration::from_secs(created) }
    }

    fn worker(client_id: &str, state: WorkerState) -> WorkerStats {
        WorkerStats {
            client_id: client_id.into(),
            address: "10.0.0.1:40000".into(),
            state,
            draining: false,
            jobs_done: 0,
            current_jobs: Vec::new(),
            functions: vec!["f".into()],
        }
    }

    fn fleet() -> (Vec<PodView>, Vec<WorkerStats>) {
        let pods = vec![
            pod("busy-old", true, 10),
            pod("idle-old", true, 20),
            pod("sleeping-new", true, 90),
            pod("busy-new", true, 80),
            pod("unregistered", true, 30),
            pod("not-ready", false, 5),
            pod("mixed", true, 95),
        ];
        let workers = vec![
            worker("busy-old", WorkerState::Busy),
            worker("idle-old", WorkerState::Idle),
            worker("sleeping-new", WorkerState::Sleeping),
            worker("busy-new", WorkerState::Busy),
            // Two connections of one worker: busy on one of them means busy.
            worker("mixed", WorkerState::Idle),
            worker("mixed", WorkerState::Busy),
            // A worker whose pod is gone.
            worker("ghost", WorkerState::Idle),
        ];
        (pods, workers)
    }

    fn names(plans: &[PodPlan]) -> Vec<&str> {
        plans.iter().map(|p| p.name.as_str()).collect()
    }

    #[test]
    fn ranks_not_ready_unregistered_idle_then_busy_newest_first() {
        let (pods, workers) = fleet();
        let plan = scale_in_plan(&pods, &workers, 3);
        assert_eq!(
            names(&plan),
            ["not-ready", "unregistered", "sleeping-new", "idle-old", "mixed", "busy-new", "busy-old"]
        );
        let activities: Vec<PodActivity> = plan.iter().map(|p| p.activity).collect();
        use PodActivity::*;
        assert_eq!(activities, [NotReady, Unregistered, Idle, Idle, Busy, Busy, Busy]);
        let costs: Vec<i32> = plan.iter().map(|p| p.deletion_cost).collect();
        assert_eq!(costs, [-3, -2, -1, 0, 100, 100, 100]);
        assert!(plan.iter().all(|p| p.remove == (p.deletion_cost < 0)));
        assert!(plan.iter().all(|p| !p.drain));
    }

    #[test]
    fn busy_pods_go_last_and_are_drained() {
        let (pods, workers) = fleet();
        let plan = scale_in_plan(&pods, &workers, 6);
        let victims: Vec<(&str, bool, i32)> =
            plan.iter().filter(|p| p.remove).map(|p| (p.name.as_str(), p.drain, p.deletion_cost)).collect();
        assert_eq!(
            victims,
            [
                ("not-ready", false, -6),
                ("unregistered", false, -5),
                ("sleeping-new", false, -4),
                ("idle-old", false, -3),
                ("mixed", true, -2),
                ("busy-new", true, -1),
            ]
        );
        let kept = &plan[6];
        assert_eq!((kept.name.as_str(), kept.remove, kept.drain, kept.deletion_cost), ("busy-old", false, false, 100));
    }

    #[test]
    fn edge_counts() {
        let (pods, workers) = fleet();
        let none = scale_in_plan(&pods, &workers, 0);
        assert!(none.iter().all(|p| !p.remove && p.deletion_cost >= 0));
        let all = scale_in_plan(&pods, &workers, 100);
        assert!(all.iter().all(|p| p.remove && p.deletion_cost < 0));
        assert_eq!(all.len(), pods.len());
        assert!(scale_in_plan(&[], &workers, 2).is_empty());
    }

    #[test]
    fn stock_workers_are_known_by_their_pod_ip() {
        // Three processes of a PHP worker without client ids, one of them busy: the pod is busy.
        let ip = |p: &str| p.parse::<IpAddr>().expect("ip");
        let pods = vec![
            PodView { ips: vec![ip("10.0.0.1")], ..pod("php-busy", true, 90) },
            PodView { ips: vec![ip("10.0.0.2")], ..pod("php-idle", true, 10) },
        ];
        let at = |address: &str, state| WorkerStats { address: address.into(), ..worker("-", state) };
        let workers = vec![
            at("10.0.0.1:40000", WorkerState::Idle),
            at("10.0.0.1:40001", WorkerState::Busy),
            at("10.0.0.1:40002", WorkerState::Sleeping),
            at("10.0.0.2:40000", WorkerState::Idle),
        ];
        let plan = scale_in_plan(&pods, &workers, 2);
        let ranked: Vec<(&str, PodActivity, bool)> =
            plan.iter().map(|p| (p.name.as_str(), p.activity, p.drain)).collect();
        assert_eq!(ranked, [("php-idle", PodActivity::Idle, false), ("php-busy", PodActivity::Busy, true)]);
    }

    #[test]
    fn ties_break_by_name() {
        let pods = vec![pod("b", true, 1), pod("a", true, 1)];
        let workers = vec![worker("a", WorkerState::Idle), worker("b", WorkerState::Idle)];
        assert_eq!(names(&scale_in_plan(&pods, &workers, 1)), ["a", "b"]);
    }
}
