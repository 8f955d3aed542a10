//! The Job controller: routes `Job` resources through the broker to a worker of their function.
//!
//! [`state`] is the pure state machine; [`runner`] keeps one Gearman connection to the broker and
//! follows every submitted attempt on it; [`reconcile`] applies the plans to the cluster.

pub mod reconcile;
pub mod runner;
pub mod state;
