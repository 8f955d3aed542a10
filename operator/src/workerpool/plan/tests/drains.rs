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
            "an idle pod became the victim: fenced first (replicas held), the surviving drained worker undrained",
            fx().replicas(2)
                .backlog(0, 1)
                .pods([pod("x").busy().age(60).cost(-1).draining().mark("scale-in", 30), pod("y").age(7200).cost(0)]),
            &[
                "annotate x: cost=100",
                "annotate y: cost=-1 mark=scale-in",
                "drain y (scale-in)",
                "undrain x",
                "unmark x",
            ],
            &[],
            2,
            "echo: waiting for 1 worker(s) to be reported draining: y",
        ),
        case(
            "an idle victim is marked and drained, and the replicas are held this reconcile",
            fx().replicas(2).backlog(0, 1).pods([pod("old").busy().age(7200), pod("new").age(60)]),
            &["annotate new: cost=-1 mark=scale-in", "annotate old: cost=100", "drain new (scale-in)"],
            &[],
            2,
            "echo: waiting for 1 worker(s) to be reported draining: new",
        ),
        case(
            "the next reconcile: the idle victim reported draining, replicas lowered, it stays drained",
            fx().replicas(2).backlog(0, 1).pods([
                pod("old").busy().age(7200).cost(100),
                pod("new").age(60).cost(-1).draining().mark("scale-in", 1),
            ]),
            &[],
            &[],
            1,
            "echo: 2 -> 1",
        ),
        case(
            "an idle victim the broker does not report draining: drained again, still waiting",
            fx().replicas(2)
                .backlog(0, 1)
                .pods([pod("old").busy().age(7200).cost(100), pod("new").age(60).cost(-1).mark("scale-in", 1)]),
            &["drain new (scale-in)"],
            &[],
            2,
            "echo: waiting for 1 worker(s) to be reported draining: new",
        ),
        case(
            "an idle victim never reported draining: lowered at drainTimeout (10m), drained again",
            fx().replicas(2)
                .backlog(0, 1)
                .pods([pod("old").busy().age(7200).cost(100), pod("new").age(60).cost(-1).mark("scale-in", 601)]),
            &["drain new (scale-in)"],
            &[],
            1,
            "echo: 2 -> 1",
        ),
        case(
            "a victim without a broker connection needs no fence: replicas lowered at once",
            fx().replicas(2)
                .backlog(0, 1)
                .pods([pod("old").busy().age(7200), PodFx { worker: None, ..pod("new").age(60) }]),
            &["annotate new: cost=-1", "annotate old: cost=100"],
            &[],
            1,
            "echo: 2 -> 1",
        ),
        case(
            "a busy victim still waits as before; the idle victim beside it is fenced too",
            fx().replicas(3).backlog(0, 1).pods([
                pod("keep").busy().age(7200),
                pod("busy").busy().age(60),
                pod("idle").age(30),
            ]),
            &[
                "annotate busy: cost=-1 mark=scale-in",
                "annotate idle: cost=-2 mark=scale-in",
                "annotate keep: cost=100",
                "drain idle (scale-in)",
                "drain busy (scale-in)",
            ],
            &[],
            3,
            "echo: waiting for 1 busy worker(s) to finish: busy and 1 worker(s) to be reported draining: idle",
        ),
        case(
            "the idle victim is reported draining, the busy one still runs its job: still waiting for it alone",
            fx().replicas(3).backlog(0, 1).pods([
                pod("keep").busy().age(7200).cost(100),
                pod("busy").busy().age(60).cost(-1).draining().mark("scale-in", 1),
                pod("idle").age(30).cost(-2).draining().mark("scale-in", 1),
            ]),
            &[],
            &[],
            3,
            "echo: waiting for 1 busy worker(s) to finish: busy",
        ),
        case(
            "a fenced idle victim of a scale-in called off (the backlog came back): undrained and unmarked",
            fx().replicas(2).backlog(1, 1).pods([
                pod("old").busy().age(7200).cost(100),
                pod("new").age(60).cost(-1).draining().mark("scale-in", 1),
            ]),
            &["undrain new", "unmark new"],
            &[],
            2,
            "",
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
            "a stock worker (no client id) is known by its pod IP: the busy one is kept, the idle victim fenced by its IP",
            fx().replicas(2)
                .backlog(0, 1)
                .pods([pod("php-busy").stock("10.1.0.1").busy().age(60), pod("php-idle").stock("10.1.0.2").age(7200)]),
            &[
                "annotate php-busy: cost=100",
                "annotate php-idle: cost=-1 mark=scale-in",
                "drain php-idle via 10.1.0.2 (scale-in)",
            ],
            &[],
            2,
            "echo: waiting for 1 worker(s) to be reported draining: php-idle",
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
            &["annotate other: cost=-1 mark=scale-in", "annotate php: cost=100", "drain other (scale-in)"],
            &[],
            2,
            "echo: waiting for 1 worker(s) to be reported draining: other",
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
            "paused: idle pods go first, every victim is drained first",
            fx().spec("paused: true").replicas(2).backlog(3, 1).pods([pod("a").busy().age(7200), pod("b")]),
            &[
                "annotate a: cost=-1 mark=scale-in",
                "annotate b: cost=-2 mark=scale-in",
                "drain b (scale-in)",
                "drain a (scale-in)",
            ],
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

/// While a scale-in waits for an idle victim to be reported draining, the pool looks again in 1 s.
#[test]
fn an_idle_victim_waits_with_a_short_requeue() {
    let fenced = fx().replicas(2).backlog(0, 1).pods([pod("old").busy().age(7200), pod("new").age(60)]).plan();
    assert_eq!(fenced.functions[0].target, 2);
    assert_eq!(fenced.requeue, Some(Duration::from_secs(1)));
    assert!(fenced.events.is_empty(), "no scale Event while the victim is being fenced");
}
