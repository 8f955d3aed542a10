//! Crash detection, as pure functions of the pods of a function: pods in CrashLoopBackOff, that were
//! OOMKilled again and again, or whose image cannot be pulled make the pool `Degraded`, and with
//! `crashLoopLimit` set they stop the function from growing (more replicas of a pod that only
//! crashes help nobody) until new pods — a changed template — run.

use k8s_openapi::api::core::v1::Pod;

/// What is wrong with a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trouble {
    /// A container is waiting in CrashLoopBackOff.
    CrashLoopBackOff,
    /// A container was OOMKilled and has restarted at least twice.
    OomKilled,
    /// The image cannot be pulled (ImagePullBackOff, ErrImagePull, ErrImageNeverPull).
    ImagePull,
}

impl Trouble {
    /// The condition reason.
    pub fn reason(self) -> &'static str {
        match self {
            Trouble::CrashLoopBackOff => "CrashLoopBackOff",
            Trouble::OomKilled => "OOMKilled",
            Trouble::ImagePull => "ImagePullBackOff",
        }
    }
}

/// Restarts after which repeated OOM kills count as trouble.
const OOM_RESTARTS: i32 = 2;

/// A container restarted after a failure in the last few minutes counts as crash-looping even in
/// the moments between its back-offs (when it is briefly running or just terminated).
const CRASH_RESTARTS: i32 = 1;
/// How recent that last failure must be.
const CRASH_RECENT: std::time::Duration = std::time::Duration::from_secs(300);

/// The trouble of one pod at `now`, with the container's message, if any.
pub fn pod_trouble(pod: &Pod, now: jiff::Timestamp) -> Option<(Trouble, String)> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    for c in statuses {
        let last_failure = c
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .filter(|t| t.exit_code != 0)
            .and_then(|t| t.finished_at.as_ref())
            .map(|t| now.duration_since(t.0).unsigned_abs());
        if c.restart_count >= CRASH_RESTARTS && last_failure.is_some_and(|ago| ago < CRASH_RECENT) {
            let message = format!("container {} failed {} times, the last time recently", c.name, c.restart_count);
            let waiting = c.state.as_ref().and_then(|s| s.waiting.as_ref()).and_then(|w| w.reason.as_deref());
            if waiting != Some("CrashLoopBackOff") {
                return Some((Trouble::CrashLoopBackOff, message));
            }
        }
        let waiting = c.state.as_ref().and_then(|s| s.waiting.as_ref());
        let waiting_reason = waiting.and_then(|w| w.reason.as_deref()).unwrap_or_default();
        let message = waiting.and_then(|w| w.message.clone()).unwrap_or_default();
        let oom = c.last_state.as_ref().and_then(|s| s.terminated.as_ref()).and_then(|t| t.reason.as_deref())
            == Some("OOMKilled");
        if oom && c.restart_count >= OOM_RESTARTS {
            return Some((Trouble::OomKilled, format!("container {} OOMKilled {} times", c.name, c.restart_count)));
        }
        match waiting_reason {
            "CrashLoopBackOff" => return Some((Trouble::CrashLoopBackOff, message)),
            "ImagePullBackOff" | "ErrImagePull" | "ErrImageNeverPull" | "InvalidImageName" => {
                return Some((Trouble::ImagePull, message));
            }
            _ => {}
        }
    }
    None
}

/// The troubled pods of one function.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FunctionHealth {
    /// Pods with trouble.
    pub troubled: i32,
    /// The first trouble seen and a line about it (`pod: message`).
    pub first: Option<(Trouble, String)>,
}

/// Sums up the pods of a function.
pub fn function_health<'a>(pods: impl IntoIterator<Item = &'a Pod>, now: jiff::Timestamp) -> FunctionHealth {
    let mut health = FunctionHealth::default();
    for pod in pods {
        if let Some((trouble, message)) = pod_trouble(pod, now) {
            health.troubled += 1;
            if health.first.is_none() {
                let name = pod.metadata.name.clone().unwrap_or_default();
                let line = if message.is_empty() { name } else { format!("{name}: {message}") };
                health.first = Some((trouble, line));
            }
        }
    }
    health
}

/// With `crashLoopLimit` set and at least that many troubled pods (at least one), a function is not
/// scaled above its current size. Returns the capped target and why, when it was capped.
pub fn cap_for_crashes(desired: i32, current: i32, troubled: i32, limit: Option<i32>) -> (i32, Option<String>) {
    match limit {
        Some(limit) if troubled > 0 && troubled >= limit && desired > current => (
            current,
            Some(format!(
                "{troubled} crashing pod(s) reach crashLoopLimit {limit}: holding at {current} instead of {desired}"
            )),
        ),
        _ => (desired, None),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    use super::*;

    fn pod(name: &str, status: ContainerStatus) -> Pod {
        Pod {
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
            status: Some(PodStatus { container_statuses: Some(vec![status]), ..Default::default() }),
            ..Default::default()
        }
    }

    fn waiting(reason: &str) -> ContainerStatus {
        ContainerStatus {
            name: "worker".into(),
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting { reason: Some(reason.into()), message: Some("boom".into()) }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn oom(restarts: i32) -> ContainerStatus {
        ContainerStatus {
            name: "worker".into(),
            restart_count: restarts,
            last_state: Some(ContainerState {
                terminated: Some(ContainerStateTerminated { reason: Some("OOMKilled".into()), ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn now() -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_800_000_000).unwrap()
    }

    /// Between two back-offs a crash-looping container is briefly running: still trouble.
    #[test]
    fn a_crash_looping_container_between_back_offs_is_still_trouble() {
        let failed = |restarts: i32, exit: i32, ago: i64| ContainerStatus {
            name: "worker".into(),
            restart_count: restarts,
            state: Some(ContainerState { running: Some(Default::default()), ..Default::default() }),
            last_state: Some(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: exit,
                    finished_at: Some(Time(now().checked_sub(jiff::SignedDuration::from_secs(ago)).unwrap())),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(pod_trouble(&pod("a", failed(3, 1, 10)), now()).map(|t| t.0), Some(Trouble::CrashLoopBackOff));
        assert_eq!(pod_trouble(&pod("a", failed(0, 1, 10)), now()), None, "never restarted");
        assert_eq!(pod_trouble(&pod("a", failed(5, 0, 10)), now()), None, "clean exits are not crashes");
        assert_eq!(pod_trouble(&pod("a", failed(5, 1, 600)), now()), None, "recovered ten minutes ago");
    }

    #[test]
    fn recognises_crash_loops_ooms_and_pull_failures() {
        assert_eq!(
            pod_trouble(&pod("a", waiting("CrashLoopBackOff")), now()).map(|t| t.0),
            Some(Trouble::CrashLoopBackOff)
        );
        // Every way an image cannot be had is one Degraded reason; ErrImageNeverPull is what the
        // kubelet says for a missing image with imagePullPolicy Never (the e2e test's case).
        for reason in ["ImagePullBackOff", "ErrImagePull", "ErrImageNeverPull", "InvalidImageName"] {
            let trouble = pod_trouble(&pod("a", waiting(reason)), now()).map(|t| t.0);
            assert_eq!(trouble, Some(Trouble::ImagePull), "{reason}");
            assert_eq!(trouble.map(Trouble::reason), Some("ImagePullBackOff"), "{reason}");
        }
        assert_eq!(Trouble::CrashLoopBackOff.reason(), "CrashLoopBackOff");
        assert_eq!(Trouble::OomKilled.reason(), "OOMKilled");
        assert_eq!(pod_trouble(&pod("a", waiting("ContainerCreating")), now()), None);
        assert_eq!(pod_trouble(&pod("a", oom(1)), now()), None, "one OOM kill is not yet a pattern");
        assert_eq!(pod_trouble(&pod("a", oom(2)), now()).map(|t| t.0), Some(Trouble::OomKilled));
        assert_eq!(pod_trouble(&Pod::default(), now()), None);
    }

    #[test]
    fn sums_up_a_function() {
        let pods =
            [pod("ok", waiting("ContainerCreating")), pod("bad-1", waiting("CrashLoopBackOff")), pod("bad-2", oom(5))];
        let h = function_health(&pods, now());
        assert_eq!(h.troubled, 2);
        assert_eq!(h.first, Some((Trouble::CrashLoopBackOff, "bad-1: boom".into())));
        assert_eq!(function_health(&[], now()), FunctionHealth::default());
    }

    #[test]
    fn crash_loop_limit_stops_growth_only() {
        assert_eq!(cap_for_crashes(5, 2, 1, None), (5, None), "no limit");
        assert_eq!(cap_for_crashes(5, 2, 0, Some(0)), (5, None), "no crashes");
        assert_eq!(cap_for_crashes(5, 2, 1, Some(0)).0, 2, "0: the first crash stops growth");
        assert_eq!(cap_for_crashes(5, 2, 1, Some(2)).0, 5, "below the limit");
        let (target, why) = cap_for_crashes(5, 2, 2, Some(2));
        assert_eq!(target, 2);
        assert!(why.unwrap().contains("crashLoopLimit 2"));
        assert_eq!(cap_for_crashes(1, 2, 3, Some(1)), (1, None), "scaling in is never held back");
    }
}
