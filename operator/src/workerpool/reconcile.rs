//! The WorkerPool controller: watches WorkerPools and the Deployments they own, keeps one stats
//! cache per broker fed from its `fleet watch`, and reconciles each pool in stages:
//!
//! fetch (the pool, from the watch) → validate (an invalid spec gets `Ready=False`, reason
//! `InvalidSpec`, one Warning Event, and waits for the next change) → [`observe`] (Deployments,
//! pods, broker stats and worker connections, the time) → [`plan`] (pure: replicas, drains,
//! Deployments, recycling, the whole status, Events, requeue) → [`apply`] (in that order, status
//! last but for the Events).
//!
//! A function name another pool owns ([`ownership`](super::ownership), from the controller's own
//! pool cache) gets no replicas and the `Conflict` phase; such a pool looks again every 3 s.
//!
//! It requeues after the pool's `pollInterval` (1 s while a scale-in waits for a drain, 2 s while
//! recycling or pausing); every change `fleet watch` reports also triggers a reconcile of all
//! pools.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::channel::mpsc;
use gearfleet_crd::{LABEL_POOL, WorkerPool};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::store::Writer;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};

use super::apply::apply;
use super::broker_view::{StatsMap, to_map};
use super::observe::observe;
use super::plan::{plan, plan_invalid};
use crate::error::Error;

pub use super::context::{Context, StatsCache};

/// Runs the controller until SIGTERM/SIGINT. Watches all namespaces unless `namespace` is set.
pub async fn run(client: Client, namespace: Option<String>, ctx: Arc<Context>) {
    if let Some(writer) = ctx.take_nodes_writer() {
        tokio::spawn(watch_nodes(Api::all(client.clone()), writer));
    }
    let (pools, deployments): (Api<WorkerPool>, Api<Deployment>) = match &namespace {
        Some(ns) => (Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns)),
        None => (Api::all(client.clone()), Api::all(client)),
    };
    let (trigger_tx, trigger_rx) = mpsc::channel::<()>(1);
    for broker in 0..ctx.brokers.clients().len() {
        tokio::spawn(feed_cache(ctx.clone(), broker, trigger_tx.clone()));
    }
    let controller = Controller::new(pools, watcher::Config::default());
    ctx.set_pool_store(controller.store());
    controller
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

/// Keeps the stats cache of broker number `index` fed from its `fleet watch` and sends a trigger
/// whenever a snapshot differs from the previous one (a broker lost or back is a change too).
async fn feed_cache(ctx: Arc<Context>, index: usize, mut trigger: mpsc::Sender<()>) {
    let (Some(broker), Some(cache)) = (ctx.brokers.clients().get(index), ctx.caches.get(index)) else { return };
    let mut watch = Box::pin(broker.watch());
    let mut last: Option<StatsMap> = None;
    ctx.metrics.set_broker_up(broker.addr(), false);
    while let Some(item) = watch.next().await {
        let snapshot = item.map(to_map);
        if snapshot.is_none() && last.is_some() {
            tracing::warn!(broker = broker.addr(), "fleet watch connection lost");
        }
        if snapshot.is_some() && last.is_none() {
            tracing::info!(broker = broker.addr(), "fleet watch connected");
        }
        ctx.metrics.set_broker_up(broker.addr(), snapshot.is_some());
        cache.set(snapshot.clone());
        if snapshot != last {
            // A full channel means a trigger is pending already.
            let _ = trigger.try_send(());
        }
        last = snapshot;
    }
}

/// Keeps the node cache of the context up to date (nodes are cluster-scoped: this needs a
/// ClusterRole even when the operator watches one namespace). Until it has listed them, no node
/// counts as lost.
async fn watch_nodes(api: Api<Node>, writer: Writer<Node>) {
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(|node: &mut Node| {
            // Only the Ready condition is read: drop what makes Node objects large.
            node.metadata.managed_fields = None;
            if let Some(status) = node.status.as_mut() {
                status.images = None;
            }
        })
        .reflect(writer);
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        if let Err(e) = event {
            tracing::warn!(error = %e, "node watch failed: pods on lost nodes are not detected until it recovers");
        }
    }
}

/// Requeue after a failed reconcile; counts the error.
pub fn error_policy(pool: Arc<WorkerPool>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.error(error.metric_label());
    tracing::warn!(pool = %pool.name_any(), error = %error, "reconcile error");
    Action::requeue(Duration::from_secs(5))
}

/// Reconciles one WorkerPool.
pub async fn reconcile(pool: Arc<WorkerPool>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_pool(pool, &ctx).await;
    ctx.metrics.reconcile_duration.observe(started.elapsed().as_secs_f64());
    result
}

async fn reconcile_pool(pool: Arc<WorkerPool>, ctx: &Context) -> Result<Action, Error> {
    ctx.metrics.reconciles.inc();
    let ns = pool.namespace().ok_or(Error::NoNamespace)?;
    let memory = ctx.memory(&(ns.clone(), pool.name_any()));
    let plan = match pool.spec.validate() {
        Err(e) => plan_invalid(&pool, e.to_string(), Timestamp::now(), &memory),
        Ok(()) => {
            let observed = observe(ctx, pool.clone()).await?;
            plan(&observed, &memory)?
        }
    };
    let requeue = plan.requeue;
    apply(ctx, &pool, &ns, plan).await?;
    Ok(requeue.map_or_else(Action::await_change, Action::requeue))
}
