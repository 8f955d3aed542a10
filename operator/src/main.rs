//! The gearfleet operator binary: runs the WorkerPool controller and serves `/healthz` and
//! `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;

use clap::Parser;
use gearfleet_operator::broker_client::BrokerClient;
use gearfleet_operator::metrics::{self, Metrics};
use gearfleet_operator::workerpool::reconcile::{self, Context};

/// Kubernetes operator for Gearman worker fleets (WorkerPool controller).
#[derive(Parser, Debug)]
#[command(name = "gearfleet-operator", version)]
struct Args {
    /// Admin address (host:port) of the gearfleet broker the operator reads queue depths from.
    #[arg(long, env = "GEARFLEET_BROKER_ADDRESS", default_value = "gearfleet-broker:4730")]
    broker_address: String,
    /// GEARMAN_SERVERS given to worker pods; defaults to --broker-address.
    #[arg(long, env = "GEARFLEET_WORKERS_BROKER_ADDRESS")]
    workers_broker_address: Option<String>,
    /// Watch WorkerPools in this namespace only (default: all namespaces).
    #[arg(long, env = "GEARFLEET_NAMESPACE")]
    namespace: Option<String>,
    /// Address of the HTTP server with /healthz and /metrics.
    #[arg(long, env = "GEARFLEET_METRICS_ADDRESS", default_value = "0.0.0.0:9740")]
    metrics_address: SocketAddr,
    /// Log format: text or json (filter with RUST_LOG).
    #[arg(long, env = "GEARFLEET_LOG_FORMAT", default_value = "text")]
    log_format: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if args.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }

    let client = kube::Client::try_default().await?;
    let metrics = Arc::new(Metrics::default());
    let listener_metrics = metrics.clone();
    let metrics_address = args.metrics_address;
    tokio::spawn(async move {
        if let Err(e) = metrics::serve(metrics_address, listener_metrics).await {
            tracing::error!(error = %e, address = %metrics_address, "metrics server failed");
        }
    });

    let workers_address = args.workers_broker_address.unwrap_or_else(|| args.broker_address.clone());
    tracing::info!(broker = %args.broker_address, workers_broker = %workers_address, namespace = ?args.namespace, "starting");
    let ctx = Arc::new(Context::new(client.clone(), BrokerClient::new(args.broker_address), workers_address, metrics));
    reconcile::run(client, args.namespace, ctx).await;
    Ok(())
}
