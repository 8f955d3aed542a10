//! Operator benchmark on a real cluster (not a test: it measures, it asserts nothing):
//!
//! 1. scale-up latency: a burst of 100 background jobs for a function at zero replicas, timed from
//!    the last JOB_CREATED to the moment its Deployment's `spec.replicas` changes (seen through a
//!    `kubectl get --watch`), repeated `--rounds` times on fresh functions;
//! 2. memory: the operator's RSS with no pools, then with `--pools` WorkerPools (one function each,
//!    zero replicas) once every pool has a status;
//! 3. Jobs: `--jobs` Job resources for an `echo` pool of 2 example workers, created 16 at a time,
//!    from the first create to the last Succeeded; beside it, the apiserver's raw rate for the same
//!    objects without the operator (create, then one status write each, 16 at a time) — the limit.
//!
//!   eval "$(e2e/cluster/up)"; cargo build --release -p gearfleet-operator
//!   GEARFLEET_OPERATOR_BIN=$CARGO_TARGET_DIR/release/gearfleet-operator \
//!     cargo run --release -p gearfleet-e2e --bin operator-bench -- [--rounds 5] [--pools 1000]
//!
//! Prints a Markdown table (also written to docs/benchmarks/operator.md with `--write`).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use gearfleet_crd::Job;
use gearfleet_crd::job::JobSpec;
use gearfleet_e2e::gearman::submit_background;
use gearfleet_e2e::local_operator::{Operator, deploy_broker};
use gearfleet_e2e::{BUSYBOX_IMAGE, Cluster, EXAMPLE_WORKERS_IMAGE, Namespace, repo_root};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().trim_end_matches(" kB").to_string()))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn pool(name: &str, function: &str) -> String {
    // Workers that never connect: the burst stays queued, only the replica count matters.
    format!(
        "apiVersion: gearfleet.dev/v1alpha1\nkind: WorkerPool\nmetadata:\n  name: {name}\nspec:\n  template:\n    spec:\n      \
         terminationGracePeriodSeconds: 1\n      containers:\n        - name: worker\n          image: {BUSYBOX_IMAGE}\n          \
         imagePullPolicy: Never\n          command: [sleep, \"3600\"]\n  functions:\n    - {{name: {function}, minReplicas: 0, maxReplicas: 5}}\n  \
         scaling: {{pollInterval: 30s}}\n"
    )
}

/// Seconds from the end of a 100-job burst to the Deployment's first replica change.
fn scale_up_latency(ns: &Namespace<'_>, broker: &str, round: usize) -> f64 {
    let (name, function) = (format!("lat{round}"), format!("burst{round}"));
    ns.apply(&pool(&name, &function));
    let deployment = format!("{name}-{function}");
    ns.wait_for_rollout(&deployment, Duration::from_secs(60));
    let kubeconfig = std::env::var("KUBECONFIG").unwrap_or_default();
    let mut watch = Command::new(std::env::var("GEARFLEET_KUBECTL").unwrap_or_else(|_| "kubectl".into()))
        .args(["--namespace", ns.name(), "get", "deployment", &deployment, "--watch", "-o"])
        .arg("jsonpath={.spec.replicas}{\"\\n\"}")
        .env("KUBECONFIG", kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl watch");
    let mut lines = BufReader::new(watch.stdout.take().expect("stdout")).lines();
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    assert_eq!(first.trim(), "0", "the function starts at zero replicas");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if line.trim() != "0" {
                let _ = tx.send(Instant::now());
                return;
            }
        }
    });
    submit_background(broker, &function, &format!("bench{round}"), "x", 100);
    let sent = Instant::now();
    let changed = rx.recv_timeout(Duration::from_secs(60)).expect("the Deployment scaled up");
    let _ = watch.kill();
    let _ = watch.wait();
    changed.saturating_duration_since(sent).as_secs_f64()
}

const JOB_CONCURRENCY: usize = 16;

fn job(name: String) -> Job {
    Job::new(&name, JobSpec::new("echo").with_payload(name.clone()))
}

/// Create+status-write pairs per second the apiserver sustains for Jobs, without the operator.
async fn raw_job_rate(client: kube::Client, ns: &str, n: usize) -> f64 {
    let api: Api<Job> = Api::namespaced(client, ns);
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                let name = format!("raw-{i}");
                api.create(&PostParams::default(), &job(name.clone())).await.expect("create");
                let status = serde_json::json!({"apiVersion": "gearfleet.dev/v1alpha1", "kind": "Job",
                    "status": {"phase": "Succeeded", "result": name}});
                api.patch_status(&name, &PatchParams::apply("bench").force(), &Patch::Apply(&status))
                    .await
                    .expect("status");
            }
        })
        .buffer_unordered(JOB_CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
    n as f64 / started.elapsed().as_secs_f64()
}

/// Jobs per second through the operator, broker and workers: first create to last Succeeded.
async fn operator_job_rate(client: kube::Client, ns: &str, n: usize) -> f64 {
    let api: Api<Job> = Api::namespaced(client, ns);
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move { api.create(&PostParams::default(), &job(format!("bench-{i}"))).await.expect("create") }
        })
        .buffer_unordered(JOB_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    loop {
        let list = api.list(&ListParams::default()).await.expect("list");
        let done = list.items.iter().filter(|j| j.status.as_ref().is_some_and(|s| s.phase.is_finished())).count();
        if done >= n {
            return n as f64 / started.elapsed().as_secs_f64();
        }
        assert!(started.elapsed() < Duration::from_secs(600), "{done}/{n} Jobs finished after 10 minutes");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn main() {
    let rounds = arg("--rounds", 5);
    let pools = arg("--pools", 1000);
    let Some(cluster) = Cluster::connect() else { std::process::exit(2) };
    cluster.install_crds();
    let ns = cluster.namespace("gf-bench");
    let broker = deploy_broker(&ns);
    let operator = Operator::start(&ns, &broker);
    std::thread::sleep(Duration::from_secs(3));
    let idle_rss = rss_kib(operator.pid());

    let mut latencies: Vec<f64> = (0..rounds).map(|r| scale_up_latency(&ns, &broker, r)).collect();
    latencies.sort_by(f64::total_cmp);
    eprintln!("scale-up latencies (s): {latencies:?}");

    // Jobs (before the 1,000 pools load the apiserver).
    let jobs = arg("--jobs", 500);
    let (raw_rate, job_rate) = {
        let jobs_ns = cluster.namespace("gf-bench-jobs");
        let raw_ns = cluster.namespace("gf-bench-raw");
        let jobs_broker = deploy_broker(&jobs_ns);
        let jobs_operator = Operator::start(&jobs_ns, &jobs_broker);
        jobs_ns.apply(&format!(
            "apiVersion: gearfleet.dev/v1alpha1\nkind: WorkerPool\nmetadata:\n  name: bench\nspec:\n  template:\n    spec:\n      \
             containers:\n        - name: worker\n          image: {EXAMPLE_WORKERS_IMAGE}\n          imagePullPolicy: Never\n  \
             functions:\n    - {{name: echo, minReplicas: 2, maxReplicas: 2}}\n"
        ));
        jobs_ns.wait_for_rollout("bench-echo", Duration::from_secs(120));
        let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
        let rates = runtime.block_on(async {
            let client = kube::Client::try_default().await.expect("kube client");
            let raw = raw_job_rate(client.clone(), raw_ns.name(), jobs).await;
            let through = operator_job_rate(client, jobs_ns.name(), jobs).await;
            (raw, through)
        });
        // Delete the Jobs while the operator runs (their finalizers need it).
        jobs_ns.kubectl(&["delete", "gj", "--all", "--wait=true", "--timeout=300s"], None);
        drop(jobs_operator);
        rates
    };
    eprintln!("jobs: raw {raw_rate:.0}/s, through the operator {job_rate:.0}/s");

    let started = Instant::now();
    let manifest: String = (0..pools).map(|i| pool(&format!("p{i:04}"), "f") + "---\n").collect();
    ns.kubectl_ok(&["apply", "--server-side", "-f", "-"], Some(&manifest));
    cluster.eventually(Duration::from_secs(900), "every pool to have a status", || {
        let out = ns.kubectl_ok(&["get", "workerpools", "-o", "jsonpath={.items[*].status.observedGeneration}"], None);
        let done = out.split_whitespace().count();
        eprintln!("{done}/{} pools reconciled", pools + rounds);
        (done >= pools + rounds).then_some(())
    });
    let reconciled_in = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(5));
    let loaded_rss = rss_kib(operator.pid());

    let median = latencies[latencies.len() / 2];
    let table = format!(
        "| measure | value |\n|---|---|\n\
         | scale-up latency, 100-job burst → Deployment replicas changed (median of {rounds}) | {:.0} ms (min {:.0}, max {:.0}) |\n\
         | operator RSS, no pools | {:.1} MiB |\n\
         | operator RSS, {pools} WorkerPools reconciled | {:.1} MiB |\n\
         | time to reconcile {pools} new WorkerPools (Deployments created, status written) | {:.0} s |\n\
         | {jobs} Jobs (echo, 2 workers) created → all Succeeded, through operator, broker and workers | {:.0} Jobs/s |\n\
         | the apiserver's raw rate for the same Jobs without the operator (create + one status write) | {:.0} Jobs/s ({:.0}%) |\n",
        median * 1000.0,
        latencies[0] * 1000.0,
        latencies[latencies.len() - 1] * 1000.0,
        idle_rss as f64 / 1024.0,
        loaded_rss as f64 / 1024.0,
        reconciled_in,
        job_rate,
        raw_rate,
        job_rate / raw_rate * 100.0
    );
    println!("{table}");
    if std::env::args().any(|a| a == "--write") {
        let path = repo_root().join("docs/benchmarks/operator.md");
        let text = format!(
            "# Operator benchmark\n\nWritten by `operator-bench --write` (see docs/performance.md) on the project's local \
             single-node cluster (2 cores), operator built with `--release`.\n\n{table}"
        );
        std::fs::write(&path, text).expect("write docs/benchmarks/operator.md");
        eprintln!("wrote {}", path.display());
    }
    drop(operator);
}
