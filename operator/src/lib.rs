//! The gearfleet operator: reconciles `WorkerPool`s into one Deployment per
//! Gearman function and scales each from its queue depth in the broker.
//!
//! The pure decision logic (no I/O, no clock reads) lives in
//! [`workerpool::scaling`], [`workerpool::scale_in`] and
//! [`workerpool::desired`]; the controller that applies it is
//! [`workerpool::reconcile`], talking to the broker through
//! [`broker_client`].

#![warn(missing_docs)]

pub mod broker_client;
pub mod error;
pub mod job;
pub mod kube_util;
pub mod leader;
pub mod metrics;
pub mod workerpool;

pub use error::Error;
