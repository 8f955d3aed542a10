//! CAN_DO_TIMEOUT: a try that runs past its worker's timeout is ended for its clients at once,
//! but the job stays held by that worker, which may still be running it, until the worker
//! answers for it, disconnects, or `--timeout-grace` passes. Only then may the job run again: a
//! background job is retried after its backoff (counted from that moment) or dead-lettered. So a
//! job is never handed to a second worker while the first may still be running it.

use bytes::Bytes;

use super::State;
use super::finish::TIMED_OUT;
use super::model::{ConnId, Effects, JobId, JobState, Now, Outcome, TimedOutTry};

impl State {
    /// CAN_DO_TIMEOUT expiry of try `attempt` of `job_id`: its clients hear at once (WORK_FAIL,
    /// or WORK_EXCEPTION for those that asked for exceptions); the worker keeps holding it for
    /// the grace (see the module). Returns whether the try was still running.
    pub fn expire(&mut self, job_id: JobId, attempt: u32, now: Now, fx: &mut Effects) -> bool {
        let grace = self.limits.timeout_grace;
        let Some(job) = self.jobs.get_mut(&job_id) else { return false };
        let JobState::Running { worker } = job.state else { return false };
        if job.attempt != attempt {
            return false;
        }
        let (fid, background) = (job.fid, job.background);
        let held = !grace.is_zero() && self.conns.contains_key(&worker);
        if held {
            job.state = JobState::TimedOut { worker };
        }
        if let Some(c) = self.conns.get_mut(&worker) {
            c.holding.retain(|&j| j != job_id);
            if held {
                c.timed_out.push(TimedOutTry { job: job_id, attempt, fid });
            }
        }
        self.metrics.timeouts.inc();
        if !held {
            // No grace: handed back at once (retried or dead-lettered, or finished).
            self.finish(job_id, Outcome::Timeout, None, now, fx);
            return true;
        }
        fx.graces.push((worker, job_id, attempt, grace));
        if background {
            // Its clients hear now; its retry waits for the hand-back.
            self.fail_background_try(job_id, Outcome::Timeout, None);
        } else {
            // Finished for its clients; it counts as running until the hand-back.
            self.finish(job_id, Outcome::Timeout, None, now, fx);
        }
        fx.stats_changed = true;
        true
    }

    /// The grace of a timed-out try ran out (a timer asked for through [`Effects::graces`]): the
    /// worker is taken to be done with it. Returns whether it still held the try.
    pub fn grace_over(&mut self, worker: ConnId, job_id: JobId, attempt: u32, now: Now, fx: &mut Effects) -> bool {
        self.hand_back_timed_out(worker, job_id, Some(attempt), now, fx)
    }

    /// The worker answered (late) for a job it may hold as a timed-out try: the answer itself is
    /// discarded (the caller replies as for any job that is gone), the try handed back.
    pub(super) fn late_answer(&mut self, worker: ConnId, job_id: JobId, now: Now, fx: &mut Effects) {
        self.hand_back_timed_out(worker, job_id, None, now, fx);
    }

    fn hand_back_timed_out(
        &mut self,
        worker: ConnId,
        job_id: JobId,
        attempt: Option<u32>,
        now: Now,
        fx: &mut Effects,
    ) -> bool {
        let Some(c) = self.conns.get_mut(&worker) else { return false };
        let Some(i) = c.timed_out.iter().position(|t| t.job == job_id && attempt.is_none_or(|a| a == t.attempt)) else {
            return false;
        };
        let t = c.timed_out.swap_remove(i);
        self.release_timed_out(worker, t, now, fx);
        true
    }

    /// Worker `worker` is done with a timed-out try (it answered, left, or its grace ended) at
    /// `now`: a background job is retried after its backoff from now, or dead-lettered; a
    /// foreground one, long finished for its clients, stops counting as running.
    pub(super) fn release_timed_out(&mut self, worker: ConnId, t: TimedOutTry, now: Now, fx: &mut Effects) {
        if self.jobs.get(&t.job).is_some_and(|j| j.state == JobState::TimedOut { worker }) {
            self.retry_or_dead_letter(t.job, Bytes::from_static(TIMED_OUT), now, fx);
        } else {
            self.functions[t.fid as usize].running -= 1;
        }
        fx.stats_changed = true;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use gearfleet_proto::PacketType;
    use gearfleet_proto::admin::WorkerState;

    use super::super::State;
    use super::super::model::{Effects, JobId, Limits, RetryPolicy};
    use super::super::testing::{at, connect, received, req, req_at, sent, state};
    use crate::outbox::Outbox;

    const GRACE: Duration = Duration::from_secs(30);

    /// Worker 1 (CAN_DO_TIMEOUT 2000 ms for `f`), a client (2) and a second worker of `f` (3);
    /// retries of `f`'s background jobs: `retries`, 1 s apart.
    fn setup(retries: u32) -> (State, Arc<Outbox>, Arc<Outbox>, Arc<Outbox>) {
        let mut s = state(Limits { timeout_grace: GRACE, ..Limits::default() });
        let worker = connect(&mut s, 1);
        let client = connect(&mut s, 2);
        let other = connect(&mut s, 3);
        let policy = RetryPolicy { limit: retries, initial: Duration::from_secs(1), max: Duration::from_secs(1) };
        s.set_retry_policy("f", policy);
        req(&mut s, 1, PacketType::CanDoTimeout, &[b"f", b"2000"]);
        req(&mut s, 3, PacketType::CanDo, &[b"f"]);
        (s, worker, client, other)
    }

    /// Worker `id` grabs at `ms`: the job and its handle.
    fn grab(s: &mut State, id: u64, outbox: &Outbox, ms: u64) -> (JobId, Vec<u8>) {
        req_at(s, id, PacketType::GrabJob, &[], at(ms));
        let p = received(outbox).pop().expect("a reply");
        assert_eq!(p.ptype, PacketType::JobAssign, "{p:?}");
        (s.parse_handle(p.arg(0)).unwrap(), p.arg(0).to_vec())
    }

    /// (total, running) of `f` in `status`, and whether connection `id` is busy in
    /// `fleet workers`.
    fn shown(s: &State, id: u64) -> (u64, u64, bool) {
        let row = s.status_rows().into_iter().find(|r| r.function == "f").unwrap();
        let peer = format!("10.0.0.{id}:4000");
        let busy = s.fleet_workers().iter().any(|w| w.address == peer && w.state == WorkerState::Busy);
        (row.total, row.running, busy)
    }

    #[test]
    fn a_timed_out_foreground_try_fails_at_once_and_stays_held_until_the_late_answer() {
        let (mut s, worker, client, other) = setup(0);
        let watcher = connect(&mut s, 4);
        req(&mut s, 4, PacketType::OptionReq, &[b"exceptions"]);
        req(&mut s, 2, PacketType::SubmitJob, &[b"f", b"u", b"x"]);
        req(&mut s, 4, PacketType::SubmitJob, &[b"f", b"u", b"x"]);
        sent(&client);
        sent(&watcher);
        let (job, handle) = grab(&mut s, 1, &worker, 0);

        let mut fx = Effects::default();
        assert!(s.expire(job, 1, at(2000), &mut fx));
        assert_eq!(sent(&client), [PacketType::WorkFail], "told at once");
        assert_eq!(sent(&watcher), [PacketType::WorkException], "as an exception to a client that asked");
        assert_eq!(fx.graces, [(1, job, 1, GRACE)], "a timer for the grace");
        assert_eq!(shown(&s, 1), (1, 1, true), "still running, on a busy worker");
        let f = s.fleet_status().into_iter().find(|f| f.function == "f").unwrap();
        assert_eq!((f.running, f.workers, f.idle_workers), (1, 2, 1));
        let listed = s.fleet_workers().into_iter().find(|w| w.address == "10.0.0.1:4000").unwrap();
        assert_eq!(listed.current_jobs, [String::from_utf8(handle.clone()).unwrap()]);
        req_at(&mut s, 3, PacketType::GrabJob, &[], at(3000));
        assert_eq!(sent(&other), [PacketType::NoJob], "never handed to another worker");

        // The late answer is discarded (refused as for a job that is gone) and frees the worker.
        req_at(&mut s, 1, PacketType::WorkComplete, &[&handle, b"late"], at(9000));
        let refused = received(&worker).pop().unwrap();
        assert_eq!((refused.ptype, refused.arg(0)), (PacketType::Error, &b"job_not_found"[..]));
        assert_eq!(shown(&s, 1), (0, 0, false));
        assert!(sent(&client).is_empty() && sent(&watcher).is_empty(), "told once");
        req_at(&mut s, 3, PacketType::GrabJob, &[], at(9000));
        assert_eq!(sent(&other), [PacketType::NoJob], "a foreground job is not run again");
        assert!(!s.grace_over(1, job, 1, at(32_000), &mut Effects::default()), "the grace timer is spent");
        assert_eq!(shown(&s, 1), (0, 0, false));
    }

    #[test]
    fn a_timed_out_background_try_is_retried_after_the_answer_with_its_backoff_from_then() {
        let (mut s, worker, _client, other) = setup(1);
        req(&mut s, 2, PacketType::SubmitJobBg, &[b"f", b"", b"x"]);
        let (job, handle) = grab(&mut s, 1, &worker, 0);
        req_at(&mut s, 3, PacketType::PreSleep, &[], at(0));

        assert!(s.expire(job, 1, at(2000), &mut Effects::default()));
        assert_eq!(s.next_scheduled(), None, "no retry while the worker may still run it");
        s.release_due(at(10_000), &mut Effects::default());
        assert!(sent(&other).is_empty(), "nothing for the other worker");
        assert_eq!(shown(&s, 1), (1, 1, true));
        assert_eq!(s.admin_cancel(&String::from_utf8_lossy(&handle), &mut Effects::default()), Err("JOB_RUNNING"));
        assert!(s.admin_drop_function("f").is_err());

        req_at(&mut s, 1, PacketType::WorkFail, &[&handle], at(20_000));
        assert_eq!(sent(&worker), [PacketType::Error]);
        assert_eq!(s.next_scheduled(), Some(at(21_000).unix_ms), "backoff counted from the answer");
        assert_eq!(shown(&s, 1), (0, 0, false), "waiting for its retry (scheduled), not running");
        s.release_due(at(21_000), &mut Effects::default());
        assert_eq!(sent(&other), [PacketType::Noop]);
        let (retried, _) = grab(&mut s, 3, &other, 21_000);
        assert_eq!(retried, job);
    }

    #[test]
    fn a_worker_that_leaves_or_outlives_its_grace_hands_the_try_back_then() {
        // Leaves: the retry's backoff counts from the disconnect.
        let (mut s, worker, _client, _other) = setup(1);
        req(&mut s, 2, PacketType::SubmitJobBg, &[b"f", b"", b"x"]);
        let (job, _) = grab(&mut s, 1, &worker, 0);
        assert!(s.expire(job, 1, at(2000), &mut Effects::default()));
        s.remove_conn(1, at(7000), &mut Effects::default());
        assert_eq!(s.next_scheduled(), Some(at(8000).unix_ms));
        assert!(s.status_rows().iter().all(|r| r.running == 0));

        // Outlives the grace, on its second try: the first try's grace timer cannot end it, its
        // own does, and with no tries left the job is dead-lettered then, not at the timeout.
        let (mut s, worker, _client, _other) = setup(1);
        req(&mut s, 3, PacketType::CantDo, &[b"f"]);
        req(&mut s, 2, PacketType::SubmitJobBg, &[b"f", b"", b"x"]);
        let (job, handle) = grab(&mut s, 1, &worker, 0);
        assert!(s.expire(job, 1, at(2000), &mut Effects::default()));
        req_at(&mut s, 1, PacketType::WorkComplete, &[&handle, b""], at(3000));
        s.release_due(at(4000), &mut Effects::default());
        grab(&mut s, 1, &worker, 4000);
        let mut fx = Effects::default();
        assert!(s.expire(job, 2, at(6000), &mut fx));
        assert_eq!(fx.graces, [(1, job, 2, GRACE)]);
        assert!(!s.grace_over(1, job, 1, at(32_000), &mut Effects::default()), "the first try's timer");
        assert!(s.dead_rows(None).is_empty(), "held, not yet dead");
        assert!(s.grace_over(1, job, 2, at(36_000), &mut Effects::default()));
        let dead = s.dead_rows(None);
        assert_eq!((dead.len(), dead[0].attempts, dead[0].error.as_str()), (1, 2, "timed out"));
        assert_eq!(shown(&s, 1), (0, 0, false));
    }
}
