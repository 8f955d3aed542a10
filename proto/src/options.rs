//! Strings peers exchange beyond packet types: `OPTION_REQ` names and the texts of gearfleet's own
//! protocol extensions. One home, so the broker, the SDK and the operator cannot drift apart.

/// `OPTION_REQ exceptions`: the client wants `WORK_EXCEPTION` packets (otherwise it gets
/// `WORK_FAIL` in their place). Standard Gearman.
pub const EXCEPTIONS: &[u8] = b"exceptions";

/// `OPTION_REQ gearfleet-retain-outcomes`: gearfleet's extension for a client that must not lose
/// a result across its own reconnects (the operator's Job controller). The broker keeps the
/// outcome of the connection's jobs for a while and answers a later submission with the same
/// function and unique key from it instead of running the job again.
pub const RETAIN_OUTCOMES: &[u8] = b"gearfleet-retain-outcomes";

/// `OPTION_REQ gearfleet-resume`: gearfleet's extension for a worker that keeps running a job when
/// its connection drops, and after it reconnects to the same broker takes the job back (a
/// `WORK_STATUS` for its handle) or delivers its outcome (`WORK_COMPLETE`, `WORK_FAIL`,
/// `WORK_EXCEPTION`). The broker holds such a worker's jobs of retaining clients for a while
/// instead of handing them to another worker, also across its own restart, and answers a take-back
/// it cannot honour with `ERROR job_not_found`, upon which the worker abandons the job.
pub const RESUME: &[u8] = b"gearfleet-resume";

/// The `WORK_FAIL`/`WORK_EXCEPTION` text of a job that ran past its function's timeout.
pub const TIMEOUT_MESSAGE: &[u8] = b"gearfleet: job timed out";
