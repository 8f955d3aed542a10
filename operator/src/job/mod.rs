//! The Job controller: routes `Job` resources through the broker to a worker of their function.
//!
//! [`state`] is the pure state machine, [`unique`] the Gearman unique keys of its attempts; [`runner`] keeps a Gearman connection to every
//! broker (`broker_link`) and follows every submitted attempt on it, placed by the rules in
//! `attempts`; [`reconcile`] applies the plans to the cluster.

mod attempts;
mod broker_link;
pub mod reconcile;
pub mod runner;
pub mod state;
pub mod unique;
