//! Submission: a new job, or a client attached to the job that already holds its unique key;
//! scheduled jobs (`SUBMIT_JOB_EPOCH`/`SCHED`, retry backoffs) and their release when due;
//! enqueueing, with a NOOP to every sleeping worker that can take the job; and taking a job that
//! has not started back out.

use bytes::Bytes;
use gearfleet_proto::packet::PacketType;
use gearfleet_proto::{Packet, Priority, Submission};
use thin_vec::{ThinVec, thin_vec};

use super::model::{ConnId, Effects, Job, JobExtra, JobId, JobState, Now};
use super::{State, unique_of};
use crate::schedule;
use crate::store::Record;

impl State {
    pub(super) fn submit(&mut self, id: ConnId, p: &Packet, now: Now, fx: &mut Effects) {
        // The reduce submissions are not in the shared table: normal priority, like gearmand.
        let Submission { priority, background, .. } = Submission::of(p.ptype).unwrap_or(Submission {
            priority: Priority::Normal,
            background: p.ptype == PacketType::SubmitReduceJobBackground,
            scheduled: false,
        });
        if self.closing {
            self.send_error(id, super::shutdown::SHUTTING_DOWN, b"this broker is shutting down: submit to another");
            return;
        }
        let name = p.arg_bytes(0);
        if name.is_empty() {
            self.send_error(id, b"ERR_INVALID_ARGUMENTS", b"function name is empty");
            return;
        }
        let data = p.arg_bytes(p.len() - 1);
        let mut unique = p.arg_bytes(1);
        if unique.as_ref() == b"-" {
            unique = data.clone();
        }
        let (reducer, run_at) = match p.ptype {
            PacketType::SubmitReduceJob | PacketType::SubmitReduceJobBackground => (p.arg_bytes(2), None),
            PacketType::SubmitJobEpoch => {
                match std::str::from_utf8(p.arg(2)).ok().and_then(|s| s.trim().parse::<u64>().ok()) {
                    Some(epoch) => (Bytes::new(), Some(epoch.saturating_mul(1000))),
                    None => {
                        self.send_error(id, b"ERR_INVALID_ARGUMENTS", b"epoch is not a number");
                        return;
                    }
                }
            }
            PacketType::SubmitJobSched => {
                let fields: Vec<&[u8]> = (2..7).map(|i| p.arg(i)).collect();
                match schedule::next_match(&fields, now.unix_ms / 1000) {
                    Ok(at) => (Bytes::new(), Some(at * 1000)),
                    Err(e) => {
                        self.send_error(id, b"ERR_INVALID_ARGUMENTS", e.to_string().as_bytes());
                        return;
                    }
                }
            }
            _ => (Bytes::new(), None),
        };
        let fid = self.function_id(&name);
        let mut handle = Vec::with_capacity(32);
        let retain = !background && !unique.is_empty() && self.conns.get(&id).is_some_and(|c| c.retain_outcomes);

        // A retaining client asking again for a job that already ended gets its outcome, not a rerun.
        if retain && let Some(outcome) = self.outcomes.get(fid, &unique, now.instant).cloned() {
            self.answer_from_retained(id, outcome);
            return;
        }

        // Coalesce onto a job with the same (function, unique) that is queued or running.
        if let Some(existing) = self.functions[fid as usize].uniques.get(&unique, |j| unique_of(&self.jobs, j)) {
            let mut attached = false;
            let mut now_retained = false;
            if !background
                && let Some(job) = self.jobs.get_mut(&existing)
                && !job.clients.contains(&id)
            {
                now_retained = retain && !job.retain && !job.background;
                job.retain |= retain;
                job.clients.push(id);
                attached = true;
                if let Some(c) = self.conns.get_mut(&id) {
                    c.wait_on(existing);
                }
            }
            // A plain client's job a retaining client now waits for becomes durable as well.
            if now_retained
                && self.journal.is_some()
                && let Some(job) = self.jobs.get(&existing)
            {
                self.journal_append(&Record::AddForeground(self.record_of(existing, job)));
            }
            // The job may still be on its way to disk: acknowledge once everything so far is.
            if let Some(j) = &self.journal {
                fx.durable_seq = fx.durable_seq.max(j.last_seq());
            }
            self.handle_of(existing, &mut handle);
            self.send(id, PacketType::JobCreated, &[&handle]);
            if attached {
                self.tell_running(id, existing);
            }
            return;
        }

        let f = &self.functions[fid as usize];
        let limit = f.max_queue[priority as usize];
        if limit > 0 && f.queued[priority as usize] >= u64::from(limit) {
            self.metrics.rejected.inc();
            self.send_error(id, b"QUEUE_ERROR", b"Job queue is full");
            return;
        }
        if self.limits.max_queued_jobs > 0 && self.queued_total >= self.limits.max_queued_jobs {
            self.metrics.rejected.inc();
            self.send_error(id, b"QUEUE_ERROR", b"Broker queue limit reached");
            return;
        }

        let job_id = self.next_job;
        self.next_job += 1;
        let state = match run_at {
            Some(at) if at > now.unix_ms => JobState::Scheduled { at },
            _ => JobState::Queued,
        };
        let extra = (!reducer.is_empty()).then(|| Box::new(JobExtra { reducer, ..Default::default() }));
        let job = Job {
            fid,
            priority,
            background,
            state,
            attempt: 0,
            // Copy into a buffer of its own: a slice would pin the whole read buffer while queued.
            unique: if unique.is_empty() { Bytes::new() } else { Bytes::copy_from_slice(&unique) },
            data: Bytes::copy_from_slice(&data),
            clients: if background { ThinVec::new() } else { thin_vec![id] },
            retain,
            created: now.instant,
            extra,
        };
        if self.is_durable(&job) {
            let add = if background { Record::Add } else { Record::AddForeground };
            let record = add(self.record_of(job_id, &job));
            fx.durable_seq = fx.durable_seq.max(self.journal_append(&record));
        }
        self.jobs.insert(job_id, job);
        self.index_unique(job_id);
        if !background && let Some(c) = self.conns.get_mut(&id) {
            c.wait_on(job_id);
        }
        self.functions[fid as usize].submitted += 1;
        self.metrics.submitted.inc();
        self.handle_of(job_id, &mut handle);
        self.send(id, PacketType::JobCreated, &[&handle]);
        match state {
            JobState::Scheduled { at } => self.schedule(job_id, at, fx),
            _ => self.enqueue(job_id, false),
        }
        fx.stats_changed = true;
    }

    /// Indexes a job (already in the job table) under its unique key, unless it has none or
    /// another job holds that key.
    pub(super) fn index_unique(&mut self, job_id: JobId) {
        let Some(job) = self.jobs.get(&job_id) else { return };
        let jobs = &self.jobs;
        self.functions[job.fid as usize].uniques.insert(job_id, &job.unique, |id| unique_of(jobs, id));
    }

    /// Parks a job until `at` (unix milliseconds).
    pub(super) fn schedule(&mut self, job_id: JobId, at: u64, fx: &mut Effects) {
        let Some(job) = self.jobs.get_mut(&job_id) else { return };
        job.state = JobState::Scheduled { at };
        self.functions[job.fid as usize].scheduled += 1;
        self.scheduled.insert((at, job_id));
        fx.schedule_changed = true;
    }

    /// Puts a job in its function's queue and wakes the sleeping workers that can take it.
    pub(super) fn enqueue(&mut self, job_id: JobId, front: bool) {
        let Some(job) = self.jobs.get_mut(&job_id) else { return };
        job.state = JobState::Queued;
        let f = &mut self.functions[job.fid as usize];
        let q = &mut f.queues[job.priority as usize];
        if front {
            q.push_front(job_id);
        } else {
            q.push_back(job_id);
        }
        f.queued[job.priority as usize] += 1;
        self.queued_total += 1;
        let fid = job.fid;
        // As many sleepers as jobs wait, counting those already on their way (wakeups.rs).
        self.wake_for(fid);
    }

    /// Moves scheduled jobs whose time has come into their queues. Returns the next due time
    /// (unix milliseconds).
    pub fn release_due(&mut self, now: Now, fx: &mut Effects) -> Option<u64> {
        self.now_ms = now.unix_ms;
        let next_wake = self.expire_wakeups(now.unix_ms);
        self.release_scheduled(now, fx).into_iter().chain(next_wake).min()
    }

    /// Moves scheduled jobs whose time has come into their queues. Returns the next due time.
    fn release_scheduled(&mut self, now: Now, fx: &mut Effects) -> Option<u64> {
        while let Some(&(at, job_id)) = self.scheduled.first() {
            if at > now.unix_ms {
                return Some(at);
            }
            self.scheduled.pop_first();
            if self.jobs.get(&job_id).is_some_and(|j| j.state == (JobState::Held { until: at })) {
                self.release_held(job_id, fx);
                continue;
            }
            if let Some(job) = self.jobs.get(&job_id)
                && job.state == (JobState::Scheduled { at })
            {
                self.functions[job.fid as usize].scheduled -= 1;
                self.enqueue(job_id, false);
                fx.stats_changed = true;
            }
        }
        None
    }

    /// The earliest scheduled time (unix milliseconds).
    pub fn next_scheduled(&self) -> Option<u64> {
        self.scheduled.first().map(|&(at, _)| at)
    }

    /// Removes a queued, scheduled or dead job (cancel, purge, or a foreground job whose clients
    /// all left). A running job is not removed.
    pub(super) fn forget_queued(&mut self, job_id: JobId) -> bool {
        let Some(job) = self.jobs.get(&job_id) else { return false };
        let f = &mut self.functions[job.fid as usize];
        match job.state {
            JobState::Queued => {
                f.queued[job.priority as usize] -= 1;
                self.queued_total -= 1;
            }
            JobState::Scheduled { at } => {
                f.scheduled -= 1;
                self.scheduled.remove(&(at, job_id));
            }
            JobState::Dead => {
                f.dead.retain(|&j| j != job_id);
            }
            JobState::Running { .. } | JobState::TimedOut { .. } | JobState::Held { .. } => return false,
        }
        f.uniques.remove(job_id, &job.unique);
        let durable = job.background || job.retain;
        self.jobs.remove(&job_id);
        if durable && self.journal.is_some() {
            self.journal_append(&Record::Done { id: job_id });
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use gearfleet_proto::PacketType;

    use super::super::model::Effects;
    use super::super::testing::{at, req, req_at, sent, start, worker_and_client};

    #[test]
    fn an_epoch_job_is_handed_out_at_its_time_and_not_before() {
        let (mut s, worker) = worker_and_client();
        req(&mut s, 1, PacketType::CanDo, &[b"f"]);
        let due = (start().unix_ms / 1000 + 10).to_string();
        let past = (start().unix_ms / 1000 - 10).to_string();
        let fx = req_at(&mut s, 2, PacketType::SubmitJobEpoch, &[b"f", b"", due.as_bytes(), b"later"], at(0));
        assert!(fx.schedule_changed);
        req_at(&mut s, 2, PacketType::SubmitJobEpoch, &[b"f", b"", past.as_bytes(), b"past"], at(0));
        assert_eq!(s.next_scheduled(), Some(at(10_000).unix_ms));

        // Only the past-due job is queued.
        req_at(&mut s, 1, PacketType::GrabJob, &[], at(0));
        req_at(&mut s, 1, PacketType::GrabJob, &[], at(0));
        assert_eq!(sent(&worker), [PacketType::JobAssign, PacketType::NoJob]);
        assert_eq!(s.fleet_status()[0].scheduled, 1);

        // A sleeping worker is not woken a millisecond early, and is woken when it is due.
        req_at(&mut s, 1, PacketType::PreSleep, &[], at(0));
        assert_eq!(s.release_due(at(9_999), &mut Effects::default()), Some(at(10_000).unix_ms));
        assert!(sent(&worker).is_empty());
        let mut fx = Effects::default();
        assert_eq!(s.release_due(at(10_000), &mut fx), None);
        assert!(fx.stats_changed);
        assert_eq!(sent(&worker), [PacketType::Noop]);
        req_at(&mut s, 1, PacketType::GrabJob, &[], at(10_000));
        assert_eq!(sent(&worker), [PacketType::JobAssign]);
    }

    #[test]
    fn a_sched_job_waits_for_the_next_matching_minute() {
        let (mut s, worker) = worker_and_client();
        req(&mut s, 1, PacketType::CanDo, &[b"f"]);
        // Every field "any": the next whole minute after now (the start is 20 s past a minute).
        let now = at(30_500);
        req_at(&mut s, 2, PacketType::SubmitJobSched, &[b"f", b"", b"", b"", b"", b"", b"", b"x"], now);
        let next_minute = (now.unix_ms / 60_000 + 1) * 60_000;
        assert_eq!(s.next_scheduled(), Some(next_minute));
        s.release_due(at(next_minute - start().unix_ms - 1), &mut Effects::default());
        req_at(&mut s, 1, PacketType::GrabJob, &[], now);
        assert_eq!(sent(&worker), [PacketType::NoJob]);
        s.release_due(at(next_minute - start().unix_ms), &mut Effects::default());
        req_at(&mut s, 1, PacketType::GrabJob, &[], now);
        assert_eq!(sent(&worker), [PacketType::JobAssign]);
    }
}
