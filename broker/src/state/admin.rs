//! What the admin and fleet commands ask of the state: gearmand's listings and `fleet` rows as
//! typed values (their text is made by `gearfleet_proto::admin`), cancelling jobs, functions and
//! their queue limits and retry policies, the dead-letter queues, and per-function counters.

use bytes::Bytes;
use gearfleet_proto::admin::{
    DeadJobRow, FunctionStats, JobRow, PriorityStatusRow, StatusRow, UniqueJobRow, WorkerRow, WorkerState, WorkerStats,
};
use gearfleet_proto::packet::{Magic, PacketType, encode_packet};

use super::function::Function;
use super::model::{Effects, JobId, JobState, RetryPolicy};
use super::{State, unique_of};
use crate::metrics::FunctionCounters;
use crate::store::Record;

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl State {
    /// The functions listings show (a dropped function's slot is empty and hidden).
    fn listed_functions(&self) -> impl Iterator<Item = &Function> {
        self.functions.iter().filter(|f| !f.name.is_empty())
    }

    /// `status`: gearmand counts queued plus running as TOTAL.
    pub fn status_rows(&self) -> Vec<StatusRow> {
        self.listed_functions()
            .map(|f| StatusRow {
                function: lossy(&f.name),
                total: f.queued_total() + f.running,
                running: f.running,
                available_workers: f.workers.len() as u64,
            })
            .collect()
    }

    /// `prioritystatus`.
    pub fn priority_status_rows(&self) -> Vec<PriorityStatusRow> {
        self.listed_functions()
            .map(|f| PriorityStatusRow {
                function: lossy(&f.name),
                queued: f.queued,
                available_workers: f.workers.len() as u64,
            })
            .collect()
    }

    /// `workers`: every connection, in the order they came, with the host part of its address.
    pub fn worker_rows(&self) -> Vec<WorkerRow> {
        let mut conns: Vec<_> = self.conns.iter().collect();
        conns.sort_by_key(|(id, _)| **id);
        conns
            .into_iter()
            .map(|(_, c)| WorkerRow {
                fd: c.fd,
                address: c.peer.rsplit_once(':').map_or(c.peer.as_str(), |(h, _)| h).to_string(),
                client_id: lossy(&c.client_id),
                functions: c.abilities.iter().map(|a| lossy(&self.functions[a.fid as usize].name)).collect(),
            })
            .collect()
    }

    /// `show jobs`, oldest first.
    pub fn job_rows(&self) -> Vec<JobRow> {
        let mut jobs: Vec<_> = self.jobs.iter().collect();
        jobs.sort_unstable_by_key(|&(id, _)| id);
        jobs.into_iter()
            .map(|(id, job)| JobRow {
                handle: self.handle_string(id),
                retries: job.attempt.saturating_sub(1),
                ignored: false,
                queued: job.state == JobState::Queued,
            })
            .collect()
    }

    /// `show unique jobs`.
    pub fn unique_job_rows(&self) -> Vec<UniqueJobRow> {
        let mut rows = Vec::new();
        for f in &self.functions {
            for id in f.uniques.ids() {
                let Some(unique) = unique_of(&self.jobs, id) else { continue };
                rows.push(UniqueJobRow { unique: lossy(unique), handle: self.handle_string(id) });
            }
        }
        rows
    }

    /// `cancel job HANDLE`: removes a job that has not started; running jobs cannot be taken
    /// back from a worker.
    pub fn admin_cancel(&mut self, handle: &str, fx: &mut Effects) -> Result<(), &'static str> {
        let job_id = self.parse_handle(handle.as_bytes()).ok_or("UNKNOWN_JOB")?;
        let job = self.jobs.get(&job_id).ok_or("UNKNOWN_JOB")?;
        if let JobState::Running { .. } | JobState::TimedOut { .. } | JobState::Held { .. } = job.state {
            // A timed-out try's worker may still be running it, a held job's worker too.
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
        // Trailing empty slots are dropped.
        while self.functions.last().is_some_and(|f| f.name.is_empty()) {
            self.functions.pop();
        }
        Ok(())
    }

    pub fn admin_maxqueue(&mut self, name: &str, limits: Option<[u32; 3]>) {
        // Unlike gearmand, a limit set before the function is first seen is kept.
        let fid = self.function_id(&Bytes::copy_from_slice(name.as_bytes()));
        self.functions[fid as usize].max_queue = limits.unwrap_or([self.limits.default_max_queue; 3]);
    }

    /// `fleet status`.
    pub fn fleet_status(&self) -> Vec<FunctionStats> {
        self.listed_functions()
            .map(|f| {
                let mut idle = 0;
                let mut draining = 0;
                for w in &f.workers {
                    if let Some(c) = self.conns.get(w) {
                        if !c.is_busy() {
                            idle += 1;
                        }
                        if c.draining {
                            draining += 1;
                        }
                    }
                }
                FunctionStats {
                    function: lossy(&f.name),
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

    /// `fleet workers`: connections that registered a function or hold a job. A worker holding a
    /// try that timed out is busy with it (it may still be running it).
    pub fn fleet_workers(&self) -> Vec<WorkerStats> {
        let mut conns: Vec<_> = self.conns.iter().filter(|(_, c)| !c.abilities.is_empty() || c.is_busy()).collect();
        conns.sort_by_key(|(id, _)| **id);
        conns
            .into_iter()
            .map(|(_, c)| WorkerStats {
                client_id: lossy(&c.client_id),
                address: c.peer.clone(),
                state: if c.is_busy() {
                    WorkerState::Busy
                } else if c.sleeping {
                    WorkerState::Sleeping
                } else {
                    WorkerState::Idle
                },
                draining: c.draining,
                jobs_done: c.jobs_done,
                current_jobs: c
                    .holding
                    .iter()
                    .copied()
                    .chain(c.timed_out.iter().map(|t| t.job))
                    .map(|j| self.handle_string(j))
                    .collect(),
                functions: c.abilities.iter().map(|a| lossy(&self.functions[a.fid as usize].name)).collect(),
            })
            .collect()
    }

    /// Counters exported as metrics, per function.
    pub fn function_counters(&self) -> Vec<FunctionCounters> {
        self.listed_functions()
            .map(|f| FunctionCounters {
                function: lossy(&f.name),
                submitted: f.submitted,
                completed: f.completed,
                failed: f.failed,
                retried: f.retried,
                dead_lettered: f.dead_lettered,
            })
            .collect()
    }

    /// `fleet retries FUNCTION ...`.
    pub fn set_retry_policy(&mut self, function: &str, policy: RetryPolicy) {
        let fid = self.function_id(&Bytes::copy_from_slice(function.as_bytes()));
        self.functions[fid as usize].retry = policy;
    }

    /// `show dead [FUNCTION]`, oldest first per function.
    pub fn dead_rows(&self, function: Option<&str>) -> Vec<DeadJobRow> {
        let mut rows = Vec::new();
        for f in self.functions.iter().filter(|f| function.is_none_or(|n| f.name.as_ref() == n.as_bytes())) {
            for id in &f.dead {
                let Some(job) = self.jobs.get(id) else { continue };
                rows.push(DeadJobRow {
                    handle: self.handle_string(*id),
                    function: lossy(&f.name),
                    attempts: job.attempt,
                    error: job.extra.as_ref().map(|e| lossy(&e.last_error)).unwrap_or_default(),
                });
            }
        }
        rows
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
}
