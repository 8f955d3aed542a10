//! The drain mark on a worker pod (pure): when and why the operator drained the pod's worker in the
//! broker, kept in the annotations [`ANNOTATION_DRAIN_STARTED`] and [`ANNOTATION_DRAIN_REASON`].
//!
//! Whether a worker is draining is the broker's to say (`fleet workers` reports it per
//! connection); the mark only says since when and why, so drain timeouts survive an operator
//! restart and a drain without a mark (or whose reason is gone) can be taken back.

use std::collections::BTreeMap;
use std::time::Duration;

use gearfleet_crd::{ANNOTATION_DRAIN_REASON, ANNOTATION_DRAIN_STARTED};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

/// Why a worker was drained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainReason {
    /// Its pod is a victim of a scale-in (fenced before the replicas are lowered, busy or not).
    ScaleIn,
    /// Its pod is to be replaced (recycling) and holds a job.
    Recycle,
}

impl DrainReason {
    /// The value of [`ANNOTATION_DRAIN_REASON`].
    pub fn as_str(self) -> &'static str {
        match self {
            DrainReason::ScaleIn => "scale-in",
            DrainReason::Recycle => "recycle",
        }
    }

    fn parse(value: &str) -> Option<Self> {
        match value {
            "scale-in" => Some(DrainReason::ScaleIn),
            "recycle" => Some(DrainReason::Recycle),
            _ => None,
        }
    }
}

/// A pod's drain mark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainMark {
    /// Why.
    pub reason: DrainReason,
    /// Since when.
    pub started: Timestamp,
}

impl DrainMark {
    /// The mark on `pod`, if it carries a valid one.
    pub fn of(pod: &Pod) -> Option<DrainMark> {
        let annotations = pod.annotations();
        let started = annotations.get(ANNOTATION_DRAIN_STARTED)?.parse().ok()?;
        let reason = DrainReason::parse(annotations.get(ANNOTATION_DRAIN_REASON)?)?;
        Some(DrainMark { reason, started })
    }

    /// How long the drain has lasted at `now`.
    pub fn age(&self, now: Timestamp) -> Duration {
        elapsed(self.started, now)
    }

    /// The annotations that record this mark (a merge patch).
    pub fn annotations(&self) -> BTreeMap<String, Option<String>> {
        BTreeMap::from([
            (ANNOTATION_DRAIN_STARTED.to_string(), Some(self.started.to_string())),
            (ANNOTATION_DRAIN_REASON.to_string(), Some(self.reason.as_str().to_string())),
        ])
    }
}

/// Time from `start` to `now`; zero if `start` is later (clock skew).
pub fn elapsed(start: Timestamp, now: Timestamp) -> Duration {
    if now <= start { Duration::ZERO } else { now.duration_since(start).unsigned_abs() }
}

/// Whether `pod` carries either mark annotation (valid or not).
pub fn has_mark_annotations(pod: &Pod) -> bool {
    let annotations = pod.annotations();
    annotations.contains_key(ANNOTATION_DRAIN_STARTED) || annotations.contains_key(ANNOTATION_DRAIN_REASON)
}

/// The merge patch that removes the mark.
pub fn clear_mark() -> BTreeMap<String, Option<String>> {
    BTreeMap::from([(ANNOTATION_DRAIN_STARTED.to_string(), None), (ANNOTATION_DRAIN_REASON.to_string(), None)])
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn pod(annotations: &[(&str, &str)]) -> Pod {
        let annotations = annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Pod { metadata: ObjectMeta { annotations: Some(annotations), ..Default::default() }, ..Default::default() }
    }

    #[test]
    fn a_mark_round_trips_through_its_annotations() {
        let started: Timestamp = "2026-03-01T10:00:00Z".parse().expect("time");
        let mark = DrainMark { reason: DrainReason::Recycle, started };
        let annotations: Vec<(String, String)> =
            mark.annotations().into_iter().map(|(k, v)| (k, v.expect("set"))).collect();
        let refs: Vec<(&str, &str)> = annotations.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let marked = pod(&refs);
        assert_eq!(DrainMark::of(&marked), Some(mark));
        assert!(has_mark_annotations(&marked));
        assert_eq!(mark.age(started + jiff::SignedDuration::from_secs(90)), Duration::from_secs(90));
        assert_eq!(mark.age(started - jiff::SignedDuration::from_secs(5)), Duration::ZERO, "clock skew");
    }

    #[test]
    fn invalid_or_partial_marks_are_no_marks() {
        let t = "2026-03-01T10:00:00Z";
        assert_eq!(DrainMark::of(&pod(&[(ANNOTATION_DRAIN_STARTED, t)])), None);
        assert_eq!(
            DrainMark::of(&pod(&[(ANNOTATION_DRAIN_STARTED, "yesterday"), (ANNOTATION_DRAIN_REASON, "recycle")])),
            None
        );
        assert_eq!(DrainMark::of(&pod(&[(ANNOTATION_DRAIN_STARTED, t), (ANNOTATION_DRAIN_REASON, "bored")])), None);
        assert!(has_mark_annotations(&pod(&[(ANNOTATION_DRAIN_REASON, "bored")])));
        assert!(!has_mark_annotations(&pod(&[])));
        assert!(clear_mark().values().all(Option::is_none));
    }
}
