//! The set-up the operator tests share: the CRDs, a namespace of the test's own, a broker
//! Deployment in it and the operator running on the host against that broker (see
//! [`crate::local_operator`]). Dropping the fixture cleans up; when the test is failing it first
//! prints the operator's log, then the namespace's pods, events and container logs.
//!
//! Needs the operator binary: `cargo build -p gearfleet-operator` first (or set
//! `GEARFLEET_OPERATOR_BIN`).

use crate::local_operator::{Operator, OperatorOptions, deploy_broker_with};
use crate::{Cluster, Namespace};

/// A namespace with a broker and an operator scoped to it.
pub struct Fixture<'c> {
    /// `None` only between [`kill_operator`](Fixture::kill_operator) and
    /// [`start_operator`](Fixture::start_operator).
    operator: Option<Operator>,
    broker: String,
    options: OperatorOptions,
    // Dropped after the operator (fields drop in declaration order, after `Drop::drop`): its
    // guard prints the namespace's state on failure and deletes it.
    ns: Namespace<'c>,
}

impl<'c> Fixture<'c> {
    /// Installs the CRDs, creates a namespace named after `prefix` (see [`Cluster::namespace`]),
    /// deploys the broker in it and starts the operator against it.
    pub fn new(cluster: &'c Cluster, prefix: &str) -> Fixture<'c> {
        Fixture::with(cluster, prefix, OperatorOptions::default())
    }

    /// As [`new`](Self::new), but the operator watches every namespace (for tests of what one
    /// team's pools and Jobs do to another's: they share the fixture's broker). Only for a test
    /// binary of its own, so that no other test's namespace is reconciled by it meanwhile.
    pub fn cluster_wide(cluster: &'c Cluster, prefix: &str) -> Fixture<'c> {
        Fixture::with(cluster, prefix, OperatorOptions { cluster_wide: true, ..Default::default() })
    }

    /// As [`new`](Self::new), with `token` as the broker's admin token, which the operator sends.
    pub fn with_admin_token(cluster: &'c Cluster, prefix: &str, token: &str) -> Fixture<'c> {
        Fixture::with(cluster, prefix, OperatorOptions { admin_token: Some(token.to_string()), ..Default::default() })
    }

    fn with(cluster: &'c Cluster, prefix: &str, options: OperatorOptions) -> Fixture<'c> {
        cluster.install_crds();
        let ns = cluster.namespace(prefix);
        let broker = deploy_broker_with(&ns, options.admin_token.as_deref());
        let operator = Operator::launch(&ns, &broker, &options);
        Fixture { operator: Some(operator), broker, ns, options }
    }

    /// The test's namespace.
    pub fn ns(&self) -> &Namespace<'c> {
        &self.ns
    }

    /// The broker's address from the host (`CLUSTER_IP:4730`).
    pub fn broker(&self) -> &str {
        &self.broker
    }

    /// The running operator.
    pub fn operator(&self) -> &Operator {
        self.operator.as_ref().expect("the operator is running")
    }

    /// SIGKILLs the operator (no graceful shutdown) and waits for it to be gone.
    pub fn kill_operator(&mut self) {
        if let Some(operator) = self.operator.take() {
            operator.kill();
        }
    }

    /// Starts the operator again against the same broker (after [`kill_operator`](Self::kill_operator));
    /// it appends to the same log.
    pub fn start_operator(&mut self) {
        assert!(self.operator.is_none(), "the operator is already running");
        self.operator = Some(Operator::launch(&self.ns, &self.broker, &self.options));
    }
}

impl Drop for Fixture<'_> {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(operator) = &self.operator
        {
            operator.dump_log();
        }
        // While the operator still runs: it removes the Jobs' finalizers, so the namespace can go.
        if self.operator.is_some() {
            self.ns.kubectl(&["delete", "gj", "--all", "--wait=true", "--timeout=60s"], None);
        }
        // Killed before the namespace goes (and before its guard prints the namespace's state).
        self.operator = None;
    }
}
