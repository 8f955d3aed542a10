//! Where the Job runner's attempts are (pure, unit-tested): the attempts it follows, the brokers
//! as it sees them, and the rules that place an attempt on a broker, move it when its broker is
//! lost, keep a running one waiting for its broker, and give up waiting after the return wait.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gearfleet_crd::Job;
use gearfleet_crd::job::Priority;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::mpsc;

use super::state::Observation;

/// How long running attempts wait for their lost broker before they are submitted elsewhere.
pub const DEFAULT_RETURN_WAIT: Duration = Duration::from_secs(120);

/// An attempt the runner follows.
#[derive(Debug)]
pub(super) struct Tracked {
    pub(super) job: ObjectRef<Job>,
    pub(super) function: String,
    pub(super) payload: Bytes,
    pub(super) priority: Priority,
    pub(super) obs: Observation,
    /// The broker it is submitted to (or waits for), by index; `None` while it waits for one.
    pub(super) broker: Option<usize>,
    /// A worker runs it on `broker`: it stays there while that broker is away (up to the return
    /// wait).
    pub(super) pinned: bool,
}

/// One broker, as the runner sees it.
#[derive(Debug)]
pub(super) struct Link {
    pub(super) addr: String,
    pub(super) connected: bool,
    /// Since when it is not connected (from the start for one never reached).
    pub(super) lost_at: Option<Instant>,
    /// The host part of its job handles (`H:<host>:<n>`), learnt from JOB_CREATED.
    pub(super) handle_host: Option<String>,
    /// Uniques whose JOB_CREATED has not arrived yet on the current connection, in order.
    pub(super) awaiting_created: VecDeque<String>,
    /// Uniques submitted on the current connection.
    pub(super) submitted: HashSet<String>,
}

#[derive(Debug)]
pub(super) struct Inner {
    pub(super) by_unique: HashMap<String, Tracked>,
    /// (broker, handle) to unique.
    pub(super) by_handle: HashMap<(usize, String), String>,
    pub(super) links: Vec<Link>,
    /// Where the next new attempt goes (round robin over connected brokers).
    pub(super) next: usize,
    /// Shutting down: nothing more is submitted (see `Runner::stop_submitting`).
    pub(super) closed: bool,
    pub(super) return_wait: Duration,
}

pub(super) struct Shared {
    pub(super) inner: Mutex<Inner>,
    /// Per broker: uniques for its connection task to submit.
    pub(super) senders: Vec<mpsc::UnboundedSender<String>>,
}

impl Shared {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands placed attempts to their brokers' connection tasks.
    pub(super) fn dispatch(&self, placed: Vec<(usize, String)>) {
        for (broker, unique) in placed {
            if let Some(tx) = self.senders.get(broker) {
                let _ = tx.send(unique);
            }
        }
    }
}

impl Inner {
    /// Gives every unfinished attempt without a broker a connected one, in turn; returns them.
    pub(super) fn place(&mut self) -> Vec<(usize, String)> {
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
    pub(super) fn lost(&mut self, broker: usize, now: Instant) -> Vec<(usize, String)> {
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
    pub(super) fn expire_pins(&mut self, now: Instant) -> Vec<(usize, String)> {
        let mut moved_any = false;
        for broker in 0..self.links.len() {
            let link = &self.links[broker];
            let away = link.lost_at.is_some_and(|t| now.saturating_duration_since(t) >= self.return_wait);
            if link.connected || !away {
                continue;
            }
            let addr = link.addr.clone();
            let moved = self.unpin(broker, |t| t.pinned);
            moved_any |= moved > 0;
            if moved > 0 {
                tracing::warn!(
                    broker = %addr,
                    attempts = moved,
                    waited = ?self.return_wait,
                    "a broker with running attempts did not come back: submitting them elsewhere (they may run twice)"
                );
            }
        }
        // Every other attempt without a broker waits for one to connect, which places it.
        if moved_any { self.place() } else { Vec::new() }
    }

    /// The broker a job handle (`H:<host>:<n>`) is from: the one whose handles were seen with
    /// that host, or whose address names it (`<host>.<namespace>.svc:4730`, as the chart's
    /// per-broker Services are named after their pods, which are the handles' hosts).
    pub(super) fn broker_of_handle(&self, handle: &str) -> Option<usize> {
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
pub(super) fn handle_host(handle: &str) -> Option<&str> {
    let rest = handle.strip_prefix("H:")?;
    let (host, _) = rest.rsplit_once(':')?;
    (!host.is_empty()).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
