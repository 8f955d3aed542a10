//! The clocks, read by whoever hands the state a transition (connections, timers, the
//! scheduler): the state itself never reads one, so its tests step time instead of sleeping.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::state::Now;

/// Both clocks, now.
pub fn now() -> Now {
    Now { unix_ms: unix_now_ms(), instant: Instant::now() }
}

/// Wall-clock time in unix milliseconds.
pub fn unix_now_ms() -> u64 {
    since_epoch().map_or(0, |d| d.as_millis() as u64)
}

fn since_epoch() -> Option<Duration> {
    SystemTime::now().duration_since(UNIX_EPOCH).ok()
}

/// The clocks for a batch of packets handled under one lock, where every packet is handed the
/// moment it is handled at for the price of one monotonic clock read: the wall clock is read once
/// for the batch, and each packet's wall-clock time is derived from its monotonic reading (the
/// two advance together; a step of the wall clock during the batch shows from the next batch on,
/// as if it had come microseconds later).
#[derive(Debug, Clone, Copy)]
pub struct Batch {
    wall: Option<Duration>,
    start: Instant,
}

impl Batch {
    pub fn start() -> Batch {
        Batch { wall: since_epoch(), start: Instant::now() }
    }

    /// The moment now, for the next packet of the batch.
    pub fn now(&self) -> Now {
        let instant = Instant::now();
        let unix_ms = self.wall.map_or(0, |w| (w + instant.saturating_duration_since(self.start)).as_millis() as u64);
        Now { unix_ms, instant }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_derives_wall_clock_time_that_agrees_with_the_wall_clock() {
        let batch = Batch::start();
        let before = unix_now_ms();
        let now = batch.now();
        let after = unix_now_ms();
        // Allow a millisecond for the instants between the reads.
        assert!(before <= now.unix_ms + 1 && now.unix_ms <= after + 1, "{before} <= {} <= {after}", now.unix_ms);
        assert!(now.instant >= batch.start);
    }
}
