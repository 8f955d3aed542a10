//! Connections joining and leaving (a leaving worker's jobs are handed back, a leaving client's
//! unstarted foreground jobs dropped), their client id and options, and `fleet watch` subscribers.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use gearfleet_proto::options;
use gearfleet_proto::packet::PacketType;

use super::State;
use super::conn::Conn;
use super::model::{ConnId, Effects, JobState};
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
                draining: false,
                exceptions: false,
                retain_outcomes: false,
                holding: Vec::new(),
                waiting_on: VecDeque::new(),
                jobs_done: 0,
                watching: false,
            },
        );
    }

    /// Forgets a closed connection: jobs it held go back to the front of their queues (gearmand
    /// semantics; a disconnect is not the job's fault), foreground jobs nobody waits for any more
    /// are dropped if they have not started.
    pub fn remove_conn(&mut self, id: ConnId, fx: &mut Effects) {
        let Some(conn) = self.conns.remove(&id) else { return };
        for ability in &conn.abilities {
            self.functions[ability.fid as usize].workers.retain(|&w| w != id);
        }
        for job_id in conn.holding {
            self.requeue_front(job_id, fx);
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

    /// OPTION_REQ: `exceptions`, and gearfleet's retained outcomes when the broker keeps any.
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
}
