//! The pool's one-word phase and its Draining / Drained conditions, from what the reconcile saw.

use gearfleet_crd::WorkerPoolPhase;

/// What the phase is computed from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PhaseInput {
    /// `spec.paused`.
    pub paused: bool,
    /// Worker pods of the pool that still exist (terminating ones included).
    pub pods: usize,
    /// Some function has crashing pods.
    pub degraded: bool,
    /// Some function is being scaled or recycled.
    pub scaling: bool,
}

/// The phase, and whether the pool is draining and drained (the two conditions).
pub fn pool_phase(input: PhaseInput) -> (WorkerPoolPhase, bool, bool) {
    match input {
        PhaseInput { paused: true, pods: 0, .. } => (WorkerPoolPhase::Drained, false, true),
        PhaseInput { paused: true, .. } => (WorkerPoolPhase::Draining, true, false),
        PhaseInput { degraded: true, .. } => (WorkerPoolPhase::Degraded, false, false),
        PhaseInput { scaling: true, .. } => (WorkerPoolPhase::Scaling, false, false),
        _ => (WorkerPoolPhase::Running, false, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases() {
        let base = PhaseInput::default();
        assert_eq!(pool_phase(base), (WorkerPoolPhase::Running, false, false));
        assert_eq!(pool_phase(PhaseInput { scaling: true, ..base }).0, WorkerPoolPhase::Scaling);
        assert_eq!(pool_phase(PhaseInput { scaling: true, degraded: true, ..base }).0, WorkerPoolPhase::Degraded);
        let paused = PhaseInput { paused: true, pods: 2, degraded: true, scaling: true };
        assert_eq!(pool_phase(paused), (WorkerPoolPhase::Draining, true, false), "pausing wins over the rest");
        assert_eq!(pool_phase(PhaseInput { pods: 0, ..paused }), (WorkerPoolPhase::Drained, false, true));
    }
}
