//! One Gearman client connection to a broker, shared by every Job: submits attempts as
//! foreground jobs, follows their WORK_* packets by handle, and accumulates an [`Observation`] per
//! attempt's unique key for the reconciler. It asks the broker to retain outcomes
//! (`OPTION_REQ` [`RETAIN_OUTCOMES`]), so an attempt resubmitted after a lost connection or an
//! operator restart gets the outcome of its run instead of a second run.
//!
//! With several brokers it uses one at a time and moves to the next when that one cannot be
//! reached (after one quick retry of a broker it was connected to), resubmitting every unfinished
//! attempt there.
//!
//! Every change to an observation sends the Job's reference on the trigger channel, which the Job
//! controller consumes with `reconcile_on`: no per-Job polling.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use gearfleet_crd::Job;
use gearfleet_crd::job::{DATA_MAX_BYTES, MAX_WARNINGS, Priority};
use gearfleet_proto::options::{EXCEPTIONS, RETAIN_OUTCOMES};
use gearfleet_proto::{Codec, Frame, Packet, PacketType};
use kube::runtime::reflector::ObjectRef;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::{BytesCodec, FramedRead, FramedWrite};

use super::state::{AttemptOutcome, Observation};

#[derive(Debug)]
struct Tracked {
    job: ObjectRef<Job>,
    function: String,
    payload: Bytes,
    priority: Priority,
    obs: Observation,
}

#[derive(Debug, Default)]
struct Inner {
    by_unique: HashMap<String, Tracked>,
    by_handle: HashMap<String, String>,
    /// Uniques whose JOB_CREATED has not arrived yet on the current connection, in order.
    awaiting_created: VecDeque<String>,
    connected: bool,
    /// Shutting down: nothing more is submitted (see [`Runner::stop_submitting`]).
    closed: bool,
}

/// Handle to the runner task.
#[derive(Clone)]
pub struct Runner {
    inner: Arc<Mutex<Inner>>,
    submit: mpsc::UnboundedSender<String>,
}

impl Runner {
    /// Starts the connection task for the brokers at `addrs` (one at a time, in turn); changed
    /// Jobs are sent on `trigger`.
    pub fn start(addrs: Vec<String>, trigger: mpsc::UnboundedSender<ObjectRef<Job>>) -> Runner {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let (submit, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(addrs, inner.clone(), rx, trigger));
        Runner { inner, submit }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Submits an attempt and follows it. Idempotent: an attempt already followed is left alone.
    /// Ignored once [`stop_submitting`](Self::stop_submitting) was called (the attempt stays
    /// unfollowed, so the next leader submits it).
    pub fn submit(&self, job: ObjectRef<Job>, unique: &str, function: &str, payload: Bytes, priority: Priority) {
        let mut inner = self.lock();
        if inner.closed || inner.by_unique.contains_key(unique) {
            return;
        }
        let tracked = Tracked { job, function: function.to_string(), payload, priority, obs: Observation::default() };
        inner.by_unique.insert(unique.to_string(), tracked);
        drop(inner);
        // The connection task submits it now, or after it (re)connects.
        let _ = self.submit.send(unique.to_string());
    }

    /// What was observed for an attempt, if it is followed.
    pub fn observation(&self, unique: &str) -> Option<Observation> {
        self.lock().by_unique.get(unique).map(|t| t.obs.clone())
    }

    /// Stops following an attempt.
    pub fn forget(&self, unique: &str) {
        let mut inner = self.lock();
        if let Some(t) = inner.by_unique.remove(unique)
            && let Some(h) = &t.obs.handle
        {
            inner.by_handle.remove(h);
        }
    }

    /// The handle of a followed attempt (for cancelling it through the admin protocol).
    pub fn handle(&self, unique: &str) -> Option<String> {
        self.lock().by_unique.get(unique).and_then(|t| t.obs.handle.clone())
    }

    /// Attempts followed right now.
    pub fn followed(&self) -> usize {
        self.lock().by_unique.len()
    }

    /// Whether the broker connection is up.
    pub fn connected(&self) -> bool {
        self.lock().connected
    }

    /// Stops submitting (the operator is shutting down): new attempts are ignored and nothing is
    /// resubmitted after a lost connection, while the outcomes of attempts already submitted are
    /// still followed.
    pub fn stop_submitting(&self) {
        self.lock().closed = true;
    }

    /// The handles of followed attempts that no worker has taken yet.
    pub fn queued_handles(&self) -> Vec<(String, String)> {
        let g = self.lock();
        let queued = g.by_unique.iter().filter(|(_, t)| !t.obs.started && t.obs.outcome.is_none());
        queued.filter_map(|(u, t)| Some((u.clone(), t.obs.handle.clone()?))).collect()
    }

    /// Attempts a worker has taken and not finished (what a shutting-down operator waits for).
    pub fn running(&self) -> usize {
        self.lock().by_unique.values().filter(|t| t.obs.started && t.obs.outcome.is_none()).count()
    }
}

/// The wire protocol's priority for a Job's API priority.
fn wire_priority(priority: Priority) -> gearfleet_proto::Priority {
    match priority {
        Priority::High => gearfleet_proto::Priority::High,
        Priority::Normal => gearfleet_proto::Priority::Normal,
        Priority::Low => gearfleet_proto::Priority::Low,
    }
}

/// The foreground submission of an attempt (the runner follows its WORK_* packets).
fn submit_packet(unique: &str, t: &Tracked) -> Packet {
    let ptype = wire_priority(t.priority).submit_type(false);
    Packet::req(ptype, &[t.function.as_bytes(), unique.as_bytes(), &t.payload])
}

/// How long a connection attempt to one broker may take before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

async fn run(
    addrs: Vec<String>,
    inner: Arc<Mutex<Inner>>,
    mut submits: mpsc::UnboundedReceiver<String>,
    trigger: mpsc::UnboundedSender<ObjectRef<Job>>,
) {
    let mut backoff = Duration::from_millis(200);
    let mut rotation = Rotation::new(addrs.len());
    loop {
        let Some(addr) = addrs.get(rotation.at) else { return };
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                backoff = Duration::from_millis(200);
                let _ = stream.set_nodelay(true);
                tracing::info!(broker = %addr, "job runner connected");
                let reason = serve(stream, &inner, &mut submits, &trigger).await;
                tracing::warn!(broker = %addr, reason = %reason, "job runner connection lost; resubmitting on reconnect");
                rotation.lost();
            }
            Ok(Err(e)) => {
                tracing::warn!(broker = %addr, error = %e, "job runner cannot reach the broker");
                rotation.failed();
            }
            Err(_) => {
                tracing::warn!(broker = %addr, "job runner: connecting to the broker timed out");
                rotation.failed();
            }
        }
        {
            let mut g = inner.lock().unwrap_or_else(|e| e.into_inner());
            g.connected = false;
            g.awaiting_created.clear();
            g.by_handle.clear();
            // Handles belong to the lost connection's broker; the attempts are resubmitted.
            for t in g.by_unique.values_mut() {
                t.obs.handle = None;
            }
        }
        if submits.is_closed() {
            return;
        }
        if rotation.round_failed() {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        } else if rotation.retrying {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Which broker the runner connects to next (pure): after a lost connection the same one once
/// more (it may only have been a blip, and it retains the outcomes of attempts submitted there),
/// after a failed attempt the next one; a whole round of failures calls for a pause.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rotation {
    brokers: usize,
    /// The broker to connect to next.
    at: usize,
    /// Failed attempts in a row.
    failures: usize,
    /// The next attempt is the quick retry of a broker just lost.
    retrying: bool,
}

impl Rotation {
    fn new(brokers: usize) -> Rotation {
        Rotation { brokers, at: 0, failures: 0, retrying: false }
    }

    fn lost(&mut self) {
        self.failures = 0;
        self.retrying = true;
    }

    fn failed(&mut self) {
        self.failures += 1;
        self.retrying = false;
        self.at = (self.at + 1) % self.brokers.max(1);
    }

    /// Every broker failed since the last connection (or since the last pause).
    fn round_failed(&mut self) -> bool {
        if self.failures >= self.brokers.max(1) {
            self.failures = 0;
            return true;
        }
        false
    }
}

/// Serves one connection until it fails; returns why.
async fn serve(
    stream: TcpStream,
    inner: &Arc<Mutex<Inner>>,
    submits: &mut mpsc::UnboundedReceiver<String>,
    trigger: &mpsc::UnboundedSender<ObjectRef<Job>>,
) -> String {
    let (read, write) = stream.into_split();
    let mut frames = FramedRead::new(read, Codec::client());
    let mut out = FramedWrite::new(write, BytesCodec::new());
    let mut hello = Packet::req(PacketType::OptionReq, &[EXCEPTIONS]).to_bytes().to_vec();
    hello.extend_from_slice(&Packet::req(PacketType::OptionReq, &[RETAIN_OUTCOMES]).to_bytes());
    // Everything followed but unfinished goes (again) to this connection.
    let resubmit: Vec<Bytes> = {
        let mut g = inner.lock().unwrap_or_else(|e| e.into_inner());
        g.connected = true;
        let uniques: Vec<String> = if g.closed {
            Vec::new()
        } else {
            g.by_unique.iter().filter(|(_, t)| t.obs.outcome.is_none()).map(|(u, _)| u.clone()).collect()
        };
        let packets = uniques.iter().map(|u| submit_packet(u, &g.by_unique[u]).to_bytes()).collect();
        g.awaiting_created.extend(uniques);
        packets
    };
    // Submissions queued while disconnected are covered by the resubmission above.
    while submits.try_recv().is_ok() {}
    if let Err(e) = out.send(Bytes::from(hello)).await {
        return e.to_string();
    }
    for p in resubmit {
        if let Err(e) = out.send(p).await {
            return e.to_string();
        }
    }
    loop {
        tokio::select! {
            unique = submits.recv() => {
                let Some(unique) = unique else { return "runner stopped".into() };
                let packet = {
                    let mut g = inner.lock().unwrap_or_else(|e| e.into_inner());
                    let Some(t) = g.by_unique.get(&unique) else { continue };
                    let packet = submit_packet(&unique, t).to_bytes();
                    g.awaiting_created.push_back(unique);
                    packet
                };
                if let Err(e) = out.send(packet).await {
                    return e.to_string();
                }
            }
            frame = frames.next() => {
                match frame {
                    Some(Ok(Frame::Packet(p))) => handle_packet(inner, trigger, &p),
                    Some(Ok(Frame::Admin(_))) => {}
                    Some(Err(e)) => return e.to_string(),
                    None => return "closed by the broker".into(),
                }
            }
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn handle_packet(inner: &Arc<Mutex<Inner>>, trigger: &mpsc::UnboundedSender<ObjectRef<Job>>, p: &Packet) {
    let mut g = inner.lock().unwrap_or_else(|e| e.into_inner());
    let g = &mut *g;
    match p.ptype {
        PacketType::JobCreated => {
            let Some(unique) = g.awaiting_created.pop_front() else { return };
            let handle = text(p.arg(0));
            if let Some(t) = g.by_unique.get_mut(&unique) {
                t.obs.handle = Some(handle.clone());
                g.by_handle.insert(handle, unique);
                let _ = trigger.send(t.job.clone());
            }
        }
        PacketType::Error => {
            let code = text(p.arg(0));
            if code == "UNKNOWN_OPTION" {
                tracing::error!(
                    "the broker does not retain outcomes (gearfleet-broker with --retained-outcomes > 0 is \
                                 needed); Jobs may run twice across operator restarts"
                );
                return;
            }
            // A refused submission (e.g. QUEUE_ERROR): stop following it; the Job is tried again.
            let Some(unique) = g.awaiting_created.pop_front() else { return };
            tracing::warn!(unique = %unique, code = %code, message = %text(p.arg(1)), "broker refused a job submission");
            if let Some(t) = g.by_unique.remove(&unique) {
                let trigger = trigger.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    let _ = trigger.send(t.job);
                });
            }
        }
        PacketType::OptionRes => {}
        PacketType::WorkStatus
        | PacketType::WorkData
        | PacketType::WorkWarning
        | PacketType::WorkComplete
        | PacketType::WorkFail
        | PacketType::WorkException => {
            let handle = text(p.arg(0));
            let Some(unique) = g.by_handle.get(&handle).cloned() else { return };
            let Some(t) = g.by_unique.get_mut(&unique) else { return };
            let obs = &mut t.obs;
            match p.ptype {
                PacketType::WorkStatus => {
                    obs.started = true;
                    let n = text(p.arg(1)).trim().parse().unwrap_or(0);
                    let d = text(p.arg(2)).trim().parse().unwrap_or(0);
                    if (n, d) != (0, 0) || obs.progress.is_some() {
                        obs.progress = Some((n, d));
                    }
                }
                PacketType::WorkData => {
                    obs.started = true;
                    let room = (DATA_MAX_BYTES + 1).saturating_sub(obs.data.len());
                    let chunk = p.arg(1);
                    obs.data.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    obs.data_truncated |= chunk.len() > room;
                }
                PacketType::WorkWarning => {
                    obs.started = true;
                    obs.warnings.push(text(p.arg(1)));
                    if obs.warnings.len() > MAX_WARNINGS {
                        obs.warnings.remove(0);
                    }
                }
                PacketType::WorkComplete => obs.outcome = Some(AttemptOutcome::Complete(p.arg(1).to_vec())),
                PacketType::WorkFail => obs.outcome = Some(AttemptOutcome::Fail),
                _ => obs.outcome = Some(AttemptOutcome::Exception(text(p.arg(1)))),
            }
            if obs.outcome.is_some() {
                obs.started = true;
                g.by_handle.remove(&handle);
            }
            let _ = trigger.send(t.job.clone());
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against real brokers: the first one listed is down, so the attempt goes to the second; when
    /// that one stops, the runner moves on to a third and submits the attempt there again.
    #[tokio::test]
    async fn attempts_go_to_a_live_broker_and_move_when_it_stops() {
        use crate::broker_client::BrokerClient;
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let dead = closed.local_addr().expect("addr").to_string();
        drop(closed);
        let second = gearfleet_broker::start(gearfleet_broker::Config::for_tests()).await.expect("broker");
        let third = gearfleet_broker::start(gearfleet_broker::Config::for_tests()).await.expect("broker");
        let (a2, a3) = (second.gearman_addr.to_string(), third.gearman_addr.to_string());
        let (trigger, _triggers) = mpsc::unbounded_channel();
        let runner = Runner::start(vec![dead, a2.clone(), a3.clone()], trigger);
        let job = ObjectRef::<Job>::new("j").within("ns");
        runner.submit(job, "u-1", "resize", Bytes::from_static(b"x"), Priority::Normal);
        let queued_on = |addr: String| async move {
            for _ in 0..100 {
                let stats = BrokerClient::new(addr.clone()).fleet_status().await.unwrap_or_default();
                if stats.iter().any(|s| s.function == "resize" && s.queued_total() == 1) {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            false
        };
        assert!(queued_on(a2).await, "submitted to the second broker, the first being down");
        assert!(runner.handle("u-1").is_some());
        second.stop().await;
        assert!(queued_on(a3).await, "submitted again to the third once the second stopped");
        third.stop().await;
    }

    /// A runner told to stop submitting ignores new attempts but still follows the running one to
    /// its outcome, and counts it as running until then.
    #[tokio::test]
    async fn a_stopped_runner_submits_nothing_but_follows_running_attempts_to_their_end() {
        use gearfleet_proto::Codec;
        use tokio::io::AsyncWriteExt;
        let broker = gearfleet_broker::start(gearfleet_broker::Config::for_tests()).await.expect("broker");
        let addr = broker.gearman_addr.to_string();
        let (trigger, _triggers) = mpsc::unbounded_channel();
        let runner = Runner::start(vec![addr.clone()], trigger);
        let job = ObjectRef::<Job>::new("j").within("ns");
        runner.submit(job.clone(), "u-1", "resize", Bytes::from_static(b"x"), Priority::Normal);

        let stream = TcpStream::connect(&addr).await.expect("worker");
        let (read, mut write) = stream.into_split();
        let mut frames = FramedRead::new(read, Codec::client());
        write.write_all(&Packet::req(PacketType::CanDo, &[b"resize"]).to_bytes()).await.expect("can do");
        let handle = loop {
            write.write_all(&Packet::req(PacketType::GrabJob, &[]).to_bytes()).await.expect("grab");
            match frames.next().await {
                Some(Ok(Frame::Packet(p))) if p.ptype == PacketType::JobAssign => break p.arg(0).to_vec(),
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        async fn until(runner: &Runner, what: &str, f: fn(&Runner) -> bool) {
            for _ in 0..250 {
                if f(runner) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("{what}");
        }
        until(&runner, "the attempt is seen running", |r| r.running() == 1).await;

        runner.stop_submitting();
        runner.submit(job, "u-2", "resize", Bytes::from_static(b"y"), Priority::Normal);
        assert_eq!(runner.followed(), 1, "nothing new is taken on");
        write.write_all(&Packet::req(PacketType::WorkComplete, &[&handle, b"done"]).to_bytes()).await.expect("done");
        until(&runner, "the outcome arrives", |r| r.running() == 0).await;
        assert!(runner.observation("u-1").and_then(|o| o.outcome).is_some());
        broker.stop().await;
    }

    #[test]
    fn the_runner_retries_a_lost_broker_once_then_moves_on_and_pauses_after_a_failed_round() {
        let mut r = Rotation::new(3);
        r.lost();
        assert_eq!((r.at, r.retrying), (0, true), "a lost connection: the same broker once more, soon");
        assert!(!r.round_failed());
        r.failed();
        assert_eq!((r.at, r.retrying), (1, false), "it does not answer: the next one, at once");
        assert!(!r.round_failed());
        r.failed();
        assert!(!r.round_failed());
        assert_eq!(r.at, 2);
        r.failed();
        assert_eq!(r.at, 0, "round and round");
        assert!(r.round_failed(), "none answered: pause");
        assert!(!r.round_failed(), "the pause starts a new round");

        let mut one = Rotation::new(1);
        one.failed();
        assert_eq!(one.at, 0);
        assert!(one.round_failed(), "a single broker: pause after every failure");
    }

    /// Every API priority submits in the foreground with the packet of the same priority.
    #[test]
    fn api_priorities_map_onto_the_wire_priorities() {
        let cases = [
            (Priority::High, PacketType::SubmitJobHigh),
            (Priority::Normal, PacketType::SubmitJob),
            (Priority::Low, PacketType::SubmitJobLow),
        ];
        for (priority, packet) in cases {
            assert_eq!(wire_priority(priority).submit_type(false), packet, "{priority}");
        }
    }
}
