//! Tests of `decide`, `share_pool_cap` and `apportion`: table-driven cases and invariants.

use super::*;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn function(yaml: &str) -> FunctionSpec {
    serde_yaml::from_str(&format!("name: f\n{yaml}")).expect("function spec")
}

fn scaling(yaml: &str) -> ScalingSpec {
    serde_yaml::from_str(if yaml.is_empty() { "{}" } else { yaml }).expect("scaling spec")
}

fn stats(queued: u64, running: u64) -> FunctionStats {
    // Spread over the priorities to check that all of them count.
    FunctionStats { function: "f".into(), queued: [queued / 2, queued - queued / 2, 0], running, ..Default::default() }
}

fn history(recs: &[(u64, i32)], events: &[(u64, i32, i32)], idle_since: Option<u64>) -> ScaleHistory {
    ScaleHistory {
        recommendations: recs.iter().map(|&(t, r)| (secs(t), r)).collect(),
        events: events.iter().map(|&(t, from, to)| ScaleEvent { at: secs(t), from, to }).collect(),
        idle_since: idle_since.map(secs),
    }
}

/// Scale-down without the default 60s stabilization window.
const NO_STAB: &str = "scaleDown: {stabilizationWindow: 0s}";

struct Case {
    name: &'static str,
    function: &'static str,
    scaling: &'static str,
    /// `(queued, running)`; `None`: broker unavailable.
    stats: Option<(u64, u64)>,
    current: i32,
    history: ScaleHistory,
    now: u64,
    desired: i32,
    kind: ScaleKind,
    /// Must occur in the reason.
    reason: &'static str,
}

fn case(name: &'static str, function: &'static str, scaling: &'static str) -> Case {
    Case {
        name,
        function,
        scaling,
        stats: Some((0, 0)),
        current: 0,
        history: ScaleHistory::default(),
        now: 1000,
        desired: 0,
        kind: ScaleKind::Hold,
        reason: "",
    }
}

impl Case {
    fn stats(mut self, queued: u64, running: u64) -> Self {
        self.stats = Some((queued, running));
        self
    }
    fn broker_down(mut self) -> Self {
        self.stats = None;
        self
    }
    fn at(mut self, current: i32, now: u64, history: ScaleHistory) -> Self {
        (self.current, self.now, self.history) = (current, now, history);
        self
    }
    fn expect(mut self, desired: i32, kind: ScaleKind, reason: &'static str) -> Self {
        (self.desired, self.kind, self.reason) = (desired, kind, reason);
        self
    }
}

fn none() -> ScaleHistory {
    ScaleHistory::default()
}

#[test]
fn decisions() {
    use ScaleKind::*;
    let up_pods_2 = "scaleUp: {policies: [{type: Pods, value: 2, period: 1m}]}";
    let up_pct_50 = "scaleUp: {policies: [{type: Percent, value: 50, period: 1m}]}";
    let up_max = "scaleUp: {policies: [{type: Pods, value: 1, period: 1m}, {type: Percent, value: 100, period: 1m}]}";
    let up_min = "scaleUp: {selectPolicy: Min, policies: [{type: Pods, value: 1, period: 1m}, {type: Percent, value: 100, period: 1m}]}";
    let down_pods_3 = "scaleDown: {stabilizationWindow: 0s, policies: [{type: Pods, value: 3, period: 1m}]}";
    let cases = [
        // targetJobsPerWorker and the backlog.
        case("rounds up", "targetJobsPerWorker: 4\nmaxReplicas: 20", "").stats(9, 0).at(1, 1000, none()).expect(
            3,
            ScaleUp,
            "backlog 9 jobs (9 queued, 0 running) / 4 per worker → 3",
        ),
        case("exact multiple", "targetJobsPerWorker: 4\nmaxReplicas: 20", "").stats(8, 0).at(1, 1000, none()).expect(
            2,
            ScaleUp,
            "/ 4 per worker → 2",
        ),
        case("running counts", "", "").stats(3, 2).at(1, 1000, none()).expect(5, ScaleUp, "(3 queued, 2 running)"),
        // minReplicas / maxReplicas.
        case("capped by max", "maxReplicas: 10", "").stats(37, 0).at(2, 1000, none()).expect(
            10,
            ScaleUp,
            "backlog 37 jobs (37 queued, 0 running) / 1 per worker → 37, capped by maxReplicas 10",
        ),
        case("raised to min", "minReplicas: 3", "").stats(1, 0).at(3, 1000, none()).expect(
            3,
            Hold,
            "raised to minReplicas 3",
        ),
        case("min from zero", "minReplicas: 2", "").at(0, 1000, none()).expect(2, FromZero, "raised to minReplicas 2"),
        case("above max after spec change", "maxReplicas: 4", NO_STAB).stats(9, 0).at(6, 1000, none()).expect(
            4,
            ScaleDown,
            "capped by maxReplicas 4",
        ),
        // activationThreshold.
        case("at threshold stays at zero", "activationThreshold: 5", "").stats(5, 0).at(0, 1000, none()).expect(
            0,
            Hold,
            "backlog 5 jobs <= activationThreshold 5: staying at zero",
        ),
        case("above threshold", "activationThreshold: 5", "")
            .stats(6, 0)
            .at(0, 1000, none())
            .expect(6, FromZero, "→ 6"),
        case("threshold 0, one job", "", "").stats(1, 0).at(0, 1000, none()).expect(1, FromZero, "→ 1"),
        case("threshold ignored with pods", "activationThreshold: 5", "")
            .stats(3, 0)
            .at(1, 1000, none())
            .expect(3, ScaleUp, "→ 3"),
        // cooldown.
        case("before cooldown", "", NO_STAB).at(4, 130, history(&[], &[], Some(100))).expect(
            4,
            Hold,
            "queue empty for 30s, cooldown 1m: holding 4",
        ),
        case("after cooldown to zero", "", NO_STAB).at(4, 160, history(&[], &[], Some(100))).expect(
            0,
            ToZero,
            "queue empty for 1m (cooldown 1m) → minReplicas 0",
        ),
        case("after cooldown to min", "minReplicas: 1", NO_STAB).at(4, 200, history(&[], &[], Some(100))).expect(
            1,
            ScaleDown,
            "→ minReplicas 1",
        ),
        case("cooldown starts at first empty poll", "", NO_STAB).at(3, 5000, none()).expect(3, Hold, "empty for 0s"),
        case("running jobs are not empty", "", NO_STAB)
            .stats(0, 1)
            .at(3, 5000, history(&[], &[], Some(100)))
            .expect(1, ScaleDown, "→ 1"),
        case("cooldown 0s", "", "cooldown: 0s\nscaleDown: {stabilizationWindow: 0s}").at(3, 1000, none()).expect(
            0,
            ToZero,
            "cooldown 0s",
        ),
        case("custom cooldown", "", "cooldown: 5m\nscaleDown: {stabilizationWindow: 0s}")
            .at(3, 399, history(&[], &[], Some(100)))
            .expect(3, Hold, "cooldown 5m: holding 3"),
        // Broker unavailable.
        case("broker down holds", "", "").broker_down().at(7, 1000, history(&[], &[], Some(0))).expect(
            7,
            Hold,
            "broker unavailable: holding 7 replicas",
        ),
        case("broker down at zero", "", "").broker_down().at(0, 1000, none()).expect(0, Hold, "broker unavailable"),
        case("broker down respects max", "maxReplicas: 10", "").broker_down().at(12, 1000, none()).expect(
            10,
            ScaleDown,
            "broker unavailable: holding 12 replicas, capped by maxReplicas 10",
        ),
        // Stabilization windows.
        case("default 60s down window", "", "").stats(2, 0).at(6, 130, history(&[(100, 6)], &[], None)).expect(
            6,
            Hold,
            "scale-down stabilization window 1m → 6",
        ),
        case("down window expired", "", "").stats(2, 0).at(6, 170, history(&[(100, 6), (150, 4)], &[], None)).expect(
            4,
            ScaleDown,
            "scale-down stabilization window 1m → 4",
        ),
        case("up window takes lowest", "", "scaleUp: {stabilizationWindow: 30s}")
            .stats(10, 0)
            .at(2, 120, history(&[(100, 3), (110, 8)], &[], None))
            .expect(3, ScaleUp, "scale-up stabilization window 30s → 3"),
        case("up window expired", "", "scaleUp: {stabilizationWindow: 30s}")
            .stats(10, 0)
            .at(2, 120, history(&[(80, 3)], &[], None))
            .expect(10, ScaleUp, "→ 10"),
        case("no up window by default", "", "")
            .stats(10, 0)
            .at(2, 120, history(&[(119, 3)], &[], None))
            .expect(10, ScaleUp, "→ 10"),
        // Policies and periods.
        case("Pods policy", "", up_pods_2).stats(10, 0).at(2, 1000, none()).expect(
            4,
            ScaleUp,
            "scaleUp policies allow +2 → 4",
        ),
        case("Pods budget used in period", "", up_pods_2)
            .stats(10, 0)
            .at(3, 130, history(&[], &[(100, 2, 3)], None))
            .expect(4, ScaleUp, "allow +1 → 4"),
        case("Pods budget exhausted", "", up_pods_2)
            .stats(10, 0)
            .at(4, 130, history(&[], &[(100, 2, 4)], None))
            .expect(4, Hold, "allow +0 → 4"),
        case("events before period", "", up_pods_2).stats(10, 0).at(3, 130, history(&[], &[(70, 2, 3)], None)).expect(
            5,
            ScaleUp,
            "allow +2 → 5",
        ),
        case("Percent policy", "maxReplicas: 20", up_pct_50).stats(20, 0).at(4, 1000, none()).expect(
            6,
            ScaleUp,
            "allow +2 → 6",
        ),
        case("Percent rounds up", "maxReplicas: 20", up_pct_50).stats(20, 0).at(3, 1000, none()).expect(
            5,
            ScaleUp,
            "allow +2 → 5",
        ),
        case("Percent from zero", "maxReplicas: 20", up_pct_50).stats(20, 0).at(0, 1000, none()).expect(
            1,
            FromZero,
            "allow +1 → 1",
        ),
        case("selectPolicy Max", "maxReplicas: 20", up_max).stats(20, 0).at(4, 1000, none()).expect(
            8,
            ScaleUp,
            "allow +4 → 8",
        ),
        case("selectPolicy Min", "maxReplicas: 20", up_min).stats(20, 0).at(4, 1000, none()).expect(
            5,
            ScaleUp,
            "allow +1 → 5",
        ),
        case("scale-up Disabled", "", "scaleUp: {selectPolicy: Disabled}").stats(20, 0).at(3, 1000, none()).expect(
            3,
            Hold,
            "scaleUp disabled → 3",
        ),
        case("min wins over Disabled", "minReplicas: 2", "scaleUp: {selectPolicy: Disabled}")
            .at(0, 1000, none())
            .expect(2, FromZero, "raised to minReplicas 2"),
        case("scale-down Disabled", "", "scaleDown: {selectPolicy: Disabled, stabilizationWindow: 0s}")
            .stats(2, 0)
            .at(8, 1000, none())
            .expect(8, Hold, "scaleDown disabled → 8"),
        case("scale-down Pods policy", "", down_pods_3).stats(2, 0).at(10, 1000, none()).expect(
            7,
            ScaleDown,
            "scaleDown policies allow -3 → 7",
        ),
        case("scale-down budget used", "", down_pods_3)
            .stats(1, 0)
            .at(8, 120, history(&[], &[(100, 10, 8)], None))
            .expect(7, ScaleDown, "allow -1 → 7"),
        case("scale-up events do not use the down budget", "", down_pods_3)
            .stats(1, 0)
            .at(8, 120, history(&[], &[(100, 5, 8)], None))
            .expect(5, ScaleDown, "allow -3 → 5"),
    ];
    for c in cases {
        let (d, _) = decide(
            &function(c.function),
            &scaling(c.scaling),
            c.stats.map(|(q, r)| stats(q, r)).as_ref(),
            c.current,
            &c.history,
            secs(c.now),
        );
        assert_eq!((d.desired, d.kind()), (c.desired, c.kind), "{}: {}", c.name, d.reason);
        assert!(d.reason.contains(c.reason), "{}: reason {:?} lacks {:?}", c.name, d.reason, c.reason);
        assert_eq!((d.function.as_str(), d.current), ("f", c.current), "{}", c.name);
    }
}

#[test]
fn history_is_returned_not_mutated() {
    let f = function("maxReplicas: 20");
    let s = scaling("scaleUp: {stabilizationWindow: 30s, policies: [{type: Pods, value: 1, period: 15s}]}");
    let old = history(&[(0, 9), (100, 8)], &[(0, 1, 2), (95, 4, 5)], Some(50));
    let before = old.clone();
    let (d, next) = decide(&f, &s, Some(&stats(7, 0)), 5, &old, secs(120));
    assert_eq!(old, before);
    // Entries older than the 60s down window / 15s period are gone, the new recommendation is recorded.
    assert_eq!(next.recommendations, [(secs(100), 8), (secs(120), 7)]);
    assert!(next.events.is_empty(), "{:?}", next.events);
    assert_eq!(next.idle_since, None);
    assert_eq!(d.desired, 6);
    let next = next.record_scale(secs(120), 5, 6).record_scale(secs(121), 6, 6);
    assert_eq!(next.events, [ScaleEvent { at: secs(120), from: 5, to: 6 }]);
    // The event uses up the Pods budget for the next 15s.
    let (d, next) = decide(&f, &s, Some(&stats(7, 0)), 6, &next, secs(125));
    assert_eq!((d.desired, d.kind()), (6, ScaleKind::Hold), "{}", d.reason);
    let (d, _) = decide(&f, &s, Some(&stats(7, 0)), 6, &next, secs(135));
    assert_eq!(d.desired, 7, "{}", d.reason);
}

#[test]
fn idle_clock() {
    let f = function("");
    let s = scaling(NO_STAB);
    let (_, h) = decide(&f, &s, Some(&stats(0, 0)), 2, &none(), secs(10));
    assert_eq!(h.idle_since, Some(secs(10)));
    let (_, h) = decide(&f, &s, Some(&stats(0, 0)), 2, &h, secs(40));
    assert_eq!(h.idle_since, Some(secs(10)));
    let (d, h2) = decide(&f, &s, Some(&stats(0, 0)), 2, &h, secs(70));
    assert_eq!(d.kind(), ScaleKind::ToZero);
    assert_eq!(h2.idle_since, Some(secs(10)));
    // Work, or missing broker data, restarts the clock.
    let (_, busy) = decide(&f, &s, Some(&stats(1, 0)), 2, &h, secs(50));
    assert_eq!(busy.idle_since, None);
    let (d, down) = decide(&f, &s, None, 2, &h, secs(70));
    assert_eq!((d.desired, down.idle_since), (2, None));
    let (d, _) = decide(&f, &s, Some(&stats(0, 0)), 2, &down, secs(80));
    assert_eq!(d.desired, 2, "{}", d.reason);
}

fn dec(name: &str, current: i32, desired: i32, backlog: Option<u64>, min: i32) -> ScalingDecision {
    ScalingDecision { function: name.into(), current, desired, reason: "r".into(), backlog, min_replicas: min }
}

fn desired(ds: &[ScalingDecision]) -> Vec<i32> {
    ds.iter().map(|d| d.desired).collect()
}

#[test]
fn pool_cap_sharing() {
    let three = |backlogs: [u64; 3], mins: [i32; 3], want: [i32; 3]| {
        (0..3).map(|i| dec(&format!("f{i}"), 1, want[i], Some(backlogs[i]), mins[i])).collect::<Vec<_>>()
    };
    // (name, decisions, pool maxReplicas, expected desired replicas)
    let cases = [
        ("no cap", three([60, 30, 10], [0; 3], [10; 3]), None::<i32>, vec![10, 10, 10]),
        ("under cap", three([60, 30, 10], [0; 3], [10; 3]), Some(30), vec![10, 10, 10]),
        ("by backlog", three([60, 30, 10], [0; 3], [10; 3]), Some(10), vec![6, 3, 1]),
        // floors 2,2,0; 6 more by backlog 0:90:10 = 0, 5.4, 0.6 → 0, 5, 1.
        ("mins kept", three([0, 90, 10], [2, 2, 0], [10; 3]), Some(10), vec![2, 7, 1]),
        ("never more than wanted", three([100, 100, 0], [0; 3], [2, 20, 0]), Some(10), vec![2, 8, 0]),
        ("ties to the first", three([10, 10, 10], [0; 3], [5; 3]), Some(4), vec![2, 1, 1]),
        ("mins over cap", three([5, 5, 5], [3, 3, 0], [3, 3, 4]), Some(4), vec![2, 2, 0]),
        ("zero cap", three([5, 5, 5], [0; 3], [3; 3]), Some(0), vec![0, 0, 0]),
    ];
    for (name, ds, cap, want) in cases {
        let again = share_pool_cap(ds.clone(), cap);
        let got = share_pool_cap(ds, cap);
        assert_eq!(desired(&got), want, "{name}");
        assert_eq!(got, again, "{name}: deterministic");
    }
}

#[test]
fn pool_cap_without_backlog_splits_by_demand() {
    let ds = vec![dec("a", 6, 6, None, 0), dec("b", 2, 2, None, 0)];
    let got = share_pool_cap(ds, Some(4));
    assert_eq!(desired(&got), [3, 1]);
    assert_eq!(got[0].kind(), ScaleKind::ScaleDown);
    assert_eq!(got[0].reason, "r; pool maxReplicas 4 < 8 wanted, shared by backlog: 6 → 3");
}

#[test]
fn pool_cap_amends_reason_and_kind() {
    let ds = vec![dec("a", 0, 5, Some(50), 0), dec("b", 2, 5, Some(0), 0)];
    let got = share_pool_cap(ds, Some(5));
    assert_eq!(desired(&got), [5, 0]);
    assert_eq!((got[0].kind(), got[0].reason.as_str()), (ScaleKind::FromZero, "r"));
    assert_eq!(got[1].kind(), ScaleKind::ToZero);
    assert!(got[1].reason.ends_with("shared by backlog: 5 → 0"), "{}", got[1].reason);
}

#[test]
fn pool_cap_invariants() {
    // A small deterministic generator instead of a property-testing dependency.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for _ in 0..2000 {
        let n = 1 + next(6) as usize;
        let ds: Vec<ScalingDecision> = (0..n)
            .map(|i| {
                let want = next(30) as i32;
                let backlog = (next(4) > 0).then(|| next(500));
                dec(&format!("f{i}"), 1, want, backlog, next(4) as i32)
            })
            .collect();
        let mins: i32 = ds.iter().map(|d| d.min_replicas.min(d.desired)).sum();
        let cap = next(60) as i32;
        let total: i32 = ds.iter().map(|d| d.desired).sum();
        let got = share_pool_cap(ds.clone(), Some(cap));
        let sum: i32 = got.iter().map(|d| d.desired).sum();
        assert_eq!(sum, total.min(cap), "{ds:?} cap {cap}");
        for (g, d) in got.iter().zip(&ds) {
            assert!(g.desired <= d.desired);
            if mins <= cap {
                assert!(g.desired >= d.min_replicas.min(d.desired), "{ds:?} cap {cap} → {got:?}");
            }
        }
    }
}

#[test]
fn apportion_largest_remainder() {
    assert_eq!(apportion(10, &[1, 1, 1], &[10, 10, 10]), [4, 3, 3]);
    assert_eq!(apportion(7, &[5, 3, 2], &[10, 10, 10]), [4, 2, 1]);
    assert_eq!(apportion(10, &[1, 0, 0], &[3, 10, 10]), [3, 4, 3]);
    assert_eq!(apportion(100, &[1, 1], &[3, 4]), [3, 4]);
    assert_eq!(apportion(5, &[], &[]), Vec::<u64>::new());
}
