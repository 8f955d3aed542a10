//! A connection's pending output.
//!
//! Packets are appended under the broker lock; no socket I/O ever happens while that lock is held.
//! For plain TCP connections the bytes are then written straight to the socket by whichever task
//! produced them, as soon as the broker lock is released ([`deferring`] collects the outboxes a
//! locked section touched and flushes them afterwards): a reply costs one `send`, with no task to
//! wake. Only when the socket's buffer is full does the connection's writer task take over, waiting
//! for the socket to become writable. Connections without a direct sink (TLS) always go through
//! their writer task.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Buf, BytesMut};
use tokio::net::tcp::OwnedWriteHalf;
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
    /// The socket refused bytes: the writer task owns the next write (once the socket is writable).
    blocked: bool,
}

#[derive(Debug, Default)]
pub struct Outbox {
    buf: Mutex<Buffers>,
    /// Where bytes go directly (plain TCP); None: the writer task writes everything.
    sink: Option<Arc<OwnedWriteHalf>>,
    /// Bytes waiting, held ones included, readable without the lock (for back-pressure checks).
    pending: AtomicUsize,
    /// Bytes the writer may send now.
    sendable: AtomicUsize,
    /// Already in this thread's list of outboxes to flush.
    flush_queued: AtomicBool,
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
            for outbox in list {
                outbox.flush_queued.store(false, Ordering::Release);
                outbox.flush();
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
    pub fn with_sink(sink: Arc<OwnedWriteHalf>) -> Outbox {
        Outbox { sink: Some(sink), ..Outbox::default() }
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

    /// Writes what is sendable to the direct sink, unless the writer task owns the socket (it
    /// refused bytes before) or there is no sink (then the writer task is woken).
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
    /// outbox blocked and wakes the writer task to wait for writability.
    fn write_to(&self, sink: &OwnedWriteHalf, bufs: &mut Buffers) {
        let before = bufs.ready.len();
        while !bufs.ready.is_empty() {
            match sink.try_write(&bufs.ready) {
                Ok(n) => bufs.ready.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    bufs.blocked = true;
                    self.ready.notify_one();
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    bufs.ready.clear();
                    self.closed.store(true, Ordering::Relaxed);
                    self.ready.notify_one();
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

    /// The writer task of an outbox with a direct sink: whenever the socket refused bytes, waits
    /// until it is writable and writes on. Returns when the outbox is closed and empty, or the
    /// socket fails.
    pub async fn write_blocked(&self) {
        let Some(sink) = &self.sink else { return };
        loop {
            self.wait_ready().await;
            let blocked = self.lock().blocked;
            if blocked || self.sendable.load(Ordering::Acquire) > 0 {
                if sink.writable().await.is_err() {
                    self.close();
                    return;
                }
                let mut bufs = self.lock();
                bufs.blocked = false;
                self.write_to(sink, &mut bufs);
                continue;
            }
            if self.is_closed() {
                return;
            }
        }
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
