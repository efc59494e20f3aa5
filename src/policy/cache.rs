//! `type: cache`: an RFC 9111 shared cache of upstream answers, in the
//! cache lookup phase (answer from the store, or send the request on with
//! the stored answer's validators) and the cache store phase (keep the
//! answer while it streams to the client, or bring a stored one up to
//! date from a 304).
//!
//! Besides the RFC's rules ([`rules`]) it collapses identical misses into
//! one upstream request (the others wait, at most `lock_timeout`, and are
//! answered from what it stored), serves stale answers while one
//! background request refreshes them (`stale-while-revalidate`) or while
//! the origin fails (`stale-if-error`), and forgets a URL when an unsafe
//! request to it succeeds (§4.4). Every answer it touches says what it did
//! in `Cache-Status` (RFC 9211).

pub mod codec;
pub mod disk;
pub mod entry;
pub mod fill;
pub mod key;
pub mod redis_tier;
pub mod rules;
pub mod store;

use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use self::entry::{CACHE_STATUS, Entry};
use self::fill::Fill;
use self::key::KeySpec;
use self::rules::{
    Heuristic, NotStored, RequestDirectives, ResponseDirectives, StoreRules, Usable,
};
use self::store::{CacheStore, Flight, FlightGuard};
use crate::config::model::CacheDef;
use crate::http::body::{Body, ReadError, SLOW_BODY, full, read_whole};
use crate::http::headers::host_of;
use crate::http::problem::problem;
use crate::observe::metrics::CacheRequestLabels;
use crate::policy::context::RequestCtx;
use crate::policy::{BuildEnv, Flow, Phase, Policy, ResponsePhase, Store};

/// Default memory bound.
const DEFAULT_MAX_SIZE: u64 = 256 << 20;
/// Default bound on one stored answer.
const DEFAULT_MAX_ENTRY_SIZE: u64 = 8 << 20;
/// Default cap on heuristic freshness.
const DEFAULT_HEURISTIC_MAX: Duration = Duration::from_secs(86_400);
/// Default bound on a record in the Redis tier.
const DEFAULT_REDIS_ENTRY_SIZE: u64 = 1 << 20;
/// Default wait for an identical request's answer.
const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// What the cache did for one request, as `portcullis_cache_requests_total`
/// labels it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheResult {
    /// Answered from the store, fresh.
    Hit,
    /// Went upstream and found nothing to use.
    Miss,
    /// Answered from the store, stale (stale-while-revalidate,
    /// stale-if-error, or the client's max-stale).
    Stale,
    /// A stale answer brought up to date by a 304.
    Revalidated,
    /// Answered from what an identical request in flight stored.
    Collapsed,
    /// Not for the cache: another method, `no-store` in the request, no
    /// host to key on, an answer the gateway made without the upstream.
    Bypass,
}

impl CacheResult {
    const ALL: [CacheResult; 6] = [
        CacheResult::Hit,
        CacheResult::Miss,
        CacheResult::Stale,
        CacheResult::Revalidated,
        CacheResult::Collapsed,
        CacheResult::Bypass,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
            CacheResult::Stale => "stale",
            CacheResult::Revalidated => "revalidated",
            CacheResult::Collapsed => "collapsed",
            CacheResult::Bypass => "bypass",
        }
    }
}

/// What a cache policy left in the request's context: an answer it gave
/// (for `compress`, which keeps encoded copies with the entry) or what its
/// response phase must do.
#[derive(Default)]
pub enum CacheMark {
    /// No cache policy touched the request.
    #[default]
    Untouched,
    /// The answer came from a stored entry.
    Hit(Hit),
    /// The request went on; its answer is for the response phase.
    Pending(Box<Pending>),
}

/// A stored entry an answer came from, and its store (where `compress`
/// keeps the entry's encoded forms).
pub struct Hit {
    /// The entry.
    pub entry: Arc<Entry>,
    /// Its store.
    pub store: Arc<CacheStore>,
}

impl CacheMark {
    /// The stored entry the answer came from, if it did.
    pub fn hit(&self) -> Option<&Hit> {
        match self {
            CacheMark::Hit(hit) => Some(hit),
            _ => None,
        }
    }
}

/// What the cache lookup phase hands its response phase.
pub struct Pending {
    what: PendingKind,
    /// The primary key.
    key: String,
    method: Method,
    request: RequestDirectives,
    authorized: bool,
    /// The client's headers as sent (conditionals and Range included), for
    /// the secondary key and for answering the client from the store.
    headers: HeaderMap,
    /// The stored answer being revalidated (and served if the origin fails).
    stale: Option<Arc<Entry>>,
    /// Why the store had nothing: `uri-miss`, `vary-miss`, `stale`, `request`.
    fwd: &'static str,
    request_time: SystemTime,
    /// Set while another request fetches the same key.
    wait: Option<watch::Receiver<bool>>,
    /// Set when this request fetches the key for the others.
    guard: Option<FlightGuard>,
}

impl Pending {
    /// A step whose response phase needs no more than its kind, key and
    /// method (a bypass, an invalidation), or whose lookup is still to run
    /// (a POST body to digest, tiers to ask).
    fn marker(what: PendingKind, key: String, method: Method) -> Box<Pending> {
        Box::new(Pending {
            what,
            key,
            method,
            request: RequestDirectives::default(),
            authorized: false,
            headers: HeaderMap::new(),
            stale: None,
            fwd: "uri-miss",
            request_time: SystemTime::now(),
            wait: None,
            guard: None,
        })
    }
}

enum PendingKind {
    /// A cacheable request going upstream.
    Fetch,
    /// A POST whose key needs a digest of its body first.
    NeedsBody,
    /// Memory had nothing; the tiers behind it are to be asked.
    NeedsTier,
    /// An unsafe method: forget the URL if it succeeds.
    Invalidate,
    /// Not for the cache; say why in Cache-Status.
    Bypass(&'static str),
}

/// `portcullis_cache_requests_total` counters, found by route without
/// hashing labels on each request.
struct ResultCounters {
    family: Family<CacheRequestLabels, Counter>,
    known: RwLock<Vec<(Arc<str>, [Counter; 6])>>,
}

impl ResultCounters {
    fn count(&self, route: Option<&Arc<str>>, result: CacheResult) {
        let Some(route) = route else { return };
        let slot = CacheResult::ALL
            .iter()
            .position(|r| *r == result)
            .unwrap_or(0);
        if let Some((_, counters)) = crate::read(&self.known)
            .iter()
            .find(|(r, _)| Arc::ptr_eq(r, route))
        {
            counters[slot].inc();
            return;
        }
        let counters = CacheResult::ALL.map(|r| {
            self.family
                .get_or_create(&CacheRequestLabels {
                    route: route.clone(),
                    result: r.as_str(),
                })
                .clone()
        });
        counters[slot].inc();
        crate::write(&self.known).push((route.clone(), counters));
    }
}

/// A compiled `cache` policy.
pub struct Cache {
    store: Arc<CacheStore>,
    key: KeySpec,
    rules: StoreRules,
    heuristic: Heuristic,
    stale_while_revalidate: Duration,
    stale_if_error: Duration,
    lock_timeout: Duration,
    max_entry_size: u64,
    counters: ResultCounters,
}

impl Cache {
    /// Compiles a `cache` definition; its store is the one a previous
    /// snapshot's policy of the same name and size used, if any.
    pub fn build(def: &CacheDef, env: &BuildEnv) -> Result<Cache, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let key = KeySpec::build(&def.key).unwrap_or_else(|e| {
            errors.extend(e);
            KeySpec::default()
        });
        let mut post = false;
        for (i, m) in def.methods.iter().flatten().enumerate() {
            match m.to_ascii_uppercase().as_str() {
                "GET" | "HEAD" => {}
                "POST" => post = true,
                _ => errors.push((
                    format!("methods.{i}"),
                    format!("`{m}` answers are not stored; list GET, HEAD or POST"),
                )),
            }
        }
        let max_size = def.max_size.map_or(DEFAULT_MAX_SIZE, |s| s.0);
        // Unset, it shrinks to fit a small cache.
        let max_entry_size = def
            .max_entry_size
            .map_or(DEFAULT_MAX_ENTRY_SIZE.min(max_size), |s| s.0);
        if max_entry_size > max_size {
            errors.push((
                "max_entry_size".into(),
                format!(
                    "max_entry_size ({max_entry_size} bytes) is larger than max_size \
                     ({max_size} bytes): no such answer could be stored; lower it or raise max_size"
                ),
            ));
        }
        if let Some(d) = &def.disk
            && d.max_size.0 < max_entry_size
        {
            errors.push((
                "disk.max_size".into(),
                format!(
                    "disk.max_size ({} bytes) is below max_entry_size ({max_entry_size} bytes): \
                     answers the memory tier keeps could not be written; raise it",
                    d.max_size.0
                ),
            ));
        }
        if def
            .redis
            .as_ref()
            .and_then(|r| r.max_entry_size)
            .is_some_and(|s| s.0 == 0)
        {
            errors.push((
                "redis.max_entry_size".into(),
                "redis.max_entry_size 0 would keep every answer out of Redis; remove `redis` instead".into(),
            ));
        }
        if max_entry_size > u64::from(u32::MAX) {
            errors.push(("max_entry_size".into(), "must be below 4GiB".into()));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let heuristic = Heuristic {
            max: def.heuristic_max.map_or(DEFAULT_HEURISTIC_MAX, |d| d.0),
            default_ttl: def.default_ttl.map_or(Duration::ZERO, |d| d.0),
        };
        let stale_while_revalidate = def.stale_while_revalidate.map_or(Duration::ZERO, |d| d.0);
        let stale_if_error = def.stale_if_error.map_or(Duration::ZERO, |d| d.0);
        let redis = match (&def.redis, env.redis) {
            (None, _) => None,
            (Some(r), Store::Ready(shared)) => Some((r, shared)),
            // Reported where `stores.redis` is.
            (Some(_), Store::InError) => return Err(errors),
            (Some(_), Store::Absent) => {
                return Err(vec![(
                    "redis".into(),
                    "the Redis tier needs a top-level `stores: { redis: { url: redis://HOST:PORT } }`"
                        .into(),
                )]);
            }
        };
        let disk_path = def.disk.as_ref().map(|d| env.resolve(&d.path));
        // The store is found again on reload only if its tiers are the
        // same: a changed directory or Redis server makes a new one.
        let tiers_id = format!(
            "disk={:?}:{:?} redis={:?}:{:?}",
            disk_path,
            def.disk.as_ref().map(|d| d.max_size.0),
            redis.map(|(_, s)| (Arc::as_ptr(&s.store) as usize, s.key_prefix.clone())),
            def.redis.as_ref().map(|r| r.max_entry_size),
        );
        let name: Arc<str> = Arc::from(env.name);
        let make = || -> Result<CacheStore, (String, String)> {
            let disk = match (&def.disk, &disk_path) {
                (Some(d), Some(path)) if !env.check_only => Some(
                    disk::DiskTier::open(path, d.max_size.0)
                        .map_err(|e| ("disk.path".to_string(), e.to_string()))?,
                ),
                _ => None,
            };
            let redis = redis.map(|(r, shared)| {
                redis_tier::RedisTier::new(
                    shared.store.clone(),
                    &shared.key_prefix,
                    env.name,
                    r.max_entry_size.map_or(DEFAULT_REDIS_ENTRY_SIZE, |s| s.0),
                )
            });
            let tiers = (disk.is_some() || redis.is_some()).then(|| store::Tiers {
                disk,
                redis,
                stale_for: stale_while_revalidate.max(stale_if_error),
                heuristic,
            });
            Ok(CacheStore::new(
                name.clone(),
                max_size,
                Some(env.metrics),
                tiers,
            ))
        };
        let (store, _) = env
            .caches
            .get_or_make((env.name.to_string(), max_size, tiers_id), make)
            .map_err(|e| vec![e])?;
        Ok(Cache {
            store,
            key,
            rules: StoreRules {
                set_cookie: def.store_set_cookie,
                post,
            },
            heuristic,
            stale_while_revalidate,
            stale_if_error,
            lock_timeout: def.lock_timeout.map_or(DEFAULT_LOCK_TIMEOUT, |d| d.0),
            max_entry_size,
            counters: ResultCounters {
                family: env.metrics.cache_requests.clone(),
                known: RwLock::new(Vec::new()),
            },
        })
    }

    /// The store (for tests and the admin API).
    pub fn store(&self) -> &Arc<CacheStore> {
        &self.store
    }

    fn count(&self, ctx: &RequestCtx, result: CacheResult) {
        self.counters.count(ctx.route.as_ref(), result);
        match result {
            CacheResult::Bypass => {}
            CacheResult::Miss | CacheResult::Revalidated => self.store.count(false),
            _ => self.store.count(true),
        }
    }

    /// Answers from a stored entry.
    fn serve(
        &self,
        ctx: &mut RequestCtx,
        method: &Method,
        headers: &HeaderMap,
        entry: &Arc<Entry>,
        result: CacheResult,
        detail: &str,
    ) -> Response<Body> {
        let now = SystemTime::now();
        let ttl = entry.lifetime.as_secs() as i64 - entry.age(now).as_secs() as i64;
        let mut status = format!("portcullis; hit; ttl={ttl}");
        if result == CacheResult::Collapsed {
            status.push_str("; collapsed");
        }
        if !detail.is_empty() {
            status.push_str("; detail=");
            status.push_str(detail);
        }
        let status = HeaderValue::from_str(&status)
            .unwrap_or_else(|_| HeaderValue::from_static("portcullis; hit"));
        self.count(ctx, result);
        ctx.cache = CacheMark::Hit(Hit {
            entry: entry.clone(),
            store: self.store.clone(),
        });
        entry.answer(method, headers, now, status, ctx.request_id_str())
    }

    /// The lookup itself, once the key is known: answer from the store, or
    /// note what the response phase needs and send the request on.
    fn look(
        &self,
        ctx: &mut RequestCtx,
        req: &mut Request<Body>,
        key: String,
        tiers_asked: bool,
    ) -> Flow {
        let now = SystemTime::now();
        let request = RequestDirectives::parse(req.headers());
        let authorized = req.headers().contains_key(header::AUTHORIZATION);
        let method = req.method().clone();
        if request.no_store {
            return self.bypass(ctx, "no-store");
        }
        let found = self
            .store
            .lookup(&key, req.headers(), method != Method::HEAD)
            .filter(|e| !authorized || e.shareable_with_authorization());
        if found.is_none() && !tiers_asked && self.store.has_tiers() {
            // The disk or Redis may have it: asked in the async phase.
            ctx.cache = CacheMark::Pending(Pending::marker(PendingKind::NeedsTier, key, method));
            return Flow::Continue;
        }
        if let Some(e) = &found
            && !ctx.refresh
        {
            match rules::usable(&request, &e.freshness(now, self.stale_while_revalidate)) {
                Usable::Fresh => {
                    let resp = self.serve(ctx, &method, req.headers(), e, CacheResult::Hit, "");
                    return Flow::Respond(resp);
                }
                Usable::Stale { refresh: false } => {
                    let resp = self.serve(
                        ctx,
                        &method,
                        req.headers(),
                        e,
                        CacheResult::Stale,
                        "max-stale",
                    );
                    return Flow::Respond(resp);
                }
                Usable::Stale { refresh: true } => {
                    // A POST cannot be repeated without its body, which
                    // is gone by then: it is served stale, not refreshed.
                    let first =
                        method != Method::POST && !e.refreshing.swap(true, Ordering::AcqRel);
                    let resp = self.serve(
                        ctx,
                        &method,
                        req.headers(),
                        e,
                        CacheResult::Stale,
                        "stale-while-revalidate",
                    );
                    return if first {
                        Flow::Refresh(resp)
                    } else {
                        Flow::Respond(resp)
                    };
                }
                Usable::Revalidate => {}
            }
        }
        if request.only_if_cached {
            self.count(ctx, CacheResult::Miss);
            let mut resp = problem(
                StatusCode::GATEWAY_TIMEOUT,
                "only-if-cached: the cache has no answer it may give",
                ctx.request_id_str(),
            );
            resp.headers_mut().insert(
                CACHE_STATUS,
                HeaderValue::from_static("portcullis; fwd=miss; detail=only-if-cached"),
            );
            return Flow::Respond(resp);
        }
        let fwd = match &found {
            Some(_) if request.no_cache || request.max_age.is_some() => "request",
            Some(_) => "stale",
            None if self.store.varies_away(&key, req.headers()) => "vary-miss",
            None => "uri-miss",
        };
        let mut pending = Pending {
            what: PendingKind::Fetch,
            key,
            method,
            request,
            authorized,
            headers: req.headers().clone(),
            stale: found,
            fwd,
            request_time: now,
            wait: None,
            guard: None,
        };
        // A range request on a miss passes as it is (its 206 is not
        // stored), so it must not make whole-answer requests wait for it.
        if pending.stale.is_some() || !req.headers().contains_key(header::RANGE) {
            match self.store.flight(&pending.key) {
                Flight::Leader(guard) => pending.guard = Some(guard),
                Flight::Follower(rx) => pending.wait = Some(rx),
            }
        }
        if let Some(stale) = &pending.stale {
            // Our validators replace the client's: the origin's 304 then
            // refers to the stored answer, and the client's own
            // conditionals are answered from it afterwards.
            let h = req.headers_mut();
            for name in [
                header::IF_NONE_MATCH,
                header::IF_MODIFIED_SINCE,
                header::IF_RANGE,
                header::RANGE,
            ] {
                h.remove(name);
            }
            let v = stale.validators();
            if let Some(etag) = v.etag {
                h.insert(header::IF_NONE_MATCH, etag);
            }
            if let Some(date) = v.last_modified {
                h.insert(header::IF_MODIFIED_SINCE, date);
            }
        }
        ctx.cache = CacheMark::Pending(Box::new(pending));
        Flow::Continue
    }

    fn bypass(&self, ctx: &mut RequestCtx, why: &'static str) -> Flow {
        ctx.cache = CacheMark::Pending(Pending::marker(
            PendingKind::Bypass(why),
            String::new(),
            Method::GET,
        ));
        Flow::Continue
    }

    /// After waiting for an identical request: its stored answer, if it
    /// left one this request may use.
    fn after_wait(&self, ctx: &mut RequestCtx, p: &Pending) -> Option<Response<Body>> {
        let now = SystemTime::now();
        let e = self
            .store
            .lookup(&p.key, &p.headers, p.method != Method::HEAD)
            .filter(|e| !p.authorized || e.shareable_with_authorization())?;
        match rules::usable(&p.request, &e.freshness(now, Duration::ZERO)) {
            Usable::Fresh | Usable::Stale { .. } => {
                Some(self.serve(ctx, &p.method, &p.headers, &e, CacheResult::Collapsed, ""))
            }
            Usable::Revalidate => None,
        }
    }

    /// Forgets the URL an unsafe request changed, and the ones its answer's
    /// Location and Content-Location name on the same host (§4.4).
    /// `posts` says whether stored POST answers of those URLs go too: not
    /// after a POST the policy caches, which it treats as a query (other
    /// queries' answers stay), but after any other unsafe method.
    fn invalidate(&self, ctx: &RequestCtx, key: &str, resp: &Response<Body>, posts: bool) {
        self.forget(key, posts);
        let Some((host, _)) = key::host_and_path(key) else {
            return;
        };
        let scheme = if ctx.tls { "https" } else { "http" };
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            let Some(target) = resp.headers().get(&name).and_then(|v| v.to_str().ok()) else {
                continue;
            };
            let Ok(uri) = target.parse::<http::Uri>() else {
                continue;
            };
            let same_host = match uri.authority() {
                None => true,
                Some(a) => a.as_str().eq_ignore_ascii_case(host),
            };
            if same_host && uri.path().starts_with('/') {
                // Keyed as a request for it would be (its query sorted or
                // dropped as the policy says).
                let url = self.key.url(scheme, host, uri.path(), uri.query());
                self.forget(&url, posts);
            }
        }
    }

    /// Forgets every key of one URL: all its added parts when the key has
    /// any, and its stored POST answers when `posts` says so and the policy
    /// stores any (both a scan of the store).
    fn forget(&self, url: &str, posts: bool) {
        let posts = posts && self.rules.post;
        if self.key.has_additions() || posts {
            self.store.purge_everywhere(&store::Purge::Url {
                url: url.to_string(),
                posts,
            });
        } else {
            self.store.invalidate(url);
        }
    }

    /// The response phase for a request that went upstream.
    fn store_answer(&self, ctx: &mut RequestCtx, resp: &mut Response<Body>, mut p: Pending) {
        let now = SystemTime::now();
        if ctx.refresh
            && let Some(stale) = &p.stale
        {
            stale.refreshing.store(false, Ordering::Release);
        }
        let failed = ctx.upstream_error.is_some()
            || (ctx.upstream_answered && resp.status().is_server_error());
        if failed
            && let Some(stale) = &p.stale
            && stale.stale_if_error(now, self.stale_if_error)
        {
            *resp = self.serve(
                ctx,
                &p.method,
                &p.headers,
                stale,
                CacheResult::Stale,
                "stale-if-error",
            );
            return;
        }
        if !ctx.upstream_answered {
            // The upstream failed (a miss that found nothing), or the answer
            // never came from it (a file, a direct answer): nothing to keep.
            let (result, status) = if ctx.upstream_error.is_some() {
                (
                    CacheResult::Miss,
                    "portcullis; fwd=uri-miss; detail=upstream-error",
                )
            } else {
                (
                    CacheResult::Bypass,
                    "portcullis; fwd=bypass; detail=not-upstream",
                )
            };
            self.count(ctx, result);
            resp.headers_mut()
                .insert(CACHE_STATUS, HeaderValue::from_static(status));
            return;
        }
        if resp.status() == StatusCode::NOT_MODIFIED
            && let Some(stale) = &p.stale
        {
            let fresh =
                Arc::new(stale.refreshed(resp.headers(), p.request_time, now, self.heuristic));
            self.store.insert(fresh.clone());
            let ttl = fresh.lifetime.as_secs() as i64 - fresh.age(now).as_secs() as i64;
            let status = HeaderValue::from_str(&format!(
                "portcullis; fwd={}; fwd-status=304; ttl={ttl}; stored",
                p.fwd
            ))
            .unwrap_or_else(|_| HeaderValue::from_static("portcullis; fwd=stale"));
            self.count(ctx, CacheResult::Revalidated);
            *resp = fresh.answer(&p.method, &p.headers, now, status, ctx.request_id_str());
            ctx.cache = CacheMark::Hit(Hit {
                entry: fresh,
                store: self.store.clone(),
            });
            return;
        }
        // §4.4: a POST is unsafe even when its answers are stored, so what
        // GET and HEAD stored for its URL goes.
        if p.method == Method::POST
            && (resp.status().is_success() || resp.status().is_redirection())
        {
            let url = p.key.trim_start_matches("POST ");
            let url = url.split(' ').next().unwrap_or(url);
            self.invalidate(ctx, url, resp, false);
        }
        let code = resp.status().as_u16();
        let directives = ResponseDirectives::parse(resp.headers());
        let verdict = rules::storable(
            &p.method,
            &p.request,
            p.authorized,
            resp.status(),
            resp.headers(),
            &directives,
            self.rules,
        )
        .and_then(|()| {
            let lifetime = rules::freshness_lifetime(
                resp.headers(),
                &directives,
                resp.status(),
                now,
                self.heuristic,
            );
            let validators = resp.headers().contains_key(header::ETAG)
                || resp.headers().contains_key(header::LAST_MODIFIED);
            if lifetime.is_zero() && !validators {
                Err(NotStored::NoFreshness)
            } else {
                Ok(())
            }
        })
        .and_then(|()| {
            let size = hyper::body::Body::size_hint(resp.body());
            if size.lower() > self.max_entry_size {
                Err(NotStored::TooBig)
            } else {
                Ok(())
            }
        });
        self.count(ctx, CacheResult::Miss);
        let status = match verdict {
            Ok(()) => format!("portcullis; fwd={}; fwd-status={code}; stored", p.fwd),
            Err(why) => format!(
                "portcullis; fwd={}; fwd-status={code}; detail={}",
                p.fwd,
                why.as_str()
            ),
        };
        if let Ok(v) = HeaderValue::from_str(&status) {
            resp.headers_mut().insert(CACHE_STATUS, v);
        }
        if verdict.is_err() {
            return;
        }
        let mut headers = resp.headers().clone();
        headers.remove(CACHE_STATUS);
        let vary = key::secondary_key(rules::vary_names(resp.headers()), &p.headers);
        let fill = Fill {
            store: self.store.clone(),
            key: std::mem::take(&mut p.key),
            status: resp.status(),
            headers,
            head_only: p.method == Method::HEAD,
            request_time: p.request_time,
            response_time: now,
            heuristic: self.heuristic,
            vary,
            guard: p.guard.take(),
        };
        let body = std::mem::replace(resp.body_mut(), crate::http::body::empty());
        let limit = usize::try_from(self.max_entry_size).unwrap_or(usize::MAX);
        *resp.body_mut() = fill::filling(body, limit, fill);
    }

    /// Reads a POST body (known to be no longer than `max_entry_size`) and
    /// keys the request by its digest.
    async fn key_post(&self, ctx: &mut RequestCtx, req: &mut Request<Body>) -> Flow {
        let body = std::mem::replace(req.body_mut(), crate::http::body::empty());
        let bytes = match read_whole(body, self.max_entry_size).await {
            Ok(b) => b,
            Err(ReadError::TooLarge(_) | ReadError::OverListenerLimit) => {
                return Flow::Respond(problem(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "the request body is larger than this listener accepts",
                    ctx.request_id_str(),
                ));
            }
            Err(ReadError::Broken(_)) => {
                return Flow::Respond(problem(
                    StatusCode::BAD_REQUEST,
                    "the request body broke off",
                    ctx.request_id_str(),
                ));
            }
            Err(ReadError::TimedOut) => {
                return Flow::Respond(problem(
                    StatusCode::REQUEST_TIMEOUT,
                    SLOW_BODY,
                    ctx.request_id_str(),
                ));
            }
        };
        let digest = Sha256::digest(&bytes);
        *req.body_mut() = full(bytes);
        let Some(mut key) = self.key_of(ctx, req) else {
            return self.bypass(ctx, "no-host");
        };
        key.push_str(" body=");
        key.push_str(&hex::encode(&digest[..16]));
        self.look(ctx, req, key, false)
    }

    fn key_of(&self, ctx: &RequestCtx, req: &Request<Body>) -> Option<String> {
        self.key
            .key(ctx, req.method(), req.uri(), req.headers(), host_of(req))
    }
}

impl Policy for Cache {
    fn phase(&self) -> Phase {
        Phase::CacheLookup
    }

    fn response_phase(&self) -> Option<ResponsePhase> {
        Some(ResponsePhase::CacheStore)
    }

    fn on_request(&self, ctx: &mut RequestCtx, req: &mut Request<Body>) -> Flow {
        let method = req.method();
        let cacheable = *method == Method::GET
            || *method == Method::HEAD
            || (self.rules.post && *method == Method::POST);
        if !cacheable {
            if method.is_safe() {
                return self.bypass(ctx, "method");
            }
            if let Some(url) =
                self.key
                    .key(ctx, &Method::GET, req.uri(), req.headers(), host_of(req))
            {
                let url = url.split(' ').next().unwrap_or_default().to_string();
                ctx.cache = CacheMark::Pending(Pending::marker(
                    PendingKind::Invalidate,
                    url,
                    method.clone(),
                ));
            }
            return Flow::Continue;
        }
        if *method == Method::POST {
            let size = hyper::body::Body::size_hint(req.body());
            if size.upper().is_none_or(|n| n > self.max_entry_size) {
                return self.bypass(ctx, "body-size");
            }
            ctx.cache = CacheMark::Pending(Pending::marker(
                PendingKind::NeedsBody,
                String::new(),
                Method::POST,
            ));
            return Flow::Continue;
        }
        match self.key_of(ctx, req) {
            Some(key) => self.look(ctx, req, key, false),
            None => self.bypass(ctx, "no-host"),
        }
    }

    fn on_request_async<'a>(
        &'a self,
        ctx: &'a mut RequestCtx,
        req: &'a mut Request<Body>,
    ) -> Option<BoxFuture<'a, Flow>> {
        let CacheMark::Pending(p) = &ctx.cache else {
            return None;
        };
        let needs_body = matches!(p.what, PendingKind::NeedsBody);
        let needs_tier = matches!(p.what, PendingKind::NeedsTier);
        if !needs_body && !needs_tier && p.wait.is_none() {
            return None;
        }
        Some(Box::pin(async move {
            if needs_body {
                ctx.cache = CacheMark::Untouched;
                let flow = self.key_post(ctx, req).await;
                if !matches!(flow, Flow::Continue) {
                    return flow;
                }
            }
            if let CacheMark::Pending(p) = &ctx.cache
                && matches!(p.what, PendingKind::NeedsTier)
            {
                let key = p.key.clone();
                ctx.cache = CacheMark::Untouched;
                self.store.lookup_tiers(&key).await;
                let flow = self.look(ctx, req, key, true);
                if !matches!(flow, Flow::Continue) {
                    return flow;
                }
            }
            let rx = match &mut ctx.cache {
                CacheMark::Pending(p) => p.wait.take(),
                _ => None,
            };
            let Some(rx) = rx else {
                return Flow::Continue;
            };
            CacheStore::wait(rx, self.lock_timeout).await;
            let CacheMark::Pending(p) = std::mem::take(&mut ctx.cache) else {
                return Flow::Continue;
            };
            match self.after_wait(ctx, &p) {
                Some(resp) => Flow::Respond(resp),
                None => {
                    ctx.cache = CacheMark::Pending(p);
                    Flow::Continue
                }
            }
        }))
    }

    fn on_response(&self, ctx: &mut RequestCtx, resp: &mut Response<Body>) {
        let p = match std::mem::take(&mut ctx.cache) {
            CacheMark::Pending(p) => *p,
            hit => {
                ctx.cache = hit;
                return;
            }
        };
        match p.what {
            PendingKind::Fetch => self.store_answer(ctx, resp, p),
            PendingKind::Invalidate => {
                self.count(ctx, CacheResult::Bypass);
                resp.headers_mut().insert(
                    CACHE_STATUS,
                    HeaderValue::from_static("portcullis; fwd=bypass; detail=method"),
                );
                let status = resp.status();
                if ctx.upstream_answered && (status.is_success() || status.is_redirection()) {
                    self.invalidate(ctx, &p.key, resp, true);
                }
            }
            PendingKind::Bypass(why) => {
                self.count(ctx, CacheResult::Bypass);
                if let Ok(v) =
                    HeaderValue::from_str(&format!("portcullis; fwd=bypass; detail={why}"))
                {
                    resp.headers_mut().insert(CACHE_STATUS, v);
                }
            }
            PendingKind::NeedsBody | PendingKind::NeedsTier => {}
        }
    }
}
