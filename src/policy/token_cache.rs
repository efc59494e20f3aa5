//! Tokens a `jwt` policy has already verified, so that a client sending the
//! same token again (every request of a session does) costs a hash lookup
//! instead of a signature check: 4 µs for HS256, 60 µs for ES256 on the
//! benchmark machine (benches/policy_check.rs). Envoy's `jwt_cache_config`
//! does the same.
//!
//! Only tokens that passed every check are kept, with the key set they were
//! verified under: when a fetched key set changes, its entries stop
//! matching, so a key removed by rotation is not honoured from the cache.
//! Expiry is checked again on every hit. The table is split into shards,
//! each under its own short lock (never held across an await), and bounded.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::{Arc, Mutex};

use http::HeaderValue;

use crate::policy::context::Identity;

/// What a verified token grants, ready to apply to a request.
pub struct Verified {
    /// Who it names (the consumer) and all its claims.
    pub identity: Arc<Identity>,
    /// The value of each `forward_claims` header, in the policy's order.
    pub forwarded: Vec<Option<HeaderValue>>,
    /// Unix time (seconds, leeway included) after which it is expired.
    pub expires: Option<u64>,
    /// The key set generation it was verified under.
    pub generation: u64,
}

const SHARDS: usize = 16;

/// Entries by the token's keyed hash, which picks the shard and is the
/// map's key, so a lookup hashes the token once; the token itself is kept
/// to tell two tokens with one hash apart.
type Shard = HashMap<u64, (Box<str>, Arc<Verified>), BuildHasherDefault<AlreadyHashed>>;

/// The map's hasher: its keys are hashes already (keyed ones, so a
/// client cannot aim a collision), and hashing them again would be waste.
#[derive(Default)]
pub struct AlreadyHashed(u64);

impl Hasher for AlreadyHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys come here; fold anything else in anyway.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A bounded map from token text to what it grants.
pub struct TokenCache {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
    hasher: RandomState,
}

impl TokenCache {
    /// A cache of about `capacity` tokens; None for 0 (no cache).
    pub fn new(capacity: usize) -> Option<TokenCache> {
        if capacity == 0 {
            return None;
        }
        Some(TokenCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: capacity.div_ceil(SHARDS),
            hasher: RandomState::new(),
        })
    }

    /// The token's hash and its shard, locked.
    fn shard(&self, token: &str) -> (u64, std::sync::MutexGuard<'_, Shard>) {
        // A token's tail is its signature: 32 bytes of it and the length tell
        // tokens apart as well as the whole would, at a tenth of the hashing
        // for an RS256 token. (Two tokens with one hash are still told apart
        // by comparing them whole; a forged token sharing a real one's tail
        // never verifies, so it can neither evict nor replace that entry.)
        let tail = &token.as_bytes()[token.len().saturating_sub(32)..];
        let hash = self.hasher.hash_one((token.len(), tail));
        // The low bits serve the map; the shard comes from the high ones.
        let shard = &self.shards[(hash >> 60) as usize % SHARDS];
        let guard = crate::lock(shard);
        (hash, guard)
    }

    /// The entry for `token` if it was verified under `generation` and has
    /// not expired at `now` (Unix seconds).
    pub fn get(&self, token: &str, generation: u64, now: u64) -> Option<Arc<Verified>> {
        let (hash, shard) = self.shard(token);
        let (held, hit) = shard.get(&hash)?;
        let live = **held == *token
            && hit.generation == generation
            && hit.expires.is_none_or(|e| now <= e);
        live.then(|| hit.clone())
    }

    /// Keeps `verified` for `token`, making room by dropping expired or
    /// stale entries first and, if none, an arbitrary one.
    pub fn insert(&self, token: &str, verified: Arc<Verified>, now: u64) {
        let (hash, mut shard) = self.shard(token);
        if shard.len() >= self.per_shard && !shard.contains_key(&hash) {
            let generation = verified.generation;
            shard.retain(|_, (_, v)| {
                v.generation == generation && v.expires.is_none_or(|e| now <= e)
            });
            if shard.len() >= self.per_shard
                && let Some(victim) = shard.keys().next().cloned()
            {
                shard.remove(&victim);
            }
        }
        shard.insert(hash, (token.into(), verified));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verified(expires: Option<u64>, generation: u64) -> Arc<Verified> {
        Arc::new(Verified {
            identity: Arc::default(),
            forwarded: Vec::new(),
            expires,
            generation,
        })
    }

    #[test]
    fn a_hit_needs_the_same_key_set_and_an_unexpired_token() {
        let cache = TokenCache::new(100).unwrap();
        cache.insert("t1", verified(Some(1_000), 7), 500);
        assert!(cache.get("t1", 7, 999).is_some());
        assert!(cache.get("t1", 7, 1_000).is_some());
        assert!(cache.get("t1", 7, 1_001).is_none(), "expired");
        assert!(cache.get("t1", 8, 999).is_none(), "another key set");
        assert!(cache.get("t2", 7, 999).is_none());
        cache.insert("forever", verified(None, 7), 500);
        assert!(cache.get("forever", 7, u64::MAX).is_some());
    }

    #[test]
    fn the_cache_stays_within_its_size() {
        let cache = TokenCache::new(32).unwrap();
        for i in 0..10_000 {
            cache.insert(&format!("token-{i}"), verified(Some(2_000), 1), 1_000);
        }
        let held: usize = cache.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(held <= 32, "{held}");
        // The newest entry is always kept.
        assert!(cache.get("token-9999", 1, 1_000).is_some());
    }

    #[test]
    fn expired_entries_make_room_first() {
        let cache = TokenCache::new(SHARDS).unwrap();
        // One entry per shard: "new" lands either beside "old" or in its
        // place, since "old" has expired by then.
        cache.insert("old", verified(Some(10), 1), 5);
        cache.insert("new", verified(Some(100), 1), 50);
        assert!(cache.get("new", 1, 50).is_some());
        assert!(cache.get("old", 1, 50).is_none());
    }

    #[test]
    fn zero_means_no_cache() {
        assert!(TokenCache::new(0).is_none());
    }
}
