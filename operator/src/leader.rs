//! Leader election on a `coordination.k8s.io/v1` Lease (through `kube-lease-manager`).
//!
//! Only the holder of the Lease runs the controllers. A replica that loses the Lease stops at once
//! (the caller exits and the pod restarts), the same contract controller-runtime gives Go operators:
//! two operators never scale the same pool at the same time.

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;

/// How the operator takes part in leader election.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    /// Name of the Lease object.
    pub lease_name: String,
    /// Namespace of the Lease (the operator's own namespace).
    pub namespace: String,
    /// This replica's identity in `holderIdentity` (the pod name).
    pub identity: String,
    /// How long a Lease is valid without renewal, in seconds.
    pub duration_seconds: u64,
    /// How long before expiry the holder renews, in seconds.
    pub grace_seconds: u64,
}

/// Why leader election could not start.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The Lease could not be read or created.
    #[error("leader election on lease {namespace}/{name}: {source}")]
    Lease {
        /// Namespace of the Lease.
        namespace: String,
        /// Name of the Lease.
        name: String,
        /// What the lease manager reported.
        source: LeaseManagerError,
    },
    /// The lease manager task ended before leadership was won.
    #[error("leader election ended before this replica became leader")]
    Ended,
}

/// Leadership held by this replica: resolves [`Leadership::lost`] when it is gone.
pub struct Leadership {
    state: watch::Receiver<bool>,
}

impl Leadership {
    /// Resolves when this replica is no longer the leader (or the lease manager stopped).
    pub async fn lost(&mut self) {
        // An error means the sender is gone: the manager task ended, leadership cannot be renewed.
        let _ = self.state.wait_for(|leader| !*leader).await;
    }
}

/// Waits until this replica holds the Lease. The Lease is renewed in the background until the
/// returned [`Leadership`] is dropped, which releases it.
pub async fn acquire(client: Client, config: &LeaderConfig) -> Result<Leadership, LeaderError> {
    let lease_error =
        |source| LeaderError::Lease { namespace: config.namespace.clone(), name: config.lease_name.clone(), source };
    let manager = LeaseManagerBuilder::new(client, config.lease_name.clone())
        .with_namespace(config.namespace.clone())
        .with_identity(config.identity.clone())
        .with_duration(config.duration_seconds)
        .with_grace(config.grace_seconds)
        .with_field_manager("gearfleet-operator")
        .build()
        .await
        .map_err(lease_error)?;
    let (mut state, _task) = manager.watch().await;
    tracing::info!(lease = %config.lease_name, namespace = %config.namespace, identity = %config.identity,
        "waiting for leadership");
    let started = tokio::time::Instant::now();
    state.wait_for(|leader| *leader).await.map_err(|_| LeaderError::Ended)?;
    tracing::info!(lease = %config.lease_name, identity = %config.identity,
        waited = ?started.elapsed(), "became leader");
    Ok(Leadership { state })
}
