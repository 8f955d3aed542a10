//! Prometheus metrics and the HTTP endpoints `/healthz` and `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

fn new_duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 4.0, 12))
}

/// The operator's metrics.
pub struct Metrics {
    registry: Registry,
    /// Reconciles started.
    pub reconciles: Counter,
    /// Failed reconciles by error kind.
    pub errors: Family<Labels, Counter>,
    /// Scaling decisions by kind (`ScaleUp`, `Hold`, …).
    pub decisions: Family<Labels, Counter>,
    /// Seconds a WorkerPool reconcile takes (from a trigger to the decision applied).
    pub reconcile_duration: Histogram,
    /// Pods in CrashLoopBackOff, repeatedly OOMKilled or failing to pull, per function.
    pub troubled_pods: Family<Labels, Gauge>,
    /// Jobs that reached Succeeded or Failed, by phase.
    pub jobs_finished: Family<Labels, Counter>,
    /// Job attempts submitted to the broker (retries and chain steps included).
    pub job_attempts: Counter,
    /// Seconds from a Job's first submission to its end, by phase.
    pub job_duration: Family<Labels, Histogram, fn() -> Histogram>,
    /// 1 while the broker's `fleet watch` is connected, by broker address.
    pub broker_up: Family<Labels, Gauge>,
    /// 1 while a pool's counts come from only some of the brokers, by namespace and pool.
    pub partial_view: Family<Labels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("gearfleet_operator");
        let reconciles = Counter::default();
        let errors = Family::<Labels, Counter>::default();
        let decisions = Family::<Labels, Counter>::default();
        registry.register("reconciles", "WorkerPool reconciles started", reconciles.clone());
        registry.register("reconcile_errors", "Failed WorkerPool reconciles by error kind", errors.clone());
        registry.register("scaling_decisions", "Scaling decisions by kind", decisions.clone());
        let reconcile_duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register(
            "reconcile_duration_seconds",
            "WorkerPool reconcile time: broker stats to scaling decision applied",
            reconcile_duration.clone(),
        );
        let troubled_pods = Family::<Labels, Gauge>::default();
        registry.register(
            "troubled_pods",
            "Worker pods in CrashLoopBackOff, repeatedly OOMKilled or failing to pull their image",
            troubled_pods.clone(),
        );
        let jobs_finished = Family::<Labels, Counter>::default();
        let job_attempts = Counter::default();
        let job_duration: Family<Labels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(new_duration_histogram);
        registry.register("jobs_finished", "Jobs that reached Succeeded or Failed, by phase", jobs_finished.clone());
        registry.register("job_attempts", "Job attempts submitted to the broker", job_attempts.clone());
        registry.register(
            "job_duration_seconds",
            "From a Job's first submission to its end, by phase",
            job_duration.clone(),
        );
        let broker_up = Family::<Labels, Gauge>::default();
        registry.register(
            "broker_up",
            "1 while the operator's fleet watch on this broker is connected",
            broker_up.clone(),
        );
        let partial_view = Family::<Labels, Gauge>::default();
        registry.register(
            "partial_view",
            "1 while a pool's queue and worker counts come from only some of the brokers (no scale-in then)",
            partial_view.clone(),
        );
        Self {
            registry,
            broker_up,
            partial_view,
            reconciles,
            errors,
            decisions,
            reconcile_duration,
            troubled_pods,
            jobs_finished,
            job_attempts,
            job_duration,
        }
    }
}

impl Metrics {
    /// Count a failed reconcile.
    pub fn error(&self, kind: &str) {
        self.errors.get_or_create(&vec![("kind".to_string(), kind.to_string())]).inc();
    }

    /// Count a scaling decision.
    pub fn decision(&self, kind: &str) {
        self.decisions.get_or_create(&vec![("kind".to_string(), kind.to_string())]).inc();
    }

    /// Set the troubled-pod gauge of one function.
    pub fn set_troubled_pods(&self, namespace: &str, pool: &str, function: &str, n: i32) {
        let labels = vec![
            ("namespace".to_string(), namespace.to_string()),
            ("pool".to_string(), pool.to_string()),
            ("function".to_string(), function.to_string()),
        ];
        self.troubled_pods.get_or_create(&labels).set(i64::from(n));
    }

    /// Set whether the operator's watch on `broker` is connected.
    pub fn set_broker_up(&self, broker: &str, up: bool) {
        let labels = vec![("broker".to_string(), broker.to_string())];
        self.broker_up.get_or_create(&labels).set(i64::from(up));
    }

    /// Set whether a pool's view of the brokers is partial.
    pub fn set_partial_view(&self, namespace: &str, pool: &str, partial: bool) {
        let labels = vec![("namespace".to_string(), namespace.to_string()), ("pool".to_string(), pool.to_string())];
        self.partial_view.get_or_create(&labels).set(i64::from(partial));
    }

    /// Count a finished Job that ran for `seconds`.
    pub fn job_finished(&self, phase: &str, seconds: f64) {
        let labels = vec![("phase".to_string(), phase.to_string())];
        self.jobs_finished.get_or_create(&labels).inc();
        self.job_duration.get_or_create(&labels).observe(seconds);
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// The router with `/healthz` and `/metrics`.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new().route("/healthz", get(|| async { "ok\n" })).route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
                ([(CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], metrics.render())
                    .into_response()
            }
        }),
    )
}

/// Serves [`router`] on `addr` until the process ends.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, router(metrics)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters() {
        let m = Metrics::default();
        m.reconciles.inc();
        m.error("kube");
        m.decision("ScaleUp");
        let text = m.render();
        assert!(text.contains("gearfleet_operator_reconciles_total 1"), "{text}");
        assert!(text.contains("gearfleet_operator_reconcile_errors_total{kind=\"kube\"} 1"), "{text}");
        assert!(text.contains("gearfleet_operator_scaling_decisions_total{kind=\"ScaleUp\"} 1"), "{text}");
    }

    #[test]
    fn renders_latency_and_job_metrics() {
        let m = Metrics::default();
        m.reconcile_duration.observe(0.003);
        m.job_attempts.inc();
        m.job_finished("Succeeded", 1.5);
        let text = m.render();
        assert!(text.contains("gearfleet_operator_reconcile_duration_seconds_count 1"), "{text}");
        assert!(text.contains("gearfleet_operator_job_attempts_total 1"), "{text}");
        assert!(text.contains("gearfleet_operator_jobs_finished_total{phase=\"Succeeded\"} 1"), "{text}");
        assert!(text.contains("gearfleet_operator_job_duration_seconds_sum{phase=\"Succeeded\"} 1.5"), "{text}");
    }

    #[test]
    fn renders_broker_and_partial_view_gauges() {
        let m = Metrics::default();
        m.set_broker_up("b-0:4730", true);
        m.set_broker_up("b-1:4730", false);
        m.set_partial_view("team-a", "resize", true);
        let text = m.render();
        assert!(text.contains("gearfleet_operator_broker_up{broker=\"b-0:4730\"} 1"), "{text}");
        assert!(text.contains("gearfleet_operator_broker_up{broker=\"b-1:4730\"} 0"), "{text}");
        assert!(text.contains("gearfleet_operator_partial_view{namespace=\"team-a\",pool=\"resize\"} 1"), "{text}");
    }
}
