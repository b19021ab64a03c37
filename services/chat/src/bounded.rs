//! [`BoundedMap`]: what the chat service remembers of facts that do not go
//! stale (a dialog's owner, a user already stored), bounded: when full, it
//! forgets everything and fills again — a forgotten fact is only read or
//! written once more, never wrong.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// A map of at most `capacity` entries behind one lock, held only for the
/// call (never across an `.await`).
#[derive(Debug)]
pub(crate) struct BoundedMap<K, V> {
    capacity: usize,
    map: Mutex<HashMap<K, V>>,
}

impl<K: Eq + Hash, V> BoundedMap<K, V> {
    pub(crate) fn new(capacity: usize) -> Self {
        BoundedMap {
            capacity,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<K, V>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `read` applied to the entry for `key`, if any.
    pub(crate) fn read<R>(&self, key: &K, read: impl FnOnce(Option<&V>) -> R) -> R {
        read(self.map().get(key))
    }

    /// Sets `key`'s entry to `value`.
    pub(crate) fn insert(&self, key: K, value: V) {
        self.room_for(&key).insert(key, value);
    }

    /// Sets `key`'s entry to `value` unless it has one.
    pub(crate) fn insert_if_absent(&self, key: K, value: V) {
        self.room_for(&key).entry(key).or_insert(value);
    }

    /// The map, emptied first when `key` is new and it is full.
    fn room_for(&self, key: &K) -> MutexGuard<'_, HashMap<K, V>> {
        let mut map = self.map();
        if map.len() >= self.capacity && !map.contains_key(key) {
            map.clear();
        }
        map
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_holds_more_than_its_capacity() {
        let map = BoundedMap::new(3);
        for key in 0..10 {
            map.insert(key, key * 2);
            assert!(map.len() <= 3);
            assert_eq!(map.read(&key, |v| v.copied()), Some(key * 2));
        }
        map.insert_if_absent(9, 0);
        assert_eq!(map.read(&9, |v| v.copied()), Some(18), "kept");
    }
}
