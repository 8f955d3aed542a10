//! The gearfleet operator: reconciles `WorkerPool`s into one Deployment per
//! Gearman function and scales each from its queue depth in the broker.
//!
//! So far the crate holds the pure decision logic (no I/O, no clock reads):
//! see [`workerpool::scaling`] and [`workerpool::scale_in`].

#![warn(missing_docs)]

pub mod workerpool;
