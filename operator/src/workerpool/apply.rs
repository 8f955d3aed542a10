//! Apply (I/O): carries out a [`Plan`] in this order: closing the broker connections of pods gone
//! for good; retry policies to every broker; deletion
//! costs, drain marks, drains and undrains (before any replicas are lowered); server-side apply of
//! the Deployments; deletion of the Deployments of removed functions; recycling (marks, drains,
//! evictions); the status, with server-side apply; the Events. Deployments whose replicas are
//! lowered are applied before the others, so that a pool under `spec.maxReplicas` never
//! overshoots it while replicas move between functions.
//!
//! Kubernetes errors on the pool's own objects fail the reconcile (it is retried); a broker command
//! that fails is logged and planned again by the next reconcile, since the plan is made from what
//! the broker reports.

use std::collections::BTreeMap;

use gearfleet_crd::WorkerPool;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, EvictParams, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use serde_json::json;

use super::context::{Context, PoolKey};
use super::plan::{FunctionPlan, Plan, PodAction};
use crate::error::Error;
use crate::kube_util::{FIELD_MANAGER, apply_status};

/// Carries out `plan` for `pool` (in namespace `ns`) and records what the controller must
/// remember.
pub async fn apply(ctx: &Context, pool: &WorkerPool, ns: &str, plan: Plan) -> Result<(), Error> {
    let name = pool.name_any();
    let key: PoolKey = (ns.to_string(), name.clone());
    let pools: Api<WorkerPool> = Api::namespaced(ctx.client.clone(), ns);
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let Plan {
        now,
        disconnects,
        retries,
        before_scaling,
        functions,
        delete_deployments,
        recycling,
        mut status,
        events,
        memory,
        ..
    } = plan;
    let mut memory = memory;

    for f in &functions {
        ctx.metrics.decision(&f.decision.to_string());
        ctx.metrics.set_troubled_pods(ns, &name, &f.name, f.troubled_pods);
    }

    ctx.metrics.set_partial_view(ns, &name, status.functions.iter().any(|f| f.partial));

    for action in &disconnects {
        pod_action(ctx, &pods, pool, action).await?;
    }

    for r in retries {
        match ctx.brokers.ok(&r.command).await {
            Ok(()) => {
                if let Some(fmemory) = memory.functions.get_mut(&r.function) {
                    fmemory.retries_sent = Some((r.command, now));
                }
            }
            Err(e) => {
                tracing::warn!(pool = %name, function = %r.function, error = %e, "could not set the retry policy")
            }
        }
    }

    for action in &before_scaling {
        pod_action(ctx, &pods, pool, action).await?;
    }

    let (lowered, others): (Vec<&FunctionPlan>, Vec<&FunctionPlan>) =
        functions.iter().partition(|f| f.target < f.current);
    for f in lowered.into_iter().chain(others) {
        let dep_name = f.deployment.name_any();
        deployments.patch(&dep_name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&f.deployment)).await?;
        if f.target != f.current {
            tracing::info!(pool = %name, function = %f.name, from = f.current, to = f.target, reason = %f.reason, "scaling");
        }
    }
    ctx.remember(key.clone(), memory.clone());

    for dep in &delete_deployments {
        tracing::info!(pool = %name, deployment = %dep, "deleting Deployment of a removed function");
        match deployments.delete(dep, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }

    let mut evicted = false;
    for action in &recycling {
        evicted |= pod_action(ctx, &pods, pool, action).await?;
    }
    if evicted {
        memory.last_recycle = Some(Time(now));
        ctx.remember(key, memory.clone());
    }
    if let Some(t) = &memory.last_recycle
        && status.last_recycle_time.as_ref().is_none_or(|old| old.0 < t.0)
    {
        status.last_recycle_time = Some(t.clone());
    }

    apply_status(&pools, &name, &status).await?;

    for e in events {
        if e.type_ == EventType::Warning {
            tracing::warn!(pool = %name, reason = %e.reason, note = %e.note, "warning event");
        }
        ctx.events.publish(pool, e.type_, &e.reason, e.action, e.note, e.aggregate).await;
    }
    Ok(())
}

/// Does one pod action. Returns whether a pod was evicted.
async fn pod_action(ctx: &Context, pods: &Api<Pod>, pool: &WorkerPool, action: &PodAction) -> Result<bool, Error> {
    match action {
        PodAction::Annotate { pod, annotations } => {
            let annotations: BTreeMap<&str, Option<&str>> =
                annotations.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
            let patch = json!({"metadata": {"annotations": annotations}});
            pods.patch(pod, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        }
        PodAction::Drain { pod, target, function, reason, why } => match ctx.brokers.drain(target).await {
            Ok(()) => {
                tracing::info!(pool = %pool.name_any(), function = %function, pod = %pod, target = %target, reason = reason.as_str(), why = %why, "draining worker");
            }
            Err(e) => tracing::warn!(pod = %pod, target = %target, error = %e, "drain failed"),
        },
        PodAction::Undrain { pod, target, function, why } => match ctx.brokers.undrain(target).await {
            Ok(()) => {
                tracing::info!(pool = %pool.name_any(), function = %function, pod = %pod, target = %target, why = %why, "undrained worker")
            }
            Err(e) => tracing::warn!(pod = %pod, target = %target, error = %e, "undrain failed"),
        },
        PodAction::Disconnect { pod, target, function, why } => match ctx.brokers.disconnect(target).await {
            Ok(()) => {
                tracing::info!(pool = %pool.name_any(), function = %function, pod = %pod, target = %target, why = %why, "closed the broker connections of a gone worker; its jobs are queued again")
            }
            Err(e) => tracing::warn!(pod = %pod, target = %target, error = %e, "disconnect failed"),
        },
        PodAction::Evict { pod, function, reason, note } => match pods.evict(pod, &EvictParams::default()).await {
            Ok(_) => {
                tracing::info!(pool = %pool.name_any(), function = %function, pod = %pod, reason = reason.as_str(), "recycle: evicted");
                ctx.events.publish(pool, EventType::Normal, "Recycle", "Recycle", note.clone(), false).await;
                return Ok(true);
            }
            Err(kube::Error::Api(s)) if s.code == 429 => {
                tracing::info!(pod = %pod, "recycle: eviction refused by a PodDisruptionBudget; retrying");
            }
            Err(kube::Error::Api(s)) if s.is_not_found() => {}
            Err(e) => tracing::warn!(pod = %pod, error = %e, "recycle: eviction failed"),
        },
    }
    Ok(false)
}
