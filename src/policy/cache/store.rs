//! Where a cache policy keeps its answers: the memory tier (moka, bounded
//! by bytes, TinyLFU admission so a burst of one-off requests cannot push
//! out the hot set), the requests in flight that identical misses wait
//! for, purges and the figures the admin API shows.
//!
//! A store outlives configuration reloads (found again by policy name and
//! size, see [`CacheRegistry`]), so a reload keeps what is cached.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use moka::notification::RemovalCause;
use tokio::sync::watch;

use super::entry::Entry;
use super::key;
use super::rules::Heuristic;
use crate::kept::KeptWhileUsed;
use crate::observe::metrics::{CacheTierLabels, Metrics};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

/// Variants one key keeps at most (one per combination of the values its
/// answers' `Vary` names); the oldest goes first.
const MAX_VARIANTS: usize = 8;

/// The answers stored under one primary key, one per secondary key.
pub type Variants = Arc<[Arc<Entry>]>;

/// One cache policy's storage, shared by every snapshot that keeps the
/// policy.
pub struct CacheStore {
    /// The policy's name.
    pub name: Arc<str>,
    memory: moka::sync::Cache<Arc<str>, Variants>,
    /// Requests fetching a key now, for identical misses to wait on.
    flights: Mutex<HashMap<Arc<str>, watch::Receiver<bool>>>,
    counts: Arc<Counts>,
    gauges: Option<TierGauges>,
    tiers: Option<Arc<Tiers>>,
}

/// The tiers behind memory: read on a memory miss (and the answer found
/// there brought into memory), written when an answer is stored.
pub struct Tiers {
    /// A local directory.
    pub disk: Option<super::disk::DiskTier>,
    /// Shared by the fleet.
    pub redis: Option<super::redis_tier::RedisTier>,
    /// How long past its freshness a record may still serve (the policy's
    /// stale windows), for the Redis expiry.
    pub stale_for: Duration,
    /// The policy's heuristic freshness, to read records back with.
    pub heuristic: Heuristic,
}

impl Tiers {
    /// How long a record of these variants is worth keeping in Redis:
    /// while any is fresh or may serve stale, and an hour more for one
    /// that can be revalidated.
    fn keep_for(&self, variants: &[Arc<Entry>]) -> Duration {
        let now = std::time::SystemTime::now();
        variants
            .iter()
            .map(|e| {
                let left = e.lifetime.saturating_sub(e.age(now));
                let stale = [
                    e.directives.stale_while_revalidate,
                    e.directives.stale_if_error,
                ]
                .into_iter()
                .flatten()
                .map(Duration::from_secs)
                .max()
                .unwrap_or_default()
                .max(self.stale_for);
                let revalidate = if e.validators().any() {
                    Duration::from_secs(3600)
                } else {
                    Duration::ZERO
                };
                left + stale + revalidate
            })
            .max()
            .unwrap_or_default()
    }
}

/// The memory tier's exported gauges.
struct TierGauges {
    entries: Family<CacheTierLabels, Gauge>,
    bytes: Family<CacheTierLabels, Gauge>,
    evictions: Family<CacheTierLabels, Counter>,
    labels: CacheTierLabels,
}

/// Running totals for the admin API and metrics.
#[derive(Default)]
pub struct Counts {
    /// Entries pushed out for room.
    pub evictions: AtomicU64,
    /// Requests answered from the cache (fresh or stale).
    pub hits: AtomicU64,
    /// Requests the cache could not answer.
    pub misses: AtomicU64,
}

/// What a purge removes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Purge {
    /// One primary key, exactly as the admin API lists it.
    Key(String),
    /// Every key whose path starts with this (on any host).
    Prefix(String),
    /// Every key of this host.
    Host(String),
    /// Every answer tagged so by `Cache-Tag` or `Surrogate-Key`.
    Tag(String),
    /// Every key of one URL, whatever the key added to it (headers, the
    /// consumer); its stored POST answers (keyed by a body digest) too when
    /// `posts` says so.
    Url {
        /// The URL part of the keys.
        url: String,
        /// Whether `POST` keys go too.
        posts: bool,
    },
}

impl Purge {
    /// Whether this purge takes the key `key`, whose answers carry `tags`.
    pub fn selects<'a, I: Iterator<Item = &'a str>>(
        &self,
        k: &str,
        tags: impl FnOnce() -> I,
    ) -> bool {
        match self {
            Purge::Key(want) => k == want,
            Purge::Prefix(prefix) => {
                key::host_and_path(k).is_some_and(|(_, p)| p.starts_with(prefix.as_str()))
            }
            Purge::Host(host) => {
                key::host_and_path(k).is_some_and(|(h, _)| h.eq_ignore_ascii_case(host))
            }
            Purge::Tag(tag) => tags().any(|t| t == tag),
            Purge::Url { url, posts } => {
                let k = match k.strip_prefix("POST ") {
                    Some(_) if !posts => return false,
                    Some(rest) => rest,
                    None => k,
                };
                k.strip_prefix(url.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with(' '))
            }
        }
    }
}

/// A request's part in fetching a key.
pub enum Flight {
    /// It fetches; the others wait until the guard is dropped.
    Leader(FlightGuard),
    /// Another request fetches; wait on this.
    Follower(watch::Receiver<bool>),
}

/// Held by the request fetching a key; dropping it wakes the requests
/// waiting for that key (the answer is stored by then, or will not be).
pub struct FlightGuard {
    store: Arc<CacheStore>,
    key: Arc<str>,
    done: watch::Sender<bool>,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        crate::lock(&self.store.flights).remove(&self.key);
        let _ = self.done.send(true);
    }
}

/// Size and use figures of one store.
#[derive(Clone, Debug)]
pub struct Stats {
    /// The policy's name.
    pub name: Arc<str>,
    /// Entries (primary keys) in memory.
    pub entries: u64,
    /// Bytes in memory, overhead included.
    pub bytes: u64,
    /// The memory bound.
    pub max_bytes: u64,
    /// Entries pushed out for room.
    pub evictions: u64,
    /// Requests answered from the cache.
    pub hits: u64,
    /// Requests it could not answer.
    pub misses: u64,
}

impl CacheStore {
    /// An empty store of at most `max_bytes`, exporting its figures to
    /// `metrics` when given.
    pub fn new(
        name: Arc<str>,
        max_bytes: u64,
        metrics: Option<&Metrics>,
        tiers: Option<Tiers>,
    ) -> CacheStore {
        let counts = Arc::new(Counts::default());
        let evicted = counts.clone();
        let gauges = metrics.map(|m| TierGauges {
            entries: m.cache_entries.clone(),
            bytes: m.cache_bytes.clone(),
            evictions: m.cache_evictions.clone(),
            labels: CacheTierLabels {
                cache: name.clone(),
                tier: "memory",
            },
        });
        let evicted_metric = gauges
            .as_ref()
            .map(|g| g.evictions.get_or_create(&g.labels).clone());
        let memory = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &Arc<str>, v: &Variants| {
                let bytes: u64 = v.iter().map(|e| e.weight()).sum::<u64>() + k.len() as u64;
                bytes.min(u64::from(u32::MAX)) as u32
            })
            .eviction_listener(move |_k, _v, cause| {
                if cause == RemovalCause::Size {
                    evicted.evictions.fetch_add(1, Ordering::Relaxed);
                    if let Some(c) = &evicted_metric {
                        c.inc();
                    }
                }
            })
            .build();
        CacheStore {
            name,
            memory,
            flights: Mutex::new(HashMap::new()),
            counts,
            gauges,
            tiers: tiers.map(Arc::new),
        }
    }

    /// Looks for `key` in the tiers behind memory, disk first; what is
    /// found is brought into memory. Whether anything was.
    pub async fn lookup_tiers(&self, key: &str) -> bool {
        let Some(tiers) = &self.tiers else {
            return false;
        };
        let mut record = None;
        if tiers.disk.is_some() {
            let (t, k) = (tiers.clone(), key.to_string());
            record = tokio::task::spawn_blocking(move || t.disk.as_ref()?.load(&k))
                .await
                .ok()
                .flatten();
        }
        if record.is_none()
            && let Some(redis) = &tiers.redis
        {
            record = redis.load(key).await;
        }
        let Some(record) = record else {
            return false;
        };
        match super::codec::decode(record, tiers.heuristic) {
            Ok(variants) if variants.iter().all(|e| &*e.key == key) && !variants.is_empty() => {
                // Merged with what memory has: a variant stored here since
                // stays.
                for e in variants {
                    self.upsert(e);
                }
                self.export();
                true
            }
            _ => false,
        }
    }

    /// Whether the store has tiers behind memory.
    pub fn has_tiers(&self) -> bool {
        self.tiers.is_some()
    }

    /// Writes the variants now stored under `key` to the tiers, in the
    /// background.
    fn write_through(&self, key: &Arc<str>) {
        let Some(tiers) = &self.tiers else { return };
        let Some(variants) = self.memory.get(key) else {
            return;
        };
        let record = super::codec::encode(key, &variants);
        let tags: Vec<String> = variants
            .iter()
            .flat_map(|e| e.tags.iter().map(|t| t.to_string()))
            .collect();
        let keep_for = tiers.keep_for(&variants);
        if tiers.disk.is_some() {
            let (t, k, r) = (tiers.clone(), key.clone(), record.clone());
            tokio::task::spawn_blocking(move || {
                if let Some(disk) = &t.disk {
                    disk.save(&k, tags, &r);
                }
            });
        }
        if tiers.redis.is_some() {
            let (t, k) = (tiers.clone(), key.clone());
            tokio::spawn(async move {
                if let Some(redis) = &t.redis {
                    redis.save(&k, &record, keep_for).await;
                }
            });
        }
    }

    /// Removes what `purge` selects from the tiers behind memory; how many
    /// keys went from the disk and from Redis.
    pub async fn purge_tiers(&self, purge: &Purge) -> (usize, usize) {
        let Some(tiers) = &self.tiers else {
            return (0, 0);
        };
        let mut disk = 0;
        if tiers.disk.is_some() {
            let (t, p) = (tiers.clone(), purge.clone());
            disk = tokio::task::spawn_blocking(move || t.disk.as_ref().map_or(0, |d| d.purge(&p)))
                .await
                .unwrap_or(0);
        }
        let redis = match &tiers.redis {
            Some(r) => r.purge(purge).await,
            None => 0,
        };
        (disk, redis)
    }

    /// The disk tier's records and bytes, and its bound, if it has one.
    pub fn disk_usage(&self) -> Option<(u64, u64, u64)> {
        let disk = self.tiers.as_ref()?.disk.as_ref()?;
        let (records, bytes) = disk.usage();
        Some((records, bytes, disk.max_size()))
    }

    /// Brings the exported entry and byte counts up to date (moka counts
    /// lag by the writes it has not applied yet).
    fn export(&self) {
        if let Some(g) = &self.gauges {
            let entries = i64::try_from(self.memory.entry_count()).unwrap_or(i64::MAX);
            let bytes = i64::try_from(self.memory.weighted_size()).unwrap_or(i64::MAX);
            g.entries.get_or_create(&g.labels).set(entries);
            g.bytes.get_or_create(&g.labels).set(bytes);
        }
    }

    /// The stored answer for a request: the variant of `key` whose
    /// secondary key the request's headers match; for a GET, only one
    /// with a body.
    pub fn lookup(&self, key: &str, req: &HeaderMap, want_body: bool) -> Option<Arc<Entry>> {
        let variants = self.memory.get(key)?;
        variants
            .iter()
            .find(|e| (!want_body || !e.head_only) && key::matches(&e.vary, req))
            .cloned()
    }

    /// Stores an answer under `key`, in place of the variant with the same
    /// secondary key. An answer to HEAD never replaces one with a body.
    pub fn insert(&self, entry: Arc<Entry>) {
        let key = entry.key.clone();
        self.upsert(entry);
        self.export();
        self.write_through(&key);
    }

    /// [`CacheStore::insert`] in memory only.
    fn upsert(&self, entry: Arc<Entry>) {
        let key = entry.key.clone();
        self.memory.entry(key).and_upsert_with(|old| {
            let mut list: Vec<Arc<Entry>> = Vec::with_capacity(MAX_VARIANTS);
            if let Some(old) = old {
                for e in old.value().iter() {
                    if e.vary == entry.vary {
                        if entry.head_only && !e.head_only {
                            // Keep the one with a body.
                            return old.into_value();
                        }
                        continue;
                    }
                    list.push(e.clone());
                }
            }
            if list.len() >= MAX_VARIANTS {
                list.remove(0);
            }
            list.push(entry.clone());
            list.into()
        });
    }

    /// Whether `key` has stored answers but none for this request's
    /// values of the headers they vary on (a `vary-miss`).
    pub fn varies_away(&self, key: &str, req: &HeaderMap) -> bool {
        self.memory
            .get(key)
            .is_some_and(|v| !v.iter().any(|e| key::matches(&e.vary, req)))
    }

    /// Keeps an encoded form of a stored answer beside it (`compress`
    /// makes it once per encoding and level; hits then send it as it is),
    /// and weighs the key again so that the memory bound counts it.
    pub fn add_encoded(&self, entry: &Arc<Entry>, coding: &'static str, level: i32, body: Bytes) {
        if !entry.add_encoded(coding, level, body) {
            return;
        }
        if let Some(variants) = self.memory.get(&*entry.key)
            && variants.iter().any(|e| Arc::ptr_eq(e, entry))
        {
            self.memory.insert(entry.key.clone(), variants);
            self.export();
        }
    }

    /// Takes every variant of `key` out; whether there was any.
    pub fn invalidate(&self, key: &str) -> bool {
        let gone = self.memory.remove(key).is_some();
        self.export();
        self.forget_in_tiers(Purge::Key(key.to_string()));
        gone
    }

    /// Takes `purge`'s selection out of the tiers behind memory, in the
    /// background (memory has already let it go).
    fn forget_in_tiers(&self, purge: Purge) {
        let Some(tiers) = &self.tiers else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let t = tiers.clone();
        runtime.spawn(async move {
            if let Purge::Key(key) = &purge {
                if t.disk.is_some() {
                    let (t2, k) = (t.clone(), key.clone());
                    let _ =
                        tokio::task::spawn_blocking(move || t2.disk.as_ref().map(|d| d.remove(&k)))
                            .await;
                }
                if let Some(redis) = &t.redis {
                    redis.remove(key).await;
                }
                return;
            }
            if t.disk.is_some() {
                let (t2, p) = (t.clone(), purge.clone());
                let _ = tokio::task::spawn_blocking(move || t2.disk.as_ref().map(|d| d.purge(&p)))
                    .await;
            }
            if let Some(redis) = &t.redis {
                redis.purge(&purge).await;
            }
        });
    }

    /// Takes out what `purge` selects; how many primary keys went.
    pub fn purge(&self, purge: &Purge) -> usize {
        let doomed: Vec<Arc<str>> = self
            .memory
            .iter()
            .filter(|(k, v)| {
                purge.selects(k, || v.iter().flat_map(|e| e.tags.iter().map(|t| &**t)))
            })
            .map(|(k, _)| k.as_ref().clone())
            .collect();
        let purged = doomed
            .iter()
            .filter(|k| self.memory.remove(&***k).is_some())
            .count();
        self.export();
        purged
    }

    /// [`CacheStore::purge`] of memory, and the same purge of the tiers in
    /// the background (an unsafe request's invalidation).
    pub fn purge_everywhere(&self, purge: &Purge) -> usize {
        let purged = self.purge(purge);
        self.forget_in_tiers(purge.clone());
        purged
    }

    /// Joins or starts the fetch of `key`.
    pub fn flight(self: &Arc<Self>, key: &str) -> Flight {
        let mut flights = crate::lock(&self.flights);
        if let Some(rx) = flights.get(key) {
            return Flight::Follower(rx.clone());
        }
        let key: Arc<str> = Arc::from(key);
        let (done, rx) = watch::channel(false);
        flights.insert(key.clone(), rx);
        Flight::Leader(FlightGuard {
            store: self.clone(),
            key,
            done,
        })
    }

    /// Notes a request answered from the cache, or not.
    pub fn count(&self, hit: bool) {
        let c = if hit {
            &self.counts.hits
        } else {
            &self.counts.misses
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Size and use figures now.
    pub fn stats(&self) -> Stats {
        self.memory.run_pending_tasks();
        self.export();
        Stats {
            name: self.name.clone(),
            entries: self.memory.entry_count(),
            bytes: self.memory.weighted_size(),
            max_bytes: self.memory.policy().max_capacity().unwrap_or(0),
            evictions: self.counts.evictions.load(Ordering::Relaxed),
            hits: self.counts.hits.load(Ordering::Relaxed),
            misses: self.counts.misses.load(Ordering::Relaxed),
        }
    }

    /// The `n` keys that answered most, with their hit counts.
    pub fn top_keys(&self, n: usize) -> Vec<(Arc<str>, u64)> {
        let mut all: Vec<(Arc<str>, u64)> = self
            .memory
            .iter()
            .map(|(k, v)| {
                let hits = v.iter().map(|e| e.hits.load(Ordering::Relaxed)).sum();
                (k.as_ref().clone(), hits)
            })
            .collect();
        all.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }

    /// Waits for a fetch another request leads, at most `timeout`.
    pub async fn wait(mut rx: watch::Receiver<bool>, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, rx.wait_for(|done| *done)).await;
    }
}

impl Drop for CacheStore {
    fn drop(&mut self) {
        // A cache no configuration uses any more has no figures to export.
        if let Some(g) = &self.gauges {
            g.entries.remove(&g.labels);
            g.bytes.remove(&g.labels);
            g.evictions.remove(&g.labels);
        }
    }
}

/// Stores by (policy name, memory bound, tiers), kept across reloads while a
/// snapshot uses them.
pub type CacheRegistry = KeptWhileUsed<(String, u64, String), CacheStore>;

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderName, HeaderValue, StatusCode};
    use std::time::SystemTime;

    fn entry(
        key: &str,
        vary: &[(&str, Option<&str>)],
        tags: &str,
        body: usize,
        head_only: bool,
    ) -> Arc<Entry> {
        let mut h = HeaderMap::new();
        h.insert("cache-tag", HeaderValue::from_str(tags).unwrap());
        let now = SystemTime::now();
        Arc::new(Entry::new(
            Arc::from(key),
            StatusCode::OK,
            h,
            Bytes::from(vec![b'x'; body]),
            head_only,
            now,
            now,
            Heuristic {
                max: Duration::ZERO,
                default_ttl: Duration::ZERO,
            },
            vary.iter()
                .map(|(n, v)| {
                    (
                        HeaderName::from_bytes(n.as_bytes()).unwrap(),
                        v.map(Box::from),
                    )
                })
                .collect(),
        ))
    }

    fn req(pairs: &[(&str, &str)]) -> HeaderMap {
        crate::http::headers::map_of(pairs)
    }

    #[test]
    fn variants_by_secondary_key() {
        let store = CacheStore::new("c".into(), 1 << 20, None, None);
        store.insert(entry(
            "http://h/a",
            &[("accept-language", Some("en"))],
            "t",
            1,
            false,
        ));
        store.insert(entry(
            "http://h/a",
            &[("accept-language", Some("fr"))],
            "t",
            2,
            false,
        ));
        let en = store.lookup("http://h/a", &req(&[("accept-language", "en")]), true);
        assert_eq!(en.unwrap().body.len(), 1);
        let fr = store.lookup("http://h/a", &req(&[("accept-language", "fr")]), true);
        assert_eq!(fr.unwrap().body.len(), 2);
        assert!(store.lookup("http://h/a", &req(&[]), true).is_none());
        // Same secondary key: replaced.
        store.insert(entry(
            "http://h/a",
            &[("accept-language", Some("en"))],
            "t",
            3,
            false,
        ));
        let en = store.lookup("http://h/a", &req(&[("accept-language", "en")]), true);
        assert_eq!(en.unwrap().body.len(), 3);
        // A HEAD answer never replaces one with a body, and never answers a GET.
        store.insert(entry(
            "http://h/a",
            &[("accept-language", Some("en"))],
            "t",
            0,
            true,
        ));
        let en = store.lookup("http://h/a", &req(&[("accept-language", "en")]), true);
        assert_eq!(en.unwrap().body.len(), 3);
        store.insert(entry("http://h/b", &[], "t", 0, true));
        assert!(store.lookup("http://h/b", &req(&[]), true).is_none());
        assert!(store.lookup("http://h/b", &req(&[]), false).is_some());
    }

    #[test]
    fn purges_by_each_selector() {
        let store = CacheStore::new("c".into(), 1 << 20, None, None);
        let fill = || {
            store.insert(entry("https://a.example/shop/1", &[], "shop, p1", 1, false));
            store.insert(entry("https://a.example/shop/2?x=1", &[], "shop", 1, false));
            store.insert(entry("https://b.example/shop/3", &[], "other", 1, false));
            store.insert(entry("https://b.example/blog", &[], "blog", 1, false));
        };
        fill();
        assert_eq!(
            store.purge(&Purge::Key("https://a.example/shop/1".into())),
            1
        );
        assert_eq!(
            store.purge(&Purge::Key("https://a.example/shop/1".into())),
            0
        );
        fill();
        assert_eq!(store.purge(&Purge::Prefix("/shop/".into())), 3);
        fill();
        assert_eq!(store.purge(&Purge::Host("B.example".into())), 2);
        fill();
        assert_eq!(store.purge(&Purge::Tag("shop".into())), 2);
        assert!(
            store
                .lookup("https://b.example/blog", &req(&[]), true)
                .is_some()
        );
    }

    #[test]
    fn memory_is_bounded_by_bytes() {
        let store = CacheStore::new("c".into(), 64 * 1024, None, None);
        for i in 0..200 {
            store.insert(entry(&format!("http://h/{i}"), &[], "t", 1024, false));
        }
        let stats = store.stats();
        assert!(stats.bytes <= 64 * 1024, "{stats:?}");
        assert!(stats.entries < 200 && stats.entries > 0, "{stats:?}");
    }

    #[tokio::test]
    async fn one_leader_per_key_and_followers_wake_when_it_ends() {
        let store = Arc::new(CacheStore::new("c".into(), 1 << 20, None, None));
        let Flight::Leader(guard) = store.flight("k") else {
            panic!("first request leads")
        };
        let Flight::Follower(rx) = store.flight("k") else {
            panic!("second request follows")
        };
        let waiter = tokio::spawn(CacheStore::wait(rx, Duration::from_secs(10)));
        drop(guard);
        tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(store.flight("k"), Flight::Leader(_)));
    }
}
