//! Bounded tables keyed by address, account or recipient.
//!
//! Every table that an attacker can grow (one entry per source address, per JID...)
//! has a hard cap. When it is full, the least recently used entry is evicted and the
//! eviction is counted, so an attack with random addresses or JIDs costs a bounded
//! amount of memory and shows up in metrics (`xmppwall_table_evictions_total`).
//! What an eviction means for each limit is documented beside that limit.

use std::hash::Hash;

use lru::LruCache;

/// How many of the oldest entries a full table looks through for an idle one.
pub const EVICTION_SCAN: usize = 256;

/// A map with a hard cap on entries, evicting the least recently used.
#[derive(Debug)]
pub struct BoundedTable<K: Hash + Eq, V> {
    name: &'static str,
    /// Grows as entries come (nothing is reserved up front: many tables are per
    /// account and mostly small); `cap` is enforced on insertion.
    entries: LruCache<K, V>,
    cap: usize,
    evictions: u64,
}

impl<K: Hash + Eq, V> BoundedTable<K, V> {
    pub fn new(name: &'static str, cap: usize) -> Self {
        BoundedTable {
            name,
            entries: LruCache::unbounded(),
            cap: cap.max(1),
            evictions: 0,
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The entry for `key`, made with `make` if absent (evicting the least recently
    /// used entry when full), and marked as most recently used.
    pub fn entry(&mut self, key: K, make: impl FnOnce() -> V) -> &mut V {
        if self.entries.len() >= self.cap && !self.entries.contains(&key) {
            self.entries.pop_lru();
            self.evictions += 1;
        }
        self.entries.get_or_insert_mut(key, make)
    }

    /// Like [`Self::entry`], but a full table chooses what to evict among the
    /// [`EVICTION_SCAN`] oldest entries: the oldest for which `prefer` holds, else the
    /// oldest for which `allow` holds. When none may go, nothing is evicted and `None`
    /// is returned: the caller refuses the newcomer.
    pub fn entry_evicting(
        &mut self,
        key: K,
        make: impl FnOnce() -> V,
        prefer: impl Fn(&V) -> bool,
        allow: impl Fn(&V) -> bool,
    ) -> Option<&mut V>
    where
        K: Clone,
    {
        if self.entries.len() >= self.cap && !self.entries.contains(&key) {
            let mut fallback = None;
            let mut victim = None;
            for (k, v) in self.entries.iter().rev().take(EVICTION_SCAN) {
                if prefer(v) {
                    victim = Some(k.clone());
                    break;
                }
                if fallback.is_none() && allow(v) {
                    fallback = Some(k.clone());
                }
            }
            let victim = victim.or(fallback)?;
            self.entries.pop(&victim);
            self.evictions += 1;
        }
        Some(self.entries.get_or_insert_mut(key, make))
    }

    /// Like [`Self::entry`] for a borrowed key: the key is cloned only when the entry
    /// is new, so a lookup of a hot entry allocates nothing.
    pub fn entry_ref(&mut self, key: &K, make: impl FnOnce() -> V) -> &mut V
    where
        K: Clone,
    {
        if !self.entries.contains(key) {
            return self.entry(key.clone(), make);
        }
        self.entries
            .get_mut(key)
            .expect("the entry was found just above, under the same borrow")
    }

    /// By a borrowed key (`&str` for a `String` key): a lookup allocates nothing.
    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.get_mut(key)
    }

    pub fn peek<Q>(&self, key: &Q) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.peek(key)
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.entries.pop(key)
    }

    /// Removes every entry for which `idle` holds, oldest first, stopping at the first
    /// that is still in use; keeps the table small without a sweep over everything.
    pub fn trim_idle(&mut self, mut idle: impl FnMut(&V) -> bool) {
        while let Some((_, v)) = self.entries.peek_lru() {
            if !idle(v) {
                break;
            }
            self.entries.pop_lru();
        }
    }

    /// Every entry, most recently used first, without touching recency.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries.iter()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    pub fn evictions(&self) -> u64 {
        self.evictions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_table_evicts_the_least_recently_used_and_counts_it() {
        let mut t = BoundedTable::new("t", 2);
        *t.entry(1, || 0) += 1;
        *t.entry(2, || 0) += 1;
        *t.entry(1, || 0) += 1; // 1 is now the most recent
        *t.entry(3, || 0) += 1; // evicts 2
        assert_eq!(t.len(), 2);
        assert_eq!(t.evictions(), 1);
        assert_eq!(t.peek(&1), Some(&2));
        assert_eq!(t.peek(&2), None);
    }

    #[test]
    fn table_never_grows_past_its_cap() {
        let mut t = BoundedTable::new("t", 100);
        for i in 0..10_000u32 {
            t.entry(i, || i);
        }
        assert_eq!(t.len(), 100);
        assert_eq!(t.evictions(), 9_900);
    }

    #[test]
    fn full_table_evicts_an_idle_entry_before_an_older_busy_one() {
        let mut t = BoundedTable::new("t", 3);
        t.entry(1, || 1); // busy (odd), oldest
        t.entry(2, || 2);
        t.entry(3, || 3);
        assert!(t
            .entry_evicting(4, || 4, |v| v % 2 == 0, |_| true)
            .is_some());
        assert!(t.peek(&1).is_some());
        assert!(t.peek(&2).is_none());
        assert_eq!(t.evictions(), 1);
        // nothing preferred: the oldest allowed goes (1 is not allowed, 3 is)
        assert!(t.entry_evicting(5, || 5, |_| false, |v| *v != 1).is_some());
        assert!(t.peek(&1).is_some());
        assert!(t.peek(&3).is_none());
        // none may go: the newcomer is refused and nothing is forgotten
        assert!(t.entry_evicting(6, || 6, |_| false, |_| false).is_none());
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn trim_idle_stops_at_the_first_busy_entry() {
        let mut t = BoundedTable::new("t", 10);
        for i in 0..5u32 {
            t.entry(i, || i);
        }
        t.trim_idle(|v| *v < 2);
        assert_eq!(t.len(), 3);
        assert!(t.peek(&2).is_some());
    }
}
