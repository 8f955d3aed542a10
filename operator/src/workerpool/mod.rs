//! Everything the operator decides for a `WorkerPool`.
//!
//! A reconcile ([`reconcile`]) goes observe → plan → apply:
//!
//! * [`observe`] (I/O): the pool, its Deployments and pods, every broker's stats (merged by
//!   [`broker_view`]) and worker connections, the time, as one [`observe::Observed`] value;
//! * [`plan`] (pure): everything to do, as one [`plan::Plan`] value, using the pure decision
//!   modules [`scaling`], [`scale_in`], [`recycle`], [`health`], [`phase`], [`desired`], [`drain`],
//!   [`connections`], [`gone`] and [`pool_cap`];
//! * [`apply`] (I/O): carries the plan out.
//!
//! [`context`] holds the I/O handles and the [`memory`]: what the controller remembers between
//! reconciles because it cannot be observed.

pub mod apply;
pub mod broker_view;
pub mod connections;
pub mod context;
pub mod desired;
pub mod drain;
pub mod drain_hook;
pub mod gone;
pub mod health;
pub mod memory;
pub mod observe;
pub mod ownership;
pub mod phase;
pub mod plan;
pub mod pool_cap;
pub mod reconcile;
pub mod recycle;
pub mod scale_in;
pub mod scaling;

pub use scale_in::{
    BUSY_DELETION_COST, KEEP_DELETION_COST, POD_DELETION_COST, PodActivity, PodPlan, PodView, scale_in_plan,
};
pub use scaling::{ScaleEvent, ScaleHistory, ScaleKind, ScalingDecision, decide, share_pool_cap};
