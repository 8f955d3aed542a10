//! The job server's state: functions and their priority queues, jobs, connections, and every
//! protocol transition. All of it runs under one lock held for microseconds; output is appended
//! to connection outboxes and written by the connections' own tasks, and anything that needs the
//! runtime (timers, wake-ups of the scheduler) is returned as [`Effects`] for the caller to do
//! after the lock is released.

use std::collections::{BTreeSet, HashMap, VecDeque};

use rustc_hash::FxHashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use thin_vec::{ThinVec, thin_vec};

use bytes::Bytes;
use gearfleet_proto::Packet;
use gearfleet_proto::admin::{FunctionStats, WorkerState, WorkerStats};
use gearfleet_proto::packet::{Magic, PacketType, encode_packet};

use crate::id_table::IdTable;
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::outcomes::{Outcomes, Retained};
use crate::schedule;
use crate::store::{JobRecord, Journal, Record, Recovered};
use crate::unique_index::UniqueIndex;

pub type ConnId = u64;
pub type JobId = u64;

/// First handle number of answers from retained outcomes (far above any job id).
const ANSWER_HANDLES_FROM: u64 = 1 << 62;
type FnId = u32;

/// Job priority; the numeric value indexes a function's queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    High = 0,
    Normal = 1,
    Low = 2,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobState {
    /// Waiting in its function's queue.
    Queued,
    /// Waiting for its scheduled time (SUBMIT_JOB_EPOCH / SUBMIT_JOB_SCHED, or a retry's backoff),
    /// in unix milliseconds.
    Scheduled { at: u64 },
    /// Out of tries: kept in its function's dead-letter queue until retried or purged.
    Dead,
    /// Assigned to a worker connection.
    Running { worker: ConnId },
}

/// Rarely used job fields, boxed so the common job stays small.
#[derive(Debug, Default)]
struct JobExtra {
    reducer: Bytes,
    status: Option<(Bytes, Bytes)>,
    /// Why the last try failed (retries and dead letters).
    last_error: Bytes,
}

#[derive(Debug)]
struct Job {
    fid: FnId,
    priority: Priority,
    background: bool,
    state: JobState,
    /// Increases each time the job is assigned, so a stale timeout cannot fail a later attempt.
    attempt: u32,
    unique: Bytes,
    data: Bytes,
    /// Connections waiting for this job's results (foreground submitters).
    clients: ThinVec<ConnId>,
    /// Keep the outcome after it finishes (a retaining client submitted or attached to it).
    retain: bool,
    created: Instant,
    extra: Option<Box<JobExtra>>,
}

/// A job's unique key, for the function indexes (which keep only job ids).
fn unique_of(jobs: &IdTable<Job>, id: JobId) -> Option<&[u8]> {
    jobs.get(&id).map(|j| &j.unique[..])
}

#[derive(Debug)]
struct Function {
    name: Bytes,
    queues: [VecDeque<JobId>; 3],
    /// Live queued jobs per priority. Queues may also hold ids of cancelled jobs, skipped lazily.
    queued: [u64; 3],
    scheduled: u64,
    running: u64,
    /// Connections that registered this function.
    workers: Vec<ConnId>,
    /// Workers that went to sleep while able to do this function, with the sleep they were
    /// listed for (an entry is stale once that worker has woken since). A new job wakes these
    /// instead of looking at every worker of the function.
    sleepers: Vec<(ConnId, u32)>,
    /// Per priority; 0 = unlimited.
    max_queue: [u32; 3],
    uniques: UniqueIndex,
    retry: RetryPolicy,
    /// Dead-lettered background jobs, oldest first.
    dead: VecDeque<JobId>,
    submitted: u64,
    completed: u64,
    failed: u64,
    retried: u64,
    dead_lettered: u64,
}

impl Function {
    fn new(name: Bytes) -> Function {
        Function {
            name,
            queues: Default::default(),
            queued: [0; 3],
            scheduled: 0,
            running: 0,
            workers: Vec::new(),
            sleepers: Vec::new(),
            max_queue: [0; 3],
            uniques: UniqueIndex::default(),
            retry: RetryPolicy::default(),
            dead: VecDeque::new(),
            submitted: 0,
            completed: 0,
            failed: 0,
            retried: 0,
            dead_lettered: 0,
        }
    }

    fn queued_total(&self) -> u64 {
        self.queued.iter().sum()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GrabKind {
    Plain,
    Uniq,
    All,
}

#[derive(Debug)]
struct Ability {
    fid: FnId,
    timeout: Option<Duration>,
}

#[derive(Debug)]
struct Conn {
    outbox: Arc<Outbox>,
    peer: String,
    fd: i64,
    client_id: Bytes,
    abilities: Vec<Ability>,
    sleeping: bool,
    /// Counts this connection's sleeps (PRE_SLEEP), to tell current sleeper entries from stale ones.
    sleeps: u32,
    draining: bool,
    exceptions: bool,
    /// Sent OPTION_REQ gearfleet-retain-outcomes.
    retain_outcomes: bool,
    /// Jobs this connection holds as a worker.
    holding: Vec<JobId>,
    /// Foreground jobs this connection waits on as a client, oldest first.
    waiting_on: VecDeque<JobId>,
    jobs_done: u64,
    watching: bool,
}

impl Conn {
    /// Starts waiting on a foreground job's result.
    fn wait_on(&mut self, job: JobId) {
        self.waiting_on.push_back(job);
        self.outbox.set_pipelined(self.waiting_on.len() > 1);
    }

    /// Stops waiting on a job's result (it ended, or the job is gone).
    fn stop_waiting(&mut self, job: JobId) {
        // At most once in the list, and results mostly come in submission order: found near the
        // front, and removed by shifting the shorter side.
        if let Some(i) = self.waiting_on.iter().position(|&j| j == job) {
            self.waiting_on.remove(i);
        }
        self.outbox.set_pipelined(self.waiting_on.len() > 1);
    }
}

/// Work to do once the lock is released.
#[derive(Debug, Default)]
pub struct Effects {
    /// Fail `job` if attempt `attempt` is still running after the duration.
    pub timers: Vec<(JobId, u32, Duration)>,
    /// The earliest scheduled time may have changed.
    pub schedule_changed: bool,
    /// Queue or worker counts changed (for `fleet watch`).
    pub stats_changed: bool,
    /// Replies to the current connection may go out only once the journal is durable up to here.
    pub durable_seq: u64,
}

/// How failed background jobs are retried before they are dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first try (0: a failure dead-letters the job at once).
    pub limit: u32,
    pub initial: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy { limit: 0, initial: Duration::from_secs(1), max: Duration::from_secs(300) }
    }
}

impl RetryPolicy {
    /// Delay before try `attempt + 1`, doubling from `initial` up to `max`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(30));
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// Limits the state enforces.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// Queued jobs across all functions; 0 = unlimited.
    pub max_queued_jobs: u64,
    /// Default per-function queue limit; 0 = unlimited.
    pub default_max_queue: u32,
    /// Retry policy for functions that have none of their own.
    pub default_retry: RetryPolicy,
    /// Times a background job may be handed back by a worker that disconnected before it is
    /// dead-lettered as a likely poison job (0 = no limit).
    pub max_requeues: u32,
    /// Dead-lettered jobs kept per function (0 = no limit); the oldest beyond it are dropped.
    pub dead_letter_limit: usize,
    /// Finished-job outcomes kept for retaining clients (0 = none), and for how long.
    pub retained_outcomes: usize,
    pub retained_outcome_ttl: Duration,
}

/// Payload bytes the retained outcomes may hold in all.
const RETAINED_OUTCOME_BYTES: usize = 256 * 1024 * 1024;
/// WORK_EXCEPTION text of a job failed by its CAN_DO_TIMEOUT.
const TIMEOUT_MESSAGE: &[u8] = b"gearfleet: job timed out";
/// The option a client sends to have its foreground jobs' outcomes retained.
pub const OPTION_RETAIN_OUTCOMES: &[u8] = b"gearfleet-retain-outcomes";

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
    handle_prefix: Vec<u8>,
    queued_total: u64,
    limits: Limits,
    journal: Option<Journal>,
    outcomes: Outcomes,
    pub metrics: Arc<Metrics>,
}

const ERR_JOB_NOT_FOUND: &[u8] = b"job_not_found";

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
            handle_prefix: format!("H:{host}:").into_bytes(),
            queued_total: 0,
            outcomes: Outcomes::new(limits.retained_outcomes, RETAINED_OUTCOME_BYTES, limits.retained_outcome_ttl),
            limits,
            journal: None,
            metrics,
        }
    }

    /// Makes background jobs durable through `journal`, after loading what it recovered.
    pub fn attach_journal(&mut self, journal: Journal, recovered: Vec<Recovered>) {
        let now = unix_now_ms();
        let mut fx = Effects::default();
        for r in recovered {
            let fid = self.function_id(&r.job.function);
            let priority = match r.job.priority {
                0 => Priority::High,
                2 => Priority::Low,
                _ => Priority::Normal,
            };
            let id = r.job.id;
            self.next_job = self.next_job.max(id + 1);
            let last_error = r.dead.as_ref().map_or(r.last_error.clone(), |(_, e)| e.clone());
            let extra = (!last_error.is_empty())
                .then(|| Box::new(JobExtra { reducer: Bytes::new(), status: None, last_error }));
            let job = Job {
                fid,
                priority,
                background: true,
                state: JobState::Queued,
                attempt: r.job.attempts,
                unique: r.job.unique.clone(),
                data: r.job.data,
                clients: ThinVec::new(),
                retain: false,
                created: Instant::now(),
                extra,
            };
            self.jobs.insert(id, job);
            if r.dead.is_none() {
                self.index_unique(id);
            }
            if r.dead.is_some() {
                if let Some(j) = self.jobs.get_mut(&id) {
                    j.state = JobState::Dead;
                }
                self.functions[fid as usize].dead.push_back(id);
            } else if r.job.at_ms > now {
                self.schedule(id, r.job.at_ms, &mut fx);
            } else {
                self.enqueue(id, false);
            }
        }
        tracing::info!(jobs = self.jobs.len(), "journal: recovered background jobs");
        self.journal = Some(journal);
    }

    fn journal_append(&self, record: &Record) -> u64 {
        self.journal.as_ref().map_or(0, |j| j.append(record))
    }

    fn is_durable(&self, job: &Job) -> bool {
        self.journal.is_some() && job.background
    }

    pub fn journal(&self) -> Option<&Journal> {
        self.journal.as_ref()
    }

    /// If the journal asks for it, hands it a snapshot of every durable job (under this lock, so
    /// it matches the segment boundary exactly).
    pub fn maybe_compact(&mut self) {
        let Some(journal) = &self.journal else { return };
        if !journal.wants_compaction() {
            return;
        }
        // Only the references are gathered here, under the lock; the journal's thread sorts and
        // encodes them.
        let live: Vec<Recovered> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.background)
            .map(|(id, job)| {
                let at_ms = match job.state {
                    JobState::Scheduled { at } => at,
                    _ => 0,
                };
                let last_error = job.extra.as_ref().map(|e| e.last_error.clone()).unwrap_or_default();
                Recovered {
                    job: JobRecord {
                        id,
                        priority: job.priority as u8,
                        at_ms,
                        attempts: job.attempt,
                        function: self.functions[job.fid as usize].name.clone(),
                        unique: job.unique.clone(),
                        data: job.data.clone(),
                    },
                    dead: (job.state == JobState::Dead).then(|| (job.attempt, last_error.clone())),
                    last_error,
                }
            })
            .collect();
        journal.compact(live);
    }

    /// Gives memory back after a backlog drains: shrinks tables that are mostly empty.
    pub fn shrink_if_drained(&mut self) -> bool {
        // The table's capacity is its high-water mark (it never shrinks by itself), so a backlog
        // that came and went between two housekeeping rounds is still seen.
        let capacity = self.jobs.capacity();
        if capacity < 1024 || self.jobs.len() * 4 > capacity {
            return false;
        }
        self.jobs.shrink_to_fit();
        for f in &mut self.functions {
            for q in &mut f.queues {
                // Drop ids of jobs that are gone, then give back the slack.
                q.retain(|id| self.jobs.get(id).is_some_and(|j| j.state == JobState::Queued));
                q.shrink_to_fit();
            }
            let jobs = &self.jobs;
            f.uniques.shrink_to_fit(|id| unique_of(jobs, id));
            f.dead.shrink_to_fit();
        }
        true
    }

    // ---- connections ----------------------------------------------------------------------

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

    // ---- packets --------------------------------------------------------------------------

    /// Applies one request packet from connection `id`.
    pub fn handle(&mut self, id: ConnId, p: &Packet, fx: &mut Effects) {
        use PacketType as T;
        match p.ptype {
            T::SubmitJob => self.submit(id, p, Priority::Normal, false, fx),
            T::SubmitJobBg => self.submit(id, p, Priority::Normal, true, fx),
            T::SubmitJobHigh => self.submit(id, p, Priority::High, false, fx),
            T::SubmitJobHighBg => self.submit(id, p, Priority::High, true, fx),
            T::SubmitJobLow => self.submit(id, p, Priority::Low, false, fx),
            T::SubmitJobLowBg => self.submit(id, p, Priority::Low, true, fx),
            T::SubmitReduceJob => self.submit(id, p, Priority::Normal, false, fx),
            T::SubmitReduceJobBackground => self.submit(id, p, Priority::Normal, true, fx),
            T::SubmitJobEpoch => self.submit(id, p, Priority::Normal, true, fx),
            T::SubmitJobSched => self.submit(id, p, Priority::Normal, true, fx),
            T::GrabJob => self.grab(id, GrabKind::Plain, fx),
            T::GrabJobUniq => self.grab(id, GrabKind::Uniq, fx),
            T::GrabJobAll => self.grab(id, GrabKind::All, fx),
            T::PreSleep => self.pre_sleep(id),
            T::CanDo => self.can_do(id, p.arg_bytes(0), None, fx),
            T::CanDoTimeout => {
                let secs = std::str::from_utf8(p.arg(1)).ok().and_then(|s| s.trim().parse::<u64>().ok());
                let timeout = secs.filter(|&s| s > 0).map(Duration::from_secs);
                self.can_do(id, p.arg_bytes(0), timeout, fx)
            }
            T::CantDo => self.cant_do(id, p.arg(0), fx),
            T::ResetAbilities => self.reset_abilities(id, fx),
            T::SetClientId => {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.client_id = if p.arg(0).is_empty() { Bytes::from_static(b"-") } else { p.arg_bytes(0) };
                }
            }
            T::WorkStatus => self.work_update(id, p, fx),
            T::WorkData | T::WorkWarning => self.work_update(id, p, fx),
            T::WorkComplete => self.work_finish(id, p, Outcome::Complete, fx),
            T::WorkFail => self.work_finish(id, p, Outcome::Fail, fx),
            T::WorkException => self.work_finish(id, p, Outcome::Exception, fx),
            T::GetStatus => self.get_status(id, p.arg(0)),
            T::GetStatusUnique => self.get_status_unique(id, p.arg(0)),
            T::EchoReq => self.send(id, PacketType::EchoRes, &[p.arg(0)]),
            T::OptionReq => {
                if p.arg(0) == b"exceptions" {
                    if let Some(c) = self.conns.get_mut(&id) {
                        c.exceptions = true;
                    }
                    self.send(id, PacketType::OptionRes, &[b"exceptions"]);
                } else if p.arg(0) == OPTION_RETAIN_OUTCOMES && self.limits.retained_outcomes > 0 {
                    if let Some(c) = self.conns.get_mut(&id) {
                        c.retain_outcomes = true;
                    }
                    self.send(id, PacketType::OptionRes, &[OPTION_RETAIN_OUTCOMES]);
                } else {
                    self.send_error(id, b"UNKNOWN_OPTION", b"Server does not recognize given option");
                }
            }
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

    // ---- submission -----------------------------------------------------------------------

    fn submit(&mut self, id: ConnId, p: &Packet, priority: Priority, background: bool, fx: &mut Effects) {
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
                match schedule::next_match(&fields, unix_now_ms() / 1000) {
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
        if retain && let Some(outcome) = self.outcomes.get(fid, &unique, Instant::now()).cloned() {
            self.answer_from_retained(id, outcome);
            return;
        }

        // Coalesce onto a job with the same (function, unique) that is queued or running.
        if let Some(existing) = self.functions[fid as usize].uniques.get(&unique, |j| unique_of(&self.jobs, j)) {
            if !background
                && let Some(job) = self.jobs.get_mut(&existing)
                && !job.clients.contains(&id)
            {
                job.retain |= retain;
                job.clients.push(id);
                if let Some(c) = self.conns.get_mut(&id) {
                    c.wait_on(existing);
                }
            }
            // The job may still be on its way to disk: acknowledge once everything so far is.
            if let Some(j) = &self.journal {
                fx.durable_seq = fx.durable_seq.max(j.last_seq());
            }
            self.handle_of(existing, &mut handle);
            self.send(id, PacketType::JobCreated, &[&handle]);
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
            Some(at) if at > unix_now_ms() => JobState::Scheduled { at },
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
            created: Instant::now(),
            extra,
        };
        if self.is_durable(&job) {
            let record = Record::Add(JobRecord {
                id: job_id,
                priority: priority as u8,
                at_ms: run_at.unwrap_or(0),
                attempts: 0,
                function: self.functions[fid as usize].name.clone(),
                unique: job.unique.clone(),
                data: job.data.clone(),
            });
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
    fn index_unique(&mut self, job_id: JobId) {
        let Some(job) = self.jobs.get(&job_id) else { return };
        let jobs = &self.jobs;
        self.functions[job.fid as usize].uniques.insert(job_id, &job.unique, |id| unique_of(jobs, id));
    }

    /// Parks a job until `at` (unix milliseconds).
    fn schedule(&mut self, job_id: JobId, at: u64, fx: &mut Effects) {
        let Some(job) = self.jobs.get_mut(&job_id) else { return };
        job.state = JobState::Scheduled { at };
        self.functions[job.fid as usize].scheduled += 1;
        self.scheduled.insert((at, job_id));
        fx.schedule_changed = true;
    }

    /// Puts a job in its function's queue and wakes the sleeping workers that can take it.
    fn enqueue(&mut self, job_id: JobId, front: bool) {
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
        // Every sleeping worker that can do the function gets a NOOP; a worker is marked awake when
        // it is sent one, so a burst of jobs costs each sleeper one NOOP, and none is ever missed.
        // Draining sleepers stay listed (they are not to get work now, but must hear of it later).
        if f.sleepers.is_empty() {
            return;
        }
        let conns = &mut self.conns;
        f.sleepers.retain(|&(w, sleep)| {
            let Some(c) = conns.get_mut(&w) else { return false };
            if !c.sleeping || c.sleeps != sleep {
                return false;
            }
            if c.draining {
                return true;
            }
            c.sleeping = false;
            c.outbox.push(|b| encode_packet(b, Magic::Res, PacketType::Noop, &[]));
            false
        });
    }

    /// Moves scheduled jobs whose time has come (unix milliseconds) into their queues. Returns the
    /// next due time.
    pub fn release_due(&mut self, now: u64, fx: &mut Effects) -> Option<u64> {
        while let Some(&(at, job_id)) = self.scheduled.first() {
            if at > now {
                return Some(at);
            }
            self.scheduled.pop_first();
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

    pub fn next_scheduled(&self) -> Option<u64> {
        self.scheduled.first().map(|&(at, _)| at)
    }

    // ---- workers --------------------------------------------------------------------------

    fn can_do(&mut self, id: ConnId, name: Bytes, timeout: Option<Duration>, fx: &mut Effects) {
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
            f.sleepers.push((id, c.sleeps));
        }
        fx.stats_changed = true;
    }

    fn cant_do(&mut self, id: ConnId, name: &[u8], fx: &mut Effects) {
        let Some(&fid) = self.fn_index.get(name) else { return };
        let Some(c) = self.conns.get_mut(&id) else { return };
        c.abilities.retain(|a| a.fid != fid);
        self.functions[fid as usize].workers.retain(|&w| w != id);
        fx.stats_changed = true;
    }

    fn reset_abilities(&mut self, id: ConnId, fx: &mut Effects) {
        let Some(c) = self.conns.get_mut(&id) else { return };
        for a in c.abilities.drain(..) {
            self.functions[a.fid as usize].workers.retain(|&w| w != id);
        }
        fx.stats_changed = true;
    }

    fn pre_sleep(&mut self, id: ConnId) {
        let has_work = self.next_job_for(id).is_some();
        let Some(c) = self.conns.get_mut(&id) else { return };
        if has_work && !c.draining {
            // A job arrived between this worker's NO_JOB and its PRE_SLEEP: wake it at once.
            c.outbox.push(|b| encode_packet(b, Magic::Res, PacketType::Noop, &[]));
            return;
        }
        if c.sleeping {
            return;
        }
        c.sleeping = true;
        c.sleeps = c.sleeps.wrapping_add(1);
        let sleep = c.sleeps;
        let fids: Vec<FnId> = c.abilities.iter().map(|a| a.fid).collect();
        for fid in fids {
            let f = &mut self.functions[fid as usize];
            f.sleepers.push((id, sleep));
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

    fn grab(&mut self, id: ConnId, kind: GrabKind, fx: &mut Effects) {
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
        if self.journal.is_some() && job.background {
            self.journal_append(&Record::Started { id: job_id });
        }
        let Some(job) = self.jobs.get(&job_id) else { return };
        self.metrics.queue_wait.observe(job.created.elapsed().as_secs_f64());
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

    /// The job `handle` if this worker holds it; otherwise tells the worker it does not.
    fn held_job(&self, id: ConnId, handle: &[u8]) -> Option<JobId> {
        let job_id = self.parse_handle(handle);
        let held = job_id.filter(|j| self.jobs.get(j).is_some_and(|job| job.state == JobState::Running { worker: id }));
        if held.is_none() {
            self.send_error(id, ERR_JOB_NOT_FOUND, b"Job given in work result not found");
        }
        held
    }

    fn work_update(&mut self, id: ConnId, p: &Packet, _fx: &mut Effects) {
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

    fn work_finish(&mut self, id: ConnId, p: &Packet, outcome: Outcome, fx: &mut Effects) {
        let Some(job_id) = self.held_job(id, p.arg(0)) else { return };
        if let Some(c) = self.conns.get_mut(&id) {
            c.holding.retain(|&j| j != job_id);
            c.jobs_done += 1;
        }
        self.finish(job_id, outcome, Some(p), fx);
    }

    /// Ends a job: tells its clients and forgets it.
    fn finish(&mut self, job_id: JobId, outcome: Outcome, packet: Option<&Packet>, fx: &mut Effects) {
        let Some(job) = self.jobs.get(&job_id) else { return };
        if job.background && outcome != Outcome::Complete {
            let error = match (outcome, packet) {
                (Outcome::Exception, Some(p)) => p.arg_bytes(1),
                (Outcome::Timeout, _) => Bytes::from_static(b"timed out"),
                _ => Bytes::from_static(b"WORK_FAIL"),
            };
            self.metrics.failed.inc();
            self.functions[job.fid as usize].failed += 1;
            self.notify_clients(job_id, outcome, packet);
            self.retry_or_dead_letter(job_id, error, fx);
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
        self.metrics.latency.observe(job.created.elapsed().as_secs_f64());
        if job.retain {
            let retained = match (outcome, packet) {
                (Outcome::Complete, Some(p)) => Retained::Complete(Bytes::copy_from_slice(p.arg(1))),
                (Outcome::Exception, Some(p)) => Retained::Exception(Bytes::copy_from_slice(p.arg(1))),
                (Outcome::Timeout, _) => Retained::Exception(Bytes::from_static(TIMEOUT_MESSAGE)),
                _ => Retained::Fail,
            };
            self.outcomes.insert(job.fid, job.unique.clone(), retained, Instant::now());
        }
        let clients = job.clients;
        self.tell_clients(job_id, &clients, outcome, packet);
        fx.stats_changed = true;
    }

    /// Answers a submission from a retained outcome: JOB_CREATED with a fresh handle, then the
    /// outcome as the job's final packet.
    fn answer_from_retained(&mut self, id: ConnId, outcome: Retained) {
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
    pub fn expire_outcomes(&mut self) {
        self.outcomes.expire(Instant::now());
    }

    /// Sends a try's outcome to the clients attached to the job, and detaches them.
    fn notify_clients(&mut self, job_id: JobId, outcome: Outcome, packet: Option<&Packet>) {
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

    /// A background job's try failed: run it again after its backoff while tries remain, else
    /// move it to its function's dead-letter queue.
    fn retry_or_dead_letter(&mut self, job_id: JobId, error: Bytes, fx: &mut Effects) {
        let Some(job) = self.jobs.get_mut(&job_id) else { return };
        let fid = job.fid as usize;
        if let JobState::Running { .. } = job.state {
            self.functions[fid].running -= 1;
        }
        job.state = JobState::Queued;
        job.extra.get_or_insert_with(Default::default).last_error = error.clone();
        let attempts = job.attempt;
        let policy = self.functions[fid].retry;
        if attempts <= policy.limit {
            let at = unix_now_ms() + policy.backoff(attempts).as_millis() as u64;
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

    /// CAN_DO_TIMEOUT expiry: the attempt is failed to its clients and taken from the worker, so
    /// it never runs twice; the worker's later packets for it get `job_not_found`.
    pub fn expire(&mut self, job_id: JobId, attempt: u32, fx: &mut Effects) -> bool {
        let Some(job) = self.jobs.get(&job_id) else { return false };
        let JobState::Running { worker } = job.state else { return false };
        if job.attempt != attempt {
            return false;
        }
        if let Some(c) = self.conns.get_mut(&worker) {
            c.holding.retain(|&j| j != job_id);
        }
        self.metrics.timeouts.inc();
        self.finish(job_id, Outcome::Timeout, None, fx);
        true
    }

    /// A worker disconnected holding the job: it goes back to the front of its queue, as in
    /// gearmand. A background job handed back more than `max_requeues` times is dead-lettered:
    /// it is most likely what kills its workers.
    fn requeue_front(&mut self, job_id: JobId, fx: &mut Effects) {
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

    /// Removes a queued or scheduled job (cancel, or a foreground job whose clients all left).
    fn forget_queued(&mut self, job_id: JobId) -> bool {
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
            JobState::Running { .. } => return false,
        }
        f.uniques.remove(job_id, &job.unique);
        let durable = job.background;
        self.jobs.remove(&job_id);
        if durable && self.journal.is_some() {
            self.journal_append(&Record::Done { id: job_id });
        }
        true
    }

    // ---- status ---------------------------------------------------------------------------

    fn get_status(&self, id: ConnId, handle: &[u8]) {
        let job = self.parse_handle(handle).and_then(|j| self.jobs.get(&j));
        let (known, running, num, den) = status_fields(job);
        self.send(id, PacketType::StatusRes, &[handle, known, running, &num, &den]);
    }

    fn get_status_unique(&self, id: ConnId, unique: &[u8]) {
        let job = self
            .functions
            .iter()
            .find_map(|f| f.uniques.get(unique, |j| unique_of(&self.jobs, j)))
            .and_then(|j| self.jobs.get(&j));
        let (known, running, num, den) = status_fields(job);
        let waiting = job.map_or(0, |j| j.clients.len()).to_string();
        self.send(id, PacketType::StatusResUnique, &[unique, known, running, &num, &den, waiting.as_bytes()]);
    }

    // ---- admin ----------------------------------------------------------------------------

    /// `status`: gearmand counts queued plus running as TOTAL.
    pub fn admin_status(&self, out: &mut String) {
        use std::fmt::Write;
        for f in self.functions.iter().filter(|f| !f.name.is_empty()) {
            let _ = writeln!(
                out,
                "{}\t{}\t{}\t{}",
                String::from_utf8_lossy(&f.name),
                f.queued_total() + f.running,
                f.running,
                f.workers.len()
            );
        }
        out.push_str(".\n");
    }

    pub fn admin_priority_status(&self, out: &mut String) {
        use std::fmt::Write;
        for f in self.functions.iter().filter(|f| !f.name.is_empty()) {
            let [h, n, l] = f.queued;
            let _ = writeln!(out, "{}\t{h}\t{n}\t{l}\t{}", String::from_utf8_lossy(&f.name), f.workers.len());
        }
        out.push_str(".\n");
    }

    pub fn admin_workers(&self, out: &mut String) {
        use std::fmt::Write;
        let mut conns: Vec<_> = self.conns.iter().collect();
        conns.sort_by_key(|(id, _)| **id);
        for (_, c) in conns {
            let host = c.peer.rsplit_once(':').map_or(c.peer.as_str(), |(h, _)| h);
            let _ = write!(out, "{} {} {} :", c.fd, host, String::from_utf8_lossy(&c.client_id));
            for a in &c.abilities {
                let _ = write!(out, " {}", String::from_utf8_lossy(&self.functions[a.fid as usize].name));
            }
            out.push('\n');
        }
        out.push_str(".\n");
    }

    pub fn admin_show_jobs(&self, out: &mut String) {
        use std::fmt::Write;
        let mut jobs: Vec<_> = self.jobs.iter().collect();
        jobs.sort_unstable_by_key(|&(id, _)| id);
        for (id, job) in jobs {
            let queued = u8::from(job.state == JobState::Queued);
            let _ = writeln!(out, "{}\t{}\t0\t{queued}", self.handle_string(id), job.attempt.saturating_sub(1));
        }
        out.push_str(".\n");
    }

    pub fn admin_show_unique_jobs(&self, out: &mut String) {
        use std::fmt::Write;
        for f in &self.functions {
            for id in f.uniques.ids() {
                let Some(unique) = unique_of(&self.jobs, id) else { continue };
                let _ = writeln!(out, "{}\t{}", String::from_utf8_lossy(unique), self.handle_string(id));
            }
        }
        out.push_str(".\n");
    }

    /// `cancel job HANDLE`: removes a job that has not started; running jobs cannot be taken
    /// back from a worker.
    pub fn admin_cancel(&mut self, handle: &str, fx: &mut Effects) -> Result<(), &'static str> {
        let job_id = self.parse_handle(handle.as_bytes()).ok_or("UNKNOWN_JOB")?;
        let job = self.jobs.get(&job_id).ok_or("UNKNOWN_JOB")?;
        if let JobState::Running { .. } = job.state {
            return Err("JOB_RUNNING");
        }
        let clients = job.clients.clone();
        let mut handle_buf = Vec::new();
        self.handle_of(job_id, &mut handle_buf);
        for client in clients {
            if let Some(c) = self.conns.get_mut(&client) {
                c.stop_waiting(job_id);
                c.outbox.push(|b| encode_packet(b, Magic::Res, PacketType::WorkFail, &[&handle_buf]));
            }
        }
        self.forget_queued(job_id);
        fx.stats_changed = true;
        Ok(())
    }

    pub fn admin_create_function(&mut self, name: &str) {
        self.function_id(&Bytes::copy_from_slice(name.as_bytes()));
    }

    pub fn admin_drop_function(&mut self, name: &str) -> Result<(), &'static str> {
        let &fid = self.fn_index.get(name.as_bytes()).ok_or("function not found")?;
        let f = &self.functions[fid as usize];
        if !f.workers.is_empty() || f.running > 0 {
            return Err("there are still connected workers or executing clients");
        }
        if f.queued_total() > 0 || f.scheduled > 0 {
            return Err("there are still queued jobs");
        }
        if !f.dead.is_empty() {
            return Err("there are still dead-lettered jobs (purge dead first)");
        }
        // Jobs refer to functions by slot, so an inner slot is emptied (and hidden from listings)
        // rather than removed; a later CAN_DO or submit of the name gets a fresh slot.
        self.fn_index.remove(name.as_bytes());
        let f = &mut self.functions[fid as usize];
        *f = Function::new(Bytes::new());
        self.functions_compact();
        Ok(())
    }

    /// Drops trailing empty slots left by `drop function`, and hides inner ones from listings.
    fn functions_compact(&mut self) {
        while self.functions.last().is_some_and(|f| f.name.is_empty()) {
            self.functions.pop();
        }
    }

    pub fn admin_maxqueue(&mut self, name: &str, limits: Option<[u32; 3]>) {
        // Unlike gearmand, a limit set before the function is first seen is kept.
        let fid = self.function_id(&Bytes::copy_from_slice(name.as_bytes()));
        self.functions[fid as usize].max_queue = limits.unwrap_or([self.limits.default_max_queue; 3]);
    }

    pub fn fleet_status(&self) -> Vec<FunctionStats> {
        self.functions
            .iter()
            .filter(|f| !f.name.is_empty())
            .map(|f| {
                let mut idle = 0;
                let mut draining = 0;
                for w in &f.workers {
                    if let Some(c) = self.conns.get(w) {
                        if c.holding.is_empty() {
                            idle += 1;
                        }
                        if c.draining {
                            draining += 1;
                        }
                    }
                }
                FunctionStats {
                    function: String::from_utf8_lossy(&f.name).into_owned(),
                    queued: f.queued,
                    scheduled: f.scheduled,
                    running: f.running,
                    workers: f.workers.len() as u64,
                    idle_workers: idle,
                    draining_workers: draining,
                    dead: f.dead.len() as u64,
                }
            })
            .collect()
    }

    pub fn fleet_workers(&self) -> Vec<WorkerStats> {
        let mut conns: Vec<_> =
            self.conns.iter().filter(|(_, c)| !c.abilities.is_empty() || !c.holding.is_empty()).collect();
        conns.sort_by_key(|(id, _)| **id);
        conns
            .into_iter()
            .map(|(_, c)| WorkerStats {
                client_id: String::from_utf8_lossy(&c.client_id).into_owned(),
                address: c.peer.clone(),
                state: if !c.holding.is_empty() {
                    WorkerState::Busy
                } else if c.sleeping {
                    WorkerState::Sleeping
                } else {
                    WorkerState::Idle
                },
                draining: c.draining,
                jobs_done: c.jobs_done,
                current_jobs: c.holding.iter().map(|&j| self.handle_string(j)).collect(),
                functions: c
                    .abilities
                    .iter()
                    .map(|a| String::from_utf8_lossy(&self.functions[a.fid as usize].name).into_owned())
                    .collect(),
            })
            .collect()
    }

    /// Marks every connection with this client id as draining (or not). Returns how many matched.
    pub fn set_draining(&mut self, client_id: &str, draining: bool, fx: &mut Effects) -> usize {
        let mut n = 0;
        let mut woken = Vec::new();
        for (id, c) in self.conns.iter_mut() {
            if c.client_id.as_ref() == client_id.as_bytes() {
                c.draining = draining;
                n += 1;
                if !draining && c.sleeping {
                    woken.push(*id);
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
        n
    }

    /// Counters exported as metrics, per function.
    pub fn function_counters(&self) -> Vec<FunctionCounters> {
        self.functions
            .iter()
            .filter(|f| !f.name.is_empty())
            .map(|f| FunctionCounters {
                function: String::from_utf8_lossy(&f.name).into_owned(),
                submitted: f.submitted,
                completed: f.completed,
                failed: f.failed,
                retried: f.retried,
                dead_lettered: f.dead_lettered,
            })
            .collect()
    }

    pub fn set_retry_policy(&mut self, function: &str, policy: RetryPolicy) {
        let fid = self.function_id(&Bytes::copy_from_slice(function.as_bytes()));
        self.functions[fid as usize].retry = policy;
    }

    /// `show dead [FUNCTION]`.
    pub fn admin_show_dead(&self, function: Option<&str>, out: &mut String) {
        use std::fmt::Write;
        for f in self.functions.iter().filter(|f| function.is_none_or(|n| f.name.as_ref() == n.as_bytes())) {
            for id in &f.dead {
                let Some(job) = self.jobs.get(id) else { continue };
                let error = job.extra.as_ref().map(|e| String::from_utf8_lossy(&e.last_error).into_owned());
                let error = gearfleet_proto::admin::sanitize_field(error.as_deref().unwrap_or(""));
                let name = String::from_utf8_lossy(&f.name);
                let _ = writeln!(out, "{}\t{name}\t{}\t{error}", self.handle_string(*id), job.attempt);
            }
        }
        out.push_str(".\n");
    }

    fn dead_ids(&self, function: &str, handle: Option<&str>) -> Vec<JobId> {
        let Some(&fid) = self.fn_index.get(function.as_bytes()) else { return Vec::new() };
        let wanted = handle.map(|h| self.parse_handle(h.as_bytes()));
        self.functions[fid as usize].dead.iter().copied().filter(|id| wanted.is_none_or(|w| w == Some(*id))).collect()
    }

    /// `retry dead FUNCTION [HANDLE]`: the jobs get a fresh set of tries. Returns how many.
    pub fn admin_retry_dead(&mut self, function: &str, handle: Option<&str>, fx: &mut Effects) -> usize {
        let ids = self.dead_ids(function, handle);
        for &id in &ids {
            let Some(job) = self.jobs.get_mut(&id) else { continue };
            job.attempt = 0;
            let fid = job.fid as usize;
            self.functions[fid].dead.retain(|&j| j != id);
            // Unless a newer job took the key while this one was dead.
            self.index_unique(id);
            if self.journal.is_some() {
                self.journal_append(&Record::Retry { id, at_ms: 0, attempts: 0, error: Bytes::new() });
            }
            self.enqueue(id, false);
        }
        fx.stats_changed = true;
        ids.len()
    }

    /// `purge dead FUNCTION [HANDLE]`. Returns how many were dropped.
    pub fn admin_purge_dead(&mut self, function: &str, handle: Option<&str>, fx: &mut Effects) -> usize {
        let ids = self.dead_ids(function, handle);
        for &id in &ids {
            self.forget_queued(id);
        }
        fx.stats_changed = true;
        ids.len()
    }

    pub fn job_count(&self) -> usize {
        self.jobs.len()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Complete,
    Fail,
    Exception,
    Timeout,
}

fn status_fields(job: Option<&Job>) -> (&'static [u8], &'static [u8], Vec<u8>, Vec<u8>) {
    match job {
        None => (b"0", b"0", b"0".to_vec(), b"0".to_vec()),
        Some(job) => {
            let running: &'static [u8] = if matches!(job.state, JobState::Running { .. }) { b"1" } else { b"0" };
            let (num, den) = job
                .extra
                .as_ref()
                .and_then(|e| e.status.clone())
                .map_or((b"0".to_vec(), b"0".to_vec()), |(n, d)| (n.to_vec(), d.to_vec()));
            (b"1", running, num, den)
        }
    }
}

pub fn unix_now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Per-function counters, exported as metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionCounters {
    pub function: String,
    pub submitted: u64,
    pub completed: u64,
    pub failed: u64,
    pub retried: u64,
    pub dead_lettered: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state with a worker (connection 1, whose outbox is returned) and a client (connection 2).
    fn worker_and_client() -> (State, Arc<Outbox>) {
        let mut s = State::new("test", Limits::default(), Arc::new(Metrics::default()));
        let worker = Arc::new(Outbox::new());
        s.add_conn(1, worker.clone(), "w".into(), -1);
        s.add_conn(2, Arc::new(Outbox::new()), "c".into(), -1);
        (s, worker)
    }

    fn req(s: &mut State, id: ConnId, ptype: PacketType, args: &[&[u8]]) {
        let mut fx = Effects::default();
        s.handle(id, &Packet::req(ptype, args), &mut fx);
    }

    /// Worker 1 grabs a job; returns its handle.
    fn grab_handle(s: &mut State) -> Vec<u8> {
        req(s, 1, PacketType::GrabJob, &[]);
        let mut handle = Vec::new();
        s.handle_of(s.conns[&1].holding[0], &mut handle);
        handle
    }

    /// The packet types `outbox` holds, in order (emptying it).
    fn sent(outbox: &Outbox) -> Vec<PacketType> {
        let mut buf = bytes::BytesMut::new();
        outbox.take(&mut buf);
        let codec = gearfleet_proto::Codec::client();
        let mut out = Vec::new();
        while let Ok(Some(gearfleet_proto::Frame::Packet(p))) = codec.decode_frame(&mut buf) {
            out.push(p.ptype);
        }
        out
    }

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

    #[test]
    fn a_client_attached_to_a_background_job_hears_when_it_is_dead_lettered() {
        let limits = Limits { max_requeues: 1, ..Limits::default() };
        let mut s = State::new("test", limits, Arc::new(Metrics::default()));
        let client = Arc::new(Outbox::new());
        s.add_conn(2, client.clone(), "c".into(), -1);
        req(&mut s, 2, PacketType::SubmitJobBg, &[b"f", b"u", b"x"]);
        // Same function and unique key: the foreground client waits on the background job.
        req(&mut s, 2, PacketType::SubmitJob, &[b"f", b"u", b"x"]);
        assert_eq!(sent(&client), [PacketType::JobCreated, PacketType::JobCreated]);
        // Its workers are lost mid-job until it is dead-lettered.
        for worker in [10, 11] {
            s.add_conn(worker, Arc::new(Outbox::new()), "w".into(), -1);
            req(&mut s, worker, PacketType::CanDo, &[b"f"]);
            req(&mut s, worker, PacketType::GrabJob, &[]);
            s.remove_conn(worker, &mut Effects::default());
        }
        assert_eq!(s.functions[s.fn_index[&b"f"[..]] as usize].dead.len(), 1);
        assert_eq!(sent(&client), [PacketType::WorkFail]);
        assert!(s.conns[&2].waiting_on.is_empty());
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

    #[test]
    fn a_queued_job_stays_small() {
        // Every queued job pays this (plus its payload): the memory goal is 300 bytes per
        // queued 64-byte job, unique key included.
        assert!(size_of::<Job>() <= 128, "Job grew to {} bytes", size_of::<Job>());
        assert_eq!(size_of::<Option<Job>>(), size_of::<Job>(), "the id table's empty slots cost nothing extra");
    }
}
