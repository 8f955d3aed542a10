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
    /// While held: bytes that must wait (behind a durable acknowledgement).
    held: Option<BytesMut>,
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
    /// Wakes the writer when it has work, and readers waiting for the buffer to drain.
    ready: Notify,
    drained: Notify,
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
        let Buffers { ready, held, .. } = &mut *bufs;
        match held {
            Some(held) => write(held),
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
        self.pending.store(ready_len + bufs.held.as_ref().map_or(0, BytesMut::len), Ordering::Release);
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

    /// From now on, pushed bytes wait until [`Outbox::release`]: replies that acknowledge jobs
    /// must not reach the peer before those jobs are durable, and nothing after them may overtake
    /// them (clients match JOB_CREATED replies to submissions by order).
    pub fn hold(&self) {
        let mut bufs = self.lock();
        if bufs.held.is_none() {
            bufs.held = Some(BytesMut::new());
        }
    }

    /// Lets the held bytes go, in order, after anything already sendable.
    pub fn release(&self) {
        let mut bufs = self.lock();
        if let Some(held) = bufs.held.take()
            && !held.is_empty()
        {
            bufs.ready.extend_from_slice(&held);
            self.publish_lengths(&bufs);
            drop(bufs);
            self.flush();
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
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}
