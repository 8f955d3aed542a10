//! Everything the operator decides for a `WorkerPool`.

pub mod desired;
pub mod health;
pub mod phase;
pub mod reconcile;
pub mod recycle;
pub mod scale_in;
pub mod scaling;

pub use scale_in::{
    BUSY_DELETION_COST, KEEP_DELETION_COST, POD_DELETION_COST, PodActivity, PodPlan, PodView, scale_in_plan,
};
pub use scaling::{ScaleEvent, ScaleHistory, ScaleKind, ScalingDecision, decide, share_pool_cap};
