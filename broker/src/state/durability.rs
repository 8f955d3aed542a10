//! Durability: background jobs, and retaining clients' jobs and outcomes, recovered from the
//! journal and written to it as they change (the appends themselves sit with each transition),
//! snapshots for its compaction, and memory given back after a backlog drains.

use std::time::Duration;

use bytes::Bytes;
use gearfleet_proto::Priority;
use thin_vec::ThinVec;

use super::model::{Effects, Job, JobExtra, JobId, JobState, Now};
use super::{State, unique_of};
use crate::outcomes::Retained;
use crate::store::{JobRecord, Journal, Record, Recovered, Recovery};

impl State {
    /// Makes background jobs and retaining clients' jobs durable through `journal`, after loading
    /// what it recovered at `now`: background jobs whose time has passed are queued, the others
    /// scheduled; a retaining client's job a resuming worker was running is held for that worker
    /// (`resume.rs`), any other one is dropped (its client submits it again when it comes back);
    /// retained outcomes are kept for the rest of their time.
    pub fn attach_journal(&mut self, journal: Journal, recovered: Recovery, now: Now) {
        let mut fx = Effects::default();
        let (mut background, mut held, mut dropped) = (0usize, 0usize, Vec::new());
        for r in recovered.jobs {
            let id = r.job.id;
            self.next_job = self.next_job.max(id + 1);
            if r.foreground {
                match r.started_by {
                    Some(worker) => {
                        self.recover_held(r.job, worker, now, &mut fx);
                        held += 1;
                    }
                    None => dropped.push(id),
                }
                continue;
            }
            background += 1;
            let fid = self.function_id(&r.job.function);
            let priority = priority_of(r.job.priority);
            let last_error = r.dead.as_ref().map_or(r.last_error.clone(), |(_, e)| e.clone());
            let extra = (!last_error.is_empty())
                .then(|| Box::new(JobExtra { reducer: Bytes::new(), status: None, last_error, ..Default::default() }));
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
                created: now.instant,
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
            } else if r.job.at_ms > now.unix_ms {
                self.schedule(id, r.job.at_ms, &mut fx);
            } else {
                self.enqueue(id, false);
            }
        }
        let ttl = self.outcomes.ttl();
        let mut outcomes = 0usize;
        for o in recovered.outcomes {
            let age = Duration::from_millis(now.unix_ms.saturating_sub(o.at_ms));
            let Some(at) = now.instant.checked_sub(age).filter(|_| age < ttl) else { continue };
            let fid = self.function_id(&o.function);
            self.outcomes.insert(fid, o.unique.clone(), Retained::from_record(&o), at);
            outcomes += 1;
        }
        for id in &dropped {
            journal.append(&Record::Done { id: *id });
        }
        tracing::info!(
            background,
            held_for_workers = held,
            foreground_dropped = dropped.len(),
            retained_outcomes = outcomes,
            "journal: recovered"
        );
        self.journal = Some(journal);
    }

    /// A retaining client's job that resuming worker `worker` was running when the broker
    /// stopped: held for it as if its connection had just been lost.
    fn recover_held(&mut self, r: JobRecord, worker: Bytes, now: Now, fx: &mut Effects) {
        let fid = self.function_id(&r.function);
        let id = r.id;
        let job = Job {
            fid,
            priority: priority_of(r.priority),
            background: false,
            state: JobState::Running { worker: 0 },
            attempt: r.attempts + 1,
            unique: r.unique,
            data: r.data,
            clients: ThinVec::new(),
            retain: true,
            created: now.instant,
            extra: None,
        };
        self.jobs.insert(id, job);
        self.index_unique(id);
        self.functions[fid as usize].running += 1;
        self.hold_for(id, worker, now, fx);
    }

    /// The journal's copy of job `id`: when it is scheduled for, and how many tries it has had.
    pub(super) fn record_of(&self, id: JobId, job: &Job) -> JobRecord {
        JobRecord {
            id,
            priority: job.priority as u8,
            at_ms: match job.state {
                JobState::Scheduled { at } => at,
                _ => 0,
            },
            attempts: job.attempt,
            function: self.functions[job.fid as usize].name.clone(),
            unique: job.unique.clone(),
            data: job.data.clone(),
        }
    }

    pub(super) fn journal_append(&self, record: &Record) -> u64 {
        self.journal.as_ref().map_or(0, |j| j.append(record))
    }

    /// Whether a job is journaled: a background job, or a retaining client's foreground job.
    pub(super) fn is_durable(&self, job: &Job) -> bool {
        self.journal.is_some() && (job.background || job.retain)
    }

    pub fn journal(&self) -> Option<&Journal> {
        self.journal.as_ref()
    }

    /// If the journal asks for it, hands it a snapshot of every durable job (under this lock, so
    /// it matches the segment boundary exactly).
    pub fn maybe_compact(&mut self, now: Now) {
        let Some(journal) = &self.journal else { return };
        if !journal.wants_compaction() {
            return;
        }
        // Only the references are gathered here, under the lock; the journal's thread sorts and
        // encodes them. A retaining client's job that has not started is left out: after a
        // restart it would be dropped anyway.
        let jobs: Vec<Recovered> = self
            .jobs
            .iter()
            .filter_map(|(id, job)| {
                let started_by = match job.state {
                    _ if job.background => None,
                    JobState::Held { .. } => job.extra.as_ref().map(|e| e.claimant.clone()),
                    JobState::Running { worker } => self.conns.get(&worker).and_then(|c| c.resumer()),
                    _ => None,
                };
                if !job.background && (!job.retain || started_by.is_none()) {
                    return None;
                }
                let last_error = job.extra.as_ref().map(|e| e.last_error.clone()).unwrap_or_default();
                Some(Recovered {
                    job: self.record_of(id, job),
                    dead: (job.state == JobState::Dead).then(|| (job.attempt, last_error.clone())),
                    last_error,
                    foreground: !job.background,
                    started_by,
                })
            })
            .collect();
        let outcomes = self
            .outcomes
            .live(now.instant)
            .into_iter()
            .map(|(fid, unique, outcome, at)| {
                let at_ms = now.unix_ms.saturating_sub(now.instant.saturating_duration_since(at).as_millis() as u64);
                outcome.to_record(0, at_ms, self.functions[fid as usize].name.clone(), unique.clone())
            })
            .collect();
        let live = Recovery { jobs, outcomes };
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
}

/// The priority a journal record's byte stands for.
fn priority_of(b: u8) -> Priority {
    match b {
        0 => Priority::High,
        2 => Priority::Low,
        _ => Priority::Normal,
    }
}
