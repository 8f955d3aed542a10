//! The clocks, read by whoever hands the state a transition (connections, timers, the
//! scheduler): the state itself never reads one, so its tests step time instead of sleeping.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::state::Now;

/// Both clocks, now.
pub fn now() -> Now {
    Now { unix_ms: unix_now_ms(), instant: Instant::now() }
}

/// Wall-clock time in unix milliseconds.
pub fn unix_now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
