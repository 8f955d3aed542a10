//! Workers: what they can do (CAN_DO, CAN_DO_TIMEOUT, CANT_DO, RESET_ABILITIES), going to sleep
//! (PRE_SLEEP), taking a job (GRAB_JOB*, or NO_JOB), and draining.

use std::time::Duration;

use bytes::Bytes;
use gearfleet_proto::Priority;
use gearfleet_proto::packet::{Magic, PacketType, encode_packet};

use super::State;
use super::model::{Ability, ConnId, Effects, FnId, GrabKind, JobId, JobState, Now};
use crate::store::Record;

impl State {
    /// CAN_DO_TIMEOUT: the timeout is in milliseconds, as gearmand (and the PHP, C and Python
    /// libraries that send it) read it, raised to gearmand's floor of one second; 0 or not a
    /// number means none.
    pub(super) fn can_do_timeout(&mut self, id: ConnId, name: Bytes, millis: &[u8], fx: &mut Effects) {
        self.can_do(id, name, can_do_timeout_value(millis), fx)
    }

    pub(super) fn can_do(&mut self, id: ConnId, name: Bytes, timeout: Option<Duration>, fx: &mut Effects) {
        if name.is_empty() {
            self.send_error(id, b"ERR_INVALID_ARGUMENTS", b"function name is empty");
            return;
        }
        let fid = self.function_id(&name);
        let Some(c) = self.conns.get_mut(&id) else { return };
        if let Some(a) = c.abilities.iter_mut().find(|a| a.fid == fid) {
            a.timeout = timeout;
            return;
        }
        c.abilities.push(Ability { fid, timeout });
        let f = &mut self.functions[fid as usize];
        f.workers.push(id);
        if c.sleeping {
            // Registered while asleep: it must hear of this function's jobs too.
            f.sleepers.push_back((id, c.sleeps));
        }
        fx.stats_changed = true;
    }

    pub(super) fn cant_do(&mut self, id: ConnId, name: &[u8], fx: &mut Effects) {
        let Some(&fid) = self.fn_index.get(name) else { return };
        let Some(c) = self.conns.get_mut(&id) else { return };
        c.abilities.retain(|a| a.fid != fid);
        self.functions[fid as usize].workers.retain(|&w| w != id);
        fx.stats_changed = true;
    }

    pub(super) fn reset_abilities(&mut self, id: ConnId, fx: &mut Effects) {
        let Some(c) = self.conns.get_mut(&id) else { return };
        for a in c.abilities.drain(..) {
            self.functions[a.fid as usize].workers.retain(|&w| w != id);
        }
        fx.stats_changed = true;
    }

    pub(super) fn pre_sleep(&mut self, id: ConnId) {
        let has_work = self.next_job_for(id).is_some();
        let Some(c) = self.conns.get_mut(&id) else { return };
        if has_work && !c.draining {
            // A job arrived between this worker's NO_JOB and its PRE_SLEEP: wake it at once (if it
            // was woken for one, it is still on its way).
            c.outbox.push(|b| encode_packet(b, Magic::Res, PacketType::Noop, &[]));
            return;
        }
        self.woke(id);
        let Some(c) = self.conns.get_mut(&id) else { return };
        if c.sleeping {
            return;
        }
        c.sleeping = true;
        c.sleeps = c.sleeps.wrapping_add(1);
        let sleep = c.sleeps;
        let fids: Vec<FnId> = c.abilities.iter().map(|a| a.fid).collect();
        for fid in fids {
            let f = &mut self.functions[fid as usize];
            f.sleepers.push_back((id, sleep));
            // A function that gets no jobs is never swept by `enqueue`: drop its stale entries
            // once they outnumber its workers, so the list stays proportional to the fleet.
            if f.sleepers.len() > 2 * f.workers.len() + 8 {
                let conns = &self.conns;
                f.sleepers.retain(|&(w, s)| conns.get(&w).is_some_and(|c| c.sleeping && c.sleeps == s));
            }
        }
    }

    /// The oldest queued job of the highest priority among all the functions the worker can do
    /// (priority is global across a worker's functions, FIFO within a priority). Drops ids of
    /// cancelled jobs from queue fronts on the way.
    fn next_job_for(&mut self, id: ConnId) -> Option<(FnId, Priority)> {
        let c = self.conns.get(&id)?;
        for prio in Priority::ALL {
            let mut best: Option<(JobId, FnId)> = None;
            for a in &c.abilities {
                let q = &mut self.functions[a.fid as usize].queues[prio as usize];
                while let Some(&front) = q.front() {
                    if self.jobs.get(&front).is_some_and(|j| j.state == JobState::Queued) {
                        break;
                    }
                    q.pop_front();
                }
                if let Some(&front) = q.front()
                    && best.is_none_or(|(b, _)| front < b)
                {
                    best = Some((front, a.fid));
                }
            }
            if let Some((_, fid)) = best {
                return Some((fid, prio));
            }
        }
        None
    }

    pub(super) fn grab(&mut self, id: ConnId, kind: GrabKind, now: Now, fx: &mut Effects) {
        self.woke(id);
        let draining = self.conns.get(&id).is_none_or(|c| c.draining);
        let next = if draining { None } else { self.next_job_for(id) };
        let Some((fid, prio)) = next else {
            self.send(id, PacketType::NoJob, &[]);
            return;
        };
        let f = &mut self.functions[fid as usize];
        let Some(job_id) = f.queues[prio as usize].pop_front() else {
            self.send(id, PacketType::NoJob, &[]);
            return;
        };
        f.queued[prio as usize] -= 1;
        f.running += 1;
        self.queued_total -= 1;
        let Some(job) = self.jobs.get_mut(&job_id) else { return };
        job.state = JobState::Running { worker: id };
        job.attempt += 1;
        let attempt = job.attempt;
        let (background, retain) = (job.background, job.retain);
        if self.journal.is_some() && background {
            self.journal_append(&Record::Started { id: job_id });
        } else if self.journal.is_some() && retain {
            // A resuming worker is named, so it can take the job back after a restart. (Like
            // every record of a batch, on disk before the assignment goes out.)
            let record = match self.conns.get(&id).and_then(|c| c.resumer()) {
                Some(worker) => Record::StartedBy { id: job_id, worker },
                None => Record::Started { id: job_id },
            };
            self.journal_append(&record);
        }
        let Some(job) = self.jobs.get(&job_id) else { return };
        self.metrics.queue_wait.observe(now.instant.saturating_duration_since(job.created).as_secs_f64());
        let Some(c) = self.conns.get_mut(&id) else { return };
        c.holding.push(job_id);
        c.sleeping = false;
        if let Some(t) = c.abilities.iter().find(|a| a.fid == fid).and_then(|a| a.timeout) {
            fx.timers.push((job_id, attempt, t));
        }
        let mut handle = Vec::with_capacity(32);
        self.handle_of(job_id, &mut handle);
        let job = &self.jobs[&job_id];
        let name = &self.functions[fid as usize].name;
        let c = &self.conns[&id];
        c.outbox.push(|b| match kind {
            GrabKind::Plain => encode_packet(b, Magic::Res, PacketType::JobAssign, &[&handle, name, &job.data]),
            GrabKind::Uniq => {
                encode_packet(b, Magic::Res, PacketType::JobAssignUniq, &[&handle, name, &job.unique, &job.data])
            }
            GrabKind::All => {
                let reducer = job.extra.as_ref().map(|e| e.reducer.as_ref()).unwrap_or(b"");
                encode_packet(
                    b,
                    Magic::Res,
                    PacketType::JobAssignAll,
                    &[&handle, name, &job.unique, reducer, &job.data],
                )
            }
        });
        // Retaining clients (the operator) learn that the job started: a WORK_STATUS of 0/0.
        if job.retain {
            for client in &job.clients {
                if let Some(c) = self.conns.get(client).filter(|c| c.retain_outcomes) {
                    c.outbox.push(|b| encode_packet(b, Magic::Res, PacketType::WorkStatus, &[&handle, b"0", b"0"]));
                }
            }
        }
        fx.stats_changed = true;
    }

    /// Marks the connections `target` names (a client id, an `IP:PORT` or a bare IP: see
    /// `conns_named`) as draining (or not). Returns how many matched.
    pub fn set_draining(&mut self, target: &str, draining: bool, fx: &mut Effects) -> usize {
        let named = self.conns_named(target);
        let mut woken = Vec::new();
        for &id in &named {
            if let Some(c) = self.conns.get_mut(&id) {
                c.draining = draining || self.closing;
                if !draining && c.sleeping {
                    woken.push(id);
                }
            }
        }
        // An undrained sleeper may have missed wake-ups while draining: wake it if work waits.
        for id in woken {
            if self.next_job_for(id).is_some()
                && let Some(c) = self.conns.get_mut(&id)
            {
                c.sleeping = false;
                c.outbox.push(|b| encode_packet(b, Magic::Res, PacketType::Noop, &[]));
            }
        }
        fx.stats_changed = true;
        named.len()
    }
}

/// The shortest CAN_DO_TIMEOUT: gearmand raises shorter ones to a second.
const MIN_CAN_DO_TIMEOUT: Duration = Duration::from_secs(1);

/// A CAN_DO_TIMEOUT argument: milliseconds, at least [`MIN_CAN_DO_TIMEOUT`]; `None` for 0 or
/// anything that is not a number.
fn can_do_timeout_value(millis: &[u8]) -> Option<Duration> {
    let millis = std::str::from_utf8(millis).ok().and_then(|s| s.trim().parse::<u64>().ok())?;
    (millis > 0).then(|| Duration::from_millis(millis).max(MIN_CAN_DO_TIMEOUT))
}

#[cfg(test)]
mod tests {
    use gearfleet_proto::PacketType;

    use std::time::Duration;

    use super::super::model::Effects;
    use super::super::testing::{req, req_at, sent, start, worker_and_client};
    use super::can_do_timeout_value;

    #[test]
    fn can_do_timeout_is_in_milliseconds_with_a_one_second_floor() {
        let ms = Duration::from_millis;
        assert_eq!(can_do_timeout_value(b"1500"), Some(ms(1500)), "a PHP or C worker's 1,500 ms");
        assert_eq!(can_do_timeout_value(b"30000"), Some(ms(30_000)));
        assert_eq!(can_do_timeout_value(b"999"), Some(ms(1000)), "raised to gearmand's floor");
        assert_eq!(can_do_timeout_value(b"1"), Some(ms(1000)));
        assert_eq!(can_do_timeout_value(b" 2000 "), Some(ms(2000)));
        for none in [&b"0"[..], b"", b"-5", b"1.5", b"soon", b"\xff"] {
            assert_eq!(can_do_timeout_value(none), None, "{:?}", String::from_utf8_lossy(none));
        }
        // The timer a grab asks for is the registered one.
        let (mut s, _worker) = worker_and_client();
        req(&mut s, 1, PacketType::CanDoTimeout, &[b"f", b"1500"]);
        req(&mut s, 2, PacketType::SubmitJobBg, &[b"f", b"", b"x"]);
        let fx = req_at(&mut s, 1, PacketType::GrabJob, &[], start());
        assert_eq!(fx.timers, [(s.conns[&1].holding[0], 1, ms(1500))]);
    }

    #[test]
    fn sleeper_lists_of_functions_without_jobs_stay_bounded() {
        let (mut s, worker) = worker_and_client();
        req(&mut s, 1, PacketType::CanDo, &[b"busy"]);
        req(&mut s, 1, PacketType::CanDo, &[b"quiet"]);
        // Many sleep/wake cycles driven by "busy" jobs only.
        for _ in 0..1000 {
            req(&mut s, 1, PacketType::PreSleep, &[]);
            req(&mut s, 2, PacketType::SubmitJobBg, &[b"busy", b"", b"x"]);
            req(&mut s, 1, PacketType::GrabJob, &[]);
            let handle = {
                let fid = s.fn_index[&b"busy"[..]];
                let job = s.jobs.iter().find(|(_, j)| j.fid == fid).map(|(id, _)| id).unwrap();
                let mut h = Vec::new();
                s.handle_of(job, &mut h);
                h
            };
            req(&mut s, 1, PacketType::WorkComplete, &[&handle, b""]);
        }
        let quiet = s.fn_index[&b"quiet"[..]] as usize;
        assert!(s.functions[quiet].sleepers.len() <= 2 * s.functions[quiet].workers.len() + 9);
        // And the worker still hears of a "quiet" job while it sleeps.
        req(&mut s, 1, PacketType::PreSleep, &[]);
        sent(&worker);
        req(&mut s, 2, PacketType::SubmitJobBg, &[b"quiet", b"", b"x"]);
        assert_eq!(sent(&worker), [PacketType::Noop]);
    }

    #[test]
    fn a_sleeper_is_woken_once_per_sleep_and_not_while_draining() {
        let (mut s, worker) = worker_and_client();
        req(&mut s, 1, PacketType::SetClientId, &[b"pod-1"]);
        req(&mut s, 1, PacketType::CanDo, &[b"f"]);
        req(&mut s, 1, PacketType::PreSleep, &[]);
        req(&mut s, 1, PacketType::PreSleep, &[]);
        for _ in 0..3 {
            req(&mut s, 2, PacketType::SubmitJobBg, &[b"f", b"", b"x"]);
        }
        assert_eq!(sent(&worker), [PacketType::Noop], "one NOOP for a burst, however many PRE_SLEEPs");
        // A draining sleeper is left alone, and woken once it is undrained.
        req(&mut s, 1, PacketType::GrabJob, &[]);
        sent(&worker);
        let mut fx = Effects::default();
        s.set_draining("pod-1", true, &mut fx);
        req(&mut s, 1, PacketType::PreSleep, &[]);
        req(&mut s, 2, PacketType::SubmitJobBg, &[b"f", b"", b"y"]);
        assert!(sent(&worker).is_empty(), "a draining worker is not woken");
        s.set_draining("pod-1", false, &mut fx);
        assert_eq!(sent(&worker), [PacketType::Noop]);
        // After a sleep in which nothing came, a later job still wakes it.
        req(&mut s, 1, PacketType::GrabJob, &[]);
        req(&mut s, 1, PacketType::GrabJob, &[]);
        req(&mut s, 1, PacketType::GrabJob, &[]);
        sent(&worker);
        s.set_draining("pod-1", true, &mut fx);
        req(&mut s, 1, PacketType::PreSleep, &[]);
        s.set_draining("pod-1", false, &mut fx);
        assert!(sent(&worker).is_empty(), "nothing queued: no NOOP on undrain");
        req(&mut s, 2, PacketType::SubmitJobBg, &[b"f", b"", b"z"]);
        assert_eq!(sent(&worker), [PacketType::Noop]);
    }

    #[test]
    fn a_function_registered_while_asleep_wakes_the_worker() {
        let (mut s, worker) = worker_and_client();
        req(&mut s, 1, PacketType::CanDo, &[b"a"]);
        req(&mut s, 1, PacketType::PreSleep, &[]);
        req(&mut s, 1, PacketType::CanDo, &[b"b"]);
        req(&mut s, 2, PacketType::SubmitJobBg, &[b"b", b"", b"x"]);
        assert_eq!(sent(&worker), [PacketType::Noop]);
    }
}
