//! Prometheus metrics of one worker process.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::lifecycle::WorkerState;

/// How a job ended, as counted in `gearfleet_worker_jobs_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Outcome {
    /// WORK_COMPLETE sent.
    Complete,
    /// The handler returned `JobError::Fail` (WORK_FAIL).
    Fail,
    /// The handler returned `JobError::Exception` (WORK_EXCEPTION).
    Exception,
    /// The handler panicked (WORK_FAIL).
    Panic,
    /// The function timeout passed (WORK_FAIL; the server has already failed it).
    Timeout,
    /// Force-stopped at the end of the drain timeout (WORK_FAIL).
    ForceStop,
    /// Submitting the chained job failed (WORK_FAIL).
    ChainFailed,
    /// The connection dropped mid-job; the server re-queues it.
    ConnectionLost,
    /// The server assigned a function this worker does not serve (WORK_FAIL).
    Unknown,
}

impl Outcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Complete => "complete",
            Outcome::Fail => "fail",
            Outcome::Exception => "exception",
            Outcome::Panic => "panic",
            Outcome::Timeout => "timeout",
            Outcome::ForceStop => "force_stop",
            Outcome::ChainFailed => "chain_failed",
            Outcome::ConnectionLost => "connection_lost",
            Outcome::Unknown => "unknown_function",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    function: String,
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FunctionLabels {
    function: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

pub(crate) struct Metrics {
    jobs: Family<JobLabels, Counter>,
    panics: Family<FunctionLabels, Counter>,
    duration: Family<FunctionLabels, Histogram>,
    pub(crate) busy: Gauge,
    pub(crate) connections: Gauge,
    state: Family<StateLabels, Gauge>,
    pub(crate) registry: Registry,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let jobs = Family::<JobLabels, Counter>::default();
        let panics = Family::<FunctionLabels, Counter>::default();
        let duration = Family::<FunctionLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.005, 4.0, 10))) as fn() -> Histogram,
        );
        let busy = Gauge::default();
        let connections = Gauge::default();
        let state = Family::<StateLabels, Gauge>::default();
        let mut registry = Registry::with_prefix("gearfleet_worker");
        registry.register("jobs", "Jobs handled, by function and outcome", jobs.clone());
        registry.register("panics", "Handler panics, by function", panics.clone());
        registry.register("job_duration_seconds", "Time from assignment to result", duration.clone());
        registry.register("busy", "Jobs running now", busy.clone());
        registry.register("connections", "Connections registered with a server", connections.clone());
        registry.register("state", "Lifecycle state: 1 for the current state, 0 for the others", state.clone());
        let m = Metrics { jobs, panics, duration, busy, connections, state, registry };
        m.set_state(WorkerState::Disabled);
        m
    }

    pub(crate) fn job_done(&self, function: &str, outcome: Outcome, seconds: f64) {
        self.jobs.get_or_create(&JobLabels { function: function.to_string(), outcome: outcome.as_str().into() }).inc();
        if outcome == Outcome::Panic {
            self.panics.get_or_create(&FunctionLabels { function: function.to_string() }).inc();
        }
        self.duration.get_or_create(&FunctionLabels { function: function.to_string() }).observe(seconds);
    }

    pub(crate) fn set_state(&self, current: WorkerState) {
        for s in WorkerState::ALL {
            self.state.get_or_create(&StateLabels { state: s.as_str().into() }).set(i64::from(s == current));
        }
    }

    /// The OpenMetrics text exposition.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
