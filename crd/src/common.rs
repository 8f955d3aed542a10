//! Types and helpers shared by both resources.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use crate::duration::DurationString;
use crate::validation::Collector;

/// `status` value of a condition that holds.
pub const CONDITION_TRUE: &str = "True";
/// `status` value of a condition that does not hold.
pub const CONDITION_FALSE: &str = "False";
/// `status` value of a condition whose state is not known.
pub const CONDITION_UNKNOWN: &str = "Unknown";

/// Maximum number of retries a [`RetryPolicy`] may allow.
pub const RETRY_LIMIT_MAX: i32 = 100;

/// Retry policy for failed jobs.
///
/// A job attempt fails when the worker reports failure (`WORK_FAIL` or
/// `WORK_EXCEPTION`), when it exceeds its timeout, or when the worker
/// disconnects while running it. Failed attempts are retried up to `limit`
/// times, waiting `backoff.initial` before the first retry and doubling the
/// wait after every further failure, up to `backoff.max`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Number of retries after the first attempt (0-100). 0 disables retries,
    /// so a job is attempted at most `limit + 1` times.
    #[serde(default)]
    #[schemars(range(min = 0, max = 100))]
    pub limit: i32,

    /// Delay between attempts.
    #[serde(default)]
    pub backoff: Backoff,
}

/// Exponential back-off between retries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Backoff {
    /// Delay before the first retry, e.g. "1s" or "500ms". Doubles after
    /// every further failed attempt. Must not exceed `max`.
    #[serde(default = "default_backoff_initial")]
    pub initial: DurationString,

    /// Upper bound for the delay between two attempts, e.g. "5m".
    #[serde(default = "default_backoff_max")]
    pub max: DurationString,
}

fn default_backoff_initial() -> DurationString {
    "1s".into()
}

fn default_backoff_max() -> DurationString {
    "5m".into()
}

impl Default for Backoff {
    fn default() -> Self {
        Self { initial: default_backoff_initial(), max: default_backoff_max() }
    }
}

impl Backoff {
    /// Delay before retry number `retry` (1-based: `retry = 1` is the first
    /// retry). Returns `None` if either duration is invalid.
    pub fn delay(&self, retry: u32) -> Option<std::time::Duration> {
        let initial = self.initial.to_duration().ok()?;
        let max = self.max.to_duration().ok()?;
        let factor = 2u32.checked_pow(retry.saturating_sub(1)).unwrap_or(u32::MAX);
        Some(initial.checked_mul(factor).unwrap_or(max).min(max))
    }
}

impl RetryPolicy {
    pub(crate) fn check(&self, c: &mut Collector, field: &str) {
        c.range(format!("{field}.limit"), self.limit.into(), Some(0), Some(RETRY_LIMIT_MAX.into()));
        let initial = c.duration(format!("{field}.backoff.initial"), &self.backoff.initial, false);
        let max = c.duration(format!("{field}.backoff.max"), &self.backoff.max, false);
        if let (Some(initial), Some(max)) = (initial, max) {
            c.rule(initial <= max, format!("{field}.backoff"), crate::rules::BACKOFF_ORDER_MESSAGE);
        }
    }
}

/// Reference to one key of a ConfigMap or Secret in the object's namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyRef {
    /// Name of the ConfigMap or Secret (in the same namespace).
    #[schemars(length(min = 1, max = 253), pattern(crate::names::DNS1123_SUBDOMAIN_PATTERN))]
    pub name: String,

    /// Key within the ConfigMap's `data`/`binaryData` or the Secret's `data`.
    #[schemars(length(min = 1, max = 253), pattern(crate::names::CONFIG_KEY_PATTERN))]
    pub key: String,
}

impl KeyRef {
    /// Create a reference.
    pub fn new(name: impl Into<String>, key: impl Into<String>) -> Self {
        Self { name: name.into(), key: key.into() }
    }

    pub(crate) fn check(&self, c: &mut Collector, field: &str) {
        c.format(
            crate::names::is_dns1123_subdomain(&self.name),
            format!("{field}.name"),
            "object name",
            &self.name,
            "must be a DNS-1123 subdomain (lower case letters, digits, '-' and '.')",
        );
        c.format(
            crate::names::is_valid_config_key(&self.key),
            format!("{field}.key"),
            "key",
            &self.key,
            "must be 1-253 characters of [-._a-zA-Z0-9]",
        );
    }
}

/// Schema transform for embedded Kubernetes types (pod templates): removes
/// every `description` below the field itself.
///
/// The full `PodTemplateSpec` schema with descriptions is about 330 KB of JSON;
/// two copies would push the WorkerPool CRD past the 256 KiB limit of
/// `kubectl apply`'s last-applied annotation. The structure and validation
/// are kept, only the nested documentation is dropped (it is the standard
/// Pod documentation: `kubectl explain pod.spec`).
pub fn strip_nested_descriptions(schema: &mut schemars::Schema) {
    if let Some(obj) = schema.as_object_mut() {
        for (key, value) in obj.iter_mut() {
            if key != "description" {
                strip_descriptions(value);
            }
        }
    }
}

fn strip_descriptions(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(obj) => {
            // A property *named* "description" has an object (schema) value,
            // so only string-valued keys are documentation.
            if obj.get("description").is_some_and(|d| d.is_string()) {
                obj.remove("description");
            }
            obj.values_mut().for_each(strip_descriptions);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_descriptions),
        _ => {}
    }
}

/// Schema transform that turns the line-wrapped doc comments of this crate
/// into flowing text: single line breaks become spaces, blank lines
/// (paragraph breaks) are kept. Applied to every top-level spec and status
/// type, so `kubectl explain` can wrap descriptions to the terminal width.
pub fn reflow_descriptions(schema: &mut schemars::Schema) {
    if let Some(obj) = schema.as_object_mut() {
        obj.values_mut().for_each(reflow_value);
        reflow_own(obj);
    }
}

fn reflow_own(obj: &mut serde_json::Map<String, serde_json::Value>) {
    if let Some(serde_json::Value::String(d)) = obj.get_mut("description") {
        *d = reflow(d);
    }
}

fn reflow_value(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(obj) => {
            reflow_own(obj);
            obj.values_mut().for_each(reflow_value);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(reflow_value),
        _ => {}
    }
}

fn reflow(text: &str) -> String {
    text.split("\n\n")
        .map(|para| para.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// Find the condition of type `type_`.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of type `type_` exists and has status `True`.
pub fn is_condition_true(conditions: &[Condition], type_: &str) -> bool {
    find_condition(conditions, type_).is_some_and(|c| c.status == CONDITION_TRUE)
}

/// Build a condition. `status` maps to `"True"` / `"False"`.
pub fn new_condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: Time,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if status { CONDITION_TRUE } else { CONDITION_FALSE }.to_owned(),
        reason: reason.to_owned(),
        message: message.into(),
        observed_generation,
        last_transition_time: now,
    }
}

/// Insert or update a condition, keeping the list sorted by insertion.
///
/// If a condition of the same type exists and its `status` is unchanged, its
/// `lastTransitionTime` is kept (only reason, message and observed generation
/// are updated). Returns `true` if anything changed.
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(existing) => {
            if existing.status == new.status {
                new.last_transition_time = existing.last_transition_time.clone();
            }
            if *existing == new {
                false
            } else {
                *existing = new;
                true
            }
        }
        None => {
            conditions.push(new);
            true
        }
    }
}

/// Remove the condition of type `type_`. Returns `true` if one was removed.
pub fn remove_condition(conditions: &mut Vec<Condition>, type_: &str) -> bool {
    let before = conditions.len();
    conditions.retain(|c| c.type_ != type_);
    conditions.len() != before
}

/// Cut `s` to at most `max_bytes` bytes without splitting a UTF-8 character.
pub fn truncate_utf8(s: &str, max_bytes: usize) -> &str {
    if s.len() <= max_bytes {
        return s;
    }
    let mut end = max_bytes;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn backoff_delay_doubles_and_caps() {
        let b = Backoff { initial: "1s".into(), max: "10s".into() };
        assert_eq!(b.delay(1), Some(Duration::from_secs(1)));
        assert_eq!(b.delay(2), Some(Duration::from_secs(2)));
        assert_eq!(b.delay(4), Some(Duration::from_secs(8)));
        assert_eq!(b.delay(5), Some(Duration::from_secs(10)));
        assert_eq!(b.delay(500), Some(Duration::from_secs(10)));
        assert_eq!(b.delay(0), Some(Duration::from_secs(1)));
        let bad = Backoff { initial: "x".into(), max: "1s".into() };
        assert_eq!(bad.delay(1), None);
    }

    #[test]
    fn conditions_keep_transition_time() {
        let mut conds = Vec::new();
        assert!(set_condition(&mut conds, new_condition("Ready", false, "Starting", "", Some(1), t(10))));
        assert!(!is_condition_true(&conds, "Ready"));
        // Same status, new message: time kept.
        assert!(set_condition(&mut conds, new_condition("Ready", false, "Starting", "waiting", Some(1), t(20))));
        assert_eq!(conds[0].last_transition_time, t(10));
        assert_eq!(conds[0].message, "waiting");
        // Identical: no change.
        assert!(!set_condition(&mut conds, new_condition("Ready", false, "Starting", "waiting", Some(1), t(30))));
        // Status flips: time updated.
        assert!(set_condition(&mut conds, new_condition("Ready", true, "Ready", "", Some(2), t(40))));
        assert_eq!(conds[0].last_transition_time, t(40));
        assert!(is_condition_true(&conds, "Ready"));
        assert_eq!(conds.len(), 1);
        assert!(find_condition(&conds, "Scaling").is_none());
        assert!(remove_condition(&mut conds, "Ready"));
        assert!(!remove_condition(&mut conds, "Ready"));
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate_utf8("hello", 10), "hello");
        assert_eq!(truncate_utf8("hello", 3), "hel");
        assert_eq!(truncate_utf8("héllo", 2), "h");
        assert_eq!(truncate_utf8("héllo", 3), "hé");
    }
}
