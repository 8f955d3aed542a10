//! Answers text admin commands from the broker state, in gearmand's formats.

use gearfleet_proto::admin::{AdminCommand, WorkerStats};

use crate::queue::{ConnId, Effects, RetryPolicy, State};

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
    let mut out = String::new();
    for f in state.fleet_status() {
        out.push_str(&f.to_line());
        out.push('\n');
    }
    out.push_str(".\n");
    out
}

fn fleet_workers_block(rows: Vec<WorkerStats>) -> String {
    let mut out = String::new();
    for w in rows {
        out.push_str(&w.to_line());
        out.push('\n');
    }
    out.push_str(".\n");
    out
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
    let mut out = String::new();
    let mut action = AdminAction::None;
    match cmd {
        AdminCommand::Status => state.admin_status(&mut out),
        AdminCommand::PriorityStatus => state.admin_priority_status(&mut out),
        AdminCommand::Workers => state.admin_workers(&mut out),
        AdminCommand::Version => out = format!("OK {VERSION}\n"),
        AdminCommand::GetPid => out = format!("OK {}\n", std::process::id()),
        AdminCommand::Verbose => out = "OK INFO\n".into(),
        AdminCommand::ShowJobs => state.admin_show_jobs(&mut out),
        AdminCommand::ShowUniqueJobs => state.admin_show_unique_jobs(&mut out),
        AdminCommand::CancelJob(handle) => {
            out = match state.admin_cancel(&handle, fx) {
                Ok(()) => "OK\r\n".into(),
                Err(code) => format!("ERR {code}\r\n"),
            }
        }
        AdminCommand::CreateFunction(name) => {
            state.admin_create_function(&name);
            out = "OK\r\n".into();
        }
        AdminCommand::DropFunction(name) => {
            out = match state.admin_drop_function(&name) {
                Ok(()) => "OK\r\n".into(),
                Err(why) => format!("ERR {why}\r\n"),
            }
        }
        AdminCommand::MaxQueue { function, limits } => {
            state.admin_maxqueue(&function, limits);
            out = "OK\r\n".into();
        }
        AdminCommand::Shutdown { .. } if allow_shutdown => {
            out = "OK\r\n".into();
            action = AdminAction::Shutdown;
        }
        AdminCommand::Shutdown { .. } => out = "ERR SHUTDOWN_DISABLED start+with+--allow-admin-shutdown\r\n".into(),
        AdminCommand::FleetStatus => out = fleet_status_block(state),
        AdminCommand::FleetWorkers => out = fleet_workers_block(state.fleet_workers()),
        AdminCommand::FleetWatch => {
            state.set_watching(conn, true);
            out = fleet_status_block(state);
            action = AdminAction::StartWatch;
        }
        AdminCommand::FleetDrain(id) => {
            let n = state.set_draining(&id, true, fx);
            out = format!("OK {n}\n");
        }
        AdminCommand::FleetUndrain(id) => {
            let n = state.set_draining(&id, false, fx);
            out = format!("OK {n}\n");
        }
        AdminCommand::FleetRetries { function, limit, initial, max } => {
            let defaults = RetryPolicy::default();
            let parse = |s: Option<String>, default| match s {
                None => Ok(default),
                Some(s) => humantime::parse_duration(&s).map_err(|_| s),
            };
            out = match (parse(initial, defaults.initial), parse(max, defaults.max)) {
                (Ok(initial), Ok(max)) if initial <= max => {
                    state.set_retry_policy(&function, RetryPolicy { limit, initial, max });
                    "OK\r\n".into()
                }
                (Ok(_), Ok(_)) => "ERR INVALID_ARGUMENTS initial+backoff+exceeds+max\r\n".into(),
                (Err(bad), _) | (_, Err(bad)) => format!("ERR INVALID_ARGUMENTS bad+duration+{bad}\r\n"),
            }
        }
        AdminCommand::ShowDead(function) => state.admin_show_dead(function.as_deref(), &mut out),
        AdminCommand::RetryDead { function, handle } => {
            out = format!("OK {}\n", state.admin_retry_dead(&function, handle.as_deref(), fx));
        }
        AdminCommand::PurgeDead { function, handle } => {
            out = format!("OK {}\n", state.admin_purge_dead(&function, handle.as_deref(), fx));
        }
        // Answered above, before the token check.
        AdminCommand::Auth(_) => out = "OK\r\n".into(),
    }
    (out, action)
}
