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

/// The `WORK_FAIL`/`WORK_EXCEPTION` text of a job that ran past its function's timeout.
pub const TIMEOUT_MESSAGE: &[u8] = b"gearfleet: job timed out";
