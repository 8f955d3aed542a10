//! A map from broker-assigned ids to values, laid out for ids that are handed out in increasing
//! order and mostly retired in roughly the same order (jobs).
//!
//! Live ids close to the newest sit in a window: a ring of slots indexed by `id - base`, so a new
//! id is an append and a lookup is an index, and consecutive jobs sit next to each other in
//! memory. A hash table spreads them over the whole table instead: with a deep queue every
//! insertion and every lookup is a cache miss, and growing it rewrites every entry (measured:
//! two fifths of the broker's time when pipelined clients queue millions of jobs).
//!
//! An id that outlives the ones after it (a job scheduled for tomorrow, a dead letter) would pin
//! the window open behind it, so once fewer than a quarter of the window's slots are live the
//! oldest entries move to an ordinary hash map ("stragglers"): the window never holds more than
//! four slots per live id (plus [`MIN_WINDOW`]), whatever the order ids are retired in.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;

/// Below this many slots the window is never thinned out.
pub const MIN_WINDOW: usize = 1024;

#[derive(Debug)]
pub struct IdTable<T> {
    /// The id of `window[0]`; every straggler's id is below it.
    base: u64,
    window: VecDeque<Option<T>>,
    /// Occupied slots in `window`.
    live: usize,
    stragglers: FxHashMap<u64, T>,
    /// Empty slots filled in for skipped ids, over the table's life (tests of the cost).
    #[cfg(test)]
    gap_slots: usize,
}

impl<T> Default for IdTable<T> {
    fn default() -> Self {
        IdTable {
            base: 0,
            window: VecDeque::new(),
            live: 0,
            stragglers: FxHashMap::default(),
            #[cfg(test)]
            gap_slots: 0,
        }
    }
}

impl<T> IdTable<T> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.live + self.stragglers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Slots held: the window's capacity plus the stragglers'. It only grows until
    /// [`IdTable::shrink_to_fit`], so it tells the high-water mark since the last shrink.
    pub fn capacity(&self) -> usize {
        self.window.capacity() + self.stragglers.capacity()
    }

    fn slot(&self, id: u64) -> Option<usize> {
        let offset = id.checked_sub(self.base)?;
        usize::try_from(offset).ok().filter(|&i| i < self.window.len())
    }

    pub fn get(&self, id: &u64) -> Option<&T> {
        match self.slot(*id) {
            Some(i) => self.window[i].as_ref(),
            None => self.stragglers.get(id),
        }
    }

    pub fn get_mut(&mut self, id: &u64) -> Option<&mut T> {
        match self.slot(*id) {
            Some(i) => self.window[i].as_mut(),
            None => self.stragglers.get_mut(id),
        }
    }

    /// Inserts `value` under `id`, returning the value it replaces.
    pub fn insert(&mut self, id: u64, value: T) -> Option<T> {
        if let Some(i) = self.slot(id) {
            let old = self.window[i].replace(value);
            if old.is_none() {
                self.live += 1;
            }
            return old;
        }
        if id < self.base {
            return self.stragglers.insert(id, value);
        }
        if self.window.is_empty() {
            self.base = id;
        }
        let end = self.base + self.window.len() as u64;
        let gap = id - end;
        if gap > (self.window.len() as u64).max(MIN_WINDOW as u64) {
            // A jump far past the newest id: filling the gap would cost more slots than there
            // are live ids, so the window starts over at `id`.
            self.evict_all();
            self.base = id;
        } else {
            #[cfg(test)]
            {
                self.gap_slots += gap as usize;
            }
            self.window.extend((0..gap).map(|_| None));
        }
        self.window.push_back(Some(value));
        self.live += 1;
        self.trim();
        None
    }

    pub fn remove(&mut self, id: &u64) -> Option<T> {
        let Some(i) = self.slot(*id) else { return self.stragglers.remove(id) };
        let old = self.window[i].take()?;
        self.live -= 1;
        self.trim();
        Some(old)
    }

    /// Drops empty slots at the front and, while the window is mostly empty, moves its oldest
    /// live entries to the stragglers.
    fn trim(&mut self) {
        while let Some(front) = self.window.front() {
            let sparse = self.window.len() > MIN_WINDOW && self.live * 4 < self.window.len();
            if front.is_some() && !sparse {
                break;
            }
            if let Some(Some(value)) = self.window.pop_front() {
                self.live -= 1;
                self.stragglers.insert(self.base, value);
            }
            self.base += 1;
        }
        // Empty slots at the back stay: they are ids already handed out, and new ids come after
        // them. Dropping them would make the next insert fill them in again, once per insert
        // while older ids stay live (quadratic in that backlog).
    }

    fn evict_all(&mut self) {
        let base = self.base;
        for (i, slot) in self.window.drain(..).enumerate() {
            if let Some(value) = slot {
                self.stragglers.insert(base + i as u64, value);
            }
        }
        self.live = 0;
    }

    /// Every entry, window first (in id order), then the stragglers (in no order).
    pub fn iter(&self) -> impl Iterator<Item = (u64, &T)> {
        let base = self.base;
        self.window
            .iter()
            .enumerate()
            .filter_map(move |(i, slot)| slot.as_ref().map(|v| (base + i as u64, v)))
            .chain(self.stragglers.iter().map(|(&id, v)| (id, v)))
    }

    pub fn shrink_to_fit(&mut self) {
        self.window.shrink_to_fit();
        self.stragglers.shrink_to_fit();
    }

    /// Slots in the window, live or not (for tests of the bound).
    #[cfg(test)]
    fn window_len(&self) -> usize {
        self.window.len()
    }
}

/// Like `HashMap`'s: panics when `id` is absent, so only for ids known to be present.
impl<T> std::ops::Index<&u64> for IdTable<T> {
    type Output = T;

    fn index(&self, id: &u64) -> &T {
        match self.get(id) {
            Some(value) => value,
            None => panic!("id {id} is not in the table"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_ids_live_in_the_window() {
        let mut t = IdTable::new();
        for id in 1..=5000u64 {
            assert_eq!(t.insert(id, id * 10), None);
        }
        assert_eq!(t.len(), 5000);
        assert!(t.stragglers.is_empty());
        assert_eq!(t.get(&1), Some(&10));
        assert_eq!(t.get(&5000), Some(&50000));
        assert_eq!(t.get(&0), None);
        assert_eq!(t.get(&5001), None);
        for id in 1..=4999u64 {
            assert_eq!(t.remove(&id), Some(id * 10));
        }
        assert_eq!(t.remove(&1), None);
        assert_eq!(t.len(), 1);
        assert_eq!(t.window_len(), 1, "retired ids at the front are dropped");
        assert_eq!(t.remove(&5000), Some(50000));
        assert!(t.is_empty());
        assert_eq!(t.window_len(), 0);
    }

    #[test]
    fn one_job_at_a_time_behind_a_live_backlog_fills_no_gaps() {
        // 20,000 live ids (jobs scheduled for later, say), then short jobs one at a time: each
        // new id goes after the last one handed out, whether or not that one is still live.
        let mut t = IdTable::new();
        for id in 1..=20_000u64 {
            t.insert(id, ());
        }
        for id in 20_001..=40_000u64 {
            t.insert(id, ());
            t.remove(&id);
        }
        assert_eq!(t.len(), 20_000);
        assert_eq!(t.gap_slots, 0, "no empty slot was filled in again");
    }

    #[test]
    fn replacing_and_removing_out_of_order() {
        let mut t = IdTable::new();
        for id in 10..20u64 {
            t.insert(id, id);
        }
        assert_eq!(t.insert(15, 150), Some(15));
        assert_eq!(t.remove(&12), Some(12));
        assert_eq!(t.get(&12), None);
        assert_eq!(t.insert(12, 120), None, "a retired slot inside the window can be filled again");
        assert_eq!(t.len(), 10);
        let mut keys: Vec<_> = t.iter().map(|(id, _)| id).collect();
        keys.sort_unstable();
        assert_eq!(keys, (10..20).collect::<Vec<_>>());
    }

    #[test]
    fn a_long_lived_id_does_not_pin_the_window_open() {
        let mut t = IdTable::new();
        t.insert(1, 0u64);
        // A million short-lived ids behind it, a few in flight at a time.
        for id in 2..1_000_000u64 {
            t.insert(id, id);
            if id >= 10 {
                t.remove(&(id - 8));
            }
            assert!(t.window_len() <= MIN_WINDOW.max(4 * t.len()) + 1, "window {} for {} ids", t.window_len(), t.len());
        }
        assert_eq!(t.get(&1), Some(&0), "the old id moved to the stragglers and is still found");
        assert_eq!(t.len(), 1 + 8);
        assert_eq!(t.remove(&1), Some(0));
        assert_eq!(t.get(&1), None);
    }

    #[test]
    fn ids_below_the_window_and_far_jumps() {
        let mut t = IdTable::new();
        t.insert(100, "a");
        t.insert(101, "b");
        t.insert(50, "old");
        t.insert(1_000_000_000, "far");
        assert!(t.window_len() <= 1, "a far jump does not fill the gap");
        assert_eq!(t.get(&50), Some(&"old"));
        assert_eq!(t.get(&100), Some(&"a"));
        assert_eq!(t.get(&101), Some(&"b"));
        assert_eq!(t.get(&1_000_000_000), Some(&"far"));
        assert_eq!(t.len(), 4);
        // Jumps of the window's own length each time: the gaps are filled, yet the window stays
        // within four slots per live id.
        let mut u = IdTable::new();
        let mut id = 0u64;
        for _ in 0..40 {
            u.insert(id, ());
            id += (u.window_len() as u64).max(MIN_WINDOW as u64);
            assert!(u.window_len() <= MIN_WINDOW.max(4 * u.len()) + 1);
        }
        assert_eq!(u.len(), 40);
        assert_eq!(t.insert(101, "b2"), Some("b"));
        assert_eq!(t.remove(&100), Some("a"));
        assert_eq!(t.remove(&1_000_000_000), Some("far"));
        // The window is empty now; an id below an old straggler's must not shadow it.
        t.insert(40, "forty");
        assert_eq!(t.get(&101), Some(&"b2"));
        assert_eq!(t.get(&40), Some(&"forty"));
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn matches_a_hash_map_under_random_operations() {
        use std::collections::HashMap;
        let mut t = IdTable::new();
        let mut m = HashMap::new();
        let mut next = 1u64;
        // A small linear congruential generator: deterministic, no extra dependency.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rand = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            seed >> 33
        };
        for _ in 0..200_000 {
            match rand() % 10 {
                0..=4 => {
                    t.insert(next, next);
                    m.insert(next, next);
                    next += 1 + u64::from(rand() % 50 == 0) * (rand() % 5000);
                }
                5..=8 if next > 1 => {
                    // Mostly recent ids, sometimes old ones.
                    let back = if rand() % 4 == 0 { rand() % next } else { rand() % 64 };
                    let id = next.saturating_sub(back + 1);
                    assert_eq!(t.remove(&id), m.remove(&id), "remove {id}");
                }
                _ => {
                    let id = rand() % (next + 10);
                    assert_eq!(t.get(&id), m.get(&id), "get {id}");
                }
            }
            assert_eq!(t.len(), m.len());
        }
        let mut a: Vec<_> = t.iter().map(|(id, v)| (id, *v)).collect();
        let mut b: Vec<_> = m.into_iter().collect();
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b);
    }
}
