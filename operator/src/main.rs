//! The gearfleet operator binary: runs the WorkerPool controller and serves `/healthz` and
//! `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;

use clap::Parser;
use gearfleet_operator::brokers::Brokers;
use gearfleet_operator::job::reconcile::{self as job_reconcile, JobContext};
use gearfleet_operator::job::runner::Runner;
use gearfleet_operator::leader::{self, LeaderConfig};
use gearfleet_operator::metrics::{self, Metrics};
use gearfleet_operator::workerpool::desired::WorkerPods;
use gearfleet_operator::workerpool::drain_hook::DrainHook;
use gearfleet_operator::workerpool::reconcile::{self, Context};
use gearfleet_proto::logging::{self, LogFormat, Writer};

/// Kubernetes operator for Gearman worker fleets (WorkerPool controller).
#[derive(Parser, Debug)]
#[command(name = "gearfleet-operator", version)]
struct Args {
    /// Address (host:port) of every gearfleet broker, separated by commas: the operator reads and
    /// sums their queue depths, drains workers on each, and sends Jobs to one of them at a time.
    #[arg(long, env = "GEARFLEET_BROKER_ADDRESS", default_value = "gearfleet-broker:4730")]
    broker_address: String,
    /// GEARMAN_SERVERS given to worker pods (every broker, separated by commas); defaults to
    /// --broker-address.
    #[arg(long, env = "GEARFLEET_WORKERS_BROKER_ADDRESS")]
    workers_broker_address: Option<String>,
    /// Image with `gearfleet-drain`, the drain hook added to every worker pod (normally the
    /// operator's own image); empty for none (worker pods are then drained only on scale-in).
    #[arg(long, env = "GEARFLEET_DRAIN_HOOK_IMAGE", default_value = "")]
    drain_hook_image: String,
    /// Port of the drain hook in every worker pod.
    #[arg(long, env = "GEARFLEET_DRAIN_HOOK_PORT", default_value_t = 9741)]
    drain_hook_port: u16,
    /// Watch WorkerPools in this namespace only (default: all namespaces).
    #[arg(long, env = "GEARFLEET_NAMESPACE")]
    namespace: Option<String>,
    /// Address of the HTTP server with /healthz and /metrics.
    #[arg(long, env = "GEARFLEET_METRICS_ADDRESS", default_value = "0.0.0.0:9740")]
    metrics_address: SocketAddr,
    /// Run the controllers only while holding a Lease (for more than one operator replica).
    #[arg(long, env = "GEARFLEET_LEADER_ELECTION", default_value_t = false)]
    leader_election: bool,
    /// Name of the leader-election Lease.
    #[arg(long, env = "GEARFLEET_LEASE_NAME", default_value = "gearfleet-operator")]
    lease_name: String,
    /// Namespace of the Lease (in a pod: its own namespace, from the downward API).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Identity written into the Lease (in a pod: the pod name, from the downward API).
    #[arg(long, env = "POD_NAME")]
    lease_identity: Option<String>,
    /// Appended to the Lease identity as `_UID` (in a pod: its UID, from the downward API), so a
    /// pod recreated under the same name (a StatefulSet's) is seen to be a new holder.
    #[arg(long, env = "POD_UID")]
    lease_identity_uid: Option<String>,
    /// The broker's admin token (`auth TOKEN` before drain, retries and cancel commands).
    #[arg(long, env = "GEARFLEET_ADMIN_TOKEN", hide_env_values = true)]
    broker_admin_token: Option<String>,
    /// Read the broker's admin token from this file instead (a mounted Secret key).
    #[arg(long, env = "GEARFLEET_ADMIN_TOKEN_FILE", conflicts_with = "broker_admin_token")]
    broker_admin_token_file: Option<std::path::PathBuf>,
    /// On SIGTERM, how long the Job controller keeps following attempts that workers run (writing
    /// their outcomes into their Jobs) before the operator exits; keep it below the pod's
    /// terminationGracePeriodSeconds.
    #[arg(long, env = "GEARFLEET_SHUTDOWN_GRACE", default_value = "25s", value_parser = humantime::parse_duration)]
    shutdown_grace: std::time::Duration,
    /// How long the Job controller waits for a lost broker that has attempts a worker runs before
    /// it submits them to another broker (where they may run a second time). The broker keeps
    /// such jobs across its restart for the worker to take back or finish.
    #[arg(long, env = "GEARFLEET_BROKER_RETURN_WAIT", default_value = "2m", value_parser = humantime::parse_duration)]
    broker_return_wait: std::time::Duration,
    /// Log format: text or json (filter with RUST_LOG).
    #[arg(long, env = "GEARFLEET_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    logging::init(args.log_format, "RUST_LOG", "info", Writer::Stderr);

    let client = kube::Client::try_default().await?;
    let metrics = Arc::new(Metrics::default());
    let listener_metrics = metrics.clone();
    let metrics_address = args.metrics_address;
    tokio::spawn(async move {
        if let Err(e) = metrics::serve(metrics_address, listener_metrics).await {
            tracing::error!(error = %e, address = %metrics_address, "metrics server failed");
        }
    });

    let workers_address = args.workers_broker_address.clone().unwrap_or_else(|| args.broker_address.clone());
    tracing::info!(brokers = %args.broker_address, workers_brokers = %workers_address, namespace = ?args.namespace, "starting");
    let ctx_metrics = metrics.clone();
    let brokers = BrokerClients::from_args(&args)?;
    let admin = brokers.jobs;
    let drain_hook = (!args.drain_hook_image.is_empty())
        .then(|| DrainHook { image: args.drain_hook_image.clone(), port: args.drain_hook_port });
    if drain_hook.is_none() {
        tracing::warn!("no --drain-hook-image: worker pods get no drain hook, only scale-ins drain busy workers");
    }
    let worker_pods = WorkerPods { broker_address: workers_address, drain_hook };
    let ctx = Arc::new(Context::new(client.clone(), brokers.pools, worker_pods, metrics));
    let controllers = {
        let (client, namespace, job_metrics) = (client.clone(), args.namespace.clone(), ctx_metrics);
        let addresses = admin.addresses();
        let (grace, return_wait) = (args.shutdown_grace, args.broker_return_wait);
        async move {
            let (trigger, triggers) = tokio::sync::mpsc::unbounded_channel();
            let runner = Runner::start_with(addresses, trigger, return_wait);
            let wind_down = job_reconcile::wind_down(runner.clone(), admin.clone(), grace);
            let jobs = Arc::new(JobContext::new(client.clone(), runner, admin, job_metrics));
            tokio::join!(
                reconcile::run(client.clone(), namespace.clone(), ctx),
                job_reconcile::run(client, namespace, jobs, triggers, wind_down)
            );
        }
    };
    if !args.leader_election {
        controllers.await;
        return Ok(());
    }
    let config = LeaderConfig {
        lease_name: args.lease_name,
        namespace: args.lease_namespace,
        identity: lease_identity(args.lease_identity.clone(), args.lease_identity_uid.as_deref()),
        duration_seconds: 15,
        grace_seconds: 5,
    };
    let mut leadership = tokio::select! {
        held = leader::acquire(client.clone(), &config) => held?,
        _ = tokio::signal::ctrl_c() => return Ok(()),
    };
    tokio::select! {
        () = controllers => Ok(()),
        () = leadership.lost() => {
            tracing::error!(lease = %config.lease_name, "lost leadership; exiting so that only one replica reconciles");
            std::process::exit(1);
        }
    }
}

/// The broker clients of the two controllers.
struct BrokerClients {
    /// The WorkerPool controller's: `fleet drain`, `fleet undrain`, `fleet disconnect` and
    /// `fleet retries` are refused without the admin token.
    pools: Brokers,
    /// The Job controller's: `cancel job` is refused without it.
    jobs: Brokers,
}

impl BrokerClients {
    /// Both controllers' clients for every broker in `--broker-address`, each authenticating
    /// with the admin token when one is given (`--broker-admin-token`, or read from
    /// `--broker-admin-token-file`).
    fn from_args(args: &Args) -> std::io::Result<Self> {
        let token = match (&args.broker_admin_token, &args.broker_admin_token_file) {
            (Some(t), _) => Some(t.trim().to_string()),
            (None, Some(path)) => Some(std::fs::read_to_string(path)?.trim().to_string()),
            (None, None) => None,
        };
        let addresses = Brokers::parse_list(&args.broker_address);
        if addresses.is_empty() {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "--broker-address names no broker"));
        }
        let brokers = Brokers::new(&addresses, token);
        Ok(Self { pools: brokers.clone(), jobs: brokers })
    }
}

/// `NAME_UID` (the pod's name and UID), or `NAME` without a UID; the host name without a name.
fn lease_identity(name: Option<String>, uid: Option<&str>) -> String {
    let name = name.filter(|n| !n.is_empty()).unwrap_or_else(default_identity);
    match uid.filter(|u| !u.is_empty()) {
        Some(uid) => format!("{name}_{uid}"),
        None => name,
    }
}

/// The host name, or a fixed name when there is none (outside a pod without POD_NAME).
fn default_identity() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("gearfleet-operator-{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_identity_is_the_pod_name_and_uid() {
        assert_eq!(lease_identity(Some("gf-gearfleet-1".into()), Some("8d2c")), "gf-gearfleet-1_8d2c");
        assert_eq!(lease_identity(Some("gf-gearfleet-1".into()), None), "gf-gearfleet-1");
        assert_eq!(lease_identity(Some("gf-gearfleet-1".into()), Some("")), "gf-gearfleet-1");
        assert!(!lease_identity(None, None).is_empty());
    }

    /// Both controllers' clients, built from the flags, against a real broker that requires the
    /// admin token: the WorkerPool controller's drain, undrain and retries, and the Job
    /// controller's admin commands, are accepted.
    #[tokio::test]
    async fn both_controllers_authenticate_with_the_admin_token() {
        let mut config = gearfleet_broker::Config::for_tests();
        config.admin_token = Some("s3cret".into());
        let broker = gearfleet_broker::start(config).await.expect("broker");
        let addr = broker.gearman_addr.to_string();

        let from_flag = Args::parse_from([
            "gearfleet-operator",
            "--broker-address",
            addr.as_str(),
            "--broker-admin-token",
            "s3cret",
        ]);
        let dir = std::env::temp_dir().join(format!("gearfleet-operator-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("token");
        std::fs::write(&file, "s3cret\n").expect("token file");
        let file_arg = file.to_string_lossy().into_owned();
        let from_file = Args::parse_from([
            "gearfleet-operator",
            "--broker-address",
            addr.as_str(),
            "--broker-admin-token-file",
            file_arg.as_str(),
        ]);

        for args in [from_flag, from_file] {
            let clients = BrokerClients::from_args(&args).expect("clients");
            for (controller, client) in [("WorkerPool", &clients.pools), ("Job", &clients.jobs)] {
                for command in ["fleet drain pod-1", "fleet undrain pod-1", "fleet retries echo 3 1s 5m"] {
                    let reply = client.ok(command).await;
                    assert!(reply.is_ok(), "{controller} controller: {command}: {reply:?}");
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);

        // Without a token the broker refuses them: the test above is not vacuous.
        let anonymous = Args::parse_from(["gearfleet-operator", "--broker-address", addr.as_str()]);
        let clients = BrokerClients::from_args(&anonymous).expect("clients");
        assert!(clients.pools.ok("fleet drain pod-1").await.is_err());
        broker.stop().await;
    }
}
