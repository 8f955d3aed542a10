//! Which pods of a function to replace now, as a pure function of the pods, their workers' state,
//! the pool's `recycle` spec and the time.
//!
//! A pod is due when it is older than `maxAge`, when its worker has done `maxJobs` jobs, or when it
//! was created before a requested restart (the `gearfleet.dev/restart-requested-at` annotation on
//! the WorkerPool, like `kubectl rollout restart`). Replacements are staggered: at most
//! `maxUnavailable` pods of the function are out of service at once — pods not ready, terminating,
//! or drained for replacement all count — so the next victim waits until the previous one's
//! replacement is Ready. Idle pods go first; a busy pod is first drained (the broker stops giving it
//! jobs) and evicted once its job is done, or when `drainTimeout` has passed (its SDK then finishes
//! the job in hand within the pod's termination grace period).

use std::time::Duration;

/// What the planner knows about one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecyclePod {
    /// Pod name (the worker's client id).
    pub name: String,
    /// Time since the pod was created.
    pub age: Duration,
    /// Seconds since the Unix epoch at creation (to compare with a restart request).
    pub created_unix: i64,
    /// Ready condition true.
    pub ready: bool,
    /// Has a deletion timestamp.
    pub terminating: bool,
    /// Its worker holds a job.
    pub busy: bool,
    /// Jobs its worker has done (from the broker).
    pub jobs_done: u64,
    /// When the operator drained it for replacement, if it did (time since).
    pub drained_for: Option<Duration>,
}

/// Why a pod is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RecycleReason {
    /// A restart was requested after the pod was created.
    Restart,
    /// Older than maxAge.
    MaxAge,
    /// Its worker did maxJobs jobs.
    MaxJobs,
}

impl RecycleReason {
    /// For events and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RecycleReason::Restart => "restart requested",
            RecycleReason::MaxAge => "maxAge reached",
            RecycleReason::MaxJobs => "maxJobs reached",
        }
    }
}

/// The recycle policy of a pool, resolved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecyclePolicy {
    /// `recycle.maxAge`.
    pub max_age: Option<Duration>,
    /// `recycle.maxJobs`.
    pub max_jobs: Option<u64>,
    /// Pods created before this (Unix seconds) are replaced (restart request).
    pub restart_before_unix: Option<i64>,
    /// `recycle.maxUnavailable` (at least 1).
    pub max_unavailable: usize,
    /// `scaling.drainTimeout`: a drained busy pod is evicted anyway after this.
    pub drain_timeout: Duration,
}

/// One step of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecycleAction {
    /// Tell the broker to stop giving the pod jobs; evict it once idle.
    Drain {
        /// The pod.
        pod: String,
        /// Why.
        reason: RecycleReason,
    },
    /// Evict the pod (through the Eviction API); its ReplicaSet starts a replacement.
    Evict {
        /// The pod.
        pod: String,
        /// Why.
        reason: RecycleReason,
    },
}

/// Why `pod` is due for replacement, if it is.
pub fn due(pod: &RecyclePod, policy: &RecyclePolicy) -> Option<RecycleReason> {
    if policy.restart_before_unix.is_some_and(|t| pod.created_unix < t) {
        return Some(RecycleReason::Restart);
    }
    if policy.max_age.is_some_and(|max| pod.age >= max) {
        return Some(RecycleReason::MaxAge);
    }
    if policy.max_jobs.is_some_and(|max| max > 0 && pod.jobs_done >= max) {
        return Some(RecycleReason::MaxJobs);
    }
    None
}

/// The pods to drain or evict now.
pub fn recycle_plan(pods: &[RecyclePod], policy: &RecyclePolicy) -> Vec<RecycleAction> {
    let mut plan = Vec::new();
    // Pods already out of service use the budget first.
    let mut unavailable = pods.iter().filter(|p| p.terminating || !p.ready || p.drained_for.is_some()).count();

    // Drained pods are evicted once idle (or after drainTimeout); they are already counted.
    for p in pods.iter().filter(|p| !p.terminating) {
        if let Some(drained) = p.drained_for
            && (!p.busy || drained >= policy.drain_timeout)
        {
            let reason = due(p, policy).unwrap_or(RecycleReason::Restart);
            plan.push(RecycleAction::Evict { pod: p.name.clone(), reason });
        }
    }

    // New victims: ready, in service and due; idle before busy, then by reason, then oldest first.
    let mut candidates: Vec<(&RecyclePod, RecycleReason)> = pods
        .iter()
        .filter(|p| !p.terminating && p.ready && p.drained_for.is_none())
        .filter_map(|p| due(p, policy).map(|r| (p, r)))
        .collect();
    candidates.sort_by(|(a, ra), (b, rb)| a.busy.cmp(&b.busy).then(ra.cmp(rb)).then(b.age.cmp(&a.age)));
    for (p, reason) in candidates {
        if unavailable >= policy.max_unavailable.max(1) {
            break;
        }
        unavailable += 1;
        plan.push(if p.busy {
            RecycleAction::Drain { pod: p.name.clone(), reason }
        } else {
            RecycleAction::Evict { pod: p.name.clone(), reason }
        });
    }
    plan
}

/// The latest time at or before `now` that `schedule` (cron, in `time_zone` or UTC) fired, as Unix
/// seconds: pods created before it are due. `None` if the schedule or zone is invalid or it did not
/// fire in the last four years.
pub fn last_scheduled_restart(schedule: &str, time_zone: Option<&str>, now: jiff::Timestamp) -> Option<i64> {
    let cron = gearfleet_crd::cron::CronSchedule::parse(schedule)?;
    let tz = match time_zone {
        Some(name) => jiff::tz::TimeZone::get(name).ok()?,
        None => jiff::tz::TimeZone::UTC,
    };
    let local = now.to_zoned(tz.clone()).datetime();
    let mut day = local.date();
    let (mut hour, mut minute) = (u32::try_from(local.hour()).ok()?, u32::try_from(local.minute()).ok()?);
    // Leap-day schedules fire every four years.
    for _ in 0..(4 * 366 + 1) {
        let weekday = u32::try_from(day.weekday().to_sunday_zero_offset()).ok()?;
        let (dom, month) = (u32::try_from(day.day()).ok()?, u32::try_from(day.month()).ok()?);
        if cron.matches_day(dom, month, weekday)
            && let Some((h, m)) = cron.latest_time_until(hour, minute)
        {
            let at = day.at(i8::try_from(h).ok()?, i8::try_from(m).ok()?, 0, 0);
            return Some(at.to_zoned(tz).ok()?.timestamp().as_second());
        }
        day = day.yesterday().ok()?;
        (hour, minute) = (23, 59);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, age_s: u64) -> RecyclePod {
        RecyclePod {
            name: name.into(),
            age: Duration::from_secs(age_s),
            created_unix: 1_000_000 - age_s as i64,
            ready: true,
            terminating: false,
            busy: false,
            jobs_done: 0,
            drained_for: None,
        }
    }

    fn policy() -> RecyclePolicy {
        RecyclePolicy {
            max_age: Some(Duration::from_secs(60)),
            max_unavailable: 1,
            drain_timeout: Duration::from_secs(120),
            ..Default::default()
        }
    }

    fn evict(pod: &str, reason: RecycleReason) -> RecycleAction {
        RecycleAction::Evict { pod: pod.into(), reason }
    }

    #[test]
    fn nothing_is_due_without_a_trigger() {
        let pods = [pod("a", 10_000)];
        assert!(recycle_plan(&pods, &RecyclePolicy { max_unavailable: 1, ..Default::default() }).is_empty());
    }

    #[test]
    fn age_jobs_and_restart_make_a_pod_due() {
        let p = policy();
        assert_eq!(due(&pod("a", 59), &p), None);
        assert_eq!(due(&pod("a", 60), &p), Some(RecycleReason::MaxAge));
        let jobs = RecyclePolicy { max_jobs: Some(100), ..Default::default() };
        assert_eq!(due(&RecyclePod { jobs_done: 99, ..pod("a", 1) }, &jobs), None);
        assert_eq!(due(&RecyclePod { jobs_done: 100, ..pod("a", 1) }, &jobs), Some(RecycleReason::MaxJobs));
        let restart = RecyclePolicy { restart_before_unix: Some(1_000_000 - 5), ..Default::default() };
        assert_eq!(due(&pod("old", 10), &restart), Some(RecycleReason::Restart));
        assert_eq!(due(&pod("new", 3), &restart), None, "created after the request");
    }

    #[test]
    fn staggers_one_at_a_time_oldest_first() {
        let pods = [pod("a", 100), pod("b", 300), pod("c", 200)];
        assert_eq!(recycle_plan(&pods, &policy()), [evict("b", RecycleReason::MaxAge)]);
        let two = RecyclePolicy { max_unavailable: 2, ..policy() };
        assert_eq!(recycle_plan(&pods, &two), [evict("b", RecycleReason::MaxAge), evict("c", RecycleReason::MaxAge)]);
    }

    #[test]
    fn waits_while_a_replacement_is_not_ready() {
        let mut pods = vec![pod("a", 100), pod("b", 300)];
        pods.push(RecyclePod { ready: false, ..pod("replacement", 1) });
        assert!(recycle_plan(&pods, &policy()).is_empty());
        pods[2].ready = true;
        assert_eq!(recycle_plan(&pods, &policy()), [evict("b", RecycleReason::MaxAge)]);
        pods.push(RecyclePod { terminating: true, ..pod("going", 500) });
        assert!(recycle_plan(&pods, &policy()).is_empty(), "a terminating pod uses the budget");
    }

    #[test]
    fn idle_pods_go_first_and_busy_ones_are_drained_then_evicted() {
        let pods = [RecyclePod { busy: true, ..pod("busy-old", 500) }, pod("idle", 100)];
        assert_eq!(recycle_plan(&pods, &policy()), [evict("idle", RecycleReason::MaxAge)]);
        let only_busy = [RecyclePod { busy: true, ..pod("busy-old", 500) }];
        assert_eq!(
            recycle_plan(&only_busy, &policy()),
            [RecycleAction::Drain { pod: "busy-old".into(), reason: RecycleReason::MaxAge }]
        );
        // Drained and still busy: wait; idle or past the drain timeout: evict.
        let drained = RecyclePod { busy: true, drained_for: Some(Duration::from_secs(5)), ..pod("busy-old", 500) };
        assert!(recycle_plan(std::slice::from_ref(&drained), &policy()).is_empty());
        let done = RecyclePod { busy: false, ..drained.clone() };
        assert_eq!(recycle_plan(&[done], &policy()), [evict("busy-old", RecycleReason::MaxAge)]);
        let overdue = RecyclePod { drained_for: Some(Duration::from_secs(120)), ..drained };
        assert_eq!(recycle_plan(&[overdue], &policy()), [evict("busy-old", RecycleReason::MaxAge)]);
    }

    #[test]
    fn restart_requests_come_before_age() {
        let p = RecyclePolicy { restart_before_unix: Some(1_000_000), ..policy() };
        let pods = [pod("aged", 100), pod("young", 10)];
        // Both due: "aged" by restart too (created before the request); oldest first within a reason.
        assert_eq!(recycle_plan(&pods, &p), [evict("aged", RecycleReason::Restart)]);
    }

    fn ts(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn last_scheduled_restart_finds_the_previous_firing() {
        let now = ts("2026-12-01T20:30:00Z"); // a Tuesday
        let at = |s: &str| Some(ts(s).as_second());
        assert_eq!(last_scheduled_restart("0 3 * * *", None, now), at("2026-12-01T03:00:00Z"));
        assert_eq!(last_scheduled_restart("30 20 * * *", None, now), at("2026-12-01T20:30:00Z"), "inclusive");
        assert_eq!(last_scheduled_restart("31 20 * * *", None, now), at("2026-11-30T20:31:00Z"));
        assert_eq!(last_scheduled_restart("0 0 * * SUN", None, now), at("2026-11-29T00:00:00Z"));
        assert_eq!(last_scheduled_restart("@monthly", None, now), at("2026-12-01T00:00:00Z"));
        assert_eq!(last_scheduled_restart("0 0 29 2 *", None, now), at("2024-02-29T00:00:00Z"));
        // 03:00 in Berlin (UTC+1 in winter) is 02:00 UTC.
        assert_eq!(last_scheduled_restart("0 3 * * *", Some("Europe/Berlin"), now), at("2026-12-01T02:00:00Z"));
        assert_eq!(last_scheduled_restart("0 3 * * *", Some("No/Such_Zone"), now), None);
        assert_eq!(last_scheduled_restart("bad", None, now), None);
    }
}
