//! Observe (I/O): everything one reconcile of a WorkerPool looks at, gathered into a plain
//! [`Observed`] value that [`plan`](super::plan::plan) decides from.
//!
//! * the pool itself, its Deployments and its pods (listed by the `gearfleet.dev/pool` label);
//! * every broker's per-function stats: the snapshot its `fleet watch` keeps, else one
//!   `fleet status`; merged into one [`BrokerView`], which names the brokers that answered neither;
//! * the worker connections of every broker that answered (`fleet workers`: client id, address,
//!   busy/idle/sleeping, draining, jobs done, current jobs), fetched on every reconcile; a broker
//!   whose connections cannot be read counts as unreachable; `None` when no broker answers (then
//!   nothing is drained or undrained);
//! * the states of the nodes the pods run on (from the node watch's cache; `None` until it has
//!   listed them), to find pods whose node is lost ([`gone`](super::gone));
//! * the time.

use std::sync::Arc;

use futures::future::join_all;

use gearfleet_crd::{LABEL_POOL, WorkerPool};
use gearfleet_proto::admin::WorkerStats;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use super::broker_view::{BrokerView, StatsMap, to_map};
use super::context::Context;
use super::desired::WorkerPods;
use super::gone::NodeStates;
use super::ownership::Claim;
use crate::error::Error;

/// What one reconcile of a pool sees.
#[derive(Clone, Debug)]
pub struct Observed {
    /// The pool (spec valid).
    pub pool: Arc<WorkerPool>,
    /// Deployments labelled with the pool.
    pub deployments: Vec<Deployment>,
    /// Pods labelled with the pool, terminating ones included.
    pub pods: Vec<Pod>,
    /// Every broker's stats, merged by function; which brokers did not answer.
    pub brokers: BrokerView,
    /// The worker connections of every broker that answered; `None` when none did.
    pub workers: Option<Vec<WorkerStats>>,
    /// The states of the nodes the pods run on; `None` when they are not known.
    pub nodes: Option<NodeStates>,
    /// What every pool the operator watches claims of the function names (this one included);
    /// `None` until the pool cache has listed them (then no name is anyone else's).
    pub claims: Option<Vec<Claim>>,
    /// What every worker pod gets: the brokers (`GEARMAN_SERVERS`) and the drain hook.
    pub worker_pods: WorkerPods,
    /// When the observation was made.
    pub now: Timestamp,
}

/// Observes `pool`: its objects in the cluster and its functions in the broker.
pub async fn observe(ctx: &Context, pool: Arc<WorkerPool>) -> Result<Observed, Error> {
    let ns = pool.namespace().ok_or(Error::NoNamespace)?;
    let name = pool.name_any();
    let selector = ListParams::default().labels(&format!("{LABEL_POOL}={name}"));
    let deployments = Api::<Deployment>::namespaced(ctx.client.clone(), &ns).list(&selector).await?.items;
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &ns).list(&selector).await?.items;
    let pool_name = name.as_str();
    let answers = join_all(ctx.brokers.clients().iter().zip(&ctx.caches).map(|(broker, cache)| async move {
        // Stats: the watch cache, else one poll; then one cheap round trip for the connections.
        let stats = match cache.get() {
            Some(stats) => Some(stats),
            None => broker
                .fleet_status()
                .await
                .map(to_map)
                .map_err(|e| tracing::warn!(pool = %pool_name, error = %e, "broker unavailable"))
                .ok(),
        };
        let workers = match stats {
            Some(_) => {
                broker.fleet_workers().await.map_err(|e| tracing::warn!(error = %e, "fleet workers failed")).ok()
            }
            None => None,
        };
        let answer: Option<(StatsMap, Vec<WorkerStats>)> = stats.zip(workers);
        (broker.addr().to_string(), answer)
    }))
    .await;
    let mut workers: Option<Vec<WorkerStats>> = None;
    let mut stats = Vec::new();
    for (addr, answer) in answers {
        match answer {
            Some((s, w)) => {
                workers.get_or_insert_with(Vec::new).extend(w);
                stats.push((addr, Some(s)));
            }
            None => stats.push((addr, None)),
        }
    }
    let brokers = BrokerView::merge(stats);
    let claims = ctx.pool_claims();
    let nodes = ctx.node_states(pods.iter().filter_map(|p| p.spec.as_ref()?.node_name.as_deref()));
    Ok(Observed {
        pool,
        deployments,
        pods,
        brokers,
        workers,
        nodes,
        claims,
        worker_pods: ctx.worker_pods.clone(),
        now: Timestamp::now(),
    })
}
