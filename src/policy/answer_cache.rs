//! Answers an external auth service gave (`forward_auth`, `introspection`),
//! kept for a while so that a session's every request does not cost a
//! round trip. Bounded, split into shards each under its own short lock
//! (never held across an await), and every entry carries the instant it
//! stops being used.
//!
//! Entries are found by a SHA-256 digest of what keys them (a token, the
//! values of some headers), not by the text itself: the table never holds
//! a usable credential, a key costs 32 bytes whatever the cookie's length,
//! and since no one can choose a digest, the map needs no keyed hasher.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use rustc_hash::FxBuildHasher;
use sha2::{Digest, Sha256};

const SHARDS: usize = 16;

/// A digest of what keys an entry.
pub type CacheKey = [u8; 32];

type Shard<V> = HashMap<CacheKey, (Instant, V), FxBuildHasher>;

/// A bounded map from a key's digest to an answer, until a deadline.
pub struct AnswerCache<V> {
    shards: Box<[Mutex<Shard<V>>]>,
    per_shard: usize,
}

/// Builds a [`CacheKey`] from parts, each length-prefixed so that no two
/// different lists of parts make the same input to the digest.
#[derive(Default)]
pub struct KeyBuilder(Sha256);

impl KeyBuilder {
    /// Adds one part.
    pub fn part(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
        self
    }

    /// Adds a count (how many parts of a kind follow), so that parts of
    /// one kind cannot pass for another's.
    pub fn count(&mut self, n: usize) -> &mut Self {
        self.0.update(u64::MAX.to_le_bytes());
        self.0.update((n as u64).to_le_bytes());
        self
    }

    /// The digest.
    pub fn finish(self) -> CacheKey {
        self.0.finalize().into()
    }
}

impl<V: Clone> AnswerCache<V> {
    /// A cache of about `capacity` entries; None for 0 (no cache).
    pub fn new(capacity: usize) -> Option<AnswerCache<V>> {
        if capacity == 0 {
            return None;
        }
        Some(AnswerCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: capacity.div_ceil(SHARDS),
        })
    }

    fn shard(&self, key: &CacheKey) -> &Mutex<Shard<V>> {
        &self.shards[usize::from(key[0]) % SHARDS]
    }

    /// The entry for `key`, if it is still good at `now`.
    pub fn get(&self, key: &CacheKey, now: Instant) -> Option<V> {
        let shard = crate::lock(self.shard(key));
        let (until, value) = shard.get(key)?;
        (now < *until).then(|| value.clone())
    }

    /// Keeps `value` for `key` until `until`, making room by dropping
    /// entries that are no longer good first and, if none, an arbitrary one.
    pub fn insert(&self, key: CacheKey, value: V, until: Instant, now: Instant) {
        if until <= now {
            return;
        }
        let mut shard = crate::lock(self.shard(&key));
        if shard.len() >= self.per_shard && !shard.contains_key(&key) {
            shard.retain(|_, (u, _)| now < *u);
            if shard.len() >= self.per_shard
                && let Some(victim) = shard.keys().next().copied()
            {
                shard.remove(&victim);
            }
        }
        shard.insert(key, (until, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn key(text: &str) -> CacheKey {
        let mut k = KeyBuilder::default();
        k.part(text.as_bytes());
        k.finish()
    }

    #[test]
    fn an_entry_lasts_until_its_deadline_and_not_past_it() {
        let cache = AnswerCache::new(100).unwrap();
        let t0 = Instant::now();
        let until = t0 + Duration::from_secs(60);
        cache.insert(key("a"), 1, until, t0);
        assert_eq!(cache.get(&key("a"), t0), Some(1));
        assert_eq!(
            cache.get(&key("a"), until - Duration::from_millis(1)),
            Some(1)
        );
        assert_eq!(cache.get(&key("a"), until), None);
        assert_eq!(cache.get(&key("b"), t0), None);
        // An answer already out of date is not kept at all.
        cache.insert(key("c"), 3, t0, t0);
        assert_eq!(cache.get(&key("c"), t0 - Duration::from_millis(1)), None);
    }

    #[test]
    fn the_cache_stays_within_its_size_and_keeps_the_newest() {
        let cache = AnswerCache::new(32).unwrap();
        let t0 = Instant::now();
        for i in 0..10_000 {
            cache.insert(key(&i.to_string()), i, t0 + Duration::from_secs(60), t0);
        }
        let held: usize = cache.shards.iter().map(|s| crate::lock(s).len()).sum();
        assert!(held <= 32, "{held}");
        assert_eq!(cache.get(&key("9999"), t0), Some(9999));
    }

    #[test]
    fn out_of_date_entries_make_room_first() {
        let cache = AnswerCache::new(SHARDS).unwrap();
        let t0 = Instant::now();
        cache.insert(key("old"), 1, t0 + Duration::from_secs(1), t0);
        let later = t0 + Duration::from_secs(5);
        cache.insert(key("new"), 2, later + Duration::from_secs(60), later);
        assert_eq!(cache.get(&key("new"), later), Some(2));
        assert_eq!(cache.get(&key("old"), later), None);
    }

    #[test]
    fn parts_are_told_apart_however_they_are_cut() {
        let of = |parts: &[&str]| {
            let mut k = KeyBuilder::default();
            for p in parts {
                k.part(p.as_bytes());
            }
            k.finish()
        };
        assert_ne!(of(&["ab", "c"]), of(&["a", "bc"]));
        assert_ne!(of(&["abc"]), of(&["abc", ""]));
        let counted = |n: usize, parts: &[&str]| {
            let mut k = KeyBuilder::default();
            k.count(n);
            for p in parts {
                k.part(p.as_bytes());
            }
            k.finish()
        };
        assert_ne!(counted(1, &["a"]), counted(0, &["a"]));
        assert!(AnswerCache::<u8>::new(0).is_none());
    }
}
