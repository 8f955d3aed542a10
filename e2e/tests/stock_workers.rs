//! Workers that are not ours: pools of Debian's stock `gearman -w` CLI and of a Python `gear`
//! worker (no client id, no drain of their own, killed by SIGTERM) keep every promise on a real
//! cluster. While foreground jobs run on
//! it, the pool is scaled in from 4 to 2, its template changed (a rollout), a busy pod evicted
//! through the Eviction API, and the pool deleted; every client gets its result from the first
//! execution. Executions are counted on the worker side: each job appends its key to a file on a
//! hostPath that a reader pod shows.
//!
//! Needs the operator binary: `cargo build -p gearfleet-operator` first (or set
//! `GEARFLEET_OPERATOR_BIN`), and the gearman-workers image (e2e/images/build).

use std::collections::{BTreeMap, BTreeSet};
use std::thread::JoinHandle;
use std::time::Duration;

use gearfleet_e2e::executions::{counts, reader_pod};
use gearfleet_e2e::fixture::Fixture;
use gearfleet_e2e::gearman::{backlog, call, fleet_workers};
use gearfleet_e2e::{Cluster, GEAR_WORKERS_IMAGE, GEARMAN_WORKERS_IMAGE, Namespace};
use gearfleet_proto::admin::WorkerStats;

const POOL: &str = "stock";
const FUNCTION: &str = "slow";
const DEPLOYMENT: &str = "stock-slow";

/// The pool of `image` with `replicas` workers; `revision` is an env value whose change rolls the
/// pods; `max_age` turns recycling on.
fn stock_pool(ns: &Namespace<'_>, image: &str, replicas: u32, revision: u32, max_age: Option<&str>) -> String {
    let recycle = max_age.map(|age| format!("  recycle: {{maxAge: {age}, maxUnavailable: 1}}\n")).unwrap_or_default();
    format!(
        r#"
apiVersion: gearfleet.dev/v1alpha1
kind: WorkerPool
metadata:
  name: {POOL}
spec:
  template:
    spec:
      containers:
        - name: worker
          image: {image}
          imagePullPolicy: Never
          securityContext: {{runAsUser: 0}}
          env:
            - {{name: GEARFLEET_EXECUTIONS_FILE, value: /executions/log}}
            - {{name: REVISION, value: "{revision}"}}
          volumeMounts: [{{name: executions, mountPath: /executions}}]
      volumes:
        - name: executions
          hostPath: {{path: /tmp/gearfleet-e2e/{ns}, type: DirectoryOrCreate}}
  functions:
    - {{name: {FUNCTION}, minReplicas: {replicas}, maxReplicas: {replicas}}}
  scaling:
    pollInterval: 2s
    cooldown: 3s
    drainTimeout: 2m
    scaleDown: {{stabilizationWindow: 1s}}
{recycle}"#,
        ns = ns.name()
    )
}

/// Executions per job key so far (none while the reader cannot be reached).
fn executions(ns: &Namespace<'_>) -> BTreeMap<String, usize> {
    counts(ns).unwrap_or_default()
}

/// Foreground calls in flight: each key with the thread that waits for its result.
type Calls = Vec<(String, JoinHandle<Result<Vec<u8>, String>>)>;

/// Foreground calls of `keys`, each a job of `seconds`, from threads.
fn start_jobs(broker: &str, keys: &[&str], seconds: u32) -> Calls {
    keys.iter()
        .map(|&key| {
            let (broker, payload) = (broker.to_string(), format!("{key} {seconds}"));
            let handle =
                std::thread::spawn(move || call(&broker, FUNCTION, payload.as_bytes(), Duration::from_secs(240)));
            (key.to_string(), handle)
        })
        .collect()
}

fn wait_running(cluster: &Cluster, broker: &str, n: u64) {
    cluster.eventually(Duration::from_secs(60), &format!("{n} jobs running"), || {
        backlog(broker, FUNCTION).filter(|&(_, running)| running == n).map(|_| ())
    });
}

/// Every call got `done KEY` and every key ran exactly once.
fn assert_each_ran_once(ns: &Namespace<'_>, jobs: Calls, what: &str) {
    for (key, handle) in jobs {
        let result = handle.join().expect("thread").unwrap_or_else(|e| panic!("{what}: job {key}: {e}"));
        assert_eq!(String::from_utf8_lossy(&result).trim(), format!("done {key}"), "{what}");
        let runs = executions(ns).get(&key).copied().unwrap_or(0);
        assert_eq!(runs, 1, "{what}: job {key} ran {runs} times: {:?}", executions(ns));
    }
}

fn workers(broker: &str) -> Vec<WorkerStats> {
    fleet_workers(broker).unwrap_or_default()
}

/// Pods with a worker of the function in the broker, by address (a stock `gearman -w` holds two
/// connections); `undrained` counts only pods none of whose connections is draining.
fn worker_pods(broker: &str, undrained: bool) -> usize {
    let ip = |w: &WorkerStats| w.address.rsplit_once(':').map(|(ip, _)| ip.to_string()).unwrap_or_default();
    let all = workers(broker);
    let of_function: Vec<&WorkerStats> = all.iter().filter(|w| w.functions.iter().any(|f| f == FUNCTION)).collect();
    let ips: BTreeSet<String> = of_function.iter().map(|w| ip(w)).collect();
    ips.iter().filter(|i| !undrained || of_function.iter().all(|w| ip(w) != **i || !w.draining)).count()
}

/// Names of the pool's pods that are not terminating.
fn live_pods(ns: &Namespace<'_>) -> Vec<String> {
    let out = ns.kubectl_ok(
        &[
            "get",
            "pods",
            "-l",
            &format!("gearfleet.dev/pool={POOL}"),
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}={.metadata.deletionTimestamp}{\"\\n\"}{end}",
        ],
        None,
    );
    out.lines().filter_map(|l| l.strip_suffix('=')).map(str::to_string).collect()
}

fn pod_with_ip(ns: &Namespace<'_>, ip: &str) -> Option<String> {
    let out = ns.kubectl_ok(
        &["get", "pods", "-o", "jsonpath={range .items[*]}{.metadata.name}={.status.podIP}{\"\\n\"}{end}"],
        None,
    );
    out.lines().find_map(|l| l.split_once('=').filter(|(_, pod_ip)| *pod_ip == ip).map(|(name, _)| name.to_string()))
}

#[test]
fn gearman_cli_workers_finish_every_job_once_however_their_pods_end() {
    let Some(cluster) = Cluster::connect() else { return };
    every_way_a_pod_ends(&cluster, GEARMAN_WORKERS_IMAGE, "gf-stock");
}

#[test]
fn python_gear_workers_finish_every_job_once_however_their_pods_end() {
    let Some(cluster) = Cluster::connect() else { return };
    every_way_a_pod_ends(&cluster, GEAR_WORKERS_IMAGE, "gf-gear");
}

/// Scale-in from 4 to 2, a rollout, a `maxAge` recycle, an eviction and the pool's deletion,
/// each while foreground jobs run on workers of `image`: every job runs exactly once.
fn every_way_a_pod_ends(cluster: &Cluster, image: &str, prefix: &str) {
    let fixture = Fixture::new(cluster, prefix);
    let (ns, broker) = (fixture.ns(), fixture.broker());
    let pool = |replicas, revision, max_age| stock_pool(ns, image, replicas, revision, max_age);
    ns.apply(&reader_pod(ns));
    ns.apply(&pool(4, 1, None));
    cluster.eventually(Duration::from_secs(120), "4 stock workers registered", || {
        (worker_pods(broker, false) == 4).then_some(())
    });
    let hooked = ns.kubectl_ok(
        &["get", "deployment", DEPLOYMENT, "-o", "jsonpath={.spec.template.spec.initContainers[0].name}"],
        None,
    );
    assert_eq!(hooked.trim(), "gearfleet-drain", "the pods carry the drain hook");
    ns.kubectl_ok(&["wait", "--for=condition=Ready", "pod/executions", "--timeout=60s"], None);

    // Scale-in from 4 to 2 while two pods are busy on 30 s jobs.
    let jobs = start_jobs(broker, &["scale-in-1", "scale-in-2"], 30);
    wait_running(cluster, broker, 2);
    ns.apply(&pool(2, 1, None));
    cluster.eventually(Duration::from_secs(60), "2 live pods", || (live_pods(ns).len() == 2).then_some(()));
    assert_each_ran_once(ns, jobs, "scale-in");

    // A template change rolls every pod while both are busy.
    cluster.eventually(Duration::from_secs(60), "2 idle workers", || (worker_pods(broker, true) == 2).then_some(()));
    let jobs = start_jobs(broker, &["rollout-1", "rollout-2"], 20);
    wait_running(cluster, broker, 2);
    ns.apply(&pool(2, 2, None));
    assert_each_ran_once(ns, jobs, "rollout");
    ns.wait_for_rollout(DEPLOYMENT, Duration::from_secs(120));

    // maxAge recycling comes due while both pods are busy.
    cluster.eventually(Duration::from_secs(60), "2 idle workers after the rollout", || {
        (worker_pods(broker, true) == 2).then_some(())
    });
    let jobs = start_jobs(broker, &["recycled-1", "recycled-2"], 20);
    wait_running(cluster, broker, 2);
    let before = live_pods(ns);
    ns.apply(&pool(2, 2, Some("5s")));
    assert_each_ran_once(ns, jobs, "maxAge recycle");
    cluster.eventually(Duration::from_secs(60), "a recycled pod replaced", || {
        live_pods(ns).iter().any(|p| !before.contains(p)).then_some(())
    });
    ns.apply(&pool(2, 2, None));

    // An eviction through the Eviction API of the pod that holds a job.
    cluster.eventually(Duration::from_secs(60), "2 workers of the new pods", || {
        (worker_pods(broker, false) == 2).then_some(())
    });
    let jobs = start_jobs(broker, &["evicted-1"], 20);
    wait_running(cluster, broker, 1);
    let busy = cluster.eventually(Duration::from_secs(30), "the busy pod", || {
        let holder = workers(broker).into_iter().find(|w| !w.current_jobs.is_empty())?;
        let ip = holder.address.rsplit_once(':').map(|(ip, _)| ip.trim_matches(['[', ']']).to_string())?;
        pod_with_ip(ns, &ip)
    });
    let eviction = format!(
        r#"{{"apiVersion":"policy/v1","kind":"Eviction","metadata":{{"name":"{busy}","namespace":"{}"}}}}"#,
        ns.name()
    );
    let path = format!("/api/v1/namespaces/{}/pods/{busy}/eviction", ns.name());
    ns.kubectl_ok(&["create", "--raw", &path, "-f", "-"], Some(&eviction));
    cluster.eventually(Duration::from_secs(30), "the evicted pod to terminate", || {
        (!live_pods(ns).contains(&busy)).then_some(())
    });
    assert_each_ran_once(ns, jobs, "eviction");

    // Deleting the pool while two jobs run.
    cluster
        .eventually(Duration::from_secs(90), "2 idle workers again", || (worker_pods(broker, true) == 2).then_some(()));
    let jobs = start_jobs(broker, &["deleted-1", "deleted-2"], 20);
    wait_running(cluster, broker, 2);
    ns.kubectl_ok(&["delete", "workerpool", POOL, "--wait=false"], None);
    assert_each_ran_once(ns, jobs, "pool deletion");
    let _ = ns.kubectl(&["exec", "executions", "--", "rm", "-f", "/executions/log"], None);
}

/// Host firewall rules that drop a pod's traffic (the pod looks alive but neither sends nor
/// receives anything, as after a network partition), removed when dropped.
struct Partition {
    ip: String,
}

impl Partition {
    /// Only on the project's local cluster, whose pods sit on a bridge of this host that
    /// iptables sees (`br_netfilter`); `None` elsewhere (kind runs its node in a container).
    fn cut(cluster: &Cluster, ip: &str) -> Option<Partition> {
        let local = cluster.kubectl(&["get", "node", "localhost"], None).status.success();
        let iptables = std::process::Command::new("iptables").args(["-S", "FORWARD"]).output();
        if !local || !iptables.is_ok_and(|o| o.status.success()) {
            eprintln!("skipping the partition: not the local cluster, or no iptables");
            return None;
        }
        for side in ["-s", "-d"] {
            let ok = std::process::Command::new("iptables")
                .args(["-I", "FORWARD", "1", side, ip, "-j", "DROP"])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "iptables -I FORWARD 1 {side} {ip} -j DROP");
        }
        Some(Partition { ip: ip.to_string() })
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        for side in ["-s", "-d"] {
            let _ =
                std::process::Command::new("iptables").args(["-D", "FORWARD", side, &self.ip, "-j", "DROP"]).status();
        }
    }
}

/// The IP of the worker connection that holds a job, once one does.
fn busy_ip(cluster: &Cluster, broker: &str, not: Option<&str>) -> String {
    cluster.eventually(Duration::from_secs(120), "a worker holding the job", || {
        let holder = workers(broker).into_iter().find(|w| !w.current_jobs.is_empty())?;
        let ip = holder.address.rsplit_once(':').map(|(ip, _)| ip.to_string())?;
        (Some(ip.as_str()) != not).then_some(ip)
    })
}

/// Workers that cannot drain: a pod force-deleted while busy gives its job back within seconds
/// (it runs again, from the start, on the other pod); a pod cut off from the network while busy
/// is dropped by the broker's TCP keepalive within its bound (90 s with the defaults) and its job
/// runs on the other pod.
#[test]
fn jobs_of_force_deleted_and_partitioned_stock_workers_run_again_elsewhere() {
    let Some(cluster) = Cluster::connect() else { return };
    let fixture = Fixture::new(&cluster, "gf-gone");
    let (ns, broker) = (fixture.ns(), fixture.broker());
    ns.apply(&reader_pod(ns));
    ns.apply(&stock_pool(ns, GEARMAN_WORKERS_IMAGE, 2, 1, None));
    cluster.eventually(Duration::from_secs(120), "2 stock workers", || (worker_pods(broker, false) == 2).then_some(()));
    ns.kubectl_ok(&["wait", "--for=condition=Ready", "pod/executions", "--timeout=60s"], None);

    // Force delete: no hook, the container is killed, the connection closes.
    let jobs = start_jobs(broker, &["forced"], 15);
    let first = busy_ip(&cluster, broker, None);
    let pod = pod_with_ip(ns, &first).expect("the busy pod");
    let deleted = std::time::Instant::now();
    ns.kubectl_ok(&["delete", "pod", &pod, "--grace-period=0", "--force"], None);
    let second = busy_ip(&cluster, broker, Some(&first));
    assert!(deleted.elapsed() < Duration::from_secs(15), "re-queued after {:?}", deleted.elapsed());
    assert_ne!(second, first);
    for (key, handle) in jobs {
        let result = handle.join().expect("thread").expect("the job completes on the second try");
        assert_eq!(String::from_utf8_lossy(&result).trim(), format!("done {key}"));
        assert_eq!(executions(ns).get(&key), Some(&2), "it ran again from the start");
    }

    // A partition: the broker's keepalive finds the silent peer.
    cluster.eventually(Duration::from_secs(120), "2 undrained stock workers", || {
        (worker_pods(broker, true) == 2).then_some(())
    });
    let jobs = start_jobs(broker, &["partitioned"], 5);
    let held_by = busy_ip(&cluster, broker, None);
    let Some(partition) = Partition::cut(&cluster, &held_by) else { return };
    let cut = std::time::Instant::now();
    let (key, handle) = jobs.into_iter().next().expect("one job");
    let result = handle.join().expect("thread").expect("the job completes elsewhere");
    let waited = cut.elapsed();
    drop(partition);
    assert_eq!(String::from_utf8_lossy(&result).trim(), format!("done {key}"));
    assert!(waited < Duration::from_secs(120), "the keepalive bound is 90 s; took {waited:?}");
    assert_eq!(executions(ns).get(&key), Some(&2), "the cut-off worker ran it, then the other one");
}
