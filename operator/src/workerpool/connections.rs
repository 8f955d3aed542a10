//! Which of the broker's worker connections belong to which pod: the one place that matches them.
//!
//! A worker sets its Gearman client id to its pod's name (`POD_NAME`, see
//! [`desired`](super::desired)), so a connection belongs to the pod whose name is its client id.
//! `fleet drain`/`fleet undrain` address connections by that same client id.

use gearfleet_proto::admin::WorkerStats;

/// What identifies a worker pod to the broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodIdentity<'a> {
    /// The pod's name (its workers' client id).
    pub name: &'a str,
}

/// Whether the broker's worker connection `worker` belongs to `pod`.
pub fn belongs_to(worker: &WorkerStats, pod: PodIdentity<'_>) -> bool {
    worker.client_id == pod.name
}

/// The connections of `workers` that belong to `pod`.
pub fn connections_of<'w>(workers: &'w [WorkerStats], pod: PodIdentity<'_>) -> impl Iterator<Item = &'w WorkerStats> {
    workers.iter().filter(move |w| belongs_to(w, pod))
}

#[cfg(test)]
mod tests {
    use gearfleet_proto::admin::WorkerState;

    use super::*;

    fn worker(client_id: &str) -> WorkerStats {
        WorkerStats {
            client_id: client_id.into(),
            address: "10.0.0.1:40000".into(),
            state: WorkerState::Idle,
            draining: false,
            jobs_done: 0,
            current_jobs: Vec::new(),
            functions: vec!["f".into()],
        }
    }

    #[test]
    fn a_connection_belongs_to_the_pod_named_by_its_client_id() {
        let workers = [worker("pod-a"), worker("pod-b"), worker("pod-a"), worker("-")];
        let pod = PodIdentity { name: "pod-a" };
        assert_eq!(connections_of(&workers, pod).count(), 2, "both connections of one worker");
        assert!(!belongs_to(&workers[1], pod));
        assert_eq!(connections_of(&workers, PodIdentity { name: "pod-c" }).count(), 0);
    }
}
