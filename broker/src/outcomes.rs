//! Outcomes of finished foreground jobs kept for a while, by (function, unique), for clients that
//! ask for it with `OPTION_REQ gearfleet-retain-outcomes` (the operator's Job controller).
//!
//! A client that lost its connection while its job ran (an operator restart) submits the same
//! (function, unique) again and gets the job's outcome at once instead of a second run. Ordinary
//! Gearman clients never see this: their submissions are neither recorded nor answered from here.
//! Bounded by a count and a time to live; the oldest go first.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::store::{OutcomeKind, OutcomeRecord};

/// How a retained job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retained {
    /// WORK_COMPLETE with this result.
    Complete(Bytes),
    /// WORK_FAIL.
    Fail,
    /// WORK_EXCEPTION (or a timeout) with this message.
    Exception(Bytes),
}

impl Retained {
    /// The journal record of this outcome of job `id`, ended at `at_ms`.
    pub fn to_record(&self, id: u64, at_ms: u64, function: Bytes, unique: Bytes) -> OutcomeRecord {
        let (kind, payload) = match self {
            Retained::Complete(b) => (OutcomeKind::Complete, b.clone()),
            Retained::Fail => (OutcomeKind::Fail, Bytes::new()),
            Retained::Exception(b) => (OutcomeKind::Exception, b.clone()),
        };
        OutcomeRecord { id, at_ms, kind, function, unique, payload }
    }

    /// The outcome a journal record holds.
    pub fn from_record(r: &OutcomeRecord) -> Retained {
        match r.kind {
            OutcomeKind::Complete => Retained::Complete(r.payload.clone()),
            OutcomeKind::Fail => Retained::Fail,
            OutcomeKind::Exception => Retained::Exception(r.payload.clone()),
        }
    }

    fn size(&self) -> usize {
        match self {
            Retained::Complete(b) | Retained::Exception(b) => b.len(),
            Retained::Fail => 0,
        }
    }
}

/// The store: at most `max_entries` outcomes and `max_bytes` of payload, each for `ttl`.
#[derive(Debug)]
pub struct Outcomes {
    map: HashMap<(u32, Bytes), (Retained, Instant)>,
    order: VecDeque<((u32, Bytes), Instant)>,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
    ttl: Duration,
}

impl Outcomes {
    /// An empty store with these bounds.
    pub fn new(max_entries: usize, max_bytes: usize, ttl: Duration) -> Outcomes {
        Outcomes { map: HashMap::new(), order: VecDeque::new(), bytes: 0, max_entries, max_bytes, ttl }
    }

    /// Records how the job `(function, unique)` ended, replacing an older outcome of the same key.
    pub fn insert(&mut self, function: u32, unique: Bytes, outcome: Retained, now: Instant) {
        if self.max_entries == 0 || outcome.size() > self.max_bytes {
            return;
        }
        let key = (function, unique);
        self.bytes += outcome.size();
        if let Some((old, _)) = self.map.insert(key.clone(), (outcome, now)) {
            self.bytes -= old.size();
        }
        self.order.push_back((key, now));
        while self.map.len() > self.max_entries || self.bytes > self.max_bytes {
            if !self.pop_oldest() {
                break;
            }
        }
    }

    /// The retained outcome of `(function, unique)`, if it has not expired.
    pub fn get(&self, function: u32, unique: &Bytes, now: Instant) -> Option<&Retained> {
        let (outcome, at) = self.map.get(&(function, unique.clone()))?;
        (now.saturating_duration_since(*at) < self.ttl).then_some(outcome)
    }

    /// How long an outcome is kept.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Every outcome that has not expired at `now`, oldest first: (function, unique key, outcome,
    /// when it was recorded).
    pub fn live(&self, now: Instant) -> Vec<(u32, &Bytes, &Retained, Instant)> {
        let mut live: Vec<_> = self
            .map
            .iter()
            .filter(|(_, (_, at))| now.saturating_duration_since(*at) < self.ttl)
            .map(|((f, u), (o, at))| (*f, u, o, *at))
            .collect();
        live.sort_by_key(|e| e.3);
        live
    }

    /// Drops expired outcomes (housekeeping).
    pub fn expire(&mut self, now: Instant) {
        while let Some((_, at)) = self.order.front() {
            if now.saturating_duration_since(*at) < self.ttl {
                break;
            }
            self.pop_oldest();
        }
        if self.map.is_empty() && self.order.capacity() > 1024 {
            self.order.shrink_to_fit();
            self.map.shrink_to_fit();
        }
    }

    /// Number of retained outcomes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is retained.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn pop_oldest(&mut self) -> bool {
        let Some((key, at)) = self.order.pop_front() else { return false };
        // The order queue may hold stale entries of keys recorded again later.
        if self.map.get(&key).is_some_and(|(_, t)| *t == at)
            && let Some((old, _)) = self.map.remove(&key)
        {
            self.bytes -= old.size();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn keeps_an_outcome_until_its_ttl() {
        let t0 = Instant::now();
        let mut o = Outcomes::new(10, 1024, Duration::from_secs(60));
        o.insert(1, b("u"), Retained::Complete(b("r")), t0);
        assert_eq!(o.get(1, &b("u"), t0 + Duration::from_secs(59)), Some(&Retained::Complete(b("r"))));
        assert_eq!(o.get(2, &b("u"), t0), None, "keyed by function too");
        assert_eq!(o.get(1, &b("u"), t0 + Duration::from_secs(60)), None);
        o.expire(t0 + Duration::from_secs(61));
        assert!(o.is_empty());
    }

    #[test]
    fn bounded_by_count_and_bytes_oldest_first() {
        let t0 = Instant::now();
        let mut o = Outcomes::new(2, 10, Duration::from_secs(60));
        o.insert(1, b("a"), Retained::Fail, t0);
        o.insert(1, b("b"), Retained::Fail, t0);
        o.insert(1, b("c"), Retained::Fail, t0);
        assert_eq!(o.len(), 2);
        assert_eq!(o.get(1, &b("a"), t0), None);
        // Bytes: 5 + 5 fit in 10; one more byte pushes the oldest payload out.
        let mut o = Outcomes::new(100, 10, Duration::from_secs(60));
        o.insert(1, b("d"), Retained::Complete(b("01234")), t0);
        o.insert(1, b("e"), Retained::Complete(b("56789")), t0);
        assert_eq!(o.len(), 2);
        o.insert(1, b("f"), Retained::Exception(b("x")), t0);
        assert_eq!(o.get(1, &b("d"), t0), None);
        assert!(o.get(1, &b("e"), t0).is_some() && o.get(1, &b("f"), t0).is_some());
        o.insert(1, b("g"), Retained::Complete(b("too large for the store")), t0);
        assert!(o.get(1, &b("g"), t0).is_none(), "an outcome larger than the store is not kept");
    }

    #[test]
    fn recording_a_key_again_replaces_it_and_survives_its_old_expiry_slot() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(10);
        let mut o = Outcomes::new(10, 100, ttl);
        o.insert(1, b("k"), Retained::Fail, t0);
        o.insert(1, b("k"), Retained::Exception(b("boom")), t0 + Duration::from_secs(5));
        o.expire(t0 + Duration::from_secs(11));
        assert_eq!(o.get(1, &b("k"), t0 + Duration::from_secs(11)), Some(&Retained::Exception(b("boom"))));
        o.expire(t0 + Duration::from_secs(16));
        assert!(o.is_empty());
    }
}
