//! The text admin protocol: one command per line, answered by a single `OK …`/`ERR …` line or by
//! a list of lines closed by a line holding a single `.`.
//!
//! gearmand's commands are kept with its exact output formats so `gearadmin` and monitoring tools
//! work unchanged. gearfleet adds a `fleet` family that carries what the operator needs: per
//! function queue depths by priority, per worker state, a live watch, and drain control.

use std::fmt::Write as _;

/// A parsed admin command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminCommand {
    /// `status`: `FUNCTION\tTOTAL\tRUNNING\tAVAILABLE_WORKERS` per function.
    Status,
    /// `workers`: `FD IP CLIENT-ID : FUNCTION ...` per connection.
    Workers,
    /// `version`: `OK <version>`.
    Version,
    /// `getpid`: `OK <pid>`.
    GetPid,
    /// `verbose`: `OK <level>`.
    Verbose,
    /// `prioritystatus`: `FUNCTION\tHIGH\tNORMAL\tLOW\tAVAILABLE_WORKERS` per function.
    PriorityStatus,
    /// `show jobs`: `HANDLE\tRETRIES\tIGNORED\tQUEUED` per job.
    ShowJobs,
    /// `show unique jobs`: `UNIQUE\tHANDLE` per job with a unique key.
    ShowUniqueJobs,
    /// `cancel job HANDLE`.
    CancelJob(String),
    /// `create function NAME`.
    CreateFunction(String),
    /// `drop function NAME`.
    DropFunction(String),
    /// `maxqueue FUNCTION [MAX]` or `maxqueue FUNCTION HIGH NORMAL LOW`; `None` clears the limit.
    /// A limit of 0 means unlimited, as in gearmand.
    MaxQueue { function: String, limits: Option<[u32; 3]> },
    /// `shutdown [graceful]`.
    Shutdown { graceful: bool },
    /// `fleet status`: one [`FunctionStats`] line per function.
    FleetStatus,
    /// `fleet workers`: one [`WorkerStats`] line per worker connection.
    FleetWorkers,
    /// `fleet watch`: a `fleet status` block now and again after every change, until the
    /// connection closes.
    FleetWatch,
    /// `fleet drain TARGET`: stop assigning jobs to the connections TARGET names (see
    /// [`AdminCommand::FleetDisconnect`] for what it matches).
    FleetDrain(String),
    /// `fleet undrain TARGET`: assign jobs to them again.
    FleetUndrain(String),
    /// `fleet drain-self`: drain every other connection from the caller's own IP (its pod) and
    /// answer `OK CONNECTIONS BUSY` ([`DrainSelfReply`]). Open without the admin token: it reaches
    /// only the caller's own host, which is what a pod's pre-stop hook needs.
    FleetDrainSelf,
    /// `fleet disconnect TARGET`: close the connections TARGET names at once, as if they had
    /// dropped. TARGET matches a connection whose client id equals it, whose peer address
    /// (`IP:PORT`, as `fleet workers` prints it) equals it, or whose peer IP equals it (a bare IP
    /// names every connection from that host).
    FleetDisconnect(String),
    /// `fleet retries FUNCTION LIMIT [INITIAL MAX]`: the retry policy for the function's failed
    /// background jobs; INITIAL and MAX are durations such as `1s`, `5m`.
    FleetRetries { function: String, limit: u32, initial: Option<String>, max: Option<String> },
    /// `show dead [FUNCTION]`: dead-lettered jobs, `HANDLE\tFUNCTION\tATTEMPTS\tERROR` each.
    ShowDead(Option<String>),
    /// `retry dead FUNCTION [HANDLE]`: queue dead-lettered jobs again with fresh tries.
    RetryDead { function: String, handle: Option<String> },
    /// `purge dead FUNCTION [HANDLE]`: forget dead-lettered jobs.
    PurgeDead { function: String, handle: Option<String> },
    /// `auth TOKEN`: unlocks the commands that change state on a broker started with an admin
    /// token (a gearfleet extension).
    Auth(String),
}

impl AdminCommand {
    /// Whether the command changes the broker's state (jobs, queues, workers, the process), so that
    /// a broker with an admin token answers it only on an authenticated connection. Read-only
    /// commands (`status`, `workers`, `fleet status`, `show …`) stay open for monitoring tools.
    pub fn mutates(&self) -> bool {
        matches!(
            self,
            AdminCommand::CancelJob(_)
                | AdminCommand::CreateFunction(_)
                | AdminCommand::DropFunction(_)
                | AdminCommand::MaxQueue { .. }
                | AdminCommand::Shutdown { .. }
                | AdminCommand::FleetDrain(_)
                | AdminCommand::FleetUndrain(_)
                | AdminCommand::FleetDisconnect(_)
                | AdminCommand::FleetRetries { .. }
                | AdminCommand::RetryDead { .. }
                | AdminCommand::PurgeDead { .. }
        )
    }
}

/// An admin line that is not a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    #[error("unknown command {0}")]
    Unknown(String),
    #[error("incomplete or invalid arguments for {0}")]
    Arguments(String),
    #[error("unknown show arguments")]
    UnknownShow,
}

impl AdminError {
    /// The reply line, in gearmand's wording where gearmand has one.
    pub fn reply(&self) -> String {
        match self {
            AdminError::Unknown(cmd) => format!("ERR UNKNOWN_COMMAND Unknown+server+command{cmd}\r\n"),
            AdminError::Arguments(cmd) => {
                format!("ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this+command+{cmd}\r\n")
            }
            AdminError::UnknownShow => "ERR UNKNOWN_SHOW_ARGUMENTS\r\n".to_string(),
        }
    }
}

impl AdminCommand {
    /// Parses one admin line (without its line ending). Command words are case-insensitive.
    pub fn parse(line: &[u8]) -> Result<AdminCommand, AdminError> {
        let text = String::from_utf8_lossy(line);
        let words: Vec<&str> = text.split_ascii_whitespace().collect();
        let Some(first) = words.first() else {
            return Err(AdminError::Unknown(String::new()));
        };
        let cmd = first.to_ascii_lowercase();
        let arg = |i: usize| words.get(i).map(|s| s.to_string());
        let word_is = |i: usize, w: &str| words.get(i).is_some_and(|s| s.eq_ignore_ascii_case(w));
        let args_err = || AdminError::Arguments(first.to_string());
        match cmd.as_str() {
            "status" => Ok(AdminCommand::Status),
            "workers" => Ok(AdminCommand::Workers),
            "version" => Ok(AdminCommand::Version),
            "getpid" => Ok(AdminCommand::GetPid),
            "verbose" => Ok(AdminCommand::Verbose),
            "prioritystatus" => Ok(AdminCommand::PriorityStatus),
            "show" => match words.len() {
                2 if word_is(1, "jobs") => Ok(AdminCommand::ShowJobs),
                3 if word_is(1, "unique") && word_is(2, "jobs") => Ok(AdminCommand::ShowUniqueJobs),
                2 if word_is(1, "dead") => Ok(AdminCommand::ShowDead(None)),
                3 if word_is(1, "dead") => Ok(AdminCommand::ShowDead(arg(2))),
                _ => Err(AdminError::UnknownShow),
            },
            "retry" | "purge" if (3..=4).contains(&words.len()) && word_is(1, "dead") => {
                let function = arg(2).unwrap_or_default();
                let handle = arg(3);
                Ok(if cmd == "retry" {
                    AdminCommand::RetryDead { function, handle }
                } else {
                    AdminCommand::PurgeDead { function, handle }
                })
            }
            "retry" | "purge" => Err(args_err()),
            "cancel" if words.len() == 3 && word_is(1, "job") => {
                Ok(AdminCommand::CancelJob(arg(2).unwrap_or_default()))
            }
            "cancel" => Err(args_err()),
            "create" if words.len() == 3 && word_is(1, "function") => {
                Ok(AdminCommand::CreateFunction(arg(2).unwrap_or_default()))
            }
            "create" => Err(args_err()),
            "drop" if words.len() == 3 && word_is(1, "function") => {
                Ok(AdminCommand::DropFunction(arg(2).unwrap_or_default()))
            }
            "drop" => Err(args_err()),
            "maxqueue" => {
                let function = arg(1).ok_or_else(args_err)?;
                // gearmand reads the numbers with atoi: negatives become 0 (unlimited).
                let num = |s: &str| -> Result<u32, AdminError> {
                    s.parse::<i64>().map(|v| v.clamp(0, i64::from(u32::MAX)) as u32).map_err(|_| args_err())
                };
                let limits = match words.len() {
                    2 => None,
                    3 | 4 => {
                        let n = num(words[2])?;
                        Some([n, n, n])
                    }
                    5 => Some([num(words[2])?, num(words[3])?, num(words[4])?]),
                    _ => return Err(args_err()),
                };
                Ok(AdminCommand::MaxQueue { function, limits })
            }
            "shutdown" => match words.len() {
                1 => Ok(AdminCommand::Shutdown { graceful: false }),
                2 if word_is(1, "graceful") => Ok(AdminCommand::Shutdown { graceful: true }),
                _ => Err(args_err()),
            },
            "fleet" => match (words.get(1).map(|w| w.to_ascii_lowercase()).as_deref(), words.len()) {
                (Some("status"), 2) => Ok(AdminCommand::FleetStatus),
                (Some("workers"), 2) => Ok(AdminCommand::FleetWorkers),
                (Some("watch"), 2) => Ok(AdminCommand::FleetWatch),
                (Some("drain-self"), 2) => Ok(AdminCommand::FleetDrainSelf),
                (Some("drain"), 3) => Ok(AdminCommand::FleetDrain(words[2].to_string())),
                (Some("undrain"), 3) => Ok(AdminCommand::FleetUndrain(words[2].to_string())),
                (Some("disconnect"), 3) => Ok(AdminCommand::FleetDisconnect(words[2].to_string())),
                (Some("retries"), 4 | 6) => Ok(AdminCommand::FleetRetries {
                    function: words[2].to_string(),
                    limit: words[3].parse().map_err(|_| args_err())?,
                    initial: arg(4),
                    max: arg(5),
                }),
                _ => Err(args_err()),
            },
            "auth" if words.len() == 2 => Ok(AdminCommand::Auth(words[1].to_string())),
            "auth" => Err(args_err()),
            _ => Err(AdminError::Unknown(first.to_string())),
        }
    }
}

/// The reply to `fleet drain-self`: `OK CONNECTIONS BUSY`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainSelfReply {
    /// The other connections from the caller's IP (workers, and any client in the same pod), all
    /// now draining.
    pub connections: usize,
    /// How many of them still hold a job (or a timed-out try).
    pub busy: usize,
}

impl DrainSelfReply {
    pub fn to_line(&self) -> String {
        format!("OK {} {}\n", self.connections, self.busy)
    }

    /// Reads the reply line (`None` for anything else, such as an `ERR` line).
    pub fn parse(line: &str) -> Option<DrainSelfReply> {
        let mut words = line.trim_end().split(' ');
        if words.next()? != "OK" {
            return None;
        }
        let connections = words.next()?.parse().ok()?;
        let busy = words.next()?.parse().ok()?;
        words.next().is_none().then_some(DrainSelfReply { connections, busy })
    }
}

/// Splits a list reply into its lines, stopping at the closing `.`. Returns `None` while the
/// closing line has not arrived.
pub fn split_list(reply: &str) -> Option<Vec<&str>> {
    let mut rows = Vec::new();
    for line in reply.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line == "." {
            return Some(rows);
        }
        rows.push(line);
    }
    None
}

/// One line of `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRow {
    pub function: String,
    /// Queued plus running.
    pub total: u64,
    pub running: u64,
    pub available_workers: u64,
}

impl StatusRow {
    /// The line as gearmand writes it.
    pub fn to_line(&self) -> String {
        format!("{}\t{}\t{}\t{}", self.function, self.total, self.running, self.available_workers)
    }

    pub fn parse(line: &str) -> Option<StatusRow> {
        let mut parts = line.rsplitn(4, '\t');
        let available_workers = parts.next()?.trim().parse().ok()?;
        let running = parts.next()?.trim().parse().ok()?;
        let total = parts.next()?.trim().parse().ok()?;
        let function = parts.next()?.to_string();
        Some(StatusRow { function, total, running, available_workers })
    }
}

/// One line of `workers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerRow {
    pub fd: i64,
    pub address: String,
    pub client_id: String,
    pub functions: Vec<String>,
}

impl WorkerRow {
    /// The line as gearmand writes it: ` :` ends the address part, each function follows after a
    /// space.
    pub fn to_line(&self) -> String {
        let mut s = format!("{} {} {} :", self.fd, self.address, self.client_id);
        for f in &self.functions {
            s.push(' ');
            s.push_str(f);
        }
        s
    }

    pub fn parse(line: &str) -> Option<WorkerRow> {
        let mut words = line.split_ascii_whitespace();
        let fd = words.next()?.parse().ok()?;
        let address = words.next()?.to_string();
        let client_id = words.next()?.to_string();
        if words.next()? != ":" {
            return None;
        }
        let functions = words.map(str::to_string).collect();
        Some(WorkerRow { fd, address, client_id, functions })
    }
}

/// One line of `prioritystatus`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriorityStatusRow {
    pub function: String,
    /// Queued jobs by priority: high, normal, low.
    pub queued: [u64; 3],
    pub available_workers: u64,
}

impl PriorityStatusRow {
    pub fn to_line(&self) -> String {
        let [h, n, l] = self.queued;
        format!("{}\t{h}\t{n}\t{l}\t{}", self.function, self.available_workers)
    }

    pub fn parse(line: &str) -> Option<PriorityStatusRow> {
        let mut parts = line.rsplitn(5, '\t');
        let available_workers = parts.next()?.trim().parse().ok()?;
        let low = parts.next()?.trim().parse().ok()?;
        let normal = parts.next()?.trim().parse().ok()?;
        let high = parts.next()?.trim().parse().ok()?;
        let function = parts.next()?.to_string();
        Some(PriorityStatusRow { function, queued: [high, normal, low], available_workers })
    }
}

/// One line of `show jobs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRow {
    pub handle: String,
    /// Tries before the current one.
    pub retries: u32,
    /// gearmand's "ignore job" flag (cancelled, not yet removed); never set by gearfleet.
    pub ignored: bool,
    /// Waiting in a queue (not running, scheduled or dead).
    pub queued: bool,
}

impl JobRow {
    pub fn to_line(&self) -> String {
        format!("{}\t{}\t{}\t{}", self.handle, self.retries, u8::from(self.ignored), u8::from(self.queued))
    }

    pub fn parse(line: &str) -> Option<JobRow> {
        let flag = |s: &str| match s.trim() {
            "0" => Some(false),
            "1" => Some(true),
            _ => None,
        };
        let f: Vec<&str> = line.split('\t').collect();
        let [handle, retries, ignored, queued] = f[..] else { return None };
        Some(JobRow {
            handle: handle.to_string(),
            retries: retries.trim().parse().ok()?,
            ignored: flag(ignored)?,
            queued: flag(queued)?,
        })
    }
}

/// One line of `show unique jobs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UniqueJobRow {
    pub unique: String,
    pub handle: String,
}

impl UniqueJobRow {
    pub fn to_line(&self) -> String {
        format!("{}\t{}", self.unique, self.handle)
    }

    pub fn parse(line: &str) -> Option<UniqueJobRow> {
        // A handle has no tab; a unique key may.
        let (unique, handle) = line.rsplit_once('\t')?;
        Some(UniqueJobRow { unique: unique.to_string(), handle: handle.to_string() })
    }
}

/// One line of `show dead`: a dead-lettered job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadJobRow {
    pub handle: String,
    pub function: String,
    /// Tries it had.
    pub attempts: u32,
    /// Why the last try failed (written with [`sanitize_field`]).
    pub error: String,
}

impl DeadJobRow {
    pub fn to_line(&self) -> String {
        format!("{}\t{}\t{}\t{}", self.handle, self.function, self.attempts, sanitize_field(&self.error))
    }

    pub fn parse(line: &str) -> Option<DeadJobRow> {
        let (handle, rest) = line.split_once('\t')?;
        // The error is sanitised; a function name may hold a tab.
        let mut parts = rest.rsplitn(3, '\t');
        let error = parts.next()?.to_string();
        let attempts = parts.next()?.trim().parse().ok()?;
        let function = parts.next()?.to_string();
        Some(DeadJobRow { handle: handle.to_string(), function, attempts, error })
    }
}

/// A list reply: one line per row, then the closing `.`.
pub fn list_reply<T>(rows: impl IntoIterator<Item = T>, to_line: impl Fn(&T) -> String) -> String {
    let mut out = String::new();
    for row in rows {
        out.push_str(&to_line(&row));
        out.push('\n');
    }
    out.push_str(".\n");
    out
}

/// Replaces the bytes that would break a tab-separated line.
pub fn sanitize_field(s: &str) -> String {
    s.chars().map(|c| if c == '\t' || c == '\n' || c == '\r' || c == ',' { '_' } else { c }).collect()
}

/// One line of `fleet status`: everything the operator scales on, for one function.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FunctionStats {
    pub function: String,
    /// Queued jobs by priority: high, normal, low.
    pub queued: [u64; 3],
    /// Jobs waiting for their scheduled time.
    pub scheduled: u64,
    /// Jobs assigned to a worker.
    pub running: u64,
    /// Connections that registered the function.
    pub workers: u64,
    /// Of those, the ones holding no job.
    pub idle_workers: u64,
    /// Of those, the ones asked to drain.
    pub draining_workers: u64,
    /// Background jobs that exhausted their retries.
    pub dead: u64,
}

impl FunctionStats {
    pub const HEADER: &'static str =
        "FUNCTION\tQUEUED_HIGH\tQUEUED_NORMAL\tQUEUED_LOW\tSCHEDULED\tRUNNING\tWORKERS\tIDLE\tDRAINING\tDEAD";

    pub fn queued_total(&self) -> u64 {
        self.queued.iter().sum()
    }

    pub fn to_line(&self) -> String {
        let mut s = sanitize_field(&self.function);
        let [h, n, l] = self.queued;
        let _ = write!(
            s,
            "\t{h}\t{n}\t{l}\t{}\t{}\t{}\t{}\t{}\t{}",
            self.scheduled, self.running, self.workers, self.idle_workers, self.draining_workers, self.dead
        );
        s
    }

    pub fn parse(line: &str) -> Option<FunctionStats> {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != 10 {
            return None;
        }
        let n = |i: usize| f[i].parse::<u64>().ok();
        Some(FunctionStats {
            function: f[0].to_string(),
            queued: [n(1)?, n(2)?, n(3)?],
            scheduled: n(4)?,
            running: n(5)?,
            workers: n(6)?,
            idle_workers: n(7)?,
            draining_workers: n(8)?,
            dead: n(9)?,
        })
    }
}

/// What a worker connection is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// Holding at least one job.
    Busy,
    /// Registered, holding no job, polling.
    Idle,
    /// Holding no job and asleep after PRE_SLEEP.
    Sleeping,
}

impl WorkerState {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Busy => "busy",
            WorkerState::Idle => "idle",
            WorkerState::Sleeping => "sleeping",
        }
    }

    pub fn parse(s: &str) -> Option<WorkerState> {
        match s {
            "busy" => Some(WorkerState::Busy),
            "idle" => Some(WorkerState::Idle),
            "sleeping" => Some(WorkerState::Sleeping),
            _ => None,
        }
    }
}

/// One line of `fleet workers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerStats {
    /// SET_CLIENT_ID value, `-` when unset.
    pub client_id: String,
    pub address: String,
    pub state: WorkerState,
    pub draining: bool,
    /// Jobs this connection finished (complete, fail or exception).
    pub jobs_done: u64,
    /// Handles of the jobs it holds now.
    pub current_jobs: Vec<String>,
    pub functions: Vec<String>,
}

impl WorkerStats {
    pub const HEADER: &'static str = "CLIENT_ID\tADDRESS\tSTATE\tDRAINING\tJOBS_DONE\tCURRENT_JOBS\tFUNCTIONS";

    pub fn to_line(&self) -> String {
        let list = |v: &[String]| {
            if v.is_empty() {
                "-".to_string()
            } else {
                v.iter().map(|s| sanitize_field(s)).collect::<Vec<_>>().join(",")
            }
        };
        format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}",
            sanitize_field(&self.client_id),
            self.address,
            self.state.as_str(),
            u8::from(self.draining),
            self.jobs_done,
            list(&self.current_jobs),
            list(&self.functions)
        )
    }

    pub fn parse(line: &str) -> Option<WorkerStats> {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != 7 {
            return None;
        }
        let list = |s: &str| if s == "-" { Vec::new() } else { s.split(',').map(str::to_string).collect() };
        Some(WorkerStats {
            client_id: f[0].to_string(),
            address: f[1].to_string(),
            state: WorkerState::parse(f[2])?,
            draining: f[3] == "1",
            jobs_done: f[4].parse().ok()?,
            current_jobs: list(f[5]),
            functions: list(f[6]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_gearmand_commands() {
        assert_eq!(AdminCommand::parse(b"status"), Ok(AdminCommand::Status));
        assert_eq!(AdminCommand::parse(b"auth s3cret"), Ok(AdminCommand::Auth("s3cret".into())));
        assert!(matches!(AdminCommand::parse(b"auth"), Err(AdminError::Arguments(_))));
        assert!(AdminCommand::parse(b"cancel job H:a:1").unwrap().mutates());
        assert!(AdminCommand::parse(b"fleet drain pod-1").unwrap().mutates());
        assert!(!AdminCommand::parse(b"fleet status").unwrap().mutates());
        assert!(!AdminCommand::parse(b"status").unwrap().mutates());
        assert_eq!(AdminCommand::parse(b"STATUS "), Ok(AdminCommand::Status));
        assert_eq!(AdminCommand::parse(b"show jobs"), Ok(AdminCommand::ShowJobs));
        assert_eq!(AdminCommand::parse(b"show unique jobs"), Ok(AdminCommand::ShowUniqueJobs));
        assert_eq!(AdminCommand::parse(b"show foo"), Err(AdminError::UnknownShow));
        assert_eq!(AdminCommand::parse(b"cancel job H:a:1"), Ok(AdminCommand::CancelJob("H:a:1".into())));
        assert!(matches!(AdminCommand::parse(b"cancel H:a:1"), Err(AdminError::Arguments(_))));
        assert_eq!(AdminCommand::parse(b"create function f"), Ok(AdminCommand::CreateFunction("f".into())));
        assert_eq!(AdminCommand::parse(b"drop function f"), Ok(AdminCommand::DropFunction("f".into())));
        assert_eq!(
            AdminCommand::parse(b"maxqueue f 10"),
            Ok(AdminCommand::MaxQueue { function: "f".into(), limits: Some([10, 10, 10]) })
        );
        assert_eq!(
            AdminCommand::parse(b"maxqueue f 1 2 3"),
            Ok(AdminCommand::MaxQueue { function: "f".into(), limits: Some([1, 2, 3]) })
        );
        assert_eq!(
            AdminCommand::parse(b"maxqueue f -5"),
            Ok(AdminCommand::MaxQueue { function: "f".into(), limits: Some([0, 0, 0]) })
        );
        assert_eq!(
            AdminCommand::parse(b"maxqueue f"),
            Ok(AdminCommand::MaxQueue { function: "f".into(), limits: None })
        );
        assert!(AdminCommand::parse(b"maxqueue").is_err());
        assert!(AdminCommand::parse(b"maxqueue f x").is_err());
        assert_eq!(AdminCommand::parse(b"shutdown graceful"), Ok(AdminCommand::Shutdown { graceful: true }));
        assert_eq!(AdminCommand::parse(b"bogus"), Err(AdminError::Unknown("bogus".into())));
        assert_eq!(AdminCommand::parse(b""), Err(AdminError::Unknown(String::new())));
    }

    #[test]
    fn drain_self_reply_round_trips() {
        let reply = DrainSelfReply { connections: 3, busy: 1 };
        assert_eq!(reply.to_line(), "OK 3 1\n");
        assert_eq!(DrainSelfReply::parse(&reply.to_line()), Some(reply));
        assert_eq!(DrainSelfReply::parse("OK 3"), None);
        assert_eq!(DrainSelfReply::parse("OK 3 1 2"), None);
        assert_eq!(DrainSelfReply::parse("ERR UNKNOWN_COMMAND x"), None);
    }

    #[test]
    fn parses_fleet_commands() {
        assert_eq!(AdminCommand::parse(b"fleet status"), Ok(AdminCommand::FleetStatus));
        assert_eq!(AdminCommand::parse(b"fleet watch"), Ok(AdminCommand::FleetWatch));
        assert_eq!(AdminCommand::parse(b"fleet drain pod-1"), Ok(AdminCommand::FleetDrain("pod-1".into())));
        assert_eq!(AdminCommand::parse(b"fleet undrain pod-1"), Ok(AdminCommand::FleetUndrain("pod-1".into())));
        assert!(AdminCommand::parse(b"fleet").is_err());
        assert!(AdminCommand::parse(b"fleet drain").is_err());
        // Addresses as well as client ids: the parser keeps the word as it is.
        assert_eq!(AdminCommand::parse(b"fleet drain 10.0.0.7"), Ok(AdminCommand::FleetDrain("10.0.0.7".into())));
        assert_eq!(
            AdminCommand::parse(b"fleet undrain 10.0.0.7:41234"),
            Ok(AdminCommand::FleetUndrain("10.0.0.7:41234".into()))
        );
        assert_eq!(
            AdminCommand::parse(b"FLEET DISCONNECT [::1]:5000"),
            Ok(AdminCommand::FleetDisconnect("[::1]:5000".into()))
        );
        assert_eq!(AdminCommand::parse(b"fleet disconnect pod-1"), Ok(AdminCommand::FleetDisconnect("pod-1".into())));
        assert_eq!(AdminCommand::parse(b"fleet drain-self"), Ok(AdminCommand::FleetDrainSelf));
        assert!(!AdminCommand::FleetDrainSelf.mutates(), "a pod's hook drains itself without the token");
        assert!(matches!(AdminCommand::parse(b"fleet drain-self x"), Err(AdminError::Arguments(_))));
        assert!(AdminCommand::parse(b"fleet disconnect pod-1").unwrap().mutates(), "it needs the admin token");
        assert!(matches!(AdminCommand::parse(b"fleet disconnect"), Err(AdminError::Arguments(_))));
        assert!(matches!(AdminCommand::parse(b"fleet disconnect a b"), Err(AdminError::Arguments(_))));
        assert_eq!(
            AdminCommand::parse(b"fleet retries f 3 1s 1m"),
            Ok(AdminCommand::FleetRetries {
                function: "f".into(),
                limit: 3,
                initial: Some("1s".into()),
                max: Some("1m".into())
            })
        );
        assert!(AdminCommand::parse(b"fleet retries f x").is_err());
        assert!(AdminCommand::parse(b"fleet retries f 1 2s").is_err());
    }

    #[test]
    fn parses_dead_letter_commands() {
        assert_eq!(AdminCommand::parse(b"show dead"), Ok(AdminCommand::ShowDead(None)));
        assert_eq!(AdminCommand::parse(b"show dead f"), Ok(AdminCommand::ShowDead(Some("f".into()))));
        assert_eq!(
            AdminCommand::parse(b"retry dead f"),
            Ok(AdminCommand::RetryDead { function: "f".into(), handle: None })
        );
        assert_eq!(
            AdminCommand::parse(b"purge dead f H:x:1"),
            Ok(AdminCommand::PurgeDead { function: "f".into(), handle: Some("H:x:1".into()) })
        );
        assert!(AdminCommand::parse(b"purge dead").is_err());
    }

    #[test]
    fn error_replies_use_gearmand_wording() {
        assert_eq!(AdminError::Unknown("x".into()).reply(), "ERR UNKNOWN_COMMAND Unknown+server+commandx\r\n");
    }

    #[test]
    fn status_and_worker_rows_parse() {
        let rows = split_list("reverse\t3\t1\t2\nwith\ttab\t0\t0\t0\n.\n").unwrap();
        assert_eq!(
            StatusRow::parse(rows[0]),
            Some(StatusRow { function: "reverse".into(), total: 3, running: 1, available_workers: 2 })
        );
        assert_eq!(StatusRow::parse(rows[1]).unwrap().function, "with\ttab");
        assert!(split_list("a\t1\t1\t1\n").is_none());
        assert_eq!(
            WorkerRow::parse("12 127.0.0.1 pod-a : echo reverse"),
            Some(WorkerRow {
                fd: 12,
                address: "127.0.0.1".into(),
                client_id: "pod-a".into(),
                functions: vec!["echo".into(), "reverse".into()]
            })
        );
        assert_eq!(WorkerRow::parse("3 ::1 - :").unwrap().functions.len(), 0);
    }

    #[test]
    fn gearmand_rows_round_trip() {
        let status = StatusRow { function: "with\ttab".into(), total: 3, running: 1, available_workers: 2 };
        assert_eq!(status.to_line(), "with\ttab\t3\t1\t2");
        assert_eq!(StatusRow::parse(&status.to_line()), Some(status));

        let prio = PriorityStatusRow { function: "f".into(), queued: [1, 2, 3], available_workers: 4 };
        assert_eq!(prio.to_line(), "f\t1\t2\t3\t4");
        assert_eq!(PriorityStatusRow::parse(&prio.to_line()), Some(prio));
        assert_eq!(PriorityStatusRow::parse("f\t1\t2\t3"), None);

        let worker = WorkerRow {
            fd: 12,
            address: "127.0.0.1".into(),
            client_id: "pod-a".into(),
            functions: vec!["echo".into(), "reverse".into()],
        };
        assert_eq!(worker.to_line(), "12 127.0.0.1 pod-a : echo reverse");
        assert_eq!(WorkerRow::parse(&worker.to_line()), Some(worker));
        let bare = WorkerRow { fd: -1, address: "::1".into(), client_id: "-".into(), functions: vec![] };
        assert_eq!(bare.to_line(), "-1 ::1 - :");
        assert_eq!(WorkerRow::parse(&bare.to_line()), Some(bare));

        let job = JobRow { handle: "H:x:7".into(), retries: 2, ignored: false, queued: true };
        assert_eq!(job.to_line(), "H:x:7\t2\t0\t1");
        assert_eq!(JobRow::parse(&job.to_line()), Some(job));
        assert_eq!(JobRow::parse("H:x:7\t2\t0\t2"), None);

        let unique = UniqueJobRow { unique: "key\twith tab".into(), handle: "H:x:8".into() };
        assert_eq!(unique.to_line(), "key\twith tab\tH:x:8");
        assert_eq!(UniqueJobRow::parse(&unique.to_line()), Some(unique));

        let dead = DeadJobRow { handle: "H:x:9".into(), function: "flaky".into(), attempts: 3, error: "boom".into() };
        assert_eq!(dead.to_line(), "H:x:9\tflaky\t3\tboom");
        assert_eq!(DeadJobRow::parse(&dead.to_line()), Some(dead));
        let messy = DeadJobRow { error: "a\tb,c\n".into(), ..DeadJobRow::parse("H:x:1\tf\t1\t").unwrap() };
        assert_eq!(DeadJobRow::parse(&messy.to_line()).unwrap().error, "a_b_c_", "the error is sanitised");

        assert_eq!(list_reply([status_row("a"), status_row("b")], StatusRow::to_line), "a\t0\t0\t0\nb\t0\t0\t0\n.\n");
        assert_eq!(list_reply(Vec::<StatusRow>::new(), StatusRow::to_line), ".\n");
    }

    fn status_row(function: &str) -> StatusRow {
        StatusRow { function: function.into(), total: 0, running: 0, available_workers: 0 }
    }

    #[test]
    fn fleet_lines_round_trip() {
        let f = FunctionStats {
            function: "sleep".into(),
            queued: [1, 2, 3],
            scheduled: 4,
            running: 5,
            workers: 6,
            idle_workers: 1,
            draining_workers: 0,
            dead: 7,
        };
        assert_eq!(FunctionStats::parse(&f.to_line()), Some(f.clone()));
        assert_eq!(f.queued_total(), 6);
        let w = WorkerStats {
            client_id: "pod-1".into(),
            address: "10.0.0.1:5555".into(),
            state: WorkerState::Busy,
            draining: true,
            jobs_done: 42,
            current_jobs: vec!["H:x:1".into()],
            functions: vec!["a".into(), "b".into()],
        };
        assert_eq!(WorkerStats::parse(&w.to_line()), Some(w));
        let idle = WorkerStats {
            client_id: "-".into(),
            address: "x".into(),
            state: WorkerState::Sleeping,
            draining: false,
            jobs_done: 0,
            current_jobs: vec![],
            functions: vec![],
        };
        assert_eq!(WorkerStats::parse(&idle.to_line()), Some(idle));
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    /// Lines built from admin-ish pieces, so the generator reaches the commands and row formats
    /// (plain random bytes would almost never form `maxqueue f 3` or a tab-separated row).
    fn adminish_line() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(b"status".to_vec()),
            Just(b"workers".to_vec()),
            Just(b"maxqueue".to_vec()),
            Just(b"show".to_vec()),
            Just(b"jobs".to_vec()),
            Just(b"unique".to_vec()),
            Just(b"cancel".to_vec()),
            Just(b"job".to_vec()),
            Just(b"function".to_vec()),
            Just(b"busy".to_vec()),
            Just(b"-".to_vec()),
            Just(b":".to_vec()),
            Just(b",".to_vec()),
            Just(b"\t".to_vec()),
            Just(b" ".to_vec()),
            Just(b"\r".to_vec()),
            "[0-9]{1,21}".prop_map(String::into_bytes),
            "-?[0-9]{1,3}".prop_map(String::into_bytes),
            proptest::collection::vec(any::<u8>(), 0..6),
        ];
        proptest::collection::vec(piece, 0..14).prop_map(|v| v.concat())
    }

    proptest! {
        /// No admin parser panics on any line, and an error reply is always exactly one line.
        #[test]
        fn admin_parsers_never_panic(line in prop_oneof![adminish_line(), proptest::collection::vec(any::<u8>(), 0..128)]) {
            if let Err(e) = AdminCommand::parse(&line) {
                let reply = e.reply();
                prop_assert!(reply.ends_with("\r\n") && reply.matches('\n').count() == 1, "{reply:?}");
            }
            let text = String::from_utf8_lossy(&line);
            let _ = split_list(&text);
            let _ = StatusRow::parse(&text);
            let _ = WorkerRow::parse(&text);
            let _ = PriorityStatusRow::parse(&text);
            let _ = JobRow::parse(&text);
            let _ = UniqueJobRow::parse(&text);
            let _ = DeadJobRow::parse(&text);
            // What `to_line` writes parses back, and writing it again is a fixed point (the first
            // write may normalise: sanitised fields, the draining flag).
            if let Some(stats) = FunctionStats::parse(&text) {
                let once = FunctionStats::parse(&stats.to_line());
                prop_assert!(once.is_some());
                let once = once.unwrap();
                prop_assert_eq!(FunctionStats::parse(&once.to_line()), Some(once));
            }
            if let Some(stats) = WorkerStats::parse(&text) {
                let once = WorkerStats::parse(&stats.to_line());
                prop_assert!(once.is_some());
                let once = once.unwrap();
                prop_assert_eq!(WorkerStats::parse(&once.to_line()), Some(once));
            }
        }
    }
}
