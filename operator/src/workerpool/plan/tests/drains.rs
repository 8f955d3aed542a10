//! The drain and undrain decisions, one table row each.

use super::*;

/// Every drain and undrain decision: the actions before scaling, the recycling actions, the
/// replicas `echo` gets and a piece of the `Scaling` message ("" when stable).
#[test]
fn drains_and_undrains() {
    struct Case {
        name: &'static str,
        fx: Fx,
        before: &'static [&'static str],
        recycling: &'static [&'static str],
        target: i32,
        scaling: &'static str,
    }
    let case = |name, fx, before, recycling, target, scaling| Case { name, fx, before, recycling, target, scaling };
    let two_busy = || [pod("old").busy().age(7200), pod("new").busy().age(60)];
    let cases = [
        case(
            "a busy scale-in victim is marked and drained, and the scale-in waits",
            fx().replicas(2).backlog(0, 1).pods(two_busy()),
            &["annotate new: cost=-1 mark=scale-in", "annotate old: cost=100", "drain new (scale-in)"],
            &[],
            2,
            "echo: waiting for 1 busy worker(s) to finish: new",
        ),
        case(
            "a drained victim still busy within drainTimeout: nothing new, still waiting",
            fx().replicas(2).backlog(0, 1).pods([
                pod("old").busy().age(7200).cost(100),
                pod("new").busy().age(60).cost(-1).draining().mark("scale-in", 30),
            ]),
            &[],
            &[],
            2,
            "waiting for 1 busy worker(s)",
        ),
        case(
            "the broker lost a victim's drain: drained again, the mark kept",
            fx().replicas(2)
                .backlog(0, 1)
                .pods([pod("old").busy().age(7200).cost(100), pod("new").busy().age(60).cost(-1).mark("scale-in", 30)]),
            &["drain new (scale-in)"],
            &[],
            2,
            "waiting for 1 busy worker(s)",
        ),
        case(
            "drainTimeout (10m) passed since the mark: replicas lowered, the victim stays drained",
            fx().replicas(2).backlog(0, 1).pods([
                pod("old").busy().age(7200).cost(100),
                pod("new").busy().age(60).cost(-1).draining().mark("scale-in", 601),
            ]),
            &[],
            &[],
            1,
            "echo: 2 -> 1",
        ),
        case(
            "the drained victim went idle: replicas lowered, it stays drained",
            fx().replicas(2).backlog(0, 1).pods([
                pod("old").busy().age(7200).cost(100),
                pod("new").age(60).cost(-1).draining().mark("scale-in", 30),
            ]),
            &[],
            &[],
            1,
            "echo: 2 -> 1",
        ),
        case(
            "an idle pod became the victim: replicas lowered, the surviving drained worker undrained",
            fx().replicas(2)
                .backlog(0, 1)
                .pods([pod("x").busy().age(60).cost(-1).draining().mark("scale-in", 30), pod("y").age(7200).cost(0)]),
            &["annotate x: cost=100", "annotate y: cost=-1", "undrain x", "unmark x"],
            &[],
            1,
            "echo: 2 -> 1",
        ),
        case(
            "a scale-in called off (the backlog came back): the victim undrained and unmarked",
            fx().replicas(2).backlog(1, 1).pods([
                pod("old").busy().age(7200).cost(100),
                pod("new").busy().age(60).cost(-1).draining().mark("scale-in", 30),
            ]),
            &["undrain new", "unmark new"],
            &[],
            2,
            "",
        ),
        case(
            "a worker draining without a mark (operator restarted): undrained",
            fx().replicas(1).backlog(0, 1).pods([pod("a").busy().draining()]),
            &["undrain a"],
            &[],
            1,
            "",
        ),
        case(
            "a mark whose worker is not draining: removed",
            fx().replicas(1).backlog(0, 1).pods([pod("a").busy().mark("scale-in", 30)]),
            &["unmark a"],
            &[],
            1,
            "",
        ),
        case(
            "the ReplicaSet is still removing a victim of an applied scale-in: kept drained",
            fx().replicas(1).backlog(0, 1).pods([
                pod("stay").busy().age(7200).cost(100),
                pod("gone").busy().age(60).cost(-1).draining().mark("scale-in", 30),
            ]),
            &[],
            &[],
            1,
            "",
        ),
        case(
            "a terminating pod's drain is kept",
            fx().replicas(1).backlog(0, 1).pods([pod("a").busy(), pod("t").terminating().draining()]),
            &[],
            &[],
            1,
            "",
        ),
        case(
            "a draining worker of another pool is left alone",
            Fx {
                extra_workers: vec![WorkerStats { draining: true, ..pod("elsewhere").worker().expect("worker") }],
                ..fx().replicas(1).backlog(0, 1).pods([pod("a").busy()])
            },
            &[],
            &[],
            1,
            "",
        ),
        case(
            "a recycle drain is not undrained (busy, within drainTimeout: waits)",
            fx().spec("recycle: {maxAge: 1h}").replicas(1).backlog(0, 1).pods([pod("a")
                .busy()
                .age(7200)
                .draining()
                .mark("recycle", 30)]),
            &[],
            &[],
            1,
            "echo: recycling pods",
        ),
        case(
            "a recycle drain the broker lost is drained again",
            fx().spec("recycle: {maxAge: 1h}")
                .replicas(1)
                .backlog(0, 1)
                .pods([pod("a").busy().age(7200).mark("recycle", 30)]),
            &[],
            &["drain a (recycle)"],
            1,
            "echo: recycling pods",
        ),
        case(
            "a recycle drain without recycling (spec.recycle removed): undrained",
            fx().replicas(1).backlog(0, 1).pods([pod("a").busy().draining().mark("recycle", 30)]),
            &["undrain a", "unmark a"],
            &[],
            1,
            "",
        ),
        case(
            "recycling: a busy due pod is marked and drained",
            fx().spec("recycle: {maxAge: 1h}").replicas(1).backlog(0, 1).pods([pod("a").busy().age(7200)]),
            &[],
            &["annotate a: mark=recycle", "drain a (recycle)"],
            1,
            "echo: recycling pods",
        ),
        case(
            "recycling: a drained pod now idle is evicted",
            fx().spec("recycle: {maxAge: 1h}").replicas(1).pods([pod("a").age(7200).draining().mark("recycle", 30)]),
            &[],
            &["evict a (maxAge reached)"],
            1,
            "echo: recycling pods",
        ),
        case(
            "recycling: an idle due pod is evicted at once",
            fx().spec("recycle: {maxAge: 1h}").replicas(1).pods([pod("a").age(7200)]),
            &[],
            &["evict a (maxAge reached)"],
            1,
            "echo: recycling pods",
        ),
        case(
            "broker unreachable: replicas held, nothing drained or undrained",
            fx().replicas(2).broker_down().pods([pod("a").busy().draining(), pod("b")]),
            &[],
            &[],
            2,
            "",
        ),
        case(
            "worker list unavailable: the scale-in waits, nothing drained",
            fx().replicas(2).backlog(0, 1).no_worker_list().pods(two_busy()),
            &[],
            &[],
            2,
            "echo: the broker's worker list is unavailable",
        ),
        case(
            "a stock worker (no client id) is known by its pod IP: the busy one is kept, ranked busy",
            fx().replicas(2)
                .backlog(0, 1)
                .pods([pod("php-busy").stock("10.1.0.1").busy().age(60), pod("php-idle").stock("10.1.0.2").age(7200)]),
            &["annotate php-busy: cost=100", "annotate php-idle: cost=-1"],
            &[],
            1,
            "echo: 2 -> 1",
        ),
        case(
            "a busy stock worker is drained by its pod IP before the scale-in",
            fx().replicas(2).backlog(0, 1).pods([
                pod("php-old").stock("10.1.0.1").busy().age(7200),
                pod("php-new").stock("10.1.0.2").busy().age(60),
            ]),
            &[
                "annotate php-new: cost=-1 mark=scale-in",
                "annotate php-old: cost=100",
                "drain php-new via 10.1.0.2 (scale-in)",
            ],
            &[],
            2,
            "echo: waiting for 1 busy worker(s) to finish: php-new",
        ),
        case(
            "a multi-process stock worker is busy if any of its connections is",
            Fx {
                extra_workers: vec![pod("php").stock("10.1.0.1").connection(40001, WorkerState::Busy)],
                ..fx().replicas(2).backlog(0, 1).pods([pod("php").stock("10.1.0.1").age(60), pod("other").age(7200)])
            },
            &["annotate other: cost=-1", "annotate php: cost=100"],
            &[],
            1,
            "echo: 2 -> 1",
        ),
        case(
            "a stock worker draining without a mark: undrained by its pod IP",
            fx().replicas(1).backlog(0, 1).pods([pod("php").stock("10.1.0.1").busy().draining()]),
            &["undrain php via 10.1.0.1"],
            &[],
            1,
            "",
        ),
        case(
            "a failed stock pod is not matched by address: the draining worker now at its IP is left alone",
            Fx {
                extra_workers: vec![WorkerStats {
                    draining: true,
                    ..pod("elsewhere").stock("10.1.0.1").worker().expect("worker")
                }],
                ..fx()
                    .replicas(1)
                    .backlog(0, 1)
                    .pods([pod("a").busy(), PodFx { worker: None, ..pod("old").stock("10.1.0.1").failed() }])
            },
            &[],
            &[],
            1,
            "",
        ),
        case(
            "a hostNetwork pod is not matched by address (its IP is the node's)",
            fx().replicas(2)
                .backlog(0, 1)
                .pods([pod("host").stock("192.168.1.10").host_network().busy().age(60), pod("named").busy().age(7200)]),
            &["annotate host: cost=-1", "annotate named: cost=100"],
            &[],
            1,
            "echo: 2 -> 1",
        ),
        case(
            "paused: idle pods go first, the busy one is drained first",
            fx().spec("paused: true").replicas(2).backlog(3, 1).pods([pod("a").busy().age(7200), pod("b")]),
            &["annotate a: cost=-1 mark=scale-in", "annotate b: cost=-2", "drain a (scale-in)"],
            &[],
            2,
            "echo: waiting for 1 busy worker(s) to finish: a",
        ),
    ];
    for c in cases {
        let plan = c.fx.plan();
        let before: Vec<String> = plan.before_scaling.iter().map(describe).collect();
        assert_eq!(before, c.before, "{}: before scaling", c.name);
        let recycling: Vec<String> = plan.recycling.iter().map(describe).collect();
        assert_eq!(recycling, c.recycling, "{}: recycling", c.name);
        let echo = &plan.functions[0];
        assert_eq!(echo.target, c.target, "{}: target", c.name);
        assert_eq!(echo.deployment.spec.as_ref().and_then(|s| s.replicas), Some(c.target), "{}", c.name);
        let message = scaling_message(&plan);
        if c.scaling.is_empty() {
            assert_eq!(message, "", "{}: Scaling message", c.name);
        } else {
            assert!(message.contains(c.scaling), "{}: Scaling message {message:?} lacks {:?}", c.name, c.scaling);
        }
    }
}
