//! A connection's pending output.
//!
//! Packets are appended under the broker lock; no socket I/O ever happens while that lock is held.
//! For plain TCP connections the bytes are then written straight to the socket by whichever thread
//! produced them, as soon as the broker lock is released ([`deferring`] collects the outboxes a
//! locked section touched and flushes them afterwards): a reply costs one `send`, with no task to
//! wake. When the socket's buffer is full the rest waits for the connection's event loop to see
//! the socket writable again ([`Outbox::writable`]). Connections without a direct sink (TLS) go
//! through their writer task.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Buf, BytesMut};
use tokio::sync::Notify;

#[derive(Debug, Default)]
struct Buffers {
    /// Bytes that may be sent, in order.
    ready: BytesMut,
    /// While a batch of requests is handled with its replies held: they collect here.
    open: Option<BytesMut>,
    /// Closed batches of replies waiting for the journal, oldest first: the journal sequence
    /// number each waits for, and its bytes. Anything pushed meanwhile joins the newest.
    held: VecDeque<(u64, BytesMut)>,
    /// Bytes in `open` and `held`.
    held_bytes: usize,
    /// The socket refused bytes: the next write waits for the event loop to see it writable.
    blocked: bool,
}

/// The non-blocking socket of a connection served by an [`crate::event_loop`] thread, which
/// watches it for writability.
pub type Sink = Arc<std::net::TcpStream>;

#[derive(Debug, Default)]
pub struct Outbox {
    buf: Mutex<Buffers>,
    /// Where bytes go directly (plain TCP); None: the writer task writes everything.
    sink: Option<Sink>,
    /// Bytes waiting, held ones included, readable without the lock (for back-pressure checks).
    pending: AtomicUsize,
    /// Bytes the writer may send now.
    sendable: AtomicUsize,
    /// Already in this thread's list of outboxes to flush.
    flush_queued: AtomicBool,
    /// The peer waits on several replies at once (a client with many jobs in flight): its writes
    /// may wait for the end of the event loop's round and share one `send`.
    pipelined: AtomicBool,
    /// Wakes the writer when it has work, readers waiting for the buffer to drain, and the task
    /// that releases held replies.
    ready: Notify,
    drained: Notify,
    held_added: Notify,
    closed: AtomicBool,
}

thread_local! {
    /// Outboxes written to in the current [`deferring`] section of this thread.
    static DEFERRED: RefCell<Option<Vec<Arc<Outbox>>>> = const { RefCell::new(None) };
    /// Pipelined outboxes whose writes wait for the end of this thread's round of events.
    static UNTIL_ROUND_END: RefCell<Vec<Arc<Outbox>>> = const { RefCell::new(Vec::new()) };
    /// Sections ended since the oldest entry of [`UNTIL_ROUND_END`] was deferred.
    static SECTIONS_WAITED: Cell<u32> = const { Cell::new(0) };
    /// This thread is an event loop that calls [`end_of_round`].
    static ROUNDS: Cell<bool> = const { Cell::new(false) };
}

/// How many sections a pipelined outbox's writes wait at most within one round (a round may
/// handle hundreds of events).
const MAX_SECTIONS_WAITED: u32 = 16;

/// Called by an event loop at the end of each round of events: writes what pipelined outboxes
/// deferred to it; from the first call on, this thread defers them.
pub fn end_of_round() {
    ROUNDS.set(true);
    flush_round();
}

fn flush_round() {
    SECTIONS_WAITED.set(0);
    let list = UNTIL_ROUND_END.with(|l| std::mem::take(&mut *l.borrow_mut()));
    write_queued(&list);
    // Keep the allocation for the next round.
    UNTIL_ROUND_END.with(|l| {
        let mut l = l.borrow_mut();
        if l.is_empty() {
            *l = list;
            l.clear();
        }
    });
}

/// Writes outboxes taken off a thread's list, marking them unqueued first: were a flush to panic,
/// the rest would still be queued again by their next push.
fn write_queued(outboxes: &[Arc<Outbox>]) {
    for outbox in outboxes {
        outbox.flush_queued.store(false, Ordering::Release);
    }
    for outbox in outboxes {
        outbox.flush();
    }
}

/// Runs `f`, holding back the socket writes of every outbox it pushes to until it returns; then
/// writes them. Used around sections that hold the broker lock, so sockets are written after the
/// lock is released, once per outbox however many packets it received.
pub fn deferring<R>(f: impl FnOnce() -> R) -> R {
    let outer = DEFERRED.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_some() {
            true
        } else {
            *d = Some(Vec::new());
            false
        }
    });
    if outer {
        return f();
    }
    // Flush even if `f` panics: no outbox may be left with bytes nobody will write.
    struct Flush;
    impl Drop for Flush {
        fn drop(&mut self) {
            let list = DEFERRED.with(|d| d.borrow_mut().take()).unwrap_or_default();
            let rounds = ROUNDS.get();
            let mut now = Vec::new();
            for outbox in list {
                if rounds && outbox.pipelined.load(Ordering::Relaxed) {
                    // Stays queued (flush_queued) in the round's list: pushes from later sections,
                    // on this thread or another, join it there, so its bytes go out when this
                    // thread's round ends (or after its 16th section), even if the peer has meanwhile
                    // stopped being pipelined.
                    UNTIL_ROUND_END.with(|l| l.borrow_mut().push(outbox));
                } else {
                    now.push(outbox);
                }
            }
            write_queued(&now);
            if UNTIL_ROUND_END.with(|l| !l.borrow().is_empty()) {
                let waited = SECTIONS_WAITED.get() + 1;
                SECTIONS_WAITED.set(waited);
                if waited >= MAX_SECTIONS_WAITED {
                    flush_round();
                }
            }
        }
    }
    let _flush = Flush;
    f()
}

impl Outbox {
    /// An outbox whose bytes only its writer task writes.
    pub fn new() -> Outbox {
        Outbox::default()
    }

    /// An outbox that writes to `sink` directly when it can.
    pub fn with_sink(sink: Sink) -> Outbox {
        Outbox { sink: Some(sink), ..Outbox::default() }
    }

    /// Whether the peer waits on several replies at once (see [`end_of_round`]).
    pub fn set_pipelined(&self, pipelined: bool) {
        self.pipelined.store(pipelined, Ordering::Relaxed);
    }

    pub fn is_pipelined(&self) -> bool {
        self.pipelined.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, Buffers> {
        self.buf.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends bytes with `write` and gets them on their way: written now (direct sink, outside a
    /// [`deferring`] section), when the section ends (inside one), or by the writer task.
    pub fn push(self: &Arc<Self>, write: impl FnOnce(&mut BytesMut)) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        let mut bufs = self.lock();
        let Buffers { ready, open, held, held_bytes, .. } = &mut *bufs;
        // Nothing may overtake replies that wait for the disk.
        let target = match (open, held.back_mut()) {
            (Some(open), _) => Some(open),
            (None, Some((_, newest))) => Some(newest),
            (None, None) => None,
        };
        match target {
            Some(target) => {
                let before = target.len();
                write(target);
                *held_bytes += target.len() - before;
            }
            None => write(ready),
        }
        let ready_len = self.publish_lengths(&bufs);
        drop(bufs);
        if ready_len == 0 {
            return;
        }
        if self.sink.is_none() {
            self.ready.notify_one();
            return;
        }
        let deferred = DEFERRED.with(|d| match d.borrow_mut().as_mut() {
            Some(list) => {
                if !self.flush_queued.swap(true, Ordering::AcqRel) {
                    list.push(self.clone());
                }
                true
            }
            None => false,
        });
        if !deferred {
            self.flush();
        }
    }

    /// Stores the buffer lengths for lock-free readers; returns the sendable length.
    fn publish_lengths(&self, bufs: &Buffers) -> usize {
        let ready_len = bufs.ready.len();
        self.pending.store(ready_len + bufs.held_bytes, Ordering::Release);
        self.sendable.store(ready_len, Ordering::Release);
        ready_len
    }

    /// Writes what is sendable to the direct sink, unless the socket refused bytes before (the
    /// event loop writes on once it is writable) or there is no sink (then the writer task is
    /// woken).
    fn flush(&self) {
        let Some(sink) = &self.sink else {
            self.ready.notify_one();
            return;
        };
        let mut bufs = self.lock();
        if bufs.blocked || self.closed.load(Ordering::Relaxed) && bufs.ready.is_empty() {
            return;
        }
        self.write_to(sink, &mut bufs);
    }

    /// Writes as much as the socket takes without waiting. When it refuses bytes, marks the
    /// outbox blocked: the socket's edge to writable reaches its event loop
    /// ([`Outbox::writable`]).
    fn write_to(&self, sink: &Sink, bufs: &mut Buffers) {
        let before = bufs.ready.len();
        while !bufs.ready.is_empty() {
            match io::Write::write(&mut &**sink, &bufs.ready) {
                Ok(n) => bufs.ready.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    bufs.blocked = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    // The peer is gone; its event loop hears of it from the socket.
                    bufs.ready.clear();
                    self.closed.store(true, Ordering::Relaxed);
                    break;
                }
            }
        }
        if bufs.ready.is_empty() {
            // Start over at the front of the allocation instead of growing past it.
            bufs.ready.clear();
        }
        self.publish_lengths(bufs);
        if bufs.ready.len() < before {
            self.drained.notify_waiters();
        }
    }

    /// From now on, pushed bytes are held until [`Outbox::release_after`] closes the batch:
    /// replies that acknowledge jobs must not reach the peer before those jobs are durable, and
    /// nothing after them may overtake them (clients match JOB_CREATED replies to submissions by
    /// order).
    pub fn hold(&self) {
        let mut bufs = self.lock();
        if bufs.open.is_none() {
            bufs.open = Some(BytesMut::new());
        }
    }

    /// Closes the batch opened by [`Outbox::hold`]: its replies go out once the journal is durable
    /// up to `seq` (at once for 0, unless earlier replies still wait), in order. The caller does
    /// not wait: it goes on reading requests while the disk catches up.
    pub fn release_after(&self, seq: u64) {
        let mut bufs = self.lock();
        let Some(batch) = bufs.open.take() else { return };
        match bufs.held.back_mut() {
            // Nothing to wait for beyond what the newest held batch waits for: join it.
            Some((newest, bytes)) if seq <= *newest => bytes.extend_from_slice(&batch),
            _ => bufs.held.push_back((seq, batch)),
        }
        drop(bufs);
        // A batch that waits for nothing, with nothing held before it, goes out at once.
        self.release_durable(0);
        self.held_added.notify_one();
    }

    /// Sends every held batch the journal has made durable (`durable` is its durable sequence).
    pub fn release_durable(&self, durable: u64) {
        let mut bufs = self.lock();
        let mut released = false;
        while bufs.held.front().is_some_and(|(seq, _)| *seq <= durable) {
            let Some((_, batch)) = bufs.held.pop_front() else { break };
            bufs.held_bytes -= batch.len();
            bufs.ready.extend_from_slice(&batch);
            released = true;
        }
        if released {
            self.publish_lengths(&bufs);
            drop(bufs);
            self.flush();
        }
    }

    /// Waits until a batch is held and returns the sequence number the oldest one waits for;
    /// None once the outbox is closed.
    pub async fn oldest_held(&self) -> Option<u64> {
        loop {
            let notified = self.held_added.notified();
            if let Some((seq, _)) = self.lock().held.front() {
                return Some(*seq);
            }
            if self.is_closed() {
                return None;
            }
            notified.await;
        }
    }

    /// Takes everything sendable, leaving `spare` (emptied) in its place so buffers are reused
    /// (the writer task of an outbox without a direct sink).
    pub fn take(&self, spare: &mut BytesMut) {
        spare.clear();
        let mut bufs = self.lock();
        std::mem::swap(&mut bufs.ready, spare);
        self.publish_lengths(&bufs);
        drop(bufs);
        self.drained.notify_waiters();
    }

    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    /// Waits until something may be sent (or the outbox is closed).
    pub async fn wait_ready(&self) {
        loop {
            let notified = self.ready.notified();
            if self.sendable.load(Ordering::Acquire) > 0 || self.is_closed() {
                return;
            }
            notified.await;
        }
    }

    /// For an event loop's connection that became writable: writes what the socket refused
    /// before. Returns whether the outbox is now below `limit` bytes (its peer may be read again).
    pub fn writable(&self, limit: usize) -> bool {
        if let Some(sink) = &self.sink {
            let mut bufs = self.lock();
            if bufs.blocked {
                bufs.blocked = false;
                self.write_to(sink, &mut bufs);
            }
        }
        self.pending() < limit
    }

    /// Waits until fewer than `limit` bytes are pending: a peer that does not read its replies
    /// stops being read from, instead of growing the broker's memory.
    pub async fn wait_below(&self, limit: usize) {
        loop {
            let notified = self.drained.notified();
            if self.pending() < limit || self.is_closed() {
                return;
            }
            notified.await;
        }
    }

    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.ready.notify_one();
        self.drained.notify_waiters();
        self.held_added.notify_one();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    /// An outbox writing straight to a socket, and the socket's other end.
    fn outbox_and_peer() -> (Arc<Outbox>, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (stream, _) = listener.accept().unwrap();
        stream.set_nonblocking(true).unwrap();
        (Arc::new(Outbox::with_sink(Arc::new(stream))), peer)
    }

    /// Bytes the peer can read right now (loopback delivers within the sender's `send`).
    fn readable_now(peer: &mut std::net::TcpStream) -> Vec<u8> {
        peer.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 256];
        let n = match peer.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => panic!("reading: {e}"),
        };
        buf[..n].to_vec()
    }

    /// A pipelined outbox and its peer, on a thread that has ended a round once (so it holds
    /// replies).
    fn pipelined_on_a_looping_thread() -> (Arc<Outbox>, std::net::TcpStream) {
        let (outbox, peer) = outbox_and_peer();
        outbox.set_pipelined(true);
        end_of_round();
        (outbox, peer)
    }

    fn push_in_section(outbox: &Arc<Outbox>, bytes: &'static [u8]) {
        deferring(|| outbox.push(|b| b.extend_from_slice(bytes)));
    }

    // Each test runs on a thread of its own: the thread-local round state starts fresh.

    #[test]
    fn a_pipelined_peer_gets_a_rounds_replies_in_one_write_when_the_round_ends() {
        let (outbox, mut peer) = pipelined_on_a_looping_thread();
        push_in_section(&outbox, b"one,");
        push_in_section(&outbox, b"two");
        assert_eq!(readable_now(&mut peer), b"", "held until the round ends");
        end_of_round();
        assert_eq!(readable_now(&mut peer), b"one,two", "both replies in one send");
    }

    #[test]
    fn other_peers_get_their_replies_when_the_section_ends() {
        let (outbox, mut peer) = outbox_and_peer();
        end_of_round();
        push_in_section(&outbox, b"one");
        assert_eq!(readable_now(&mut peer), b"one");
    }

    #[test]
    fn a_thread_that_ends_no_rounds_holds_nothing_back() {
        let (outbox, mut peer) = outbox_and_peer();
        outbox.set_pipelined(true);
        push_in_section(&outbox, b"one");
        assert_eq!(readable_now(&mut peer), b"one");
    }

    #[test]
    fn a_long_round_writes_held_replies_after_a_bounded_number_of_sections() {
        let (outbox, mut peer) = pipelined_on_a_looping_thread();
        push_in_section(&outbox, b"held");
        for _ in 1..MAX_SECTIONS_WAITED - 1 {
            deferring(|| {});
        }
        assert_eq!(readable_now(&mut peer), b"", "still within the bound");
        deferring(|| {});
        assert_eq!(readable_now(&mut peer), b"held");
        // The count starts over for the next held reply.
        push_in_section(&outbox, b"again");
        assert_eq!(readable_now(&mut peer), b"");
    }

    #[test]
    fn a_pipelined_outbox_written_from_another_section_stays_queued_once() {
        let (outbox, mut peer) = pipelined_on_a_looping_thread();
        for _ in 0..3 {
            push_in_section(&outbox, b"x");
        }
        assert_eq!(UNTIL_ROUND_END.with(|l| l.borrow().len()), 1);
        end_of_round();
        assert_eq!(readable_now(&mut peer), b"xxx");
        assert!(UNTIL_ROUND_END.with(|l| l.borrow().is_empty()));
    }

    #[test]
    fn a_full_socket_is_written_on_when_its_loop_sees_it_writable() {
        let (outbox, mut peer) = outbox_and_peer();
        let total = 8 << 20;
        outbox.push(|b| b.resize(total, b'x'));
        let left = outbox.pending();
        assert!(left > 0, "the socket took all 8 MiB at once; the test needs a fuller one");
        outbox.push(|b| b.extend_from_slice(b"end"));
        assert_eq!(outbox.pending(), left + 3, "a blocked socket is not written to by a push");
        assert!(!outbox.writable(left), "nothing was read: still at or above the limit");

        peer.set_nonblocking(true).unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let (mut got, mut last) = (0, Vec::new());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while got < total + 3 && std::time::Instant::now() < deadline {
            match peer.read(&mut buf) {
                Ok(n) => {
                    got += n;
                    last.extend_from_slice(&buf[..n]);
                    last.drain(..last.len().saturating_sub(3));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("reading: {e}"),
            }
            outbox.writable(usize::MAX);
        }
        assert_eq!(got, total + 3, "every byte arrives");
        assert_eq!(last, b"end", "in order");
        assert_eq!(outbox.pending(), 0);
        assert!(outbox.writable(1));
    }
}
