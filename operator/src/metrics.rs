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
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// The operator's metrics.
pub struct Metrics {
    registry: Registry,
    /// Reconciles started.
    pub reconciles: Counter,
    /// Failed reconciles by error kind.
    pub errors: Family<Labels, Counter>,
    /// Scaling decisions by kind (`ScaleUp`, `Hold`, …).
    pub decisions: Family<Labels, Counter>,
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
        Self { registry, reconciles, errors, decisions }
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
}
