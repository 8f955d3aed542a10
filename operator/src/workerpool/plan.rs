//! Plan (pure: no I/O, no clock reads): from what a reconcile [observed](super::observe) and the
//! little the controller remembers ([`PoolMemory`]), everything the reconcile is to do, as a
//! [`Plan`] value that [`apply`](super::apply) carries out.
//!
//! Per function: [`decide`] the replicas, fit the pool under `spec.maxReplicas`
//! ([`share_pool_cap`]), go to zero when paused, hold growth at `crashLoopLimit`
//! ([`health::cap_for_crashes`]), hold raises until the pods of lowered functions are gone so the
//! cap holds at every instant ([`hold_pool_cap`]); make a scale-in safe and take back drains nobody needs
//! (`plan/pods.rs`); build the Deployment ([`desired_deployment`]); step the recycling. Then the whole
//! new status with its conditions, the Events, and when to look again.

mod pods;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use gearfleet_crd::{
    ANNOTATION_RESTART, FunctionStatus, LABEL_FUNCTION, WorkerPool, WorkerPoolStatus, is_condition_true, new_condition,
    pool_condition, set_condition,
};
use gearfleet_proto::admin::FunctionStats;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::events::EventType;

pub use self::pods::PodAction;
use self::pods::{FunctionPods, plan_disconnects, plan_recycle, plan_scale_in, plan_undrains};
use super::desired::{DesiredError, desired_deployment};
use super::drain::{elapsed, has_mark_annotations};
use super::health;
use super::memory::PoolMemory;
use super::observe::Observed;
use super::ownership;
use super::phase::{
    BROKER_UNREACHABLE, DegradedCause, FunctionPhaseInput, POOL_CAP_REACHED, PhaseInput, conflict_condition,
    degraded_condition, function_phase, pool_phase, progressing_condition, ready_condition,
};
use super::pool_cap::{self, hold_pool_cap};
use super::recycle::{RecyclePolicy, last_scheduled_restart};
use super::scaling::{ScaleKind, decide, share_pool_cap};
use crate::kube_util::{is_pod_ready, is_terminating};

/// A retry policy is sent again this often, so a restarted broker gets it back.
pub const RETRIES_RESEND: Duration = Duration::from_secs(60);

/// A `fleet retries` command to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetriesCommand {
    /// The function.
    pub function: String,
    /// The command line.
    pub command: String,
}

/// An Event to publish about the pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedEvent {
    /// Normal or Warning.
    pub type_: EventType,
    /// The reason, e.g. `ScaleUp`.
    pub reason: String,
    /// The action, e.g. `Scale`.
    pub action: &'static str,
    /// The note.
    pub note: String,
    /// Whether repeats fold into one Event (see [`EventPublisher`](crate::kube_util::EventPublisher)).
    pub aggregate: bool,
}

/// What one function gets.
#[derive(Clone, Debug, PartialEq)]
pub struct FunctionPlan {
    /// The function.
    pub name: String,
    /// Kind of the scaling decision (before holding for drains or crashes), for the metric.
    pub decision: ScaleKind,
    /// Replicas of its Deployment now.
    pub current: i32,
    /// Replicas it gets.
    pub target: i32,
    /// Why (the scaling decision's reason).
    pub reason: String,
    /// Its Deployment, to apply.
    pub deployment: Deployment,
    /// Its troubled pods, for the gauge.
    pub troubled_pods: i32,
}

/// Everything one reconcile of a pool does, in the order [`apply`](super::apply) does it.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// When the observation was made.
    pub now: Timestamp,
    /// Broker connections of pods gone for good, to close first.
    pub disconnects: Vec<PodAction>,
    /// Retry policies to send to the broker.
    pub retries: Vec<RetriesCommand>,
    /// Deletion costs, drain marks, drains and undrains: before any replicas are lowered.
    pub before_scaling: Vec<PodAction>,
    /// Per function in spec order: the Deployment to apply.
    pub functions: Vec<FunctionPlan>,
    /// Deployments of functions no longer in the spec, to delete.
    pub delete_deployments: Vec<String>,
    /// Recycling: drain marks, drains, evictions.
    pub recycling: Vec<PodAction>,
    /// The whole new status.
    pub status: WorkerPoolStatus,
    /// Events to publish.
    pub events: Vec<PlannedEvent>,
    /// When to reconcile again; `None` waits for the next change of the pool.
    pub requeue: Option<Duration>,
    /// The memory after this reconcile, assuming its actions succeed (retry policies and
    /// evictions are recorded by `apply` when they do).
    pub memory: PoolMemory,
}

/// The broker admin command that applies a function's retry policy to its background jobs.
pub fn retries_command(function: &str, r: &gearfleet_crd::RetryPolicy) -> String {
    format!("fleet retries {function} {} {} {}", r.limit, r.backoff.initial, r.backoff.max)
}

/// `now` as a duration since the Unix epoch: the clock of [`decide`] and [`ScaleHistory`].
fn scaling_clock(now: Timestamp) -> Duration {
    Duration::try_from(now.as_duration()).unwrap_or_default()
}

fn clamp_i32(v: u64) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Whether `pod` has finished (phase `Failed` or `Succeeded`): it holds no place under the cap.
fn is_finished(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Failed" | "Succeeded"))
}

/// The pool's recycle policy at `now`, if it has a trigger (recycle spec or a restart request)
/// and is not paused.
pub fn recycle_policy(pool: &WorkerPool, now: Timestamp) -> Option<RecyclePolicy> {
    let restart_before_unix = pool
        .annotations()
        .get(ANNOTATION_RESTART)
        .and_then(|v| {
            v.parse::<Timestamp>().map_err(|e| tracing::warn!(value = %v, error = %e, "bad restart annotation")).ok()
        })
        .map(|t| t.as_second());
    let spec = pool.spec.recycle.clone().unwrap_or_default();
    // A scheduled restart is a restart request at the schedule's latest firing.
    let scheduled = spec.schedule.as_deref().and_then(|s| last_scheduled_restart(s, spec.time_zone.as_deref(), now));
    let restart_before_unix = restart_before_unix.max(scheduled);
    let policy = RecyclePolicy {
        max_age: spec.max_age.as_ref().and_then(|d| d.to_duration().ok()),
        max_jobs: spec.max_jobs.and_then(|n| u64::try_from(n).ok()),
        restart_before_unix,
        max_unavailable: usize::try_from(spec.max_unavailable).unwrap_or(1).max(1),
        drain_timeout: pool.spec.scaling.drain_timeout(),
    };
    let active = policy.max_age.is_some() || policy.max_jobs.is_some() || policy.restart_before_unix.is_some();
    (active && !pool.spec.paused).then_some(policy)
}

/// The plan for a pool whose spec is invalid (`message` says why): `Ready=False` with reason
/// `InvalidSpec`, one Warning Event when that is news, and no requeue.
pub fn plan_invalid(pool: &WorkerPool, message: String, now: Timestamp, memory: &PoolMemory) -> Plan {
    let generation = pool.metadata.generation;
    let mut status = pool.status.clone().unwrap_or_default();
    let cond = new_condition(pool_condition::READY, false, "InvalidSpec", message.clone(), generation, Time(now));
    let changed = set_condition(&mut status.conditions, cond);
    status.observed_generation = generation;
    status.message = Some(message.clone());
    let events = if changed {
        vec![PlannedEvent {
            type_: EventType::Warning,
            reason: "InvalidSpec".into(),
            action: "Validate",
            note: message,
            aggregate: true,
        }]
    } else {
        Vec::new()
    };
    Plan {
        now,
        disconnects: Vec::new(),
        retries: Vec::new(),
        before_scaling: Vec::new(),
        functions: Vec::new(),
        delete_deployments: Vec::new(),
        recycling: Vec::new(),
        status,
        events,
        requeue: None,
        memory: memory.clone(),
    }
}

/// Plans one reconcile of a pool with a valid spec.
pub fn plan(observed: &Observed, memory: &PoolMemory) -> Result<Plan, DesiredError> {
    let pool = &*observed.pool;
    let now = observed.now;
    let clock = scaling_clock(now);
    let generation = pool.metadata.generation;
    let mut status = pool.status.clone().unwrap_or_default();
    let by_name: HashMap<String, &Deployment> = observed.deployments.iter().map(|d| (d.name_any(), d)).collect();
    let pods_of = |function: &str| -> Vec<&Pod> {
        let of_function = |p: &&Pod| p.labels().get(LABEL_FUNCTION).map(String::as_str) == Some(function);
        observed.pods.iter().filter(of_function).collect()
    };
    let mut next_memory = PoolMemory { functions: BTreeMap::new(), last_recycle: memory.last_recycle.clone() };
    let mut retries = Vec::new();
    // Function names another pool owns: no replicas, no retry policy from here.
    let me = ownership::key(pool);
    let owners: Vec<Option<String>> = pool
        .spec
        .functions
        .iter()
        .map(|f| {
            let owner = observed.claims.as_deref().and_then(|claims| ownership::owner(&f.name, claims));
            owner.filter(|o| *o != me).map(str::to_string)
        })
        .collect();

    // Decide.
    let mut decisions = Vec::new();
    let mut function_stats = Vec::new();
    for (f, owner) in pool.spec.functions.iter().zip(&owners) {
        let current = by_name.get(&pool.deployment_name(&f.name)).and_then(|d| d.spec.as_ref()?.replicas).unwrap_or(0);
        let stats = observed.brokers.stats.as_ref().map(|m| {
            m.get(&f.name).cloned().unwrap_or_else(|| FunctionStats { function: f.name.clone(), ..Default::default() })
        });
        let mut fmemory = memory.functions.get(&f.name).cloned().unwrap_or_default();
        if let Some(r) = &f.retries
            && !observed.brokers.unknown()
            && owner.is_none()
        {
            let command = retries_command(&f.name, r);
            let fresh = fmemory
                .retries_sent
                .as_ref()
                .is_some_and(|(c, at)| *c == command && elapsed(*at, now) < RETRIES_RESEND);
            if !fresh {
                retries.push(RetriesCommand { function: f.name.clone(), command });
            }
        }
        let (mut decision, history) = decide(f, &pool.spec.scaling, stats.as_ref(), current, &fmemory.history, clock);
        fmemory.history = history;
        if let Some(owner) = owner {
            decision.desired = 0;
            decision.reason = format!("pool {owner} owns the function name");
        } else if observed.brokers.partial() && decision.desired < decision.current {
            decision.reason = format!(
                "holding {} replicas instead of {}: {}, so the queue may be longer than seen",
                decision.current,
                decision.desired,
                observed.brokers.unreachable_summary()
            );
            decision.desired = decision.current;
        }
        decisions.push(decision);
        next_memory.functions.insert(f.name.clone(), fmemory);
        function_stats.push(stats);
    }
    let asked: Vec<i32> = decisions.iter().map(|d| d.desired).collect();
    let mut decisions = share_pool_cap(decisions, pool.spec.max_replicas);
    let mut cap_causes: Vec<DegradedCause> = decisions
        .iter()
        .zip(&asked)
        .zip(&pool.spec.functions)
        .filter(|((d, asked), _)| d.desired < **asked)
        .map(|((d, asked), f)| DegradedCause {
            reason: POOL_CAP_REACHED,
            message: format!(
                "{}: pool maxReplicas {} holds it at {} of the {asked} its queue asks",
                f.name,
                pool.spec.max_replicas.unwrap_or_default(),
                d.desired
            ),
        })
        .collect();
    if pool.spec.paused {
        cap_causes.clear();
        for d in &mut decisions {
            d.desired = 0;
            d.reason = "the pool is paused".to_string();
        }
    }

    // Health, growth held at crashLoopLimit, then raises held for the pool cap at every instant.
    let healths: Vec<health::FunctionHealth> =
        pool.spec.functions.iter().map(|f| health::function_health(pods_of(&f.name), now)).collect();
    let crash_capped: Vec<(i32, Option<String>)> = decisions
        .iter()
        .zip(&healths)
        .map(|(d, h)| health::cap_for_crashes(d.desired, d.current, h.troubled, pool.spec.crash_loop_limit))
        .collect();
    let cap_input: Vec<pool_cap::FunctionPods> = pool
        .spec
        .functions
        .iter()
        .zip(&decisions)
        .zip(&crash_capped)
        .map(|((f, d), (target, _))| {
            let pods: Vec<&Pod> = pods_of(&f.name).into_iter().filter(|p| !is_finished(p)).collect();
            let terminating = pods.iter().filter(|p| is_terminating(p)).count();
            pool_cap::FunctionPods {
                current: d.current,
                target: *target,
                pods: i32::try_from(pods.len()).unwrap_or(i32::MAX),
                terminating: i32::try_from(terminating).unwrap_or(i32::MAX),
            }
        })
        .collect();
    let cap_holds = hold_pool_cap(pool.spec.max_replicas, &cap_input);

    let recycle_policy = recycle_policy(pool, now);
    let mut requeue = pool.spec.scaling.poll_interval();
    let mut before_scaling = Vec::new();
    let mut recycling = Vec::new();
    let mut function_plans = Vec::new();
    let mut functions = Vec::new();
    let mut events = Vec::new();
    let mut scaling = Vec::new();
    let mut causes: Vec<DegradedCause> = Vec::new();
    let per_function = healths.into_iter().zip(crash_capped).zip(cap_holds).zip(&owners);
    for (((f, decision), fstats), (((fhealth, (target, held)), (allowed, cap_held)), owner)) in
        pool.spec.functions.iter().zip(&decisions).zip(function_stats).zip(per_function)
    {
        let dep_name = pool.deployment_name(&f.name);
        let fpods = FunctionPods {
            function: &f.name,
            pods: pods_of(&f.name),
            workers: observed.workers.as_deref(),
            current: decision.current,
            now,
        };
        if let Some((trouble, line)) = &fhealth.first {
            let message = format!("{}: {} pod(s) {} ({line})", f.name, fhealth.troubled, trouble.reason());
            causes.push(DegradedCause { reason: trouble.reason(), message });
        }
        let mut target = target;
        if let Some(why) = held {
            scaling.push(format!("{}: {why}", f.name));
        }
        let waiting_for_cap = cap_held.is_some();
        if let Some(h) = cap_held {
            target = allowed;
            requeue = requeue.min(Duration::from_secs(2));
            scaling.push(format!(
                "{}: raise to {} waits for the pool cap (maxReplicas {}: {} pod(s) of other functions, or terminating, still there): {} for now",
                f.name,
                h.wanted,
                pool.spec.max_replicas.unwrap_or_default(),
                h.occupied,
                h.allowed
            ));
        }
        let mut victims = Vec::new();
        let mut waiting_for_drain = false;
        let mut recycling_now = false;
        let mut recycle_drains = false;
        if target < decision.current {
            let step = plan_scale_in(&fpods, decision.desired, pool.spec.scaling.drain_timeout());
            before_scaling.extend(step.actions);
            victims = step.victims;
            if let Some(why) = step.wait {
                waiting_for_drain = true;
                target = decision.current;
                requeue = requeue.min(Duration::from_secs(1));
                scaling.push(format!("{}: {why}", f.name));
            }
        }
        before_scaling.extend(plan_undrains(&fpods, &victims, recycle_policy.is_some()));

        let deployment = desired_deployment(pool, f, target, &observed.worker_pods)?;
        let previous = pool.function_status(&f.name);
        let (mut last_scale_time, mut last_scale_reason) =
            (previous.and_then(|p| p.last_scale_time.clone()), previous.and_then(|p| p.last_scale_reason.clone()));
        if target != decision.current {
            if let Some(fmemory) = next_memory.functions.get_mut(&f.name) {
                fmemory.history = std::mem::take(&mut fmemory.history).record_scale(clock, decision.current, target);
            }
            last_scale_time = Some(Time(now));
            last_scale_reason = Some(decision.reason.clone());
            scaling.push(format!("{}: {} -> {}", f.name, decision.current, target));
            events.push(PlannedEvent {
                type_: EventType::Normal,
                reason: ScaleKind::between(decision.current, target).to_string(),
                action: "Scale",
                note: format!("{}: {} -> {} replicas: {}", f.name, decision.current, target, decision.reason),
                aggregate: false,
            });
        }
        // Recycling picks idle pods: with a broker silent, a pod's jobs there are unknown.
        if let Some(policy) = &recycle_policy
            && !waiting_for_drain
            && target == decision.current
            && !observed.brokers.partial()
        {
            let step = plan_recycle(&fpods, policy);
            recycle_drains = step.actions.iter().any(|a| matches!(a, PodAction::Drain { .. }));
            recycling.extend(step.actions);
            recycling_now = step.in_progress;
            if step.in_progress {
                requeue = requeue.min(Duration::from_secs(2));
                scaling.push(format!("{}: recycling pods", f.name));
            } else if let Some(next) = step.next_due {
                requeue = requeue.min(next.max(Duration::from_secs(1)));
            }
        }

        let observed_status = by_name.get(&dep_name).and_then(|d| d.status.as_ref());
        let fstats = fstats.unwrap_or_default();
        let busy = fstats.workers.saturating_sub(fstats.idle_workers);
        let present: Vec<&Pod> = fpods.pods.iter().copied().filter(|p| !is_finished(p)).collect();
        let ready = present.iter().filter(|p| !is_terminating(p) && is_pod_ready(p)).count();
        let available = observed_status.and_then(|s| s.available_replicas).unwrap_or(0);
        let marked = present.iter().any(|p| !is_terminating(p) && has_mark_annotations(p));
        let fphase = function_phase(FunctionPhaseInput {
            conflict: owner.is_some(),
            troubled: fhealth.troubled > 0,
            broker_unreachable: observed.brokers.unknown(),
            draining: waiting_for_drain || (recycling_now && (marked || recycle_drains)),
            waiting_for_cap,
            recycling: recycling_now,
            desired: decision.desired,
            current: decision.current,
            target,
            pods: present.len(),
            ready,
            available,
            queued: clamp_i64(fstats.queued_total()),
        });
        functions.push(FunctionStatus {
            name: f.name.clone(),
            deployment: dep_name,
            phase: Some(fphase),
            owner: owner.clone(),
            replicas: observed_status.and_then(|s| s.replicas).unwrap_or(0),
            ready_replicas: observed_status.and_then(|s| s.ready_replicas).unwrap_or(0),
            available_replicas: available,
            current_replicas: decision.current,
            desired_replicas: decision.desired,
            busy_workers: clamp_i32(busy),
            idle_workers: clamp_i32(fstats.idle_workers),
            crash_looping: fhealth.troubled,
            queued: clamp_i64(fstats.queued_total()),
            running: clamp_i64(fstats.running),
            partial: observed.brokers.partial(),
            last_scale_time,
            last_scale_reason,
        });
        function_plans.push(FunctionPlan {
            name: f.name.clone(),
            decision: decision.kind(),
            current: decision.current,
            target,
            reason: decision.reason.clone(),
            deployment,
            troubled_pods: fhealth.troubled,
        });
    }

    // Deployments of functions no longer in the spec.
    let delete_deployments = observed
        .deployments
        .iter()
        .filter(|d| pool.spec.function(d.labels().get(LABEL_FUNCTION).map_or("", String::as_str)).is_none())
        .map(|d| d.name_any())
        .collect();

    // Status.
    let t = Time(now);
    let broker_cond = if observed.brokers.unknown() {
        let msg = format!("{}: holding current replicas", observed.brokers.unreachable_summary());
        new_condition(pool_condition::BROKER_UNAVAILABLE, true, "BrokerUnreachable", msg, generation, t.clone())
    } else if observed.brokers.partial() {
        let msg = format!(
            "{}: counts come from the others and are lower bounds; functions may grow but are not scaled in",
            observed.brokers.unreachable_summary()
        );
        new_condition(pool_condition::BROKER_UNAVAILABLE, true, "PartialView", msg, generation, t.clone())
    } else {
        new_condition(pool_condition::BROKER_UNAVAILABLE, false, "BrokerReachable", "", generation, t.clone())
    };
    let scaling_cond = if scaling.is_empty() {
        new_condition(pool_condition::SCALING, false, "Stable", "", generation, t.clone())
    } else {
        new_condition(pool_condition::SCALING, true, "Scaling", scaling.join("; "), generation, t.clone())
    };
    if observed.brokers.unknown() {
        let message = format!("{}: queue depths unknown", observed.brokers.unreachable_summary());
        causes.push(DegradedCause { reason: BROKER_UNREACHABLE, message });
    } else if observed.brokers.partial() {
        let message = format!("{}: counts are partial", observed.brokers.unreachable_summary());
        causes.push(DegradedCause { reason: BROKER_UNREACHABLE, message });
    }
    causes.extend(cap_causes);
    let progressing = progressing_condition(&functions);
    let progressing_now = progressing.status;
    let conflict = conflict_condition(&functions);
    if conflict.status {
        // The owner may go away: look again soon to take the name over.
        requeue = requeue.min(Duration::from_secs(3));
        if status.conditions.iter().all(|c| c.type_ != pool_condition::CONFLICT || c.message != conflict.message) {
            events.push(PlannedEvent {
                type_: EventType::Warning,
                reason: "FunctionConflict".into(),
                action: "Claim",
                note: conflict.message.clone(),
                aggregate: true,
            });
        }
    }
    let rules = [
        (pool_condition::READY, ready_condition(&functions)),
        (pool_condition::PROGRESSING, progressing),
        (pool_condition::CONFLICT, conflict),
    ];
    for (type_, rule) in rules {
        let cond = new_condition(type_, rule.status, rule.reason, rule.message, generation, t.clone());
        set_condition(&mut status.conditions, cond);
    }
    set_condition(&mut status.conditions, scaling_cond);
    set_condition(&mut status.conditions, broker_cond);
    let degraded = degraded_condition(&causes);
    let newly_degraded = degraded.status && !is_condition_true(&status.conditions, pool_condition::DEGRADED);
    if newly_degraded {
        events.push(PlannedEvent {
            type_: EventType::Warning,
            reason: "Degraded".into(),
            action: "Health",
            note: degraded.message.clone(),
            aggregate: true,
        });
    }
    let degraded_cond = new_condition(
        pool_condition::DEGRADED,
        degraded.status,
        degraded.reason,
        degraded.message,
        generation,
        t.clone(),
    );
    set_condition(&mut status.conditions, degraded_cond);
    let (phase, draining, drained) = pool_phase(PhaseInput {
        paused: pool.spec.paused,
        pods: observed.pods.len(),
        degraded: degraded.status,
        scaling: !scaling.is_empty() || progressing_now,
    });
    let was_drained = is_condition_true(&status.conditions, pool_condition::DRAINED);
    let (draining_reason, drained_reason) =
        if pool.spec.paused { ("Paused", "Paused") } else { ("NotPaused", "NotPaused") };
    let message =
        if draining { format!("{} worker pod(s) finishing their jobs", observed.pods.len()) } else { String::new() };
    set_condition(
        &mut status.conditions,
        new_condition(pool_condition::DRAINING, draining, draining_reason, message, generation, t.clone()),
    );
    set_condition(
        &mut status.conditions,
        new_condition(pool_condition::DRAINED, drained, drained_reason, "", generation, t),
    );
    if drained && !was_drained {
        events.push(PlannedEvent {
            type_: EventType::Normal,
            reason: "Drained".into(),
            action: "Pause",
            note: "paused: no worker pods left; queued jobs wait in the broker".into(),
            aggregate: true,
        });
    }
    if draining {
        requeue = requeue.min(Duration::from_secs(2));
    }
    if let Some(t) = &next_memory.last_recycle
        && status.last_recycle_time.as_ref().is_none_or(|old| old.0 < t.0)
    {
        status.last_recycle_time = Some(t.clone());
    }
    status.phase = Some(phase);
    status.observed_generation = generation;
    status.message = None;
    status.functions = functions;
    status.recompute_totals();

    Ok(Plan {
        now,
        disconnects: plan_disconnects(&observed.pods, observed.workers.as_deref(), observed.nodes.as_ref()),
        retries,
        before_scaling,
        functions: function_plans,
        delete_deployments,
        recycling,
        status,
        events,
        requeue: Some(requeue),
        memory: next_memory,
    })
}
