//! A small least-recently-used map for the leaf cache: a hash map for the
//! entries and an ordered map from a use counter to the key for eviction,
//! so both a hit and an eviction cost O(log n).

use std::collections::{BTreeMap, HashMap};

#[derive(Debug)]
pub(crate) struct Lru<V> {
    capacity: usize,
    clock: u64,
    entries: HashMap<String, (u64, V)>,
    by_use: BTreeMap<u64, String>,
}

impl<V> Lru<V> {
    /// `capacity` is at least 1: a cache of nothing would mint on every
    /// handshake.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            clock: 0,
            entries: HashMap::new(),
            by_use: BTreeMap::new(),
        }
    }

    /// The value for `key`, marked as just used.
    pub(crate) fn get(&mut self, key: &str) -> Option<&V> {
        self.clock += 1;
        let (used, value) = self.entries.get_mut(key)?;
        if let Some(k) = self.by_use.remove(used) {
            self.by_use.insert(self.clock, k);
        }
        *used = self.clock;
        Some(value)
    }

    /// Inserts or replaces `key`, evicting the least recently used entry
    /// when full.
    pub(crate) fn insert(&mut self, key: String, value: V) {
        self.clock += 1;
        if let Some((used, _)) = self.entries.remove(&key) {
            self.by_use.remove(&used);
        } else if self.entries.len() >= self.capacity
            && let Some((_, oldest)) = self.by_use.pop_first()
        {
            self.entries.remove(&oldest);
        }
        self.by_use.insert(self.clock, key.clone());
        self.entries.insert(key, (self.clock, value));
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_least_recently_used() {
        let mut lru = Lru::new(2);
        lru.insert("a".into(), 1);
        lru.insert("b".into(), 2);
        assert_eq!(lru.get("a"), Some(&1));
        lru.insert("c".into(), 3);
        assert_eq!(lru.get("b"), None);
        assert_eq!(lru.get("a"), Some(&1));
        assert_eq!(lru.get("c"), Some(&3));
        lru.insert("c".into(), 4);
        assert_eq!(lru.len(), 2);
        assert_eq!(lru.get("c"), Some(&4));
        assert_eq!(lru.entries.len(), lru.by_use.len());
    }

    #[test]
    fn zero_capacity_still_holds_one() {
        let mut lru = Lru::new(0);
        lru.insert("a".into(), 1);
        lru.insert("b".into(), 2);
        assert_eq!(lru.len(), 1);
        assert_eq!(lru.get("b"), Some(&2));
    }
}
