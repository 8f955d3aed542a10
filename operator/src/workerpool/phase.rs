//! The pool's one-word phase and its Draining / Drained conditions, and each function's phase,
//! from what the reconcile saw.

use gearfleet_crd::{FunctionPhase, WorkerPoolPhase};

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

/// What a function's phase is computed from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FunctionPhaseInput {
    /// Some of its pods crash, are OOM-killed or cannot pull their image.
    pub degraded: bool,
    /// A scale-in waits for busy workers.
    pub draining: bool,
    /// A raise waits for the pool cap.
    pub waiting_for_cap: bool,
    /// Its pods are being recycled.
    pub recycling: bool,
    /// Replicas of its Deployment now.
    pub current: i32,
    /// Replicas it gets.
    pub target: i32,
    /// Its pods that exist (not finished), terminating ones included.
    pub pods: usize,
    /// Those of them that are ready and not terminating.
    pub ready: usize,
}

/// The function's phase: the first of Degraded, Draining, WaitingForCap, Recycling, Scaling (the
/// replicas change, or the pods have not caught up with them) that applies, else Running.
pub fn function_phase(input: FunctionPhaseInput) -> FunctionPhase {
    let target = usize::try_from(input.target).unwrap_or(0);
    if input.degraded {
        FunctionPhase::Degraded
    } else if input.draining {
        FunctionPhase::Draining
    } else if input.waiting_for_cap {
        FunctionPhase::WaitingForCap
    } else if input.recycling {
        FunctionPhase::Recycling
    } else if input.target != input.current || input.pods != target || input.ready < target {
        FunctionPhase::Scaling
    } else {
        FunctionPhase::Running
    }
}

/// Whether a function in `phase` is on its way somewhere (the `Progressing` condition).
pub fn is_progressing(phase: FunctionPhase) -> bool {
    !matches!(phase, FunctionPhase::Running | FunctionPhase::Degraded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_phases() {
        let settled = FunctionPhaseInput { current: 2, target: 2, pods: 2, ready: 2, ..Default::default() };
        assert_eq!(function_phase(settled), FunctionPhase::Running);
        assert_eq!(function_phase(FunctionPhaseInput { target: 3, ..settled }), FunctionPhase::Scaling);
        assert_eq!(function_phase(FunctionPhaseInput { ready: 1, ..settled }), FunctionPhase::Scaling, "not ready");
        assert_eq!(function_phase(FunctionPhaseInput { pods: 3, ..settled }), FunctionPhase::Scaling, "terminating");
        assert_eq!(function_phase(FunctionPhaseInput { recycling: true, ..settled }), FunctionPhase::Recycling);
        let all =
            FunctionPhaseInput { degraded: true, draining: true, waiting_for_cap: true, recycling: true, ..settled };
        assert_eq!(function_phase(all), FunctionPhase::Degraded);
        assert_eq!(function_phase(FunctionPhaseInput { degraded: false, ..all }), FunctionPhase::Draining);
        let cap = FunctionPhaseInput { degraded: false, draining: false, ..all };
        assert_eq!(function_phase(cap), FunctionPhase::WaitingForCap);
        assert!(is_progressing(FunctionPhase::WaitingForCap) && !is_progressing(FunctionPhase::Degraded));
        assert!(!is_progressing(FunctionPhase::Running));
    }

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
