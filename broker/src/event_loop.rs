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
use crate::connection::{self, Session};
use crate::idle_poll::{self, Window};
use crate::outbox::Outbox;

const WAKER: Token = Token(usize::MAX);
const READ_CHUNK: usize = 16 * 1024;
/// How often (at most) a thread looks at its connections that wait on a timer: a partial packet
/// (due within the partial-packet timeout) or a pause for back-pressure whose replies may have
/// drained without the socket saying so (held replies released by the journal).
const SCAN_INTERVAL: Duration = Duration::from_millis(100);

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
        for n in 0..count.max(1) {
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
            let (tx, rx) = mpsc::channel();
            let mut event_loop = EventLoop::new(broker.clone(), poll, rx);
            let runtime = runtime.clone();
            std::thread::Builder::new().name(format!("event-loop-{n}")).spawn(move || {
                let _entered = runtime.enter();
                event_loop.run();
            })?;
            threads.push(Thread { incoming: tx, waker });
        }
        let loops = Arc::new(EventLoops { threads, next: AtomicUsize::new(0) });
        // Shutdown reaches the threads through their wakers.
        let shutdown = broker.shutdown.clone();
        let waking = loops.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            for t in &waking.threads {
                let _ = t.waker.wake();
            }
        });
        Ok(loops)
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
    session: Session,
    outbox: Arc<Outbox>,
    buf: BytesMut,
    /// Part of a packet is buffered: when its last bytes arrived (the rest is due within the
    /// partial-packet timeout).
    partial_since: Option<Instant>,
    /// Not read from until its peer reads its replies (back-pressure).
    paused: bool,
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
}

impl EventLoop {
    fn new(broker: Arc<Broker>, poll: Poll, incoming: mpsc::Receiver<Accepted>) -> EventLoop {
        let window = Window::new(broker.config.idle_poll);
        EventLoop { broker, poll, incoming, conns: Slab::new(), window, next_scan: None }
    }

    fn run(&mut self) {
        let mut events = Events::with_capacity(256);
        loop {
            // The round is over: replies held for pipelining peers go out now.
            crate::outbox::end_of_round();
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
            if woken {
                if self.broker.shutdown.is_cancelled() {
                    break;
                }
                self.accept_new();
            }
            self.check_timers();
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.close(key, "shutdown");
        }
        crate::outbox::end_of_round();
    }

    /// Waits for the next round of events: polls without sleeping for this thread's window
    /// first, then sleeps until an event or the next timer.
    fn wait(&mut self, events: &mut Events) -> io::Result<()> {
        if !self.window.current().is_zero() && idle_poll::poll_for(&mut self.poll, events, self.window.current())? {
            return Ok(());
        }
        let timeout = self.next_timer();
        let asleep = Instant::now();
        match self.poll.poll(events, timeout) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => events.clear(),
            r => r?,
        }
        self.window.slept(asleep.elapsed());
        Ok(())
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
                session,
                outbox,
                buf: BytesMut::with_capacity(READ_CHUNK),
                partial_since: None,
                paused: false,
                _permit: permit,
            });
            // Bytes (or a close) that arrived before the registration raise no edge: read now.
            self.ready(key, Input::Closing, false);
        }
    }

    /// Handles readiness of connection `key`.
    fn ready(&mut self, key: usize, mut input: Input, writable: bool) {
        let limit = self.broker.config.outbox_limit_bytes;
        let Some(conn) = self.conns.get_mut(key) else { return };
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
        if input != Input::None
            && let Some(reason) = self.read(key, input)
        {
            self.close(key, reason);
        }
    }

    /// Reads connection `key` until the socket is drained (the edge is consumed) or its peer
    /// must wait for its replies to drain; returns why to close it, if it must close.
    fn read(&mut self, key: usize, input: Input) -> Option<&'static str> {
        let limit = self.broker.config.outbox_limit_bytes;
        let interval = self.scan_interval();
        let EventLoop { broker, conns, next_scan, .. } = self;
        let conn = conns.get_mut(key)?;
        let mut timed = || {
            next_scan.get_or_insert_with(|| Instant::now() + interval);
        };
        loop {
            if conn.outbox.is_closed() {
                return Some("write failed");
            }
            if conn.outbox.pending() >= limit {
                conn.paused = true;
                timed();
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
            if let Some(reason) = conn.session.handle_input(broker, &mut conn.buf, &conn.outbox) {
                return Some(reason);
            }
            if conn.buf.is_empty() {
                conn.partial_since = None;
            } else {
                conn.partial_since = Some(Instant::now());
                timed();
            }
            if n < room && input == Input::Data {
                // A short read drained the socket: the next byte raises a new edge. Not so when
                // the peer's close came with this edge: no edge follows it, so read on to the end.
                return None;
            }
        }
    }

    /// Takes connection `key` out of the loop and the broker.
    fn close(&mut self, key: usize, reason: &'static str) {
        let Some(conn) = self.conns.try_remove(key) else { return };
        let fd = conn.stream.as_raw_fd();
        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        let Conn { stream, session, outbox, _permit, .. } = conn;
        let broker = self.broker.clone();
        if reason == connection::PROTOCOL_ERROR && session.hold_for_disk {
            // The last replies (the error) still go out, after what they follow.
            tokio::spawn(async move {
                broker.wait_durable(session.last_seq).await;
                outbox.release_durable(session.last_seq);
                session.close(&broker, &outbox, reason);
                let _ = stream.shutdown(Shutdown::Both);
                drop(_permit);
            });
            return;
        }
        session.close(&broker, &outbox, reason);
        let _ = stream.shutdown(Shutdown::Both);
    }

    /// How long the thread may sleep: until the next look at its timed connections, if any.
    fn next_timer(&self) -> Option<Duration> {
        self.next_scan.map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// Looks at the timed connections once per [`SCAN_INTERVAL`] (at most): closes those whose
    /// partial packet is overdue, resumes paused ones whose replies have drained.
    fn check_timers(&mut self) {
        let now = Instant::now();
        if self.next_scan.is_none_or(|at| now < at) {
            return;
        }
        let timeout = self.broker.config.partial_packet_timeout;
        let limit = self.broker.config.outbox_limit_bytes;
        let mut overdue = Vec::new();
        let mut resumed = Vec::new();
        let mut timed = false;
        for (key, conn) in &self.conns {
            if conn.paused {
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
