//! The operator's error type.

use crate::broker_client::BrokerError;
use crate::workerpool::desired::DesiredError;

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The broker could not be asked (only for calls that cannot be skipped).
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// No Deployment can be built for a function.
    #[error(transparent)]
    Desired(#[from] DesiredError),
    /// The object has no namespace (WorkerPools are namespaced).
    #[error("object has no namespace")]
    NoNamespace,
    /// Serializing an object failed.
    #[error("serialization: {0}")]
    Serialization(#[from] serde_json::Error),
}

impl Error {
    /// A short, stable label for the `gearfleet_operator_reconcile_errors_total` metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Broker(_) => "broker",
            Error::Desired(_) => "desired",
            Error::NoNamespace => "no_namespace",
            Error::Serialization(_) => "serialization",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_stable() {
        assert_eq!(Error::NoNamespace.metric_label(), "no_namespace");
        assert_eq!(Error::Desired(DesiredError::NoUid).metric_label(), "desired");
        assert_eq!(Error::Broker(BrokerError::Timeout("b".into())).metric_label(), "broker");
    }
}
