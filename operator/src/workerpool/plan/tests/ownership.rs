//! Function-name ownership: a name another pool owns gets no replicas, the Conflict phase and
//! condition, one Warning Event, and a quick requeue for the hand-over.

use gearfleet_crd::FunctionPhase;

use super::*;

fn other_owner() -> Claim {
    Claim {
        pool: "other/first".into(),
        created: Some(ago(86_400)),
        names: vec!["echo".into()],
        serving: vec!["echo".into()],
    }
}

fn this_pool() -> Claim {
    Claim { pool: "ns/pool".into(), created: Some(ago(60)), names: vec!["echo".into()], serving: Vec::new() }
}

#[test]
fn a_name_another_pool_owns_gets_no_replicas_and_the_conflict_condition() {
    let fx = fx().backlog(10, 0).pods([pod("a")]).claims(vec![other_owner(), this_pool()]);
    let plan = fx.plan();
    let f = &plan.functions[0];
    assert!(f.target <= 1, "not scaled on the owner's queue: {} -> {}", f.current, f.target);
    let drains: Vec<String> = plan.before_scaling.iter().map(describe).filter(|d| d.starts_with("drain")).collect();
    assert_eq!(drains, ["drain a (scale-in)"], "its pod is fenced on the way to zero");
    let status = &plan.status.functions[0];
    assert_eq!(status.phase, Some(FunctionPhase::Conflict));
    assert_eq!(status.owner.as_deref(), Some("other/first"));
    assert_eq!(status.desired_replicas, 0);
    assert_eq!(
        condition(&plan, pool_condition::CONFLICT),
        (
            "True".into(),
            "FunctionOwnedElsewhere".into(),
            "function echo is served by pool other/first; it gets no replicas here".into()
        )
    );
    assert_eq!(condition(&plan, pool_condition::READY).0, "False");
    let conflict_events: Vec<&PlannedEvent> = plan.events.iter().filter(|e| e.reason == "FunctionConflict").collect();
    assert_eq!(conflict_events.len(), 1);
    assert_eq!(conflict_events[0].type_, EventType::Warning);
    assert!(plan.requeue.is_some_and(|r| r <= Duration::from_secs(3)), "{:?}", plan.requeue);

    // The same conflict again: no second Event.
    let again = fx.status(plan.status.clone()).plan();
    assert!(again.events.iter().all(|e| e.reason != "FunctionConflict"));
}

#[test]
fn no_retry_policy_is_sent_for_a_name_another_pool_owns() {
    let fx =
        fx().functions("[{name: echo, maxReplicas: 5, retries: {limit: 3}}]").claims(vec![other_owner(), this_pool()]);
    assert!(fx.plan().retries.is_empty());
}

#[test]
fn the_owner_and_a_pool_without_rivals_scale_as_before() {
    let mut mine = this_pool();
    mine.serving = vec!["echo".into()];
    let mut late = other_owner();
    late.created = Some(now());
    late.serving.clear();
    for claims in [vec![mine, late], vec![this_pool()]] {
        let plan = fx().backlog(10, 0).pods([pod("a")]).claims(claims).plan();
        assert!(plan.functions[0].target > 1, "{:?}", plan.functions[0]);
        assert_ne!(plan.status.functions[0].phase, Some(FunctionPhase::Conflict));
        assert_eq!(plan.status.functions[0].owner, None);
        assert_eq!(condition(&plan, pool_condition::CONFLICT).1, "NoConflict");
    }
}

#[test]
fn without_the_pool_cache_no_name_is_anyone_elses() {
    let plan = fx().backlog(10, 0).pods([pod("a")]).plan();
    assert!(plan.functions[0].target > 1);
}
