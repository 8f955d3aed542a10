//! Polling the connections for a short window before an event-loop thread goes to sleep.
//!
//! A Gearman exchange is a chain of small round trips (submit, wake a worker, grab, assign,
//! complete, result). When the event loop sleeps between them, every next packet has to wake
//! its thread, and waking a thread whose CPU went idle is the costliest step of the chain on a
//! virtual machine: the idle vCPU halts and the wake-up goes through the hypervisor. Measured on
//! the 2-vCPU VM of docs/performance.md: one submitter per connection got 2.2× the jobs/s and
//! spent a quarter less CPU per job when the loop first polled for up to 30–100 µs.
//!
//! The poll is polite: between two checks the thread yields its CPU to anything else runnable
//! there, and it ends at the first readable connection (the runtime then finds the same event
//! in its own `epoll` at once, without sleeping) or when the window has passed.
//!
//! The window adapts per thread, the way Linux's haltpoll governor adapts a CPU's idle poll:
//! when the thread slept and was woken again within the longest window, a longer poll would
//! have caught that wake-up, so the window doubles (up to `--idle-poll`); when it slept longer,
//! polling was wasted, so the window halves, down to none. Traffic of isolated requests
//! (more than a window apart) thus costs no polling, and an idle broker none at all;
//! `--idle-poll 0` turns polling off.
//!
//! The connections (and the listener, for new ones) are watched through an `epoll` instance of
//! our own, edge-triggered and for readability only: a connection the broker leaves unread on
//! purpose (its peer does not read its replies) is reported once, not on every poll. The kernel
//! drops a socket from it when the socket is closed. Work that does not come through a watched
//! socket (a task woken by another thread, such as the journal's) ends the poll too, through the
//! runtime's queue of such tasks; a timer that falls due during a poll waits for its end, which is
//! why the window is capped at a millisecond.

use std::cell::Cell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct IdlePoll {
    epoll: OwnedFd,
    window: Duration,
}

impl IdlePoll {
    pub fn new(window: Duration) -> io::Result<IdlePoll> {
        // SAFETY: epoll_create1 takes no pointers; a non-negative result is a new descriptor
        // that nothing else owns.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned here only.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(IdlePoll { epoll, window })
    }

    /// Watches a socket for new data (or connections) until it is closed.
    pub fn watch(&self, socket: RawFd) -> io::Result<()> {
        let mut event = libc::epoll_event { events: (libc::EPOLLIN | libc::EPOLLET) as u32, u64: socket as u64 };
        // SAFETY: both descriptors are open (the caller holds the socket) and `event` outlives
        // the call.
        let rc = unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, socket, &mut event) };
        if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    /// Polls until a watched socket has news or the longest window has passed; returns whether
    /// one had.
    pub fn poll(&self) -> bool {
        self.poll_for(self.window, || false)
    }

    /// Polls until a watched socket has news, `other_work` says there is some, or `window` has
    /// passed; returns whether the poll ended early.
    pub fn poll_for(&self, window: Duration, other_work: impl Fn() -> bool) -> bool {
        let start = Instant::now();
        let mut event = [libc::epoll_event { events: 0, u64: 0 }];
        loop {
            // SAFETY: `event` has room for the one event asked for; a zero timeout never blocks.
            let n = unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), event.as_mut_ptr(), 1, 0) };
            if n > 0 || other_work() {
                return true;
            }
            if n < 0 || start.elapsed() >= window {
                return false;
            }
            // Let anything else runnable on this CPU go first (the peers, on a small node).
            std::thread::yield_now();
        }
    }
}

static INSTALLED: OnceLock<IdlePoll> = OnceLock::new();

/// Makes `poll` the process's idle poll: [`watch`] registers sockets with it and [`before_park`]
/// polls it. The first runtime built by [`crate::runtime::builder`] installs it (the binary's,
/// or the tests' shared one); a broker started on another runtime never polls.
pub fn install(poll: IdlePoll) -> bool {
    INSTALLED.set(poll).is_ok()
}

/// Registers a listener or a newly accepted connection with the installed idle poll, if any.
pub fn watch(socket: RawFd) {
    if let Some(p) = INSTALLED.get()
        && let Err(e) = p.watch(socket)
    {
        tracing::debug!(error = %e, "idle poll: cannot watch a socket");
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

thread_local! {
    /// This thread's poll window, and when it went to sleep after a poll that found nothing.
    static THREAD: Cell<(Duration, Option<Instant>)> = const { Cell::new((Duration::ZERO, None)) };
}

/// The runtime's park hook: polls the installed idle poll (if any) for this thread's window.
pub fn before_park() {
    let Some(p) = INSTALLED.get() else { return };
    let (window, _) = THREAD.get();
    // Tasks woken from outside the runtime wait in its global queue.
    let runtime = tokio::runtime::Handle::try_current().ok();
    let woken = || runtime.as_ref().is_some_and(|h| h.metrics().global_queue_depth() > 0);
    let found = !window.is_zero() && p.poll_for(window, woken);
    // After a poll that found an event the runtime's park returns at once: no sleep to learn from.
    THREAD.set((window, (!found).then(Instant::now)));
}

/// The runtime's unpark hook: adapts this thread's window to how long it slept.
pub fn after_unpark() {
    let Some(p) = INSTALLED.get() else { return };
    if let (window, Some(since)) = THREAD.get() {
        THREAD.set((next_window(window, since.elapsed(), p.window), None));
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    use super::*;

    /// An idle poll of `window` watching the first end of a connected pair.
    fn watching_a_pair(window: Duration) -> (IdlePoll, UnixStream, UnixStream) {
        let poll = IdlePoll::new(window).unwrap();
        let (watched, peer) = UnixStream::pair().unwrap();
        poll.watch(watched.as_raw_fd()).unwrap();
        (poll, watched, peer)
    }

    #[test]
    fn ends_at_the_first_readable_connection() {
        let (poll, _a, mut b) = watching_a_pair(Duration::from_secs(5));
        b.write_all(b"x").unwrap();
        let start = Instant::now();
        assert!(poll.poll());
        assert!(start.elapsed() < Duration::from_secs(4), "it should not have waited out the window");
    }

    #[test]
    fn unread_data_is_reported_once() {
        let (poll, _a, mut b) = watching_a_pair(Duration::from_millis(20));
        b.write_all(b"x").unwrap();
        assert!(poll.poll());
        // Still unread (as when the broker stops reading from a peer that does not read): the
        // next poll waits for something new instead of ending at once.
        assert!(!poll.poll());
        b.write_all(b"y").unwrap();
        assert!(poll.poll());
    }

    #[test]
    fn other_work_ends_the_poll() {
        let poll = IdlePoll::new(Duration::from_secs(5)).unwrap();
        let start = Instant::now();
        assert!(poll.poll_for(Duration::from_secs(5), || true));
        assert!(start.elapsed() < Duration::from_secs(4));
    }

    #[test]
    fn waits_out_the_window_when_nothing_arrives() {
        let window = Duration::from_millis(30);
        let (poll, _a, _b) = watching_a_pair(window);
        let start = Instant::now();
        assert!(!poll.poll());
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
    fn a_closed_connection_leaves_the_watch() {
        let (poll, a, b) = watching_a_pair(Duration::from_millis(10));
        drop(b); // `a` is readable now (end of stream) ...
        assert!(poll.poll());
        drop(a); // ... and gone once closed: a new socket on the same descriptor can be watched.
        let (c, _d) = UnixStream::pair().unwrap();
        poll.watch(c.as_raw_fd()).unwrap();
        assert!(!poll.poll());
    }
}
