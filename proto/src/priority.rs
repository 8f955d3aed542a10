//! Job priority and its mapping to the submission packet types: the one place that says which
//! `SUBMIT_JOB*` packet carries which priority, used by the broker (reading) and by every client
//! (writing).

use crate::packet::PacketType;

/// A job's priority: High runs before Normal, Normal before Low, FIFO inside each. The numeric
/// value (`as usize`) indexes per-priority tables, highest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Priority {
    High = 0,
    #[default]
    Normal = 1,
    Low = 2,
}

/// What a submission packet asks for: its priority, whether it is a background job, and whether
/// it carries a time to run at (`SUBMIT_JOB_EPOCH` / `SUBMIT_JOB_SCHED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Submission {
    pub priority: Priority,
    pub background: bool,
    pub scheduled: bool,
}

impl Priority {
    /// Every priority, highest first.
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    /// Lower-case name, as in admin output and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }

    /// The packet that submits a job of this priority, in the foreground or the background.
    pub fn submit_type(self, background: bool) -> PacketType {
        use PacketType as T;
        match (self, background) {
            (Priority::High, false) => T::SubmitJobHigh,
            (Priority::Normal, false) => T::SubmitJob,
            (Priority::Low, false) => T::SubmitJobLow,
            (Priority::High, true) => T::SubmitJobHighBg,
            (Priority::Normal, true) => T::SubmitJobBg,
            (Priority::Low, true) => T::SubmitJobLowBg,
        }
    }
}

impl Submission {
    /// What `ptype` submits, or `None` for a packet that is not a job submission. The reduce
    /// submissions are not jobs this crate's peers run, so they are not mapped here.
    pub fn of(ptype: PacketType) -> Option<Submission> {
        use PacketType as T;
        let plain = |priority, background| Submission { priority, background, scheduled: false };
        Some(match ptype {
            T::SubmitJob => plain(Priority::Normal, false),
            T::SubmitJobBg => plain(Priority::Normal, true),
            T::SubmitJobHigh => plain(Priority::High, false),
            T::SubmitJobHighBg => plain(Priority::High, true),
            T::SubmitJobLow => plain(Priority::Low, false),
            T::SubmitJobLowBg => plain(Priority::Low, true),
            // gearmand runs epoch and sched jobs as normal-priority background jobs.
            T::SubmitJobEpoch | T::SubmitJobSched => {
                Submission { priority: Priority::Normal, background: true, scheduled: true }
            }
            _ => return None,
        })
    }
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_priority_round_trips_through_its_packets() {
        for p in Priority::ALL {
            for bg in [false, true] {
                let s = Submission::of(p.submit_type(bg)).expect("a submission");
                assert_eq!((s.priority, s.background, s.scheduled), (p, bg, false));
            }
        }
    }

    #[test]
    fn scheduled_submissions_are_normal_background_jobs() {
        for t in [PacketType::SubmitJobEpoch, PacketType::SubmitJobSched] {
            assert_eq!(
                Submission::of(t),
                Some(Submission { priority: Priority::Normal, background: true, scheduled: true })
            );
        }
        assert_eq!(Submission::of(PacketType::GrabJob), None);
    }

    #[test]
    fn priorities_order_highest_first() {
        assert!(Priority::High < Priority::Normal && Priority::Normal < Priority::Low);
        assert_eq!(Priority::ALL.map(|p| p as usize), [0, 1, 2]);
    }
}
