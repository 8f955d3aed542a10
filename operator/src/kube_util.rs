//! Kubernetes helpers both controllers use: the field manager, the status patch, the event
//! publisher and pod readiness. No decisions here; the controllers decide what to write.

use std::fmt::Debug;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

/// Field manager of every server-side apply (objects, status and events).
pub const FIELD_MANAGER: &str = "gearfleet-operator";

/// Writes `status` as the whole status of the object `name` with server-side apply (forced, as
/// [`FIELD_MANAGER`]).
pub async fn apply_status<K>(api: &Api<K>, name: &str, status: &impl Serialize) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let patch = json!({"apiVersion": K::api_version(&()), "kind": K::kind(&()), "status": status});
    api.patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await?;
    Ok(())
}

/// Whether the pod's `Ready` condition is true.
pub fn is_pod_ready(pod: &Pod) -> bool {
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions.is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Whether the pod is being deleted (it has a deletion timestamp).
pub fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// Publishes Events about the operator's objects.
pub struct EventPublisher {
    client: Client,
    /// Shared by every aggregated event, so its repeats fold into one series.
    aggregating: Recorder,
}

impl EventPublisher {
    /// A publisher reporting as [`FIELD_MANAGER`].
    pub fn new(client: Client) -> Self {
        let aggregating = Recorder::new(client.clone(), FIELD_MANAGER.into());
        Self { client, aggregating }
    }

    /// Publishes an Event about `object`. Repeats of an aggregated event (same reason and action)
    /// become one Event with a count, keeping the first note; a non-aggregated event is published
    /// through a fresh recorder, so each one keeps its own note (e.g. different replica numbers).
    /// A failure is logged, never returned: an Event is not worth failing a reconcile for.
    pub async fn publish<K>(
        &self,
        object: &K,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
        aggregate: bool,
    ) where
        K: Resource<DynamicType = ()>,
    {
        let event =
            Event { type_, reason: reason.to_string(), note: Some(note), action: action.into(), secondary: None };
        let fresh;
        let recorder = if aggregate {
            &self.aggregating
        } else {
            fresh = Recorder::new(self.client.clone(), FIELD_MANAGER.into());
            &fresh
        };
        if let Err(e) = recorder.publish(&event, &object.object_ref(&())).await {
            tracing::warn!(error = %e, kind = %K::kind(&()), name = %object.name_any(), "could not publish event");
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};

    use super::*;

    fn pod_with(conditions: &[(&str, &str)]) -> Pod {
        let conditions = conditions
            .iter()
            .map(|(t, s)| PodCondition { type_: (*t).into(), status: (*s).into(), ..Default::default() })
            .collect();
        Pod { status: Some(PodStatus { conditions: Some(conditions), ..Default::default() }), ..Default::default() }
    }

    #[test]
    fn a_pod_is_ready_only_with_ready_true() {
        assert!(is_pod_ready(&pod_with(&[("PodScheduled", "True"), ("Ready", "True")])));
        assert!(!is_pod_ready(&pod_with(&[("Ready", "False")])));
        assert!(!is_pod_ready(&pod_with(&[("ContainersReady", "True")])));
        assert!(!is_pod_ready(&Pod::default()));
    }
}
