//! What happens to a background job whose try failed (a retry after its backoff, or its
//! function's dead-letter queue) and to the jobs of a worker that disconnected (back to the front
//! of their queue, or dead-lettered after too many such losses).

use bytes::Bytes;

use super::State;
use super::model::{Effects, JobId, JobState, Now, Outcome};
use crate::store::Record;

impl State {
    /// A background job's try failed at `now`: run it again after its backoff while tries
    /// remain, else move it to its function's dead-letter queue.
    pub(super) fn retry_or_dead_letter(&mut self, job_id: JobId, error: Bytes, now: Now, fx: &mut Effects) {
        let Some(job) = self.jobs.get_mut(&job_id) else { return };
        let fid = job.fid as usize;
        if let JobState::Running { .. } | JobState::TimedOut { .. } = job.state {
            self.functions[fid].running -= 1;
        }
        job.state = JobState::Queued;
        job.extra.get_or_insert_with(Default::default).last_error = error.clone();
        let attempts = job.attempt;
        let policy = self.functions[fid].retry;
        if attempts <= policy.limit {
            let at = now.unix_ms + policy.backoff(attempts).as_millis() as u64;
            self.functions[fid].retried += 1;
            self.metrics.retried.inc();
            if self.journal.is_some() {
                self.journal_append(&Record::Retry { id: job_id, at_ms: at, attempts, error });
            }
            self.schedule(job_id, at, fx);
        } else {
            self.dead_letter(job_id, error);
        }
        fx.stats_changed = true;
    }

    fn dead_letter(&mut self, job_id: JobId, error: Bytes) {
        // Foreground clients attached through a shared unique key hear that it failed.
        self.notify_clients(job_id, Outcome::Fail, None);
        let Some(job) = self.jobs.get_mut(&job_id) else { return };
        let fid = job.fid as usize;
        job.state = JobState::Dead;
        job.extra.get_or_insert_with(Default::default).last_error = error.clone();
        let attempts = job.attempt;
        tracing::warn!(job = job_id, attempts, error = %String::from_utf8_lossy(&error), "job dead-lettered");
        let f = &mut self.functions[fid];
        f.uniques.remove(job_id, &job.unique);
        f.dead.push_back(job_id);
        f.dead_lettered += 1;
        self.metrics.dead_lettered.inc();
        if self.journal.is_some() {
            self.journal_append(&Record::Dead { id: job_id, attempts, error });
        }
        let limit = self.limits.dead_letter_limit;
        while limit > 0 && self.functions[fid].dead.len() > limit {
            if let Some(oldest) = self.functions[fid].dead.pop_front() {
                self.jobs.remove(&oldest);
                self.metrics.dead_dropped.inc();
                if self.journal.is_some() {
                    self.journal_append(&Record::Done { id: oldest });
                }
            }
        }
    }

    /// A worker disconnected holding the job: it goes back to the front of its queue, as in
    /// gearmand. A background job handed back more than `max_requeues` times is dead-lettered:
    /// it is most likely what kills its workers.
    pub(super) fn requeue_front(&mut self, job_id: JobId, fx: &mut Effects) {
        let Some(job) = self.jobs.get(&job_id) else { return };
        let JobState::Running { .. } = job.state else { return };
        let max = self.limits.max_requeues;
        if job.background && max > 0 && job.attempt > max {
            self.functions[job.fid as usize].running -= 1;
            let error = Bytes::from(format!("worker lost during {} tries", job.attempt));
            self.dead_letter(job_id, error);
            fx.stats_changed = true;
            return;
        }
        self.functions[job.fid as usize].running -= 1;
        if self.journal.is_some() && job.background {
            let attempts = job.attempt;
            self.journal_append(&Record::Retry {
                id: job_id,
                at_ms: 0,
                attempts,
                error: Bytes::from_static(b"worker lost"),
            });
        }
        self.enqueue(job_id, true);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use gearfleet_proto::PacketType;

    use super::super::State;
    use super::super::model::{Effects, Limits, Now, RetryPolicy};
    use super::super::testing::{at, connect, received, req, req_at, sent, state};
    use crate::outbox::Outbox;

    /// Worker 1 asks for a job at `now`: its handle, or `None` on NO_JOB.
    fn grab_at(s: &mut State, worker: &Arc<Outbox>, now: Now) -> Option<Vec<u8>> {
        req_at(s, 1, PacketType::GrabJob, &[], now);
        let reply = received(worker).pop().expect("a reply to GRAB_JOB");
        (reply.ptype == PacketType::JobAssign).then(|| reply.arg(0).to_vec())
    }

    #[test]
    fn a_failed_try_waits_out_its_backoff_then_the_job_is_dead_lettered() {
        let mut s = state(Limits::default());
        let worker = connect(&mut s, 1);
        connect(&mut s, 2);
        let policy = RetryPolicy { limit: 2, initial: Duration::from_millis(100), max: Duration::from_millis(150) };
        s.set_retry_policy("f", policy);
        req(&mut s, 1, PacketType::CanDo, &[b"f"]);
        req(&mut s, 2, PacketType::SubmitJobBg, &[b"f", b"", b"x"]);

        // Try 1 fails at 1 s: the next waits 100 ms.
        let h = grab_at(&mut s, &worker, at(0)).expect("try 1");
        let fx = req_at(&mut s, 1, PacketType::WorkFail, &[&h], at(1000));
        assert!(fx.schedule_changed, "the scheduler must look again");
        assert_eq!(s.next_scheduled(), Some(at(1100).unix_ms));
        req_at(&mut s, 1, PacketType::PreSleep, &[], at(1000));
        assert_eq!(s.release_due(at(1099), &mut Effects::default()), Some(at(1100).unix_ms));
        assert!(sent(&worker).is_empty(), "not due yet: the sleeper is left alone");
        assert_eq!(grab_at(&mut s, &worker, at(1099)), None, "not handed out before its backoff");
        req_at(&mut s, 1, PacketType::PreSleep, &[], at(1099));
        assert_eq!(s.release_due(at(1100), &mut Effects::default()), None);
        assert_eq!(sent(&worker), [PacketType::Noop], "due: the sleeper is woken");
        assert_eq!(grab_at(&mut s, &worker, at(1100)).as_deref(), Some(&h[..]), "try 2, same handle");

        // Try 2 fails at 2 s: the backoff doubles to 200 ms, capped at 150 ms.
        req_at(&mut s, 1, PacketType::WorkException, &[&h, b"boom"], at(2000));
        s.release_due(at(2149), &mut Effects::default());
        assert_eq!(grab_at(&mut s, &worker, at(2149)), None);
        s.release_due(at(2150), &mut Effects::default());
        assert!(grab_at(&mut s, &worker, at(2150)).is_some(), "try 3");

        // Try 3 was the last: dead-lettered with its error, nothing scheduled.
        req_at(&mut s, 1, PacketType::WorkFail, &[&h], at(3000));
        assert_eq!(s.next_scheduled(), None);
        let dead = s.dead_rows(None);
        assert_eq!((dead.len(), dead[0].attempts, dead[0].error.as_str()), (1, 3, "WORK_FAIL"));
        assert_eq!(s.function_counters()[0].retried, 2);
    }

    #[test]
    fn a_client_attached_to_a_background_job_hears_when_it_is_dead_lettered() {
        let limits = Limits { max_requeues: 1, ..Limits::default() };
        let mut s = state(limits);
        let client = connect(&mut s, 2);
        req(&mut s, 2, PacketType::SubmitJobBg, &[b"f", b"u", b"x"]);
        // Same function and unique key: the foreground client waits on the background job.
        req(&mut s, 2, PacketType::SubmitJob, &[b"f", b"u", b"x"]);
        assert_eq!(sent(&client), [PacketType::JobCreated, PacketType::JobCreated]);
        // Its workers are lost mid-job until it is dead-lettered.
        for worker in [10, 11] {
            connect(&mut s, worker);
            req(&mut s, worker, PacketType::CanDo, &[b"f"]);
            req(&mut s, worker, PacketType::GrabJob, &[]);
            s.remove_conn(worker, super::super::testing::start(), &mut Effects::default());
        }
        assert_eq!(s.functions[s.fn_index[&b"f"[..]] as usize].dead.len(), 1);
        assert_eq!(sent(&client), [PacketType::WorkFail]);
        assert!(s.conns[&2].waiting_on.is_empty());
    }
}
