//! What to do with the pods of one function (pure): make a scale-in safe, take back drains nobody
//! needs, and step the recycling plan. Part of [`plan`](super::plan).
//!
//! Which workers are draining is what the broker reports (`fleet workers`); since when and why is
//! the pod's [`DrainMark`]. Every reconcile keeps a worker drained only while
//!
//! * its pod is terminating, or is a victim of the scale-in being made safe now (every victim
//!   with a broker connection is drained before the replicas are lowered, idle or busy), or
//! * its pod is being removed by a scale-in already applied (the Deployment wants fewer pods than
//!   are running and the pod carries a negative deletion cost: the ReplicaSet is about to delete
//!   it), or
//! * its pod was drained for recycling and the pool still recycles;
//!
//! every other draining worker of the function is undrained and its pod's mark removed (a scale-in
//! called off because the backlog came back, the survivors of a scale-in, a drain the operator
//! cannot explain after a restart).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use gearfleet_crd::LABEL_FUNCTION;
use gearfleet_proto::admin::WorkerStats;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::kube_util::{is_pod_ready, is_terminating};
use crate::workerpool::connections::{PodIdentity, broker_target, connections_of};
use crate::workerpool::drain::{DrainMark, DrainReason, clear_mark, elapsed, has_mark_annotations};
use crate::workerpool::gone::{NodeStates, gone_for_good, gone_identity};
use crate::workerpool::recycle::{RecycleAction, RecyclePod, RecyclePolicy, RecycleReason, due, recycle_plan};
use crate::workerpool::scale_in::{POD_DELETION_COST, PodView, scale_in_plan};

/// Something to do to a pod or to its worker in the broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodAction {
    /// Merge-patch the pod's annotations (`None` removes one).
    Annotate {
        /// The pod.
        pod: String,
        /// Annotation values.
        annotations: BTreeMap<String, Option<String>>,
    },
    /// `fleet drain <target>`: the broker gives the pod's workers no more jobs.
    Drain {
        /// The pod.
        pod: String,
        /// What the broker knows the pod's workers by: their client id or the pod IP
        /// ([`broker_target`]).
        target: String,
        /// Its function.
        function: String,
        /// Why.
        reason: DrainReason,
        /// Details for the log.
        why: String,
    },
    /// `fleet undrain <target>`: the broker gives the pod's workers jobs again.
    Undrain {
        /// The pod.
        pod: String,
        /// What the broker knows the pod's workers by ([`broker_target`]).
        target: String,
        /// Its function.
        function: String,
        /// Why, for the log.
        why: &'static str,
    },
    /// `fleet disconnect <target>`: close the connections of a pod that is gone for good (its node
    /// is lost, or it failed), so the broker puts their jobs back in the queue now.
    Disconnect {
        /// The pod.
        pod: String,
        /// What the broker knows the pod's workers by ([`broker_target`]).
        target: String,
        /// Its function.
        function: String,
        /// Why, for the log.
        why: &'static str,
    },
    /// Evict the pod for recycling (its ReplicaSet starts a replacement); on success a Normal
    /// `Recycle` Event with `note` and `status.lastRecycleTime`.
    Evict {
        /// The pod.
        pod: String,
        /// Its function.
        function: String,
        /// Why.
        reason: RecycleReason,
        /// The Event's note.
        note: String,
    },
}

/// The pods of one function and what the broker says about their workers.
pub(super) struct FunctionPods<'a> {
    /// The function's name.
    pub function: &'a str,
    /// Its pods, terminating ones included.
    pub pods: Vec<&'a Pod>,
    /// The broker's worker connections (of every pool), if they could be read.
    pub workers: Option<&'a [WorkerStats]>,
    /// The replicas of its Deployment.
    pub current: i32,
    /// The observation's time.
    pub now: Timestamp,
}

impl FunctionPods<'_> {
    fn live(&self) -> impl Iterator<Item = &Pod> {
        self.pods.iter().copied().filter(|p| !is_terminating(p))
    }

    fn connections<'w>(workers: &'w [WorkerStats], pod: &Pod) -> Vec<&'w WorkerStats> {
        connections_of(workers, &PodIdentity::of(pod)).collect()
    }

    /// The `fleet drain|undrain|disconnect` argument that reaches `pod`'s workers.
    fn target(workers: &[WorkerStats], pod: &Pod) -> String {
        let identity = PodIdentity::of(pod);
        let connections: Vec<&WorkerStats> = connections_of(workers, &identity).collect();
        broker_target(&identity, &connections)
    }
}

/// How a scale-in of the function goes this reconcile.
#[derive(Debug, Default)]
pub(super) struct ScaleInStep {
    /// Pods that go with this scale-in (kept drained).
    pub victims: Vec<String>,
    /// Why the replicas must stay put for now; `None` once the scale-in may go ahead.
    pub wait: Option<String>,
    /// Deletion costs, drain marks and drains, in this order.
    pub actions: Vec<PodAction>,
}

fn pod_view(pod: &Pod) -> PodView {
    let created = pod.metadata.creation_timestamp.as_ref().map_or(0, |t| t.0.as_second());
    PodView {
        name: pod.name_any(),
        ips: PodIdentity::of(pod).ips,
        ready: is_pod_ready(pod),
        created_at: Duration::from_secs(u64::try_from(created).unwrap_or(0)),
    }
}

/// Makes lowering the function to `desired` replicas safe: every live pod's deletion cost from
/// [`scale_in_plan`], and every victim with a broker connection fenced first, busy or not: marked
/// and drained (`fleet drain`), so it takes no job between this decision and its deletion. The
/// scale-in waits until the broker reports every connection of every such victim draining
/// (observed in a later reconcile's `fleet workers`, not assumed) and none of them busy, or until
/// `drain_timeout` has passed since the earliest drain mark of the victims still waited for. A
/// victim without any connection (its worker not registered yet, or gone) needs no fence.
pub(super) fn plan_scale_in(fp: &FunctionPods<'_>, desired: i32, drain_timeout: Duration) -> ScaleInStep {
    let Some(workers) = fp.workers else {
        return ScaleInStep { wait: Some("the broker's worker list is unavailable".to_string()), ..Default::default() };
    };
    let live: Vec<&Pod> = fp.live().collect();
    let views: Vec<PodView> = live.iter().map(|p| pod_view(p)).collect();
    let keep = usize::try_from(desired).unwrap_or(0);
    let plan = scale_in_plan(&views, workers, views.len().saturating_sub(keep));

    let mut annotations: BTreeMap<String, BTreeMap<String, Option<String>>> = BTreeMap::new();
    let mut drains = Vec::new();
    let mut earliest_drain = fp.now;
    let mut busy = Vec::new();
    let mut unfenced = Vec::new();
    for (p, pod) in plan.iter().filter_map(|p| live.iter().find(|pod| pod.name_any() == p.name).map(|pod| (p, pod))) {
        let cost = p.deletion_cost.to_string();
        if pod.annotations().get(POD_DELETION_COST) != Some(&cost) {
            annotations.entry(p.name.clone()).or_default().insert(POD_DELETION_COST.to_string(), Some(cost));
        }
        if !p.remove {
            continue;
        }
        let connections = FunctionPods::connections(workers, pod);
        if connections.is_empty() {
            continue;
        }
        let mark = match DrainMark::of(pod) {
            Some(mark) => mark,
            None => {
                let mark = DrainMark { reason: DrainReason::ScaleIn, started: fp.now };
                annotations.entry(p.name.clone()).or_default().extend(mark.annotations());
                mark
            }
        };
        let is_busy = p.drain || connections.iter().any(|w| !w.current_jobs.is_empty());
        let draining = connections.iter().all(|w| w.draining);
        if !draining {
            drains.push(PodAction::Drain {
                pod: p.name.clone(),
                target: FunctionPods::target(workers, pod),
                function: fp.function.to_string(),
                reason: DrainReason::ScaleIn,
                why: if is_busy { "busy worker drained before scale-in" } else { "idle worker fenced before scale-in" }
                    .to_string(),
            });
        }
        if is_busy {
            busy.push(p.name.as_str());
        } else if !draining {
            unfenced.push(p.name.as_str());
        } else {
            continue;
        }
        earliest_drain = earliest_drain.min(mark.started);
    }
    let mut actions: Vec<PodAction> =
        annotations.into_iter().map(|(pod, annotations)| PodAction::Annotate { pod, annotations }).collect();
    actions.extend(drains);
    let mut waits = Vec::new();
    if !busy.is_empty() {
        waits.push(format!("{} busy worker(s) to finish: {}", busy.len(), busy.join(", ")));
    }
    if !unfenced.is_empty() {
        waits.push(format!("{} worker(s) to be reported draining: {}", unfenced.len(), unfenced.join(", ")));
    }
    let wait = (!waits.is_empty() && elapsed(earliest_drain, fp.now) < drain_timeout)
        .then(|| format!("waiting for {}", waits.join(" and ")));
    let victims = plan.iter().filter(|p| p.remove).map(|p| p.name.clone()).collect();
    ScaleInStep { victims, wait, actions }
}

/// Undrains the draining workers of the function that nothing keeps drained (see the module
/// docs) and removes their pods' marks. `victims` are the pods of this reconcile's scale-in;
/// `recycling` whether the pool recycles pods.
pub(super) fn plan_undrains(fp: &FunctionPods<'_>, victims: &[String], recycling: bool) -> Vec<PodAction> {
    let Some(workers) = fp.workers else { return Vec::new() };
    let live = fp.live().count();
    let replicaset_removing = usize::try_from(fp.current).is_ok_and(|current| live > current);
    let kept_drained = |pod: &Pod| {
        let name = pod.name_any();
        let marked_to_go =
            pod.annotations().get(POD_DELETION_COST).and_then(|c| c.parse::<i32>().ok()).is_some_and(|c| c < 0);
        is_terminating(pod)
            || victims.contains(&name)
            || (replicaset_removing && marked_to_go)
            || (recycling && DrainMark::of(pod).is_some_and(|m| m.reason == DrainReason::Recycle))
    };
    let mut actions = Vec::new();
    for pod in fp.pods.iter().copied().filter(|p| !kept_drained(p)) {
        let name = pod.name_any();
        if FunctionPods::connections(workers, pod).iter().any(|w| w.draining) {
            actions.push(PodAction::Undrain {
                pod: name.clone(),
                target: FunctionPods::target(workers, pod),
                function: fp.function.to_string(),
                why: match DrainMark::of(pod) {
                    Some(m) if m.reason == DrainReason::ScaleIn => "no longer leaving with a scale-in",
                    Some(_) => "no longer recycled",
                    None => "drained without a reason the operator knows",
                },
            });
        }
        if has_mark_annotations(pod) {
            actions.push(PodAction::Annotate { pod: name, annotations: clear_mark() });
        }
    }
    actions
}

/// Closes the broker connections of the pool's pods that are gone for good ([`gone_for_good`]):
/// their jobs go back to the queue now instead of when TCP keepalive gives up. A gone pod's IP
/// that a pod of the pool still uses is not matched by address.
pub(super) fn plan_disconnects(
    pods: &[Pod],
    workers: Option<&[WorkerStats]>,
    nodes: Option<&NodeStates>,
) -> Vec<PodAction> {
    let Some(workers) = workers else { return Vec::new() };
    let live_ips: Vec<IpAddr> =
        pods.iter().filter(|p| gone_for_good(p, nodes).is_none()).flat_map(|p| PodIdentity::of(p).ips).collect();
    pods.iter()
        .filter_map(|pod| {
            let gone = gone_for_good(pod, nodes)?;
            let identity = gone_identity(pod, gone, &live_ips);
            let connections: Vec<&WorkerStats> = connections_of(workers, &identity).collect();
            (!connections.is_empty()).then(|| PodAction::Disconnect {
                target: broker_target(&identity, &connections),
                pod: identity.name.clone(),
                function: pod.labels().get(LABEL_FUNCTION).cloned().unwrap_or_default(),
                why: gone.as_str(),
            })
        })
        .collect()
}

/// Age and creation time (Unix seconds) of a pod at `now`.
pub(super) fn pod_age(pod: &Pod, now: Timestamp) -> (Duration, i64) {
    let created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let age = created.map_or(Duration::ZERO, |c| now.duration_since(c).unsigned_abs());
    (age, created.map_or(0, |c| c.as_second()))
}

/// One step of the function's recycling.
#[derive(Debug, Default)]
pub(super) struct RecycleStep {
    /// Drain marks, drains and evictions.
    pub actions: Vec<PodAction>,
    /// Whether recycling is under way (a pod drained or being replaced while more are due).
    pub in_progress: bool,
    /// Time until the next pod reaches maxAge.
    pub next_due: Option<Duration>,
}

/// The next step of recycling the function's pods under `policy`.
pub(super) fn plan_recycle(fp: &FunctionPods<'_>, policy: &RecyclePolicy) -> RecycleStep {
    let next_due =
        policy.max_age.and_then(|max_age| fp.pods.iter().map(|p| max_age.saturating_sub(pod_age(p, fp.now).0)).min());
    let Some(workers) = fp.workers else { return RecycleStep { next_due, ..Default::default() } };
    let views: Vec<RecyclePod> = fp
        .pods
        .iter()
        .map(|p| {
            let (age, created_unix) = pod_age(p, fp.now);
            let conns = FunctionPods::connections(workers, p);
            RecyclePod {
                name: p.name_any(),
                age,
                created_unix,
                ready: is_pod_ready(p),
                terminating: is_terminating(p),
                busy: conns.iter().any(|w| !w.current_jobs.is_empty()),
                jobs_done: conns.iter().map(|w| w.jobs_done).sum(),
                drained_for: DrainMark::of(p).filter(|m| m.reason == DrainReason::Recycle).map(|m| m.age(fp.now)),
            }
        })
        .collect();
    let plan = recycle_plan(&views, policy);
    let mut actions = Vec::new();
    for action in &plan {
        match action {
            RecycleAction::Drain { pod, reason } => {
                let mark = DrainMark { reason: DrainReason::Recycle, started: fp.now };
                actions.push(PodAction::Annotate { pod: pod.clone(), annotations: mark.annotations() });
                let target = fp
                    .pods
                    .iter()
                    .find(|p| p.metadata.name.as_deref() == Some(pod.as_str()))
                    .map_or_else(|| pod.clone(), |p| FunctionPods::target(workers, p));
                actions.push(PodAction::Drain {
                    pod: pod.clone(),
                    target,
                    function: fp.function.to_string(),
                    reason: DrainReason::Recycle,
                    why: reason.as_str().to_string(),
                });
            }
            RecycleAction::Evict { pod, reason } => actions.push(PodAction::Evict {
                pod: pod.clone(),
                function: fp.function.to_string(),
                reason: *reason,
                note: format!("{}: replacing pod {pod} ({})", fp.function, reason.as_str()),
            }),
        }
    }
    // A pod drained for recycling whose worker is not draining in the broker (the broker
    // restarted, or the drain failed) is drained again.
    let evicted = |name: &str| plan.iter().any(|a| matches!(a, RecycleAction::Evict { pod, .. } if pod == name));
    for p in &fp.pods {
        let view_name = p.name_any();
        let marked = DrainMark::of(p).is_some_and(|m| m.reason == DrainReason::Recycle);
        let conns = FunctionPods::connections(workers, p);
        if marked && !is_terminating(p) && !evicted(&view_name) && conns.iter().any(|w| !w.draining) {
            actions.push(PodAction::Drain {
                target: FunctionPods::target(workers, p),
                pod: view_name,
                function: fp.function.to_string(),
                reason: DrainReason::Recycle,
                why: "drained for recycling, but the broker has it undrained".to_string(),
            });
        }
    }
    let drained = views.iter().any(|v| v.drained_for.is_some());
    let replacing = views.iter().any(|v| v.terminating || !v.ready);
    let more_due = views.iter().any(|v| due(v, policy).is_some());
    RecycleStep { actions, in_progress: !plan.is_empty() || drained || (replacing && more_due), next_due }
}
