//! The `Job` custom resource: one Gearman job (or a chain of jobs) submitted
//! through Kubernetes.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{KeyRef, RetryPolicy, truncate_utf8};
use crate::duration::DurationString;
use crate::names::FUNCTION_NAME_PATTERN;
use crate::rules;
use crate::validation::{Collector, ValidationError};

/// Maximum size of an inline `spec.payload`, in characters.
pub const PAYLOAD_MAX_LEN: usize = 256 * 1024;
/// Maximum length of `spec.unique` (gearmand's limit on unique IDs).
pub const UNIQUE_MAX_LEN: usize = 64;
/// Pattern of `spec.unique`: any characters except NUL (the Gearman argument separator).
pub const UNIQUE_PATTERN: &str = "^[^\\x00]+$";
/// Maximum number of chained functions in `spec.next`.
pub const MAX_NEXT_STEPS: usize = 16;
/// Maximum number of bytes of streamed `WORK_DATA` kept in `status.data`.
pub const DATA_MAX_BYTES: usize = 64 * 1024;
/// Maximum number of bytes of a result stored inline in `status.result`.
pub const RESULT_MAX_BYTES: usize = 256 * 1024;
/// Maximum number of warnings kept in `status.warnings` (the newest are kept).
pub const MAX_WARNINGS: usize = 32;
/// Maximum number of bytes of one warning in `status.warnings`.
pub const WARNING_MAX_BYTES: usize = 1024;
/// Key under which an oversized result is stored in the result ConfigMap.
pub const RESULT_CONFIG_MAP_KEY: &str = "result";

/// Condition types set on `Job.status.conditions`.
pub mod job_condition {
    /// The job (every step of a chain) succeeded. `kubectl wait --for=condition=Complete`.
    pub const COMPLETE: &str = "Complete";
    /// The job failed for good (retries exhausted, timeout, deadline, invalid payload, ...).
    pub const FAILED: &str = "Failed";
    /// True while `spec.suspend` holds the Job (reason JobSuspended); False (reason JobResumed)
    /// once it was resumed.
    pub const SUSPENDED: &str = "Suspended";
    /// Every condition type.
    pub const ALL: [&str; 3] = [COMPLETE, FAILED, SUSPENDED];
}

/// Job submits one Gearman job, or a chain of jobs, and records its progress
/// and result in its status.
// The repeated `type_ = ...` keys of different printcolumn(...) entries are
// not duplicates, but clippy cannot tell.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "gearfleet.dev",
    version = "v1alpha1",
    kind = "Job",
    plural = "jobs",
    shortname = "gj",
    category = "gearfleet",
    namespaced,
    status = "JobStatus",
    derive = "PartialEq",
    doc = "Job submits a Gearman job (or a chain of jobs) to the gearfleet broker and records its progress and result.",
    selectable = ".spec.function",
    selectable = ".status.phase",
    printcolumn(
        name = "Function",
        type_ = "string",
        json_path = ".spec.function",
        description = "Gearman function of the (first) job"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Pending, Suspended, Queued, Running, Succeeded or Failed"
    ),
    printcolumn(
        name = "Progress",
        type_ = "integer",
        json_path = ".status.progress.percent",
        description = "Percent complete, as reported by the worker"
    ),
    printcolumn(
        name = "Attempts",
        type_ = "integer",
        json_path = ".status.attempts",
        description = "Attempts made so far"
    ),
    printcolumn(
        name = "Step",
        type_ = "integer",
        json_path = ".status.currentStep",
        description = "Index of the current step of a chain",
        priority = 1
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::common::reflow_descriptions)]
#[x_kube(validation = rules::JOB_PAYLOAD_EXCLUSIVE.to_rule())]
#[x_kube(validation = rules::JOB_SPEC_IMMUTABLE.to_rule())]
pub struct JobSpec {
    /// Gearman function to run, e.g. "reverse". Same format as
    /// WorkerPool spec.functions[].name.
    #[schemars(length(min = 1, max = 63), pattern(FUNCTION_NAME_PATTERN))]
    pub function: String,

    /// Job payload (workload) as text, at most 256 KiB. Omit both payload
    /// and payloadFrom for an empty payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 262144))]
    pub payload: Option<String>,

    /// Read the payload from a ConfigMap or Secret key in the Job's
    /// namespace instead (for large or confidential payloads). Mutually
    /// exclusive with payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_from: Option<PayloadSource>,

    /// Gearman unique ID (1-64 characters, no NUL). Jobs of one namespace
    /// with the same function and unique ID that are queued or running at
    /// the same time are coalesced into one and share its result; the broker
    /// is given `<namespace>/<unique>`, so Jobs of other namespaces never
    /// share it. Default: derived from the Job's UID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), pattern(UNIQUE_PATTERN))]
    pub unique: Option<String>,

    /// Queue priority: High, Normal or Low. Higher-priority jobs of a
    /// function are handed to workers first.
    #[serde(default)]
    pub priority: Priority,

    /// Earliest time to submit the job (RFC 3339, e.g.
    /// "2030-01-01T00:00:00Z"). Omit to submit immediately.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<Time>,

    /// Maximum time one attempt may run, e.g. "30s" or "5m" (units ms, s, m,
    /// h, d). An attempt that takes longer fails (and may be retried).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationString>,

    /// Retry policy for failed attempts. Omit to never retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetryPolicy>,

    /// Which kinds of attempt failure are retried (within retries.limit)
    /// and which fail the Job at once. Omit to retry every kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_policy: Option<FailurePolicy>,

    /// Seconds the Job may be active, counted from status.startTime (its
    /// first submission, or its latest resume) over every attempt, retry
    /// and step. When it passes the Job fails with reason DeadlineExceeded,
    /// a still-queued attempt is removed from the broker and nothing more
    /// is submitted. Omit for no deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub active_deadline_seconds: Option<i64>,

    /// Suspend the Job: nothing is submitted while true, a still-queued
    /// attempt is removed from the broker, a running attempt finishes (its
    /// result is kept) but is not retried. Setting it back to false resumes
    /// where the Job stopped. The only field that may change after
    /// creation.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,

    /// Functions to run after this one, in order (at most 16). Each step
    /// receives the previous step's result as its payload; the Job's result
    /// is the last step's result. Every step uses the same priority,
    /// timeout and retry policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 63), pattern(FUNCTION_NAME_PATTERN)))]
    pub next: Vec<String>,

    /// Delete the Job this many seconds after it succeeded or failed. Omit
    /// to keep it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i32>,
}

/// What to do when an attempt fails, by kind of failure (in the spirit of
/// batch/v1's podFailurePolicy). The first rule naming the failure applies;
/// a failure no rule names is retried.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailurePolicy {
    /// Rules, checked in order (at most 3).
    #[serde(default)]
    #[schemars(length(max = 3))]
    pub rules: Vec<FailurePolicyRule>,
}

/// One rule of a [`FailurePolicy`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailurePolicyRule {
    /// FailJob or Retry.
    pub action: FailureAction,

    /// The kinds of failure this rule applies to (1-3 of WorkFail,
    /// WorkException, Timeout).
    #[schemars(length(min = 1, max = 3))]
    pub on_failures: Vec<AttemptFailure>,
}

/// What a [`FailurePolicyRule`] does with a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum FailureAction {
    /// Fail the Job at once, whatever retries remain.
    FailJob,
    /// Retry while spec.retries allows (what happens without a rule).
    Retry,
}

/// A kind of attempt failure; the same spelling as status.reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum AttemptFailure {
    /// The worker sent WORK_FAIL.
    WorkFail,
    /// The worker sent WORK_EXCEPTION.
    WorkException,
    /// The attempt ran past spec.timeout.
    Timeout,
}

impl AttemptFailure {
    /// The API spelling, also used as status.reason.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptFailure::WorkFail => "WorkFail",
            AttemptFailure::WorkException => "WorkException",
            AttemptFailure::Timeout => "Timeout",
        }
    }
}

impl FailurePolicy {
    /// The action for a failure of kind `kind`: the first rule naming it, else Retry.
    pub fn action(&self, kind: AttemptFailure) -> FailureAction {
        self.rules.iter().find(|r| r.on_failures.contains(&kind)).map_or(FailureAction::Retry, |r| r.action)
    }
}

/// Where to read a job payload from. Exactly one field must be set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = rules::PAYLOAD_FROM_EXACTLY_ONE.to_rule())]
pub struct PayloadSource {
    /// A key of a ConfigMap (data or binaryData) in the Job's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<KeyRef>,

    /// A key of a Secret in the Job's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<KeyRef>,
}

/// Gearman job priority. Which `SUBMIT_JOB*` packet carries it is the wire protocol's business
/// (`gearfleet_proto::Priority::submit_type`); the operator maps this API type onto that one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Priority {
    /// Run before Normal and Low jobs.
    High,
    /// The default.
    #[default]
    Normal,
    /// Run after High and Normal jobs.
    Low,
}

impl Priority {
    /// The API spelling: "High", "Normal" or "Low".
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "High",
            Priority::Normal => "Normal",
            Priority::Low => "Low",
        }
    }
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Lifecycle phase of a Job or of one step of a chain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum JobPhase {
    /// Not submitted yet (waiting for runAt, a retry back-off, or the operator).
    #[default]
    Pending,
    /// Held by spec.suspend with no attempt in flight.
    Suspended,
    /// Submitted to the broker, waiting for a worker.
    Queued,
    /// A worker is running it.
    Running,
    /// Finished successfully.
    Succeeded,
    /// Failed for good.
    Failed,
}

impl JobPhase {
    /// The API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            JobPhase::Pending => "Pending",
            JobPhase::Suspended => "Suspended",
            JobPhase::Queued => "Queued",
            JobPhase::Running => "Running",
            JobPhase::Succeeded => "Succeeded",
            JobPhase::Failed => "Failed",
        }
    }

    /// Succeeded or Failed.
    pub fn is_finished(self) -> bool {
        matches!(self, JobPhase::Succeeded | JobPhase::Failed)
    }
}

impl std::fmt::Display for JobPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Observed state of a Job, written by the operator.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::common::reflow_descriptions)]
pub struct JobStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Pending, Suspended, Queued, Running, Succeeded or Failed. For a chain
    /// this is the phase of the whole chain.
    #[serde(default)]
    pub phase: JobPhase,

    /// Complete (succeeded), Failed and Suspended, for `kubectl wait`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// Attempts made for the current step, including the running one.
    #[serde(default)]
    pub attempts: i32,

    /// Job handle assigned by the broker (JOB_CREATED) for the current attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<String>,

    /// Gearman unique ID the current attempt was submitted with
    /// (`<namespace>/<spec.unique>` or the Job's UID, then
    /// `/<step>/<attempt>` for retries and later steps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unique: Option<String>,

    /// Latest progress reported by the worker (WORK_STATUS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<JobProgress>,

    /// Warnings sent by workers (WORK_WARNING); the newest 32 are kept, each
    /// cut to 1 KiB.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(max = 1024)))]
    pub warnings: Vec<String>,

    /// Data streamed by workers (WORK_DATA), concatenated. Only the first
    /// 64 KiB are kept; dataTruncated tells whether more was dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub data: Option<String>,

    /// Whether streamed data beyond 64 KiB was dropped from data.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub data_truncated: bool,

    /// Result of the job (WORK_COMPLETE) if it is at most 256 KiB. Larger
    /// results are stored in the ConfigMap named by resultConfigMap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 262144))]
    pub result: Option<String>,

    /// Name of the ConfigMap (same namespace, key "result") that holds a
    /// result too large for status.result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_config_map: Option<String>,

    /// Machine-readable reason for the phase: the last attempt's failure
    /// (WorkFail, WorkException, Timeout), DeadlineExceeded or InvalidSpec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,

    /// Human-readable detail, e.g. the worker's exception text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,

    /// When the first attempt was submitted, or when the Job was last
    /// resumed (spec.activeDeadlineSeconds counts from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,

    /// When the Job succeeded or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,

    /// When the current attempt was submitted (its timeout counts from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_start_time: Option<Time>,

    /// When the next retry is due, while waiting for a back-off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_time: Option<Time>,

    /// Index of the step being run: 0 is spec.function, 1 is spec.next[0],
    /// and so on.
    #[serde(default)]
    pub current_step: i32,

    /// Per-step state of a chain (one entry per started step; absent for
    /// single jobs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<JobStepStatus>,
}

/// Progress of a job as reported by its worker: numerator out of denominator.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobProgress {
    /// Work done.
    #[schemars(range(min = 0))]
    pub numerator: i64,

    /// Total work.
    #[schemars(range(min = 0))]
    pub denominator: i64,

    /// numerator / denominator as a whole percentage (0-100).
    #[serde(default)]
    #[schemars(range(min = 0, max = 100))]
    pub percent: i32,
}

impl JobProgress {
    /// Progress with `percent` computed (rounded down, clamped to 0..=100; 0
    /// when the denominator is 0). Negative inputs are treated as 0.
    pub fn new(numerator: i64, denominator: i64) -> Self {
        let numerator = numerator.max(0);
        let denominator = denominator.max(0);
        let percent = if denominator == 0 {
            0
        } else {
            let p = i128::from(numerator) * 100 / i128::from(denominator);
            p.clamp(0, 100) as i32
        };
        Self { numerator, denominator, percent }
    }
}

/// State of one step of a chain.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobStepStatus {
    /// Function of this step.
    pub function: String,

    /// Phase of this step.
    #[serde(default)]
    pub phase: JobPhase,

    /// Attempts made for this step.
    #[serde(default)]
    pub attempts: i32,

    /// When the step's first attempt was submitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,

    /// When the step succeeded or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,

    /// Detail, e.g. the failure message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl JobSpec {
    /// A job for `function` with defaults (no payload, Normal priority).
    pub fn new(function: impl Into<String>) -> Self {
        Self {
            function: function.into(),
            payload: None,
            payload_from: None,
            unique: None,
            priority: Priority::Normal,
            run_at: None,
            timeout: None,
            retries: None,
            failure_policy: None,
            active_deadline_seconds: None,
            suspend: false,
            next: Vec::new(),
            ttl_seconds_after_finished: None,
        }
    }

    /// Builder-style: set an inline payload.
    pub fn with_payload(mut self, payload: impl Into<String>) -> Self {
        self.payload = Some(payload.into());
        self
    }

    /// Functions of all steps in order: `function`, then `next`.
    pub fn steps(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.function.as_str()).chain(self.next.iter().map(String::as_str))
    }

    /// Number of steps (1 + next.len()).
    pub fn step_count(&self) -> usize {
        1 + self.next.len()
    }

    /// Function of step `index` (0 = `function`).
    pub fn step_function(&self, index: usize) -> Option<&str> {
        self.steps().nth(index)
    }

    /// The retry policy in effect (`retries` or the default: no retries).
    pub fn retry_policy(&self) -> RetryPolicy {
        self.retries.clone().unwrap_or_default()
    }

    /// The action of the failure policy for a failure of kind `kind` (Retry without a policy).
    pub fn failure_action(&self, kind: AttemptFailure) -> FailureAction {
        self.failure_policy.as_ref().map_or(FailureAction::Retry, |p| p.action(kind))
    }

    /// `activeDeadlineSeconds` as a [`Duration`], if set and positive.
    pub fn active_deadline(&self) -> Option<Duration> {
        self.active_deadline_seconds.and_then(|s| u64::try_from(s).ok()).filter(|s| *s > 0).map(Duration::from_secs)
    }

    /// The `timeout` as a [`Duration`], if set and valid.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout.as_ref().and_then(|t| t.to_duration().ok())
    }

    /// Check the spec against every rule of the CRD schema (lengths, patterns
    /// and CEL rules, except immutability: see [`JobSpec::validate_update`]).
    /// Returns the first violation; see [`JobSpec::validation_errors`].
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut c = Collector::default();
        self.check(&mut c);
        c.finish()
    }

    /// Every violation found by [`JobSpec::validate`].
    pub fn validation_errors(&self) -> Vec<ValidationError> {
        let mut c = Collector::default();
        self.check(&mut c);
        c.errors
    }

    /// [`JobSpec::validate`] plus the immutability rule against the previous spec.
    pub fn validate_update(&self, old: &JobSpec) -> Result<(), ValidationError> {
        let mut c = Collector::default();
        self.check(&mut c);
        let unsuspended = |s: &JobSpec| JobSpec { suspend: false, ..s.clone() };
        c.rule(unsuspended(self) == unsuspended(old), "spec", rules::JOB_SPEC_IMMUTABLE.message);
        c.finish()
    }

    fn check(&self, c: &mut Collector) {
        c.function_name("spec.function", &self.function);
        if let Some(p) = &self.payload {
            c.max_len("spec.payload", p, PAYLOAD_MAX_LEN);
        }
        c.rule(!(self.payload.is_some() && self.payload_from.is_some()), "spec", rules::JOB_PAYLOAD_EXCLUSIVE.message);
        if let Some(src) = &self.payload_from {
            c.rule(
                src.config_map_key_ref.is_some() != src.secret_key_ref.is_some(),
                "spec.payloadFrom",
                rules::PAYLOAD_FROM_EXACTLY_ONE.message,
            );
            if let Some(r) = &src.config_map_key_ref {
                r.check(c, "spec.payloadFrom.configMapKeyRef");
            }
            if let Some(r) = &src.secret_key_ref {
                r.check(c, "spec.payloadFrom.secretKeyRef");
            }
        }
        if let Some(u) = &self.unique {
            if u.is_empty() {
                c.push(ValidationError::Empty { field: "spec.unique".into() });
            } else if c.max_len("spec.unique", u, UNIQUE_MAX_LEN) {
                c.format(!u.contains('\0'), "spec.unique", "unique ID", u, "must not contain NUL characters");
            }
        }
        if let Some(t) = &self.timeout {
            c.duration("spec.timeout", t, true);
        }
        if let Some(r) = &self.retries {
            r.check(c, "spec.retries");
        }
        if let Some(policy) = &self.failure_policy {
            c.items("spec.failurePolicy.rules", policy.rules.len(), 0, 3);
            for (i, r) in policy.rules.iter().enumerate() {
                c.items(&format!("spec.failurePolicy.rules[{i}].onFailures"), r.on_failures.len(), 1, 3);
            }
        }
        if let Some(d) = self.active_deadline_seconds {
            c.range("spec.activeDeadlineSeconds", d, Some(1), None);
        }
        c.items("spec.next", self.next.len(), 0, MAX_NEXT_STEPS);
        for (i, f) in self.next.iter().enumerate() {
            c.function_name(format!("spec.next[{i}]"), f);
        }
        if let Some(ttl) = self.ttl_seconds_after_finished {
            c.range("spec.ttlSecondsAfterFinished", ttl.into(), Some(0), None);
        }
    }
}

impl JobStatus {
    /// Append a WORK_DATA chunk to `data`, keeping at most
    /// [`DATA_MAX_BYTES`] bytes and setting `data_truncated` when anything
    /// is dropped.
    pub fn append_data(&mut self, chunk: &str) {
        let data = self.data.get_or_insert_with(String::new);
        let room = DATA_MAX_BYTES.saturating_sub(data.len());
        let kept = truncate_utf8(chunk, room);
        data.push_str(kept);
        if kept.len() < chunk.len() {
            self.data_truncated = true;
        }
    }

    /// Record a WORK_WARNING, cut to [`WARNING_MAX_BYTES`], keeping the
    /// newest [`MAX_WARNINGS`].
    pub fn push_warning(&mut self, warning: &str) {
        self.warnings.push(truncate_utf8(warning, WARNING_MAX_BYTES).to_owned());
        if self.warnings.len() > MAX_WARNINGS {
            let excess = self.warnings.len() - MAX_WARNINGS;
            self.warnings.drain(..excess);
        }
    }

    /// Whether the Job has finished (Succeeded or Failed).
    pub fn is_finished(&self) -> bool {
        self.phase.is_finished()
    }
}

/// Whether a result can be stored inline in `status.result`
/// (at most [`RESULT_MAX_BYTES`] bytes).
pub fn result_fits_inline(result: &str) -> bool {
    result.len() <= RESULT_MAX_BYTES
}

/// Name of the ConfigMap that holds the oversized result of Job `job`:
/// `<job>-result`, shortened with a hash when that would exceed 253
/// characters.
pub fn result_config_map_name(job: &str) -> String {
    let name = format!("{job}-result");
    if name.len() <= crate::names::DNS1123_SUBDOMAIN_MAX_LEN {
        return name;
    }
    // Reuse the Deployment name hashing: "<prefix>-<hash>" is at most 63
    // characters and always a valid name.
    crate::names::deployment_name(job, "result")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_default_and_spelling() {
        assert_eq!(Priority::default(), Priority::Normal);
        assert_eq!(Priority::High.to_string(), "High");
    }

    #[test]
    fn progress_percent() {
        assert_eq!(JobProgress::new(1, 4).percent, 25);
        assert_eq!(JobProgress::new(0, 0).percent, 0);
        assert_eq!(JobProgress::new(5, 4).percent, 100);
        assert_eq!(JobProgress::new(-1, 4).percent, 0);
        assert_eq!(JobProgress::new(i64::MAX, i64::MAX).percent, 100);
    }

    #[test]
    fn data_is_capped() {
        let mut s = JobStatus::default();
        s.append_data("abc");
        s.append_data("def");
        assert_eq!(s.data.as_deref(), Some("abcdef"));
        assert!(!s.data_truncated);
        s.append_data(&"x".repeat(DATA_MAX_BYTES));
        assert_eq!(s.data.as_ref().unwrap().len(), DATA_MAX_BYTES);
        assert!(s.data_truncated);
        s.append_data("more");
        assert_eq!(s.data.as_ref().unwrap().len(), DATA_MAX_BYTES);
    }

    #[test]
    fn warnings_are_capped() {
        let mut s = JobStatus::default();
        for i in 0..40 {
            s.push_warning(&format!("w{i}"));
        }
        assert_eq!(s.warnings.len(), MAX_WARNINGS);
        assert_eq!(s.warnings[0], "w8");
        assert_eq!(s.warnings.last().unwrap(), "w39");
        s.push_warning(&"y".repeat(5000));
        assert_eq!(s.warnings.last().unwrap().len(), WARNING_MAX_BYTES);
    }

    #[test]
    fn steps() {
        let mut spec = JobSpec::new("a");
        assert_eq!(spec.steps().collect::<Vec<_>>(), ["a"]);
        spec.next = vec!["b".into(), "c".into()];
        assert_eq!(spec.steps().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(spec.step_count(), 3);
        assert_eq!(spec.step_function(2), Some("c"));
        assert_eq!(spec.step_function(3), None);
    }

    #[test]
    fn result_helpers() {
        assert!(result_fits_inline(&"x".repeat(RESULT_MAX_BYTES)));
        assert!(!result_fits_inline(&"x".repeat(RESULT_MAX_BYTES + 1)));
        assert_eq!(result_config_map_name("job-1"), "job-1-result");
        let long = "j".repeat(250);
        let n = result_config_map_name(&long);
        assert!(crate::names::is_dns1123_subdomain(&n), "{n}");
        assert!(n.len() <= 63);
    }
}
