//! Connections joining and leaving (a leaving worker's jobs are handed back, a leaving client's
//! unstarted foreground jobs dropped), their client id and options, and `fleet watch` subscribers.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use gearfleet_proto::admin::DrainSelfReply;
use gearfleet_proto::options;
use gearfleet_proto::packet::PacketType;

use super::State;
use super::conn::Conn;
use super::model::{ConnId, Effects, JobState, Now};
use crate::outbox::Outbox;

impl State {
    pub fn add_conn(&mut self, id: ConnId, outbox: Arc<Outbox>, peer: String, fd: i64) {
        self.conns.insert(
            id,
            Conn {
                outbox,
                peer,
                fd,
                client_id: Bytes::from_static(b"-"),
                abilities: Vec::new(),
                sleeping: false,
                sleeps: 0,
                draining: self.closing,
                exceptions: false,
                retain_outcomes: false,
                resumes: false,
                holding: Vec::new(),
                woken_for: None,
                timed_out: Vec::new(),
                waiting_on: VecDeque::new(),
                jobs_done: 0,
                watching: false,
            },
        );
    }

    /// Forgets a connection closed at `now`: jobs it held go back to the front of their queues
    /// (gearmand semantics; a disconnect is not the job's fault), tries of it that had timed out
    /// are handed back (a background job's retry counts its backoff from now), foreground jobs
    /// nobody waits for any more are dropped if they have not started.
    pub fn remove_conn(&mut self, id: ConnId, now: Now, fx: &mut Effects) {
        let Some(conn) = self.conns.remove(&id) else { return };
        if let Some((fid, deadline)) = conn.woken_for {
            // Woken and gone before asking: another sleeper hears of the job.
            self.wake_answered(fid, deadline, id);
        }
        for ability in &conn.abilities {
            self.functions[ability.fid as usize].workers.retain(|&w| w != id);
        }
        let resumer = conn.resumer();
        for job_id in conn.holding {
            match &resumer {
                Some(worker) if self.jobs.get(&job_id).is_some_and(|j| j.retain) => {
                    self.hold_for(job_id, worker.clone(), now, fx);
                }
                _ => self.requeue_front(job_id, fx),
            }
        }
        for timed_out in conn.timed_out {
            self.release_timed_out(id, timed_out, now, fx);
        }
        for job_id in conn.waiting_on {
            let Some(job) = self.jobs.get_mut(&job_id) else { continue };
            job.clients.retain(|&c| c != id);
            if job.clients.is_empty() && !job.background && job.state == JobState::Queued {
                self.forget_queued(job_id);
            }
        }
        fx.stats_changed = true;
    }

    /// SET_CLIENT_ID (`-` when empty, as `workers` shows an unset id).
    pub(super) fn set_client_id(&mut self, id: ConnId, client_id: Bytes) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.client_id = if client_id.is_empty() { Bytes::from_static(b"-") } else { client_id };
        }
    }

    /// OPTION_REQ: `exceptions`, gearfleet's retained outcomes when the broker keeps any, and
    /// gearfleet's resuming workers when it holds their jobs for them.
    pub(super) fn option_req(&mut self, id: ConnId, option: &[u8]) {
        if option == options::EXCEPTIONS {
            if let Some(c) = self.conns.get_mut(&id) {
                c.exceptions = true;
            }
            self.send(id, PacketType::OptionRes, &[options::EXCEPTIONS]);
        } else if option == options::RETAIN_OUTCOMES && self.limits.retained_outcomes > 0 {
            if let Some(c) = self.conns.get_mut(&id) {
                c.retain_outcomes = true;
            }
            self.send(id, PacketType::OptionRes, &[options::RETAIN_OUTCOMES]);
        } else if option == options::RESUME && !self.limits.claim_grace.is_zero() {
            if let Some(c) = self.conns.get_mut(&id) {
                c.resumes = true;
            }
            self.send(id, PacketType::OptionRes, &[options::RESUME]);
        } else {
            self.send_error(id, b"UNKNOWN_OPTION", b"Server does not recognize given option");
        }
    }

    pub fn set_watching(&mut self, id: ConnId, on: bool) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.watching = on;
        }
    }

    pub fn watchers(&self) -> Vec<Arc<Outbox>> {
        self.conns.values().filter(|c| c.watching).map(|c| c.outbox.clone()).collect()
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// The connections an admin `fleet drain|undrain|disconnect TARGET` names, oldest first: those
    /// whose client id is TARGET, whose peer address (`IP:PORT`) is TARGET, or whose peer IP is
    /// TARGET (a bare IP names every connection from that host).
    pub(super) fn conns_named(&self, target: &str) -> Vec<ConnId> {
        let target = Target::parse(target);
        let mut ids: Vec<ConnId> =
            self.conns.iter().filter(|(_, c)| target.names(&c.client_id, &c.peer)).map(|(&id, _)| id).collect();
        ids.sort_unstable();
        ids
    }

    /// `fleet drain-self` sent by connection `by`: drains every other connection from `by`'s own
    /// IP (the pod it runs in) and says how many there are and how many still hold a job. The
    /// caller repeats it until none is busy; connections that joined meanwhile are drained too.
    pub fn drain_own_host(&mut self, by: ConnId, fx: &mut Effects) -> DrainSelfReply {
        let mut reply = DrainSelfReply::default();
        let Some(ip) = self.conns.get(&by).and_then(|c| c.peer.parse::<SocketAddr>().ok()).map(|a| canonical(a).ip())
        else {
            return reply;
        };
        for id in self.conns_named(&ip.to_string()).into_iter().filter(|&id| id != by) {
            if let Some(c) = self.conns.get_mut(&id) {
                if !c.draining {
                    c.draining = true;
                    fx.stats_changed = true;
                }
                reply.connections += 1;
                reply.busy += usize::from(c.is_busy());
            }
        }
        reply
    }

    /// `fleet disconnect TARGET` sent by connection `by`: the other connections it names leave at
    /// once, as if they had dropped (their jobs are handed back, their waits dropped:
    /// [`State::remove_conn`]). Their outboxes are closed, so nothing more is sent to them nor
    /// read from them; the caller shuts their sockets (the returned descriptors stay open while
    /// the state is locked: a connection's socket is closed only after it has left the state).
    pub fn disconnect_named(&mut self, target: &str, by: ConnId, now: Now, fx: &mut Effects) -> Vec<i64> {
        let mut fds = Vec::new();
        for id in self.conns_named(target).into_iter().filter(|&id| id != by) {
            if let Some(c) = self.conns.get(&id) {
                c.outbox.close();
                fds.push(c.fd);
            }
            self.remove_conn(id, now, fx);
        }
        fds
    }
}

/// What `fleet drain|undrain|disconnect` was given, read once for all the connections.
struct Target<'a> {
    text: &'a str,
    addr: Option<SocketAddr>,
    ip: Option<IpAddr>,
}

impl<'a> Target<'a> {
    fn parse(text: &'a str) -> Target<'a> {
        let bare = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')).unwrap_or(text);
        Target {
            text,
            addr: text.parse::<SocketAddr>().ok().map(canonical),
            ip: bare.parse::<IpAddr>().ok().map(|ip| ip.to_canonical()),
        }
    }

    fn names(&self, client_id: &[u8], peer: &str) -> bool {
        if client_id == self.text.as_bytes() || peer == self.text {
            return true;
        }
        if self.addr.is_none() && self.ip.is_none() {
            return false;
        }
        let Ok(peer) = peer.parse::<SocketAddr>().map(canonical) else { return false };
        self.addr == Some(peer) || self.ip == Some(peer.ip())
    }
}

/// The address with an IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, a dual-stack listener's
/// IPv4 peers) written as the IPv4 address.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use gearfleet_proto::PacketType;

    use gearfleet_proto::admin::DrainSelfReply;

    use super::super::model::{Effects, Limits};
    use super::super::testing::{connect, received, req, sent, start, state};
    use crate::outbox::Outbox;

    #[test]
    fn a_target_names_connections_by_client_id_address_or_ip() {
        let mut s = state(Limits::default());
        connect(&mut s, 1); // 10.0.0.1:4000
        s.add_conn(2, Arc::new(Outbox::new()), "10.0.0.1:4001".into(), -1);
        connect(&mut s, 3); // 10.0.0.3:4000
        s.add_conn(4, Arc::new(Outbox::new()), "[::ffff:10.0.0.3]:5000".into(), -1);
        s.add_conn(5, Arc::new(Outbox::new()), "[fd00::5]:6000".into(), -1);
        req(&mut s, 3, PacketType::SetClientId, &[b"pod-3"]);
        assert_eq!(s.conns_named("10.0.0.1"), [1, 2], "a bare IP: every connection from it");
        assert_eq!(s.conns_named("10.0.0.1:4001"), [2], "IP:PORT: that connection");
        assert_eq!(s.conns_named("pod-3"), [3], "a client id");
        assert_eq!(s.conns_named("10.0.0.3"), [3, 4], "a dual-stack listener's IPv4 peers too");
        assert_eq!(s.conns_named("10.0.0.3:5000"), [4]);
        assert_eq!(s.conns_named("fd00::5"), [5]);
        assert_eq!(s.conns_named("[fd00::5]"), [5]);
        assert_eq!(s.conns_named("[fd00::5]:6000"), [5]);
        for nothing in ["10.0.0.9", "10.0.0", "10.0.0.1:9", "pod", ""] {
            assert!(s.conns_named(nothing).is_empty(), "{nothing:?}");
        }
    }

    #[test]
    fn drain_and_undrain_by_ip_reach_a_worker_without_a_client_id() {
        let mut s = state(Limits::default());
        let worker = connect(&mut s, 1);
        connect(&mut s, 2);
        req(&mut s, 1, PacketType::CanDo, &[b"f"]);
        let mut fx = Effects::default();
        assert_eq!(s.set_draining("10.0.0.1", true, &mut fx), 1);
        req(&mut s, 1, PacketType::PreSleep, &[]);
        req(&mut s, 2, PacketType::SubmitJobBg, &[b"f", b"", b"x"]);
        assert!(sent(&worker).is_empty(), "a draining sleeper is not woken");
        req(&mut s, 1, PacketType::GrabJob, &[]);
        assert_eq!(sent(&worker), [PacketType::NoJob]);
        req(&mut s, 1, PacketType::PreSleep, &[]);
        assert_eq!(s.set_draining("10.0.0.1:4000", false, &mut fx), 1);
        assert_eq!(sent(&worker), [PacketType::Noop], "undrained: woken for the waiting job");
        req(&mut s, 1, PacketType::GrabJob, &[]);
        assert_eq!(sent(&worker), [PacketType::JobAssign]);
    }

    #[test]
    fn drain_self_drains_the_callers_host_only_and_counts_its_busy_connections() {
        let mut s = state(Limits::default());
        let busy = connect(&mut s, 1); // 10.0.0.1:4000
        s.add_conn(2, Arc::new(Outbox::new()), "10.0.0.1:4001".into(), -1);
        let other_host = connect(&mut s, 3); // 10.0.0.3:4000
        let client = connect(&mut s, 4);
        s.add_conn(5, Arc::new(Outbox::new()), "[::ffff:10.0.0.1]:4999".into(), -1); // the hook
        for w in [1, 2, 3] {
            req(&mut s, w, PacketType::CanDo, &[b"f"]);
        }
        req(&mut s, 4, PacketType::SubmitJob, &[b"f", b"", b"x"]);
        req(&mut s, 1, PacketType::GrabJob, &[]);
        let assigned = received(&busy).pop().unwrap();
        assert_eq!(assigned.ptype, PacketType::JobAssign);
        let handle = assigned.arg(0).to_vec();
        let mut fx = Effects::default();
        assert_eq!(s.drain_own_host(5, &mut fx), DrainSelfReply { connections: 2, busy: 1 });
        assert!(s.conns[&1].draining && s.conns[&2].draining && !s.conns[&5].draining);
        assert!(!s.conns[&3].draining, "another pod's worker is not touched");

        // The idle one gets no new job; another host's worker does.
        req(&mut s, 4, PacketType::SubmitJobBg, &[b"f", b"", b"y"]);
        let idle = s.conns[&2].outbox.clone();
        req(&mut s, 2, PacketType::GrabJob, &[]);
        assert_eq!(sent(&idle), [PacketType::NoJob]);
        req(&mut s, 3, PacketType::GrabJob, &[]);
        assert_eq!(sent(&other_host), [PacketType::JobAssign]);

        req(&mut s, 1, PacketType::WorkComplete, &[&handle, b"done"]);
        assert_eq!(s.drain_own_host(5, &mut fx), DrainSelfReply { connections: 2, busy: 0 }, "now idle");
        assert!(received(&client).iter().any(|p| p.ptype == PacketType::WorkComplete));
    }

    #[test]
    fn a_disconnected_worker_hands_its_job_to_another_at_once() {
        let mut s = state(Limits::default());
        let holder = connect(&mut s, 1);
        let client = connect(&mut s, 2);
        let rescuer = connect(&mut s, 3);
        req(&mut s, 1, PacketType::CanDo, &[b"f"]);
        req(&mut s, 3, PacketType::CanDo, &[b"f"]);
        req(&mut s, 2, PacketType::SubmitJob, &[b"f", b"", b"x"]);
        req(&mut s, 1, PacketType::GrabJob, &[]);
        let handle = received(&holder).pop().unwrap().arg(0).to_vec();
        req(&mut s, 3, PacketType::PreSleep, &[]);

        let mut fx = Effects::default();
        assert_eq!(s.disconnect_named("10.0.0.1", 9, start(), &mut fx), [-1], "the holder's socket, to shut");
        assert!(!s.conns.contains_key(&1), "gone from the state at once");
        assert!(holder.is_closed(), "nothing more is sent to it");
        assert_eq!(sent(&rescuer), [PacketType::Noop], "the job is back in the queue");
        req(&mut s, 3, PacketType::GrabJob, &[]);
        let assigned = received(&rescuer).pop().unwrap();
        assert_eq!((assigned.ptype, assigned.arg(0)), (PacketType::JobAssign, &handle[..]));
        assert_eq!(sent(&client), [PacketType::JobCreated], "the client still waits on it");
        assert!(s.disconnect_named("10.0.0.1", 9, start(), &mut fx).is_empty(), "nothing left to match");
        assert!(s.disconnect_named("10.0.0.2", 2, start(), &mut fx).is_empty(), "never the connection that asks");
        assert!(s.conns.contains_key(&2));
    }
}
