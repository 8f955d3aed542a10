//! Several brokers, some silent: counts are lower bounds, so a function grows on them but is not
//! scaled in, recycling waits, and the status says so.

use gearfleet_crd::FunctionPhase;

use super::*;

#[test]
fn a_partial_view_holds_a_scale_in_that_the_whole_view_makes() {
    let whole = fx().replicas(3).backlog(0, 1).pods([pod("a").busy(), pod("b"), pod("c")]);
    let plan = whole.plan();
    assert_eq!(plan.status.functions[0].desired_replicas, 1, "with every broker answering, idle pods go");
    assert!(!plan.before_scaling.is_empty(), "the scale-in starts with marking its victims");

    let partial = whole.silent_brokers(&["broker-2:4730"]);
    let plan = partial.plan();
    let f = &plan.functions[0];
    assert_eq!(f.target, 3, "held: {}", f.reason);
    assert!(f.reason.contains("1 of 2 brokers unreachable (broker-2:4730)"), "{}", f.reason);
    assert_eq!(f.decision, ScaleKind::Hold);
    let actions: Vec<String> = plan.before_scaling.iter().map(describe).collect();
    assert!(actions.is_empty(), "no victim marked or drained: {actions:?}");
    let status = &plan.status.functions[0];
    assert!(status.partial);
    assert_eq!(status.desired_replicas, 3);
    let (state, reason, message) = condition(&plan, pool_condition::BROKER_UNAVAILABLE);
    assert_eq!((state.as_str(), reason.as_str()), ("True", "PartialView"));
    assert!(message.contains("broker-2:4730") && message.contains("not scaled in"), "{message}");
}

#[test]
fn a_partial_view_still_grows_a_function() {
    let plan = fx().replicas(1).backlog(4, 1).pods([pod("a").busy()]).silent_brokers(&["broker-2:4730"]).plan();
    assert_eq!(plan.functions[0].target, 5, "the queue seen is at least that long");
    assert_ne!(plan.status.functions[0].phase, Some(FunctionPhase::Degraded), "{:?}", plan.status.functions[0]);
}

#[test]
fn a_partial_view_pauses_recycling() {
    let due = fx().spec("recycle: {maxAge: 1h}").replicas(1).backlog(0, 1).pods([pod("a").busy().age(7200)]);
    let recycling = |plan: &Plan| plan.recycling.iter().map(describe).collect::<Vec<_>>();
    assert_eq!(recycling(&due.plan()), ["annotate a: mark=recycle", "drain a (recycle)"], "a whole view recycles");
    assert!(recycling(&due.silent_brokers(&["broker-2:4730"]).plan()).is_empty(), "not on a partial view");
}

#[test]
fn a_whole_view_is_not_partial_and_no_view_is_unreachable() {
    let plan = fx().plan();
    assert!(!plan.status.functions[0].partial);
    assert_eq!(condition(&plan, pool_condition::BROKER_UNAVAILABLE).1, "BrokerReachable");
    let down = fx().broker_down().silent_brokers(&["broker-2:4730"]).plan();
    assert!(!down.status.functions[0].partial, "nothing known is not partial");
    let (state, reason, message) = condition(&down, pool_condition::BROKER_UNAVAILABLE);
    assert_eq!((state.as_str(), reason.as_str()), ("True", "BrokerUnreachable"));
    assert!(message.starts_with("2 of 2 brokers unreachable"), "{message}");
}
