//! The Job controller: fetch → validate → plan ([`super::state::plan`], pure) → act (submit /
//! forget through the [`Runner`], delete after the TTL) → status (server-side apply) → events.
//!
//! Reconciles are triggered by Job changes and by the runner whenever the broker reports on an
//! attempt, so thousands of Jobs cost one watch and one broker connection, not a loop each.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use gearfleet_crd::job::{JobPhase, JobStatus, RESULT_CONFIG_MAP_KEY, result_config_map_name, result_fits_inline};
use gearfleet_crd::{Job, LABEL_JOB};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams};
use kube::runtime::controller::{self, Action as Requeue, Controller};
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use tokio::sync::mpsc;

use super::runner::Runner;
use super::state::{self, Action, PayloadFrom, Plan};
use super::unique;
use crate::brokers::Brokers;
use crate::kube_util::{EventPublisher, FIELD_MANAGER, apply_status};
use crate::metrics::Metrics;

/// Cancels the Job's attempt in the broker before the Job goes.
pub const FINALIZER: &str = "gearfleet.dev/job-cleanup";
/// A followed attempt is looked at again at least this often (a safety net; the broker's reports
/// trigger reconciles as they come).
const RESYNC: Duration = Duration::from_secs(300);

/// Why a Job reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The finalizer helper failed.
    #[error("finalizer: {0}")]
    Finalizer(String),
    /// The payload could not be read.
    #[error("payload: {0}")]
    Payload(String),
    /// The Job has no namespace or UID.
    #[error("job has no {0}")]
    Missing(&'static str),
}

impl JobError {
    /// A short, stable label for the `gearfleet_operator_reconcile_errors_total` metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            JobError::Kube(_) => "job_kube",
            JobError::Finalizer(_) => "job_finalizer",
            JobError::Payload(_) => "job_payload",
            JobError::Missing(_) => "job_missing",
        }
    }
}

/// Shared state of the Job controller.
pub struct JobContext {
    client: Client,
    runner: Runner,
    brokers: Brokers,
    metrics: Arc<Metrics>,
    events: EventPublisher,
}

impl JobContext {
    /// A context whose attempts go through `runner`; cancels go to every one of `brokers`.
    pub fn new(client: Client, runner: Runner, brokers: Brokers, metrics: Arc<Metrics>) -> Self {
        let events = EventPublisher::new(client.clone());
        Self { client, runner, brokers, metrics, events }
    }
}

/// Runs the Job controller until shutdown; `triggers` are the runner's reports.
/// Runs the Job controller until `shutdown` resolves (see [`wind_down`]).
pub async fn run(
    client: Client,
    namespace: Option<String>,
    ctx: Arc<JobContext>,
    mut triggers: mpsc::UnboundedReceiver<ObjectRef<Job>>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let triggers = futures::stream::poll_fn(move |cx| triggers.poll_recv(cx));
    let jobs: Api<Job> = match &namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    Controller::new(jobs, watcher::Config::default())
        .reconcile_on(triggers)
        .with_config(controller::Config::default().debounce(Duration::from_millis(100)))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::warn!(error = %e, "job reconcile failed");
            }
        })
        .await;
}

/// What the Job controller does on SIGTERM or SIGINT before it stops: it submits nothing more and
/// withdraws the attempts no worker has taken (`cancel job`, so none starts after it is gone), but
/// keeps following the attempts workers are running, and writing their outcomes into their Jobs,
/// until none runs or `grace` has passed. A running attempt's outcome thus reaches its Job even
/// when the broker it runs on shuts down with this pod (a broker lets held jobs finish and passes
/// their outcomes on first); the next leader submits whatever is left.
pub async fn wind_down(runner: Runner, brokers: Brokers, grace: Duration) {
    wait_for_signal().await;
    runner.stop_submitting();
    for (unique, handle) in runner.queued_handles() {
        // Refused when a worker took it meanwhile: then it is followed to its end below.
        if brokers.cancel_job(&handle).await.is_ok() {
            runner.forget(&unique);
        }
    }
    let started = tokio::time::Instant::now();
    let running = runner.running();
    tracing::info!(running, grace = ?grace, "shutting down: no more submissions; waiting for running attempts");
    while runner.running() > 0 && started.elapsed() < grace {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tracing::info!(left = runner.running(), waited = ?started.elapsed(), "job controller stopping");
    // Let the last outcomes' reconciles write their statuses.
    tokio::time::sleep(Duration::from_millis(500)).await;
}

async fn wait_for_signal() {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn error_policy(job: Arc<Job>, error: &JobError, ctx: Arc<JobContext>) -> Requeue {
    ctx.metrics.error(error.metric_label());
    tracing::warn!(job = %job.name_any(), error = %error, "job reconcile error");
    Requeue::requeue(Duration::from_secs(5))
}

async fn reconcile(job: Arc<Job>, ctx: Arc<JobContext>) -> Result<Requeue, JobError> {
    let ns = job.namespace().ok_or(JobError::Missing("namespace"))?;
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, job, |event| async {
        match event {
            Finalizer::Apply(job) => apply(job, &ctx).await,
            Finalizer::Cleanup(job) => cleanup(job, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => JobError::Finalizer(other.to_string()),
    })
}

/// The unique-key base of a Job: `<namespace>/<spec.unique>`, else its UID ([`unique::unique_base`]).
fn unique_base(job: &Job, ns: &str) -> Result<String, JobError> {
    let uid = job.metadata.uid.as_deref();
    unique::unique_base(ns, job.spec.unique.as_deref(), uid).ok_or(JobError::Missing("uid"))
}

async fn apply(job: Arc<Job>, ctx: &JobContext) -> Result<Requeue, JobError> {
    let ns = job.namespace().ok_or(JobError::Missing("namespace"))?;
    let name = job.name_any();
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let status = job.status.clone().unwrap_or_default();

    if let Err(e) = job.spec.validate() {
        if status.phase != JobPhase::Failed {
            let mut failed = status.clone();
            failed.phase = JobPhase::Failed;
            failed.reason = Some(state::reason::INVALID_SPEC.into());
            failed.message = Some(e.to_string());
            patch_status(&api, &name, &failed, job.metadata.generation).await?;
            publish(ctx, &job, true, "InvalidSpec", e.to_string()).await;
        }
        return Ok(Requeue::await_change());
    }

    let base = unique_base(&job, &ns)?;
    let observation = status.unique.as_deref().and_then(|u| ctx.runner.observation(u));
    let mut plan = state::plan(&job.spec, &status, &base, observation.as_ref(), Timestamp::now());

    for action in &plan.actions {
        match action {
            Action::Submit { unique, function, payload } => {
                let bytes = match payload {
                    PayloadFrom::Spec => spec_payload(ctx, &job, &ns).await?,
                    PayloadFrom::PreviousResult => previous_result(ctx, &status, &plan.status, &ns).await?,
                };
                if ctx.runner.observation(unique).is_none() {
                    ctx.metrics.job_attempts.inc();
                }
                // A run a worker took (as the status says: a new leader) is followed on its broker.
                let running_on = status
                    .handle
                    .as_deref()
                    .filter(|_| status.phase == JobPhase::Running && status.unique.as_deref() == Some(unique.as_str()));
                ctx.runner.submit(ObjectRef::from_obj(&*job), unique, function, bytes, job.spec.priority, running_on);
            }
            Action::Forget { unique } => ctx.runner.forget(unique),
            Action::Cancel { unique } => {
                // The handle is the runner's, or the one last written (after an operator restart).
                let written = status.handle.clone().filter(|_| status.unique.as_deref() == Some(unique.as_str()));
                cancel_attempt(ctx, &job, unique, written).await;
            }
            Action::Delete => {
                tracing::info!(job = %name, namespace = %ns, "deleting finished job (ttlSecondsAfterFinished)");
                api.delete(&name, &DeleteParams::background()).await?;
                return Ok(Requeue::await_change());
            }
        }
    }

    store_large_result(ctx, &job, &ns, &mut plan).await?;
    if plan.status != status {
        patch_status(&api, &name, &plan.status, job.metadata.generation).await?;
        if plan.status.phase.is_finished() && !status.phase.is_finished() {
            let seconds = match (&plan.status.start_time, &plan.status.completion_time) {
                (Some(s), Some(e)) => e.0.duration_since(s.0).as_secs_f64().max(0.0),
                _ => 0.0,
            };
            ctx.metrics.job_finished(plan.status.phase.as_str(), seconds);
            tracing::info!(job = %name, namespace = %ns, phase = plan.status.phase.as_str(),
                attempts = plan.status.attempts, "job finished");
        }
    }
    for e in std::mem::take(&mut plan.events) {
        publish(ctx, &job, e.warning, e.reason, e.note).await;
    }
    let active = matches!(plan.status.phase, JobPhase::Queued | JobPhase::Running);
    Ok(match plan.requeue {
        Some(after) => Requeue::requeue(after.max(Duration::from_millis(50))),
        None if active => Requeue::requeue(RESYNC),
        None => Requeue::await_change(),
    })
}

/// A result too large for `status.result` goes to a ConfigMap owned by the Job.
async fn store_large_result(ctx: &JobContext, job: &Job, ns: &str, plan: &mut Plan) -> Result<(), JobError> {
    let Some(result) = plan.status.result.as_ref() else { return Ok(()) };
    if result_fits_inline(result) {
        return Ok(());
    }
    let name = result_config_map_name(&job.name_any());
    let owner = job.controller_owner_ref(&()).ok_or(JobError::Missing("uid"))?;
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.to_string()),
            owner_references: Some(vec![owner]),
            labels: Some([(LABEL_JOB.to_string(), job.name_any())].into()),
            ..Default::default()
        },
        data: Some([(RESULT_CONFIG_MAP_KEY.to_string(), result.clone())].into()),
        ..Default::default()
    };
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&cm)).await?;
    plan.status.result = None;
    plan.status.result_config_map = Some(name);
    Ok(())
}

async fn spec_payload(ctx: &JobContext, job: &Job, ns: &str) -> Result<Bytes, JobError> {
    if let Some(p) = &job.spec.payload {
        return Ok(Bytes::copy_from_slice(p.as_bytes()));
    }
    let Some(from) = &job.spec.payload_from else { return Ok(Bytes::new()) };
    if let Some(r) = &from.config_map_key_ref {
        let cm = Api::<ConfigMap>::namespaced(ctx.client.clone(), ns).get(&r.name).await?;
        if let Some(v) = cm.data.as_ref().and_then(|d| d.get(&r.key)) {
            return Ok(Bytes::copy_from_slice(v.as_bytes()));
        }
        if let Some(v) = cm.binary_data.as_ref().and_then(|d| d.get(&r.key)) {
            return Ok(Bytes::copy_from_slice(&v.0));
        }
        return Err(JobError::Payload(format!("ConfigMap {} has no key {}", r.name, r.key)));
    }
    if let Some(r) = &from.secret_key_ref {
        let secret = Api::<Secret>::namespaced(ctx.client.clone(), ns).get(&r.name).await?;
        if let Some(v) = secret.data.as_ref().and_then(|d| d.get(&r.key)) {
            return Ok(Bytes::copy_from_slice(&v.0));
        }
        return Err(JobError::Payload(format!("Secret {} has no key {}", r.name, r.key)));
    }
    Ok(Bytes::new())
}

/// The previous step's result: in the planned status, or in its ConfigMap when it was large.
async fn previous_result(ctx: &JobContext, old: &JobStatus, new: &JobStatus, ns: &str) -> Result<Bytes, JobError> {
    if let Some(r) = new.result.as_ref() {
        return Ok(Bytes::copy_from_slice(r.as_bytes()));
    }
    let Some(cm) = new.result_config_map.as_ref().or(old.result_config_map.as_ref()) else { return Ok(Bytes::new()) };
    let cm = Api::<ConfigMap>::namespaced(ctx.client.clone(), ns).get(cm).await?;
    let value = cm.data.and_then(|mut d| d.remove(RESULT_CONFIG_MAP_KEY)).unwrap_or_default();
    Ok(Bytes::from(value))
}

async fn cleanup(job: Arc<Job>, ctx: &JobContext) -> Result<Requeue, JobError> {
    let status = job.status.clone().unwrap_or_default();
    if let Some(unique) = status.unique.as_deref()
        && matches!(status.phase, JobPhase::Queued | JobPhase::Running)
    {
        cancel_attempt(ctx, &job, unique, status.handle.clone()).await;
    }
    Ok(Requeue::await_change())
}

/// Stops following an attempt and removes it from the broker if no worker has it yet (admin
/// `cancel job HANDLE`); a running attempt finishes unobserved. `written` is the handle from the
/// status, for when the runner does not know the attempt (the operator restarted).
async fn cancel_attempt(ctx: &JobContext, job: &Job, unique: &str, written: Option<String>) {
    let handle = ctx.runner.handle(unique).or(written);
    ctx.runner.forget(unique);
    let Some(handle) = handle else { return };
    match ctx.brokers.cancel_job(&handle).await {
        Ok(()) => tracing::info!(job = %job.name_any(), handle = %handle, "cancelled in the broker"),
        Err(e) => {
            tracing::info!(job = %job.name_any(), handle = %handle, error = %e, "not cancelled (running or gone)")
        }
    }
}

async fn patch_status(api: &Api<Job>, name: &str, status: &JobStatus, generation: Option<i64>) -> Result<(), JobError> {
    let mut status = status.clone();
    status.observed_generation = generation;
    apply_status(api, name, &status).await?;
    Ok(())
}

async fn publish(ctx: &JobContext, job: &Job, warning: bool, reason: &str, note: String) {
    let type_ = if warning { EventType::Warning } else { EventType::Normal };
    // Not aggregated: every Job event carries its own note (no folding into a series).
    ctx.events.publish(job, type_, reason, "Run", note, false).await;
}
