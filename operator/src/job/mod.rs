//! The Job controller: routes `Job` resources through the broker to a worker of their function.
//!
//! [`state`] is the pure state machine, [`unique`] the Gearman unique keys of its attempts; [`runner`] keeps one Gearman connection to the broker and
//! follows every submitted attempt on it; [`reconcile`] applies the plans to the cluster.

pub mod reconcile;
pub mod runner;
pub mod state;
pub mod unique;
