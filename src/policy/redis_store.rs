//! Rate-limit counters in Redis, shared by every gateway instance that
//! names the same server (`stores.redis`), so that a limit holds for the
//! whole fleet rather than per instance, and quotas (a budget per day or
//! per month) that outlive a restart of any instance.
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
/// Returns `{1, microseconds until the budget is full again}` when allowed,
/// `{0, microseconds until the next request is allowed}` when not.
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
return {1, ahead}
"#;

/// Counts one request against a fixed window's budget, the window taken
/// from the Redis server's clock: `ARGV[2]` seconds long and aligned to
/// multiples of it since the Unix epoch (`86400`: UTC days), or, when 0,
/// the UTC calendar month. A refused request is not counted. The window's
/// counter expires a minute after the window ends. Returns `{allowed (1|0),
/// requests counted in the window, seconds until it ends}`.
///
/// The key is made here from `KEYS[1]` and the window's start, so a single
/// Redis server (not a cluster) is assumed.
const QUOTA: &str = r#"
local limit = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local now = tonumber(redis.call('TIME')[1])
local start, stop
if period > 0 then
  start = now - (now % period)
  stop = start + period
else
  -- Howard Hinnant's civil-from-days and days-from-civil, in whole days.
  local function civil(z)
    z = z + 719468
    local era = math.floor(z / 146097)
    local doe = z - era * 146097
    local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
    local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
    local mp = math.floor((5 * doy + 2) / 153)
    local m = mp < 10 and mp + 3 or mp - 9
    local y = yoe + era * 400
    if m <= 2 then y = y + 1 end
    return y, m
  end
  local function first_day(y, m)
    if m <= 2 then y = y - 1 end
    local era = math.floor(y / 400)
    local yoe = y - era * 400
    local mp = m > 2 and m - 3 or m + 9
    local doy = math.floor((153 * mp + 2) / 5)
    local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
    return era * 146097 + doe - 719468
  end
  local y, m = civil(math.floor(now / 86400))
  start = first_day(y, m) * 86400
  if m == 12 then y = y + 1; m = 1 else m = m + 1 end
  stop = first_day(y, m) * 86400
end
local key = KEYS[1] .. start
local used = tonumber(redis.call('GET', key)) or 0
if used >= limit then
  return {0, used, stop - now}
end
used = redis.call('INCR', key)
if used == 1 then
  redis.call('EXPIREAT', key, stop + 60)
end
return {1, used, stop - now}
"#;

/// A request counted against a rate (GCRA) or a quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counted {
    /// Allowed; the budget is full again after this long.
    Allowed(Duration),
    /// Refused; the next request is allowed after this long.
    Refused(Duration),
}

/// A request counted against a quota window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaCount {
    /// Whether it was allowed (and counted).
    pub allowed: bool,
    /// Requests counted in the window so far.
    pub used: u64,
    /// Until the window ends.
    pub resets_in: Duration,
}

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
    quota: redis::Script,
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
            quota: redis::Script::new(QUOTA),
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
    /// every `interval`).
    pub async fn check(
        &self,
        key: &str,
        interval: Duration,
        burst: u32,
    ) -> Result<Counted, StoreError> {
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
            (1, full_in) => Counted::Allowed(Duration::from_micros(full_in.max(0) as u64)),
            // A refusal always waits a little, even if rounding said 0.
            (_, wait) => Counted::Refused(Duration::from_micros(wait.max(1) as u64)),
        })
    }

    /// Counts a request against the quota window of `key_prefix`: `limit`
    /// per window of `period` (None: the calendar month).
    pub async fn count_quota(
        &self,
        key_prefix: &str,
        limit: u64,
        period: Option<Duration>,
    ) -> Result<QuotaCount, StoreError> {
        let mut connection = self.connection()?;
        let mut invocation = self.quota.key(key_prefix);
        invocation.arg(limit).arg(period.map_or(0, |p| p.as_secs()));
        let (allowed, used, left) = tokio::time::timeout(
            self.timeout,
            invocation.invoke_async::<(i64, i64, i64)>(&mut connection),
        )
        .await
        .map_err(|_| StoreError::Timeout(self.timeout))??;
        Ok(QuotaCount {
            allowed: allowed == 1,
            used: used.max(0) as u64,
            resets_in: Duration::from_secs(left.max(1) as u64),
        })
    }
}

impl RedisStore {
    /// Runs one command within the store's timeout.
    async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        let mut connection = self.connection()?;
        tokio::time::timeout(self.timeout, cmd.query_async::<T>(&mut connection))
            .await
            .map_err(|_| StoreError::Timeout(self.timeout))?
            .map_err(StoreError::from)
    }

    /// The bytes stored under `key`, if any.
    pub async fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.run(redis::cmd("GET").arg(key)).await
    }

    /// The first `len` bytes stored under `key`, if any.
    pub async fn get_head(&self, key: &str, len: usize) -> Result<Option<Vec<u8>>, StoreError> {
        let bytes: Vec<u8> = self
            .run(
                redis::cmd("GETRANGE")
                    .arg(key)
                    .arg(0)
                    .arg(len.saturating_sub(1)),
            )
            .await?;
        Ok((!bytes.is_empty()).then_some(bytes))
    }

    /// Stores `value` under `key` for `ttl`.
    pub async fn set_bytes(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        self.run(redis::cmd("SET").arg(key).arg(value).arg("PX").arg(ms))
            .await
    }

    /// Deletes `key`; whether it was there.
    pub async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let n: i64 = self.run(redis::cmd("DEL").arg(key)).await?;
        Ok(n > 0)
    }

    /// The keys matching `pattern` (SCAN, so the server is never blocked
    /// by one long command).
    pub async fn keys_matching(&self, pattern: &str) -> Result<Vec<String>, StoreError> {
        let mut cursor: u64 = 0;
        let mut out = Vec::new();
        loop {
            let (next, batch): (u64, Vec<String>) = self
                .run(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(1000),
                )
                .await?;
            out.extend(batch);
            if next == 0 {
                return Ok(out);
            }
            cursor = next;
        }
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
