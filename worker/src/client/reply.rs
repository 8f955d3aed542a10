//! What a client's requests come back as: a job's failure, its progress events, a status.

use bytes::Bytes;

use crate::config::ServerAddr;

/// Why a request or job did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The worker sent WORK_FAIL (or the job was cancelled or timed out).
    #[error("job failed")]
    Failed,
    /// The worker sent WORK_EXCEPTION with this message.
    #[error("job raised an exception: {0}")]
    Exception(String),
    /// The server answered with an ERROR packet.
    #[error("server error {code}: {message}")]
    Server { code: String, message: String },
    /// No server could be reached.
    #[error("cannot connect to {server}: {source}")]
    Connect {
        server: ServerAddr,
        #[source]
        source: std::io::Error,
    },
    /// The connection closed before the reply or the job's result arrived. A foreground job
    /// may still run: the server keeps it while any client waits and drops it otherwise.
    #[error("connection to the server lost")]
    ConnectionLost,
    /// The server sent something that does not fit the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// Progress reported by the worker of a foreground job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEvent {
    /// WORK_STATUS.
    Status { numerator: u64, denominator: u64 },
    /// WORK_DATA.
    Data(Bytes),
    /// WORK_WARNING.
    Warning(Bytes),
}

/// STATUS_RES fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobStatus {
    pub handle: String,
    /// The server knows the job (queued or running).
    pub known: bool,
    pub running: bool,
    pub numerator: u64,
    pub denominator: u64,
}
