//! A function's index from unique keys to the job that holds each key.
//!
//! The index stores only job ids; the key bytes stay in the job itself and are read through a
//! lookup the caller passes in. A map with the key as its own entry would hold a second
//! reference to every key (plus the 32-byte `Bytes` handle and its shared header): with the
//! 36-byte UUID keys libgearman sends with every job, that was a fifth of a queued job's memory.
//!
//! An empty key is no key: it is never indexed, found or removed.
//!
//! Keys are chosen by peers, so they are hashed with a randomly keyed SipHash.

use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

/// The state's job id. A plain integer here, so this module depends on nothing else of the crate.
type JobId = u64;

#[derive(Debug, Default)]
pub struct UniqueIndex {
    table: HashTable<JobId>,
    hasher: RandomState,
}

impl UniqueIndex {
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The job holding `unique`; `unique_of` gives an indexed job's key.
    pub fn get<'a>(&self, unique: &[u8], unique_of: impl Fn(JobId) -> Option<&'a [u8]>) -> Option<JobId> {
        if unique.is_empty() {
            return None;
        }
        let hash = self.hasher.hash_one(unique);
        self.table.find(hash, |&id| unique_of(id) == Some(unique)).copied()
    }

    /// Indexes job `id` under `unique` unless another job already holds that key; returns whether
    /// it did. Every indexed job must be found by `unique_of` (it rehashes them as the table
    /// grows), so a job goes into the job table before it goes in here.
    pub fn insert<'a>(&mut self, id: JobId, unique: &[u8], unique_of: impl Fn(JobId) -> Option<&'a [u8]>) -> bool {
        if unique.is_empty() {
            return false;
        }
        let hash = self.hasher.hash_one(unique);
        let rehash = rehasher(&self.hasher, &unique_of);
        match self.table.entry(hash, |&j| unique_of(j) == Some(unique), rehash) {
            Entry::Occupied(_) => false,
            Entry::Vacant(slot) => {
                slot.insert(id);
                true
            }
        }
    }

    /// Drops job `id` from the index if it holds `unique` (another job may hold the key by now).
    pub fn remove(&mut self, id: JobId, unique: &[u8]) -> bool {
        if unique.is_empty() {
            return false;
        }
        let hash = self.hasher.hash_one(unique);
        match self.table.find_entry(hash, |&j| j == id) {
            Ok(entry) => {
                entry.remove();
                true
            }
            Err(_) => false,
        }
    }

    /// The indexed job ids, in no order.
    pub fn ids(&self) -> impl Iterator<Item = JobId> + '_ {
        self.table.iter().copied()
    }

    pub fn shrink_to_fit<'a>(&mut self, unique_of: impl Fn(JobId) -> Option<&'a [u8]>) {
        self.table.shrink_to_fit(rehasher(&self.hasher, &unique_of));
    }
}

/// The hash of an indexed job's key, for moving entries when the table is resized.
fn rehasher<'a, 'b>(
    hasher: &'b RandomState,
    unique_of: &'b impl Fn(JobId) -> Option<&'a [u8]>,
) -> impl Fn(&JobId) -> u64 + 'b {
    move |&j| unique_of(j).map_or(0, |u| hasher.hash_one(u))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn finds_removes_and_survives_growth() {
        // The "job table": id -> key.
        let keys: HashMap<JobId, Vec<u8>> = (0..5000u64).map(|id| (id, format!("key-{id}").into_bytes())).collect();
        let unique_of = |id: JobId| keys.get(&id).map(Vec::as_slice);
        let mut index = UniqueIndex::default();
        for id in 0..5000u64 {
            assert!(index.insert(id, &keys[&id], unique_of));
        }
        assert_eq!(index.len(), 5000);
        assert!(!index.insert(9999, b"key-17", unique_of), "a held key is not taken over");
        assert!(!index.insert(9998, b"", unique_of), "an empty key is no key");
        assert_eq!(index.get(b"", unique_of), None);
        assert_eq!(index.get(b"key-17", unique_of), Some(17));
        assert_eq!(index.get(b"key-5000", unique_of), None);
        assert!(!index.remove(18, b"key-17"), "only the holder's entry is removed");
        assert!(index.remove(17, b"key-17"));
        assert_eq!(index.get(b"key-17", unique_of), None);
        for id in 0..4990u64 {
            index.remove(id, &keys[&id]);
        }
        index.shrink_to_fit(unique_of);
        assert_eq!(index.len(), 10);
        for id in 4990..5000u64 {
            assert_eq!(index.get(&keys[&id], unique_of), Some(id), "found after shrinking");
        }
        let mut ids: Vec<_> = index.ids().collect();
        ids.sort_unstable();
        assert_eq!(ids, (4990..5000).collect::<Vec<_>>());
    }
}
