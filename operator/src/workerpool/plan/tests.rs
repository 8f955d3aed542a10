//! Table-driven tests of [`plan`] and [`plan_invalid`] from small observed fixtures: every
//! condition, every drain and undrain decision, recycling steps and the memory.

use std::collections::BTreeMap;
use std::sync::Arc;

use gearfleet_crd::{ANNOTATION_DRAIN_REASON, ANNOTATION_DRAIN_STARTED, find_condition};
use gearfleet_proto::admin::{AdminCommand, WorkerState, WorkerStats};
use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus};
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, PodCondition, PodIP, PodSpec,
    PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::SignedDuration;

use super::*;
use crate::workerpool::broker_view::{BrokerView, StatsMap};
use crate::workerpool::desired::WorkerPods;
use crate::workerpool::gone::{NodeState, NodeStates};
use crate::workerpool::memory::FunctionMemory;
use crate::workerpool::ownership::Claim;

mod brokers;
mod disconnects;
mod drains;
mod ownership;
mod pool_cap;
mod status;
use crate::workerpool::scale_in::POD_DELETION_COST;

fn now() -> Timestamp {
    "2026-03-01T12:00:00Z".parse().expect("time")
}

fn ago(seconds: i64) -> Timestamp {
    now() - SignedDuration::from_secs(seconds)
}

/// A worker pod of function `echo` and its worker connection in the broker.
#[derive(Clone)]
struct PodFx {
    name: &'static str,
    function: &'static str,
    ready: bool,
    age: i64,
    /// `None`: no worker connection registered.
    worker: Option<WorkerState>,
    draining: bool,
    jobs_done: u64,
    annotations: BTreeMap<String, String>,
    terminating: bool,
    container: Option<ContainerStatus>,
    /// The pod IP (`status.podIPs`); `None`: not in the status.
    ip: Option<&'static str>,
    /// `spec.nodeName`.
    node: Option<&'static str>,
    /// In phase `Failed`.
    failed: bool,
    /// Its worker sends no client id (a stock Gearman worker): the broker knows it by address.
    stock: bool,
    host_network: bool,
}

fn pod(name: &'static str) -> PodFx {
    PodFx {
        name,
        function: "echo",
        ready: true,
        age: 3600,
        worker: Some(WorkerState::Idle),
        draining: false,
        jobs_done: 0,
        annotations: BTreeMap::new(),
        terminating: false,
        container: None,
        ip: None,
        node: None,
        failed: false,
        stock: false,
        host_network: false,
    }
}

impl PodFx {
    fn busy(mut self) -> Self {
        self.worker = Some(WorkerState::Busy);
        self
    }
    fn draining(mut self) -> Self {
        self.draining = true;
        self
    }
    fn age(mut self, seconds: i64) -> Self {
        self.age = seconds;
        self
    }
    fn cost(mut self, cost: i32) -> Self {
        self.annotations.insert(POD_DELETION_COST.into(), cost.to_string());
        self
    }
    /// Drained `seconds` ago for `reason` (`scale-in` or `recycle`).
    fn mark(mut self, reason: &str, seconds: i64) -> Self {
        self.annotations.insert(ANNOTATION_DRAIN_STARTED.into(), ago(seconds).to_string());
        self.annotations.insert(ANNOTATION_DRAIN_REASON.into(), reason.into());
        self
    }
    fn terminating(mut self) -> Self {
        self.terminating = true;
        self
    }
    fn of(mut self, function: &'static str) -> Self {
        self.function = function;
        self
    }
    fn container(mut self, status: ContainerStatus) -> Self {
        self.container = Some(status);
        self
    }
    /// A stock Gearman worker (no client id) in a pod with IP `ip`.
    fn stock(mut self, ip: &'static str) -> Self {
        self.ip = Some(ip);
        self.stock = true;
        self
    }
    fn on(mut self, node: &'static str) -> Self {
        self.node = Some(node);
        self
    }
    fn failed(mut self) -> Self {
        self.failed = true;
        self
    }
    fn host_network(mut self) -> Self {
        self.host_network = true;
        self
    }
    /// A connection of this pod's worker (from its IP, without a client id if it is stock).
    fn connection(&self, port: u16, state: WorkerState) -> WorkerStats {
        let worker = self.worker().unwrap_or_else(|| pod(self.name).worker().expect("worker"));
        WorkerStats {
            address: format!("{}:{port}", self.ip.unwrap_or("10.0.0.1")),
            state,
            current_jobs: if state == WorkerState::Busy { vec![format!("H:{port}")] } else { Vec::new() },
            ..worker
        }
    }

    fn pod(&self) -> Pod {
        let labels = [(LABEL_FUNCTION.to_string(), self.function.to_string())].into();
        Pod {
            metadata: ObjectMeta {
                name: Some(self.name.into()),
                labels: Some(labels),
                annotations: Some(self.annotations.clone()),
                creation_timestamp: Some(Time(ago(self.age))),
                deletion_timestamp: self.terminating.then(|| Time(now())),
                ..Default::default()
            },
            spec: Some(PodSpec {
                host_network: Some(self.host_network),
                node_name: self.node.map(String::from),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: self.failed.then(|| "Failed".to_string()),
                pod_ip: self.ip.map(String::from),
                pod_ips: self.ip.map(|ip| vec![PodIP { ip: ip.into() }]),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if self.ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                container_statuses: self.container.clone().map(|c| vec![c]),
                ..Default::default()
            }),
        }
    }

    fn worker(&self) -> Option<WorkerStats> {
        let state = self.worker?;
        Some(WorkerStats {
            client_id: if self.stock { "-" } else { self.name }.into(),
            address: format!("{}:40000", self.ip.unwrap_or("10.0.0.1")),
            state,
            draining: self.draining,
            jobs_done: self.jobs_done,
            current_jobs: if state == WorkerState::Busy { vec!["H:1".into()] } else { Vec::new() },
            functions: vec![self.function.into()],
        })
    }
}

fn waiting(reason: &str) -> ContainerStatus {
    ContainerStatus {
        name: "worker".into(),
        state: Some(ContainerState {
            waiting: Some(ContainerStateWaiting { reason: Some(reason.into()), message: Some("boom".into()) }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn oom_killed() -> ContainerStatus {
    ContainerStatus {
        name: "worker".into(),
        restart_count: 3,
        last_state: Some(ContainerState {
            terminated: Some(ContainerStateTerminated { reason: Some("OOMKilled".into()), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A pool with one function `echo` (0..=5 replicas, no scale-down stabilization) and what a
/// reconcile of it observes.
#[derive(Clone)]
struct Fx {
    /// `spec.functions`.
    functions: String,
    /// More spec fields, one per line.
    spec: String,
    status: Option<WorkerPoolStatus>,
    replicas: i32,
    pods: Vec<PodFx>,
    /// Queued and running jobs of `echo`; `None`: the broker is unreachable.
    backlog: Option<(u64, u64)>,
    workers_listed: bool,
    extra_workers: Vec<WorkerStats>,
    /// Brokers besides `broker:4730` that do not answer (a partial view).
    silent_brokers: Vec<String>,
    /// Node states; `None`: not known.
    nodes: Option<NodeStates>,
    /// Every pool's claim on function names; `None`: the pool cache is not ready.
    claims: Option<Vec<Claim>>,
}

fn fx() -> Fx {
    Fx {
        functions: "[{name: echo, maxReplicas: 5}]".into(),
        spec: String::new(),
        status: None,
        replicas: 1,
        pods: Vec::new(),
        backlog: Some((0, 0)),
        workers_listed: true,
        extra_workers: Vec::new(),
        silent_brokers: Vec::new(),
        nodes: Some(NodeStates::new()),
        claims: None,
    }
}

impl Fx {
    fn functions(mut self, yaml: &str) -> Self {
        self.functions = yaml.into();
        self
    }
    fn spec(mut self, yaml: &str) -> Self {
        self.spec.push_str(yaml);
        self.spec.push('\n');
        self
    }
    fn replicas(mut self, n: i32) -> Self {
        self.replicas = n;
        self
    }
    fn pods(mut self, pods: impl IntoIterator<Item = PodFx>) -> Self {
        self.pods.extend(pods);
        self
    }
    /// `queued` waiting and `running` jobs of `echo`.
    fn backlog(mut self, queued: u64, running: u64) -> Self {
        self.backlog = Some((queued, running));
        self
    }
    fn broker_down(mut self) -> Self {
        self.backlog = None;
        self.workers_listed = false;
        self
    }
    /// Two more brokers, of which `silent` do not answer.
    fn silent_brokers(mut self, silent: &[&str]) -> Self {
        self.silent_brokers = silent.iter().map(|b| b.to_string()).collect();
        self
    }
    fn nodes(mut self, nodes: &[(&str, NodeState)]) -> Self {
        self.nodes = Some(nodes.iter().map(|(n, s)| (n.to_string(), *s)).collect());
        self
    }
    fn nodes_unknown(mut self) -> Self {
        self.nodes = None;
        self
    }
    fn no_worker_list(mut self) -> Self {
        self.workers_listed = false;
        self
    }
    fn claims(mut self, claims: Vec<Claim>) -> Self {
        self.claims = Some(claims);
        self
    }
    fn status(mut self, status: WorkerPoolStatus) -> Self {
        self.status = Some(status);
        self
    }

    fn observed(&self) -> Observed {
        let yaml = format!(
            "apiVersion: gearfleet.dev/v1alpha1\nkind: WorkerPool\n\
             metadata: {{name: pool, namespace: ns, uid: u-1, generation: 2}}\n\
             spec:\n  template: {{spec: {{containers: [{{name: worker, image: w}}]}}}}\n  \
             functions: {}\n  scaling: {{scaleDown: {{stabilizationWindow: 0s}}}}\n{}",
            self.functions,
            self.spec.lines().map(|l| format!("  {l}\n")).collect::<String>()
        );
        let mut pool: WorkerPool = serde_yaml::from_str(&yaml).expect("pool yaml");
        pool.status = self.status.clone();
        let deployments = pool
            .spec
            .functions
            .iter()
            .map(|f| Deployment {
                metadata: ObjectMeta {
                    name: Some(pool.deployment_name(&f.name)),
                    labels: Some([(LABEL_FUNCTION.to_string(), f.name.clone())].into()),
                    ..Default::default()
                },
                spec: Some(DeploymentSpec { replicas: Some(self.replicas), ..Default::default() }),
                status: Some(DeploymentStatus {
                    replicas: Some(self.replicas),
                    ready_replicas: Some(self.replicas),
                    available_replicas: Some(
                        self.pods.iter().filter(|p| p.function == f.name && p.ready && !p.terminating).count() as i32,
                    ),
                    ..Default::default()
                }),
            })
            .collect();
        let stats = self.backlog.map(|(queued, running)| {
            let echo = FunctionStats {
                function: "echo".into(),
                queued: [0, queued, 0],
                running,
                workers: self.pods.len() as u64,
                idle_workers: self.pods.iter().filter(|p| p.worker == Some(WorkerState::Idle)).count() as u64,
                ..Default::default()
            };
            StatsMap::from([("echo".to_string(), echo)])
        });
        let workers = self.workers_listed.then(|| {
            let mut workers: Vec<WorkerStats> = self.pods.iter().filter_map(PodFx::worker).collect();
            workers.extend(self.extra_workers.iter().cloned());
            workers
        });
        Observed {
            pool: Arc::new(pool),
            deployments,
            pods: self.pods.iter().map(PodFx::pod).collect(),
            brokers: BrokerView::merge(
                std::iter::once(("broker:4730".to_string(), stats))
                    .chain(self.silent_brokers.iter().map(|b| (b.clone(), None)))
                    .collect(),
            ),
            workers,
            nodes: self.nodes.clone(),
            claims: self.claims.clone(),
            worker_pods: WorkerPods::new("gearfleet-broker:4730"),
            now: now(),
        }
    }

    fn plan(&self) -> Plan {
        plan(&self.observed(), &PoolMemory::default()).expect("plan")
    }
}

/// One line per pod action, e.g. `annotate b: cost=-1 mark=scale-in`, `drain b (scale-in)`.
fn describe(action: &PodAction) -> String {
    match action {
        PodAction::Annotate { pod, annotations } => {
            if annotations.values().all(Option::is_none) {
                return format!("unmark {pod}");
            }
            let mut parts = Vec::new();
            if let Some(Some(cost)) = annotations.get(POD_DELETION_COST) {
                parts.push(format!("cost={cost}"));
            }
            if let Some(Some(reason)) = annotations.get(ANNOTATION_DRAIN_REASON) {
                let started = annotations.get(ANNOTATION_DRAIN_STARTED).cloned().flatten();
                assert_eq!(started, Some(now().to_string()), "a new mark starts now");
                parts.push(format!("mark={reason}"));
            }
            format!("annotate {pod}: {}", parts.join(" "))
        }
        PodAction::Drain { pod, target, reason, .. } => {
            format!("drain {pod}{} ({})", via(pod, target), reason.as_str())
        }
        PodAction::Undrain { pod, target, .. } => format!("undrain {pod}{}", via(pod, target)),
        PodAction::Disconnect { pod, target, .. } => format!("disconnect {pod}{}", via(pod, target)),
        PodAction::Evict { pod, reason, .. } => format!("evict {pod} ({})", reason.as_str()),
    }
}

/// ` via <target>` when the broker is addressed by something else than the pod's name.
fn via(pod: &str, target: &str) -> String {
    if pod == target { String::new() } else { format!(" via {target}") }
}

fn condition(plan: &Plan, type_: &str) -> (String, String, String) {
    let c = find_condition(&plan.status.conditions, type_).unwrap_or_else(|| panic!("no {type_} condition"));
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

fn scaling_message(plan: &Plan) -> String {
    condition(plan, pool_condition::SCALING).2
}

#[test]
fn invalid_spec() {
    let pool = fx().functions("[]").observed().pool;
    let first = plan_invalid(&pool, "spec.functions: too few".into(), now(), &PoolMemory::default());
    assert_eq!(
        condition(&first, pool_condition::READY),
        ("False".into(), "InvalidSpec".into(), "spec.functions: too few".into())
    );
    assert_eq!(first.status.message.as_deref(), Some("spec.functions: too few"));
    assert_eq!(first.status.observed_generation, Some(2));
    assert_eq!(first.requeue, None, "waits for the next change");
    assert!(first.functions.is_empty() && first.before_scaling.is_empty() && first.recycling.is_empty());
    let e = &first.events[0];
    assert_eq!(
        (e.type_, e.reason.as_str(), e.action, e.aggregate),
        (EventType::Warning, "InvalidSpec", "Validate", true)
    );
    // The same problem again: no second Event.
    let mut seen = (*pool).clone();
    seen.status = Some(first.status.clone());
    let again = plan_invalid(&seen, "spec.functions: too few".into(), now(), &PoolMemory::default());
    assert!(again.events.is_empty());
}

#[test]
fn removed_functions_lose_their_deployments() {
    let mut observed = fx().observed();
    let mut stale = observed.deployments[0].clone();
    stale.metadata.name = Some("pool-gone".into());
    stale.metadata.labels = Some([(LABEL_FUNCTION.to_string(), "gone".to_string())].into());
    observed.deployments.push(stale);
    let plan = plan(&observed, &PoolMemory::default()).expect("plan");
    assert_eq!(plan.delete_deployments, ["pool-gone"]);
    assert_eq!(plan.functions.len(), 1);
}

#[test]
fn memory_records_scaling_and_retry_policies() {
    let fx = fx().functions("[{name: echo, maxReplicas: 5, retries: {limit: 3}}]").backlog(3, 0);
    let observed = fx.observed();
    let first = plan(&observed, &PoolMemory::default()).expect("plan");
    assert_eq!(
        first.retries,
        [RetriesCommand { function: "echo".into(), command: "fleet retries echo 3 1s 5m".into() }]
    );
    let history = &first.memory.functions["echo"].history;
    assert_eq!(history.events.len(), 1, "the 1 -> 3 change is recorded");
    // Sent a moment ago: not again until RETRIES_RESEND has passed.
    let mut memory = first.memory.clone();
    memory.functions.get_mut("echo").expect("echo").retries_sent = Some(("fleet retries echo 3 1s 5m".into(), ago(30)));
    assert!(plan(&observed, &memory).expect("plan").retries.is_empty());
    memory.functions.get_mut("echo").expect("echo").retries_sent = Some(("fleet retries echo 3 1s 5m".into(), ago(60)));
    assert_eq!(plan(&observed, &memory).expect("plan").retries.len(), 1);
    // Not while the broker is unreachable; functions no longer in the spec are forgotten.
    memory.functions.insert("gone".into(), FunctionMemory::default());
    let down = plan(&fx.clone().broker_down().observed(), &memory).expect("plan");
    assert!(down.retries.is_empty());
    assert_eq!(down.memory.functions.keys().collect::<Vec<_>>(), ["echo"]);
    // The last recycle remembered shows in the status even if the pool read is older.
    memory.last_recycle = Some(Time(ago(5)));
    assert_eq!(plan(&observed, &memory).expect("plan").status.last_recycle_time, Some(Time(ago(5))));
}

/// What the operator sends is what the broker's admin parser accepts.
#[test]
fn retries_command_parses_as_the_broker_reads_it() {
    let policy = gearfleet_crd::RetryPolicy {
        limit: 3,
        backoff: gearfleet_crd::Backoff { initial: "500ms".into(), max: "2m".into() },
    };
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

#[test]
fn each_function_looks_after_its_own_pods() {
    // A pod of another function of the same pool with a stale drain: undrained once, by its function.
    let plan = fx()
        .functions("[{name: echo, maxReplicas: 5}, {name: other, maxReplicas: 5}]")
        .backlog(0, 1)
        .pods([pod("a").busy(), pod("b").of("other").draining()])
        .plan();
    let before: Vec<String> = plan.before_scaling.iter().map(describe).collect();
    assert_eq!(before, ["undrain b"], "the other function's undrain is planned once");
}
