//! Durability: background jobs recovered from the journal and written to it as they change
//! (the appends themselves sit with each transition), snapshots for its compaction, and memory
//! given back after a backlog drains.

use bytes::Bytes;
use gearfleet_proto::Priority;
use thin_vec::ThinVec;

use super::model::{Effects, Job, JobExtra, JobState, Now};
use super::{State, unique_of};
use crate::store::{JobRecord, Journal, Record, Recovered};

impl State {
    /// Makes background jobs durable through `journal`, after loading what it recovered at `now`
    /// (jobs whose time has passed are queued, the others scheduled).
    pub fn attach_journal(&mut self, journal: Journal, recovered: Vec<Recovered>, now: Now) {
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
        tracing::info!(jobs = self.jobs.len(), "journal: recovered background jobs");
        self.journal = Some(journal);
    }

    pub(super) fn journal_append(&self, record: &Record) -> u64 {
        self.journal.as_ref().map_or(0, |j| j.append(record))
    }

    pub(super) fn is_durable(&self, job: &Job) -> bool {
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
}
