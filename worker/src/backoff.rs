//! Exponential backoff with jitter for reconnects, init retries and panic storms.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Bounds of an exponential backoff: delays start near `min`, double on each step, carry up to
/// 100% random jitter (so a fleet that lost its server does not reconnect in lockstep), and
/// never exceed `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    pub min: Duration,
    pub max: Duration,
}

impl BackoffPolicy {
    pub const fn new(min: Duration, max: Duration) -> BackoffPolicy {
        BackoffPolicy { min, max }
    }

    pub fn start(&self) -> Backoff {
        Backoff { policy: *self, inner: self.builder().build() }
    }

    fn builder(&self) -> ExponentialBuilder {
        let max = self.max.max(self.min);
        // Jitter adds up to 100% of the base delay, so cap the base at half the maximum: the
        // delay then stays in [max/2, max) once grown, still spread out.
        ExponentialBuilder::new()
            .with_jitter()
            .with_min_delay(self.min.min(max / 2).max(Duration::from_millis(1)))
            .with_max_delay((max / 2).max(Duration::from_millis(1)))
            .with_factor(2.0)
            .without_max_times()
    }
}

/// A running backoff sequence.
#[derive(Debug)]
pub struct Backoff {
    policy: BackoffPolicy,
    inner: ExponentialBackoff,
}

impl Backoff {
    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        self.inner.next().unwrap_or(self.policy.max).min(self.policy.max)
    }

    /// Starts over from the minimum delay (after a success).
    pub fn reset(&mut self) {
        self.inner = self.policy.builder().build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_stays_within_bounds() {
        let policy = BackoffPolicy::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut b = policy.start();
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(100) && first < Duration::from_millis(200), "{first:?}");
        let delays: Vec<_> = (0..40).map(|_| b.next_delay()).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(5)));
        assert!(delays.last().unwrap() >= &Duration::from_millis(2500));
        b.reset();
        assert!(b.next_delay() < Duration::from_millis(200));
    }

    #[test]
    fn tolerates_min_above_max() {
        let mut b = BackoffPolicy::new(Duration::from_secs(10), Duration::from_secs(1)).start();
        for _ in 0..5 {
            assert!(b.next_delay() <= Duration::from_secs(1));
        }
    }
}
