//! Polling the connections for a short window before an event-loop thread goes to sleep.
//!
//! A Gearman exchange is a chain of small round trips (submit, wake a worker, grab, assign,
//! complete, result). When the event loop sleeps between them, every next packet has to wake
//! its thread, and waking a thread whose CPU went idle is the costliest step of the chain on a
//! virtual machine: the idle vCPU halts and the wake-up goes through the hypervisor. Measured on
//! the 2-vCPU VM of docs/performance.md: one submitter per connection got 2.2× the jobs/s and
//! spent a quarter less CPU per job when the loop first polled for up to 30–100 µs.
//!
//! The poll is polite: between two checks of the thread's `epoll` (without waiting) the thread
//! yields its CPU to anything else runnable there, and it ends at the first event (which the
//! thread then handles, with no sleep and no second `epoll_wait`) or when the window has passed.
//!
//! The window adapts per thread, the way Linux's haltpoll governor adapts a CPU's idle poll:
//! when the thread slept and was woken again within the longest window, a longer poll would
//! have caught that wake-up, so the window doubles (up to `--idle-poll`); when it slept longer,
//! polling was wasted, so the window halves, down to none. Traffic of isolated requests
//! (more than a window apart) thus costs no polling, and an idle broker none at all;
//! `--idle-poll 0` turns polling off.
//!
//! A thread's own wake-ups (new connections, shutdown) come through its `epoll` too, so they end a
//! poll like any connection's input; timers (a partial packet's deadline) wait for its end, which
//! is why the window is capped at a millisecond.

use std::io;
use std::time::{Duration, Instant};

use mio::{Events, Poll};

/// Waits up to `timeout` (None: for ever) for events; a wait cut short by a signal is a wait
/// that found none.
pub fn poll_events(poll: &mut Poll, events: &mut Events, timeout: Option<Duration>) -> io::Result<()> {
    match poll.poll(events, timeout) {
        Err(e) if e.kind() == io::ErrorKind::Interrupted => {
            events.clear();
            Ok(())
        }
        r => r,
    }
}

/// Checks `poll` for events without sleeping, yielding the CPU between checks, until some arrive
/// or `window` has passed; returns whether some did (they are in `events`).
pub fn poll_for(poll: &mut Poll, events: &mut Events, window: Duration) -> io::Result<bool> {
    let start = Instant::now();
    loop {
        poll_events(poll, events, Some(Duration::ZERO))?;
        if !events.is_empty() {
            return Ok(true);
        }
        if start.elapsed() >= window {
            return Ok(false);
        }
        // Let anything else runnable on this CPU go first (the peers, on a small node).
        std::thread::yield_now();
    }
}

/// A thread's adaptive poll window, up to `max` (`--idle-poll`).
#[derive(Debug, Clone, Copy)]
pub struct Window {
    current: Duration,
    max: Duration,
}

impl Window {
    /// Starts with no polling: the first short sleep turns it on.
    pub fn new(max: Duration) -> Window {
        Window { current: Duration::ZERO, max }
    }

    /// How long to poll before the next sleep.
    pub fn current(&self) -> Duration {
        self.current
    }

    /// The thread polled for [`Window::current`], found nothing and slept for `slept`.
    pub fn slept(&mut self, slept: Duration) {
        if !self.max.is_zero() {
            self.current = next_window(self.current, slept, self.max);
        }
    }
}

/// The next poll window after a thread polled for `window`, found nothing, and then slept for
/// `slept`, with `max` the longest window. As in the kernel's haltpoll governor, the sleep alone
/// decides: woken within `max` of the poll's end, a longer poll might have caught it (grow, up to
/// `max`); woken later, polling was wasted (shrink). Measured: counting the poll's own length in
/// (grow only when poll and sleep together fit in `max`) lost a quarter to a third of the
/// one-client workloads' jobs/s, whose round trips sit around the window's length.
pub fn next_window(window: Duration, slept: Duration, max: Duration) -> Duration {
    let start = max / 4;
    if slept <= max {
        (window * 2).clamp(start, max)
    } else {
        let half = window / 2;
        if half < start { Duration::ZERO } else { half }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    use mio::unix::SourceFd;
    use mio::{Interest, Token};

    use super::*;

    /// A poll watching the first end of a connected pair.
    fn watching_a_pair() -> (Poll, Events, UnixStream, UnixStream) {
        let poll = Poll::new().unwrap();
        let (watched, peer) = UnixStream::pair().unwrap();
        watched.set_nonblocking(true).unwrap();
        poll.registry().register(&mut SourceFd(&watched.as_raw_fd()), Token(0), Interest::READABLE).unwrap();
        (poll, Events::with_capacity(8), watched, peer)
    }

    #[test]
    fn ends_at_the_first_event() {
        let (mut poll, mut events, _a, mut b) = watching_a_pair();
        b.write_all(b"x").unwrap();
        let start = Instant::now();
        assert!(poll_for(&mut poll, &mut events, Duration::from_secs(5)).unwrap());
        assert!(start.elapsed() < Duration::from_secs(4), "it should not have waited out the window");
        assert_eq!(events.iter().count(), 1);
    }

    #[test]
    fn waits_out_the_window_when_nothing_arrives() {
        let (mut poll, mut events, _a, _b) = watching_a_pair();
        let window = Duration::from_millis(30);
        let start = Instant::now();
        assert!(!poll_for(&mut poll, &mut events, window).unwrap());
        assert!(start.elapsed() >= window);
    }

    #[test]
    fn the_window_grows_for_short_sleeps_and_shrinks_away_for_long_ones() {
        let max = Duration::from_micros(80);
        let us = Duration::from_micros;
        // From none: a wake-up soon after going to sleep starts polling at a quarter of the max.
        assert_eq!(next_window(Duration::ZERO, us(30), max), us(20));
        assert_eq!(next_window(us(20), us(30), max), us(40));
        assert_eq!(next_window(us(40), us(5), max), us(80));
        assert_eq!(next_window(us(80), us(80), max), us(80), "never beyond the max");
        // Sleeps longer than any window: polling only wastes CPU, so it halves away to none.
        assert_eq!(next_window(us(80), us(81), max), us(40));
        assert_eq!(next_window(us(40), Duration::from_secs(1), max), us(20));
        assert_eq!(next_window(us(20), Duration::from_secs(1), max), Duration::ZERO);
        assert_eq!(next_window(Duration::ZERO, Duration::from_secs(1), max), Duration::ZERO);
    }

    #[test]
    fn a_zero_max_never_polls() {
        let mut w = Window::new(Duration::ZERO);
        w.slept(Duration::from_micros(1));
        assert_eq!(w.current(), Duration::ZERO);
        let mut w = Window::new(Duration::from_micros(80));
        w.slept(Duration::from_micros(1));
        assert_eq!(w.current(), Duration::from_micros(20));
    }
}
