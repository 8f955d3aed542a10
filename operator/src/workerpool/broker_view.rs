//! The fleet as several brokers show it (pure): every broker's `fleet status` merged into one
//! count per function, and which brokers did not answer.
//!
//! A job lives in exactly one broker, so queued, scheduled, running and dead jobs are summed. A
//! worker connects to every broker, so its connection is counted once per broker: the workers of
//! a function are the most any broker sees, and a worker busy on one broker looks idle (asleep)
//! on the others, so the busy ones are the sum of each broker's busy connections.
//!
//! With some brokers silent the view is *partial*: the counts are lower bounds, so they may
//! justify growing a function but never shrinking it (see [`BrokerView::partial`]).

use std::collections::HashMap;

use gearfleet_proto::admin::FunctionStats;

/// Broker stats by function name.
pub type StatsMap = HashMap<String, FunctionStats>;

/// Broker stats as a map by function name.
pub fn to_map(stats: Vec<FunctionStats>) -> StatsMap {
    stats.into_iter().map(|s| (s.function.clone(), s)).collect()
}

/// What every broker showed, merged.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BrokerView {
    /// Every broker's address, in the order the operator was given them.
    pub brokers: Vec<String>,
    /// The brokers that did not answer.
    pub unreachable: Vec<String>,
    /// The merged stats of the brokers that answered; `None` when none did.
    pub stats: Option<StatsMap>,
}

impl BrokerView {
    /// Merges `answers` (one per broker, by address: its stats, or `None` when it did not answer).
    pub fn merge(answers: Vec<(String, Option<StatsMap>)>) -> BrokerView {
        let mut view = BrokerView::default();
        let mut merged: Option<StatsMap> = None;
        for (addr, answer) in answers {
            view.brokers.push(addr.clone());
            let Some(stats) = answer else {
                view.unreachable.push(addr);
                continue;
            };
            let total = merged.get_or_insert_with(StatsMap::new);
            for (name, s) in stats {
                match total.get_mut(&name) {
                    Some(t) => add(t, &s),
                    None => {
                        total.insert(name, s);
                    }
                }
            }
        }
        view.stats = merged;
        view
    }

    /// A view of one broker (for tests and single-broker callers).
    pub fn single(addr: impl Into<String>, stats: Option<StatsMap>) -> BrokerView {
        BrokerView::merge(vec![(addr.into(), stats)])
    }

    /// No broker answered: queue depths are unknown.
    pub fn unknown(&self) -> bool {
        self.stats.is_none()
    }

    /// Some brokers answered and some did not: every count is a lower bound.
    pub fn partial(&self) -> bool {
        self.stats.is_some() && !self.unreachable.is_empty()
    }

    /// One line about the brokers that did not answer, e.g. `1 of 3 brokers unreachable (b:4730)`.
    pub fn unreachable_summary(&self) -> String {
        if self.brokers.len() == 1 {
            return format!("broker {} is unreachable", self.brokers[0]);
        }
        format!(
            "{} of {} brokers unreachable ({})",
            self.unreachable.len(),
            self.brokers.len(),
            self.unreachable.join(", ")
        )
    }
}

/// Adds one broker's counts of a function to the running total (see the module docs).
fn add(total: &mut FunctionStats, more: &FunctionStats) {
    for (t, m) in total.queued.iter_mut().zip(more.queued) {
        *t = t.saturating_add(m);
    }
    total.scheduled = total.scheduled.saturating_add(more.scheduled);
    total.running = total.running.saturating_add(more.running);
    total.dead = total.dead.saturating_add(more.dead);
    let busy = busy(total).saturating_add(busy(more));
    total.workers = total.workers.max(more.workers);
    total.idle_workers = total.workers.saturating_sub(busy);
    total.draining_workers = total.draining_workers.max(more.draining_workers);
}

fn busy(s: &FunctionStats) -> u64 {
    s.workers.saturating_sub(s.idle_workers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(function: &str, queued: u64, running: u64, workers: u64, idle: u64) -> FunctionStats {
        FunctionStats {
            function: function.into(),
            queued: [1, queued - 1, 0],
            running,
            workers,
            idle_workers: idle,
            scheduled: 1,
            dead: 2,
            draining_workers: 0,
        }
    }

    fn answer(addr: &str, rows: Vec<FunctionStats>) -> (String, Option<StatsMap>) {
        (addr.into(), Some(to_map(rows)))
    }

    /// Three workers connected to three brokers, two of them busy on different brokers: jobs are
    /// summed, the workers counted once, and the busy ones are the two.
    #[test]
    fn jobs_are_summed_and_workers_counted_once() {
        let view = BrokerView::merge(vec![
            answer("a:4730", vec![stats("resize", 5, 1, 3, 2)]),
            answer("b:4730", vec![stats("resize", 2, 1, 3, 2)]),
            answer("c:4730", vec![stats("resize", 1, 0, 3, 3), stats("mail", 4, 0, 0, 0)]),
        ]);
        assert!(!view.partial() && !view.unknown());
        let stats = view.stats.unwrap();
        let resize = &stats["resize"];
        assert_eq!(resize.queued_total(), 8);
        assert_eq!(resize.queued[0], 3, "per priority");
        assert_eq!(resize.running, 2);
        assert_eq!(resize.scheduled, 3);
        assert_eq!(resize.dead, 6);
        assert_eq!(resize.workers, 3, "each worker is connected to all three");
        assert_eq!(resize.idle_workers, 1, "busy on a and on b");
        assert_eq!(stats["mail"].queued_total(), 4, "a function only one broker knows");
    }

    /// A worker that has not reached every broker yet: the most any broker sees.
    #[test]
    fn workers_are_the_most_any_broker_sees_and_busy_never_exceeds_them() {
        let view = BrokerView::merge(vec![
            answer("a:4730", vec![stats("f", 1, 2, 2, 0)]),
            answer("b:4730", vec![stats("f", 1, 2, 2, 0)]),
            answer("c:4730", vec![stats("f", 1, 0, 1, 1)]),
        ]);
        let f = &view.stats.unwrap()["f"];
        assert_eq!(f.workers, 2);
        assert_eq!(f.idle_workers, 0, "four busy connections of two workers: none idle, no underflow");
    }

    #[test]
    fn silent_brokers_make_the_view_partial_or_unknown() {
        let partial = BrokerView::merge(vec![answer("a:4730", vec![stats("f", 3, 0, 1, 1)]), ("b:4730".into(), None)]);
        assert!(partial.partial());
        assert!(!partial.unknown());
        assert_eq!(partial.unreachable, vec!["b:4730".to_string()]);
        assert_eq!(partial.unreachable_summary(), "1 of 2 brokers unreachable (b:4730)");
        assert_eq!(partial.stats.unwrap()["f"].queued_total(), 3);

        let none = BrokerView::merge(vec![("a:4730".into(), None), ("b:4730".into(), None)]);
        assert!(none.unknown());
        assert!(!none.partial(), "nothing known is not a partial view");

        let one = BrokerView::single("broker:4730", None);
        assert_eq!(one.unreachable_summary(), "broker broker:4730 is unreachable");
        let up = BrokerView::single("broker:4730", Some(StatsMap::new()));
        assert!(!up.partial() && !up.unknown());
    }
}
