//! How many worker pods each function should run: pure functions, no I/O and
//! no clock reads. Time is a [`Duration`] since an arbitrary (monotonic) epoch
//! chosen by the caller and passed in as `now`.
//!
//! One evaluation of a function ([`decide`]) goes through these steps:
//!
//! 1. **Broker data missing**: hold the current replicas (only clamped into
//!    `[minReplicas, maxReplicas]`, which never reaches zero). Nothing else
//!    runs, and the cooldown clock restarts once data is back.
//! 2. **Recommendation** from the backlog `queued (all priorities) + running`:
//!    * at zero replicas, stay at zero while `backlog <= activationThreshold`;
//!    * with an empty backlog, hold the current replicas until the backlog has
//!      been empty for `scaling.cooldown`, then go to `minReplicas`;
//!    * otherwise `ceil(backlog / targetJobsPerWorker)`;
//!
//!    clamped into `[minReplicas, maxReplicas]` and recorded in the history.
//! 3. **Stabilization** as in the HorizontalPodAutoscaler: never scale up past
//!    the lowest recommendation within the scale-up window, never scale down
//!    past the highest recommendation within the scale-down window.
//! 4. **Rate limits**: the `policies` of the direction's rules, combined by
//!    `selectPolicy`, bound the change against the scale events already made
//!    within each policy's period (see [`ScalingRules::allowed_change`]).
//! 5. **Hard bounds**: the result is clamped into `[minReplicas, maxReplicas]`
//!    again; those bounds win over rate limits.
//!
//! The defaults of absent `scaleUp`/`scaleDown` rules are the API's
//! ([`ScalingSpec::scale_up_rules`], [`ScalingSpec::scale_down_rules`]).
//!
//! Afterwards [`share_pool_cap`] fits all functions of a pool under the
//! pool-wide `maxReplicas`. Once the operator has applied a new replica count,
//! it records that with [`ScaleHistory::record_scale`] so that later rate
//! limits see it.

use std::cmp::Reverse;
use std::fmt;
use std::time::Duration;

use gearfleet_crd::{FunctionSpec, ScalingRules, ScalingSpec, format_duration};
use gearfleet_proto::admin::FunctionStats;

/// The direction of a [`ScalingDecision`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleKind {
    /// More pods, starting from at least one.
    ScaleUp,
    /// Fewer pods, keeping at least one.
    ScaleDown,
    /// No change.
    Hold,
    /// From zero pods to some.
    FromZero,
    /// From some pods to zero.
    ToZero,
}

impl ScaleKind {
    /// The kind of a change from `current` to `desired` replicas.
    pub fn between(current: i32, desired: i32) -> Self {
        if desired == current {
            ScaleKind::Hold
        } else if current == 0 {
            ScaleKind::FromZero
        } else if desired == 0 {
            ScaleKind::ToZero
        } else if desired > current {
            ScaleKind::ScaleUp
        } else {
            ScaleKind::ScaleDown
        }
    }
}

impl fmt::Display for ScaleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ScaleKind::ScaleUp => "ScaleUp",
            ScaleKind::ScaleDown => "ScaleDown",
            ScaleKind::Hold => "Hold",
            ScaleKind::FromZero => "ScaleFromZero",
            ScaleKind::ToZero => "ScaleToZero",
        })
    }
}

/// What one function should be scaled to, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScalingDecision {
    /// Function name.
    pub function: String,
    /// Replicas when the decision was made.
    pub current: i32,
    /// Replicas the function should have.
    pub desired: i32,
    /// Human-readable explanation, suitable for a Kubernetes Event message.
    pub reason: String,
    /// Queued plus running jobs; `None` when the broker was unavailable.
    pub backlog: Option<u64>,
    /// The function's `minReplicas`, which [`share_pool_cap`] respects.
    pub min_replicas: i32,
}

impl ScalingDecision {
    /// Direction of the change, from `current` to `desired`.
    pub fn kind(&self) -> ScaleKind {
        ScaleKind::between(self.current, self.desired)
    }
}

/// A replica change the operator applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScaleEvent {
    /// When it was applied.
    pub at: Duration,
    /// Replicas before.
    pub from: i32,
    /// Replicas after.
    pub to: i32,
}

/// Per-function memory between evaluations. Only entries that can still
/// matter are kept (bounded by the longest window and policy period).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScaleHistory {
    /// Recommendations as `(time, replicas)`, oldest first.
    pub recommendations: Vec<(Duration, i32)>,
    /// Applied replica changes, oldest first.
    pub events: Vec<ScaleEvent>,
    /// Since when the backlog has been empty; `None` while there is work or
    /// the state is unknown.
    pub idle_since: Option<Duration>,
}

impl ScaleHistory {
    /// The history with an applied change from `from` to `to` replicas at
    /// `now` added. Call this after the Deployment was actually scaled (with
    /// the final count, after [`share_pool_cap`]).
    #[must_use]
    pub fn record_scale(mut self, now: Duration, from: i32, to: i32) -> Self {
        if from != to {
            self.events.push(ScaleEvent { at: now, from, to });
        }
        self
    }

    /// Pods added (`up`) or removed (`!up`) by events less than `period` ago.
    fn changed_within(&self, now: Duration, period: Duration, up: bool) -> i32 {
        self.events
            .iter()
            .filter(|e| within(now, e.at, period))
            .map(|e| if up { (e.to - e.from).max(0) } else { (e.from - e.to).max(0) })
            .fold(0, i32::saturating_add)
    }

    /// Drops entries older than anything `up`/`down` can look at.
    fn prune(&mut self, now: Duration, up: &ScalingRules, down: &ScalingRules) {
        let window = up.stabilization_window().max(down.stabilization_window());
        self.recommendations.retain(|&(at, _)| within(now, at, window));
        let period = [up, down]
            .iter()
            .flat_map(|r| &r.policies)
            .filter_map(|p| p.period.to_duration().ok())
            .max()
            .unwrap_or_default();
        self.events.retain(|e| within(now, e.at, period));
    }
}

/// Whether `at` lies less than `span` before `now` (never true for a zero span).
fn within(now: Duration, at: Duration, span: Duration) -> bool {
    now.saturating_sub(at) < span
}

fn to_i32(v: u64) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// Decides the replicas of one function. `stats` is what the broker reported
/// for it (`None` when the broker is unreachable), `current` the function's
/// current replicas. Returns the decision and the updated history; neither
/// input is modified.
pub fn decide(
    function: &FunctionSpec,
    scaling: &ScalingSpec,
    stats: Option<&FunctionStats>,
    current: i32,
    history: &ScaleHistory,
    now: Duration,
) -> (ScalingDecision, ScaleHistory) {
    let min = function.min_replicas.max(0);
    let max = function.max_replicas.max(min);
    let current = current.max(0);
    let up = scaling.scale_up_rules();
    let down = scaling.scale_down_rules();
    let mut next = history.clone();
    next.prune(now, &up, &down);
    let decision = |desired: i32, reason: String, backlog: Option<u64>| ScalingDecision {
        function: function.name.clone(),
        current,
        desired,
        reason,
        backlog,
        min_replicas: min,
    };

    let Some(stats) = stats else {
        next.idle_since = None;
        let mut reason = format!("broker unavailable: holding {current} replicas");
        let desired = clamp(current, min, max, &mut reason);
        return (decision(desired, reason, None), next);
    };

    // 1. Recommendation.
    let queued = stats.queued_total();
    let backlog = queued.saturating_add(stats.running);
    if backlog > 0 {
        next.idle_since = None;
    } else if next.idle_since.is_none() {
        next.idle_since = Some(now);
    }
    let threshold = u64::try_from(function.activation_threshold).unwrap_or(0);
    let (raw, mut reason) = if current == 0 && backlog <= threshold {
        (0, format!("backlog {backlog} jobs <= activationThreshold {threshold}: staying at zero"))
    } else if backlog == 0 {
        let idle_for = now.saturating_sub(next.idle_since.unwrap_or(now));
        let cooldown = scaling.cooldown();
        if idle_for >= cooldown {
            let why = format!("queue empty for {} (cooldown {})", format_duration(idle_for), format_duration(cooldown));
            (min, format!("{why} → minReplicas {min}"))
        } else {
            let why = format!("queue empty for {}, cooldown {}", format_duration(idle_for), format_duration(cooldown));
            (current, format!("{why}: holding {current}"))
        }
    } else {
        let target = u64::try_from(function.target_jobs_per_worker).unwrap_or(1).max(1);
        let raw = to_i32(backlog.div_ceil(target));
        (
            raw,
            format!(
                "backlog {backlog} jobs ({queued} queued, {} running) / {target} per worker → {raw}",
                stats.running
            ),
        )
    };
    let recommendation = clamp(raw, min, max, &mut reason);
    next.recommendations.push((now, recommendation));

    // 2. Stabilization: the lowest recommendation in the scale-up window caps
    // scaling up, the highest in the scale-down window floors scaling down.
    let in_window = |w: Duration| next.recommendations.iter().filter(move |(at, _)| at == &now || within(now, *at, w));
    let up_window = up.stabilization_window();
    let down_window = down.stabilization_window();
    let up_rec = in_window(up_window).map(|r| r.1).min().unwrap_or(recommendation);
    let down_rec = in_window(down_window).map(|r| r.1).max().unwrap_or(recommendation);
    let stabilized = current.max(up_rec).min(down_rec);
    if stabilized != recommendation {
        let (dir, window) = if recommendation > current { ("up", up_window) } else { ("down", down_window) };
        reason.push_str(&format!(", scale-{dir} stabilization window {} → {stabilized}", format_duration(window)));
    }

    // 3. Rate limits.
    let mut desired = stabilized;
    if stabilized != current {
        let (rules, dir, sign) = if stabilized > current { (&up, "Up", "+") } else { (&down, "Down", "-") };
        // A percentage of zero pods would never allow leaving zero: count at least one.
        let base = if stabilized > current { current.max(1) } else { current };
        let allowed = rules.allowed_change(base, |p| next.changed_within(now, p, stabilized > current));
        if let Some(allowed) = allowed.filter(|&a| a < (stabilized - current).abs()) {
            desired = if stabilized > current { current + allowed } else { current - allowed };
            if rules.select_policy == gearfleet_crd::SelectPolicy::Disabled {
                reason.push_str(&format!(", scale{dir} disabled → {desired}"));
            } else {
                reason.push_str(&format!(", scale{dir} policies allow {sign}{allowed} → {desired}"));
            }
        }
    }

    // 4. Hard bounds win over rate limits.
    let desired = clamp(desired, min, max, &mut reason);
    (decision(desired, reason, Some(backlog)), next)
}

/// Clamps `n` into `[min, max]` and explains it in `reason`.
fn clamp(n: i32, min: i32, max: i32, reason: &mut String) -> i32 {
    if n > max {
        reason.push_str(&format!(", capped by maxReplicas {max}"));
        max
    } else if n < min {
        reason.push_str(&format!(", raised to minReplicas {min}"));
        min
    } else {
        n
    }
}

/// Fits the decisions of one pool under the pool-wide `maxReplicas`
/// (`pool_max`; `None` means no cap). When the desired replicas add up to more
/// than the cap, every function first keeps its `minReplicas` (or less, if it
/// wants less), and the rest of the cap is split in proportion to the
/// functions' backlogs, never giving a function more than it wants, with
/// largest-remainder rounding (ties go to the function listed first). If no
/// function that could use more has a backlog (e.g. the broker is
/// unavailable), the rest is split in proportion to what each still wants. If
/// even the minimums do not fit (a spec the API rejects), the cap is split in
/// proportion to them. The result always sums to at most the cap, and the
/// reasons of changed decisions say so.
pub fn share_pool_cap(decisions: Vec<ScalingDecision>, pool_max: Option<i32>) -> Vec<ScalingDecision> {
    let Some(cap) = pool_max else { return decisions };
    let cap = u64::try_from(cap).unwrap_or(0);
    let wanted: Vec<u64> = decisions.iter().map(|d| u64::try_from(d.desired).unwrap_or(0)).collect();
    let total: u64 = wanted.iter().sum();
    if total <= cap {
        return decisions;
    }
    let floors: Vec<u64> =
        decisions.iter().zip(&wanted).map(|(d, &w)| u64::try_from(d.min_replicas).unwrap_or(0).min(w)).collect();
    let floor_sum: u64 = floors.iter().sum();
    let shares = if floor_sum >= cap {
        apportion(cap, &floors, &floors)
    } else {
        let room: Vec<u64> = wanted.iter().zip(&floors).map(|(w, f)| w - f).collect();
        let backlogs: Vec<u64> = decisions.iter().map(|d| d.backlog.unwrap_or(0)).collect();
        let extra = apportion(cap - floor_sum, &backlogs, &room);
        floors.iter().zip(extra).map(|(f, e)| f + e).collect()
    };
    decisions
        .into_iter()
        .zip(shares)
        .map(|(mut d, share)| {
            let share = to_i32(share);
            if share != d.desired {
                d.reason.push_str(&format!(
                    "; pool maxReplicas {cap} < {total} wanted, shared by backlog: {} → {share}",
                    d.desired
                ));
                d.desired = share;
            }
            d
        })
        .collect()
}

/// Splits `total` units (at most the sum of `caps`) among the items in
/// proportion to `weights`, giving item `i` at most `caps[i]`. Items whose
/// share would exceed their cap get the cap and the rest is split again among
/// the others; then everyone gets the integer part of their share and the
/// leftover units go to the largest remainders, ties to the lower index. When
/// every item with room has weight zero, the room is the weight.
fn apportion(total: u64, weights: &[u64], caps: &[u64]) -> Vec<u64> {
    let mut alloc = vec![0u64; weights.len()];
    let mut open: Vec<usize> = (0..weights.len()).filter(|&i| caps[i] > 0).collect();
    let mut left = u128::from(total.min(caps.iter().sum()));
    while left > 0 && !open.is_empty() {
        let mut w: Vec<u128> = open.iter().map(|&i| u128::from(weights[i])).collect();
        if w.iter().all(|&x| x == 0) {
            w = open.iter().map(|&i| u128::from(caps[i])).collect();
        }
        let sum_w: u128 = w.iter().sum();
        let full: Vec<usize> = open
            .iter()
            .zip(&w)
            .filter(|&(&i, &wk)| left * wk >= u128::from(caps[i]) * sum_w)
            .map(|(&i, _)| i)
            .collect();
        if !full.is_empty() {
            for &i in &full {
                alloc[i] = caps[i];
                left -= u128::from(caps[i]);
            }
            open.retain(|i| !full.contains(i));
            continue;
        }
        // No share reaches its cap: integer parts first, then the leftover
        // units (fewer than the items) to the largest remainders.
        let mut remainders = Vec::with_capacity(open.len());
        let mut given = 0;
        for (k, &i) in open.iter().enumerate() {
            let quota = left * w[k];
            alloc[i] = u64::try_from(quota / sum_w).unwrap_or(u64::MAX);
            given += quota / sum_w;
            remainders.push((Reverse(quota % sum_w), i));
        }
        remainders.sort_unstable();
        for &(_, i) in remainders.iter().take(usize::try_from(left - given).unwrap_or(usize::MAX)) {
            alloc[i] += 1;
        }
        break;
    }
    alloc
}

#[cfg(test)]
mod tests;
