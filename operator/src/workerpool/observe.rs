//! Observe (I/O): everything one reconcile of a WorkerPool looks at, gathered into a plain
//! [`Observed`] value that [`plan`](super::plan::plan) decides from.
//!
//! * the pool itself, its Deployments and its pods (listed by the `gearfleet.dev/pool` label);
//! * the broker's per-function stats: the snapshot kept by `fleet watch`, else one
//!   `fleet status`; `None` when neither answers;
//! * the broker's worker connections (`fleet workers`: client id, address, busy/idle/sleeping,
//!   draining, jobs done, current jobs), fetched on every reconcile while the broker answers; `None`
//!   when it does not (then nothing is drained or undrained);
//! * the states of the nodes the pods run on (from the node watch's cache; `None` until it has
//!   listed them), to find pods whose node is lost ([`gone`](super::gone));
//! * the time.

use std::sync::Arc;

use gearfleet_crd::{LABEL_POOL, WorkerPool};
use gearfleet_proto::admin::WorkerStats;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use super::context::{Context, StatsMap, to_map};
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
    /// The broker's stats by function; `None` when the broker is unreachable.
    pub stats: Option<StatsMap>,
    /// The broker's worker connections; `None` when they could not be read.
    pub workers: Option<Vec<WorkerStats>>,
    /// The states of the nodes the pods run on; `None` when they are not known.
    pub nodes: Option<NodeStates>,
    /// What every pool the operator watches claims of the function names (this one included);
    /// `None` until the pool cache has listed them (then no name is anyone else's).
    pub claims: Option<Vec<Claim>>,
    /// The broker's admin address (named in the `BrokerUnavailable` condition).
    pub broker_address: String,
    /// What every worker pod gets: the brokers (`GEARMAN_SERVERS`) and the drain hook.
    pub worker_pods: WorkerPods,
    /// When the observation was made.
    pub now: Timestamp,
}

/// Observes `pool`: its objects in the cluster and its functions in the broker.
pub async fn observe(ctx: &Context, pool: Arc<WorkerPool>) -> Result<Observed, Error> {
    let ns = pool.namespace().ok_or(Error::NoNamespace)?;
    let name = pool.name_any();
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
    let selector = ListParams::default().labels(&format!("{LABEL_POOL}={name}"));
    let deployments = Api::<Deployment>::namespaced(ctx.client.clone(), &ns).list(&selector).await?.items;
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &ns).list(&selector).await?.items;
    // One cheap admin round trip; skipped when the broker did not answer for the stats either.
    let workers = match stats {
        Some(_) => {
            ctx.broker.fleet_workers().await.map_err(|e| tracing::warn!(error = %e, "fleet workers failed")).ok()
        }
        None => None,
    };
    let claims = ctx.pool_claims();
    let nodes = ctx.node_states(pods.iter().filter_map(|p| p.spec.as_ref()?.node_name.as_deref()));
    Ok(Observed {
        pool,
        deployments,
        pods,
        stats,
        workers,
        nodes,
        claims,
        broker_address: ctx.broker.addr().to_string(),
        worker_pods: ctx.worker_pods.clone(),
        now: Timestamp::now(),
    })
}
