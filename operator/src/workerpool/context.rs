//! What the WorkerPool controller holds between reconciles: its I/O handles (Kubernetes client,
//! broker clients, metrics, event publisher), each broker's latest `fleet watch` snapshot, and the little
//! memory that cannot be observed ([`PoolMemory`]: scaling history, retry policies sent, the last
//! recycle).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use gearfleet_crd::WorkerPool;
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{self, ObjectRef, Store};

use super::broker_view::StatsMap;
use super::desired::WorkerPods;
use super::gone::{NodeState, NodeStates};
use super::memory::PoolMemory;
use super::ownership::Claim;
use crate::brokers::Brokers;
use crate::kube_util::EventPublisher;
use crate::metrics::Metrics;

/// One broker's latest `fleet watch` snapshot, `None` while the watch connection is down.
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

/// A pool, by namespace and name.
pub type PoolKey = (String, String);

/// Shared state of the WorkerPool controller.
pub struct Context {
    pub(super) client: Client,
    pub(super) brokers: Brokers,
    pub(super) worker_pods: WorkerPods,
    /// One per broker, in the order of `brokers`.
    pub(super) caches: Vec<StatsCache>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) events: EventPublisher,
    /// Every Node, kept by a watch (`reconcile::run`), to find pods whose node is lost.
    nodes: Store<Node>,
    nodes_writer: Mutex<Option<Writer<Node>>>,
    /// The controller's cache of every WorkerPool it watches, for function-name ownership.
    pools: OnceLock<Store<WorkerPool>>,
    memory: Mutex<HashMap<PoolKey, PoolMemory>>,
}

impl Context {
    /// A context whose operator talks to `brokers` and whose worker pods are set up as
    /// `worker_pods` says.
    pub fn new(client: Client, brokers: Brokers, worker_pods: WorkerPods, metrics: Arc<Metrics>) -> Self {
        let events = EventPublisher::new(client.clone());
        let (nodes, nodes_writer) = reflector::store();
        Self {
            client,
            caches: brokers.clients().iter().map(|_| StatsCache::default()).collect(),
            brokers,
            worker_pods,
            metrics,
            events,
            nodes,
            nodes_writer: Mutex::new(Some(nodes_writer)),
            pools: OnceLock::new(),
            memory: Mutex::new(HashMap::new()),
        }
    }

    /// The writer of the node cache, for the watch that feeds it; `None` once taken.
    pub(super) fn take_nodes_writer(&self) -> Option<Writer<Node>> {
        self.nodes_writer.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// The states of the nodes `names`, from the node cache; `None` until the watch has listed
    /// the nodes (or while it cannot: without permission to list nodes, no node is ever lost).
    pub(super) fn node_states<'a>(&self, names: impl Iterator<Item = &'a str>) -> Option<NodeStates> {
        use futures::FutureExt;
        self.nodes.wait_until_ready().now_or_never()?.ok()?;
        let state = |name: &str| NodeState::of(self.nodes.get(&ObjectRef::new(name)).as_deref());
        Some(names.map(|name| (name.to_string(), state(name))).collect())
    }

    /// Gives the context the controller's pool cache (once; later calls are ignored).
    pub(super) fn set_pool_store(&self, pools: Store<WorkerPool>) {
        let _ = self.pools.set(pools);
    }

    /// Every watched pool's claim on function names; `None` until the pool cache has listed them.
    pub(super) fn pool_claims(&self) -> Option<Vec<Claim>> {
        use futures::FutureExt;
        let pools = self.pools.get()?;
        pools.wait_until_ready().now_or_never()?.ok()?;
        Some(pools.state().iter().filter_map(|p| Claim::of(p)).collect())
    }

    /// What the controller remembers about a pool (empty for a pool it has not seen).
    pub(super) fn memory(&self, key: &PoolKey) -> PoolMemory {
        self.memory.lock().unwrap_or_else(|e| e.into_inner()).get(key).cloned().unwrap_or_default()
    }

    /// Replaces what the controller remembers about a pool.
    pub(super) fn remember(&self, key: PoolKey, memory: PoolMemory) {
        self.memory.lock().unwrap_or_else(|e| e.into_inner()).insert(key, memory);
    }
}
