//! The shared broker: state behind one lock, plus the background tasks that act on time
//! (scheduled jobs, CAN_DO_TIMEOUT and its grace) and publish queue changes to watchers.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gearfleet_proto::admin::FunctionStats;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::clock;
use crate::config::Config;
use crate::metrics::{FunctionCounters, Metrics, StatsSource};
use crate::state::{Effects, Limits, RetryPolicy, State};
use crate::store::{Durability, Journal};

pub struct Broker {
    state: Mutex<State>,
    pub config: Config,
    pub metrics: Arc<Metrics>,
    schedule_changed: Notify,
    stats_changed: Notify,
    watchers: AtomicUsize,
    next_conn: AtomicU64,
    pub shutdown: CancellationToken,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").field("listen", &self.config.listen).finish_non_exhaustive()
    }
}

impl Broker {
    /// A broker with the configured store opened and its jobs recovered.
    pub fn open(config: Config) -> std::io::Result<Arc<Broker>> {
        let broker = Broker::new(config);
        let mode = match broker.config.durability.as_str() {
            "fsync" => Some(Durability::Fsync),
            "async" => Some(Durability::Async(broker.config.async_flush_interval)),
            _ => None,
        };
        if let (Some(dir), Some(mode)) = (&broker.config.data_dir, mode) {
            let (journal, recovered) = Journal::open(dir, mode, broker.config.compact_after_bytes)?;
            tracing::info!(dir = %dir.display(), ?mode, jobs = recovered.jobs.len(), outcomes = recovered.outcomes.len(), "journal opened");
            broker.with_state(|s| s.attach_journal(journal, recovered, clock::now()));
        }
        Ok(broker)
    }

    /// Whether replies acknowledging background jobs wait for the disk.
    pub fn acks_wait_for_disk(&self) -> bool {
        self.config.data_dir.is_some() && self.config.durability == "fsync"
    }

    pub fn new(config: Config) -> Arc<Broker> {
        let metrics = Arc::new(Metrics::default());
        let host = config.handle_host.clone().unwrap_or_else(|| {
            gethostname::gethostname().to_string_lossy().chars().filter(|c| !c.is_whitespace() && *c != ':').collect()
        });
        let limits = Limits {
            max_queued_jobs: config.max_queued_jobs,
            default_max_queue: config.default_max_queue,
            default_retry: RetryPolicy {
                limit: config.default_retries,
                initial: config.retry_backoff_initial,
                max: config.retry_backoff_max.max(config.retry_backoff_initial),
            },
            max_requeues: config.max_requeues,
            dead_letter_limit: config.dead_letter_limit,
            timeout_grace: config.timeout_grace,
            retained_outcomes: config.retained_outcomes,
            retained_outcome_ttl: config.retained_outcome_ttl,
            claim_grace: config.claim_grace,
        };
        Arc::new(Broker {
            state: Mutex::new(State::new(&host, limits, metrics.clone())),
            config,
            metrics,
            schedule_changed: Notify::new(),
            stats_changed: Notify::new(),
            watchers: AtomicUsize::new(0),
            next_conn: AtomicU64::new(1),
            shutdown: CancellationToken::new(),
        })
    }

    /// Runs `f` with the state locked. Never hold it across an await.
    /// Sockets the section wrote to are written once it has released the lock.
    pub fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        crate::outbox::deferring(|| {
            let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut guard)
        })
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Carries out what a state transition asked for.
    pub fn apply(self: &Arc<Self>, fx: Effects) {
        for (job, attempt, after) in fx.timers {
            let broker = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let mut fx = Effects::default();
                if broker.with_state(|s| s.expire(job, attempt, clock::now(), &mut fx)) {
                    tracing::warn!(job, attempt, timeout = ?after, "job timed out; failed to its clients");
                }
                broker.apply(fx);
            });
        }
        for (worker, job, attempt, grace) in fx.graces {
            let broker = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                let mut fx = Effects::default();
                if broker.with_state(|s| s.grace_over(worker, job, attempt, clock::now(), &mut fx)) {
                    tracing::warn!(
                        job,
                        attempt,
                        worker,
                        ?grace,
                        "timed-out job not answered within the grace; handed back"
                    );
                }
                broker.apply(fx);
            });
        }
        if fx.schedule_changed {
            self.schedule_changed.notify_one();
        }
        if fx.stats_changed && self.watchers.load(Ordering::Relaxed) > 0 {
            self.stats_changed.notify_one();
        }
    }

    /// The journal's durable sequence number, to wait on (None without a journal).
    pub fn durable_watch(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.with_state(|s| s.journal().map(|j| j.durable_watch()))
    }

    /// Waits until the journal holds every record up to `seq` (no-op without a journal).
    pub async fn wait_durable(&self, seq: u64) {
        let Some(mut watch) = self.durable_watch() else { return };
        let _ = watch.wait_for(|d| *d >= seq).await;
    }

    pub fn watch_started(&self) {
        self.watchers.fetch_add(1, Ordering::Relaxed);
    }

    pub fn watch_ended(&self) {
        self.watchers.fetch_sub(1, Ordering::Relaxed);
    }

    /// Starts the scheduler and the watch publisher; they stop on shutdown.
    pub fn spawn_background(self: &Arc<Self>) {
        tokio::spawn(self.clone().run_scheduler());
        tokio::spawn(self.clone().run_watch_publisher());
    }

    /// Releases scheduled jobs when their time comes.
    async fn run_scheduler(self: Arc<Self>) {
        // Rounds left in which to hand freed memory back: a drained backlog's last pieces (closing
        // connections, the final jobs) are freed a little after the tables shrink.
        let mut trims_left = 0u32;
        loop {
            let mut fx = Effects::default();
            let (next, shrunk) = self.with_state(|s| {
                let now = clock::now();
                s.maybe_compact(now);
                s.expire_outcomes(now);
                let shrunk = s.shrink_if_drained();
                (s.release_due(now, &mut fx), shrunk)
            });
            self.apply(fx);
            if shrunk {
                trims_left = 3;
            }
            if trims_left > 0 {
                // Outside the lock: trimming a large heap takes a moment.
                trims_left -= 1;
                release_free_memory();
            }
            // Wake at the next due job, and at least every second for housekeeping (journal
            // compaction, giving memory back after a drain).
            let wait = match next {
                Some(at) => Duration::from_millis(at.saturating_sub(clock::unix_now_ms()))
                    .clamp(Duration::from_millis(5), Duration::from_secs(1)),
                None => Duration::from_secs(1),
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.schedule_changed.notified() => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    /// Sends a fresh `fleet status` block to every watcher after changes, at most every 100 ms,
    /// so a burst of submissions costs one block, not one per job.
    async fn run_watch_publisher(self: Arc<Self>) {
        loop {
            tokio::select! {
                _ = self.stats_changed.notified() => {}
                _ = self.shutdown.cancelled() => return,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let (block, watchers) = self.with_state(|s| (crate::admin::fleet_status_block(s), s.watchers()));
            for w in watchers {
                // A watcher that stopped reading is skipped rather than buffered for without bound.
                if w.pending() > self.config.outbox_limit_bytes {
                    continue;
                }
                w.push(|b| b.extend_from_slice(block.as_bytes()));
            }
        }
    }
}

impl StatsSource for Broker {
    fn function_stats(&self) -> (Vec<FunctionStats>, Vec<FunctionCounters>) {
        self.with_state(|s| (s.fleet_status(), s.function_counters()))
    }
}

/// Asks the allocator to return freed memory to the OS (glibc keeps it otherwise).
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
