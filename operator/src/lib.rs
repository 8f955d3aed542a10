//! The gearfleet operator: reconciles `WorkerPool`s into one Deployment per
//! Gearman function and scales each from its queue depth in the broker, and
//! routes `Job`s through the broker.
//!
//! A WorkerPool reconcile goes observe → plan → apply
//! ([`workerpool::observe`], [`workerpool::plan`], [`workerpool::apply`],
//! driven by [`workerpool::reconcile`]); the plan is pure and built from the
//! pure decision modules ([`workerpool::scaling`], [`workerpool::scale_in`],
//! [`workerpool::recycle`], [`workerpool::desired`], …). The Job controller
//! is [`job`]. Both talk to every broker through [`brokers`] ([`broker_client`] per broker) and share the
//! Kubernetes helpers in [`kube_util`].

#![warn(missing_docs)]

pub mod broker_client;
pub mod brokers;
pub mod error;
pub mod job;
pub mod kube_util;
pub mod leader;
pub mod metrics;
pub mod workerpool;

pub use error::Error;
