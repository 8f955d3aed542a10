//! The WorkerPool controller (I/O): watches WorkerPools and the Deployments they own, asks the
//! broker for queue depths and applies the decisions of [`scaling`](super::scaling),
//! [`scale_in`](super::scale_in) and [`desired`](super::desired).
//!
//! One reconcile of a pool: validate the spec (an invalid spec sets `Ready=False` and one Warning
//! event, and waits for the next change) → read the broker's stats (the cache fed by `fleet watch`,
//! else one `fleet status`; if neither answers, every function holds its replicas and
//! `BrokerUnavailable=True`) → decide per function ([`decide`] + [`share_pool_cap`]) → make scale-in
//! safe (pod deletion costs, `fleet drain` for busy victims, wait until they are idle or
//! `drainTimeout` passed) → server-side apply the Deployments → delete Deployments of removed
//! functions → server-side apply the status → one Event per replica change. It requeues after the
//! pool's `pollInterval` (1 s while waiting for a drain); every change `fleet watch` reports also
//! triggers a reconcile of all pools.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::channel::mpsc;
use gearfleet_crd::{
    ANNOTATION_RESTART, FunctionSpec, FunctionStatus, LABEL_FUNCTION, LABEL_POOL, WorkerPool, WorkerPoolStatus,
    is_condition_true, new_condition, pool_condition, set_condition,
};
use gearfleet_proto::admin::{FunctionStats, WorkerStats};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, EvictParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use super::desired::desired_deployment;
use super::health;
use super::phase::{PhaseInput, pool_phase};
use super::recycle::{RecycleAction, RecyclePod, RecyclePolicy, due, last_scheduled_restart, recycle_plan};
use super::scale_in::{POD_DELETION_COST, PodView, scale_in_plan};
use super::scaling::{ScaleHistory, ScaleKind, ScalingDecision, decide, share_pool_cap};
use crate::broker_client::BrokerClient;
use crate::error::Error;
use crate::kube_util::{EventPublisher, FIELD_MANAGER, apply_status, is_pod_ready};
use crate::metrics::Metrics;

/// Broker stats by function name.
pub type StatsMap = HashMap<String, FunctionStats>;

/// The latest `fleet watch` snapshot, `None` while the watch connection is down.
#[derive(Default)]
pub struct StatsCache {
    inner: RwLock<Option<StatsMap>>,
}

impl StatsCache {
    /// The latest snapshot.
    pub fn get(&self) -> Option<StatsMap> {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replace the snapshot.
    pub fn set(&self, snapshot: Option<StatsMap>) {
        *self.inner.write().unwrap_or_else(|e| e.into_inner()) = snapshot;
    }
}

fn to_map(stats: Vec<FunctionStats>) -> StatsMap {
    stats.into_iter().map(|s| (s.function.clone(), s)).collect()
}

/// A scale-in waiting for busy victims to finish.
#[derive(Clone, Debug)]
struct Drain {
    started: Instant,
    victims: Vec<String>,
}

#[derive(Clone, Debug, Default)]
struct FunctionState {
    history: ScaleHistory,
    drain: Option<Drain>,
    /// The `fleet retries` command last sent for the function, and when (since the epoch).
    retries_sent: Option<(String, Duration)>,
    /// Pods drained for recycling, and when (since the epoch).
    recycle_drained: HashMap<String, Duration>,
    /// When a pod of the function was last evicted for recycling (kept here too: the pool read
    /// from the cache may not show the status written a moment ago).
    last_recycled: Option<Time>,
}

/// A retry policy is sent again this often, so a restarted broker gets it back.
const RETRIES_RESEND: Duration = Duration::from_secs(60);

type FunctionKey = (String, String, String);

/// Shared state of the controller.
pub struct Context {
    client: Client,
    broker: BrokerClient,
    workers_broker_address: String,
    cache: StatsCache,
    metrics: Arc<Metrics>,
    events: EventPublisher,
    functions: Mutex<HashMap<FunctionKey, FunctionState>>,
    epoch: Instant,
}

impl Context {
    /// A context whose operator talks to the broker at `broker` and whose workers are given
    /// `workers_broker_address` in `GEARMAN_SERVERS`.
    pub fn new(client: Client, broker: BrokerClient, workers_broker_address: String, metrics: Arc<Metrics>) -> Self {
        let events = EventPublisher::new(client.clone());
        Self {
            client,
            broker,
            workers_broker_address,
            cache: StatsCache::default(),
            metrics,
            events,
            functions: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
        }
    }

    fn state(&self, key: &FunctionKey) -> FunctionState {
        self.functions.lock().unwrap_or_else(|e| e.into_inner()).get(key).cloned().unwrap_or_default()
    }

    fn store(&self, key: FunctionKey, state: FunctionState) {
        self.functions.lock().unwrap_or_else(|e| e.into_inner()).insert(key, state);
    }

    /// Publishes an Event about `pool` (see [`EventPublisher::publish`]); scaling events are never
    /// aggregated, since each carries different replica numbers.
    async fn publish(
        &self,
        pool: &WorkerPool,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
        aggregate: bool,
    ) {
        self.events.publish(pool, type_, reason, action, note, aggregate).await;
    }
}

/// Runs the controller until SIGTERM/SIGINT. Watches all namespaces unless `namespace` is set.
pub async fn run(client: Client, namespace: Option<String>, ctx: Arc<Context>) {
    let (pools, deployments): (Api<WorkerPool>, Api<Deployment>) = match &namespace {
        Some(ns) => (Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns)),
        None => (Api::all(client.clone()), Api::all(client)),
    };
    let (trigger_tx, trigger_rx) = mpsc::channel::<()>(1);
    tokio::spawn(feed_cache(ctx.clone(), trigger_tx));
    Controller::new(pools, watcher::Config::default())
        .owns(deployments, watcher::Config::default().labels(LABEL_POOL))
        .reconcile_all_on(trigger_rx)
        .with_config(controller::Config::default().debounce(Duration::from_millis(200)))
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => tracing::debug!(pool = %obj, "reconciled"),
                Err(e) => tracing::warn!(error = %e, "reconcile failed"),
            }
        })
        .await;
}

/// Keeps the stats cache fed from `fleet watch` and sends a trigger whenever a snapshot differs
/// from the previous one.
async fn feed_cache(ctx: Arc<Context>, mut trigger: mpsc::Sender<()>) {
    let mut watch = Box::pin(ctx.broker.watch());
    let mut last: Option<StatsMap> = None;
    while let Some(item) = watch.next().await {
        let snapshot = item.map(to_map);
        if snapshot.is_none() && last.is_some() {
            tracing::warn!(broker = ctx.broker.addr(), "fleet watch connection lost");
        }
        ctx.cache.set(snapshot.clone());
        if snapshot != last {
            // A full channel means a trigger is pending already.
            let _ = trigger.try_send(());
        }
        last = snapshot;
    }
}

/// Requeue after a failed reconcile; counts the error.
pub fn error_policy(pool: Arc<WorkerPool>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.error(error.metric_label());
    tracing::warn!(pool = %pool.name_any(), error = %error, "reconcile error");
    Action::requeue(Duration::from_secs(5))
}

/// The WorkerPool's recycle policy, if it has a trigger (recycle spec or a restart request).
fn recycle_policy(pool: &WorkerPool) -> Option<RecyclePolicy> {
    let restart_before_unix = pool
        .annotations()
        .get(ANNOTATION_RESTART)
        .and_then(|v| {
            v.parse::<Timestamp>().map_err(|e| tracing::warn!(value = %v, error = %e, "bad restart annotation")).ok()
        })
        .map(|t| t.as_second());
    let spec = pool.spec.recycle.clone().unwrap_or_default();
    // A scheduled restart is a restart request at the schedule's latest firing.
    let scheduled =
        spec.schedule.as_deref().and_then(|s| last_scheduled_restart(s, spec.time_zone.as_deref(), Timestamp::now()));
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

fn pod_age(pod: &Pod) -> (Duration, i64) {
    let created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let now = Timestamp::now();
    let age = created.map_or(Duration::ZERO, |c| now.duration_since(c).unsigned_abs());
    (age, created.map_or(0, |c| c.as_second()))
}

/// The time until the next pod of a function reaches maxAge.
fn next_due(pods: &[&Pod], policy: &RecyclePolicy) -> Option<Duration> {
    let max_age = policy.max_age?;
    pods.iter().map(|p| max_age.saturating_sub(pod_age(p).0)).min()
}

/// Runs one step of the recycling plan of a function. Returns whether recycling is in progress and
/// whether a pod was evicted now.
#[allow(clippy::too_many_arguments)]
async fn recycle(
    ctx: &Context,
    pods: &Api<Pod>,
    pool: &WorkerPool,
    f: &FunctionSpec,
    function_pods: &[&Pod],
    workers: Option<&[WorkerStats]>,
    policy: &RecyclePolicy,
    state: &mut FunctionState,
    now: Duration,
) -> (bool, bool) {
    let Some(workers) = workers else { return (false, false) };
    let views: Vec<RecyclePod> = function_pods
        .iter()
        .map(|p| {
            let name = p.name_any();
            let (age, created_unix) = pod_age(p);
            let conns: Vec<&WorkerStats> = workers.iter().filter(|w| w.client_id == name).collect();
            RecyclePod {
                busy: conns.iter().any(|w| !w.current_jobs.is_empty()),
                jobs_done: conns.iter().map(|w| w.jobs_done).sum(),
                ready: is_pod_ready(p),
                terminating: p.metadata.deletion_timestamp.is_some(),
                drained_for: state.recycle_drained.get(&name).map(|at| now.saturating_sub(*at)),
                name,
                age,
                created_unix,
            }
        })
        .collect();
    // Forget drains of pods that are gone.
    state.recycle_drained.retain(|name, _| views.iter().any(|v| &v.name == name));
    let plan = recycle_plan(&views, policy);
    let mut evicted = false;
    for action in &plan {
        match action {
            RecycleAction::Drain { pod, reason } => {
                if let Err(e) = ctx.broker.drain(pod).await {
                    tracing::warn!(pod = %pod, error = %e, "recycle: drain failed");
                    continue;
                }
                tracing::info!(pool = %pool.name_any(), function = %f.name, pod = %pod, reason = reason.as_str(), "recycle: draining busy pod");
                state.recycle_drained.insert(pod.clone(), now);
            }
            RecycleAction::Evict { pod, reason } => match pods.evict(pod, &EvictParams::default()).await {
                Ok(_) => {
                    evicted = true;
                    tracing::info!(pool = %pool.name_any(), function = %f.name, pod = %pod, reason = reason.as_str(), "recycle: evicted");
                    let note = format!("{}: replacing pod {pod} ({})", f.name, reason.as_str());
                    ctx.publish(pool, EventType::Normal, "Recycle", "Recycle", note, false).await;
                }
                Err(kube::Error::Api(s)) if s.code == 429 => {
                    tracing::info!(pod = %pod, "recycle: eviction refused by a PodDisruptionBudget; retrying");
                }
                Err(kube::Error::Api(s)) if s.is_not_found() => {}
                Err(e) => tracing::warn!(pod = %pod, error = %e, "recycle: eviction failed"),
            },
        }
    }
    let replacing = views.iter().any(|v| v.terminating || !v.ready);
    let more_due = views.iter().any(|v| due(v, policy).is_some());
    (!plan.is_empty() || !state.recycle_drained.is_empty() || (replacing && more_due), evicted)
}

/// The broker admin command that applies a function's retry policy to its background jobs.
fn retries_command(function: &str, r: &gearfleet_crd::RetryPolicy) -> String {
    format!("fleet retries {function} {} {} {}", r.limit, r.backoff.initial, r.backoff.max)
}

fn now_time() -> Time {
    Time(Timestamp::now())
}

async fn patch_status(api: &Api<WorkerPool>, name: &str, status: &WorkerPoolStatus) -> Result<(), Error> {
    apply_status(api, name, status).await?;
    Ok(())
}

/// Reconciles one WorkerPool.
pub async fn reconcile(pool: Arc<WorkerPool>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_pool(pool, ctx.clone()).await;
    ctx.metrics.reconcile_duration.observe(started.elapsed().as_secs_f64());
    result
}

async fn reconcile_pool(pool: Arc<WorkerPool>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciles.inc();
    let ns = pool.namespace().ok_or(Error::NoNamespace)?;
    let name = pool.name_any();
    let pools: Api<WorkerPool> = Api::namespaced(ctx.client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let generation = pool.metadata.generation;
    let mut status = pool.status.clone().unwrap_or_default();

    if let Err(e) = pool.spec.validate() {
        let message = e.to_string();
        let cond = new_condition(pool_condition::READY, false, "InvalidSpec", message.clone(), generation, now_time());
        let changed = set_condition(&mut status.conditions, cond);
        status.observed_generation = generation;
        status.message = Some(message.clone());
        patch_status(&pools, &name, &status).await?;
        if changed {
            ctx.publish(&pool, EventType::Warning, "InvalidSpec", "Validate", message, true).await;
        }
        return Ok(Action::await_change());
    }

    // Broker stats: the watch cache, else one poll.
    let stats = match ctx.cache.get() {
        Some(stats) => Some(stats),
        None => match ctx.broker.fleet_status().await {
            Ok(stats) => Some(to_map(stats)),
            Err(e) => {
                tracing::warn!(pool = %name, error = %e, "broker unavailable");
                None
            }
        },
    };

    let existing = deployments.list(&ListParams::default().labels(&format!("{LABEL_POOL}={name}"))).await?;
    let pool_pods = pods.list(&ListParams::default().labels(&format!("{LABEL_POOL}={name}"))).await?;
    let health_of = |function: &str| {
        health::function_health(
            pool_pods.items.iter().filter(|p| p.labels().get(LABEL_FUNCTION).map(String::as_str) == Some(function)),
            Timestamp::now(),
        )
    };
    let by_name: HashMap<String, &Deployment> = existing.items.iter().map(|d| (d.name_any(), d)).collect();

    // Decide.
    let now = ctx.epoch.elapsed();
    let mut decisions = Vec::new();
    let mut states = Vec::new();
    for f in &pool.spec.functions {
        let key = (ns.clone(), name.clone(), f.name.clone());
        let current = by_name.get(&pool.deployment_name(&f.name)).and_then(|d| d.spec.as_ref()?.replicas).unwrap_or(0);
        let fstats = stats.as_ref().map(|m| {
            m.get(&f.name).cloned().unwrap_or_else(|| FunctionStats { function: f.name.clone(), ..Default::default() })
        });
        let mut state = ctx.state(&key);
        if let Some(r) = &f.retries
            && stats.is_some()
        {
            let command = retries_command(&f.name, r);
            let fresh = state.retries_sent.as_ref().is_some_and(|(c, at)| *c == command && now < *at + RETRIES_RESEND);
            if !fresh {
                match ctx.broker.ok(&command).await {
                    Ok(()) => state.retries_sent = Some((command, now)),
                    Err(e) => {
                        tracing::warn!(pool = %name, function = %f.name, error = %e, "could not set the retry policy")
                    }
                }
            }
        }
        let (decision, history) = decide(f, &pool.spec.scaling, fstats.as_ref(), current, &state.history, now);
        state.history = history;
        decisions.push(decision);
        states.push((key, state, fstats));
    }
    let mut decisions = share_pool_cap(decisions, pool.spec.max_replicas);
    if pool.spec.paused {
        for d in &mut decisions {
            d.desired = 0;
            d.kind = ScaleKind::between(d.current, 0);
            d.reason = "the pool is paused".to_string();
        }
    }

    let recycle_policy = recycle_policy(&pool);
    // Worker connections, needed only to scale in and to recycle.
    let workers = if decisions.iter().any(|d| d.desired < d.current) || recycle_policy.is_some() {
        ctx.broker.fleet_workers().await.map_err(|e| tracing::warn!(error = %e, "fleet workers failed")).ok()
    } else {
        None
    };

    let mut requeue = pool.spec.scaling.poll_interval();
    let mut functions = Vec::new();
    let mut scaling = Vec::new();
    let mut latest_recycle: Option<Time> = None;
    let mut degraded: Vec<String> = Vec::new();
    let mut degraded_reason: Option<&'static str> = None;
    for ((f, decision), (key, mut state, fstats)) in pool.spec.functions.iter().zip(&decisions).zip(states) {
        ctx.metrics.decision(&decision.kind.to_string());
        let dep_name = pool.deployment_name(&f.name);
        let fhealth = health_of(&f.name);
        ctx.metrics.set_troubled_pods(&ns, &name, &f.name, fhealth.troubled);
        if let Some((trouble, line)) = &fhealth.first {
            degraded.push(format!("{}: {} pod(s) {} ({line})", f.name, fhealth.troubled, trouble.reason()));
            degraded_reason.get_or_insert(trouble.reason());
        }
        let (mut target, held) =
            health::cap_for_crashes(decision.desired, decision.current, fhealth.troubled, pool.spec.crash_loop_limit);
        if let Some(why) = held {
            scaling.push(format!("{}: {why}", f.name));
        }
        if target < decision.current {
            let wait = prepare_scale_in(&ctx, &pods, &pool, f, decision, workers.as_deref(), &mut state).await?;
            if let Some(why) = wait {
                target = decision.current;
                requeue = requeue.min(Duration::from_secs(1));
                scaling.push(format!("{}: {why}", f.name));
            }
        } else if let Some(drain) = state.drain.take() {
            // The scale-in was called off: take the victims back.
            for victim in drain.victims {
                if let Err(e) = ctx.broker.undrain(&victim).await {
                    tracing::warn!(pod = %victim, error = %e, "undrain failed");
                }
            }
        }

        let dep = desired_deployment(&pool, f, target, &ctx.workers_broker_address)?;
        deployments.patch(&dep_name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&dep)).await?;

        let previous = pool.function_status(&f.name);
        let (mut last_scale_time, mut last_scale_reason) =
            (previous.and_then(|p| p.last_scale_time.clone()), previous.and_then(|p| p.last_scale_reason.clone()));
        if target != decision.current {
            state.history = std::mem::take(&mut state.history).record_scale(now, decision.current, target);
            last_scale_time = Some(now_time());
            last_scale_reason = Some(decision.reason.clone());
            scaling.push(format!("{}: {} -> {}", f.name, decision.current, target));
            let kind = ScaleKind::between(decision.current, target);
            tracing::info!(pool = %name, function = %f.name, from = decision.current, to = target, reason = %decision.reason, "scaling");
            let note = format!("{}: {} -> {} replicas: {}", f.name, decision.current, target, decision.reason);
            ctx.publish(&pool, EventType::Normal, &kind.to_string(), "Scale", note, false).await;
        }
        if let Some(policy) = &recycle_policy
            && state.drain.is_none()
            && target == decision.current
        {
            let function_pods: Vec<&Pod> = pool_pods
                .items
                .iter()
                .filter(|p| p.labels().get(LABEL_FUNCTION).map(String::as_str) == Some(f.name.as_str()))
                .collect();
            let (busy, evicted) =
                recycle(&ctx, &pods, &pool, f, &function_pods, workers.as_deref(), policy, &mut state, now).await;
            if evicted {
                state.last_recycled = Some(now_time());
            }
            if busy {
                requeue = requeue.min(Duration::from_secs(2));
                scaling.push(format!("{}: recycling pods", f.name));
            } else if let Some(next) = next_due(&function_pods, policy) {
                requeue = requeue.min(next.max(Duration::from_secs(1)));
            }
        }
        if let Some(t) = &state.last_recycled
            && latest_recycle.as_ref().is_none_or(|l: &Time| l.0 < t.0)
        {
            latest_recycle = Some(t.clone());
        }
        ctx.store(key, state);

        let observed = by_name.get(&dep_name).and_then(|d| d.status.as_ref());
        let fstats = fstats.unwrap_or_default();
        let busy = fstats.workers.saturating_sub(fstats.idle_workers);
        functions.push(FunctionStatus {
            name: f.name.clone(),
            deployment: dep_name,
            replicas: observed.and_then(|s| s.replicas).unwrap_or(0),
            ready_replicas: observed.and_then(|s| s.ready_replicas).unwrap_or(0),
            desired_replicas: decision.desired,
            busy_workers: clamp_i32(busy),
            idle_workers: clamp_i32(fstats.idle_workers),
            crash_looping: fhealth.troubled,
            queued: clamp_i64(fstats.queued_total()),
            running: clamp_i64(fstats.running),
            last_scale_time,
            last_scale_reason,
        });
    }

    // Deployments of functions no longer in the spec.
    for dep in &existing.items {
        let function = dep.labels().get(LABEL_FUNCTION).cloned().unwrap_or_default();
        if pool.spec.function(&function).is_none() {
            tracing::info!(pool = %name, deployment = %dep.name_any(), "deleting Deployment of a removed function");
            match deployments.delete(&dep.name_any(), &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    // Status.
    let t = now_time();
    let broker_down = stats.is_none();
    let broker_cond = if broker_down {
        let msg = format!("broker {} is unreachable: holding current replicas", ctx.broker.addr());
        new_condition(pool_condition::BROKER_UNAVAILABLE, true, "BrokerUnreachable", msg, generation, t.clone())
    } else {
        new_condition(pool_condition::BROKER_UNAVAILABLE, false, "BrokerReachable", "", generation, t.clone())
    };
    let scaling_cond = if scaling.is_empty() {
        new_condition(pool_condition::SCALING, false, "Stable", "", generation, t.clone())
    } else {
        new_condition(pool_condition::SCALING, true, "Scaling", scaling.join("; "), generation, t.clone())
    };
    let ready_cond = new_condition(pool_condition::READY, true, "Reconciled", "", generation, t);
    set_condition(&mut status.conditions, ready_cond);
    set_condition(&mut status.conditions, scaling_cond);
    set_condition(&mut status.conditions, broker_cond);
    let degraded_cond = match degraded_reason {
        Some(reason) => {
            new_condition(pool_condition::DEGRADED, true, reason, degraded.join("; "), generation, now_time())
        }
        None => new_condition(pool_condition::DEGRADED, false, "Healthy", "", generation, now_time()),
    };
    let newly_degraded = degraded_reason.is_some() && !is_condition_true(&status.conditions, pool_condition::DEGRADED);
    set_condition(&mut status.conditions, degraded_cond);
    if newly_degraded {
        tracing::warn!(pool = %name, problems = %degraded.join("; "), "pool degraded");
        ctx.publish(&pool, EventType::Warning, "Degraded", "Health", degraded.join("; "), true).await;
    }
    let (phase, draining, drained) = pool_phase(PhaseInput {
        paused: pool.spec.paused,
        pods: pool_pods.items.len(),
        degraded: degraded_reason.is_some(),
        scaling: !scaling.is_empty(),
    });
    let was_drained = is_condition_true(&status.conditions, pool_condition::DRAINED);
    let t = now_time();
    let (draining_reason, drained_reason) =
        if pool.spec.paused { ("Paused", "Paused") } else { ("NotPaused", "NotPaused") };
    let message =
        if draining { format!("{} worker pod(s) finishing their jobs", pool_pods.items.len()) } else { String::new() };
    set_condition(
        &mut status.conditions,
        new_condition(pool_condition::DRAINING, draining, draining_reason, message, generation, t.clone()),
    );
    set_condition(
        &mut status.conditions,
        new_condition(pool_condition::DRAINED, drained, drained_reason, "", generation, t),
    );
    if drained && !was_drained {
        ctx.publish(
            &pool,
            EventType::Normal,
            "Drained",
            "Pause",
            "paused: no worker pods left; queued jobs wait in the broker".into(),
            true,
        )
        .await;
    }
    if draining {
        requeue = requeue.min(Duration::from_secs(2));
    }
    if let Some(t) = latest_recycle
        && status.last_recycle_time.as_ref().is_none_or(|old| old.0 < t.0)
    {
        status.last_recycle_time = Some(t);
    }
    status.phase = Some(phase);
    status.observed_generation = generation;
    status.message = None;
    status.functions = functions;
    status.recompute_totals();
    patch_status(&pools, &name, &status).await?;

    Ok(Action::requeue(requeue))
}

fn clamp_i32(v: u64) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn pod_view(pod: &Pod) -> PodView {
    let created = pod.metadata.creation_timestamp.as_ref().map_or(0, |t| t.0.as_second());
    PodView {
        name: pod.name_any(),
        ready: is_pod_ready(pod),
        created_at: Duration::from_secs(u64::try_from(created).unwrap_or(0)),
    }
}

/// Makes lowering `decision.current` to `decision.desired` safe: sets every pod's deletion cost
/// from [`scale_in_plan`] and drains the busy victims. Returns why the scale-in must wait, or
/// `None` once it may go ahead (no busy victims left, or `drainTimeout` passed).
async fn prepare_scale_in(
    ctx: &Context,
    pods: &Api<Pod>,
    pool: &WorkerPool,
    function: &FunctionSpec,
    decision: &ScalingDecision,
    workers: Option<&[WorkerStats]>,
    state: &mut FunctionState,
) -> Result<Option<String>, Error> {
    let Some(workers) = workers else {
        return Ok(Some("the broker's worker list is unavailable".to_string()));
    };
    let selector = format!("{LABEL_POOL}={},{LABEL_FUNCTION}={}", pool.name_any(), function.name);
    let list = pods.list(&ListParams::default().labels(&selector)).await?;
    let live: Vec<&Pod> = list.items.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
    let views: Vec<PodView> = live.iter().map(|p| pod_view(p)).collect();
    let keep = usize::try_from(decision.desired).unwrap_or(0);
    let plan = scale_in_plan(&views, workers, views.len().saturating_sub(keep));

    for (p, pod) in plan.iter().filter_map(|p| live.iter().find(|pod| pod.name_any() == p.name).map(|pod| (p, pod))) {
        let cost = p.deletion_cost.to_string();
        if pod.annotations().get(POD_DELETION_COST) != Some(&cost) {
            let patch = json!({"metadata": {"annotations": {POD_DELETION_COST: cost}}});
            pods.patch(&p.name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        }
    }

    let busy: Vec<&str> = plan.iter().filter(|p| p.drain).map(|p| p.name.as_str()).collect();
    let timeout = pool.spec.scaling.drain_timeout();
    let drain = state.drain.get_or_insert_with(|| Drain { started: Instant::now(), victims: Vec::new() });
    for victim in &busy {
        if !drain.victims.iter().any(|v| v == victim) {
            tracing::info!(pod = %victim, function = %function.name, "draining busy worker before scale-in");
            if let Err(e) = ctx.broker.drain(victim).await {
                tracing::warn!(pod = %victim, error = %e, "drain failed");
            }
            drain.victims.push((*victim).to_string());
        }
    }
    if !busy.is_empty() && drain.started.elapsed() < timeout {
        return Ok(Some(format!("waiting for {} busy worker(s) to finish: {}", busy.len(), busy.join(", "))));
    }
    // Going ahead: drained workers that survive the scale-in take jobs again.
    let drain = state.drain.take().expect("set above");
    for victim in drain.victims {
        let removed = plan.iter().any(|p| p.remove && p.name == victim);
        if !removed && let Err(e) = ctx.broker.undrain(&victim).await {
            tracing::warn!(pod = %victim, error = %e, "undrain failed");
        }
    }
    Ok(None)
}

#[cfg(test)]
mod retries_tests {
    use gearfleet_crd::{Backoff, RetryPolicy};
    use gearfleet_proto::admin::AdminCommand;

    use super::retries_command;

    /// What the operator sends is what the broker's admin parser accepts.
    #[test]
    fn retries_command_parses_as_the_broker_reads_it() {
        let policy = RetryPolicy { limit: 3, backoff: Backoff { initial: "500ms".into(), max: "2m".into() } };
        let line = retries_command("resize", &policy);
        assert_eq!(line, "fleet retries resize 3 500ms 2m");
        assert_eq!(
            AdminCommand::parse(line.as_bytes()),
            Ok(AdminCommand::FleetRetries {
                function: "resize".into(),
                limit: 3,
                initial: Some("500ms".into()),
                max: Some("2m".into())
            })
        );
    }
}
