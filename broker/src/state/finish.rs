//! A worker's job: progress (WORK_STATUS, WORK_DATA, WORK_WARNING) passed on to its clients, the
//! end of a try (WORK_COMPLETE, WORK_FAIL, WORK_EXCEPTION, or a CAN_DO_TIMEOUT expiry) told to
//! the attached clients, retained outcomes and the answers made from them, and GET_STATUS.

use bytes::Bytes;
use gearfleet_proto::Packet;
use gearfleet_proto::options::TIMEOUT_MESSAGE;
use gearfleet_proto::packet::{Magic, PacketType, encode_packet};

use super::model::{ConnId, Effects, Job, JobId, JobState, Now, Outcome};
use super::{State, unique_of};
use crate::outcomes::Retained;
use crate::store::Record;

const ERR_JOB_NOT_FOUND: &[u8] = b"job_not_found";
/// The error a background job keeps when a try timed out.
pub(super) const TIMED_OUT: &[u8] = b"timed out";

impl State {
    /// The job `handle` if this worker holds it, or takes it back (`resume.rs`); otherwise tells
    /// the worker it does not.
    fn held_job(&mut self, id: ConnId, handle: &[u8]) -> Option<JobId> {
        let job_id = self.parse_handle(handle);
        let held = job_id.filter(|&j| {
            self.jobs.get(&j).is_some_and(|job| job.state == JobState::Running { worker: id }) || self.take_back(id, j)
        });
        if held.is_none() {
            self.send_error(id, ERR_JOB_NOT_FOUND, b"Job given in work result not found");
        }
        held
    }

    /// WORK_STATUS (kept for GET_STATUS), WORK_DATA, WORK_WARNING: passed on to the clients.
    pub(super) fn work_update(&mut self, id: ConnId, p: &Packet) {
        let Some(job_id) = self.held_job(id, p.arg(0)) else { return };
        let Some(job) = self.jobs.get_mut(&job_id) else { return };
        if p.ptype == PacketType::WorkStatus {
            let extra = job.extra.get_or_insert_with(Default::default);
            extra.status = Some((p.arg_bytes(1), p.arg_bytes(2)));
        }
        let job = &self.jobs[&job_id];
        for client in &job.clients {
            if let Some(c) = self.conns.get(client) {
                c.outbox.push(|b| p.encode_as(b, Magic::Res));
            }
        }
    }

    pub(super) fn work_finish(&mut self, id: ConnId, p: &Packet, outcome: Outcome, now: Now, fx: &mut Effects) {
        let Some(job_id) = self.held_job(id, p.arg(0)) else {
            // Answered as for any job that is gone; if it is a try of this worker that timed out,
            // the answer is discarded and the try handed back (`timeout.rs`).
            if let Some(job_id) = self.parse_handle(p.arg(0)) {
                self.late_answer(id, job_id, now, fx);
            }
            return;
        };
        if let Some(c) = self.conns.get_mut(&id) {
            c.holding.retain(|&j| j != job_id);
            c.jobs_done += 1;
        }
        self.finish(job_id, outcome, Some(p), now, fx);
    }

    /// Ends a try: a failed background job goes on to a retry or its dead-letter queue; any other
    /// job is told to its clients and forgotten. (A foreground job whose try timed out but is
    /// still held by its worker, `JobState::TimedOut`, keeps counting as running.)
    pub(super) fn finish(
        &mut self,
        job_id: JobId,
        outcome: Outcome,
        packet: Option<&Packet>,
        now: Now,
        fx: &mut Effects,
    ) {
        let Some(job) = self.jobs.get(&job_id) else { return };
        if job.background && outcome != Outcome::Complete {
            let error = self.fail_background_try(job_id, outcome, packet);
            self.retry_or_dead_letter(job_id, error, now, fx);
            return;
        }
        let Some(job) = self.jobs.remove(&job_id) else { return };
        if self.journal.is_some() && job.background {
            self.journal_append(&Record::Done { id: job_id });
        }
        let f = &mut self.functions[job.fid as usize];
        if let JobState::Running { .. } = job.state {
            f.running -= 1;
        }
        f.uniques.remove(job_id, &job.unique);
        match outcome {
            Outcome::Complete => {
                f.completed += 1;
                self.metrics.completed.inc();
            }
            Outcome::Fail | Outcome::Exception | Outcome::Timeout => {
                f.failed += 1;
                self.metrics.failed.inc();
            }
        }
        self.metrics.latency.observe(now.instant.saturating_duration_since(job.created).as_secs_f64());
        if job.retain {
            let retained = match (outcome, packet) {
                (Outcome::Complete, Some(p)) => Retained::Complete(Bytes::copy_from_slice(p.arg(1))),
                (Outcome::Exception, Some(p)) => Retained::Exception(Bytes::copy_from_slice(p.arg(1))),
                (Outcome::Timeout, _) => Retained::Exception(Bytes::from_static(TIMEOUT_MESSAGE)),
                _ => Retained::Fail,
            };
            if self.journal.is_some() {
                let function = self.functions[job.fid as usize].name.clone();
                self.journal_append(&Record::Outcome(retained.to_record(
                    job_id,
                    now.unix_ms,
                    function,
                    job.unique.clone(),
                )));
            }
            self.outcomes.insert(job.fid, job.unique.clone(), retained, now.instant);
        }
        let clients = job.clients;
        self.tell_clients(job_id, &clients, outcome, packet);
        fx.stats_changed = true;
    }

    /// Counts a background job's failed try and tells the clients attached to it; returns the
    /// error the job keeps.
    pub(super) fn fail_background_try(&mut self, job_id: JobId, outcome: Outcome, packet: Option<&Packet>) -> Bytes {
        let error = match (outcome, packet) {
            (Outcome::Exception, Some(p)) => p.arg_bytes(1),
            (Outcome::Timeout, _) => Bytes::from_static(TIMED_OUT),
            _ => Bytes::from_static(b"WORK_FAIL"),
        };
        self.metrics.failed.inc();
        if let Some(job) = self.jobs.get(&job_id) {
            self.functions[job.fid as usize].failed += 1;
        }
        self.notify_clients(job_id, outcome, packet);
        error
    }

    /// Sends a try's outcome to the clients attached to the job, and detaches them.
    pub(super) fn notify_clients(&mut self, job_id: JobId, outcome: Outcome, packet: Option<&Packet>) {
        let clients = self.jobs.get_mut(&job_id).map(|j| std::mem::take(&mut j.clients)).unwrap_or_default();
        self.tell_clients(job_id, &clients, outcome, packet);
    }

    fn tell_clients(&mut self, job_id: JobId, clients: &[ConnId], outcome: Outcome, packet: Option<&Packet>) {
        let mut handle = Vec::with_capacity(32);
        self.handle_of(job_id, &mut handle);
        for client in clients {
            let Some(c) = self.conns.get_mut(client) else { continue };
            c.stop_waiting(job_id);
            match (outcome, packet) {
                (Outcome::Complete, Some(p)) => c.outbox.push(|b| p.encode_as(b, Magic::Res)),
                (Outcome::Exception, Some(p)) if c.exceptions => c.outbox.push(|b| p.encode_as(b, Magic::Res)),
                (Outcome::Timeout, _) if c.exceptions => c
                    .outbox
                    .push(|b| encode_packet(b, Magic::Res, PacketType::WorkException, &[&handle, TIMEOUT_MESSAGE])),
                _ => c.outbox.push(|b| encode_packet(b, Magic::Res, PacketType::WorkFail, &[&handle])),
            }
        }
    }

    /// Answers a submission from a retained outcome: JOB_CREATED with a fresh handle, then the
    /// outcome as the job's final packet.
    pub(super) fn answer_from_retained(&mut self, id: ConnId, outcome: Retained) {
        let handle_id = self.next_answer_handle;
        self.next_answer_handle += 1;
        let mut handle = Vec::with_capacity(32);
        self.handle_of(handle_id, &mut handle);
        let Some(c) = self.conns.get(&id) else { return };
        let exceptions = c.exceptions;
        c.outbox.push(|b| {
            encode_packet(b, Magic::Res, PacketType::JobCreated, &[&handle]);
            match &outcome {
                Retained::Complete(result) => {
                    encode_packet(b, Magic::Res, PacketType::WorkComplete, &[&handle, result])
                }
                Retained::Exception(message) if exceptions => {
                    encode_packet(b, Magic::Res, PacketType::WorkException, &[&handle, message])
                }
                _ => encode_packet(b, Magic::Res, PacketType::WorkFail, &[&handle]),
            }
        });
    }

    /// Drops retained outcomes past their time to live (housekeeping).
    pub fn expire_outcomes(&mut self, now: Now) {
        self.outcomes.expire(now.instant);
    }

    pub(super) fn get_status(&self, id: ConnId, handle: &[u8]) {
        let job = self.parse_handle(handle).and_then(|j| self.jobs.get(&j));
        let (known, running, num, den) = status_fields(job);
        self.send(id, PacketType::StatusRes, &[handle, known, running, &num, &den]);
    }

    pub(super) fn get_status_unique(&self, id: ConnId, unique: &[u8]) {
        let job = self
            .functions
            .iter()
            .find_map(|f| f.uniques.get(unique, |j| unique_of(&self.jobs, j)))
            .and_then(|j| self.jobs.get(&j));
        let (known, running, num, den) = status_fields(job);
        let waiting = job.map_or(0, |j| j.clients.len()).to_string();
        self.send(id, PacketType::StatusResUnique, &[unique, known, running, &num, &den, waiting.as_bytes()]);
    }
}

fn status_fields(job: Option<&Job>) -> (&'static [u8], &'static [u8], Vec<u8>, Vec<u8>) {
    match job {
        None => (b"0", b"0", b"0".to_vec(), b"0".to_vec()),
        Some(job) => {
            let running =
                matches!(job.state, JobState::Running { .. } | JobState::TimedOut { .. } | JobState::Held { .. });
            let running: &'static [u8] = if running { b"1" } else { b"0" };
            let (num, den) = job
                .extra
                .as_ref()
                .and_then(|e| e.status.clone())
                .map_or((b"0".to_vec(), b"0".to_vec()), |(n, d)| (n.to_vec(), d.to_vec()));
            (b"1", running, num, den)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use gearfleet_proto::PacketType;

    use super::super::model::{Effects, Limits, RetryPolicy};
    use super::super::testing::{at, connect, received, req, req_at, sent, state, worker_and_client};

    #[test]
    fn a_try_is_failed_when_its_timer_fires_and_a_stale_timer_does_nothing() {
        let mut s = state(Limits::default());
        let worker = connect(&mut s, 1);
        let client = connect(&mut s, 2);
        req(&mut s, 1, PacketType::CanDoTimeout, &[b"slow", b"5000"]);
        req(&mut s, 2, PacketType::SubmitJob, &[b"slow", b"", b"x"]);
        let fx = req_at(&mut s, 1, PacketType::GrabJob, &[], at(0));
        let job = s.conns[&1].holding[0];
        assert_eq!(fx.timers, [(job, 1, Duration::from_secs(5))], "CAN_DO_TIMEOUT is in milliseconds");
        let handle = received(&worker).pop().unwrap().arg(0).to_vec();
        assert_eq!(sent(&client), [PacketType::JobCreated]);

        let mut fx = Effects::default();
        assert!(!s.expire(job, 2, at(5000), &mut fx), "another attempt's timer");
        assert!(s.expire(job, 1, at(5000), &mut fx));
        assert_eq!(sent(&client), [PacketType::WorkFail]);
        // The late result is refused, nothing is handed out again, and the timer is spent.
        req_at(&mut s, 1, PacketType::WorkComplete, &[&handle, b"late"], at(6000));
        let refused = received(&worker).pop().unwrap();
        assert_eq!((refused.ptype, refused.arg(0)), (PacketType::Error, &b"job_not_found"[..]));
        req_at(&mut s, 1, PacketType::GrabJob, &[], at(6000));
        assert_eq!(sent(&worker), [PacketType::NoJob]);
        assert!(!s.expire(job, 1, at(7000), &mut fx));
        assert!(sent(&client).is_empty());
    }

    #[test]
    fn a_timed_out_background_try_is_retried_and_the_old_timer_cannot_fail_the_retry() {
        let mut s = state(Limits::default());
        connect(&mut s, 1);
        connect(&mut s, 2);
        s.set_retry_policy(
            "slow",
            RetryPolicy { limit: 1, initial: Duration::from_secs(1), max: Duration::from_secs(1) },
        );
        req(&mut s, 1, PacketType::CanDoTimeout, &[b"slow", b"2000"]);
        req(&mut s, 2, PacketType::SubmitJobBg, &[b"slow", b"", b"x"]);
        req_at(&mut s, 1, PacketType::GrabJob, &[], at(0));
        let job = s.conns[&1].holding[0];

        assert!(s.expire(job, 1, at(2000), &mut Effects::default()));
        assert!(s.conns[&1].holding.is_empty(), "taken from the worker");
        assert_eq!(s.next_scheduled(), Some(at(3000).unix_ms), "retried after its backoff");
        s.release_due(at(3000), &mut Effects::default());
        let fx = req_at(&mut s, 1, PacketType::GrabJob, &[], at(3000));
        assert_eq!(fx.timers, [(job, 2, Duration::from_secs(2))]);

        // The first timer, had it fired late, must not end the second try.
        assert!(!s.expire(job, 1, at(4000), &mut Effects::default()));
        assert_eq!(s.conns[&1].holding, [job]);
        assert!(s.expire(job, 2, at(5000), &mut Effects::default()));
        let dead = s.dead_rows(Some("slow"));
        assert_eq!((dead.len(), dead[0].error.as_str()), (1, "timed out"), "out of tries");
    }

    #[test]
    fn a_retained_outcome_answers_until_its_time_to_live_ends() {
        let limits =
            Limits { retained_outcomes: 10, retained_outcome_ttl: Duration::from_secs(60), ..Limits::default() };
        let mut s = state(limits);
        let worker = connect(&mut s, 1);
        let client = connect(&mut s, 2);
        req(&mut s, 1, PacketType::CanDo, &[b"once"]);
        req(&mut s, 2, PacketType::OptionReq, &[b"gearfleet-retain-outcomes"]);
        assert_eq!(sent(&client), [PacketType::OptionRes]);
        req_at(&mut s, 2, PacketType::SubmitJob, &[b"once", b"u-1", b"payload"], at(0));
        req_at(&mut s, 1, PacketType::GrabJob, &[], at(0));
        let handle = received(&worker).pop().unwrap().arg(0).to_vec();
        req_at(&mut s, 1, PacketType::WorkComplete, &[&handle, b"result"], at(1000));
        assert_eq!(sent(&client), [PacketType::JobCreated, PacketType::WorkStatus, PacketType::WorkComplete]);

        // Just inside its time to live: answered from the outcome, nothing runs.
        req_at(&mut s, 2, PacketType::SubmitJob, &[b"once", b"u-1", b"payload"], at(60_999));
        let answer = received(&client);
        assert_eq!(
            answer.iter().map(|p| p.ptype).collect::<Vec<_>>(),
            [PacketType::JobCreated, PacketType::WorkComplete]
        );
        assert_eq!(answer[1].arg(1), b"result");
        assert_eq!(s.job_count(), 0);

        // Kept until housekeeping at the end of its time to live.
        s.expire_outcomes(at(60_999));
        assert_eq!(s.outcomes.len(), 1);
        s.expire_outcomes(at(61_000));
        assert!(s.outcomes.is_empty());

        // Expired: the same submission runs the job again.
        req_at(&mut s, 2, PacketType::SubmitJob, &[b"once", b"u-1", b"payload"], at(61_000));
        assert_eq!(sent(&client), [PacketType::JobCreated]);
        assert_eq!(s.job_count(), 1);
    }

    #[test]
    fn an_outcome_past_its_time_to_live_is_not_used_even_before_housekeeping() {
        let limits =
            Limits { retained_outcomes: 10, retained_outcome_ttl: Duration::from_secs(60), ..Limits::default() };
        let mut s = state(limits);
        let worker = connect(&mut s, 1);
        let client = connect(&mut s, 2);
        req(&mut s, 1, PacketType::CanDo, &[b"once"]);
        req(&mut s, 2, PacketType::OptionReq, &[b"gearfleet-retain-outcomes"]);
        req_at(&mut s, 2, PacketType::SubmitJob, &[b"once", b"u-1", b""], at(0));
        req_at(&mut s, 1, PacketType::GrabJob, &[], at(0));
        let handle = received(&worker).pop().unwrap().arg(0).to_vec();
        req_at(&mut s, 1, PacketType::WorkFail, &[&handle], at(0));
        sent(&client);
        req_at(&mut s, 2, PacketType::SubmitJob, &[b"once", b"u-1", b""], at(60_000));
        assert_eq!(sent(&client), [PacketType::JobCreated], "a new job, not the stale outcome");
        assert_eq!(s.job_count(), 1);
    }

    #[test]
    fn queue_wait_and_latency_are_measured_from_the_submission() {
        let (mut s, worker) = worker_and_client();
        req(&mut s, 1, PacketType::CanDo, &[b"f"]);
        req_at(&mut s, 2, PacketType::SubmitJob, &[b"f", b"", b"x"], at(0));
        req_at(&mut s, 1, PacketType::GrabJob, &[], at(250));
        let handle = received(&worker).pop().unwrap().arg(0).to_vec();
        req_at(&mut s, 1, PacketType::WorkComplete, &[&handle, b""], at(1000));
        let mut registry = prometheus_client::registry::Registry::default();
        s.metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "gearfleet_broker_job_queue_wait_seconds_sum 0.25",
            "gearfleet_broker_job_queue_wait_seconds_count 1",
            "gearfleet_broker_job_latency_seconds_sum 1.0",
            "gearfleet_broker_job_latency_seconds_count 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in:\n{text}");
        }
    }
}
