//! CEL validation rules (`x-kubernetes-validations`) embedded in the CRDs.
//!
//! Each rule is also enforced by the Rust `validate()` methods, which report
//! the same message, so tests and the operator can rely on these constants.

/// A CEL rule and the message the API server reports when it fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CelRule {
    /// The CEL expression; `self` is the object the rule is attached to.
    pub rule: &'static str,
    /// The message reported when the rule evaluates to false.
    pub message: &'static str,
}

impl CelRule {
    /// Convert into kube's rule type (used by the schema derive).
    pub fn to_rule(self) -> kube::core::Rule {
        kube::core::Rule::new(self.rule).message(self.message)
    }
}

/// On each `spec.functions[]` item.
pub const FUNCTION_MIN_MAX: CelRule =
    CelRule { rule: "self.minReplicas <= self.maxReplicas", message: "minReplicas must not exceed maxReplicas" };

/// On `spec.functions` of a WorkerPool.
pub const FUNCTION_NAMES_UNIQUE: CelRule =
    CelRule { rule: "self.all(f, self.exists_one(g, g.name == f.name))", message: "function names must be unique" };

/// On a WorkerPool `spec`.
pub const POOL_MIN_REPLICAS_WITHIN_MAX: CelRule = CelRule {
    rule: "!has(self.maxReplicas) || self.functions.map(f, f.minReplicas).sum() <= self.maxReplicas",
    message: "the sum of functions[].minReplicas must not exceed maxReplicas",
};

/// On a WorkerPool `spec`.
pub const POOL_TEMPLATE_REQUIRED: CelRule = CelRule {
    rule: "has(self.template) || self.functions.all(f, has(f.template))",
    message: "spec.template is required unless every function sets its own template",
};

/// On a WorkerPool `spec.recycle`.
pub const RECYCLE_HAS_TRIGGER: CelRule = CelRule {
    rule: "has(self.maxAge) || has(self.maxJobs) || has(self.schedule)",
    message: "recycle needs at least one of maxAge, maxJobs or schedule",
};

/// On a WorkerPool `spec.recycle`.
pub const RECYCLE_TIME_ZONE_NEEDS_SCHEDULE: CelRule =
    CelRule { rule: "!has(self.timeZone) || has(self.schedule)", message: "timeZone requires schedule" };

/// On a Job `spec`.
pub const JOB_PAYLOAD_EXCLUSIVE: CelRule = CelRule {
    rule: "!(has(self.payload) && has(self.payloadFrom))",
    message: "payload and payloadFrom are mutually exclusive",
};

/// On a Job `spec.payloadFrom`.
pub const PAYLOAD_FROM_EXACTLY_ONE: CelRule = CelRule {
    rule: "has(self.configMapKeyRef) != has(self.secretKeyRef)",
    message: "exactly one of configMapKeyRef or secretKeyRef must be set",
};

/// On a Job `spec` (a transition rule: only evaluated on update).
///
/// Every field but `suspend` (which suspends and resumes the Job, as in batch/v1). `function` is a
/// CEL reserved word, so Kubernetes' CEL names the property `__function__`.
pub const JOB_SPEC_IMMUTABLE: CelRule = CelRule {
    rule: "self.__function__ == oldSelf.__function__ \
           && (has(self.payload) ? has(oldSelf.payload) && self.payload == oldSelf.payload : !has(oldSelf.payload)) \
           && (has(self.payloadFrom) ? has(oldSelf.payloadFrom) && self.payloadFrom == oldSelf.payloadFrom : !has(oldSelf.payloadFrom)) \
           && (has(self.unique) ? has(oldSelf.unique) && self.unique == oldSelf.unique : !has(oldSelf.unique)) \
           && (has(self.priority) ? has(oldSelf.priority) && self.priority == oldSelf.priority : !has(oldSelf.priority)) \
           && (has(self.runAt) ? has(oldSelf.runAt) && self.runAt == oldSelf.runAt : !has(oldSelf.runAt)) \
           && (has(self.timeout) ? has(oldSelf.timeout) && self.timeout == oldSelf.timeout : !has(oldSelf.timeout)) \
           && (has(self.retries) ? has(oldSelf.retries) && self.retries == oldSelf.retries : !has(oldSelf.retries)) \
           && (has(self.failurePolicy) ? has(oldSelf.failurePolicy) && self.failurePolicy == oldSelf.failurePolicy : !has(oldSelf.failurePolicy)) \
           && (has(self.activeDeadlineSeconds) ? has(oldSelf.activeDeadlineSeconds) && self.activeDeadlineSeconds == oldSelf.activeDeadlineSeconds : !has(oldSelf.activeDeadlineSeconds)) \
           && (has(self.next) ? has(oldSelf.next) && self.next == oldSelf.next : !has(oldSelf.next)) \
           && (has(self.ttlSecondsAfterFinished) ? has(oldSelf.ttlSecondsAfterFinished) && self.ttlSecondsAfterFinished == oldSelf.ttlSecondsAfterFinished : !has(oldSelf.ttlSecondsAfterFinished))",
    message: "Job spec is immutable",
};

/// Every CEL rule with the JSON path (within the CRD's `openAPIV3Schema`) of
/// the schema node that carries it.
pub const ALL: &[(&str, &str, CelRule)] = &[
    ("workerpools", "spec.functions[]", FUNCTION_MIN_MAX),
    ("workerpools", "spec.functions", FUNCTION_NAMES_UNIQUE),
    ("workerpools", "spec", POOL_MIN_REPLICAS_WITHIN_MAX),
    ("workerpools", "spec", POOL_TEMPLATE_REQUIRED),
    ("workerpools", "spec.recycle", RECYCLE_HAS_TRIGGER),
    ("workerpools", "spec.recycle", RECYCLE_TIME_ZONE_NEEDS_SCHEDULE),
    ("jobs", "spec", JOB_PAYLOAD_EXCLUSIVE),
    ("jobs", "spec", JOB_SPEC_IMMUTABLE),
    ("jobs", "spec.payloadFrom", PAYLOAD_FROM_EXACTLY_ONE),
];

/// Message of the client-side-only check that `backoff.initial <= backoff.max`
/// (CEL cannot parse durations with a `d` unit, so this is not a CEL rule).
pub const BACKOFF_ORDER_MESSAGE: &str = "backoff.initial must not exceed backoff.max";
