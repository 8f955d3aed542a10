//! The Job controller's Gearman client: one connection per broker, shared by every Job. Attempts
//! are submitted as foreground jobs; their WORK_* packets are followed by handle and accumulated
//! into an [`Observation`] per attempt's unique key for the reconciler. It asks each broker to
//! retain outcomes (`OPTION_REQ gearfleet-retain-outcomes`), so an attempt resubmitted after a lost
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
use gearfleet_crd::Job;
use gearfleet_crd::job::Priority;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::mpsc;

pub use super::attempts::DEFAULT_RETURN_WAIT;
use super::attempts::{Inner, Link, Shared, Tracked};
use super::broker_link::link_task;
use super::state::Observation;

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

/// Every second, running attempts whose broker is away too long move on.
async fn expire_pins(shared: std::sync::Weak<Shared>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(shared) = shared.upgrade() else { return };
        let placed = shared.lock().expire_pins(Instant::now());
        shared.dispatch(placed);
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use gearfleet_proto::{Codec, Frame, Packet, PacketType};
    use tokio::net::TcpStream;
    use tokio_util::codec::FramedRead;

    use super::super::broker_link::wire_priority;
    use super::super::state::AttemptOutcome;
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
