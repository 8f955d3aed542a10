//! Status rules, pure: the pool's one-word phase and its Draining / Drained conditions, each
//! function's phase, and the Ready, Degraded and Progressing conditions, from what the reconcile
//! saw.

use gearfleet_crd::{FunctionPhase, FunctionStatus, WorkerPoolPhase};

/// What the phase is computed from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PhaseInput {
    /// `spec.paused`.
    pub paused: bool,
    /// Worker pods of the pool that still exist (terminating ones included).
    pub pods: usize,
    /// The Degraded condition is True.
    pub degraded: bool,
    /// Some function is being scaled or recycled (the Scaling condition), or its pods have not
    /// caught up yet (the Progressing condition).
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
    /// Another pool owns the function name.
    pub conflict: bool,
    /// Some of its pods crash, are OOM-killed or cannot pull their image.
    pub troubled: bool,
    /// The broker cannot be reached: its queue is unknown.
    pub broker_unreachable: bool,
    /// Busy workers are being drained: a scale-in (or pause) waits for them, or a recycle
    /// drains a pod.
    pub draining: bool,
    /// A raise waits for the pool cap.
    pub waiting_for_cap: bool,
    /// Its pods are being recycled.
    pub recycling: bool,
    /// Replicas the operator wants for it (`desiredReplicas`).
    pub desired: i32,
    /// Replicas of its Deployment now.
    pub current: i32,
    /// Replicas its Deployment is set to by this reconcile.
    pub target: i32,
    /// Its pods that exist (not finished), terminating ones included.
    pub pods: usize,
    /// Those of them that are ready and not terminating.
    pub ready: usize,
    /// Available replicas of its Deployment.
    pub available: i32,
    /// Jobs waiting for it in the broker.
    pub queued: i64,
}

/// The function's phase, the first that applies:
///
/// | phase    | when |
/// |----------|------|
/// | Conflict | another pool owns the function name ([`ownership`](super::ownership)) |
/// | Degraded | pods in trouble, or the broker unreachable |
/// | Draining | busy workers are being drained (scale-in, recycle, pause) |
/// | Scaling  | replicas change, a raise waits for the pool cap, pods are recycled, or the pods have not caught up (missing, not ready, not available, terminating) |
/// | Idle     | 0 desired, 0 pods, nothing queued |
/// | Ready    | otherwise: the desired replicas are all available |
pub fn function_phase(input: FunctionPhaseInput) -> FunctionPhase {
    let target = usize::try_from(input.target).unwrap_or(0);
    let caught_up = input.desired == input.target
        && input.target == input.current
        && input.pods == target
        && input.ready >= target
        && input.available >= input.target;
    if input.conflict {
        FunctionPhase::Conflict
    } else if input.troubled || input.broker_unreachable {
        FunctionPhase::Degraded
    } else if input.draining {
        FunctionPhase::Draining
    } else if input.waiting_for_cap || input.recycling || !caught_up {
        FunctionPhase::Scaling
    } else if input.desired == 0 && input.pods == 0 && input.queued == 0 {
        FunctionPhase::Idle
    } else {
        FunctionPhase::Ready
    }
}

/// A pool condition as a rule decided it: status, reason, message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionRule {
    /// Whether the condition holds.
    pub status: bool,
    /// Its reason (CamelCase).
    pub reason: &'static str,
    /// Its message.
    pub message: String,
}

impl ConditionRule {
    fn new(status: bool, reason: &'static str, message: impl Into<String>) -> Self {
        Self { status, reason, message: message.into() }
    }
}

/// `Ready`: True (`AllFunctionsReady`) when every function is Ready or Idle; else False
/// (`FunctionsNotReady`) naming each function that is not, with its available and desired
/// replicas and phase.
pub fn ready_condition(functions: &[FunctionStatus]) -> ConditionRule {
    let not_ready: Vec<String> = functions
        .iter()
        .filter(|f| !f.phase.is_some_and(FunctionPhase::is_ready))
        .map(|f| {
            let phase = f.phase.map_or("Unknown", FunctionPhase::as_str);
            format!("{}: {}/{} available ({phase})", f.name, f.available_replicas, f.desired_replicas)
        })
        .collect();
    if not_ready.is_empty() {
        ConditionRule::new(true, "AllFunctionsReady", format!("{} function(s) ready", functions.len()))
    } else {
        ConditionRule::new(false, "FunctionsNotReady", not_ready.join("; "))
    }
}

/// One thing that makes the pool degraded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DegradedCause {
    /// The condition reason it gives.
    pub reason: &'static str,
    /// A line about it.
    pub message: String,
}

/// The `Degraded` reason when the pool cap holds a function below what its queue asks.
pub const POOL_CAP_REACHED: &str = "PoolCapReached";
/// The `Degraded` reason when the broker cannot be reached.
pub const BROKER_UNREACHABLE: &str = "BrokerUnreachable";

/// `Degraded`: True with the reason of the most pressing cause — pod troubles first (in the order
/// of the functions), then `BrokerUnreachable`, then `PoolCapReached` — and every cause in the
/// message; False (`Healthy`) without causes.
pub fn degraded_condition(causes: &[DegradedCause]) -> ConditionRule {
    let rank = |c: &DegradedCause| match c.reason {
        BROKER_UNREACHABLE => 1,
        POOL_CAP_REACHED => 2,
        _ => 0,
    };
    match causes.iter().min_by_key(|c| rank(c)) {
        None => ConditionRule::new(false, "Healthy", ""),
        Some(first) => {
            let mut sorted: Vec<&DegradedCause> = causes.iter().collect();
            sorted.sort_by_key(|c| rank(c));
            let message = sorted.iter().map(|c| c.message.as_str()).collect::<Vec<_>>().join("; ");
            ConditionRule::new(true, first.reason, message)
        }
    }
}

/// `Conflict`: True (`FunctionOwnedElsewhere`) when another pool owns some of the pool's function
/// names, naming each with its owner; else False (`NoConflict`).
pub fn conflict_condition(functions: &[FunctionStatus]) -> ConditionRule {
    let owned: Vec<String> = functions
        .iter()
        .filter(|f| f.phase == Some(FunctionPhase::Conflict))
        .map(|f| format!("function {} is served by pool {}", f.name, f.owner.as_deref().unwrap_or("?")))
        .collect();
    if owned.is_empty() {
        ConditionRule::new(false, "NoConflict", "")
    } else {
        ConditionRule::new(true, "FunctionOwnedElsewhere", format!("{}; it gets no replicas here", owned.join("; ")))
    }
}

/// `Progressing`: True while some function is Scaling or Draining (reason: the first such phase;
/// message `function: phase; ...`), else False (`Stable`).
pub fn progressing_condition(functions: &[FunctionStatus]) -> ConditionRule {
    let moving: Vec<(&str, FunctionPhase)> =
        functions.iter().filter_map(|f| f.phase.filter(|p| p.is_progressing()).map(|p| (f.name.as_str(), p))).collect();
    match moving.first() {
        None => ConditionRule::new(false, "Stable", ""),
        Some((_, phase)) => {
            let message = moving.iter().map(|(f, p)| format!("{f}: {}", p.as_str())).collect::<Vec<_>>().join("; ");
            ConditionRule::new(true, phase.as_str(), message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One row per phase, and the order in which they win.
    #[test]
    fn function_phases() {
        use FunctionPhase::*;
        let ready = FunctionPhaseInput {
            desired: 2,
            current: 2,
            target: 2,
            pods: 2,
            ready: 2,
            available: 2,
            ..Default::default()
        };
        let cases: [(&str, FunctionPhaseInput, FunctionPhase); 18] = [
            ("all desired replicas available", ready, Ready),
            ("with a backlog still Ready", FunctionPhaseInput { queued: 7, ..ready }, Ready),
            ("nothing wanted, no pods, nothing queued", FunctionPhaseInput::default(), Idle),
            ("nothing wanted but jobs queued", FunctionPhaseInput { queued: 1, ..Default::default() }, Ready),
            ("a pod of a scale-to-zero still there", FunctionPhaseInput { pods: 1, ..Default::default() }, Scaling),
            ("raised", FunctionPhaseInput { desired: 3, target: 3, ..ready }, Scaling),
            ("lowered", FunctionPhaseInput { desired: 1, target: 1, ..ready }, Scaling),
            ("a pod not ready", FunctionPhaseInput { ready: 1, ..ready }, Scaling),
            ("a pod not available yet", FunctionPhaseInput { available: 1, ..ready }, Scaling),
            ("a pod terminating", FunctionPhaseInput { pods: 3, ..ready }, Scaling),
            ("a pod missing", FunctionPhaseInput { pods: 1, ..ready }, Scaling),
            (
                "a raise waits for the pool cap",
                FunctionPhaseInput { desired: 3, waiting_for_cap: true, ..ready },
                Scaling,
            ),
            ("recycling", FunctionPhaseInput { recycling: true, ..ready }, Scaling),
            ("draining", FunctionPhaseInput { desired: 1, draining: true, ..ready }, Draining),
            ("crash loop / OOM / image pull", FunctionPhaseInput { troubled: true, ..ready }, Degraded),
            ("broker unreachable", FunctionPhaseInput { broker_unreachable: true, ..ready }, Degraded),
            (
                "Degraded wins over Draining, Draining over Scaling",
                FunctionPhaseInput { troubled: true, draining: true, recycling: true, ..ready },
                Degraded,
            ),
            (
                "another pool owns the name: Conflict wins over everything",
                FunctionPhaseInput { conflict: true, troubled: true, draining: true, ..Default::default() },
                Conflict,
            ),
        ];
        for (name, input, phase) in cases {
            assert_eq!(function_phase(input), phase, "{name}");
        }
        let draining_and_recycling =
            FunctionPhaseInput { draining: true, recycling: true, waiting_for_cap: true, ..ready };
        assert_eq!(function_phase(draining_and_recycling), Draining);
        let ready_ones: Vec<_> = FunctionPhase::ALL.into_iter().filter(|p| p.is_ready()).collect();
        assert_eq!(ready_ones, [Idle, Ready]);
        let moving: Vec<_> = FunctionPhase::ALL.into_iter().filter(|p| p.is_progressing()).collect();
        assert_eq!(moving, [Scaling, Draining]);
    }

    fn function(name: &str, phase: FunctionPhase, available: i32, desired: i32) -> FunctionStatus {
        FunctionStatus {
            name: name.into(),
            phase: Some(phase),
            available_replicas: available,
            desired_replicas: desired,
            ..Default::default()
        }
    }

    #[test]
    fn conflict_condition_names_each_function_and_its_owner() {
        use FunctionPhase::*;
        let none = conflict_condition(&[function("a", Ready, 1, 1)]);
        assert_eq!((none.status, none.reason, none.message.as_str()), (false, "NoConflict", ""));
        let mut owned = function("resize", Conflict, 0, 0);
        owned.owner = Some("media/images".into());
        let rule = conflict_condition(&[function("a", Ready, 1, 1), owned.clone()]);
        assert_eq!((rule.status, rule.reason), (true, "FunctionOwnedElsewhere"));
        assert_eq!(rule.message, "function resize is served by pool media/images; it gets no replicas here");
        let ready = ready_condition(&[owned]);
        assert_eq!((ready.status, ready.message.as_str()), (false, "resize: 0/0 available (Conflict)"));
    }

    #[test]
    fn ready_condition_rows() {
        use FunctionPhase::*;
        let rows: [(&str, Vec<FunctionStatus>, bool, &str, &str); 6] = [
            ("no functions yet", vec![], true, "AllFunctionsReady", "0 function(s) ready"),
            (
                "Ready and Idle",
                vec![function("a", Ready, 3, 3), function("b", Idle, 0, 0)],
                true,
                "AllFunctionsReady",
                "2 function(s) ready",
            ),
            (
                "one function short",
                vec![function("a", Ready, 3, 3), function("demo-sleep", Scaling, 1, 3)],
                false,
                "FunctionsNotReady",
                "demo-sleep: 1/3 available (Scaling)",
            ),
            (
                "degraded and draining both named",
                vec![function("a", Degraded, 0, 1), function("b", Draining, 2, 1)],
                false,
                "FunctionsNotReady",
                "a: 0/1 available (Degraded); b: 2/1 available (Draining)",
            ),
            (
                "degraded with every replica available is still not ready",
                vec![function("a", Degraded, 1, 1)],
                false,
                "FunctionsNotReady",
                "a: 1/1 available (Degraded)",
            ),
            (
                "no phase recorded",
                vec![FunctionStatus { name: "a".into(), ..Default::default() }],
                false,
                "FunctionsNotReady",
                "a: 0/0 available (Unknown)",
            ),
        ];
        for (name, functions, status, reason, message) in rows {
            let rule = ready_condition(&functions);
            assert_eq!((rule.status, rule.reason, rule.message.as_str()), (status, reason, message), "{name}");
        }
    }

    #[test]
    fn degraded_condition_rows() {
        let cause = |reason, message: &str| DegradedCause { reason, message: message.into() };
        let crash = cause("CrashLoopBackOff", "a: 1 pod(s) CrashLoopBackOff");
        let pull = cause("ImagePullBackOff", "b: 1 pod(s) ImagePullBackOff");
        let oom = cause("OOMKilled", "c: 1 pod(s) OOMKilled");
        let broker = cause(BROKER_UNREACHABLE, "broker unreachable");
        let cap = cause(POOL_CAP_REACHED, "a: capped");
        let rows: [(&str, Vec<DegradedCause>, bool, &str, &str); 8] = [
            ("healthy", vec![], false, "Healthy", ""),
            ("crash loop", vec![crash.clone()], true, "CrashLoopBackOff", "a: 1 pod(s) CrashLoopBackOff"),
            ("image pull", vec![pull.clone()], true, "ImagePullBackOff", "b: 1 pod(s) ImagePullBackOff"),
            ("OOM kills", vec![oom.clone()], true, "OOMKilled", "c: 1 pod(s) OOMKilled"),
            ("broker unreachable", vec![broker.clone()], true, BROKER_UNREACHABLE, "broker unreachable"),
            ("pool cap", vec![cap.clone()], true, POOL_CAP_REACHED, "a: capped"),
            (
                "pod trouble first, then the broker, then the cap; all in the message",
                vec![cap.clone(), broker.clone(), pull.clone(), crash.clone()],
                true,
                "ImagePullBackOff",
                "b: 1 pod(s) ImagePullBackOff; a: 1 pod(s) CrashLoopBackOff; broker unreachable; a: capped",
            ),
            ("the broker before the cap", vec![cap, broker], true, BROKER_UNREACHABLE, "broker unreachable; a: capped"),
        ];
        for (name, causes, status, reason, message) in rows {
            let rule = degraded_condition(&causes);
            assert_eq!((rule.status, rule.reason, rule.message.as_str()), (status, reason, message), "{name}");
        }
    }

    #[test]
    fn progressing_condition_rows() {
        use FunctionPhase::*;
        let rows: [(&str, Vec<FunctionStatus>, bool, &str, &str); 5] = [
            ("all ready", vec![function("a", Ready, 1, 1), function("b", Idle, 0, 0)], false, "Stable", ""),
            ("degraded is not progressing", vec![function("a", Degraded, 0, 1)], false, "Stable", ""),
            ("scaling", vec![function("a", Ready, 1, 1), function("b", Scaling, 0, 2)], true, "Scaling", "b: Scaling"),
            ("draining", vec![function("a", Draining, 2, 1)], true, "Draining", "a: Draining"),
            (
                "the first one gives the reason",
                vec![function("a", Draining, 2, 1), function("b", Scaling, 0, 2)],
                true,
                "Draining",
                "a: Draining; b: Scaling",
            ),
        ];
        for (name, functions, status, reason, message) in rows {
            let rule = progressing_condition(&functions);
            assert_eq!((rule.status, rule.reason, rule.message.as_str()), (status, reason, message), "{name}");
        }
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
