//! Answers text admin commands from the broker state, in gearmand's formats.

use gearfleet_proto::admin::{
    AdminCommand, DeadJobRow, FunctionStats, JobRow, PriorityStatusRow, StatusRow, UniqueJobRow, WorkerRow,
    WorkerStats, list_reply,
};

use crate::state::{ConnId, Effects, RetryPolicy, State};

/// What the connection must do after sending the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminAction {
    None,
    /// The connection now receives `fleet status` blocks on every change.
    StartWatch,
    /// Stop the broker (only when `--allow-admin-shutdown`).
    Shutdown,
}

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub fn fleet_status_block(state: &State) -> String {
    list_reply(state.fleet_status(), FunctionStats::to_line)
}

/// Shuts a disconnected connection's socket both ways: the peer sees the connection end, and the
/// thread or task serving it wakes, finds its outbox closed and lets it go.
fn shut_down(fd: i64) {
    let Ok(fd) = i32::try_from(fd) else { return };
    if fd < 0 {
        return;
    }
    // SAFETY: shutdown(2) takes any descriptor and invalidates none. This one is the
    // connection's own socket: it is still open, since the caller holds the state lock and a
    // connection's socket is closed only after it has left the state, which it has done in this
    // same locked section.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}

/// How a connection stands towards the admin token.
#[derive(Debug, Clone, Copy)]
pub struct AdminAuth<'a> {
    /// The broker's admin token, if it has one.
    pub token: Option<&'a str>,
    /// Whether this connection sent the right `auth TOKEN`.
    pub authenticated: bool,
}

/// Runs one admin line against the state.
pub fn run(
    state: &mut State,
    conn: ConnId,
    line: &[u8],
    allow_shutdown: bool,
    auth: &mut AdminAuth<'_>,
    fx: &mut Effects,
) -> (String, AdminAction) {
    let cmd = match AdminCommand::parse(line) {
        Ok(cmd) => cmd,
        Err(e) => return (e.reply(), AdminAction::None),
    };
    if let AdminCommand::Auth(given) = &cmd {
        return match auth.token {
            Some(expected) if !crate::config::token_matches(given, expected) => {
                auth.authenticated = false;
                ("ERR AUTH_FAILED wrong+admin+token\r\n".into(), AdminAction::None)
            }
            _ => {
                auth.authenticated = true;
                ("OK\r\n".into(), AdminAction::None)
            }
        };
    }
    if cmd.mutates() && auth.token.is_some() && !auth.authenticated {
        return ("ERR AUTH_REQUIRED send+auth+TOKEN+first\r\n".into(), AdminAction::None);
    }
    let mut action = AdminAction::None;
    let out = match cmd {
        AdminCommand::Status => list_reply(state.status_rows(), StatusRow::to_line),
        AdminCommand::PriorityStatus => list_reply(state.priority_status_rows(), PriorityStatusRow::to_line),
        AdminCommand::Workers => list_reply(state.worker_rows(), WorkerRow::to_line),
        AdminCommand::Version => format!("OK {VERSION}\n"),
        AdminCommand::GetPid => format!("OK {}\n", std::process::id()),
        AdminCommand::Verbose => "OK INFO\n".into(),
        AdminCommand::ShowJobs => list_reply(state.job_rows(), JobRow::to_line),
        AdminCommand::ShowUniqueJobs => list_reply(state.unique_job_rows(), UniqueJobRow::to_line),
        AdminCommand::CancelJob(handle) => match state.admin_cancel(&handle, fx) {
            Ok(()) => "OK\r\n".into(),
            Err(code) => format!("ERR {code}\r\n"),
        },
        AdminCommand::CreateFunction(name) => {
            state.admin_create_function(&name);
            "OK\r\n".into()
        }
        AdminCommand::DropFunction(name) => match state.admin_drop_function(&name) {
            Ok(()) => "OK\r\n".into(),
            Err(why) => format!("ERR {why}\r\n"),
        },
        AdminCommand::MaxQueue { function, limits } => {
            state.admin_maxqueue(&function, limits);
            "OK\r\n".into()
        }
        AdminCommand::Shutdown { .. } if allow_shutdown => {
            action = AdminAction::Shutdown;
            "OK\r\n".into()
        }
        AdminCommand::Shutdown { .. } => "ERR SHUTDOWN_DISABLED start+with+--allow-admin-shutdown\r\n".into(),
        AdminCommand::FleetStatus => fleet_status_block(state),
        AdminCommand::FleetWorkers => list_reply(state.fleet_workers(), WorkerStats::to_line),
        AdminCommand::FleetWatch => {
            state.set_watching(conn, true);
            action = AdminAction::StartWatch;
            fleet_status_block(state)
        }
        AdminCommand::FleetDrain(id) => format!("OK {}\n", state.set_draining(&id, true, fx)),
        AdminCommand::FleetUndrain(id) => format!("OK {}\n", state.set_draining(&id, false, fx)),
        AdminCommand::FleetDrainSelf => state.drain_own_host(conn, fx).to_line(),
        AdminCommand::FleetDisconnect(target) => {
            let fds = state.disconnect_named(&target, conn, crate::clock::now(), fx);
            for &fd in &fds {
                shut_down(fd);
            }
            format!("OK {}\n", fds.len())
        }
        AdminCommand::FleetRetries { function, limit, initial, max } => {
            let defaults = RetryPolicy::default();
            let parse = |s: Option<String>, default| match s {
                None => Ok(default),
                Some(s) => humantime::parse_duration(&s).map_err(|_| s),
            };
            match (parse(initial, defaults.initial), parse(max, defaults.max)) {
                (Ok(initial), Ok(max)) if initial <= max => {
                    state.set_retry_policy(&function, RetryPolicy { limit, initial, max });
                    "OK\r\n".into()
                }
                (Ok(_), Ok(_)) => "ERR INVALID_ARGUMENTS initial+backoff+exceeds+max\r\n".into(),
                (Err(bad), _) | (_, Err(bad)) => format!("ERR INVALID_ARGUMENTS bad+duration+{bad}\r\n"),
            }
        }
        AdminCommand::ShowDead(function) => list_reply(state.dead_rows(function.as_deref()), DeadJobRow::to_line),
        AdminCommand::RetryDead { function, handle } => {
            format!("OK {}\n", state.admin_retry_dead(&function, handle.as_deref(), fx))
        }
        AdminCommand::PurgeDead { function, handle } => {
            format!("OK {}\n", state.admin_purge_dead(&function, handle.as_deref(), fx))
        }
        // Answered above, before the token check.
        AdminCommand::Auth(_) => "OK\r\n".into(),
    };
    (out, action)
}
