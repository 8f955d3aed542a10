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

/// The trouble of one pod, with the container's message, if any.
pub fn pod_trouble(pod: &Pod) -> Option<(Trouble, String)> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    for c in statuses {
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
pub fn function_health<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> FunctionHealth {
    let mut health = FunctionHealth::default();
    for pod in pods {
        if let Some((trouble, message)) = pod_trouble(pod) {
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
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

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

    #[test]
    fn recognises_crash_loops_ooms_and_pull_failures() {
        assert_eq!(pod_trouble(&pod("a", waiting("CrashLoopBackOff"))).map(|t| t.0), Some(Trouble::CrashLoopBackOff));
        assert_eq!(pod_trouble(&pod("a", waiting("ErrImageNeverPull"))).map(|t| t.0), Some(Trouble::ImagePull));
        assert_eq!(pod_trouble(&pod("a", waiting("ContainerCreating"))), None);
        assert_eq!(pod_trouble(&pod("a", oom(1))), None, "one OOM kill is not yet a pattern");
        assert_eq!(pod_trouble(&pod("a", oom(2))).map(|t| t.0), Some(Trouble::OomKilled));
        assert_eq!(pod_trouble(&Pod::default()), None);
    }

    #[test]
    fn sums_up_a_function() {
        let pods =
            [pod("ok", waiting("ContainerCreating")), pod("bad-1", waiting("CrashLoopBackOff")), pod("bad-2", oom(5))];
        let h = function_health(&pods);
        assert_eq!(h.troubled, 2);
        assert_eq!(h.first, Some((Trouble::CrashLoopBackOff, "bad-1: boom".into())));
        assert_eq!(function_health(&[]), FunctionHealth::default());
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
