//! The pool cap at every instant while replicas move between functions.

use super::*;

const A: [&str; 4] = ["a0", "a1", "a2", "a3"];
const B: [&str; 4] = ["b0", "b1", "b2", "b3"];

/// One function in the simulated cluster: its Deployment's replicas, its pods that run and its
/// pods that terminate.
#[derive(Clone, Copy, Debug)]
struct Sim {
    replicas: i32,
    live: usize,
    terminating: usize,
}

/// What a plan sees of the simulated cluster; the broker reports the workers of `drained` pods
/// draining.
fn observed_with(a: Sim, b: Sim, backlog: [(u64, u64); 2], drained: &[String]) -> Observed {
    let pods_of = |names: [&'static str; 4], function: &'static str, s: Sim| {
        (0..s.live + s.terminating).map(move |i| {
            let p = pod(names[i]).of(function).age(3600 - i as i64);
            let p = if drained.iter().any(|d| d == names[i]) { p.draining() } else { p };
            if i >= s.live { p.terminating() } else { p }
        })
    };
    let fx = fx()
        .functions("[{name: a, minReplicas: 1, maxReplicas: 4}, {name: b, maxReplicas: 4}]")
        .spec("maxReplicas: 4")
        .pods(pods_of(A, "a", a).chain(pods_of(B, "b", b)));
    let mut observed = fx.observed();
    for (d, s) in observed.deployments.iter_mut().zip([a, b]) {
        d.spec.as_mut().expect("spec").replicas = Some(s.replicas);
    }
    let stats = ["a", "b"].iter().zip(backlog).map(|(f, (queued, running))| {
        let s = FunctionStats { function: f.to_string(), queued: [0, queued, 0], running, ..Default::default() };
        (f.to_string(), s)
    });
    observed.brokers.stats = Some(stats.collect());
    observed
}

fn observed(a: Sim, b: Sim, backlog: [(u64, u64); 2]) -> Observed {
    observed_with(a, b, backlog, &[])
}

/// Applies a plan to the simulated cluster: lowered functions' extra pods start terminating,
/// raised functions get new pods.
fn apply_plan(s: Sim, target: i32) -> Sim {
    let target_pods = usize::try_from(target).expect("target");
    if target_pods < s.live {
        Sim { replicas: target, live: target_pods, terminating: s.terminating + s.live - target_pods }
    } else {
        Sim { replicas: target, live: target_pods, terminating: s.terminating }
    }
}

/// `a` goes from 3 replicas to 1 and `b` from 1 to 3 under `maxReplicas: 4`; `a`'s victims are
/// drained first and reported draining by the broker at the next reconcile, lowered pods take
/// one reconcile to terminate and are gone at the next. The pool never runs more than 4 pods.
#[test]
fn moving_replicas_between_functions_never_exceeds_the_cap() {
    let (mut a, mut b) = (Sim { replicas: 3, live: 3, terminating: 0 }, Sim { replicas: 1, live: 1, terminating: 0 });
    let backlog = [(0, 1), (3, 0)];
    let mut steps = Vec::new();
    let mut drained: Vec<String> = Vec::new();
    for _ in 0..5 {
        let plan = plan(&observed_with(a, b, backlog, &drained), &PoolMemory::default()).expect("plan");
        drained.extend(plan.before_scaling.iter().filter_map(|action| match action {
            PodAction::Drain { pod, .. } => Some(pod.clone()),
            _ => None,
        }));
        let (ta, tb) = (plan.functions[0].target, plan.functions[1].target);
        assert!(ta + tb <= 4, "the planned replicas fit: {ta} + {tb}");
        // Terminating pods seen by this plan are gone after it.
        a.terminating = 0;
        b.terminating = 0;
        // Lowerings go first; the cap holds after every Deployment applied.
        a = apply_plan(a, ta);
        let pods = a.live + a.terminating + b.live + b.terminating;
        assert!(pods <= 4, "after lowering a: {pods} pods");
        b = apply_plan(b, tb);
        let pods = a.live + a.terminating + b.live + b.terminating;
        assert!(pods <= 4, "after raising b to {tb}: {pods} pods ({a:?}, {b:?})");
        steps.push((ta, tb, scaling_message(&plan)));
    }
    let targets: Vec<(i32, i32)> = steps.iter().map(|(a, b, _)| (*a, *b)).collect();
    assert_eq!(
        targets[..4],
        [(3, 1), (1, 1), (1, 1), (1, 3)],
        "a's victims fenced, a lowered, b grows once a's pods are gone"
    );
    assert!(steps[0].2.contains("a: waiting for 2 worker(s) to be reported draining: a2, a1"), "{}", steps[0].2);
    assert!(steps[0].2.contains("b: raise to 3 waits for the pool cap"), "{}", steps[0].2);
    assert!(steps[1].2.contains("b: raise to 3 waits for the pool cap"), "{}", steps[1].2);
    assert_eq!(drained, ["a2", "a1"], "drained once, before the scale-in");
    assert_eq!((a.live, b.live), (1, 3));
}

/// A plan seeing the lowered pods still terminating keeps the raise waiting, with a short requeue.
#[test]
fn a_raise_waits_while_lowered_pods_terminate() {
    let a = Sim { replicas: 1, live: 1, terminating: 2 };
    let b = Sim { replicas: 1, live: 1, terminating: 0 };
    let plan = plan(&observed(a, b, [(0, 1), (3, 0)]), &PoolMemory::default()).expect("plan");
    assert_eq!((plan.functions[0].target, plan.functions[1].target), (1, 1));
    assert_eq!(plan.functions[1].deployment.spec.as_ref().and_then(|s| s.replicas), Some(1));
    assert!(scaling_message(&plan).contains("b: raise to 3 waits for the pool cap (maxReplicas 4: 3 pod(s)"));
    assert_eq!(plan.requeue, Some(Duration::from_secs(2)));
    assert!(plan.events.is_empty(), "no scale Event for a raise that waits");
    let phases: Vec<_> = plan.status.functions.iter().map(|f| f.phase).collect();
    use gearfleet_crd::FunctionPhase::Scaling;
    assert_eq!(phases, [Some(Scaling), Some(Scaling)], "a's pods still terminate; b's raise waits for the cap");
    let (status, reason, message) = condition(&plan, pool_condition::PROGRESSING);
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Scaling"));
    assert_eq!(message, "a: Scaling; b: Scaling");
    let (status, reason, message) = condition(&plan, pool_condition::READY);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "FunctionsNotReady"));
    assert_eq!(message, "a: 1/1 available (Scaling); b: 1/3 available (Scaling)");
    let (status, reason, _) = condition(&plan, pool_condition::DEGRADED);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Healthy"), "the cap fits what the queues ask");
}
