//! What the WorkerPool controller remembers about a pool between reconciles: only what cannot be
//! observed. Everything else (replicas, pods, which workers are draining and since when) is read
//! again by every reconcile.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::scaling::ScaleHistory;

/// What the controller remembers about a pool between reconciles: only what cannot be observed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PoolMemory {
    /// Per function (of the current spec).
    pub functions: BTreeMap<String, FunctionMemory>,
    /// When a pod of the pool was last evicted for recycling (kept here too: the pool read from the
    /// cache may not show the status written a moment ago).
    pub last_recycle: Option<Time>,
}

/// What the controller remembers about one function.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FunctionMemory {
    /// Recommendations and replica changes, for stabilization windows and rate limits.
    pub history: ScaleHistory,
    /// The `fleet retries` command last sent for the function, and when.
    pub retries_sent: Option<(String, Timestamp)>,
}
