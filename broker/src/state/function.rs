//! A function's entry in the state: its priority queues, the workers that can do it and the
//! sleeping ones to wake, its unique-key index, retry policy, dead letters and counters.

use std::collections::VecDeque;

use bytes::Bytes;

use super::model::{ConnId, JobId, RetryPolicy};
use crate::unique_index::UniqueIndex;

#[derive(Debug)]
pub(super) struct Function {
    pub(super) name: Bytes,
    pub(super) queues: [VecDeque<JobId>; 3],
    /// Live queued jobs per priority. Queues may also hold ids of cancelled jobs, skipped lazily.
    pub(super) queued: [u64; 3],
    pub(super) scheduled: u64,
    pub(super) running: u64,
    /// Connections that registered this function.
    pub(super) workers: Vec<ConnId>,
    /// Workers that went to sleep while able to do this function, with the sleep they were
    /// listed for (an entry is stale once that worker has woken since). A new job wakes these
    /// instead of looking at every worker of the function; longest asleep first.
    pub(super) sleepers: VecDeque<(ConnId, u32)>,
    /// Workers woken for this function's jobs that have not asked for one yet
    /// ([`wakeups`](super::wakeups)).
    pub(super) waking: u32,
    /// Per priority; 0 = unlimited.
    pub(super) max_queue: [u32; 3],
    pub(super) uniques: UniqueIndex,
    pub(super) retry: RetryPolicy,
    /// Dead-lettered background jobs, oldest first.
    pub(super) dead: VecDeque<JobId>,
    pub(super) submitted: u64,
    pub(super) completed: u64,
    pub(super) failed: u64,
    pub(super) retried: u64,
    pub(super) dead_lettered: u64,
}

impl Function {
    pub(super) fn new(name: Bytes) -> Function {
        Function {
            name,
            queues: Default::default(),
            queued: [0; 3],
            scheduled: 0,
            running: 0,
            workers: Vec::new(),
            sleepers: VecDeque::new(),
            waking: 0,
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

    pub(super) fn queued_total(&self) -> u64 {
        self.queued.iter().sum()
    }
}
