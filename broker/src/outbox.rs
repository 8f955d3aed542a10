//! A connection's pending output: packets are appended under the broker lock and written to the
//! socket by the connection's writer task, so no socket I/O ever happens while the lock is held.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::BytesMut;
use tokio::sync::Notify;

#[derive(Debug, Default)]
pub struct Outbox {
    buf: Mutex<BytesMut>,
    /// Bytes waiting, readable without the lock (for back-pressure checks).
    pending: AtomicUsize,
    /// Wakes the writer when bytes arrive, and readers waiting for the buffer to drain.
    ready: Notify,
    drained: Notify,
    closed: AtomicBool,
}

impl Outbox {
    pub fn new() -> Outbox {
        Outbox::default()
    }

    /// Appends bytes with `write` and wakes the writer.
    pub fn push(&self, write: impl FnOnce(&mut BytesMut)) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        let mut buf = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        let was_empty = buf.is_empty();
        write(&mut buf);
        self.pending.store(buf.len(), Ordering::Release);
        drop(buf);
        if was_empty {
            self.ready.notify_one();
        }
    }

    /// Takes everything pending, leaving `spare` (emptied) in its place so buffers are reused.
    pub fn take(&self, spare: &mut BytesMut) {
        spare.clear();
        let mut buf = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::swap(&mut *buf, spare);
        self.pending.store(0, Ordering::Release);
        drop(buf);
        self.drained.notify_waiters();
    }

    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    /// Waits until something is pending (or the outbox is closed).
    pub async fn wait_ready(&self) {
        loop {
            let notified = self.ready.notified();
            if self.pending() > 0 || self.is_closed() {
                return;
            }
            notified.await;
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
