//! The pool-wide `spec.maxReplicas` at every instant (pure).
//!
//! [`share_pool_cap`](super::scaling::share_pool_cap) makes the functions' desired replicas add up
//! to at most the cap, but replicas moving from one function to another would still overshoot
//! for a while: the raised function's new pods start while the lowered function's pods are still
//! there (running, or terminating through their grace period). So a function is raised only as
//! far as the cap leaves room for, counting for every other function the larger of its replicas
//! and its pods that are not terminating, plus its terminating ones, and for the function itself
//! its terminating pods (a ReplicaSet's new pods do not wait for them). Lowerings are applied before raises ([`apply`](super::apply)), and a raise held here is
//! planned again when the pods are gone.

/// One function, for [`hold_pool_cap`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FunctionPods {
    /// Replicas of its Deployment now.
    pub current: i32,
    /// Replicas planned for it (before the cap is held).
    pub target: i32,
    /// Its pods that exist (not failed or succeeded), terminating ones included.
    pub pods: i32,
    /// Those of them that are terminating.
    pub terminating: i32,
}

/// A raise the cap holds back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    /// The replicas the function was to get.
    pub wanted: i32,
    /// The replicas it gets now.
    pub allowed: i32,
    /// Pods the other functions hold (and its own terminating ones).
    pub occupied: i32,
}

/// The targets of `functions` (in spec order) with every raise limited so that the pool never runs
/// more than `cap` pods at once; for each, the raise held back, if any. Lowerings and holds are
/// left alone, and a function is never planned below its current replicas by this.
pub fn hold_pool_cap(cap: Option<i32>, functions: &[FunctionPods]) -> Vec<(i32, Option<Held>)> {
    let Some(cap) = cap else { return functions.iter().map(|f| (f.target, None)).collect() };
    // The most pods each function may have at once: the ReplicaSet keeps `current` pods that are
    // not terminating (it is lowered after this reconcile at the earliest, and its pods then
    // terminate through their grace period), and the terminating ones are still there.
    let live = |f: &FunctionPods| f.pods.saturating_sub(f.terminating);
    let mut occupied: Vec<i64> =
        functions.iter().map(|f| i64::from(f.current.max(live(f))) + i64::from(f.terminating.max(0))).collect();
    let mut out = Vec::with_capacity(functions.len());
    for (i, f) in functions.iter().enumerate() {
        if f.target <= f.current {
            out.push((f.target, None));
            continue;
        }
        let others: i64 = occupied.iter().enumerate().filter(|&(j, _)| j != i).map(|(_, o)| o).sum();
        let taken = others + i64::from(f.terminating.max(0));
        let room = i64::from(cap) - taken;
        let allowed = i64::from(f.target).min(room).max(i64::from(f.current));
        let allowed = i32::try_from(allowed).unwrap_or(f.current);
        occupied[i] = i64::from(allowed.max(live(f))) + i64::from(f.terminating.max(0));
        let held = (allowed < f.target).then(|| Held {
            wanted: f.target,
            allowed,
            occupied: i32::try_from(taken).unwrap_or(i32::MAX),
        });
        out.push((allowed, held));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(current: i32, target: i32, pods: i32, terminating: i32) -> FunctionPods {
        FunctionPods { current, target, pods, terminating }
    }

    #[test]
    fn no_cap_no_hold() {
        assert_eq!(hold_pool_cap(None, &[f(3, 1, 3, 0), f(1, 3, 1, 0)]), [(1, None), (3, None)]);
    }

    #[test]
    fn a_raise_waits_until_the_lowered_pods_are_gone() {
        // Step 1: a is lowered 3 -> 1 now; its three pods still run, so b stays at 1.
        let step = hold_pool_cap(Some(4), &[f(3, 1, 3, 0), f(1, 3, 1, 0)]);
        assert_eq!(step[0], (1, None));
        assert_eq!(step[1], (1, Some(Held { wanted: 3, allowed: 1, occupied: 3 })));
        // Step 2: two of a's pods terminating.
        let step = hold_pool_cap(Some(4), &[f(1, 1, 3, 2), f(1, 3, 1, 0)]);
        assert_eq!(step[1].0, 1);
        // Step 3: one left terminating: b may grow by one.
        let step = hold_pool_cap(Some(4), &[f(1, 1, 2, 1), f(1, 3, 1, 0)]);
        assert_eq!(step[1], (2, Some(Held { wanted: 3, allowed: 2, occupied: 2 })));
        // Step 4: gone.
        assert_eq!(hold_pool_cap(Some(4), &[f(1, 1, 1, 0), f(2, 3, 2, 0)])[1], (3, None));
    }

    #[test]
    fn own_terminating_pods_count_and_holds_never_lower() {
        // b has two pods terminating (a recycle) while it grows: they still hold their place.
        assert_eq!(hold_pool_cap(Some(4), &[f(1, 1, 1, 0), f(1, 3, 3, 2)])[1].0, 1);
        // Over the cap already (the cap was lowered): nothing is taken away here.
        assert_eq!(hold_pool_cap(Some(2), &[f(3, 3, 3, 0), f(2, 4, 2, 0)])[1].0, 2);
    }

    #[test]
    fn two_raises_share_the_room_in_spec_order() {
        let step = hold_pool_cap(Some(6), &[f(1, 3, 1, 0), f(1, 3, 1, 0), f(3, 0, 3, 0)]);
        let targets: Vec<i32> = step.iter().map(|(t, _)| *t).collect();
        assert_eq!(targets, [2, 1, 0], "c's three pods still run: room for one more");
        let total: i32 = targets.iter().sum::<i32>() + 3;
        assert!(total <= 6);
    }
}
