//! The Job controller's Gearman client: one connection per broker, shared by every Job. Attempts
//! are submitted as foreground jobs; their WORK_* packets are followed by handle and accumulated
//! into an [`Observation`] per attempt's unique key for the reconciler. It asks each broker to
//! retain outcomes (`OPTION_REQ` [`RETAIN_OUTCOMES`]), so an attempt resubmitted after a lost
//! connection or an operator restart gets the outcome of its run instead of a second run.
//!
//! Where an attempt goes: a new attempt to a connected broker (in turn). An attempt no worker has
//! taken moves to another broker when its broker is lost (that broker drops it when it comes
//! back). An attempt a worker runs stays with its broker while that broker is away, up to the
//! return wait: the broker keeps the job across its restart, for the resuming worker to take back
//! or finish (`OPTION_REQ gearfleet-resume`), and the runner resubmits it there under the same key,
//! attaching to that run or getting its retained outcome. Running it elsewhere meanwhile would run
//! it twice. After the return wait it is submitted elsewhere (a broker lost for good). A new
//! leader learns where its Jobs' attempts run from their status (the broker's name in the
//! handle).
//!
//! Every change to an observation sends the Job's reference on the trigger channel, which the Job
//! controller consumes with `reconcile_on`: no per-Job polling.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// How long running attempts wait for their lost broker before they are submitted elsewhere.
pub const DEFAULT_RETURN_WAIT: Duration = Duration::from_secs(120);
/// How long a connection attempt to one broker may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug)]
struct Tracked {
    job: ObjectRef<Job>,
    function: String,
    payload: Bytes,
    priority: Priority,
    obs: Observation,
    /// The broker it is submitted to (or waits for), by index; `None` while it waits for one.
    broker: Option<usize>,
    /// A worker runs it on `broker`: it stays there while that broker is away (up to the return
    /// wait).
    pinned: bool,
}

/// One broker, as the runner sees it.
#[derive(Debug)]
struct Link {
    addr: String,
    connected: bool,
    /// Since when it is not connected (from the start for one never reached).
    lost_at: Option<Instant>,
    /// The host part of its job handles (`H:<host>:<n>`), learnt from JOB_CREATED.
    handle_host: Option<String>,
    /// Uniques whose JOB_CREATED has not arrived yet on the current connection, in order.
    awaiting_created: VecDeque<String>,
    /// Uniques submitted on the current connection.
    submitted: HashSet<String>,
}

#[derive(Debug)]
struct Inner {
    by_unique: HashMap<String, Tracked>,
    /// (broker, handle) to unique.
    by_handle: HashMap<(usize, String), String>,
    links: Vec<Link>,
    /// Where the next new attempt goes (round robin over connected brokers).
    next: usize,
    /// Shutting down: nothing more is submitted (see [`Runner::stop_submitting`]).
    closed: bool,
    return_wait: Duration,
}

struct Shared {
    inner: Mutex<Inner>,
    /// Per broker: uniques for its connection task to submit.
    senders: Vec<mpsc::UnboundedSender<String>>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands placed attempts to their brokers' connection tasks.
    fn dispatch(&self, placed: Vec<(usize, String)>) {
        for (broker, unique) in placed {
            if let Some(tx) = self.senders.get(broker) {
                let _ = tx.send(unique);
            }
        }
    }
}

/// Handle to the runner's connection tasks.
#[derive(Clone)]
pub struct Runner {
    shared: Arc<Shared>,
}

impl Runner {
    /// Starts a connection task per broker at `addrs`; changed Jobs are sent on `trigger`.
    pub fn start(addrs: Vec<String>, trigger: mpsc::UnboundedSender<ObjectRef<Job>>) -> Runner {
        Runner::start_with(addrs, trigger, DEFAULT_RETURN_WAIT)
    }

    /// [`start`](Self::start) with the time running attempts wait for their lost broker.
    pub fn start_with(
        addrs: Vec<String>,
        trigger: mpsc::UnboundedSender<ObjectRef<Job>>,
        return_wait: Duration,
    ) -> Runner {
        let now = Instant::now();
        let links = addrs
            .iter()
            .map(|addr| Link {
                addr: addr.clone(),
                connected: false,
                lost_at: Some(now),
                handle_host: None,
                awaiting_created: VecDeque::new(),
                submitted: HashSet::new(),
            })
            .collect();
        let inner =
            Inner { by_unique: HashMap::new(), by_handle: HashMap::new(), links, next: 0, closed: false, return_wait };
        let mut receivers = Vec::new();
        let mut senders = Vec::new();
        for _ in &addrs {
            let (tx, rx) = mpsc::unbounded_channel();
            senders.push(tx);
            receivers.push(rx);
        }
        let shared = Arc::new(Shared { inner: Mutex::new(inner), senders });
        for (i, (addr, rx)) in addrs.into_iter().zip(receivers).enumerate() {
            tokio::spawn(link_task(i, addr, shared.clone(), rx, trigger.clone()));
        }
        tokio::spawn(expire_pins(Arc::downgrade(&shared)));
        Runner { shared }
    }

    /// Submits an attempt and follows it. Idempotent: an attempt already followed is left alone.
    /// `running_on` is the handle of a run of it that a worker took, from the Job's status (a new
    /// leader): the attempt then goes to that broker only, as it would had this runner seen it
    /// start. Ignored once [`stop_submitting`](Self::stop_submitting) was called (the attempt
    /// stays unfollowed, so the next leader submits it).
    pub fn submit(
        &self,
        job: ObjectRef<Job>,
        unique: &str,
        function: &str,
        payload: Bytes,
        priority: Priority,
        running_on: Option<&str>,
    ) {
        let placed = {
            let mut g = self.shared.lock();
            if g.closed || g.by_unique.contains_key(unique) {
                return;
            }
            let home = running_on.and_then(|h| g.broker_of_handle(h));
            let tracked = Tracked {
                job,
                function: function.to_string(),
                payload,
                priority,
                obs: Observation { started: home.is_some(), ..Observation::default() },
                broker: home,
                pinned: home.is_some(),
            };
            g.by_unique.insert(unique.to_string(), tracked);
            match home {
                Some(i) => vec![(i, unique.to_string())],
                None => g.place(),
            }
        };
        self.shared.dispatch(placed);
    }

    /// What was observed for an attempt, if it is followed.
    pub fn observation(&self, unique: &str) -> Option<Observation> {
        self.shared.lock().by_unique.get(unique).map(|t| t.obs.clone())
    }

    /// Stops following an attempt.
    pub fn forget(&self, unique: &str) {
        let mut g = self.shared.lock();
        if let Some(t) = g.by_unique.remove(unique) {
            if let (Some(b), Some(h)) = (t.broker, t.obs.handle) {
                g.by_handle.remove(&(b, h));
            }
            for link in &mut g.links {
                link.submitted.remove(unique);
            }
        }
    }

    /// The handle of a followed attempt (for cancelling it through the admin protocol).
    pub fn handle(&self, unique: &str) -> Option<String> {
        self.shared.lock().by_unique.get(unique).and_then(|t| t.obs.handle.clone())
    }

    /// Attempts followed right now.
    pub fn followed(&self) -> usize {
        self.shared.lock().by_unique.len()
    }

    /// Whether some broker connection is up.
    pub fn connected(&self) -> bool {
        self.shared.lock().links.iter().any(|l| l.connected)
    }

    /// Stops submitting (the operator is shutting down): new attempts are ignored and nothing is
    /// resubmitted after a lost connection, while the outcomes of attempts already submitted are
    /// still followed.
    pub fn stop_submitting(&self) {
        self.shared.lock().closed = true;
    }

    /// The handles of followed attempts that no worker has taken yet.
    pub fn queued_handles(&self) -> Vec<(String, String)> {
        let g = self.shared.lock();
        let queued = g.by_unique.iter().filter(|(_, t)| !t.obs.started && t.obs.outcome.is_none());
        queued.filter_map(|(u, t)| Some((u.clone(), t.obs.handle.clone()?))).collect()
    }

    /// Attempts a worker has taken and not finished (what a shutting-down operator waits for).
    pub fn running(&self) -> usize {
        self.shared.lock().by_unique.values().filter(|t| t.obs.started && t.obs.outcome.is_none()).count()
    }
}

impl Inner {
    /// Gives every unfinished attempt without a broker a connected one, in turn; returns them.
    fn place(&mut self) -> Vec<(usize, String)> {
        if self.closed {
            return Vec::new();
        }
        let connected: Vec<usize> = (0..self.links.len()).filter(|&i| self.links[i].connected).collect();
        if connected.is_empty() {
            return Vec::new();
        }
        let mut placed = Vec::new();
        for (unique, t) in &mut self.by_unique {
            if t.broker.is_none() && t.obs.outcome.is_none() {
                let broker = connected[self.next % connected.len()];
                self.next = self.next.wrapping_add(1);
                t.broker = Some(broker);
                placed.push((broker, unique.clone()));
            }
        }
        placed
    }

    /// The connection to `broker` is lost: its attempts no worker took wait for another broker
    /// (placed at once if one is connected); the running ones stay, waiting for it.
    fn lost(&mut self, broker: usize, now: Instant) -> Vec<(usize, String)> {
        let link = &mut self.links[broker];
        link.connected = false;
        link.lost_at = Some(now);
        link.awaiting_created.clear();
        link.submitted.clear();
        self.unpin(broker, |t| !t.pinned);
        self.place()
    }

    /// Moves the unfinished attempts of `broker` that `which` selects off it (they will be placed
    /// anew); their handles were that broker's.
    fn unpin(&mut self, broker: usize, which: impl Fn(&Tracked) -> bool) -> usize {
        let mut moved = 0;
        for t in self.by_unique.values_mut() {
            if t.broker == Some(broker) && t.obs.outcome.is_none() && which(t) {
                t.broker = None;
                t.pinned = false;
                if let Some(h) = t.obs.handle.take() {
                    self.by_handle.remove(&(broker, h));
                }
                moved += 1;
            }
        }
        moved
    }

    /// Running attempts whose broker has been away longer than the return wait are submitted
    /// elsewhere.
    fn expire_pins(&mut self, now: Instant) -> Vec<(usize, String)> {
        for broker in 0..self.links.len() {
            let link = &self.links[broker];
            let away = link.lost_at.is_some_and(|t| now.saturating_duration_since(t) >= self.return_wait);
            if link.connected || !away {
                continue;
            }
            let addr = link.addr.clone();
            let moved = self.unpin(broker, |t| t.pinned);
            if moved > 0 {
                tracing::warn!(
                    broker = %addr,
                    attempts = moved,
                    waited = ?self.return_wait,
                    "a broker with running attempts did not come back: submitting them elsewhere (they may run twice)"
                );
            }
        }
        self.place()
    }

    /// The broker a job handle (`H:<host>:<n>`) is from: the one whose handles were seen with
    /// that host, or whose address names it (`<host>.<namespace>.svc:4730`, as the chart's
    /// per-broker Services are named after their pods, which are the handles' hosts).
    fn broker_of_handle(&self, handle: &str) -> Option<usize> {
        let host = handle_host(handle)?;
        self.links.iter().position(|l| l.handle_host.as_deref() == Some(host)).or_else(|| {
            self.links.iter().position(|l| {
                let name = l.addr.rsplit_once(':').map_or(l.addr.as_str(), |(h, _)| h);
                name == host || name.strip_prefix(host).is_some_and(|rest| rest.starts_with('.'))
            })
        })
    }
}

/// The host part of a job handle `H:<host>:<n>`.
fn handle_host(handle: &str) -> Option<&str> {
    let rest = handle.strip_prefix("H:")?;
    let (host, _) = rest.rsplit_once(':')?;
    (!host.is_empty()).then_some(host)
}

/// Every second, running attempts whose broker is away too long move on.
async fn expire_pins(shared: std::sync::Weak<Shared>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(shared) = shared.upgrade() else { return };
        let placed = shared.lock().expire_pins(Instant::now());
        shared.dispatch(placed);
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

/// Keeps the connection to broker `i` up, and serves it.
async fn link_task(
    i: usize,
    addr: String,
    shared: Arc<Shared>,
    mut submits: mpsc::UnboundedReceiver<String>,
    trigger: mpsc::UnboundedSender<ObjectRef<Job>>,
) {
    let mut backoff = Duration::from_millis(200);
    let mut failures = 0u32;
    loop {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&addr)).await {
            Ok(Ok(stream)) => {
                backoff = Duration::from_millis(200);
                failures = 0;
                let _ = stream.set_nodelay(true);
                tracing::info!(broker = %addr, "job runner connected");
                let reason = serve(i, stream, &shared, &mut submits, &trigger).await;
                let (placed, held) = {
                    let mut g = shared.lock();
                    let placed = g.lost(i, Instant::now());
                    let held = g.by_unique.values().filter(|t| t.broker == Some(i) && t.obs.outcome.is_none()).count();
                    (placed, held)
                };
                tracing::warn!(broker = %addr, reason = %reason, moved = placed.len(), waiting_for_it = held, "job runner connection lost");
                shared.dispatch(placed);
            }
            Ok(Err(e)) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(broker = %addr, error = %e, "job runner cannot reach the broker");
                }
            }
            Err(_) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(broker = %addr, "job runner: connecting to the broker timed out");
                }
            }
        }
        if trigger.is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Serves broker `i`'s connection until it fails; returns why.
async fn serve(
    i: usize,
    stream: TcpStream,
    shared: &Shared,
    submits: &mut mpsc::UnboundedReceiver<String>,
    trigger: &mpsc::UnboundedSender<ObjectRef<Job>>,
) -> String {
    let (read, write) = stream.into_split();
    let mut frames = FramedRead::new(read, Codec::client());
    let mut out = FramedWrite::new(write, BytesCodec::new());
    let mut hello = Packet::req(PacketType::OptionReq, &[EXCEPTIONS]).to_bytes().to_vec();
    hello.extend_from_slice(&Packet::req(PacketType::OptionReq, &[RETAIN_OUTCOMES]).to_bytes());
    // Everything of this broker's that is unfinished goes (again) to it, and attempts waiting for
    // a broker may now come here.
    let (resubmit, placed) = {
        let mut g = shared.lock();
        let link = &mut g.links[i];
        link.connected = true;
        link.lost_at = None;
        let mut packets = Vec::new();
        if !g.closed {
            let mine: Vec<String> = g
                .by_unique
                .iter()
                .filter(|(_, t)| t.broker == Some(i) && t.obs.outcome.is_none())
                .map(|(u, _)| u.clone())
                .collect();
            for u in mine {
                packets.push(submit_packet(&u, &g.by_unique[&u]).to_bytes());
                let link = &mut g.links[i];
                link.submitted.insert(u.clone());
                link.awaiting_created.push_back(u);
            }
        }
        (packets, g.place())
    };
    shared.dispatch(placed);
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
                    let mut g = shared.lock();
                    let g = &mut *g;
                    let Some(t) = g.by_unique.get(&unique) else { continue };
                    let link = &mut g.links[i];
                    // Placed elsewhere meanwhile, finished, or already sent on this connection.
                    if g.closed || t.broker != Some(i) || t.obs.outcome.is_some() || link.submitted.contains(&unique) {
                        continue;
                    }
                    let packet = submit_packet(&unique, t).to_bytes();
                    link.submitted.insert(unique.clone());
                    link.awaiting_created.push_back(unique);
                    packet
                };
                if let Err(e) = out.send(packet).await {
                    return e.to_string();
                }
            }
            frame = frames.next() => {
                match frame {
                    Some(Ok(Frame::Packet(p))) => handle_packet(i, shared, trigger, &p),
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

fn handle_packet(i: usize, shared: &Shared, trigger: &mpsc::UnboundedSender<ObjectRef<Job>>, p: &Packet) {
    let mut g = shared.lock();
    let g = &mut *g;
    match p.ptype {
        PacketType::JobCreated => {
            let Some(unique) = g.links[i].awaiting_created.pop_front() else { return };
            let handle = text(p.arg(0));
            if let Some(host) = handle_host(&handle) {
                g.links[i].handle_host = Some(host.to_string());
            }
            if let Some(t) = g.by_unique.get_mut(&unique) {
                t.obs.handle = Some(handle.clone());
                g.by_handle.insert((i, handle), unique);
                let _ = trigger.send(t.job.clone());
            }
        }
        PacketType::Error => {
            let code = text(p.arg(0));
            if code == "UNKNOWN_OPTION" {
                tracing::error!(
                    broker = %g.links[i].addr,
                    "the broker does not retain outcomes (gearfleet-broker with --retained-outcomes > 0 is \
                                 needed); Jobs may run twice across operator restarts"
                );
                return;
            }
            // A refused submission (e.g. QUEUE_ERROR): stop following it; the Job is tried again.
            let Some(unique) = g.links[i].awaiting_created.pop_front() else { return };
            tracing::warn!(unique = %unique, code = %code, message = %text(p.arg(1)), "broker refused a job submission");
            g.links[i].submitted.remove(&unique);
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
            let key = (i, handle);
            let Some(unique) = g.by_handle.get(&key).cloned() else { return };
            let Some(t) = g.by_unique.get_mut(&unique) else { return };
            // A worker has it: it stays with this broker from now on.
            t.pinned = true;
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
                g.by_handle.remove(&key);
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
        runner.submit(job, "u-1", "resize", Bytes::from_static(b"x"), Priority::Normal, None);
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
        runner.submit(job.clone(), "u-1", "resize", Bytes::from_static(b"x"), Priority::Normal, None);

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
        runner.submit(job, "u-2", "resize", Bytes::from_static(b"y"), Priority::Normal, None);
        assert_eq!(runner.followed(), 1, "nothing new is taken on");
        write.write_all(&Packet::req(PacketType::WorkComplete, &[&handle, b"done"]).to_bytes()).await.expect("done");
        until(&runner, "the outcome arrives", |r| r.running() == 0).await;
        assert!(runner.observation("u-1").and_then(|o| o.outcome).is_some());
        broker.stop().await;
    }

    fn inner(addrs: &[&str]) -> Inner {
        let links = addrs
            .iter()
            .map(|a| Link {
                addr: a.to_string(),
                connected: true,
                lost_at: None,
                handle_host: None,
                awaiting_created: VecDeque::new(),
                submitted: HashSet::new(),
            })
            .collect();
        Inner {
            by_unique: HashMap::new(),
            by_handle: HashMap::new(),
            links,
            next: 0,
            closed: false,
            return_wait: Duration::from_secs(60),
        }
    }

    fn track(g: &mut Inner, unique: &str) {
        let tracked = Tracked {
            job: ObjectRef::<Job>::new(unique).within("ns"),
            function: "f".into(),
            payload: Bytes::new(),
            priority: Priority::Normal,
            obs: Observation::default(),
            broker: None,
            pinned: false,
        };
        g.by_unique.insert(unique.into(), tracked);
    }

    #[test]
    fn new_attempts_go_round_the_connected_brokers() {
        let mut g = inner(&["a:1", "b:1", "c:1"]);
        g.links[1].connected = false;
        for u in ["u1", "u2", "u3", "u4"] {
            track(&mut g, u);
        }
        let mut placed: Vec<usize> = g.place().into_iter().map(|(b, _)| b).collect();
        placed.sort();
        assert_eq!(placed, [0, 0, 2, 2], "spread over the connected ones only");
        assert!(g.place().is_empty(), "placed once");
        g.closed = true;
        track(&mut g, "u5");
        assert!(g.place().is_empty(), "nothing is placed while shutting down");
    }

    #[test]
    fn a_lost_broker_keeps_its_running_attempts_until_the_return_wait_and_gives_up_the_others_at_once() {
        let mut g = inner(&["a:1", "b:1"]);
        for u in ["queued", "running"] {
            track(&mut g, u);
            let t = g.by_unique.get_mut(u).unwrap();
            t.broker = Some(0);
            t.obs.handle = Some(format!("H:a:{u}"));
        }
        g.by_handle.insert((0, "H:a:queued".into()), "queued".into());
        let running = g.by_unique.get_mut("running").unwrap();
        running.pinned = true;
        running.obs.started = true;

        let start = Instant::now();
        let placed = g.lost(0, start);
        assert_eq!(placed, [(1, "queued".to_string())], "the queued attempt moves to the other broker");
        assert!(g.by_handle.is_empty(), "its old handle is forgotten");
        assert_eq!(g.by_unique["running"].broker, Some(0), "the running one waits for its broker");
        assert!(g.expire_pins(start + Duration::from_secs(59)).is_empty());
        let placed = g.expire_pins(start + Duration::from_secs(60));
        assert_eq!(placed, [(1, "running".to_string())], "its broker did not come back in time");
        assert!(!g.by_unique["running"].pinned);

        // With no broker connected, attempts wait unplaced.
        let mut g = inner(&["a:1"]);
        track(&mut g, "queued");
        g.by_unique.get_mut("queued").unwrap().broker = Some(0);
        assert!(g.lost(0, start).is_empty());
        assert_eq!(g.by_unique["queued"].broker, None);
    }

    #[test]
    fn a_handle_names_its_broker_by_the_host_seen_or_the_per_broker_service() {
        let mut g = inner(&["gf-gearfleet-0.ns.svc:4730", "gf-gearfleet-1.ns.svc:4730", "10.0.0.9:4730"]);
        assert_eq!(g.broker_of_handle("H:gf-gearfleet-1:17"), Some(1));
        assert_eq!(g.broker_of_handle("H:gf-gearfleet-1x:17"), None, "a prefix of another name is not it");
        assert_eq!(g.broker_of_handle("H:other:3"), None);
        g.links[2].handle_host = Some("other".into());
        assert_eq!(g.broker_of_handle("H:other:3"), Some(2), "learnt from its JOB_CREATED");
        assert_eq!(g.broker_of_handle("nonsense"), None);
        assert_eq!(handle_host("H:a:b:7"), Some("a:b"));
    }

    /// Against real brokers: an attempt a resuming worker runs stays with its broker while that
    /// broker restarts (the other broker gets nothing), and its outcome, delivered by the worker
    /// after the restart, reaches the runner: one run.
    #[tokio::test]
    async fn a_running_attempt_waits_for_its_broker_to_restart() {
        use gearfleet_proto::options::RESUME;
        use tokio::io::AsyncWriteExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let journaled = |listen: std::net::SocketAddr| {
            let mut c = gearfleet_broker::Config::for_tests();
            c.listen = listen;
            c.http_listen = None;
            c.handle_host = Some("home".into());
            c.data_dir = Some(dir.path().to_path_buf());
            c.durability = "fsync".into();
            c
        };
        let home = gearfleet_broker::start(journaled("127.0.0.1:0".parse().expect("addr"))).await.expect("broker");
        let home_addr = home.gearman_addr;
        let mut other_config = gearfleet_broker::Config::for_tests();
        other_config.handle_host = Some("other".into());
        let other = gearfleet_broker::start(other_config).await.expect("broker");
        let (trigger, _triggers) = mpsc::unbounded_channel();
        let runner = Runner::start(vec![home_addr.to_string(), other.gearman_addr.to_string()], trigger);
        // Only the home broker has a worker, so the attempt must be placed there to run: wait for
        // both links, then submit until it lands there.
        for _ in 0..100 {
            if runner.shared.lock().links.iter().all(|l| l.connected) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        runner.shared.lock().next = 0;
        let job = ObjectRef::<Job>::new("j").within("ns");
        runner.submit(job, "u-1", "resize", Bytes::from_static(b"x"), Priority::Normal, None);

        let worker = |addr: std::net::SocketAddr| async move {
            let stream = TcpStream::connect(addr).await.expect("worker");
            let (read, mut write) = stream.into_split();
            let frames = FramedRead::new(read, Codec::client());
            let mut hello = Packet::req(PacketType::OptionReq, &[RESUME]).to_bytes().to_vec();
            hello.extend_from_slice(&Packet::req(PacketType::SetClientId, &[b"pod-a"]).to_bytes());
            hello.extend_from_slice(&Packet::req(PacketType::CanDo, &[b"resize"]).to_bytes());
            write.write_all(&hello).await.expect("hello");
            (frames, write)
        };
        let (mut frames, mut write) = worker(home_addr).await;
        let handle = loop {
            write.write_all(&Packet::req(PacketType::GrabJob, &[]).to_bytes()).await.expect("grab");
            match frames.next().await {
                Some(Ok(Frame::Packet(p))) if p.ptype == PacketType::JobAssign => break p.arg(0).to_vec(),
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        for _ in 0..250 {
            if runner.running() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(runner.running(), 1, "the runner sees it start");

        home.stop().await;
        drop((frames, write));
        tokio::time::sleep(Duration::from_millis(800)).await;
        let queued_elsewhere = crate::broker_client::BrokerClient::new(other.gearman_addr.to_string())
            .fleet_status()
            .await
            .unwrap_or_default()
            .iter()
            .any(|s| s.function == "resize");
        assert!(!queued_elsewhere, "a running attempt is not submitted to another broker while its own is away");

        let home = gearfleet_broker::start(journaled(home_addr)).await.expect("broker restarts");
        let (_frames, mut write) = worker(home_addr).await;
        write.write_all(&Packet::req(PacketType::WorkComplete, &[&handle, b"resized"]).to_bytes()).await.expect("done");
        let mut outcome = None;
        for _ in 0..250 {
            outcome = runner.observation("u-1").and_then(|o| o.outcome);
            if outcome.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(outcome, Some(AttemptOutcome::Complete(b"resized".to_vec())));
        home.stop().await;
        other.stop().await;
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
