//! The `WorkerPool` custom resource: a fleet of Gearman workers, one
//! autoscaled Deployment per function.

use std::time::Duration;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::RetryPolicy;
use crate::cron::{CRON_PATTERN, TIME_ZONE_PATTERN};
use crate::duration::DurationString;
use crate::names::FUNCTION_NAME_PATTERN;
use crate::rules;
use crate::validation::{Collector, ValidationError};

/// Maximum number of functions in one pool.
pub const MAX_FUNCTIONS: usize = 64;
/// Maximum number of policies in one scaling rule.
pub const MAX_SCALING_POLICIES: usize = 8;

/// Condition types set on `WorkerPool.status.conditions`.
pub mod pool_condition {
    /// Every function has its desired replicas available (its phase is
    /// Ready or Idle): reason `AllFunctionsReady`. False (reason
    /// `FunctionsNotReady`) names the functions that are not, e.g.
    /// `sleep: 1/3 available (Scaling)`; False with reason `InvalidSpec` for a
    /// spec the operator refuses.
    pub const READY: &str = "Ready";
    /// At least one function is being scaled (desired != current replicas).
    pub const SCALING: &str = "Scaling";
    /// The operator cannot reach the Gearman broker, so queue depths are
    /// unknown and scaling is frozen (reason `BrokerUnreachable`); or, with
    /// several brokers, some of them (reason `PartialView`: counts are lower
    /// bounds, so functions may grow but are not scaled in).
    pub const BROKER_UNAVAILABLE: &str = "BrokerUnavailable";
    /// Something keeps the pool from what its queues ask for. Reason, the
    /// first that applies: a pod trouble (`CrashLoopBackOff`, `OOMKilled`,
    /// `ImagePullBackOff`), `BrokerUnreachable`, `PoolCapReached`
    /// (spec.maxReplicas holds a function below what its queue asks); the
    /// message lists every cause. False: reason `Healthy`.
    pub const DEGRADED: &str = "Degraded";
    /// Another pool owns one of this pool's function names (it served it
    /// first): reason `FunctionOwnedElsewhere`, the message names each
    /// function and its owner; those functions get no replicas here. False:
    /// reason `NoConflict`.
    pub const CONFLICT: &str = "Conflict";
    /// The pool is paused and busy workers are finishing their jobs.
    pub const DRAINING: &str = "Draining";
    /// The pool is paused and no worker pods are left.
    pub const DRAINED: &str = "Drained";
    /// Some function is `Scaling` or `Draining` (reason: the first such
    /// phase; message `function: phase; ...`). False (reason `Stable`)
    /// otherwise.
    pub const PROGRESSING: &str = "Progressing";
    /// Every condition type, in a stable order.
    pub const ALL: [&str; 8] = [READY, SCALING, BROKER_UNAVAILABLE, DEGRADED, DRAINING, DRAINED, PROGRESSING, CONFLICT];
}

/// WorkerPool runs Gearman workers for a set of functions. For every function
/// the operator maintains one Deployment and scales it between minReplicas and
/// maxReplicas from the function's queue depth in the Gearman broker.
// The repeated `type_ = ...` keys of different printcolumn(...) entries are
// not duplicates, but clippy cannot tell.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "gearfleet.dev",
    version = "v1alpha1",
    kind = "WorkerPool",
    plural = "workerpools",
    shortname = "wp",
    category = "gearfleet",
    namespaced,
    status = "WorkerPoolStatus",
    derive = "PartialEq",
    doc = "WorkerPool runs a fleet of Gearman workers: one autoscaled Deployment per function, scaled from the function's queue depth in the broker.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Every function has its desired replicas available (the Ready condition)"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Summary of the pool's state"
    ),
    printcolumn(
        name = "Functions",
        type_ = "string",
        json_path = ".status.readyFunctions",
        description = "Functions that are Ready or Idle, of all"
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".status.desiredReplicas",
        description = "Worker replicas wanted across all functions"
    ),
    printcolumn(
        name = "Available",
        type_ = "integer",
        json_path = ".status.availableReplicas",
        description = "Available worker pods across all functions"
    ),
    printcolumn(
        name = "Queued",
        type_ = "integer",
        json_path = ".status.queued",
        description = "Jobs waiting in the broker across all functions"
    ),
    printcolumn(
        name = "Degraded",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Degraded\")].reason",
        description = "Reason of the Degraded condition (Healthy when it is False)",
        priority = 1
    ),
    printcolumn(
        name = "Pods",
        type_ = "integer",
        json_path = ".status.replicas",
        description = "Worker pods across all functions",
        priority = 1
    ),
    printcolumn(
        name = "Running",
        type_ = "integer",
        json_path = ".status.running",
        description = "Jobs being worked on across all functions",
        priority = 1
    ),
    printcolumn(
        name = "Paused",
        type_ = "boolean",
        json_path = ".spec.paused",
        description = "Whether the pool is paused (drained)",
        priority = 1
    ),
    printcolumn(
        name = "Names",
        type_ = "string",
        json_path = ".spec.functions[*].name",
        description = "Functions served by the pool",
        priority = 1
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::common::reflow_descriptions)]
#[x_kube(validation = rules::POOL_MIN_REPLICAS_WITHIN_MAX.to_rule())]
#[x_kube(validation = rules::POOL_TEMPLATE_REQUIRED.to_rule())]
pub struct WorkerPoolSpec {
    /// Default pod template for the workers of every function. Each function
    /// gets its own Deployment built from this template (or from the
    /// function's own template, which replaces it). The operator adds the
    /// labels gearfleet.dev/pool and gearfleet.dev/function and the
    /// environment variables GEARFLEET_POOL and GEARFLEET_FUNCTION to every
    /// container. Required unless every function sets its own template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = crate::common::strip_nested_descriptions)]
    pub template: Option<PodTemplateSpec>,

    /// Gearman functions served by the pool (1-64, unique names). Each
    /// function is scaled independently.
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(
        validation = rules::FUNCTION_NAMES_UNIQUE.to_rule(),
        merge_strategy = kube::core::ListMerge::Map(vec!["name".into()])
    )]
    pub functions: Vec<FunctionSpec>,

    /// Optional cap on the total number of worker pods across all functions.
    /// When the functions together want more, the operator scales them down
    /// to fit (never below their minReplicas). The sum of all minReplicas
    /// must not exceed this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_replicas: Option<i32>,

    /// How and how fast the operator scales the functions.
    #[serde(default)]
    pub scaling: ScalingSpec,

    /// Optional periodic replacement of worker pods (by age, by number of
    /// processed jobs, or on a schedule). Omit to never recycle pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recycle: Option<RecycleSpec>,

    /// Pause the pool: stop assigning new work and scale every function to
    /// zero once busy workers have finished (or scaling.drainTimeout has
    /// passed). Queued jobs stay in the broker. Set back to false to resume.
    #[serde(default)]
    pub paused: bool,

    /// Optional limit on pods in CrashLoopBackOff per function. When a
    /// function has this many crash-looping pods, the operator stops adding
    /// pods for it and sets the Degraded condition. 0 stops scaling up as
    /// soon as one pod crash-loops. Omit for no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub crash_loop_limit: Option<i32>,

    /// Drain every worker pod before Kubernetes stops it, whatever stops it
    /// (scale-in, rollout, recycling, eviction, node drain, pool deletion) and
    /// whatever Gearman worker runs in it. The operator adds a small native
    /// sidecar (gearfleet-drain) and a preStop hook to each worker container:
    /// the pod's connections get no new job, and the kubelet sends SIGTERM only
    /// once they hold none (or scaling.drainTimeout has passed). Needs
    /// Kubernetes 1.29 or later; a container with its own preStop hook keeps
    /// it, and hostNetwork pods get no hook. Default true.
    #[serde(default = "default_drain_hook")]
    pub drain_hook: bool,
}

fn default_drain_hook() -> bool {
    true
}

/// One Gearman function served by the pool, backed by one Deployment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = rules::FUNCTION_MIN_MAX.to_rule())]
pub struct FunctionSpec {
    /// Gearman function name the workers register with CAN_DO. 1-63
    /// characters from [A-Za-z0-9._-], starting and ending with a letter or
    /// digit (so it is also a valid label value). The Deployment is named
    /// "<pool>-<name>" when that is a valid DNS-1123 label; otherwise the
    /// name is lower-cased, other characters are replaced by '-', and a short
    /// hash is appended (see status.functions[].deployment).
    #[schemars(length(min = 1, max = 63), pattern(FUNCTION_NAME_PATTERN))]
    pub name: String,

    /// Fewest worker pods to keep, even with an empty queue. 0 allows scaling
    /// to zero.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub min_replicas: i32,

    /// Most worker pods to run for this function. Must be at least
    /// minReplicas.
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1))]
    pub max_replicas: i32,

    /// Jobs one worker pod is expected to handle at a time. The desired
    /// replica count is ceil((queued + running) / targetJobsPerWorker),
    /// clamped to [minReplicas, maxReplicas].
    #[serde(default = "default_one")]
    #[schemars(range(min = 1))]
    pub target_jobs_per_worker: i32,

    /// Queue depth a function at zero replicas must exceed before it is
    /// scaled up from zero. 0 scales up as soon as one job is queued. Has no
    /// effect once the function has pods.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub activation_threshold: i32,

    /// Maximum time a worker may spend on one job, e.g. "30s" or "5m"
    /// (units ms, s, m, h, d). Workers register with CAN_DO_TIMEOUT and the
    /// broker fails jobs that run longer. Omit for no timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationString>,

    /// Pod template for this function's workers. When set it replaces
    /// spec.template entirely for this function (the two are not merged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = crate::common::strip_nested_descriptions)]
    pub template: Option<PodTemplateSpec>,

    /// How the broker retries failed background jobs of this function. Omit
    /// to never retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetryPolicy>,
}

fn default_max_replicas() -> i32 {
    10
}

fn default_one() -> i32 {
    1
}

/// How the operator scales the pool's functions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingSpec {
    /// How often the operator polls the broker's queue depths and
    /// re-evaluates every function, e.g. "5s". Must be greater than zero.
    #[serde(default = "default_poll_interval")]
    pub poll_interval: DurationString,

    /// How long a function's queue must stay empty (no queued and no running
    /// jobs) before it is scaled down to minReplicas, e.g. "60s".
    #[serde(default = "default_cooldown")]
    pub cooldown: DurationString,

    /// Rate limits for scaling up. Default: no stabilization window and no
    /// rate limit (jump straight to the desired count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_up: Option<ScalingRules>,

    /// Rate limits for scaling down. Default: a 60s stabilization window and
    /// no rate limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down: Option<ScalingRules>,

    /// Longest time to wait for a busy worker to finish its current job
    /// before its pod is removed anyway (scale-down, recycling, pause),
    /// e.g. "10m".
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: DurationString,
}

fn default_poll_interval() -> DurationString {
    "5s".into()
}

fn default_cooldown() -> DurationString {
    "60s".into()
}

fn default_drain_timeout() -> DurationString {
    "10m".into()
}

impl Default for ScalingSpec {
    fn default() -> Self {
        Self {
            poll_interval: default_poll_interval(),
            cooldown: default_cooldown(),
            scale_up: None,
            scale_down: None,
            drain_timeout: default_drain_timeout(),
        }
    }
}

impl ScalingSpec {
    /// The scale-up rules in effect (`scaleUp` or the default).
    pub fn scale_up_rules(&self) -> ScalingRules {
        self.scale_up.clone().unwrap_or_else(ScalingRules::default_scale_up)
    }

    /// The scale-down rules in effect (`scaleDown` or the default).
    pub fn scale_down_rules(&self) -> ScalingRules {
        self.scale_down.clone().unwrap_or_else(ScalingRules::default_scale_down)
    }

    /// `pollInterval` as a [`Duration`] (5s if invalid).
    pub fn poll_interval(&self) -> Duration {
        self.poll_interval.to_duration().ok().filter(|d| !d.is_zero()).unwrap_or(Duration::from_secs(5))
    }

    /// `cooldown` as a [`Duration`] (60s if invalid).
    pub fn cooldown(&self) -> Duration {
        self.cooldown.to_duration().unwrap_or(Duration::from_secs(60))
    }

    /// `drainTimeout` as a [`Duration`] (10m if invalid).
    pub fn drain_timeout(&self) -> Duration {
        self.drain_timeout.to_duration().unwrap_or(Duration::from_secs(600))
    }
}

/// Scaling behaviour in one direction, modelled on the HorizontalPodAutoscaler
/// behavior API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingRules {
    /// The operator uses the highest (scale-down) or lowest (scale-up)
    /// desired replica count computed during this window, e.g. "5m", which
    /// smooths out short spikes. Omit or "0s" for no stabilization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stabilization_window: Option<DurationString>,

    /// Limits on how much the replica count may change per period (at most 8).
    /// Empty means no limit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub policies: Vec<ScalingPolicy>,

    /// Which policy applies when several are given: Max (the one allowing
    /// the largest change), Min (the smallest change), or Disabled (never
    /// scale in this direction).
    #[serde(default)]
    pub select_policy: SelectPolicy,
}

impl ScalingRules {
    /// Default rules for scaling up: immediate, unlimited.
    pub fn default_scale_up() -> Self {
        Self { stabilization_window: None, policies: Vec::new(), select_policy: SelectPolicy::Max }
    }

    /// Default rules for scaling down: 60s stabilization window, unlimited.
    pub fn default_scale_down() -> Self {
        Self { stabilization_window: Some("60s".into()), policies: Vec::new(), select_policy: SelectPolicy::Max }
    }

    /// The stabilization window as a [`Duration`] (zero if absent or invalid).
    pub fn stabilization_window(&self) -> Duration {
        self.stabilization_window.as_ref().and_then(|d| d.to_duration().ok()).unwrap_or_default()
    }

    /// Largest change (in pods) allowed right now from `current` replicas,
    /// given how many pods were added (or removed) by earlier scaling events
    /// within each policy's period. `changed_within(period)` must return that
    /// number. Returns `None` when there is no limit and `Some(0)` when
    /// scaling in this direction is disabled.
    pub fn allowed_change(&self, current: i32, changed_within: impl Fn(Duration) -> i32) -> Option<i32> {
        if self.select_policy == SelectPolicy::Disabled {
            return Some(0);
        }
        let limits = self.policies.iter().filter_map(|p| {
            let period = p.period.to_duration().ok()?;
            let budget = match p.type_ {
                ScalingPolicyType::Pods => i64::from(p.value),
                // Rounded up and at least one pod, so that a function can
                // always grow from zero.
                ScalingPolicyType::Percent => ((i64::from(current.max(0)) * i64::from(p.value) + 99) / 100).max(1),
            };
            let left = (budget - i64::from(changed_within(period))).max(0);
            Some(i32::try_from(left).unwrap_or(i32::MAX))
        });
        match self.select_policy {
            SelectPolicy::Max => limits.max(),
            SelectPolicy::Min => limits.min(),
            SelectPolicy::Disabled => Some(0),
        }
    }
}

/// One scaling rate limit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingPolicy {
    /// Pods: change by at most `value` pods per period. Percent: change by at
    /// most `value` percent of the current replicas per period (rounded up,
    /// and at least one pod).
    #[serde(rename = "type")]
    pub type_: ScalingPolicyType,

    /// Size of the allowed change (pods or percent, see type). At least 1.
    #[schemars(range(min = 1))]
    pub value: i32,

    /// Window the limit applies to, e.g. "15s" or "1m".
    pub period: DurationString,
}

/// Unit of a scaling policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ScalingPolicyType {
    /// An absolute number of pods.
    Pods,
    /// A percentage of the current replicas.
    Percent,
}

/// How to combine several scaling policies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SelectPolicy {
    /// Use the policy that allows the largest change.
    #[default]
    Max,
    /// Use the policy that allows the smallest change.
    Min,
    /// Never scale in this direction.
    Disabled,
}

/// Periodic replacement of worker pods, e.g. to contain memory leaks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = rules::RECYCLE_HAS_TRIGGER.to_rule())]
#[x_kube(validation = rules::RECYCLE_TIME_ZONE_NEEDS_SCHEDULE.to_rule())]
pub struct RecycleSpec {
    /// Replace pods older than this, e.g. "24h" or "7d".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<DurationString>,

    /// Replace a pod once its worker has completed this many jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_jobs: Option<i64>,

    /// Replace all pods on this schedule: standard 5-field cron syntax
    /// "MIN HOUR DOM MONTH DOW" (lists, ranges, steps, JAN-DEC, SUN-SAT) or
    /// one of @hourly, @daily, @midnight, @weekly, @monthly, @yearly,
    /// @annually. Example: "0 3 * * *" (every day at 03:00).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128), pattern(CRON_PATTERN))]
    pub schedule: Option<String>,

    /// IANA time zone for schedule, e.g. "Europe/Berlin". Default: UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), pattern(TIME_ZONE_PATTERN))]
    pub time_zone: Option<String>,

    /// How many pods of one function may be replaced at the same time. A
    /// replacement pod is started before the old pod is drained.
    #[serde(default = "default_one")]
    #[schemars(range(min = 1))]
    pub max_unavailable: i32,
}

impl Default for RecycleSpec {
    /// No trigger set (not valid on its own) and `maxUnavailable: 1`.
    fn default() -> Self {
        Self { max_age: None, max_jobs: None, schedule: None, time_zone: None, max_unavailable: 1 }
    }
}

/// One-word summary of the pool's state: Pending, Running, Scaling,
/// Degraded, Draining or Drained (the conditions have the details).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum WorkerPoolPhase {
    /// Not reconciled yet.
    Pending,
    /// Not paused, not degraded, no function scaling.
    Running,
    /// At least one function is being scaled.
    Scaling,
    /// The Degraded condition is True.
    Degraded,
    /// Paused; busy workers are finishing.
    Draining,
    /// Paused; no worker pods left.
    Drained,
}

/// Observed state of a WorkerPool, written by the operator.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::common::reflow_descriptions)]
pub struct WorkerPoolStatus {
    /// The metadata.generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Current conditions: Ready, Degraded, Progressing, Scaling,
    /// BrokerUnavailable, Draining and Drained.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// Per-function state, in the order of spec.functions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["name".into()]))]
    pub functions: Vec<FunctionStatus>,

    /// Worker pods across all functions.
    #[serde(default)]
    pub replicas: i32,

    /// Ready worker pods across all functions.
    #[serde(default)]
    pub ready_replicas: i32,

    /// Available worker pods across all functions.
    #[serde(default)]
    pub available_replicas: i32,

    /// Replicas wanted across all functions.
    #[serde(default)]
    pub desired_replicas: i32,

    /// Functions whose phase is Ready or Idle, of all, e.g. "1/2".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_functions: Option<String>,

    /// Jobs waiting in the broker across all functions.
    #[serde(default)]
    pub queued: i64,

    /// Jobs being worked on across all functions.
    #[serde(default)]
    pub running: i64,

    /// When pods were last replaced because of spec.recycle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_recycle_time: Option<Time>,

    /// One-word summary: Pending, Running, Scaling, Degraded, Draining or
    /// Drained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<WorkerPoolPhase>,

    /// Human-readable detail for the phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One-word summary of one function's state (the pool's conditions have the
/// details). Computed every reconcile; the first that applies of Conflict,
/// Degraded, Draining, Scaling, Idle, Ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum FunctionPhase {
    /// No replicas wanted, no pods, nothing queued.
    Idle,
    /// Replicas are changing, pods are starting, not ready or terminating,
    /// pods are being recycled, or a raise waits for the pool cap.
    // Statuses written before the phases were renamed still read.
    #[serde(alias = "WaitingForCap", alias = "Recycling")]
    Scaling,
    /// All desired replicas are available.
    #[serde(alias = "Running")]
    Ready,
    /// Some of its pods crash-loop, were OOM-killed or cannot pull their
    /// image, or the broker is unreachable (its queue is unknown).
    Degraded,
    /// Busy workers are being drained for a scale-in, a recycle or a pause.
    Draining,
    /// Another pool owns the function name (see the pool's `Conflict`
    /// condition and `owner`): no replicas here.
    Conflict,
}

impl FunctionPhase {
    /// Every phase, in declaration order.
    pub const ALL: [FunctionPhase; 6] = [
        FunctionPhase::Idle,
        FunctionPhase::Scaling,
        FunctionPhase::Ready,
        FunctionPhase::Degraded,
        FunctionPhase::Draining,
        FunctionPhase::Conflict,
    ];

    /// The phase as written in the status (also the `Progressing` condition's reason).
    pub fn as_str(self) -> &'static str {
        match self {
            FunctionPhase::Idle => "Idle",
            FunctionPhase::Scaling => "Scaling",
            FunctionPhase::Ready => "Ready",
            FunctionPhase::Degraded => "Degraded",
            FunctionPhase::Draining => "Draining",
            FunctionPhase::Conflict => "Conflict",
        }
    }

    /// Whether a function in this phase has what it wants (counts for the `Ready` condition).
    pub fn is_ready(self) -> bool {
        matches!(self, FunctionPhase::Idle | FunctionPhase::Ready)
    }

    /// Whether a function in this phase is on its way somewhere (the `Progressing` condition).
    pub fn is_progressing(self) -> bool {
        matches!(self, FunctionPhase::Scaling | FunctionPhase::Draining)
    }
}

/// Observed state of one function.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FunctionStatus {
    /// Function name (matches spec.functions[].name).
    pub name: String,

    /// Name of the Deployment running this function's workers.
    #[serde(default)]
    pub deployment: String,

    /// One-word summary: Idle, Scaling, Ready, Degraded, Draining or
    /// Conflict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<FunctionPhase>,

    /// In phase Conflict: the pool (namespace/name) that owns the function
    /// name and serves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,

    /// Worker pods (Deployment status.replicas).
    #[serde(default)]
    pub replicas: i32,

    /// Ready worker pods (Deployment status.readyReplicas).
    #[serde(default)]
    pub ready_replicas: i32,

    /// Available worker pods (Deployment status.availableReplicas).
    #[serde(default)]
    pub available_replicas: i32,

    /// Replicas the Deployment is set to now (Deployment spec.replicas).
    #[serde(default)]
    pub current_replicas: i32,

    /// Replica count the operator is aiming for (from the queue, within
    /// the function's bounds and the pool cap; 0 while paused).
    #[serde(default)]
    pub desired_replicas: i32,

    /// Connected workers currently running a job.
    #[serde(default)]
    pub busy_workers: i32,

    /// Connected workers waiting for a job.
    #[serde(default)]
    pub idle_workers: i32,

    /// Pods of this function in trouble (crash loop, OOM kills, image pull).
    #[serde(default)]
    pub crash_looping: i32,

    /// Jobs waiting in the broker.
    #[serde(default)]
    pub queued: i64,

    /// Jobs being worked on.
    #[serde(default)]
    pub running: i64,

    /// True while some brokers do not answer: queued, running and the
    /// worker counts come from the others only, and the function is not
    /// scaled in.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,

    /// When the replica count was last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,

    /// Why the replica count was last changed, e.g. "queue depth 12 > 4 workers".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_reason: Option<String>,
}

impl FunctionSpec {
    /// A function with the default settings (0..=10 replicas, one job per worker).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            min_replicas: 0,
            max_replicas: default_max_replicas(),
            target_jobs_per_worker: 1,
            activation_threshold: 0,
            timeout: None,
            template: None,
            retries: None,
        }
    }

    /// The `timeout` as a [`Duration`], if set and valid.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout.as_ref().and_then(|t| t.to_duration().ok())
    }

    fn check(&self, c: &mut Collector, field: &str) {
        c.function_name(format!("{field}.name"), &self.name);
        c.range(format!("{field}.minReplicas"), self.min_replicas.into(), Some(0), None);
        c.range(format!("{field}.maxReplicas"), self.max_replicas.into(), Some(1), None);
        c.range(format!("{field}.targetJobsPerWorker"), self.target_jobs_per_worker.into(), Some(1), None);
        c.range(format!("{field}.activationThreshold"), self.activation_threshold.into(), Some(0), None);
        c.rule(self.min_replicas <= self.max_replicas, field, rules::FUNCTION_MIN_MAX.message);
        if let Some(t) = &self.timeout {
            c.duration(format!("{field}.timeout"), t, true);
        }
        if let Some(r) = &self.retries {
            r.check(c, &format!("{field}.retries"));
        }
    }
}

impl ScalingRules {
    fn check(&self, c: &mut Collector, field: &str) {
        if let Some(w) = &self.stabilization_window {
            c.duration(format!("{field}.stabilizationWindow"), w, false);
        }
        c.items(&format!("{field}.policies"), self.policies.len(), 0, MAX_SCALING_POLICIES);
        for (i, p) in self.policies.iter().enumerate() {
            let pf = format!("{field}.policies[{i}]");
            c.range(format!("{pf}.value"), p.value.into(), Some(1), None);
            c.duration(format!("{pf}.period"), &p.period, true);
        }
    }
}

impl WorkerPoolSpec {
    /// A spec serving `functions` with the given default pod template and
    /// default settings otherwise.
    pub fn new(template: PodTemplateSpec, functions: Vec<FunctionSpec>) -> Self {
        Self {
            template: Some(template),
            functions,
            max_replicas: None,
            scaling: ScalingSpec::default(),
            recycle: None,
            paused: false,
            crash_loop_limit: None,
            drain_hook: true,
        }
    }

    /// Check the spec against every rule of the CRD schema (ranges, lengths,
    /// patterns and CEL rules), plus `backoff.initial <= backoff.max` and
    /// non-zero poll interval / policy periods / timeouts. Returns the first
    /// violation; see [`WorkerPoolSpec::validation_errors`] for all of them.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut c = Collector::default();
        self.check(&mut c);
        c.finish()
    }

    /// Every violation found by [`WorkerPoolSpec::validate`].
    pub fn validation_errors(&self) -> Vec<ValidationError> {
        let mut c = Collector::default();
        self.check(&mut c);
        c.errors
    }

    fn check(&self, c: &mut Collector) {
        c.items("spec.functions", self.functions.len(), 1, MAX_FUNCTIONS);
        for (i, f) in self.functions.iter().enumerate() {
            f.check(c, &format!("spec.functions[{i}]"));
        }
        let unique =
            self.functions.iter().enumerate().all(|(i, f)| self.functions[..i].iter().all(|g| g.name != f.name));
        c.rule(unique, "spec.functions", rules::FUNCTION_NAMES_UNIQUE.message);
        if let Some(max) = self.max_replicas {
            c.range("spec.maxReplicas", max.into(), Some(0), None);
        }
        // A negative cap is already reported by the range check above.
        if let Some(max) = self.max_replicas.filter(|m| *m >= 0) {
            let mins: i64 = self.functions.iter().map(|f| i64::from(f.min_replicas)).sum();
            c.rule(mins <= i64::from(max), "spec", rules::POOL_MIN_REPLICAS_WITHIN_MAX.message);
        }
        c.rule(
            self.template.is_some() || self.functions.iter().all(|f| f.template.is_some()),
            "spec",
            rules::POOL_TEMPLATE_REQUIRED.message,
        );

        let s = &self.scaling;
        c.duration("spec.scaling.pollInterval", &s.poll_interval, true);
        c.duration("spec.scaling.cooldown", &s.cooldown, false);
        c.duration("spec.scaling.drainTimeout", &s.drain_timeout, false);
        if let Some(r) = &s.scale_up {
            r.check(c, "spec.scaling.scaleUp");
        }
        if let Some(r) = &s.scale_down {
            r.check(c, "spec.scaling.scaleDown");
        }

        if let Some(r) = &self.recycle {
            if let Some(a) = &r.max_age {
                c.duration("spec.recycle.maxAge", a, true);
            }
            if let Some(n) = r.max_jobs {
                c.range("spec.recycle.maxJobs", n, Some(1), None);
            }
            if let Some(s) = &r.schedule
                && c.max_len("spec.recycle.schedule", s, crate::cron::CRON_MAX_LEN)
            {
                c.format(
                    crate::cron::is_valid_cron(s),
                    "spec.recycle.schedule",
                    "cron schedule",
                    s,
                    "expected 5 fields \"MIN HOUR DOM MONTH DOW\" or a macro such as @daily",
                );
            }
            if let Some(tz) = &r.time_zone {
                c.format(
                    crate::cron::is_valid_time_zone(tz),
                    "spec.recycle.timeZone",
                    "time zone",
                    tz,
                    "expected an IANA time zone name such as \"Europe/Berlin\"",
                );
            }
            c.range("spec.recycle.maxUnavailable", r.max_unavailable.into(), Some(1), None);
            c.rule(
                r.max_age.is_some() || r.max_jobs.is_some() || r.schedule.is_some(),
                "spec.recycle",
                rules::RECYCLE_HAS_TRIGGER.message,
            );
            c.rule(
                r.time_zone.is_none() || r.schedule.is_some(),
                "spec.recycle",
                rules::RECYCLE_TIME_ZONE_NEEDS_SCHEDULE.message,
            );
        }

        if let Some(n) = self.crash_loop_limit {
            c.range("spec.crashLoopLimit", n.into(), Some(0), None);
        }
    }

    /// Look up a function by name.
    pub fn function(&self, name: &str) -> Option<&FunctionSpec> {
        self.functions.iter().find(|f| f.name == name)
    }

    /// The pod template for `function`: its own template, else spec.template.
    pub fn pod_template<'a>(&'a self, function: &'a FunctionSpec) -> Option<&'a PodTemplateSpec> {
        function.template.as_ref().or(self.template.as_ref())
    }
}

impl WorkerPool {
    /// Name of the Deployment for `function` of this pool
    /// (see [`deployment_name`](crate::deployment_name)).
    pub fn deployment_name(&self, function: &str) -> String {
        crate::names::deployment_name(&self.name_any(), function)
    }

    /// Status of `function`, if the operator has recorded one.
    pub fn function_status(&self, function: &str) -> Option<&FunctionStatus> {
        self.status.as_ref()?.functions.iter().find(|f| f.name == function)
    }
}

impl WorkerPoolStatus {
    /// Recompute the pool-wide totals (replicas, readyReplicas,
    /// availableReplicas, desiredReplicas, readyFunctions, queued, running)
    /// from `functions`.
    pub fn recompute_totals(&mut self) {
        self.replicas = self.functions.iter().map(|f| f.replicas).sum();
        self.ready_replicas = self.functions.iter().map(|f| f.ready_replicas).sum();
        self.available_replicas = self.functions.iter().map(|f| f.available_replicas).sum();
        self.desired_replicas = self.functions.iter().map(|f| f.desired_replicas).sum();
        let ready = self.functions.iter().filter(|f| f.phase.is_some_and(FunctionPhase::is_ready)).count();
        self.ready_functions = Some(format!("{ready}/{}", self.functions.len()));
        self.queued = self.functions.iter().map(|f| f.queued).sum();
        self.running = self.functions.iter().map(|f| f.running).sum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(select: SelectPolicy, policies: Vec<(ScalingPolicyType, i32, &str)>) -> ScalingRules {
        ScalingRules {
            stabilization_window: None,
            policies: policies
                .into_iter()
                .map(|(type_, value, period)| ScalingPolicy { type_, value, period: period.into() })
                .collect(),
            select_policy: select,
        }
    }

    #[test]
    fn allowed_change_policies() {
        use ScalingPolicyType::{Percent, Pods};
        let none = |_| 0;
        assert_eq!(ScalingRules::default_scale_up().allowed_change(5, none), None);
        let r = rules(SelectPolicy::Max, vec![(Pods, 4, "15s"), (Percent, 100, "15s")]);
        assert_eq!(r.allowed_change(2, none), Some(4));
        assert_eq!(r.allowed_change(10, none), Some(10));
        assert_eq!(r.allowed_change(0, none), Some(4));
        let r = rules(SelectPolicy::Min, vec![(Pods, 4, "15s"), (Percent, 100, "15s")]);
        assert_eq!(r.allowed_change(2, none), Some(2));
        // Percent always allows at least one pod, so zero can grow.
        assert_eq!(r.allowed_change(0, none), Some(1));
        // Percent rounds up.
        let r = rules(SelectPolicy::Max, vec![(Percent, 10, "1m")]);
        assert_eq!(r.allowed_change(11, none), Some(2));
        // Earlier changes within the period use up the budget.
        let r = rules(SelectPolicy::Max, vec![(Pods, 4, "15s"), (Pods, 10, "1m")]);
        let changed = |period: Duration| if period.as_secs() == 15 { 4 } else { 6 };
        assert_eq!(r.allowed_change(3, changed), Some(4));
        let changed = |period: Duration| if period.as_secs() == 15 { 1 } else { 9 };
        assert_eq!(r.allowed_change(3, changed), Some(3));
        let r = rules(SelectPolicy::Disabled, vec![(Pods, 4, "15s")]);
        assert_eq!(r.allowed_change(3, none), Some(0));
    }

    #[test]
    fn function_phase_names_are_their_serialized_form() {
        for phase in FunctionPhase::ALL {
            assert_eq!(serde_json::to_value(phase).expect("json"), serde_json::json!(phase.as_str()));
        }
    }

    #[test]
    fn function_phases_written_before_the_rename_still_read() {
        let read = |s: &str| serde_json::from_value::<FunctionPhase>(serde_json::json!(s)).expect(s);
        assert_eq!(read("Running"), FunctionPhase::Ready);
        assert_eq!(read("WaitingForCap"), FunctionPhase::Scaling);
        assert_eq!(read("Recycling"), FunctionPhase::Scaling);
        assert_eq!(serde_json::to_value(read("Running")).expect("json"), serde_json::json!("Ready"));
    }

    #[test]
    fn totals() {
        let mut s = WorkerPoolStatus {
            functions: vec![
                FunctionStatus {
                    name: "a".into(),
                    replicas: 2,
                    ready_replicas: 1,
                    queued: 5,
                    running: 2,
                    ..Default::default()
                },
                FunctionStatus {
                    name: "b".into(),
                    replicas: 3,
                    ready_replicas: 3,
                    queued: 1,
                    running: 3,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        s.recompute_totals();
        assert_eq!((s.replicas, s.ready_replicas, s.queued, s.running), (5, 4, 6, 5));
    }

    #[test]
    fn scaling_durations_fall_back_to_defaults() {
        let s = ScalingSpec {
            poll_interval: "0s".into(),
            cooldown: "x".into(),
            drain_timeout: "1m".into(),
            ..ScalingSpec::default()
        };
        assert_eq!(s.poll_interval(), Duration::from_secs(5));
        assert_eq!(s.cooldown(), Duration::from_secs(60));
        assert_eq!(s.drain_timeout(), Duration::from_secs(60));
    }

    #[test]
    fn deployment_names_and_lookup() {
        let pool = WorkerPool::new("demo", WorkerPoolSpec::new(Default::default(), vec![FunctionSpec::new("echo")]));
        assert_eq!(pool.deployment_name("echo"), "demo-echo");
        assert!(pool.spec.function("echo").is_some());
        assert!(pool.spec.function("nope").is_none());
        assert!(pool.function_status("echo").is_none());
    }
}
