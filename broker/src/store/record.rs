//! Journal records: what is written to disk for each change to a durable job: a background job,
//! or a foreground job of a retaining client (the operator's Job controller), whose outcome is
//! journaled too so that it is still retained after a restart.
//!
//! Frame: `[len: u32 BE][crc32 of body: u32 BE][body]`. A torn or corrupt frame at the end of a
//! file is where that file's valid data ends (a crash mid-write); anything after it is ignored.

use bytes::{Buf, BufMut, Bytes};

/// One change to a durable job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A job was accepted. `attempts` counts earlier tries (non-zero in snapshots and retries).
    Add(JobRecord),
    /// A worker took the job (counts as an attempt if the broker dies while it runs).
    Started { id: u64 },
    /// The job will run again at `at_ms` (retry with backoff), `attempts` tries so far.
    Retry { id: u64, at_ms: u64, attempts: u32, error: Bytes },
    /// The job exhausted its tries and is kept in its function's dead-letter queue.
    Dead { id: u64, attempts: u32, error: Bytes },
    /// The job is finished (completed, failed for good and purged, or cancelled): forget it.
    Done { id: u64 },
    /// A foreground job of a retaining client was accepted (see [`Record::Add`]).
    AddForeground(JobRecord),
    /// A worker that resumes its jobs across reconnects (`OPTION_REQ gearfleet-resume`), known by
    /// its client id, took the job.
    StartedBy { id: u64, worker: Bytes },
    /// A retaining client's job ended with this outcome, kept until `at_ms` plus the broker's
    /// retention time. `id` 0 in snapshots (the outcome outlives its job).
    Outcome(OutcomeRecord),
}

/// How a retaining client's job ended, as journaled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutcomeRecord {
    pub id: u64,
    /// When it ended, unix milliseconds.
    pub at_ms: u64,
    pub kind: OutcomeKind,
    pub function: Bytes,
    pub unique: Bytes,
    /// The result (complete) or message (exception); empty for a failure.
    pub payload: Bytes,
}

/// The kinds of outcome a retaining client may be answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeKind {
    Complete = 1,
    Fail = 2,
    Exception = 3,
}

/// A durable job as written in `Add` records and snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JobRecord {
    pub id: u64,
    pub priority: u8,
    /// Scheduled time in unix milliseconds, 0 when it is queued right away.
    pub at_ms: u64,
    pub attempts: u32,
    pub function: Bytes,
    pub unique: Bytes,
    pub data: Bytes,
}

const ADD: u8 = 1;
const STARTED: u8 = 2;
const RETRY: u8 = 3;
const DEAD: u8 = 4;
const DONE: u8 = 5;
const ADD_FOREGROUND: u8 = 6;
const STARTED_BY: u8 = 7;
const OUTCOME: u8 = 8;

/// Why a frame could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("truncated frame")]
    Truncated,
    #[error("checksum mismatch")]
    Checksum,
    #[error("malformed record body")]
    Malformed,
}

impl Record {
    pub fn id(&self) -> u64 {
        match self {
            Record::Add(j) | Record::AddForeground(j) => j.id,
            Record::Outcome(o) => o.id,
            Record::Started { id }
            | Record::StartedBy { id, .. }
            | Record::Retry { id, .. }
            | Record::Dead { id, .. }
            | Record::Done { id } => *id,
        }
    }

    /// Appends the framed record to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0u8; 8]);
        // The body is written in place, behind the frame header filled in below.
        let body = &mut *out;
        match self {
            Record::Add(j) | Record::AddForeground(j) => {
                body.put_u8(if matches!(self, Record::Add(_)) { ADD } else { ADD_FOREGROUND });
                body.put_u64(j.id);
                body.put_u8(j.priority);
                body.put_u64(j.at_ms);
                body.put_u32(j.attempts);
                put_bytes(body, &j.function);
                put_bytes(body, &j.unique);
                put_bytes(body, &j.data);
            }
            Record::Started { id } => {
                body.put_u8(STARTED);
                body.put_u64(*id);
            }
            Record::Retry { id, at_ms, attempts, error } => {
                body.put_u8(RETRY);
                body.put_u64(*id);
                body.put_u64(*at_ms);
                body.put_u32(*attempts);
                put_bytes(body, error);
            }
            Record::Dead { id, attempts, error } => {
                body.put_u8(DEAD);
                body.put_u64(*id);
                body.put_u32(*attempts);
                put_bytes(body, error);
            }
            Record::Done { id } => {
                body.put_u8(DONE);
                body.put_u64(*id);
            }
            Record::StartedBy { id, worker } => {
                body.put_u8(STARTED_BY);
                body.put_u64(*id);
                put_bytes(body, worker);
            }
            Record::Outcome(o) => {
                body.put_u8(OUTCOME);
                body.put_u64(o.id);
                body.put_u64(o.at_ms);
                body.put_u8(o.kind as u8);
                put_bytes(body, &o.function);
                put_bytes(body, &o.unique);
                put_bytes(body, &o.payload);
            }
        }
        let len = (out.len() - start - 8) as u32;
        let crc = crc32fast::hash(&out[start + 8..]);
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
        out[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
    }

    /// Reads one framed record from the front of `buf`, returning it and the bytes it used.
    pub fn decode(buf: &[u8]) -> Result<(Record, usize), RecordError> {
        if buf.len() < 8 {
            return Err(RecordError::Truncated);
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let crc = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
        let Some(body) = buf.get(8..8 + len) else { return Err(RecordError::Truncated) };
        if crc32fast::hash(body) != crc {
            return Err(RecordError::Checksum);
        }
        let mut b = Bytes::copy_from_slice(body);
        let record = decode_body(&mut b).ok_or(RecordError::Malformed)?;
        Ok((record, 8 + len))
    }
}

fn put_bytes(out: &mut impl BufMut, b: &[u8]) {
    out.put_u32(b.len() as u32);
    out.put_slice(b);
}

fn get_bytes(b: &mut Bytes) -> Option<Bytes> {
    if b.remaining() < 4 {
        return None;
    }
    let n = b.get_u32() as usize;
    (b.remaining() >= n).then(|| b.split_to(n))
}

fn get_u64(b: &mut Bytes) -> Option<u64> {
    (b.remaining() >= 8).then(|| b.get_u64())
}

fn get_u32(b: &mut Bytes) -> Option<u32> {
    (b.remaining() >= 4).then(|| b.get_u32())
}

fn decode_body(b: &mut Bytes) -> Option<Record> {
    if !b.has_remaining() {
        return None;
    }
    let kind = b.get_u8();
    let id = get_u64(b)?;
    let record = match kind {
        ADD | ADD_FOREGROUND => {
            if !b.has_remaining() {
                return None;
            }
            let priority = b.get_u8();
            let at_ms = get_u64(b)?;
            let attempts = get_u32(b)?;
            let function = get_bytes(b)?;
            let unique = get_bytes(b)?;
            let data = get_bytes(b)?;
            let job = JobRecord { id, priority, at_ms, attempts, function, unique, data };
            if kind == ADD { Record::Add(job) } else { Record::AddForeground(job) }
        }
        STARTED_BY => Record::StartedBy { id, worker: get_bytes(b)? },
        OUTCOME => {
            let at_ms = get_u64(b)?;
            if !b.has_remaining() {
                return None;
            }
            let kind = match b.get_u8() {
                1 => OutcomeKind::Complete,
                2 => OutcomeKind::Fail,
                3 => OutcomeKind::Exception,
                _ => return None,
            };
            let (function, unique, payload) = (get_bytes(b)?, get_bytes(b)?, get_bytes(b)?);
            Record::Outcome(OutcomeRecord { id, at_ms, kind, function, unique, payload })
        }
        STARTED => Record::Started { id },
        RETRY => Record::Retry { id, at_ms: get_u64(b)?, attempts: get_u32(b)?, error: get_bytes(b)? },
        DEAD => Record::Dead { id, attempts: get_u32(b)?, error: get_bytes(b)? },
        DONE => Record::Done { id },
        _ => return None,
    };
    b.is_empty().then_some(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Record> {
        vec![
            Record::Add(JobRecord {
                id: 7,
                priority: 2,
                at_ms: 123,
                attempts: 1,
                function: Bytes::from_static(b"f"),
                unique: Bytes::from_static(b"u\0x"),
                data: Bytes::from_static(b"payload"),
            }),
            Record::Started { id: 7 },
            Record::Retry { id: 7, at_ms: 99, attempts: 2, error: Bytes::from_static(b"boom") },
            Record::Dead { id: 7, attempts: 3, error: Bytes::new() },
            Record::Done { id: 7 },
            Record::AddForeground(JobRecord {
                id: 8,
                priority: 1,
                at_ms: 0,
                attempts: 0,
                function: Bytes::from_static(b"resize"),
                unique: Bytes::from_static(b"ns/job/0/0"),
                data: Bytes::from_static(b"photo"),
            }),
            Record::StartedBy { id: 8, worker: Bytes::from_static(b"pod-a") },
            Record::Outcome(OutcomeRecord {
                id: 8,
                at_ms: 1_700_000_000_000,
                kind: OutcomeKind::Exception,
                function: Bytes::from_static(b"resize"),
                unique: Bytes::from_static(b"ns/job/0/0"),
                payload: Bytes::from_static(b"bad input"),
            }),
        ]
    }

    #[test]
    fn records_round_trip() {
        let mut buf = Vec::new();
        for r in samples() {
            r.encode(&mut buf);
        }
        let mut at = 0;
        for expected in samples() {
            let (r, used) = Record::decode(&buf[at..]).unwrap();
            assert_eq!(r, expected);
            at += used;
        }
        assert_eq!(at, buf.len());
    }

    #[test]
    fn torn_and_corrupt_frames_are_detected() {
        let mut buf = Vec::new();
        samples()[0].encode(&mut buf);
        for cut in 0..buf.len() {
            assert_eq!(Record::decode(&buf[..cut]).unwrap_err(), RecordError::Truncated);
        }
        let last = buf.len() - 1;
        buf[last] ^= 0xff;
        assert_eq!(Record::decode(&buf).unwrap_err(), RecordError::Checksum);
    }
}
