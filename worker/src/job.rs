//! The job context a handler receives, and what a handler returns.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use gearfleet_proto::{Packet, PacketType};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// Why a job's cancellation token fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CancelReason {
    /// The worker was draining and the force-stop timeout passed; the job is failed.
    ForceStop,
    /// The function's timeout (CAN_DO_TIMEOUT) passed; the server has failed the job.
    Timeout,
    /// The connection to the server dropped; the server re-queues the job for another worker.
    ConnectionLost,
}

impl CancelReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CancelReason::ForceStop => "force_stop",
            CancelReason::Timeout => "timeout",
            CancelReason::ConnectionLost => "connection_lost",
        }
    }
}

/// One assigned job. Cheap to clone: a handler may hand copies to sub-tasks, which can report
/// progress and watch for cancellation too. Reports sent after the job has ended are dropped.
#[derive(Debug, Clone)]
pub struct Job {
    function: Arc<str>,
    handle: Bytes,
    unique: Bytes,
    payload: Bytes,
    updates: mpsc::Sender<Packet>,
    token: CancellationToken,
    reason: Arc<OnceLock<CancelReason>>,
}

impl Job {
    pub(crate) fn new(
        function: Arc<str>,
        handle: Bytes,
        unique: Bytes,
        payload: Bytes,
        updates: mpsc::Sender<Packet>,
    ) -> Job {
        Job {
            function,
            handle,
            unique,
            payload,
            updates,
            token: CancellationToken::new(),
            reason: Arc::new(OnceLock::new()),
        }
    }

    /// A job that is not connected to any server: reports go nowhere. For unit-testing
    /// handlers.
    pub fn detached(function: &str, payload: impl Into<Bytes>) -> Job {
        let (tx, _) = mpsc::channel(1);
        Job::new(Arc::from(function), Bytes::from_static(b"H:detached:0"), Bytes::new(), payload.into(), tx)
    }

    /// The function name the job was submitted to.
    pub fn function(&self) -> &str {
        &self.function
    }

    /// The server's job handle, e.g. `H:broker-0:42`.
    pub fn handle(&self) -> &str {
        std::str::from_utf8(&self.handle).unwrap_or("<binary handle>")
    }

    /// The submitter's unique key (empty when none was given).
    pub fn unique(&self) -> &[u8] {
        &self.unique
    }

    /// The unique key as text (lossy for non-UTF-8 keys).
    pub fn unique_str(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.unique)
    }

    /// The job's input.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// Reports progress as `numerator / denominator` (WORK_STATUS).
    pub async fn status(&self, numerator: u64, denominator: u64) {
        let (n, d) = (numerator.to_string(), denominator.to_string());
        self.send(Packet::req(PacketType::WorkStatus, &[&self.handle, n.as_bytes(), d.as_bytes()])).await;
    }

    /// Sends a chunk of partial output to the waiting clients (WORK_DATA).
    pub async fn data(&self, chunk: impl AsRef<[u8]>) {
        self.send(Packet::req(PacketType::WorkData, &[&self.handle, chunk.as_ref()])).await;
    }

    /// Sends a warning to the waiting clients (WORK_WARNING).
    pub async fn warning(&self, message: impl AsRef<[u8]>) {
        self.send(Packet::req(PacketType::WorkWarning, &[&self.handle, message.as_ref()])).await;
    }

    async fn send(&self, packet: Packet) {
        if self.updates.send(packet).await.is_err() {
            tracing::debug!(handle = self.handle(), "job already ended; report dropped");
        }
    }

    /// Resolves when the job should stop: the worker is force-stopping, the function's timeout
    /// passed, or the connection to the server dropped. See [`Job::cancel_reason`].
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// The job's cancellation token, for sub-tasks, blocking code or child processes.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Why the job was cancelled, once it has been.
    pub fn cancel_reason(&self) -> Option<CancelReason> {
        self.reason.get().copied()
    }

    /// Cancels the job's token for `reason` (the first reason wins).
    pub(crate) fn cancel(&self, reason: CancelReason) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }
}

/// A handler's successful result: the bytes sent with WORK_COMPLETE, and optionally a function
/// to pass them on to as a background job (chaining).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobOutput {
    pub data: Bytes,
    /// Submit `data` to this function (SUBMIT_JOB_BG) before completing. Overrides the
    /// function's static `next`.
    pub next: Option<String>,
    /// Unique key for the chained job (default: none, so no coalescing).
    pub next_unique: Option<String>,
}

impl JobOutput {
    pub fn new(data: impl Into<Bytes>) -> JobOutput {
        JobOutput { data: data.into(), next: None, next_unique: None }
    }

    /// Chains the output to `function`.
    pub fn with_next(mut self, function: impl Into<String>) -> JobOutput {
        self.next = Some(function.into());
        self
    }

    /// Sets the unique key of the chained job.
    pub fn with_next_unique(mut self, unique: impl Into<String>) -> JobOutput {
        self.next_unique = Some(unique.into());
        self
    }
}

impl From<Bytes> for JobOutput {
    fn from(b: Bytes) -> JobOutput {
        JobOutput::new(b)
    }
}

impl From<Vec<u8>> for JobOutput {
    fn from(b: Vec<u8>) -> JobOutput {
        JobOutput::new(b)
    }
}

impl From<String> for JobOutput {
    fn from(s: String) -> JobOutput {
        JobOutput::new(s)
    }
}

impl From<&'static str> for JobOutput {
    fn from(s: &'static str) -> JobOutput {
        JobOutput::new(s)
    }
}

impl From<&'static [u8]> for JobOutput {
    fn from(s: &'static [u8]) -> JobOutput {
        JobOutput::new(s)
    }
}

impl From<()> for JobOutput {
    fn from(_: ()) -> JobOutput {
        JobOutput::default()
    }
}

/// A handler's failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// WORK_FAIL: the job failed, without details.
    #[error("job failed")]
    Fail,
    /// WORK_EXCEPTION with a message; terminal (no WORK_FAIL follows). Clients that did not ask
    /// for exceptions see a plain failure.
    #[error("job raised an exception: {0}")]
    Exception(String),
}

impl JobError {
    /// An exception carrying `message`.
    pub fn exception(message: impl std::fmt::Display) -> JobError {
        JobError::Exception(message.to_string())
    }
}
