//! Prometheus metrics. Event counters and histograms are updated as things happen; queue depths
//! and per-function counters are read from the broker state at scrape time by [`StateCollector`],
//! so the hot path pays nothing for per-function labels.
//!
//! This module depends on nothing else of the crate: the state updates [`Metrics`] and produces
//! [`FunctionCounters`]; the broker is the [`StatsSource`] the collector reads.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use gearfleet_proto::Priority;
use gearfleet_proto::admin::FunctionStats;

#[derive(Debug)]
pub struct Metrics {
    pub submitted: Counter,
    pub completed: Counter,
    pub failed: Counter,
    pub timeouts: Counter,
    pub retried: Counter,
    pub dead_lettered: Counter,
    pub dead_dropped: Counter,
    pub rejected: Counter,
    pub protocol_errors: Counter,
    /// NOOPs sent to wake sleeping workers for new jobs.
    pub wakeups: Counter,
    /// Jobs held for a resuming worker that lost its connection (or for every such worker after
    /// a restart), taken back by that worker, and handed back after the claim grace.
    pub held_for_worker: Counter,
    pub taken_back: Counter,
    pub held_released: Counter,
    pub connections: Gauge,
    pub connections_total: Counter,
    /// Seconds from submission to assignment.
    pub queue_wait: Histogram,
    /// Seconds from submission to the final result.
    pub latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            submitted: Counter::default(),
            completed: Counter::default(),
            failed: Counter::default(),
            timeouts: Counter::default(),
            retried: Counter::default(),
            dead_lettered: Counter::default(),
            dead_dropped: Counter::default(),
            rejected: Counter::default(),
            protocol_errors: Counter::default(),
            wakeups: Counter::default(),
            held_for_worker: Counter::default(),
            taken_back: Counter::default(),
            held_released: Counter::default(),
            connections: Gauge::default(),
            connections_total: Counter::default(),
            queue_wait: Histogram::new(exponential_buckets(0.0001, 4.0, 12)),
            latency: Histogram::new(exponential_buckets(0.0001, 4.0, 12)),
        }
    }
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register("gearfleet_broker_jobs_submitted", "Jobs accepted", self.submitted.clone());
        registry.register(
            "gearfleet_broker_jobs_completed",
            "Jobs finished with WORK_COMPLETE",
            self.completed.clone(),
        );
        registry.register(
            "gearfleet_broker_jobs_failed",
            "Jobs finished with WORK_FAIL, WORK_EXCEPTION or a timeout",
            self.failed.clone(),
        );
        registry.register("gearfleet_broker_job_timeouts", "Jobs failed by CAN_DO_TIMEOUT", self.timeouts.clone());
        registry.register(
            "gearfleet_broker_jobs_retried",
            "Background job tries scheduled again",
            self.retried.clone(),
        );
        registry.register(
            "gearfleet_broker_jobs_dead_lettered",
            "Background jobs moved to a dead-letter queue",
            self.dead_lettered.clone(),
        );
        registry.register(
            "gearfleet_broker_dead_letters_dropped",
            "Dead-lettered jobs dropped beyond the per-function limit",
            self.dead_dropped.clone(),
        );
        registry.register(
            "gearfleet_broker_submissions_rejected",
            "Submissions refused by a queue limit",
            self.rejected.clone(),
        );
        registry.register(
            "gearfleet_broker_jobs_held_for_worker",
            "Jobs of retaining clients held for the resuming worker that ran them, after it lost its connection or the broker restarted",
            self.held_for_worker.clone(),
        );
        registry.register(
            "gearfleet_broker_jobs_taken_back",
            "Held jobs taken back (or finished) by their worker after it reconnected",
            self.taken_back.clone(),
        );
        registry.register(
            "gearfleet_broker_held_jobs_released",
            "Held jobs whose worker did not return within the claim grace: queued again, or dropped when no client waits",
            self.held_released.clone(),
        );
        registry.register(
            "gearfleet_broker_protocol_errors",
            "Connections closed for malformed input",
            self.protocol_errors.clone(),
        );
        registry.register(
            "gearfleet_broker_worker_wakeups",
            "NOOPs sent to wake sleeping workers for new jobs (one per waiting job, not one per sleeper)",
            self.wakeups.clone(),
        );
        registry.register("gearfleet_broker_connections", "Open connections", self.connections.clone());
        registry.register(
            "gearfleet_broker_connections_accepted",
            "Connections accepted",
            self.connections_total.clone(),
        );
        registry.register(
            "gearfleet_broker_job_queue_wait_seconds",
            "Time from submission to assignment to a worker",
            self.queue_wait.clone(),
        );
        registry.register(
            "gearfleet_broker_job_latency_seconds",
            "Time from submission to the job's final result",
            self.latency.clone(),
        );
    }
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

/// Where the collector reads per-function queue state and counters from (the broker, which
/// takes them from its state under the lock).
pub trait StatsSource: std::fmt::Debug + Send + Sync + 'static {
    fn function_stats(&self) -> (Vec<FunctionStats>, Vec<FunctionCounters>);
}

/// Reads per-function queue state at scrape time.
#[derive(Debug)]
pub struct StateCollector<S>(pub Arc<S>);

impl<S: StatsSource> Collector for StateCollector<S> {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (stats, counters) = self.0.function_stats();
        let gauge = |encoder: &mut DescriptorEncoder,
                     name: &str,
                     help: &str,
                     rows: &mut dyn Iterator<Item = (Vec<(&'static str, String)>, i64)>|
         -> Result<(), std::fmt::Error> {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (labels, value) in rows {
                ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
            }
            Ok(())
        };
        gauge(
            &mut encoder,
            "gearfleet_broker_jobs_queued",
            "Jobs waiting for a worker, by function and priority",
            &mut stats.iter().flat_map(|f| {
                Priority::ALL.into_iter().map(move |p| {
                    (
                        vec![("function", f.function.clone()), ("priority", p.as_str().to_string())],
                        f.queued[p as usize] as i64,
                    )
                })
            }),
        )?;
        gauge(
            &mut encoder,
            "gearfleet_broker_jobs_scheduled",
            "Jobs waiting for their scheduled time",
            &mut stats.iter().map(|f| (vec![("function", f.function.clone())], f.scheduled as i64)),
        )?;
        gauge(
            &mut encoder,
            "gearfleet_broker_jobs_dead",
            "Jobs in the function's dead-letter queue",
            &mut stats.iter().map(|f| (vec![("function", f.function.clone())], f.dead as i64)),
        )?;
        gauge(
            &mut encoder,
            "gearfleet_broker_jobs_running",
            "Jobs assigned to a worker",
            &mut stats.iter().map(|f| (vec![("function", f.function.clone())], f.running as i64)),
        )?;
        gauge(
            &mut encoder,
            "gearfleet_broker_workers",
            "Worker connections registered for the function",
            &mut stats.iter().map(|f| (vec![("function", f.function.clone())], f.workers as i64)),
        )?;
        gauge(
            &mut encoder,
            "gearfleet_broker_workers_idle",
            "Registered workers holding no job",
            &mut stats.iter().map(|f| (vec![("function", f.function.clone())], f.idle_workers as i64)),
        )?;
        for (name, help, pick) in [
            ("gearfleet_broker_function_jobs_submitted", "Jobs accepted, by function", 0usize),
            ("gearfleet_broker_function_jobs_completed", "Jobs completed, by function", 1),
            ("gearfleet_broker_function_jobs_failed", "Job tries failed, by function", 2),
            ("gearfleet_broker_function_jobs_retried", "Background job retries, by function", 3),
            ("gearfleet_broker_function_jobs_dead_lettered", "Jobs dead-lettered, by function", 4),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for c in &counters {
                let value = [c.submitted, c.completed, c.failed, c.retried, c.dead_lettered][pick];
                let labels = [("function", c.function.clone())];
                ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
