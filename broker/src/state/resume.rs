//! Jobs held for a resuming worker (`OPTION_REQ gearfleet-resume`, the gearfleet SDK).
//!
//! A retaining client's job (the operator's Job controller) whose worker lost its connection, or
//! that such a worker was running when the broker stopped, is not handed to another worker at
//! once: the worker may still be running it. It is held ([`JobState::Held`]) for the claim grace.
//! The same worker (the same client id) takes it back with a WORK_STATUS, WORK_DATA or
//! WORK_WARNING for its handle, or ends it with WORK_COMPLETE, WORK_FAIL or WORK_EXCEPTION, from
//! any of its connections. When the grace passes first, the job is queued again if a client waits
//! for it, and dropped otherwise (its client resubmits it under the same unique key when it comes
//! back, wherever it goes). Held jobs still count as running: a worker presumably runs them.

use bytes::Bytes;
use gearfleet_proto::packet::{Magic, PacketType, encode_packet};

use super::State;
use super::model::{ConnId, Effects, JobId, JobState, Now};
use crate::store::Record;

impl State {
    /// Holds `job_id`, a running job whose worker `claimant` lost its connection, for the claim
    /// grace from `now`.
    pub(super) fn hold_for(&mut self, job_id: JobId, claimant: Bytes, now: Now, fx: &mut Effects) {
        let until = now.unix_ms + self.limits.claim_grace.as_millis() as u64;
        let Some(job) = self.jobs.get_mut(&job_id) else { return };
        job.state = JobState::Held { until };
        job.extra.get_or_insert_with(Default::default).claimant = claimant;
        self.scheduled.insert((until, job_id));
        self.held += 1;
        self.metrics.held_for_worker.inc();
        fx.schedule_changed = true;
        fx.stats_changed = true;
    }

    /// A WORK_* packet from connection `id` for the held job `job_id`: the worker that ran it is
    /// back and takes it again. Returns whether it did (another worker cannot).
    pub(super) fn take_back(&mut self, id: ConnId, job_id: JobId) -> bool {
        let Some(conn) = self.conns.get(&id) else { return false };
        let Some(job) = self.jobs.get_mut(&job_id) else { return false };
        let JobState::Held { until } = job.state else { return false };
        if job.extra.as_ref().is_none_or(|e| e.claimant != conn.client_id) {
            return false;
        }
        job.state = JobState::Running { worker: id };
        self.scheduled.remove(&(until, job_id));
        self.held -= 1;
        self.metrics.taken_back.inc();
        if let Some(c) = self.conns.get_mut(&id) {
            c.holding.push(job_id);
        }
        tracing::info!(handle = %self.handle_string(job_id), "a resuming worker took its job back");
        true
    }

    /// The claim grace of held job `job_id` is over (its worker did not come back): queued again
    /// if a client waits for it, else dropped.
    pub(super) fn release_held(&mut self, job_id: JobId, fx: &mut Effects) {
        let Some(job) = self.jobs.get(&job_id) else { return };
        let fid = job.fid as usize;
        self.functions[fid].running -= 1;
        self.held -= 1;
        self.metrics.held_released.inc();
        fx.stats_changed = true;
        if job.clients.is_empty() {
            tracing::info!(handle = %self.handle_string(job_id), "held job not taken back, and no client waits: dropped");
            let unique = job.unique.clone();
            self.functions[fid].uniques.remove(job_id, &unique);
            self.jobs.remove(&job_id);
            if self.journal.is_some() {
                self.journal_append(&Record::Done { id: job_id });
            }
        } else {
            tracing::info!(handle = %self.handle_string(job_id), "held job not taken back: queued again");
            self.enqueue(job_id, true);
        }
    }

    /// Tells a retaining client that just attached to `job_id` that the job is already running
    /// (WORK_STATUS with its latest progress, 0/0 if none), as it would have heard at assignment.
    pub(super) fn tell_running(&self, client: ConnId, job_id: JobId) {
        let Some(job) = self.jobs.get(&job_id) else { return };
        if !matches!(job.state, JobState::Running { .. } | JobState::TimedOut { .. } | JobState::Held { .. }) {
            return;
        }
        let Some(c) = self.conns.get(&client).filter(|c| c.retain_outcomes) else { return };
        let (n, d) = job.extra.as_ref().and_then(|e| e.status.clone()).unwrap_or_default();
        let (n, d): (&[u8], &[u8]) = if n.is_empty() && d.is_empty() { (b"0", b"0") } else { (&n, &d) };
        let mut handle = Vec::with_capacity(32);
        self.handle_of(job_id, &mut handle);
        c.outbox.push(|b| encode_packet(b, Magic::Res, PacketType::WorkStatus, &[&handle, n, d]));
    }

    /// Jobs held for their worker right now.
    pub fn held_jobs(&self) -> u64 {
        self.held
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use gearfleet_proto::PacketType;
    use gearfleet_proto::options::{RESUME, RETAIN_OUTCOMES};

    use super::super::model::{Effects, Limits};
    use super::super::testing::{at, connect, received, req, req_at, sent, state};
    use super::*;

    fn limits() -> Limits {
        Limits {
            retained_outcomes: 100,
            retained_outcome_ttl: Duration::from_secs(60),
            claim_grace: Duration::from_secs(30),
            ..Limits::default()
        }
    }

    /// A worker (conn 1, client id `pod-a`, resuming or not) runs a job of a client (conn 2,
    /// retaining or not); returns the state and the job's handle.
    fn job_of(resuming: bool, retaining: bool) -> (State, Vec<u8>) {
        let mut s = state(limits());
        connect(&mut s, 1);
        connect(&mut s, 2);
        if resuming {
            req(&mut s, 1, PacketType::OptionReq, &[RESUME]);
        }
        req(&mut s, 1, PacketType::SetClientId, &[b"pod-a"]);
        req(&mut s, 1, PacketType::CanDo, &[b"f"]);
        if retaining {
            req(&mut s, 2, PacketType::OptionReq, &[RETAIN_OUTCOMES]);
        }
        req(&mut s, 2, PacketType::SubmitJob, &[b"f", b"job-1", b"x"]);
        req(&mut s, 1, PacketType::GrabJob, &[]);
        let assign = received(&s.conns[&1].outbox.clone()).pop().unwrap();
        assert_eq!(assign.ptype, PacketType::JobAssign);
        received(&s.conns[&2].outbox.clone());
        (s, assign.arg(0).to_vec())
    }

    /// A resuming worker runs a retaining client's job.
    fn running_job() -> (State, Vec<u8>) {
        job_of(true, true)
    }

    #[test]
    fn the_resume_option_is_granted_only_with_a_claim_grace() {
        let mut s = state(limits());
        let c = connect(&mut s, 1);
        req(&mut s, 1, PacketType::OptionReq, &[RESUME]);
        assert_eq!(sent(&c), [PacketType::OptionRes]);
        let mut off = state(Limits { claim_grace: Duration::ZERO, ..limits() });
        let c = connect(&mut off, 1);
        req(&mut off, 1, PacketType::OptionReq, &[RESUME]);
        assert_eq!(sent(&c), [PacketType::Error]);
    }

    #[test]
    fn a_job_of_a_worker_that_lost_its_connection_is_held_and_its_outcome_taken_from_its_next_one() {
        let (mut s, handle) = running_job();
        let mut fx = Effects::default();
        s.remove_conn(1, at(0), &mut fx);
        assert!(fx.schedule_changed);
        assert_eq!(s.held_jobs(), 1);
        assert_eq!(s.fleet_status()[0].running, 1, "still counted as running");

        // Another worker is not given it.
        let other = connect(&mut s, 3);
        req(&mut s, 3, PacketType::SetClientId, &[b"pod-b"]);
        req(&mut s, 3, PacketType::CanDo, &[b"f"]);
        req(&mut s, 3, PacketType::GrabJob, &[]);
        assert_eq!(sent(&other), [PacketType::NoJob]);
        // Nor can it end it.
        req(&mut s, 3, PacketType::WorkComplete, &[&handle, b"stolen"]);
        assert_eq!(sent(&other), [PacketType::Error]);

        // The same worker, reconnected, ends it: the client hears it, the outcome is retained.
        let back = connect(&mut s, 4);
        req(&mut s, 4, PacketType::SetClientId, &[b"pod-a"]);
        req_at(&mut s, 4, PacketType::WorkComplete, &[&handle, b"done"], at(5_000));
        assert!(sent(&back).is_empty(), "accepted silently");
        let client = received(&s.conns[&2].outbox.clone());
        assert_eq!(client.iter().map(|p| p.ptype).collect::<Vec<_>>(), [PacketType::WorkComplete]);
        assert_eq!(client[0].arg(1), b"done");
        assert_eq!(s.held_jobs(), 0);
        assert_eq!(s.fleet_status()[0].running, 0);
        assert_eq!(s.metrics.taken_back.get(), 1);
        // Its grace ending later changes nothing.
        s.release_due(at(30_000), &mut Effects::default());
        assert_eq!(s.job_count(), 0);
    }

    #[test]
    fn a_held_job_is_taken_back_by_a_status_report_and_handed_back_if_that_connection_drops_too() {
        let (mut s, handle) = running_job();
        s.remove_conn(1, at(0), &mut Effects::default());
        connect(&mut s, 4);
        req(&mut s, 4, PacketType::OptionReq, &[RESUME]);
        req(&mut s, 4, PacketType::SetClientId, &[b"pod-a"]);
        req_at(&mut s, 4, PacketType::WorkStatus, &[&handle, b"3", b"10"], at(1_000));
        assert_eq!(sent(&s.conns[&2].outbox.clone()), [PacketType::WorkStatus], "the progress reaches the client");
        assert_eq!(s.held_jobs(), 0);
        assert_eq!(s.conns[&4].holding.len(), 1, "the new connection holds it");
        // Lost again: held again, with a fresh grace.
        s.remove_conn(4, at(2_000), &mut Effects::default());
        assert_eq!(s.held_jobs(), 1);
        s.release_due(at(31_999), &mut Effects::default());
        assert_eq!(s.held_jobs(), 1, "the new grace counts from the second loss");
    }

    #[test]
    fn a_held_job_nobody_takes_back_is_queued_again_for_its_client_or_dropped_without_one() {
        let (mut s, _) = running_job();
        s.remove_conn(1, at(0), &mut Effects::default());
        let mut fx = Effects::default();
        s.release_due(at(29_999), &mut fx);
        assert_eq!(s.held_jobs(), 1);
        s.release_due(at(30_000), &mut fx);
        assert_eq!(s.held_jobs(), 0);
        assert_eq!(s.fleet_status()[0].queued_total(), 1, "its client still waits: queued again");
        assert_eq!(s.fleet_status()[0].running, 0);

        let (mut s, _) = running_job();
        s.remove_conn(2, at(0), &mut Effects::default());
        s.remove_conn(1, at(0), &mut Effects::default());
        s.release_due(at(30_000), &mut Effects::default());
        assert_eq!(s.job_count(), 0, "nobody waits: dropped");
        assert_eq!(s.fleet_status()[0].running, 0);
    }

    #[test]
    fn a_stock_worker_or_a_plain_clients_job_is_handed_back_at_once() {
        for (resuming, retaining, what) in
            [(false, true, "a worker without the option"), (true, false, "a plain client")]
        {
            let (mut s, _) = job_of(resuming, retaining);
            s.remove_conn(1, at(0), &mut Effects::default());
            assert_eq!((s.held_jobs(), s.fleet_status()[0].queued_total()), (0, 1), "{what}");
        }
    }

    #[test]
    fn a_retaining_client_attaching_to_a_held_job_hears_that_it_runs() {
        let (mut s, handle) = running_job();
        s.remove_conn(2, at(0), &mut Effects::default());
        s.remove_conn(1, at(0), &mut Effects::default());
        let client = connect(&mut s, 5);
        req(&mut s, 5, PacketType::OptionReq, &[RETAIN_OUTCOMES]);
        req(&mut s, 5, PacketType::SubmitJob, &[b"f", b"job-1", b"x"]);
        let got = received(&client);
        let types: Vec<_> = got.iter().map(|p| p.ptype).collect();
        assert_eq!(types, [PacketType::OptionRes, PacketType::JobCreated, PacketType::WorkStatus]);
        assert_eq!(got[1].arg(0), handle, "attached to the held job, not a new one");
        // And the grace now queues it for this client instead of dropping it.
        s.release_due(at(30_000), &mut Effects::default());
        assert_eq!(s.fleet_status()[0].queued_total(), 1);
    }
}
