//! A connection's entry in the state: its outbox, what it can do as a worker and waits on as a
//! client, and its options.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use super::model::{Ability, FnId, JobId, TimedOutTry};
use crate::outbox::Outbox;

#[derive(Debug)]
pub(super) struct Conn {
    pub(super) outbox: Arc<Outbox>,
    pub(super) peer: String,
    pub(super) fd: i64,
    pub(super) client_id: Bytes,
    pub(super) abilities: Vec<Ability>,
    pub(super) sleeping: bool,
    /// Counts this connection's sleeps (PRE_SLEEP), to tell current sleeper entries from stale ones.
    pub(super) sleeps: u32,
    /// Woken with a NOOP for a job of this function, not asked for a job yet; the deadline
    /// (unix ms) after which another sleeper is woken in its place ([`wakeups`](super::wakeups)).
    pub(super) woken_for: Option<(FnId, u64)>,
    pub(super) draining: bool,
    pub(super) exceptions: bool,
    /// Sent OPTION_REQ gearfleet-retain-outcomes.
    pub(super) retain_outcomes: bool,
    /// Sent OPTION_REQ gearfleet-resume: a worker that keeps running its job across a lost
    /// connection and takes it back after it reconnects.
    pub(super) resumes: bool,
    /// Jobs this connection holds as a worker.
    pub(super) holding: Vec<JobId>,
    /// Tries that ran past their timeout which this worker may still be running: it counts as
    /// busy with them until it answers, leaves or their grace ends.
    pub(super) timed_out: Vec<TimedOutTry>,
    /// Foreground jobs this connection waits on as a client, oldest first.
    pub(super) waiting_on: VecDeque<JobId>,
    pub(super) jobs_done: u64,
    pub(super) watching: bool,
}

impl Conn {
    /// Holds a job, or a timed-out try it may still be running: what `status`, `workers` and
    /// `fleet workers` count as busy.
    pub(super) fn is_busy(&self) -> bool {
        !self.holding.is_empty() || !self.timed_out.is_empty()
    }

    /// The client id by which this connection, a resuming worker, takes its jobs back after a
    /// reconnect; `None` for a worker that did not ask to resume or set no client id.
    pub(super) fn resumer(&self) -> Option<Bytes> {
        (self.resumes && self.client_id.as_ref() != b"-").then(|| self.client_id.clone())
    }

    /// Starts waiting on a foreground job's result.
    pub(super) fn wait_on(&mut self, job: JobId) {
        self.waiting_on.push_back(job);
        self.outbox.set_pipelined(self.waiting_on.len() > 1);
    }

    /// Stops waiting on a job's result (it ended, or the job is gone).
    pub(super) fn stop_waiting(&mut self, job: JobId) {
        // At most once in the list, and results mostly come in submission order: found near the
        // front, and removed by shifting the shorter side.
        if let Some(i) = self.waiting_on.iter().position(|&j| j == job) {
            self.waiting_on.remove(i);
        }
        self.outbox.set_pipelined(self.waiting_on.len() > 1);
    }
}

#[cfg(test)]
mod tests {
    use gearfleet_proto::PacketType;

    use super::super::testing::{grab_handle, req, worker_and_client};

    #[test]
    fn a_client_waiting_on_several_jobs_is_pipelined_until_one_is_left() {
        let (mut s, _worker) = worker_and_client();
        let client = s.conns[&2].outbox.clone();
        req(&mut s, 1, PacketType::CanDo, &[b"f"]);
        req(&mut s, 2, PacketType::SubmitJob, &[b"f", b"", b"a"]);
        assert!(!client.is_pipelined(), "one job in flight: its replies go out at once");
        req(&mut s, 2, PacketType::SubmitJob, &[b"f", b"", b"b"]);
        assert!(client.is_pipelined());
        // A background submission is nothing to wait on.
        req(&mut s, 2, PacketType::SubmitJobBg, &[b"f", b"", b"c"]);
        assert!(client.is_pipelined());
        let handle = grab_handle(&mut s);
        req(&mut s, 1, PacketType::WorkComplete, &[&handle, b""]);
        assert!(!client.is_pipelined(), "one job left in flight");
    }

    #[test]
    fn a_client_counts_a_shared_unique_key_once_and_stops_waiting_on_a_failed_job() {
        let (mut s, _worker) = worker_and_client();
        let client = s.conns[&2].outbox.clone();
        req(&mut s, 1, PacketType::CanDo, &[b"f"]);
        req(&mut s, 2, PacketType::SubmitJob, &[b"f", b"k", b"a"]);
        req(&mut s, 2, PacketType::SubmitJob, &[b"f", b"k", b"a"]);
        assert!(!client.is_pipelined(), "the same job twice is one job to wait on");
        req(&mut s, 2, PacketType::SubmitJob, &[b"f", b"", b"b"]);
        assert!(client.is_pipelined());
        let handle = grab_handle(&mut s);
        req(&mut s, 1, PacketType::WorkFail, &[&handle]);
        assert!(!client.is_pipelined());
        assert_eq!(s.conns[&2].waiting_on.len(), 1);
    }
}
