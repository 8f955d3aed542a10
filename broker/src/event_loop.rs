//! Event-loop threads for plain TCP connections: each thread owns an `epoll` (through mio) and the
//! connections dealt to it, reads them when they are readable, and hands the bytes to the
//! connection's [`Session`] — no task per connection, no waker, one `epoll_wait` per round of
//! events. Before it sleeps a thread polls for a short, adaptive window ([`idle_poll`]), and at
//! the end of every round it writes the replies held for pipelining peers ([`outbox`]). Replies
//! are written by whichever thread produces them; a socket that refuses bytes is written on by
//! its loop when it turns writable.
//!
//! Everything else (TLS connections, timers, the journal, HTTP) stays on the tokio runtime; an
//! event-loop thread enters that runtime so the sessions can spawn tasks on it.
//!
//! [`idle_poll`]: crate::idle_poll
//! [`outbox`]: crate::outbox

use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use tokio::sync::OwnedSemaphorePermit;

use crate::broker::Broker;
use crate::connection::{self, READ_CHUNK, Session};
use crate::idle_poll::{self, Window};
use crate::outbox::Outbox;

const WAKER: Token = Token(usize::MAX);
/// How often (at most) a thread looks at its connections that wait on a timer: a partial packet
/// (due within the partial-packet timeout) or a pause for back-pressure whose replies may have
/// drained without the socket saying so (held replies released by the journal).
const SCAN_INTERVAL: Duration = Duration::from_millis(100);
/// How long a closed connection's last replies may wait for its socket to take them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Reads of one connection in one turn (16 KiB each at least) before the others go first.
const READS_PER_TURN: usize = 16;

/// A connection accepted by the listener, on its way to a thread.
struct Accepted {
    stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
}

struct Thread {
    incoming: mpsc::Sender<Accepted>,
    waker: Arc<Waker>,
}

/// The running event-loop threads; connections are dealt to them in turn.
pub struct EventLoops {
    threads: Vec<Thread>,
    next: AtomicUsize,
}

impl EventLoops {
    /// Starts `count` threads serving connections for `broker`; they stop when the broker shuts
    /// down. Must be called within the tokio runtime the sessions spawn their tasks on.
    pub fn start(broker: &Arc<Broker>, count: usize) -> io::Result<Arc<EventLoops>> {
        let runtime = tokio::runtime::Handle::current();
        let mut threads = Vec::new();
        let mut loops = Vec::new();
        for _ in 0..count.max(1) {
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
            let (tx, rx) = mpsc::channel();
            loops.push(EventLoop::new(broker.clone(), poll, rx));
            threads.push(Thread { incoming: tx, waker });
        }
        let loops_handle = Arc::new(EventLoops { threads, next: AtomicUsize::new(0) });
        for (n, mut event_loop) in loops.into_iter().enumerate() {
            let runtime = runtime.clone();
            let spawned = std::thread::Builder::new().name(format!("event-loop-{n}")).spawn(move || {
                let _entered = runtime.enter();
                event_loop.run();
            });
            if let Err(e) = spawned {
                // The broker does not start: the threads already running stop with it.
                broker.shutdown.cancel();
                loops_handle.wake_all();
                return Err(e);
            }
        }
        // Shutdown reaches the threads through their wakers.
        let shutdown = broker.shutdown.clone();
        let waking = loops_handle.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            waking.wake_all();
        });
        Ok(loops_handle)
    }

    fn wake_all(&self) {
        for t in &self.threads {
            let _ = t.waker.wake();
        }
    }

    /// Hands an accepted connection to the next thread.
    pub fn serve(&self, stream: tokio::net::TcpStream, peer: SocketAddr, permit: OwnedSemaphorePermit) {
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::info!(%peer, error = %e, "cannot take over an accepted connection");
                return;
            }
        };
        let n = self.next.fetch_add(1, Ordering::Relaxed) % self.threads.len();
        let thread = &self.threads[n];
        if thread.incoming.send(Accepted { stream, peer, permit }).is_ok() {
            let _ = thread.waker.wake();
        } else {
            tracing::error!(%peer, "event loop gone; connection dropped");
        }
    }
}

/// What a readiness event says about a connection's input.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Input {
    None,
    /// New bytes.
    Data,
    /// New bytes, possibly followed by the peer's close (or an error): read until the socket says
    /// there is no more.
    Closing,
}

/// One connection of a thread.
struct Conn {
    stream: Arc<TcpStream>,
    /// None once the connection is closed and only its last replies wait to go out.
    session: Option<Session>,
    outbox: Arc<Outbox>,
    buf: BytesMut,
    /// Part of a packet is buffered: when its last bytes arrived (the rest is due within the
    /// partial-packet timeout).
    partial_since: Option<Instant>,
    /// Not read from until its peer reads its replies (back-pressure).
    paused: bool,
    /// Closed: its last replies may go out until then.
    draining_until: Option<Instant>,
    /// In the thread's `unfinished` list: read from there this round, not on its events.
    queued: bool,
    _permit: OwnedSemaphorePermit,
}

struct EventLoop {
    broker: Arc<Broker>,
    poll: Poll,
    incoming: mpsc::Receiver<Accepted>,
    conns: Slab<Conn>,
    /// This thread's idle-poll window.
    window: Window,
    /// When to look at the connections that wait on a timer (None: none does).
    next_scan: Option<Instant>,
    /// Connections whose socket may hold input no edge will announce: more than their last turn
    /// read, or bytes that came before the connection was registered.
    unfinished: Vec<usize>,
    /// Connections closed in this round, to let go of once the round's replies are written.
    closed: Vec<usize>,
    /// Reads of one connection in one turn ([`READS_PER_TURN`]).
    reads_per_turn: usize,
}

impl EventLoop {
    fn new(broker: Arc<Broker>, poll: Poll, incoming: mpsc::Receiver<Accepted>) -> EventLoop {
        let window = Window::new(broker.config.idle_poll);
        EventLoop {
            broker,
            poll,
            incoming,
            conns: Slab::new(),
            window,
            next_scan: None,
            unfinished: Vec::new(),
            closed: Vec::new(),
            reads_per_turn: READS_PER_TURN,
        }
    }

    fn run(&mut self) {
        let mut events = Events::with_capacity(256);
        loop {
            self.end_round();
            if let Err(e) = self.wait(&mut events) {
                tracing::error!(error = %e, "event loop: poll failed");
                break;
            }
            let mut woken = false;
            for event in events.iter() {
                match event.token() {
                    WAKER => woken = true,
                    Token(key) => {
                        let input = if event.is_read_closed() || event.is_error() {
                            Input::Closing
                        } else if event.is_readable() {
                            Input::Data
                        } else {
                            Input::None
                        };
                        self.ready(key, input, event.is_writable());
                    }
                }
            }
            self.read_unfinished();
            if woken {
                if self.broker.shutdown.is_cancelled() {
                    break;
                }
                self.accept_new();
            }
            self.check_timers();
        }
        self.shut_down(&mut events);
    }

    /// Closes every connection and gives their last replies up to [`DRAIN_TIMEOUT`] to go out.
    fn shut_down(&mut self, events: &mut Events) {
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.close(key, "shutdown");
        }
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        loop {
            self.end_round();
            self.check_timers();
            let now = Instant::now();
            if self.conns.is_empty() || now >= deadline {
                break;
            }
            let timeout = (deadline - now).min(SCAN_INTERVAL);
            if idle_poll::poll_events(&mut self.poll, events, Some(timeout)).is_err() {
                break;
            }
            for event in events.iter() {
                match event.token() {
                    WAKER => {}
                    Token(key) => self.ready(key, Input::None, event.is_writable()),
                }
            }
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.let_go(key);
        }
    }

    /// The round is over: replies held for pipelining peers go out, and connections closed in
    /// it are let go of once their last replies are out (or wait for their socket to take them).
    fn end_round(&mut self) {
        crate::outbox::end_of_round();
        for key in std::mem::take(&mut self.closed) {
            self.let_go_if_sent(key);
        }
    }

    /// Waits for the next round of events: polls without sleeping for this thread's window
    /// first, then sleeps until an event or the next timer. Does not sleep while a connection
    /// has input left from its last turn.
    fn wait(&mut self, events: &mut Events) -> io::Result<()> {
        let busy = !self.unfinished.is_empty();
        if !busy
            && !self.window.current().is_zero()
            && idle_poll::poll_for(&mut self.poll, events, self.window.current())?
        {
            return Ok(());
        }
        let timeout = if busy { Some(Duration::ZERO) } else { self.next_timer() };
        let asleep = Instant::now();
        idle_poll::poll_events(&mut self.poll, events, timeout)?;
        if !busy && !events.is_empty() {
            // (A sleep ended by a timer says nothing about the traffic.)
            self.window.slept(asleep.elapsed());
        }
        Ok(())
    }

    /// Reads the connections that may hold input no edge will announce.
    fn read_unfinished(&mut self) {
        for key in std::mem::take(&mut self.unfinished) {
            if let Some(conn) = self.conns.get_mut(key) {
                conn.queued = false;
            }
            self.ready(key, Input::Closing, false);
        }
    }

    fn accept_new(&mut self) {
        while let Ok(Accepted { stream, peer, permit }) = self.incoming.try_recv() {
            let _ = stream.set_nodelay(true);
            let fd = stream.as_raw_fd();
            let stream = Arc::new(stream);
            let outbox = Arc::new(Outbox::with_sink(stream.clone()));
            let entry = self.conns.vacant_entry();
            let key = entry.key();
            if let Err(e) =
                self.poll.registry().register(&mut SourceFd(&fd), Token(key), Interest::READABLE | Interest::WRITABLE)
            {
                tracing::warn!(%peer, error = %e, "event loop: cannot watch a connection");
                continue;
            }
            let session = Session::open(&self.broker, &outbox, peer, i64::from(fd));
            entry.insert(Conn {
                stream,
                session: Some(session),
                outbox,
                buf: BytesMut::with_capacity(READ_CHUNK),
                partial_since: None,
                paused: false,
                draining_until: None,
                queued: true,
                _permit: permit,
            });
            // Bytes (or a close) that arrived before the registration raise no edge: they are
            // read next round, after the events already waiting (a peer's close that came
            // before this connection's request is seen before the request).
            self.unfinished.push(key);
        }
    }

    /// Handles readiness of connection `key`.
    fn ready(&mut self, key: usize, mut input: Input, writable: bool) {
        let limit = self.broker.config.outbox_limit_bytes;
        let Some(conn) = self.conns.get_mut(key) else { return };
        if conn.session.is_none() {
            // Closed, its last replies waiting for the socket (a peer that is gone makes the
            // write fail, which drops them).
            if writable {
                conn.outbox.writable(usize::MAX);
            }
            self.let_go_if_sent(key);
            return;
        }
        if conn.queued {
            // Read from the `unfinished` list later this round: one turn per round.
            input = Input::None;
        }
        if conn.paused {
            // Whatever is buffered waits; once resumed, the socket is read to its end.
            input = Input::None;
            if writable && conn.outbox.writable(limit) {
                conn.paused = false;
                input = Input::Closing;
            }
        } else if writable {
            conn.outbox.writable(limit);
        }
        if input == Input::None {
            return;
        }
        // A bug met by one connection's input closes that connection, not the thread's others.
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.read(key, input)));
        match read {
            Ok(None) => {}
            Ok(Some(reason)) => self.close(key, reason),
            Err(_) => {
                tracing::error!(key, "event loop: handling a connection's input panicked; closing it");
                self.close(key, "internal error");
            }
        }
    }

    /// Reads connection `key` until the socket is drained (the edge is consumed), its peer must
    /// wait for its replies to drain, or it has had its turn (then it goes on next round); returns
    /// why to close it, if it must close.
    fn read(&mut self, key: usize, input: Input) -> Option<&'static str> {
        let limit = self.broker.config.outbox_limit_bytes;
        let interval = self.scan_interval();
        let EventLoop { broker, conns, next_scan, unfinished, reads_per_turn, .. } = self;
        let conn = conns.get_mut(key)?;
        let session = conn.session.as_mut()?;
        for _ in 0..*reads_per_turn {
            if conn.outbox.is_closed() {
                return Some("write failed");
            }
            if conn.outbox.pending() >= limit {
                conn.paused = true;
                scan_within(next_scan, interval);
                return None;
            }
            conn.buf.reserve(READ_CHUNK);
            let spare = conn.buf.spare_capacity_mut();
            let room = spare.len();
            // SAFETY: the pointer and length describe the buffer's spare capacity, which recv
            // only writes to; the descriptor is open (the connection holds the stream).
            let n = unsafe { libc::recv(conn.stream.as_raw_fd(), spare.as_mut_ptr().cast(), room, 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock => return None,
                    io::ErrorKind::Interrupted => continue,
                    _ => return Some("read error"),
                }
            }
            if n == 0 {
                return Some("peer closed");
            }
            let n = n as usize;
            // SAFETY: recv initialised the first `n` bytes of the spare capacity.
            unsafe { conn.buf.set_len(conn.buf.len() + n) };
            if let Some(reason) = session.handle_input(broker, &mut conn.buf, &conn.outbox) {
                return Some(reason);
            }
            if conn.buf.is_empty() {
                conn.partial_since = None;
            } else {
                conn.partial_since = Some(Instant::now());
                scan_within(next_scan, interval);
            }
            if n < room && input == Input::Data {
                // A short read drained the socket: the next byte raises a new edge. Not so when
                // the peer's close came with this edge: no edge follows it, so read on to the end.
                return None;
            }
        }
        // Its turn is over, the socket maybe not drained: the other connections go first.
        if !conn.queued {
            conn.queued = true;
            unfinished.push(key);
        }
        None
    }

    /// Closes connection `key`: takes it out of the broker, and lets go of it once its last
    /// replies are out (an error, say, or what a peer that closed only its sending side still
    /// reads), within [`DRAIN_TIMEOUT`].
    fn close(&mut self, key: usize, reason: &'static str) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        let Some(session) = conn.session.take() else { return };
        if session.hold_for_disk {
            // Replies waiting for the journal (an error or a timeout notice among them) still
            // go out, in order, once what they acknowledge is on disk.
            let (broker, outbox, seq) = (self.broker.clone(), conn.outbox.clone(), session.last_seq);
            tokio::spawn(async move {
                broker.wait_durable(seq).await;
                outbox.release_durable(seq);
            });
        }
        session.close(&self.broker, &conn.outbox, reason);
        conn.draining_until = Some(Instant::now() + DRAIN_TIMEOUT);
        let interval = self.scan_interval();
        scan_within(&mut self.next_scan, interval);
        self.closed.push(key);
    }

    /// Lets go of connection `key` if it is closed and its last replies are out. (A key in the
    /// round's `closed` list may have been let go and handed to a new connection meanwhile.)
    fn let_go_if_sent(&mut self, key: usize) {
        if self.conns.get(key).is_some_and(|c| c.session.is_none() && c.outbox.pending() == 0) {
            self.let_go(key);
        }
    }

    /// Forgets connection `key`: its socket is shut for writing (the peer reads the end of the
    /// stream) and closed when the last reference to it goes.
    fn let_go(&mut self, key: usize) {
        let Some(conn) = self.conns.try_remove(key) else { return };
        let fd = conn.stream.as_raw_fd();
        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        let _ = conn.stream.shutdown(Shutdown::Write);
    }

    /// How long the thread may sleep: until the next look at its timed connections, if any.
    fn next_timer(&self) -> Option<Duration> {
        self.next_scan.map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// Looks at the timed connections once per [`SCAN_INTERVAL`] (at most): closes those whose
    /// partial packet is overdue, resumes paused ones whose replies have drained, lets go of
    /// closed ones whose last replies are out or overdue.
    fn check_timers(&mut self) {
        let now = Instant::now();
        if self.next_scan.is_none_or(|at| now < at) {
            return;
        }
        let timeout = self.broker.config.partial_packet_timeout;
        let limit = self.broker.config.outbox_limit_bytes;
        let mut overdue = Vec::new();
        let mut resumed = Vec::new();
        let mut done = Vec::new();
        let mut timed = false;
        for (key, conn) in &self.conns {
            if let Some(until) = conn.draining_until {
                if conn.outbox.pending() == 0 || now >= until {
                    done.push(key);
                } else {
                    timed = true;
                }
            } else if conn.paused {
                if conn.outbox.pending() < limit {
                    resumed.push(key);
                } else {
                    timed = true;
                }
            } else if let Some(since) = conn.partial_since {
                if now.duration_since(since) >= timeout {
                    overdue.push(key);
                } else {
                    timed = true;
                }
            }
        }
        self.next_scan = timed.then(|| now + self.scan_interval());
        for key in done {
            self.let_go(key);
        }
        for key in overdue {
            if let Some(conn) = self.conns.get(key) {
                connection::partial_packet_timeout(&conn.outbox);
            }
            self.close(key, "partial packet timeout");
        }
        for key in resumed {
            if let Some(conn) = self.conns.get_mut(key) {
                conn.paused = false;
            }
            self.ready(key, Input::Closing, false);
        }
    }

    fn scan_interval(&self) -> Duration {
        (self.broker.config.partial_packet_timeout / 4).clamp(Duration::from_millis(1), SCAN_INTERVAL)
    }
}

/// A connection now waits on a timer: the thread looks at its timed connections within
/// `interval` (or sooner, if it already meant to).
fn scan_within(next_scan: &mut Option<Instant>, interval: Duration) {
    next_scan.get_or_insert_with(|| Instant::now() + interval);
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use tokio::sync::Semaphore;

    use super::*;

    /// Bytes waiting in a socket's receive queue.
    fn queued(stream: &TcpStream) -> usize {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one c_int to the pointer, which outlives the call.
        let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::FIONREAD, &mut n) };
        assert_eq!(rc, 0, "FIONREAD: {}", io::Error::last_os_error());
        usize::try_from(n).unwrap_or(0)
    }

    #[test]
    fn a_connection_with_more_input_than_a_turn_goes_on_next_round() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _entered = runtime.enter();
        let broker = Broker::new(crate::Config::for_tests());
        let (tx, rx) = mpsc::channel();
        let mut event_loop = EventLoop::new(broker, Poll::new().unwrap(), rx);
        // Short turns, so that a few of them fit the socket's receive buffer.
        event_loop.reads_per_turn = 2;
        let turn = READ_CHUNK * 2;

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (served, peer) = listener.accept().unwrap();
        served.set_nonblocking(true).unwrap();
        // A pile of echo requests, several turns' worth, waiting in the served socket.
        let echo = gearfleet_proto::Packet::req(gearfleet_proto::PacketType::EchoReq, &[b"x"]).to_bytes();
        let pile: Vec<u8> = echo.iter().copied().cycle().take(turn * 8).collect();
        let writer = std::thread::spawn(move || {
            client.write_all(&pile).unwrap();
            client
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while queued(&served) < turn * 3 / 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(queued(&served) >= turn * 3 / 2, "the pile did not arrive");

        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        tx.send(Accepted { stream: served, peer, permit }).unwrap();
        event_loop.accept_new();
        let key = event_loop.conns.iter().next().expect("the connection is served").0;
        assert_eq!(event_loop.unfinished, [key], "a new connection is read in the next round");
        event_loop.read_unfinished();
        assert_eq!(event_loop.unfinished, [key], "its turn ended with input left");
        let left = queued(&event_loop.conns[key].stream);
        assert!(left > 0, "and the input is still there for the next round");
        // An edge for it in the meantime does not give it a second turn this round.
        event_loop.ready(key, Input::Data, false);
        assert_eq!(event_loop.unfinished, [key], "listed once");
        assert!(queued(&event_loop.conns[key].stream) >= left, "not read again before its next turn");
        drop(writer);
    }
}
