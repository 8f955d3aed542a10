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
//! in its own `epoll` at once, without sleeping) or when the window has passed. A broker that
//! gets no traffic polls once, for one window, and then sleeps; `--idle-poll 0` turns it off.
//!
//! The connections are watched through an `epoll` instance of our own, level-triggered and for
//! readability only; the kernel drops a socket from it when the socket is closed.

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

    pub fn window(&self) -> Duration {
        self.window
    }

    /// Watches a connection's socket for readability until it is closed.
    pub fn watch(&self, socket: RawFd) -> io::Result<()> {
        let mut event = libc::epoll_event { events: libc::EPOLLIN as u32, u64: socket as u64 };
        // SAFETY: both descriptors are open (the caller holds the socket) and `event` outlives
        // the call.
        let rc = unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, socket, &mut event) };
        if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    /// Polls until a watched connection is readable or the window has passed; returns whether
    /// one became readable.
    pub fn poll(&self) -> bool {
        let start = Instant::now();
        let mut event = [libc::epoll_event { events: 0, u64: 0 }];
        loop {
            // SAFETY: `event` has room for the one event asked for; a zero timeout never blocks.
            let n = unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), event.as_mut_ptr(), 1, 0) };
            if n > 0 {
                return true;
            }
            if n < 0 || start.elapsed() >= self.window {
                return false;
            }
            // Let anything else runnable on this CPU go first (the peers, on a small node).
            std::thread::yield_now();
        }
    }
}

static INSTALLED: OnceLock<IdlePoll> = OnceLock::new();

/// Makes `poll` the process's idle poll: [`watch`] registers sockets with it and [`before_park`]
/// polls it. Only the binary installs one; a broker embedded in another program (the tests)
/// never polls.
pub fn install(poll: IdlePoll) -> bool {
    INSTALLED.set(poll).is_ok()
}

/// Registers a newly accepted connection with the installed idle poll, if any.
pub fn watch(socket: RawFd) {
    if let Some(p) = INSTALLED.get()
        && let Err(e) = p.watch(socket)
    {
        tracing::debug!(error = %e, "idle poll: cannot watch a connection");
    }
}

/// The runtime's park hook: polls the installed idle poll, if any.
pub fn before_park() {
    if let Some(p) = INSTALLED.get() {
        p.poll();
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    use super::*;

    #[test]
    fn ends_at_the_first_readable_connection() {
        let poll = IdlePoll::new(Duration::from_secs(5)).unwrap();
        let (a, mut b) = UnixStream::pair().unwrap();
        poll.watch(a.as_raw_fd()).unwrap();
        b.write_all(b"x").unwrap();
        let start = Instant::now();
        assert!(poll.poll());
        assert!(start.elapsed() < Duration::from_secs(4), "it should not have waited out the window");
    }

    #[test]
    fn waits_out_the_window_when_nothing_arrives() {
        let window = Duration::from_millis(30);
        let poll = IdlePoll::new(window).unwrap();
        let (a, _b) = UnixStream::pair().unwrap();
        poll.watch(a.as_raw_fd()).unwrap();
        let start = Instant::now();
        assert!(!poll.poll());
        assert!(start.elapsed() >= window);
    }

    #[test]
    fn a_closed_connection_leaves_the_watch() {
        let poll = IdlePoll::new(Duration::from_millis(10)).unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        poll.watch(a.as_raw_fd()).unwrap();
        drop(b); // `a` is readable now (end of stream) ...
        assert!(poll.poll());
        drop(a); // ... and gone once closed.
        assert!(!poll.poll());
    }
}
