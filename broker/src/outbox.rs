//! A connection's pending output: packets are appended under the broker lock and written to the
//! socket by the connection's writer task, so no socket I/O ever happens while the lock is held.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::BytesMut;
use tokio::sync::Notify;

#[derive(Debug, Default)]
struct Buffers {
    /// Bytes the writer may send.
    ready: BytesMut,
    /// While held: bytes that must wait (behind a durable acknowledgement).
    held: Option<BytesMut>,
}

#[derive(Debug, Default)]
pub struct Outbox {
    buf: Mutex<Buffers>,
    /// Bytes waiting, held ones included, readable without the lock (for back-pressure checks).
    pending: AtomicUsize,
    /// Bytes the writer may send now.
    sendable: AtomicUsize,
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
        let mut bufs = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        let Buffers { ready, held } = &mut *bufs;
        match held {
            Some(held) => write(held),
            None => write(ready),
        }
        let (ready_len, total) = (bufs.ready.len(), bufs.ready.len() + bufs.held.as_ref().map_or(0, |h| h.len()));
        self.pending.store(total, Ordering::Release);
        self.sendable.store(ready_len, Ordering::Release);
        drop(bufs);
        if ready_len > 0 {
            self.ready.notify_one();
        }
    }

    /// From now on, pushed bytes wait until [`Outbox::release`]: replies that acknowledge jobs
    /// must not reach the peer before those jobs are durable, and nothing after them may overtake
    /// them (clients match JOB_CREATED replies to submissions by order).
    pub fn hold(&self) {
        let mut bufs = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        if bufs.held.is_none() {
            bufs.held = Some(BytesMut::new());
        }
    }

    /// Lets the held bytes go, in order, after anything already sendable.
    pub fn release(&self) {
        let mut bufs = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = bufs.held.take()
            && !held.is_empty()
        {
            bufs.ready.extend_from_slice(&held);
            self.sendable.store(bufs.ready.len(), Ordering::Release);
            drop(bufs);
            self.ready.notify_one();
        }
    }

    /// Takes everything pending, leaving `spare` (emptied) in its place so buffers are reused.
    pub fn take(&self, spare: &mut BytesMut) {
        spare.clear();
        let mut bufs = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::swap(&mut bufs.ready, spare);
        self.pending.store(bufs.held.as_ref().map_or(0, |h| h.len()), Ordering::Release);
        self.sendable.store(0, Ordering::Release);
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
