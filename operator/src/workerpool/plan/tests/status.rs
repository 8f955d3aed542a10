//! Every condition, the phase, the Events and the requeue, one table row each.

use super::*;

/// Every condition: (type, status, reason, a piece of the message) for the conditions a row
/// checks, the phase, the Events' reasons and the requeue.
#[test]
fn conditions_phase_events_and_requeue() {
    use gearfleet_crd::WorkerPoolPhase;
    use pool_condition::{BROKER_UNAVAILABLE, DEGRADED, DRAINED, DRAINING, PROGRESSING, READY, SCALING};
    type Cond = (&'static str, &'static str, &'static str, &'static str);
    struct Case {
        name: &'static str,
        fx: Fx,
        conditions: &'static [Cond],
        phase: WorkerPoolPhase,
        events: &'static [&'static str],
        requeue_s: u64,
    }
    let case = |name, fx, conditions, phase, events, requeue_s| Case { name, fx, conditions, phase, events, requeue_s };
    let degraded_status = {
        let mut s = WorkerPoolStatus::default();
        set_condition(
            &mut s.conditions,
            new_condition(DEGRADED, true, "CrashLoopBackOff", "old", Some(1), Time(ago(600))),
        );
        s
    };
    let drained_status = {
        let mut s = WorkerPoolStatus::default();
        set_condition(&mut s.conditions, new_condition(DRAINED, true, "Paused", "", Some(1), Time(ago(600))));
        s
    };
    let cases = [
        case(
            "steady",
            fx().pods([pod("a")]),
            &[
                (READY, "True", "AllFunctionsReady", "1 function(s) ready"),
                (SCALING, "False", "Stable", ""),
                (BROKER_UNAVAILABLE, "False", "BrokerReachable", ""),
                (DEGRADED, "False", "Healthy", ""),
                (DRAINING, "False", "NotPaused", ""),
                (DRAINED, "False", "NotPaused", ""),
                (PROGRESSING, "False", "Stable", ""),
            ],
            WorkerPoolPhase::Running,
            &[],
            5,
        ),
        case(
            "a backlog scales up",
            fx().backlog(3, 0).pods([pod("a")]),
            &[
                (READY, "False", "FunctionsNotReady", "echo: 1/3 available (Scaling)"),
                (SCALING, "True", "Scaling", "echo: 1 -> 3"),
                (PROGRESSING, "True", "Scaling", "echo: Scaling"),
            ],
            WorkerPoolPhase::Scaling,
            &["ScaleUp"],
            5,
        ),
        case(
            "from zero",
            fx().replicas(0).backlog(2, 0),
            &[(SCALING, "True", "Scaling", "echo: 0 -> 2")],
            WorkerPoolPhase::Scaling,
            &["ScaleFromZero"],
            5,
        ),
        case(
            "broker unreachable",
            fx().replicas(2).broker_down().pods([pod("a"), pod("b")]),
            &[
                (
                    BROKER_UNAVAILABLE,
                    "True",
                    "BrokerUnreachable",
                    "broker broker:4730 is unreachable: holding current replicas",
                ),
                (SCALING, "False", "Stable", ""),
                (DEGRADED, "True", "BrokerUnreachable", "broker broker:4730 is unreachable: queue depths unknown"),
                (READY, "False", "FunctionsNotReady", "echo: 2/2 available (Degraded)"),
            ],
            WorkerPoolPhase::Degraded,
            &["Degraded"],
            5,
        ),
        case(
            "crash loop",
            fx().pods([pod("a").container(waiting("CrashLoopBackOff"))]),
            &[
                (DEGRADED, "True", "CrashLoopBackOff", "echo: 1 pod(s) CrashLoopBackOff (a: boom)"),
                (READY, "False", "FunctionsNotReady", "echo: 1/1 available (Degraded)"),
                (PROGRESSING, "False", "Stable", ""),
            ],
            WorkerPoolPhase::Degraded,
            &["Degraded"],
            5,
        ),
        case(
            "OOM kills",
            fx().pods([pod("a").container(oom_killed())]),
            &[(DEGRADED, "True", "OOMKilled", "echo: 1 pod(s) OOMKilled (a: container worker OOMKilled 3 times)")],
            WorkerPoolPhase::Degraded,
            &["Degraded"],
            5,
        ),
        case(
            "image pull",
            fx().pods([pod("a").container(waiting("ErrImagePull"))]),
            &[(DEGRADED, "True", "ImagePullBackOff", "echo: 1 pod(s) ImagePullBackOff (a: boom)")],
            WorkerPoolPhase::Degraded,
            &["Degraded"],
            5,
        ),
        case(
            "an image that is not there with pull policy Never",
            fx().pods([PodFx { ready: false, ..pod("a").container(waiting("ErrImageNeverPull")) }]),
            &[
                (DEGRADED, "True", "ImagePullBackOff", "echo: 1 pod(s) ImagePullBackOff (a: boom)"),
                (READY, "False", "FunctionsNotReady", "echo: 0/1 available (Degraded)"),
            ],
            WorkerPoolPhase::Degraded,
            &["Degraded"],
            5,
        ),
        case(
            "a pending pod: not ready, not degraded",
            fx().pods([PodFx { ready: false, ..pod("a").container(waiting("ContainerCreating")) }]),
            &[
                (READY, "False", "FunctionsNotReady", "echo: 0/1 available (Scaling)"),
                (DEGRADED, "False", "Healthy", ""),
                (PROGRESSING, "True", "Scaling", "echo: Scaling"),
            ],
            WorkerPoolPhase::Scaling,
            &[],
            5,
        ),
        case(
            "the pool cap holds a function below its queue",
            fx().functions("[{name: echo, maxReplicas: 5}, {name: other, minReplicas: 1, maxReplicas: 5}]")
                .spec("maxReplicas: 2")
                .backlog(4, 0)
                .pods([pod("a"), pod("o").of("other")]),
            &[
                (DEGRADED, "True", "PoolCapReached", "echo: pool maxReplicas 2 holds it at 1 of the 4 its queue asks"),
                (READY, "True", "AllFunctionsReady", "2 function(s) ready"),
                (PROGRESSING, "False", "Stable", ""),
            ],
            WorkerPoolPhase::Degraded,
            &["Degraded"],
            5,
        ),
        case(
            "idle: nothing wanted, nothing there",
            fx().replicas(0),
            &[(READY, "True", "AllFunctionsReady", ""), (PROGRESSING, "False", "Stable", "")],
            WorkerPoolPhase::Running,
            &[],
            5,
        ),
        case(
            "still degraded: no second Event",
            fx().status(degraded_status).pods([pod("a").container(waiting("CrashLoopBackOff"))]),
            &[(DEGRADED, "True", "CrashLoopBackOff", "echo: 1 pod(s)")],
            WorkerPoolPhase::Degraded,
            &[],
            5,
        ),
        case(
            "crashLoopLimit holds growth",
            fx().spec("crashLoopLimit: 1").backlog(4, 0).pods([pod("a").container(waiting("CrashLoopBackOff"))]),
            &[(
                SCALING,
                "True",
                "Scaling",
                "echo: 1 crashing pod(s) reach crashLoopLimit 1: holding at 1 instead of 4",
            )],
            WorkerPoolPhase::Degraded,
            &["Degraded"],
            5,
        ),
        case(
            "paused with pods left",
            fx().spec("paused: true").replicas(1).pods([pod("a").terminating()]),
            &[
                (DRAINING, "True", "Paused", "1 worker pod(s) finishing their jobs"),
                (DRAINED, "False", "Paused", ""),
                (READY, "False", "FunctionsNotReady", "echo: 0/0 available (Scaling)"),
                (DEGRADED, "False", "Healthy", ""),
            ],
            WorkerPoolPhase::Draining,
            &["ScaleToZero"],
            2,
        ),
        case(
            "paused and no pods left",
            fx().spec("paused: true").replicas(0),
            &[
                (DRAINING, "False", "Paused", ""),
                (DRAINED, "True", "Paused", ""),
                (READY, "True", "AllFunctionsReady", ""),
            ],
            WorkerPoolPhase::Drained,
            &["Drained"],
            5,
        ),
        case(
            "still drained: no second Event",
            fx().spec("paused: true").replicas(0).status(drained_status),
            &[(DRAINED, "True", "Paused", "")],
            WorkerPoolPhase::Drained,
            &[],
            5,
        ),
        case(
            "a scale-in waiting for a drain",
            fx().replicas(2).backlog(0, 1).pods([pod("old").busy().age(7200), pod("new").busy().age(60)]),
            &[
                (SCALING, "True", "Scaling", "waiting for 1 busy worker(s)"),
                (PROGRESSING, "True", "Draining", "echo: Draining"),
                (READY, "False", "FunctionsNotReady", "echo: 2/1 available (Draining)"),
            ],
            WorkerPoolPhase::Scaling,
            &[],
            1,
        ),
    ];
    for c in cases {
        let plan = c.fx.plan();
        for &(type_, status, reason, message) in c.conditions {
            let (s, r, m) = condition(&plan, type_);
            assert_eq!((s.as_str(), r.as_str()), (status, reason), "{}: {type_}", c.name);
            assert!(m.contains(message), "{}: {type_} message {m:?} lacks {message:?}", c.name);
        }
        assert_eq!(plan.status.conditions.len(), pool_condition::ALL.len(), "{}: every condition is set", c.name);
        for type_ in pool_condition::ALL {
            assert!(find_condition(&plan.status.conditions, type_).is_some(), "{}: no {type_}", c.name);
        }
        assert_eq!(plan.status.phase, Some(c.phase), "{}", c.name);
        let events: Vec<&str> = plan.events.iter().map(|e| e.reason.as_str()).collect();
        assert_eq!(events, c.events, "{}: events", c.name);
        assert_eq!(plan.requeue, Some(Duration::from_secs(c.requeue_s)), "{}: requeue", c.name);
        assert_eq!(plan.status.observed_generation, Some(2), "{}", c.name);
        assert_eq!(plan.status.message, None, "{}", c.name);
    }
}

#[test]
fn events_carry_the_notes_of_today() {
    let plan = fx().backlog(3, 0).pods([pod("a").container(waiting("CrashLoopBackOff"))]).plan();
    let scale = &plan.events[0];
    assert_eq!((scale.type_, scale.action, scale.aggregate), (EventType::Normal, "Scale", false));
    assert!(scale.note.starts_with("echo: 1 -> 3 replicas: backlog 3 jobs"), "{}", scale.note);
    let degraded = &plan.events[1];
    assert_eq!((degraded.type_, degraded.action, degraded.aggregate), (EventType::Warning, "Health", true));
    assert_eq!(degraded.note, "echo: 1 pod(s) CrashLoopBackOff (a: boom)");
    let drained = fx().spec("paused: true").replicas(0).plan();
    let e = &drained.events[0];
    assert_eq!((e.type_, e.action, e.aggregate), (EventType::Normal, "Pause", true));
    assert_eq!(e.note, "paused: no worker pods left; queued jobs wait in the broker");
    let recycled = fx().spec("recycle: {maxAge: 1h}").pods([pod("a").age(7200)]).plan();
    assert!(
        matches!(&recycled.recycling[..], [PodAction::Evict { note, .. }] if note == "echo: replacing pod a (maxAge reached)")
    );
}

/// Each function's phase and the `Progressing` condition: (status, reason, a piece of the message).
#[test]
fn function_phases_and_progressing() {
    use gearfleet_crd::FunctionPhase::{self, Degraded, Draining, Idle, Ready, Scaling};
    struct Case {
        name: &'static str,
        fx: Fx,
        phase: FunctionPhase,
        progressing: (&'static str, &'static str, &'static str),
    }
    let case = |name, fx, phase, progressing| Case { name, fx, phase, progressing };
    let cases = [
        case("steady", fx().pods([pod("a")]), Ready, ("False", "Stable", "")),
        case("idle", fx().replicas(0), Idle, ("False", "Stable", "")),
        case(
            "scaled to zero, a pod still terminating",
            fx().replicas(0).pods([pod("a").terminating()]),
            Scaling,
            ("True", "Scaling", "echo: Scaling"),
        ),
        case("broker unreachable", fx().broker_down().pods([pod("a")]), Degraded, ("False", "Stable", "")),
        case(
            "paused with a busy worker: drained first",
            fx().spec("paused: true").backlog(0, 1).pods([pod("a").busy()]),
            Draining,
            ("True", "Draining", "echo: Draining"),
        ),
        case("a backlog scales up", fx().backlog(3, 0).pods([pod("a")]), Scaling, ("True", "Scaling", "echo: Scaling")),
        case(
            "replicas set, the pod not ready yet",
            fx().pods([PodFx { ready: false, ..pod("a") }]),
            Scaling,
            ("True", "Scaling", "echo: Scaling"),
        ),
        case(
            "a scale-in applied, its pod still terminating",
            fx().pods([pod("a"), pod("b").terminating()]),
            Scaling,
            ("True", "Scaling", "echo: Scaling"),
        ),
        case(
            "a scale-in waits for a busy worker",
            fx().replicas(2).backlog(0, 1).pods([pod("old").busy().age(7200), pod("new").busy().age(60)]),
            Draining,
            ("True", "Draining", "echo: Draining"),
        ),
        case(
            "recycling a busy pod: it is drained first",
            fx().spec("recycle: {maxAge: 1h}").backlog(0, 1).pods([pod("a").busy().age(7200)]),
            Draining,
            ("True", "Draining", "echo: Draining"),
        ),
        case(
            "recycling an idle pod",
            fx().spec("recycle: {maxAge: 1h}").pods([pod("a").age(7200)]),
            Scaling,
            ("True", "Scaling", "echo: Scaling"),
        ),
        case(
            "crash-looping pods: Degraded, not progressing",
            fx().pods([pod("a").container(waiting("CrashLoopBackOff"))]),
            Degraded,
            ("False", "Stable", ""),
        ),
    ];
    for c in cases {
        let plan = c.fx.plan();
        assert_eq!(plan.status.functions[0].phase, Some(c.phase), "{}: phase", c.name);
        let (status, reason, message) = condition(&plan, pool_condition::PROGRESSING);
        assert_eq!((status.as_str(), reason.as_str()), (c.progressing.0, c.progressing.1), "{}", c.name);
        assert!(message.contains(c.progressing.2), "{}: message {message:?}", c.name);
    }
}
