//! Rate-limit counters in Redis, shared by every gateway instance that
//! names the same server (`stores.redis`), so that a limit holds for the
//! whole fleet rather than per instance.
//!
//! Each key is one Redis string holding its GCRA "theoretical arrival
//! time" in microseconds, read and advanced by one Lua script, so that the
//! check and the update are atomic and cost one round trip. The script
//! reads the clock of the Redis server, not the gateway's: instances whose
//! clocks disagree still count on one timeline. Keys expire once their
//! budget has refilled, so idle clients leave nothing behind.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::kept::KeptWhileUsed;

/// Checks one request against a key and, when allowed, counts it.
/// Returns `{allowed (1|0), microseconds until the next request is allowed}`.
const GCRA: &str = r#"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + interval
local ahead = new_tat - now
local allowance = burst * interval
if ahead > allowance then
  return {0, ahead - allowance}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil(ahead / 1000))
return {1, 0}
"#;

/// Why the store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL cannot name a Redis server.
    #[error("`{url}` is not a Redis URL ({reason}); write redis://HOST:PORT[/DB] or unix:///PATH")]
    BadUrl {
        /// The URL as configured.
        url: String,
        /// What the client library said.
        reason: String,
    },
    /// No answer within the store's timeout.
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Connecting or the command failed.
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// One Redis server, connected on first use and reconnected when the
/// connection breaks; shared by every policy that uses it.
pub struct RedisStore {
    client: redis::Client,
    timeout: Duration,
    connection: OnceLock<ConnectionManager>,
    script: redis::Script,
}

impl RedisStore {
    /// Checks `url`; connects only when first used.
    pub fn new(url: &str, timeout: Duration) -> Result<RedisStore, StoreError> {
        let bad = |reason: String| StoreError::BadUrl {
            url: url.to_string(),
            reason,
        };
        if url.starts_with("rediss://") {
            return Err(bad("TLS to Redis is not supported in this version".into()));
        }
        let client = redis::Client::open(url).map_err(|e| bad(e.to_string()))?;
        Ok(RedisStore {
            client,
            timeout,
            connection: OnceLock::new(),
            script: redis::Script::new(GCRA),
        })
    }

    fn connection(&self) -> Result<ConnectionManager, StoreError> {
        if let Some(c) = self.connection.get() {
            return Ok(c.clone());
        }
        // Connection attempts are bounded by the timeout too, and retried
        // in the background after a break rather than while a request waits.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let made = ConnectionManager::new_lazy_with_config(self.client.clone(), config)?;
        Ok(self.connection.get_or_init(|| made).clone())
    }

    /// Counts a request against `key` (`burst` requests at once, one more
    /// every `interval`); returns how long until it would be allowed (zero:
    /// allowed and counted).
    pub async fn check(
        &self,
        key: &str,
        interval: Duration,
        burst: u32,
    ) -> Result<Duration, StoreError> {
        let mut connection = self.connection()?;
        let mut invocation = self.script.key(key);
        invocation.arg(interval.as_micros() as u64).arg(burst);
        let answer = tokio::time::timeout(
            self.timeout,
            invocation.invoke_async::<(i64, i64)>(&mut connection),
        )
        .await
        .map_err(|_| StoreError::Timeout(self.timeout))??;
        Ok(match answer {
            (1, _) => Duration::ZERO,
            // A refusal always waits a little, even if rounding said 0.
            (_, wait) => Duration::from_micros(wait.max(1) as u64),
        })
    }
}

/// Redis stores by URL and timeout, kept across reloads while in use (so a
/// reload does not reconnect).
pub type RedisStores = KeptWhileUsed<(String, Duration), RedisStore>;

impl RedisStores {
    /// The store for `url`, made when new.
    pub fn get(&self, url: &str, timeout: Duration) -> Result<Arc<RedisStore>, StoreError> {
        self.get_or_make((url.to_string(), timeout), || RedisStore::new(url, timeout))
            .map(|(store, _)| store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_without_connecting() {
        assert!(RedisStore::new("redis://127.0.0.1:6379/2", Duration::from_millis(50)).is_ok());
        assert!(RedisStore::new("unix:///run/redis.sock", Duration::from_millis(50)).is_ok());
        for bad in ["http://127.0.0.1:6379", "127.0.0.1", "rediss://cache:6380"] {
            let err = RedisStore::new(bad, Duration::from_millis(50))
                .err()
                .unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(
                err.to_string().contains("redis://HOST:PORT"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn one_store_per_url_while_in_use() {
        let stores = RedisStores::default();
        let a = stores
            .get("redis://127.0.0.1:1", Duration::from_millis(50))
            .unwrap();
        let b = stores
            .get("redis://127.0.0.1:1", Duration::from_millis(50))
            .unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let other = stores
            .get("redis://127.0.0.1:2", Duration::from_millis(50))
            .unwrap();
        assert!(!Arc::ptr_eq(&a, &other));
    }
}
