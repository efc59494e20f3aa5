//! The fleet tier: records of [`codec`](super::codec) in the file's
//! `stores.redis`, so an answer one instance stored is a hit for every
//! other. Records past the tier's `max_entry_size` stay out; each expires
//! when no instance could use it any more. A Redis that fails or is slow
//! (past the store's timeout) makes a miss, never an error.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::codec;
use super::store::Purge;
use crate::policy::redis_store::RedisStore;

/// Bytes of a record read for its head.
const HEAD_BYTES: usize = 16 * 1024;

/// `text` with Redis glob characters escaped, for a SCAN pattern.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A cache's records in Redis.
pub struct RedisTier {
    store: Arc<RedisStore>,
    /// `{stores.redis.key_prefix}cache:{policy}:`.
    prefix: String,
    max_entry_size: u64,
}

impl RedisTier {
    /// The tier of cache `name` in `store`, under `key_prefix`.
    pub fn new(
        store: Arc<RedisStore>,
        key_prefix: &str,
        name: &str,
        max_entry_size: u64,
    ) -> RedisTier {
        RedisTier {
            store,
            prefix: format!("{key_prefix}cache:{name}:"),
            max_entry_size,
        }
    }

    /// The record's Redis key: a digest, since cache keys can be long.
    fn redis_key(&self, key: &str) -> String {
        let digest = Sha256::digest(key.as_bytes());
        format!("{}{}", self.prefix, hex::encode(&digest[..16]))
    }

    /// The record stored for `key`, if any (and if Redis answers in time).
    pub async fn load(&self, key: &str) -> Option<Bytes> {
        match self.store.get_bytes(&self.redis_key(key)).await {
            Ok(found) => found.map(Bytes::from),
            Err(e) => {
                tracing::debug!(error = %e, "cache: the Redis tier did not answer");
                None
            }
        }
    }

    /// Stores a record for `ttl`, when it is small enough.
    pub async fn save(&self, key: &str, record: &[u8], ttl: Duration) {
        if record.len() as u64 > self.max_entry_size || ttl.is_zero() {
            // An older, smaller record of the key would be out of date now.
            self.remove(key).await;
            return;
        }
        if let Err(e) = self
            .store
            .set_bytes(&self.redis_key(key), record, ttl)
            .await
        {
            tracing::debug!(error = %e, "cache: storing in the Redis tier failed");
        }
    }

    /// Removes the record of `key`; whether there was one.
    pub async fn remove(&self, key: &str) -> bool {
        self.store
            .delete(&self.redis_key(key))
            .await
            .unwrap_or(false)
    }

    /// Removes what `purge` selects; how many keys went. Anything but an
    /// exact key reads the head of every record this cache has in Redis.
    pub async fn purge(&self, purge: &Purge) -> usize {
        if let Purge::Key(key) = purge {
            return usize::from(self.remove(key).await);
        }
        let pattern = format!("{}*", glob_escape(&self.prefix));
        let Ok(keys) = self.store.keys_matching(&pattern).await else {
            return 0;
        };
        let mut purged = 0;
        for redis_key in keys {
            // The head (key and tags) is all a purge reads.
            let Ok(Some(head)) = self.store.get_head(&redis_key, HEAD_BYTES).await else {
                continue;
            };
            let (key, tags) = match codec::head_of(&head) {
                Ok(found) => found,
                Err(_) => match self.store.get_bytes(&redis_key).await {
                    Ok(Some(record)) => match codec::head_of(&record) {
                        Ok(found) => found,
                        Err(_) => continue,
                    },
                    _ => continue,
                },
            };
            if purge.selects(&key, || tags.iter().map(String::as_str))
                && self.store.delete(&redis_key).await.unwrap_or(false)
            {
                purged += 1;
            }
        }
        purged
    }
}
