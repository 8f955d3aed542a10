//! Several brokers, installed with the chart (`broker.replicas=3`) from the project's image:
//!
//! * a pool's stock workers (Python `gear`, given every broker in `GEARMAN_SERVERS`) register on
//!   all three, and a backlog submitted to one broker only scales its function up from zero;
//! * the pod of the leading operator is deleted while clients submit foreground and background
//!   jobs through the client Service without pause: another operator leads within the Lease time
//!   and scales the pool, no acknowledged background job is lost or run twice (executions are
//!   counted on the worker side), no foreground call hangs, and the foreground callers on the
//!   other brokers (each through its broker's own Service) see no error at all;
//! * `helm upgrade` rolls every broker pod under the same load, with the same promises;
//! * a broker pod that holds a backlog is deleted: while it is away the operator's view is partial
//!   and the pool that backlog scaled up is not scaled in;
//! * with 1 broker and with 3, the pod of the leading operator is deleted while 30 Jobs run on
//!   SDK workers: every Job Succeeds, and each ran exactly once (the workers log each execution);
//! * the same with the pod's operator and broker killed (SIGKILL, no SIGTERM): the broker comes
//!   back from its journal holding the attempts that were running for their workers, which take
//!   them back or deliver their outcomes; again every Job Succeeds and each ran exactly once.
//!
//! The tests take turns (each installs a release of its own, with its own brokers).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gearfleet_e2e::crash::sigkill;
use gearfleet_e2e::executions::{counts, reader_pod};
use gearfleet_e2e::gearman::{call, fleet_workers, submit_background};
use gearfleet_e2e::{Cluster, EXAMPLE_WORKERS_IMAGE, GEAR_WORKERS_IMAGE, Namespace};

const CHART: &str = "charts/gearfleet";
/// Not `gf` as in packaging_helm.rs: the release's cluster-scoped objects carry its name.
const RELEASE: &str = "gfb";
/// One test at a time: each runs several brokers and operators on the two cores.
static TURN: Mutex<()> = Mutex::new(());
const STATEFULSET: &str = "gfb-gearfleet";
const FUNCTION: &str = "tally";
const DEPLOYMENT: &str = "brokers-tally";
const BROKERS: usize = 3;
/// The operator's Lease duration (operator/src/main.rs).
const LEASE_SECONDS: u64 = 15;

fn pool(ns: &Namespace<'_>, min_replicas: u32) -> String {
    format!(
        r#"
apiVersion: gearfleet.dev/v1alpha1
kind: WorkerPool
metadata:
  name: brokers
spec:
  template:
    spec:
      containers:
        - name: worker
          image: {GEAR_WORKERS_IMAGE}
          imagePullPolicy: Never
          securityContext: {{runAsUser: 0}}
          env:
            - {{name: GEARFLEET_EXECUTIONS_FILE, value: /executions/log}}
          volumeMounts: [{{name: executions, mountPath: /executions}}]
      volumes:
        - name: executions
          hostPath: {{path: /tmp/gearfleet-e2e/{ns}, type: DirectoryOrCreate}}
  functions:
    - {{name: {FUNCTION}, minReplicas: {min_replicas}, maxReplicas: 3}}
  scaling:
    pollInterval: 2s
    cooldown: 3s
    drainTimeout: 1m
    scaleDown: {{stabilizationWindow: 5s}}
"#,
        ns = ns.name()
    )
}

fn get(ns: &Namespace<'_>, what: &[&str]) -> String {
    String::from_utf8_lossy(&ns.kubectl(what, None).stdout).trim().to_string()
}

/// Each broker pod's Gearman address, from the host.
fn broker_pods(ns: &Namespace<'_>) -> Vec<String> {
    (0..BROKERS)
        .map(|i| {
            let ip = get(ns, &["get", "pod", &format!("{STATEFULSET}-{i}"), "-o", "jsonpath={.status.podIP}"]);
            format!("{ip}:4730")
        })
        .collect()
}

/// Who holds the Lease of `release`, since when, after how many hand-overs.
fn lease(ns: &Namespace<'_>, release: &str) -> String {
    get(
        ns,
        &[
            "get",
            "lease",
            &format!("{release}-gearfleet"),
            "-o",
            "jsonpath={.spec.holderIdentity}/{.spec.acquireTime}/{.spec.leaseTransitions}",
        ],
    )
}

/// The leader's pod in a [`lease`] reading (holderIdentity is `NAME_UID`).
fn leader_pod(lease: &str) -> String {
    lease.split(['/', '_']).next().unwrap_or_default().to_string()
}

/// What the clients of one load run saw.
#[derive(Default)]
struct Seen {
    /// Background jobs whose JOB_CREATED arrived.
    acked: Vec<String>,
    /// Background submissions refused or cut off.
    bg_errors: usize,
    /// Foreground calls that completed: the caller's target, the key and how long the call took.
    completed: Vec<(String, String, Duration)>,
    /// Foreground calls that failed: the caller's target, the error and how long the call took.
    fg_errors: Vec<(String, String, Duration)>,
}

impl Seen {
    fn add(&mut self, other: Seen) {
        self.acked.extend(other.acked);
        self.bg_errors += other.bg_errors;
        self.completed.extend(other.completed);
        self.fg_errors.extend(other.fg_errors);
    }
}

/// Where a foreground caller sends its calls: a name (a Service) and its address from the host.
#[derive(Clone)]
struct Target {
    name: String,
    addr: String,
}

/// The Service `name` of namespace `ns` as a [`Target`].
fn target(ns: &Namespace<'_>, name: &str) -> Target {
    let ip = get(ns, &["get", "service", name, "-o", "jsonpath={.spec.clusterIP}"]);
    Target { name: name.to_string(), addr: format!("{ip}:4730") }
}

/// Clients submitting without pause: one background submitter through `service` (one connection,
/// reconnecting when it is cut), and a foreground caller per target (a new connection per call).
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Seen>>,
    /// Stops [`watch_calls`] once the callers' last calls are over.
    watched: Arc<AtomicBool>,
    watch: std::thread::JoinHandle<()>,
}

/// The call each foreground caller has in progress: its key and when it started.
type InFlight = Arc<Vec<Mutex<Option<(String, Instant)>>>>;

/// Prints, once per call, what every broker of namespace `ns` holds when a foreground call has
/// waited over 15 s: which broker keeps the job, and which workers are connected to each.
fn watch_calls(
    cluster: Cluster,
    ns: String,
    in_flight: InFlight,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut told = std::collections::HashSet::new();
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_secs(1));
            let slow: Vec<String> = in_flight
                .iter()
                .filter_map(|call| call.lock().unwrap_or_else(|e| e.into_inner()).clone())
                .filter(|(key, at)| at.elapsed() > Duration::from_secs(15) && !told.contains(key))
                .map(|(key, _)| key)
                .collect();
            for key in slow {
                told.insert(key.clone());
                let pods = cluster.kubectl(&["-n", &ns, "get", "pods", "-o", "wide"], None);
                let pods = String::from_utf8_lossy(&pods.stdout);
                eprintln!("--- foreground call {key} waiting over 15 s; pods:\n{pods}");
                for pod in
                    pods.lines().filter(|l| l.starts_with(DEPLOYMENT)).filter_map(|l| l.split_whitespace().next())
                {
                    eprintln!("--- {pod} sockets: {}", sockets(&cluster, &ns, pod));
                }
                for line in pods.lines().filter(|l| l.starts_with(STATEFULSET)) {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let Some(ip) = fields.get(5) else { continue };
                    for command in ["status", "workers"] {
                        let reply = gearfleet_e2e::gearman::admin(&format!("{ip}:4730"), command);
                        eprintln!("--- {} {command}:\n{}", fields[0], reply.unwrap_or_else(|| "(no answer)".into()));
                    }
                }
            }
        }
    })
}

/// The TCP sockets of `pod`'s worker container other than listening ones: `address:port state`.
fn sockets(cluster: &Cluster, ns: &str, pod: &str) -> String {
    let out = cluster.kubectl(&["-n", ns, "exec", pod, "-c", "worker", "--", "cat", "/proc/net/tcp"], None);
    let out = String::from_utf8_lossy(&out.stdout);
    let state = |code: &str| {
        match code {
            "01" => "ESTABLISHED",
            "02" => "SYN_SENT",
            "06" => "TIME_WAIT",
            "08" => "CLOSE_WAIT",
            "0A" => "LISTEN",
            other => other,
        }
        .to_string()
    };
    out.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (remote, code) = (fields.get(2)?, fields.get(3)?);
            let (ip, port) = remote.split_once(':')?;
            let ip = u32::from_str_radix(ip, 16).ok()?.to_le_bytes();
            let port = u16::from_str_radix(port, 16).ok()?;
            (*code != "0A").then(|| format!("{}.{}.{}.{}:{port} {}", ip[0], ip[1], ip[2], ip[3], state(code)))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Calls `<phase>-<caller>-N` on `target`, one after the other, until `stop`.
fn foreground(target: &Target, caller: &str, stop: &AtomicBool, in_flight: &Mutex<Option<(String, Instant)>>) -> Seen {
    let mut seen = Seen::default();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("{caller}-{n}");
        n += 1;
        let started = Instant::now();
        *in_flight.lock().unwrap_or_else(|e| e.into_inner()) = Some((key.clone(), started));
        let result = call(&target.addr, FUNCTION, format!("{key} 0").as_bytes(), Duration::from_secs(60));
        *in_flight.lock().unwrap_or_else(|e| e.into_inner()) = None;
        match result {
            Ok(_) => seen.completed.push((target.name.clone(), key, started.elapsed())),
            Err(e) => {
                seen.fg_errors.push((target.name.clone(), e, started.elapsed()));
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    seen
}

impl Load {
    fn start(ns: &Namespace<'_>, service: &Target, callers: &[Target], phase: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let in_flight: InFlight = Arc::new(callers.iter().map(|_| Mutex::new(None)).collect());
        let watched = Arc::new(AtomicBool::new(false));
        let watch = watch_calls(ns.cluster().clone(), ns.name().to_string(), in_flight.clone(), watched.clone());
        let mut threads = Vec::new();
        {
            let (service, stop, phase) = (service.addr.clone(), stop.clone(), phase.to_string());
            threads.push(std::thread::spawn(move || background(&service, &phase, &stop)));
        }
        for (i, target) in callers.iter().enumerate() {
            let (target, stop, in_flight) = (target.clone(), stop.clone(), in_flight.clone());
            let caller = format!("{phase}-fg{i}");
            threads.push(std::thread::spawn(move || foreground(&target, &caller, &stop, &in_flight[i])));
        }
        Load { stop, threads, watched, watch }
    }

    fn stop(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Seen::default();
        for t in self.threads {
            all.add(t.join().expect("load thread"));
        }
        self.watched.store(true, Ordering::Relaxed);
        let _ = self.watch.join();
        all
    }
}

/// Submits background jobs `<phase>-bg-N` one at a time over one connection, reconnecting after
/// an error.
fn background(service: &str, phase: &str, stop: &AtomicBool) -> Seen {
    use gearfleet_proto::{Packet, PacketType};
    use std::io::{Read, Write};
    let mut seen = Seen::default();
    let mut n = 0;
    let mut conn: Option<std::net::TcpStream> = None;
    while !stop.load(Ordering::Relaxed) {
        let stream = match conn.as_mut() {
            Some(s) => s,
            None => match std::net::TcpStream::connect_timeout(
                &service.parse().expect("service address"),
                Duration::from_secs(2),
            ) {
                Ok(s) => {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                    conn.insert(s)
                }
                Err(_) => {
                    seen.bg_errors += 1;
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
            },
        };
        let key = format!("{phase}-bg-{n}");
        let packet =
            Packet::req(PacketType::SubmitJobBg, &[FUNCTION.as_bytes(), key.as_bytes(), format!("{key} 0").as_bytes()]);
        let mut header = [0u8; 12];
        let answer =
            stream.write_all(&packet.to_bytes()).and_then(|()| stream.read_exact(&mut header)).and_then(|()| {
                let size = u32::from_be_bytes([header[8], header[9], header[10], header[11]]) as usize;
                let mut body = vec![0u8; size];
                stream.read_exact(&mut body)?;
                Ok(u32::from_be_bytes([header[4], header[5], header[6], header[7]]))
            });
        match answer {
            Ok(t) if t == PacketType::JobCreated as u32 => {
                seen.acked.push(key);
                n += 1;
            }
            _ => {
                // Refused (SHUTTING_DOWN) or cut off: the job may or may not be in; a new key.
                seen.bg_errors += 1;
                n += 1;
                conn = None;
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    seen
}

/// Prints what tells why `keys` ran twice: the worker pods that ran them, and those workers'
/// logs (stock `gear` logs every ERROR packet it receives, upon which it drops that connection),
/// the previous container's too when one restarted.
fn explain_second_runs(ns: &Namespace<'_>, keys: &[&str]) {
    let log = get(ns, &["exec", "executions", "--", "cat", "/executions/log"]);
    for line in log.lines().filter(|l| keys.iter().any(|k| l.split_whitespace().next() == Some(*k))) {
        eprintln!("execution: {line}");
    }
    let selector = format!("gearfleet.dev/function={FUNCTION}");
    let pods = get(ns, &["get", "pods", "-l", &selector, "-o", "jsonpath={.items[*].metadata.name}"]);
    for pod in pods.split_whitespace() {
        eprintln!("--- logs of {pod}:\n{}", get(ns, &["logs", pod, "-c", "worker", "--tail=200"]));
        let previous = get(ns, &["logs", pod, "-c", "worker", "--previous", "--tail=200"]);
        if !previous.is_empty() {
            eprintln!("--- previous container of {pod}:\n{previous}");
        }
    }
}

/// Every acknowledged background job and every completed call ran exactly once, and no call hung.
fn assert_exactly_once(cluster: &Cluster, ns: &Namespace<'_>, seen: &Seen, what: &str) {
    assert!(seen.acked.len() > 20, "{what}: too few background jobs acknowledged: {}", seen.acked.len());
    assert!(seen.completed.len() > 20, "{what}: too few foreground calls completed: {}", seen.completed.len());
    for (target, error, took) in &seen.fg_errors {
        assert!(*took < Duration::from_secs(30), "{what}: a foreground call to {target} hung for {took:?}: {error}");
    }
    let slowest = seen.completed.iter().map(|(.., took)| *took).max().unwrap_or_default();
    for (target, key, took) in &seen.completed {
        assert!(*took < Duration::from_secs(30), "{what}: foreground call {key} to {target} took {took:?}");
    }
    let counts =
        cluster.eventually(Duration::from_secs(180), &format!("{what}: every acknowledged job to run"), || {
            let counts = counts(ns)?;
            let missing = seen.acked.iter().filter(|k| !counts.contains_key(*k)).count();
            if missing > 0 {
                eprintln!("{what}: {missing} of {} acknowledged background jobs not run yet", seen.acked.len());
                return None;
            }
            Some(counts)
        });
    let twice: Vec<(&String, &usize)> = counts.iter().filter(|(k, n)| k.starts_with(what) && **n > 1).collect();
    if !twice.is_empty() {
        let keys: Vec<&str> = twice.iter().map(|(k, _)| k.as_str()).collect();
        explain_second_runs(ns, &keys);
    }
    assert!(twice.is_empty(), "{what}: jobs ran more than once: {twice:?}");
    for (_, key, _) in &seen.completed {
        assert_eq!(counts.get(key), Some(&1), "{what}: completed call {key} ran {:?} times", counts.get(key));
    }
    eprintln!(
        "{what}: {} background jobs acknowledged ({} submissions refused or cut), {} calls completed (the slowest in {slowest:?}), {} failed fast; each ran once",
        seen.acked.len(),
        seen.bg_errors,
        seen.completed.len(),
        seen.fg_errors.len()
    );
}

/// Prints the namespace (operators, brokers, workers) when the test fails, and uninstalls the
/// release in any case (its cluster-scoped objects outlive the namespace).
struct Release<'a, 'c>(&'a Namespace<'c>, &'static str);

impl Drop for Release<'_, '_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.dump();
        }
        let ns = self.0;
        let _ = ns.cluster().helm(&["uninstall", self.1, "--namespace", ns.name(), "--wait", "--timeout", "3m"]);
    }
}

/// Installs the chart as `release` in `ns`, watching `ns`, with `brokers` brokers.
fn install(cluster: &Cluster, ns: &Namespace<'_>, release: &str, brokers: usize) {
    let watch = format!("operator.watchNamespace={}", ns.name());
    let replicas = format!("broker.replicas={brokers}");
    cluster.helm_ok(&[
        "install",
        release,
        CHART,
        "--namespace",
        ns.name(),
        "--set",
        &watch,
        "--set",
        &replicas,
        "--set",
        "broker.shutdownGrace=10s",
        "--wait",
        "--timeout",
        "5m",
    ]);
}

#[test]
fn three_brokers_keep_gearman_up_through_a_leader_loss_and_an_upgrade() {
    let Some(cluster) = Cluster::connect() else { return };
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    cluster.install_crds();
    let ns = cluster.namespace("gf-brokers");
    let _release = Release(&ns, RELEASE);
    install(&cluster, &ns, RELEASE, BROKERS);
    let brokers = broker_pods(&ns);
    ns.apply(&reader_pod(&ns));
    ns.apply(&pool(&ns, 0));
    ns.kubectl_ok(&["wait", "--for=condition=Ready", "pod/executions", "--timeout=60s"], None);
    cluster.eventually(Duration::from_secs(60), "the pool's Deployment at zero", || {
        (ns.replicas(DEPLOYMENT)? == 0).then_some(())
    });
    let servers = get(
        &ns,
        &[
            "get",
            "deployment",
            DEPLOYMENT,
            "-o",
            "jsonpath={.spec.template.spec.containers[0].env[?(@.name==\"GEARMAN_SERVERS\")].value}",
        ],
    );
    let expected: Vec<String> = (0..BROKERS).map(|i| format!("{STATEFULSET}-{i}.{}.svc:4730", ns.name())).collect();
    assert_eq!(servers, expected.join(","), "GEARMAN_SERVERS lists every broker pod");

    // A backlog on the third broker only: the function scales up from zero, and its workers
    // register on all three brokers.
    submit_background(&brokers[2], FUNCTION, "start", "start 3", 4);
    cluster.eventually(Duration::from_secs(60), "the backlog on one broker to scale the function up", || {
        (ns.replicas(DEPLOYMENT)? > 0).then_some(())
    });
    cluster.eventually(Duration::from_secs(120), "a worker registered on each of the three brokers", || {
        brokers
            .iter()
            .all(|b| fleet_workers(b).is_some_and(|w| w.iter().any(|w| w.functions.iter().any(|f| f == FUNCTION))))
            .then_some(())
    });
    cluster.eventually(Duration::from_secs(90), "the four start jobs to run", || {
        (counts(&ns)?.get("start").copied()? == 4).then_some(())
    });

    // The leader's pod deleted under load.
    ns.apply(&pool(&ns, 2));
    cluster.eventually(Duration::from_secs(120), "two ready workers", || {
        let ready = get(&ns, &["get", "deployment", DEPLOYMENT, "-o", "jsonpath={.status.readyReplicas}"]);
        (ready == "2").then_some(())
    });
    let before = lease(&ns, RELEASE);
    let leader = leader_pod(&before);
    assert!(leader.starts_with(STATEFULSET), "an operator leads: {before}");
    // Two callers through the client Service, and one on each broker the deletion spares (through
    // that broker's own Service): those must see no error at all.
    let service = target(&ns, "gfb-gearfleet-broker");
    let spared: Vec<Target> = (0..BROKERS)
        .map(|i| format!("{STATEFULSET}-{i}"))
        .filter(|pod| *pod != leader)
        .map(|pod| target(&ns, &pod))
        .collect();
    let callers = [vec![service.clone(), service.clone()], spared.clone()].concat();
    let load = Load::start(&ns, &service, &callers, "leader");
    std::thread::sleep(Duration::from_secs(5));
    let deleted = Instant::now();
    ns.kubectl_ok(&["delete", "pod", &leader, "--wait=false"], None);
    let took = cluster.eventually(Duration::from_secs(90), "a new leader", || {
        let now = lease(&ns, RELEASE);
        (now != before && !now.starts_with('/')).then(|| deleted.elapsed())
    });
    eprintln!("new leader after {took:?}: {}", lease(&ns, RELEASE));
    assert!(took < Duration::from_secs(LEASE_SECONDS + 10), "the new leader took {took:?}");
    // The new leader reconciles: a raised minimum is applied.
    ns.apply(&pool(&ns, 3));
    cluster.eventually(Duration::from_secs(60), "the new leader to scale the pool to 3", || {
        (ns.replicas(DEPLOYMENT)? == 3).then_some(())
    });
    ns.kubectl_ok(&["rollout", "status", &format!("statefulset/{STATEFULSET}"), "--timeout=180s"], None);
    std::thread::sleep(Duration::from_secs(10));
    let seen = load.stop();
    for spared in &spared {
        let completed = seen.completed.iter().filter(|(t, ..)| *t == spared.name).count();
        let errors: Vec<_> = seen.fg_errors.iter().filter(|(t, ..)| *t == spared.name).collect();
        assert!(errors.is_empty(), "foreground calls on {} (not deleted) failed: {errors:?}", spared.name);
        assert!(completed > 20, "too few foreground calls on {} completed: {completed}", spared.name);
        eprintln!("leader: {completed} foreground calls on {} (not deleted), none failed", spared.name);
    }
    assert_exactly_once(&cluster, &ns, &seen, "leader");

    // helm upgrade rolling every broker pod, under the same load.
    let load = Load::start(&ns, &service, &[service.clone(), service.clone()], "upgrade");
    std::thread::sleep(Duration::from_secs(5));
    cluster.helm_ok(&[
        "upgrade",
        RELEASE,
        CHART,
        "--namespace",
        ns.name(),
        "--reuse-values",
        "--set-string",
        "podAnnotations.gearfleet-e2e/revision=2",
        "--wait",
        "--timeout",
        "6m",
    ]);
    ns.kubectl_ok(&["rollout", "status", &format!("statefulset/{STATEFULSET}"), "--timeout=300s"], None);
    std::thread::sleep(Duration::from_secs(10));
    let seen = load.stop();
    assert_eq!(ns.replicas(DEPLOYMENT), Some(3), "the pool kept its size through the roll");
    assert_exactly_once(&cluster, &ns, &seen, "upgrade");

    ns.kubectl_ok(&["delete", "workerpool", "brokers", "--wait=true"], None);
}

/// A broker away (its pod deleted) hides its backlog from the operator: the view is partial, and
/// the pool that this backlog scaled up is not scaled in meanwhile.
#[test]
fn a_partial_view_does_not_scale_in_a_pool_that_a_missing_brokers_backlog_scaled_up() {
    let Some(cluster) = Cluster::connect() else { return };
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    cluster.install_crds();
    let ns = cluster.namespace("gf-partial");
    let release = "gfp";
    let _release = Release(&ns, release);
    install(&cluster, &ns, release, BROKERS);
    ns.apply(&reader_pod(&ns));
    ns.apply(&pool(&ns, 1));
    ns.wait_for_rollout(DEPLOYMENT, Duration::from_secs(180));

    // A backlog on a broker that does not hold the leader (a leader change would pause every
    // reconcile, proving nothing): 120 jobs of 3 s keep three workers busy for two minutes.
    let leader = leader_pod(&lease(&ns, release));
    let victim = (0..BROKERS)
        .map(|i| format!("{release}-gearfleet-{i}"))
        .find(|pod| *pod != leader)
        .expect("a broker pod without the leader");
    let ip = get(&ns, &["get", "pod", &victim, "-o", "jsonpath={.status.podIP}"]);
    submit_background(&format!("{ip}:4730"), FUNCTION, "backlog", "backlog 3", 120);
    cluster.eventually(Duration::from_secs(120), "the backlog to scale the pool to 3 ready workers", || {
        let ready = get(&ns, &["get", "deployment", DEPLOYMENT, "-o", "jsonpath={.status.readyReplicas}"]);
        (ready == "3").then_some(())
    });
    std::thread::sleep(Duration::from_secs(5));

    // Its broker goes away and comes back; meanwhile the pool must stay at 3.
    let uid = get(&ns, &["get", "pod", &victim, "-o", "jsonpath={.metadata.uid}"]);
    ns.kubectl_ok(&["delete", "pod", &victim, "--wait=false"], None);
    let started = Instant::now();
    let (mut partial_seen, mut lowest, mut back_at) = (false, 3, None::<Instant>);
    while started.elapsed() < Duration::from_secs(180) {
        if let Some(replicas) = ns.replicas(DEPLOYMENT) {
            lowest = lowest.min(replicas);
        }
        let partial = get(&ns, &["get", "workerpool", "brokers", "-o", "jsonpath={.status.functions[0].partial}"]);
        partial_seen |= partial == "true";
        let now_uid = get(&ns, &["get", "pod", &victim, "-o", "jsonpath={.metadata.uid}"]);
        let ready =
            get(&ns, &["get", "pod", &victim, "-o", r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#]);
        if back_at.is_none() && now_uid != uid && !now_uid.is_empty() && ready == "True" {
            back_at = Some(Instant::now());
        }
        // Once back, a little longer: the first full view must not scale in either.
        if back_at.is_some_and(|t| t.elapsed() > Duration::from_secs(10)) {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let away = back_at.map(|t| t.duration_since(started));
    eprintln!(
        "partial view: broker {victim} away for {away:?}; partial seen: {partial_seen}; lowest replicas: {lowest}"
    );
    assert!(away.is_some(), "broker {victim} did not come back within 3 minutes");
    assert!(partial_seen, "the operator's view of {FUNCTION} was never partial while {victim} was away");
    assert_eq!(lowest, 3, "the pool was scaled in on a partial view");
    ns.kubectl_ok(&["delete", "workerpool", "brokers", "--wait=true"], None);
}

#[test]
fn jobs_run_once_when_the_leaders_pod_goes_away_with_one_broker() {
    jobs_survive_the_leaders_pod(1, "gfj1", Ending::Deleted);
}

#[test]
fn jobs_run_once_when_the_leaders_pod_goes_away_with_three_brokers() {
    jobs_survive_the_leaders_pod(3, "gfj3", Ending::Deleted);
}

#[test]
fn jobs_run_once_when_the_leaders_pod_crashes_with_one_broker() {
    jobs_survive_the_leaders_pod(1, "gfk1", Ending::Killed);
}

#[test]
fn jobs_run_once_when_the_leaders_pod_crashes_with_three_brokers() {
    jobs_survive_the_leaders_pod(3, "gfk3", Ending::Killed);
}

/// How the leader's pod goes away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// `kubectl delete pod`: SIGTERM, the shutdown grace, a new pod.
    Deleted,
    /// Its operator and broker containers SIGKILLed at once: restarted in place, from the journal.
    Killed,
}

/// 30 Jobs of 3 s on three SDK workers; the leading operator's pod goes away once some run.
fn jobs_survive_the_leaders_pod(brokers: usize, release: &'static str, ending: Ending) {
    let Some(cluster) = Cluster::connect() else { return };
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    cluster.install_crds();
    let ns = cluster.namespace(&format!("gf-{release}"));
    let _release = Release(&ns, release);
    install(&cluster, &ns, release, brokers);
    ns.apply(&format!(
        r#"
apiVersion: gearfleet.dev/v1alpha1
kind: WorkerPool
metadata:
  name: batch
spec:
  template:
    spec:
      terminationGracePeriodSeconds: 5
      containers:
        - name: worker
          image: {EXAMPLE_WORKERS_IMAGE}
          imagePullPolicy: Never
  functions:
    - {{name: sleep, minReplicas: 3, maxReplicas: 3}}
"#
    ));
    cluster.eventually(Duration::from_secs(60), "the pool's Deployment", || ns.replicas("batch-sleep"));
    ns.wait_for_rollout("batch-sleep", Duration::from_secs(180));
    let jobs: String = (0..30)
        .map(|i| {
            format!(
                "apiVersion: gearfleet.dev/v1alpha1\nkind: Job\nmetadata:\n  name: job-{i}\nspec:\n  function: sleep\n  payload: \"3000\"\n---\n"
            )
        })
        .collect();
    ns.apply(&jobs);
    cluster.eventually(Duration::from_secs(90), "some Jobs to be Running", || {
        let phases = get(&ns, &["get", "gj", "-o", "jsonpath={.items[*].status.phase}"]);
        (phases.split_whitespace().filter(|p| *p == "Running").count() >= 2).then_some(())
    });
    let holder = leader_pod(&lease(&ns, release));
    assert!(holder.starts_with(release), "an operator leads: {holder}");
    match ending {
        Ending::Deleted => {
            ns.kubectl_ok(&["delete", "pod", &holder, "--wait=false"], None);
        }
        Ending::Killed => {
            // Kill it while a worker runs an attempt that its broker holds.
            let on_it = format!("H:{holder}:");
            cluster.eventually(Duration::from_secs(90), "a Job running on the leader's broker", || {
                let rows = get(
                    &ns,
                    &["get", "gj", "-o", r#"jsonpath={range .items[*]}{.status.phase} {.status.handle}{"\n"}{end}"#],
                );
                rows.lines().any(|r| r.starts_with("Running ") && r.contains(&on_it)).then_some(())
            });
            eprintln!("killing the operator and broker of {holder}");
            sigkill(&ns, &holder, "broker");
            sigkill(&ns, &holder, "operator");
        }
    }
    cluster.eventually(Duration::from_secs(300), "all 30 Jobs to succeed", || {
        let phases = get(&ns, &["get", "gj", "-o", "jsonpath={.items[*].status.phase}"]);
        assert!(!phases.contains("Failed"), "a Job failed: {phases}");
        (phases.split_whitespace().filter(|p| *p == "Succeeded").count() == 30).then_some(())
    });
    // Each ran exactly once: one `exec` line per Job (its UID is the unique key) over the workers.
    let logs =
        ns.kubectl_ok(&["logs", "-l", "gearfleet.dev/function=sleep", "--tail=-1", "--max-log-requests=10"], None);
    let mut runs: HashMap<&str, usize> = HashMap::new();
    for line in logs.lines().filter(|l| l.starts_with("exec function=sleep ")) {
        let unique = line.split_whitespace().find_map(|w| w.strip_prefix("unique=")).unwrap_or_default();
        *runs.entry(unique).or_default() += 1;
    }
    let uids = get(&ns, &["get", "gj", "-o", "jsonpath={.items[*].metadata.uid}"]);
    let twice: Vec<(&str, usize)> =
        uids.split_whitespace().map(|u| (u, runs.get(u).copied().unwrap_or(0))).filter(|(_, n)| *n != 1).collect();
    assert!(twice.is_empty(), "{brokers} broker(s): Jobs not run exactly once (uid, runs): {twice:?}");
    // Where the attempts ran: the broker's name is the host part of each Job's handle.
    let handles = get(&ns, &["get", "gj", "-o", "jsonpath={.items[*].status.handle}"]);
    let mut per_broker: HashMap<&str, usize> = HashMap::new();
    for h in handles.split_whitespace() {
        let host = h.strip_prefix("H:").and_then(|rest| rest.rsplit_once(':')).map_or(h, |(host, _)| host);
        *per_broker.entry(host).or_default() += 1;
    }
    eprintln!("{brokers} broker(s): Jobs' last attempts per broker: {per_broker:?}");
    assert_eq!(per_broker.len(), brokers, "attempts go round every broker");
    if ending == Ending::Killed {
        // The crash hit running attempts: the restarted broker held some for their workers.
        let log = ns.kubectl_ok(&["logs", &holder, "-c", "broker"], None);
        let held: usize = log
            .lines()
            .filter(|l| l.contains("journal: recovered"))
            .find_map(|l| {
                // JSON (the chart's default) or text logs.
                let (_, rest) = l.split_once("\"held_for_workers\":").or_else(|| l.split_once("held_for_workers="))?;
                rest.chars().take_while(char::is_ascii_digit).collect::<String>().parse().ok()
            })
            .unwrap_or_else(|| panic!("the restarted broker's recovery line is missing:\n{log}"));
        let taken_back = log.lines().filter(|l| l.contains("a resuming worker took its job back")).count();
        eprintln!(
            "{brokers} broker(s): the restarted broker held {held} running attempts; {taken_back} taken back by their workers"
        );
        assert!(held > 0, "the SIGKILL hit no running attempt on the broker; the test proves nothing");
    }
    eprintln!(
        "{brokers} broker(s): 30 Jobs Succeeded, each ran once, the leader's pod {holder} went away midway ({ending:?})"
    );
    ns.kubectl_ok(&["delete", "gj", "--all", "--wait=true"], None);
    ns.kubectl_ok(&["delete", "workerpool", "batch", "--wait=true"], None);
}
