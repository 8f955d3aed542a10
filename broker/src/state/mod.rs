//! The job server's state: functions and their priority queues, jobs, connections, and every
//! protocol transition. All of it runs under one lock held for microseconds; output is appended
//! to connection outboxes and written by the connections' own tasks, and anything that needs the
//! runtime (timers, wake-ups of the scheduler) is returned as [`Effects`] for the caller to do
//! after the lock is released. The state never reads a clock: every transition that depends on
//! time is handed the moment it happens at ([`Now`]).
//!
//! Where each concern lives:
//! * [`model`]: ids, jobs and their states, retry policy, limits, [`Effects`], [`Now`].
//! * `function.rs`, `conn.rs`: a function's and a connection's entry in the state.
//! * `connections.rs`: connections joining and leaving, their client id and options.
//! * `submit.rs`: submission, coalescing on unique keys, scheduled jobs, enqueueing and the
//!   NOOP wake-ups of sleeping workers; taking a job that has not started back out.
//! * `workers.rs`: abilities, PRE_SLEEP, grabbing a job, draining.
//! * `finish.rs`: WORK_STATUS/DATA/WARNING, the end of a try, telling attached clients,
//!   retained outcomes, GET_STATUS.
//! * `timeout.rs`: CAN_DO_TIMEOUT expiry, and the timed-out try its worker holds until it answers,
//!   leaves or its grace ends.
//! * `retry.rs`: retries with backoff, dead letters, hand-backs of a lost worker's jobs.
//! * `resume.rs`: retaining clients' jobs held for the resuming worker that lost its connection
//!   (or that ran them before a restart), taken back by it or released after the claim grace.
//! * `durability.rs`: the journal (recovery, compaction) and giving memory back after a drain.
//! * `admin.rs`: what the admin and fleet commands ask of the state (typed rows; the text is
//!   made by `gearfleet_proto::admin`).
//!
//! [`State::handle`] is the table of contents: one line per packet type.

mod admin;
mod conn;
mod connections;
mod durability;
mod finish;
mod function;
pub mod model;
mod resume;
mod retry;
mod shutdown;
mod submit;
mod timeout;
mod wakeups;
mod workers;

#[cfg(test)]
mod testing;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use gearfleet_proto::Packet;
use gearfleet_proto::packet::{Magic, PacketType, encode_packet};
use rustc_hash::FxHashMap;

use self::conn::Conn;
use self::function::Function;
use self::model::{FnId, GrabKind, Job, Outcome};
use crate::id_table::IdTable;
use crate::metrics::Metrics;
use crate::outcomes::Outcomes;
use crate::store::Journal;

pub use self::model::{ConnId, Effects, JobId, Limits, Now, RetryPolicy};

/// First handle number of answers from retained outcomes (far above any job id).
const ANSWER_HANDLES_FROM: u64 = 1 << 62;
/// Payload bytes the retained outcomes may hold in all.
const RETAINED_OUTCOME_BYTES: usize = 256 * 1024 * 1024;

pub struct State {
    functions: Vec<Function>,
    fn_index: HashMap<Bytes, FnId>,
    // The broker assigns job and connection ids itself, so these tables use a fast hash without
    // SipHash's flood protection; tables keyed by what peers send (function names, unique keys)
    // keep SipHash.
    jobs: IdTable<Job>,
    conns: FxHashMap<ConnId, Conn>,
    next_job: JobId,
    /// Handles of answers from retained outcomes come from a range of their own: they are never
    /// jobs, and taking them from `next_job` would leave gaps in the job table's window.
    next_answer_handle: u64,
    scheduled: BTreeSet<(u64, JobId)>,
    /// Deadlines of the wake-ups workers have not answered yet, with the worker
    /// ([`wakeups`](self::wakeups)).
    wake_deadlines: BTreeSet<(u64, ConnId)>,
    /// The time of the latest request or scheduler run, unix milliseconds (for wake-up deadlines
    /// set outside a request).
    now_ms: u64,
    handle_prefix: Vec<u8>,
    queued_total: u64,
    limits: Limits,
    journal: Option<Journal>,
    outcomes: Outcomes,
    /// Shutting down: no submissions, no assignments ([`shutdown`](self::shutdown)).
    closing: bool,
    /// Jobs in `JobState::Held` ([`resume`](self::resume)).
    held: u64,
    pub metrics: Arc<Metrics>,
}

/// A job's unique key, for the function indexes (which keep only job ids).
fn unique_of(jobs: &IdTable<Job>, id: JobId) -> Option<&[u8]> {
    jobs.get(&id).map(|j| &j.unique[..])
}

impl State {
    pub fn new(host: &str, limits: Limits, metrics: Arc<Metrics>) -> State {
        State {
            functions: Vec::new(),
            fn_index: HashMap::new(),
            jobs: IdTable::new(),
            conns: FxHashMap::default(),
            next_job: 1,
            next_answer_handle: ANSWER_HANDLES_FROM,
            scheduled: BTreeSet::new(),
            wake_deadlines: BTreeSet::new(),
            now_ms: 0,
            handle_prefix: format!("H:{host}:").into_bytes(),
            queued_total: 0,
            outcomes: Outcomes::new(limits.retained_outcomes, RETAINED_OUTCOME_BYTES, limits.retained_outcome_ttl),
            limits,
            journal: None,
            closing: false,
            held: 0,
            metrics,
        }
    }

    /// Applies one request packet from connection `id`, at `now`.
    pub fn handle(&mut self, id: ConnId, p: &Packet, now: Now, fx: &mut Effects) {
        self.now_ms = now.unix_ms;
        use PacketType as T;
        match p.ptype {
            // Clients (submit.rs, finish.rs).
            T::SubmitJob
            | T::SubmitJobBg
            | T::SubmitJobHigh
            | T::SubmitJobHighBg
            | T::SubmitJobLow
            | T::SubmitJobLowBg
            | T::SubmitReduceJob
            | T::SubmitReduceJobBackground
            | T::SubmitJobEpoch
            | T::SubmitJobSched => self.submit(id, p, now, fx),
            T::GetStatus => self.get_status(id, p.arg(0)),
            T::GetStatusUnique => self.get_status_unique(id, p.arg(0)),
            // Workers (workers.rs).
            T::CanDo => self.can_do(id, p.arg_bytes(0), None, fx),
            T::CanDoTimeout => self.can_do_timeout(id, p.arg_bytes(0), p.arg(1), fx),
            T::CantDo => self.cant_do(id, p.arg(0), fx),
            T::ResetAbilities => self.reset_abilities(id, fx),
            T::PreSleep => self.pre_sleep(id),
            T::GrabJob => self.grab(id, GrabKind::Plain, now, fx),
            T::GrabJobUniq => self.grab(id, GrabKind::Uniq, now, fx),
            T::GrabJobAll => self.grab(id, GrabKind::All, now, fx),
            // A worker's job (finish.rs).
            T::WorkStatus | T::WorkData | T::WorkWarning => self.work_update(id, p),
            T::WorkComplete => self.work_finish(id, p, Outcome::Complete, now, fx),
            T::WorkFail => self.work_finish(id, p, Outcome::Fail, now, fx),
            T::WorkException => self.work_finish(id, p, Outcome::Exception, now, fx),
            // The connection itself (connections.rs).
            T::SetClientId => self.set_client_id(id, p.arg_bytes(0)),
            T::OptionReq => self.option_req(id, p.arg(0)),
            T::EchoReq => self.send(id, PacketType::EchoRes, &[p.arg(0)]),
            // ALL_YOURS: a worker declares it is this server's alone; nothing to do.
            T::AllYours => {}
            // Response-only types arriving as requests.
            T::Noop
            | T::JobCreated
            | T::NoJob
            | T::JobAssign
            | T::JobAssignUniq
            | T::JobAssignAll
            | T::EchoRes
            | T::Error
            | T::StatusRes
            | T::StatusResUnique
            | T::OptionRes => {
                let msg = format!("{} is a server response, not a request", p.ptype);
                self.send_error(id, b"ERR_UNEXPECTED_PACKET", msg.as_bytes());
            }
        }
    }

    fn send(&self, id: ConnId, ptype: PacketType, args: &[&[u8]]) {
        if let Some(c) = self.conns.get(&id) {
            c.outbox.push(|b| encode_packet(b, Magic::Res, ptype, args));
        }
    }

    pub fn send_error(&self, id: ConnId, code: &[u8], text: &[u8]) {
        self.send(id, PacketType::Error, &[code, text]);
    }

    fn handle_of(&self, job: JobId, buf: &mut Vec<u8>) {
        buf.clear();
        buf.extend_from_slice(&self.handle_prefix);
        let mut itoa = itoa::Buffer::new();
        buf.extend_from_slice(itoa.format(job).as_bytes());
    }

    pub fn handle_string(&self, job: JobId) -> String {
        let mut b = Vec::new();
        self.handle_of(job, &mut b);
        String::from_utf8_lossy(&b).into_owned()
    }

    /// The job a handle names, if it is one of ours.
    pub fn parse_handle(&self, handle: &[u8]) -> Option<JobId> {
        let rest = handle.strip_prefix(self.handle_prefix.as_slice())?;
        std::str::from_utf8(rest).ok()?.parse().ok()
    }

    fn function_id(&mut self, name: &Bytes) -> FnId {
        if let Some(&fid) = self.fn_index.get(name) {
            return fid;
        }
        let fid = self.functions.len() as FnId;
        let mut f = Function::new(name.clone());
        f.max_queue = [self.limits.default_max_queue; 3];
        f.retry = self.limits.default_retry;
        self.functions.push(f);
        self.fn_index.insert(name.clone(), fid);
        fid
    }

    pub fn job_count(&self) -> usize {
        self.jobs.len()
    }
}
