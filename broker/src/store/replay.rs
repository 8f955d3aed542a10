//! What a journal directory holds, read back: the file names, the snapshot format, and recovery
//! (the newest valid snapshot, then the segments after it, replayed record by record) into the
//! live durable jobs and retained outcomes.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::record::{JobRecord, OutcomeRecord, Record};

pub(super) const SNAPSHOT_MAGIC: &[u8] = b"GEARFLEET-SNAPSHOT-1\n";
pub(super) const SNAPSHOT_END: &[u8] = b"GEARFLEET-SNAPSHOT-END\n";

/// A durable job found on disk at start-up.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Recovered {
    pub job: JobRecord,
    /// Set when the job is in its dead-letter queue: (attempts, last error).
    pub dead: Option<(u32, Bytes)>,
    /// Last error of a job waiting for a retry.
    pub last_error: Bytes,
    /// A retaining client's foreground job ([`Record::AddForeground`]).
    pub foreground: bool,
    /// The client id of the resuming worker that was running it ([`Record::StartedBy`]).
    pub started_by: Option<Bytes>,
}

/// Everything durable found on disk at start-up (or handed to a snapshot): the live jobs, and the
/// retained outcomes of retaining clients' jobs, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Recovery {
    pub jobs: Vec<Recovered>,
    pub outcomes: Vec<OutcomeRecord>,
}

/// The records that bring back `live`, in its order.
pub(super) fn encode_snapshot(live: &Recovery) -> Vec<u8> {
    let mut out = Vec::new();
    for o in &live.outcomes {
        Record::Outcome(OutcomeRecord { id: 0, ..o.clone() }).encode(&mut out);
    }
    for r in &live.jobs {
        encode_recovered(r, &mut out);
    }
    out
}

fn encode_recovered(r: &Recovered, out: &mut Vec<u8>) {
    if r.foreground {
        Record::AddForeground(r.job.clone()).encode(out);
        if let Some(worker) = &r.started_by {
            Record::StartedBy { id: r.job.id, worker: worker.clone() }.encode(out);
        }
        return;
    }
    Record::Add(r.job.clone()).encode(out);
    if let Some((attempts, error)) = &r.dead {
        Record::Dead { id: r.job.id, attempts: *attempts, error: error.clone() }.encode(out);
    } else if !r.last_error.is_empty() {
        Record::Retry { id: r.job.id, at_ms: r.job.at_ms, attempts: r.job.attempts, error: r.last_error.clone() }
            .encode(out);
    }
}

pub(super) fn wal_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("wal-{n:010}.log"))
}

pub(super) fn snapshot_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("snap-{n:010}.dat"))
}

pub(super) fn numbered(dir: &Path, prefix: &str, suffix: &str) -> io::Result<Vec<u64>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name.strip_prefix(prefix).and_then(|r| r.strip_suffix(suffix)).and_then(|n| n.parse().ok()) {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

#[derive(Debug)]
struct Live {
    job: JobRecord,
    started: bool,
    dead: Option<(u32, Bytes)>,
    last_error: Bytes,
    foreground: bool,
    started_by: Option<Bytes>,
}

impl Live {
    fn new(job: JobRecord, foreground: bool) -> Live {
        Live { job, started: false, dead: None, last_error: Bytes::new(), foreground, started_by: None }
    }
}

/// What replaying records has rebuilt so far.
#[derive(Debug, Default)]
struct Replayed {
    jobs: BTreeMap<u64, Live>,
    /// Retained outcomes in the order they were written (a later one of the same function and
    /// key replaces an earlier one when recovered).
    outcomes: Vec<OutcomeRecord>,
}

fn apply(live: &mut Replayed, record: Record) {
    let jobs = &mut live.jobs;
    match record {
        Record::Add(job) => {
            jobs.insert(job.id, Live::new(job, false));
        }
        Record::AddForeground(job) => {
            jobs.insert(job.id, Live::new(job, true));
        }
        Record::Started { id } => {
            if let Some(l) = jobs.get_mut(&id) {
                l.started = true;
            }
        }
        Record::StartedBy { id, worker } => {
            if let Some(l) = jobs.get_mut(&id) {
                l.started = true;
                l.started_by = Some(worker);
            }
        }
        Record::Retry { id, at_ms, attempts, error } => {
            if let Some(l) = jobs.get_mut(&id) {
                l.started = false;
                l.job.at_ms = at_ms;
                l.job.attempts = attempts;
                l.last_error = error;
            }
        }
        Record::Dead { id, attempts, error } => {
            if let Some(l) = jobs.get_mut(&id) {
                l.started = false;
                l.job.attempts = attempts;
                l.dead = Some((attempts, error));
            }
        }
        Record::Done { id } => {
            jobs.remove(&id);
        }
        Record::Outcome(outcome) => {
            jobs.remove(&outcome.id);
            live.outcomes.push(outcome);
        }
    }
}

/// Reads every valid frame of `bytes` into `live`; stops at the first torn or corrupt frame.
fn replay(bytes: &[u8], live: &mut Replayed) -> usize {
    let mut at = 0;
    while at < bytes.len() {
        match Record::decode(&bytes[at..]) {
            Ok((record, used)) => {
                apply(live, record);
                at += used;
            }
            Err(_) if bytes[at..].iter().all(|&b| b == 0) => {
                // Preallocated space after the last record: the normal end of a segment.
                break;
            }
            Err(e) => {
                tracing::warn!(offset = at, error = %e, "journal: ignoring the rest of a segment");
                break;
            }
        }
    }
    at
}

/// Loads the newest valid snapshot and replays later segments. Returns the live jobs and retained
/// outcomes, and the number for the next segment.
pub(super) fn recover(dir: &Path) -> io::Result<(Recovery, u64)> {
    let snapshots = numbered(dir, "snap-", ".dat")?;
    let segments = numbered(dir, "wal-", ".log")?;
    let mut live = Replayed::default();
    let mut from = 0;
    for &n in snapshots.iter().rev() {
        let bytes = fs::read(snapshot_path(dir, n))?;
        let Some(body) = bytes.strip_prefix(SNAPSHOT_MAGIC).and_then(|b| b.strip_suffix(SNAPSHOT_END)) else {
            tracing::warn!(snapshot = n, "journal: incomplete snapshot ignored");
            continue;
        };
        let mut candidate = Replayed::default();
        if replay(body, &mut candidate) == body.len() {
            live = candidate;
            from = n;
            break;
        }
        tracing::warn!(snapshot = n, "journal: corrupt snapshot ignored");
    }
    for &n in segments.iter().filter(|&&n| n >= from) {
        let bytes = fs::read(wal_path(dir, n))?;
        replay(&bytes, &mut live);
    }
    let next = segments.last().copied().max(snapshots.last().copied()).map_or(1, |n| n + 1);
    let jobs = live
        .jobs
        .into_values()
        .map(|mut l| {
            // A background job that was running when the broker stopped is re-queued; that try
            // counts.
            if l.started && l.dead.is_none() && !l.foreground {
                l.job.attempts += 1;
            }
            let started_by = l.started_by.filter(|_| l.started);
            Recovered { job: l.job, dead: l.dead, last_error: l.last_error, foreground: l.foreground, started_by }
        })
        .collect();
    // The newest outcome of each (function, unique key), oldest first.
    let mut seen = std::collections::HashSet::new();
    let mut outcomes: Vec<OutcomeRecord> = live
        .outcomes
        .into_iter()
        .rev()
        .filter(|o| seen.insert((o.function.clone(), o.unique.clone())))
        .map(|o| OutcomeRecord { id: 0, ..o })
        .collect();
    outcomes.reverse();
    Ok((Recovery { jobs, outcomes }, next))
}
