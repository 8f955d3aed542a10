//! Waking sleeping workers: as many as there are jobs waiting, never fewer.
//!
//! A worker that has nothing to do sends PRE_SLEEP and waits for a NOOP. Waking every sleeper of a
//! function for each job (what gearmand does by default) costs 500 NOOPs per job with 500 workers
//! asleep, and 499 of them only find NO_JOB. Instead, a function counts its workers that were
//! woken and have not asked for a job yet (`waking`), and a new job wakes sleepers only while
//! fewer are on their way than jobs wait. Nothing is lost on the way:
//!
//! * a woken worker that asks for a job, goes back to sleep or leaves stops counting, and another
//!   sleeper is woken at once if the function's jobs still outnumber the workers on their way
//!   (it may have taken another function's job, or none);
//! * a woken worker that does not ask within [`WAKE_GRACE_MS`] (stuck, stopped, or on a dead
//!   connection not yet closed) stops counting when the scheduler next runs, and another sleeper
//!   is woken in its place.

use gearfleet_proto::packet::{Magic, PacketType, encode_packet};

use super::State;
use super::model::{ConnId, FnId};

/// How long a woken worker has to ask for a job before another sleeper is woken in its place.
pub(super) const WAKE_GRACE_MS: u64 = 1_000;

impl State {
    /// Wakes sleeping workers of `fid`, longest asleep first, until as many are on their way as its
    /// jobs wait. Draining sleepers are skipped and stay listed (they must hear of work later).
    pub(super) fn wake_for(&mut self, fid: FnId) {
        let f = &mut self.functions[fid as usize];
        let waiting = f.queued_total();
        if f.sleepers.is_empty() || u64::from(f.waking) >= waiting {
            return;
        }
        let mut needed = waiting - u64::from(f.waking);
        let deadline = self.now_ms.saturating_add(WAKE_GRACE_MS);
        let mut skipped = Vec::new();
        while needed > 0
            && let Some((w, sleep)) = f.sleepers.pop_front()
        {
            let Some(c) = self.conns.get_mut(&w) else { continue };
            if !c.sleeping || c.sleeps != sleep {
                continue; // stale: it has woken since
            }
            if c.draining {
                skipped.push((w, sleep));
                continue;
            }
            c.sleeping = false;
            c.woken_for = Some((fid, deadline));
            c.outbox.push(|b| encode_packet(b, Magic::Res, PacketType::Noop, &[]));
            self.wake_deadlines.insert((deadline, w));
            f.waking += 1;
            needed -= 1;
            self.metrics.wakeups.inc();
        }
        for entry in skipped.into_iter().rev() {
            f.sleepers.push_front(entry);
        }
    }

    /// Worker `id` answered its wake-up (it asked for a job, went back to sleep or left): it is no
    /// longer on its way, and its function's waiting jobs may need another sleeper.
    pub(super) fn woke(&mut self, id: ConnId) {
        let Some(c) = self.conns.get_mut(&id) else { return };
        if let Some((fid, deadline)) = c.woken_for.take() {
            self.wake_answered(fid, deadline, id);
        }
    }

    /// Forgets the wake-up of worker `id` for `fid` (due at `deadline`) and wakes another sleeper
    /// if the function's jobs need one.
    pub(super) fn wake_answered(&mut self, fid: FnId, deadline: u64, id: ConnId) {
        self.wake_deadlines.remove(&(deadline, id));
        let f = &mut self.functions[fid as usize];
        f.waking = f.waking.saturating_sub(1);
        self.wake_for(fid);
    }

    /// Wake-ups older than [`WAKE_GRACE_MS`] at `now_ms` stop counting (another sleeper is woken
    /// in their place). Returns the next wake-up deadline.
    pub(super) fn expire_wakeups(&mut self, now_ms: u64) -> Option<u64> {
        while let Some(&(deadline, id)) = self.wake_deadlines.first() {
            if deadline > now_ms {
                return Some(deadline);
            }
            self.wake_deadlines.pop_first();
            let Some(c) = self.conns.get_mut(&id) else { continue };
            if let Some((fid, at)) = c.woken_for
                && at == deadline
            {
                c.woken_for = None;
                self.wake_answered(fid, deadline, id);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use gearfleet_proto::PacketType;

    use super::super::model::{Effects, Limits};
    use super::super::testing::{connect, req, sent, start, state};
    use super::*;

    /// `n` workers of `f`, asleep.
    fn sleepers(s: &mut State, n: u64) -> Vec<std::sync::Arc<crate::outbox::Outbox>> {
        (10..10 + n)
            .map(|id| {
                let out = connect(s, id);
                req(s, id, PacketType::CanDo, &[b"f"]);
                req(s, id, PacketType::PreSleep, &[]);
                out
            })
            .collect()
    }

    fn woken(outs: &[std::sync::Arc<crate::outbox::Outbox>]) -> usize {
        outs.iter().filter(|o| sent(o).contains(&PacketType::Noop)).count()
    }

    #[test]
    fn a_job_wakes_one_sleeper_and_a_burst_as_many_as_it_has_jobs() {
        let mut s = state(Limits::default());
        let outs = sleepers(&mut s, 50);
        connect(&mut s, 1);
        req(&mut s, 1, PacketType::SubmitJobBg, &[b"f", b"", b"a"]);
        assert_eq!(woken(&outs), 1, "one job, one NOOP, not 50");
        for i in 0..3 {
            req(&mut s, 1, PacketType::SubmitJobBg, &[b"f", b"", format!("{i}").as_bytes()]);
        }
        assert_eq!(woken(&outs), 3, "three more jobs: three more sleepers (the first is still on its way)");
        assert_eq!(s.metrics.wakeups.get(), 4);
    }

    #[test]
    fn a_woken_worker_that_takes_another_functions_job_hands_the_wake_up_on() {
        let mut s = state(Limits::default());
        let both = connect(&mut s, 10);
        req(&mut s, 10, PacketType::CanDo, &[b"g"]);
        req(&mut s, 10, PacketType::CanDo, &[b"f"]);
        req(&mut s, 10, PacketType::PreSleep, &[]);
        let other = connect(&mut s, 11);
        req(&mut s, 11, PacketType::CanDo, &[b"f"]);
        req(&mut s, 11, PacketType::PreSleep, &[]);
        connect(&mut s, 1);
        req(&mut s, 1, PacketType::SubmitJobHighBg, &[b"g", b"", b"urgent"]);
        req(&mut s, 1, PacketType::SubmitJobBg, &[b"f", b"", b"x"]);
        assert_eq!(sent(&both), [PacketType::Noop], "woken for g");
        assert!(sent(&other).contains(&PacketType::Noop), "f's job wakes a sleeper of its own");
        req(&mut s, 10, PacketType::GrabJob, &[]);
        assert_eq!(sent(&both), [PacketType::JobAssign], "the high-priority g job");
        req(&mut s, 11, PacketType::GrabJob, &[]);
        assert_eq!(sent(&other), [PacketType::JobAssign], "f's job");
    }

    #[test]
    fn a_worker_that_takes_the_job_elsewhere_lets_the_next_sleeper_hear_of_the_rest() {
        let mut s = state(Limits::default());
        let outs = sleepers(&mut s, 3);
        connect(&mut s, 1);
        req(&mut s, 1, PacketType::SubmitJobBg, &[b"f", b"", b"a"]);
        assert_eq!(woken(&outs), 1);
        // An awake worker of f (not one of the sleepers) takes the job first: the woken one finds
        // nothing and sleeps again; no other sleeper is bothered.
        connect(&mut s, 2);
        req(&mut s, 2, PacketType::CanDo, &[b"f"]);
        req(&mut s, 2, PacketType::GrabJob, &[]);
        req(&mut s, 10, PacketType::GrabJob, &[]);
        req(&mut s, 10, PacketType::PreSleep, &[]);
        assert_eq!(woken(&outs), 0);
        // The one on its way leaves: the job it was woken for wakes the next sleeper.
        req(&mut s, 1, PacketType::SubmitJobBg, &[b"f", b"", b"b"]);
        assert_eq!(woken(&outs), 1);
        let mut fx = Effects::default();
        s.remove_conn(11, start(), &mut fx);
        assert_eq!(woken(&outs[2..]), 1, "handed on when the woken worker left");
    }

    #[test]
    fn a_woken_worker_that_never_asks_is_replaced_after_the_grace() {
        let mut s = state(Limits::default());
        let outs = sleepers(&mut s, 2);
        connect(&mut s, 1);
        req(&mut s, 1, PacketType::SubmitJobBg, &[b"f", b"", b"a"]);
        assert_eq!(woken(&outs), 1, "worker 10 (stuck) is woken");
        let mut fx = Effects::default();
        let t0 = start();
        let next = s.release_due(t0.after(Duration::from_millis(500)), &mut fx);
        assert_eq!(woken(&outs), 0, "not yet");
        assert!(next.is_some_and(|at| at <= t0.unix_ms + WAKE_GRACE_MS + 1), "the scheduler comes back in time");
        s.release_due(t0.after(Duration::from_millis(WAKE_GRACE_MS + 10)), &mut fx);
        assert_eq!(sent(&outs[1]), [PacketType::Noop], "the other sleeper is woken in its place");
        req(&mut s, 11, PacketType::GrabJob, &[]);
        assert_eq!(sent(&outs[1]), [PacketType::JobAssign]);
    }

    #[test]
    fn draining_sleepers_are_skipped_but_hear_of_work_when_undrained() {
        let mut s = state(Limits::default());
        let outs = sleepers(&mut s, 2);
        let mut fx = Effects::default();
        s.set_draining("10.0.0.10", true, &mut fx);
        connect(&mut s, 1);
        req(&mut s, 1, PacketType::SubmitJobBg, &[b"f", b"", b"a"]);
        assert_eq!((sent(&outs[0]), sent(&outs[1])), (vec![], vec![PacketType::Noop]));
        req(&mut s, 1, PacketType::SubmitJobBg, &[b"f", b"", b"b"]);
        s.set_draining("10.0.0.10", false, &mut fx);
        assert_eq!(sent(&outs[0]), [PacketType::Noop], "undrained with work waiting");
    }
}
