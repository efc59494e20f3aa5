//! `rate_limit`: at most `limit` requests per `per` for each key (a client
//! address, a consumer, a header's value or a token claim), `burst` of them
//! at once; past it, 429 with `Retry-After`.
//!
//! The counting is GCRA (governor): each key earns one request every
//! `per / limit` and may save up `burst` of them, so a client that keeps to
//! the rate is never refused and one that bursts is refused only until its
//! next request is due, not for the rest of a fixed window.
//!
//! Keys are hashed to 64 bits with a per-process random key, so a client
//! can neither make the table allocate per request nor aim a collision at
//! another client's counter. The counters belong to the policy's name and
//! outlive reloads that keep its settings.

use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Weak};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use http::{HeaderName, HeaderValue, Request, StatusCode, header};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use rustc_hash::FxBuildHasher;

use futures_util::future::BoxFuture;
use sha2::{Digest, Sha256};

use super::redis_store::RedisStore;
use super::{BuildEnv, Flow, Phase, Policy, Store};
use crate::config::model::{OnStoreError, RateLimitDef, RateLimitStore};
use crate::http::body::Body;
use crate::http::headers::canonical_ip;
use crate::http::problem::problem;
use crate::kept::KeptWhileUsed;
use crate::observe::metrics::{PolicyLabel, PolicyLabels};
use crate::policy::context::RequestCtx;

/// What requests are counted by.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LimitKey {
    /// The client's IP address.
    ClientIp,
    /// The authenticated consumer.
    Consumer,
    /// A request header's value.
    Header(HeaderName),
    /// A claim of the verified JWT.
    Claim(String),
}

impl LimitKey {
    /// Parses `client_ip`, `consumer`, `header:NAME` or `jwt:CLAIM`.
    pub fn parse(text: &str) -> Result<LimitKey, String> {
        let bad = || {
            format!(
                "`{text}` is not a rate-limit key; use client_ip, consumer, header:NAME or jwt:CLAIM"
            )
        };
        match text.split_once(':') {
            None if text == "client_ip" => Ok(LimitKey::ClientIp),
            None if text == "consumer" => Ok(LimitKey::Consumer),
            Some(("header", name)) => HeaderName::from_bytes(name.as_bytes())
                .map(LimitKey::Header)
                .map_err(|_| bad()),
            Some(("jwt", claim)) if !claim.is_empty() => Ok(LimitKey::Claim(claim.to_string())),
            _ => Err(bad()),
        }
    }

    /// What this request is counted by. A request without the value (no
    /// such header, no consumer) is counted by its client address, so
    /// leaving a header out is not a way around the limit.
    fn value<'a, B>(&self, ctx: &'a RequestCtx, req: &'a Request<B>) -> KeyValue<'a> {
        let identity = ctx.identity.as_deref();
        let given = match self {
            LimitKey::ClientIp => None,
            LimitKey::Header(name) => req.headers().get(name).map(HeaderValue::as_bytes),
            LimitKey::Consumer => identity.and_then(|i| i.consumer_name()).map(str::as_bytes),
            LimitKey::Claim(claim) => match identity.and_then(|i| i.claims.get(claim)) {
                Some(serde_json::Value::String(s)) => Some(s.as_bytes()),
                // Numbers and the like: rare enough to format.
                Some(other) => return KeyValue::Formatted(other.to_string()),
                None => None,
            },
        };
        match given {
            Some(v) => KeyValue::Given(v),
            // An IPv4 client seen through an IPv6 socket counts as its IPv4 address.
            None => KeyValue::Client(canonical_ip(ctx.client.ip())),
        }
    }

    /// The key's 64-bit hash for this request, for local counters.
    fn hash<B>(&self, hasher: &RandomState, ctx: &RequestCtx, req: &Request<B>) -> u64 {
        // The tags keep a header whose value spells an address apart from
        // that address.
        match self.value(ctx, req) {
            KeyValue::Given(v) => hasher.hash_one((1u8, v)),
            KeyValue::Formatted(s) => hasher.hash_one((1u8, s.as_bytes())),
            KeyValue::Client(ip) => hasher.hash_one((0u8, ip)),
        }
    }

    /// The key's name in a shared store: the same in every instance (a
    /// SHA-256 digest, so that neither its length nor a collision is up to
    /// the client), hex-encoded.
    fn shared_name<B>(&self, ctx: &RequestCtx, req: &Request<B>) -> String {
        let mut digest = Sha256::new();
        match self.value(ctx, req) {
            KeyValue::Given(v) => {
                digest.update([1u8]);
                digest.update(v);
            }
            KeyValue::Formatted(s) => {
                digest.update([1u8]);
                digest.update(s.as_bytes());
            }
            KeyValue::Client(IpAddr::V4(ip)) => {
                digest.update([0u8, 4]);
                digest.update(ip.octets());
            }
            KeyValue::Client(IpAddr::V6(ip)) => {
                digest.update([0u8, 6]);
                digest.update(ip.octets());
            }
        }
        hex::encode(&digest.finalize()[..16])
    }
}

/// The value a request is counted by.
enum KeyValue<'a> {
    /// As the request carries it.
    Given(&'a [u8]),
    /// A claim that is not a string, as JSON text.
    Formatted(String),
    /// The client address, when the request lacks the value.
    Client(IpAddr),
}

type Limiter = RateLimiter<u64, DashMapStateStore<u64, FxBuildHasher>, DefaultClock>;

/// The settings that decide whether counters can be kept across a reload.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Settings {
    key: LimitKey,
    limit: NonZeroU32,
    per: Duration,
    burst: NonZeroU32,
}

/// Counters of one policy, in this process.
pub struct LocalCounters {
    settings: Settings,
    limiter: Limiter,
    hasher: RandomState,
}

impl LocalCounters {
    fn new(settings: Settings) -> Option<LocalCounters> {
        let quota =
            Quota::with_period(settings.per / settings.limit.get())?.allow_burst(settings.burst);
        Some(LocalCounters {
            limiter: RateLimiter::dashmap_with_hasher(quota, FxBuildHasher),
            hasher: RandomState::new(),
            settings,
        })
    }

    /// How long until the request is allowed (zero: allowed now).
    fn check(&self, key: u64) -> Duration {
        match self.limiter.check_key(&key) {
            Ok(()) => Duration::ZERO,
            Err(not_until) => not_until.wait_time_from(self.limiter.clock().now()),
        }
    }

    /// Forgets keys whose counters have refilled, every `every`, for as
    /// long as a policy uses these counters.
    fn sweep_while_used(counters: Weak<LocalCounters>, every: Duration) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        handle.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(c) = counters.upgrade() else { return };
                c.limiter.retain_recent();
                c.limiter.shrink_to_fit();
            }
        });
    }
}

/// Where a policy counts.
enum Counters {
    /// In this process.
    Local(Arc<LocalCounters>),
    /// In Redis, shared by every instance.
    Shared(SharedCounters),
}

/// Counters in a shared store.
struct SharedCounters {
    key: LimitKey,
    store: Arc<RedisStore>,
    /// `{key_prefix}rl:{policy}:`, before each key's digest.
    prefix: String,
    interval: Duration,
    burst: u32,
    on_error: OnStoreError,
    errors: Counter,
}

/// A compiled `rate_limit` policy.
pub struct RateLimit {
    name: Arc<str>,
    counters: Counters,
    /// `limit` as a header value, for the 429.
    limit_header: HeaderValue,
    refused: Family<PolicyLabels, Counter>,
}

impl RateLimit {
    /// Checks the settings and finds (or makes) this policy's counters.
    pub fn build(def: &RateLimitDef, env: &BuildEnv) -> Result<RateLimit, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let key = LimitKey::parse(&def.key)
            .map_err(|e| errors.push(("key".to_string(), e)))
            .ok();
        let limit = NonZeroU32::new(def.limit);
        if limit.is_none() {
            errors.push((
                "limit".into(),
                "`limit` must be at least 1 (to refuse everything, use an ip_filter)".into(),
            ));
        }
        let burst = match def.burst {
            None => limit,
            Some(b) => {
                let burst = NonZeroU32::new(b);
                if burst.is_none() {
                    errors.push(("burst".into(), "`burst` must be at least 1".into()));
                }
                burst
            }
        };
        if let Some(limit) = limit
            && def.per.0 / limit.get() < Duration::from_micros(1)
        {
            errors.push((
                "per".into(),
                format!(
                    "{} requests per {:?} is more than one per microsecond; use a longer `per`",
                    limit, def.per.0
                ),
            ));
        }
        let shared = match (def.store, env.redis) {
            (RateLimitStore::Local, _) => None,
            (RateLimitStore::Redis, Store::Ready(store)) => Some(store),
            // Reported where `stores.redis` is; the policy cannot be built.
            (RateLimitStore::Redis, Store::InError) => return Err(errors),
            (RateLimitStore::Redis, Store::Absent) => {
                errors.push((
                    "store".into(),
                    "`store: redis` needs a top-level `stores: { redis: { url: redis://HOST:PORT } }`"
                        .into(),
                ));
                None
            }
        };
        let (Some(key), Some(limit), Some(burst), true) = (key, limit, burst, errors.is_empty())
        else {
            return Err(errors);
        };
        let name: Arc<str> = Arc::from(env.name);
        let limit_header = HeaderValue::from(def.limit);
        let refused = env.metrics.rate_limited.clone();
        if let Some(shared) = shared {
            return Ok(RateLimit {
                counters: Counters::Shared(SharedCounters {
                    key,
                    store: shared.store.clone(),
                    prefix: format!("{}rl:{}:", shared.key_prefix, env.name),
                    interval: def.per.0 / limit.get(),
                    burst: burst.get(),
                    on_error: def.on_store_error,
                    errors: env
                        .metrics
                        .rate_limit_store_errors
                        .get_or_create_owned(&PolicyLabel {
                            policy: name.clone(),
                        }),
                }),
                name,
                limit_header,
                refused,
            });
        }
        let settings = Settings {
            key,
            limit,
            per: def.per.0,
            burst,
        };
        let sweep_every = settings
            .per
            .clamp(Duration::from_secs(1), Duration::from_secs(60));
        let (counters, fresh) =
            env.rate_limits
                .get_or_make((env.name.to_string(), settings.clone()), || {
                    LocalCounters::new(settings).ok_or_else(|| {
                        vec![("per".to_string(), "`per` must not be zero".to_string())]
                    })
                })?;
        if fresh {
            LocalCounters::sweep_while_used(Arc::downgrade(&counters), sweep_every);
        }
        Ok(RateLimit {
            name,
            limit_header,
            counters: Counters::Local(counters),
            refused,
        })
    }

    fn refuse(&self, ctx: &RequestCtx, wait: Duration) -> Flow {
        if let Some(route) = &ctx.route {
            self.refused
                .get_or_create(&PolicyLabels {
                    route: route.clone(),
                    policy: self.name.clone(),
                })
                .inc();
        }
        // Whole seconds, rounded up: a client that waits that long is let in.
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let mut resp = problem(
            StatusCode::TOO_MANY_REQUESTS,
            "too many requests; retry after the time in Retry-After",
            ctx.request_id_str(),
        );
        let headers = resp.headers_mut();
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        headers.insert(RATELIMIT_LIMIT, self.limit_header.clone());
        headers.insert(RATELIMIT_REMAINING, HeaderValue::from_static("0"));
        headers.insert(RATELIMIT_RESET, HeaderValue::from(secs));
        Flow::Respond(resp)
    }
}

const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

impl Policy for RateLimit {
    fn phase(&self) -> Phase {
        Phase::RateLimit
    }

    fn on_request(&self, ctx: &mut RequestCtx, req: &mut Request<Body>) -> Flow {
        let Counters::Local(c) = &self.counters else {
            // Shared counters answer in `on_request_async`.
            return Flow::Continue;
        };
        let key = c.settings.key.hash(&c.hasher, ctx, req);
        match c.check(key) {
            Duration::ZERO => Flow::Continue,
            wait => self.refuse(ctx, wait),
        }
    }

    fn on_request_async<'a>(
        &'a self,
        ctx: &'a mut RequestCtx,
        req: &'a mut Request<Body>,
    ) -> Option<BoxFuture<'a, Flow>> {
        let Counters::Shared(c) = &self.counters else {
            return None;
        };
        let key = format!("{}{}", c.prefix, c.key.shared_name(ctx, req));
        Some(Box::pin(async move {
            match c.store.check(&key, c.interval, c.burst).await {
                Ok(Duration::ZERO) => Flow::Continue,
                Ok(wait) => self.refuse(ctx, wait),
                Err(e) => {
                    c.errors.inc();
                    tracing::debug!(policy = %self.name, "rate-limit store: {e}");
                    match c.on_error {
                        OnStoreError::Allow => Flow::Continue,
                        OnStoreError::Deny => Flow::Respond(problem(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "the rate-limit store is unavailable; try again shortly",
                            ctx.request_id_str(),
                        )),
                    }
                }
            }
        }))
    }
}

/// Rate-limit counters by policy name and settings, kept across reloads.
pub type CounterRegistry = KeptWhileUsed<(String, Settings), LocalCounters>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::consumer::Consumer;
    use crate::policy::context::Identity;

    fn settings(limit: u32, per: Duration, burst: u32) -> Settings {
        Settings {
            key: LimitKey::ClientIp,
            limit: NonZeroU32::new(limit).unwrap(),
            per,
            burst: NonZeroU32::new(burst).unwrap(),
        }
    }

    fn ctx(ip: &str) -> RequestCtx {
        let mut ctx = RequestCtx::new(
            HeaderValue::from_static("id"),
            (ip.parse::<IpAddr>().unwrap(), 4000).into(),
            Arc::from("l"),
            false,
            std::time::Instant::now(),
        );
        ctx.route = Some(Arc::from("r"));
        ctx
    }

    #[test]
    fn keys_parse_and_bad_ones_say_what_is_allowed() {
        assert_eq!(LimitKey::parse("client_ip"), Ok(LimitKey::ClientIp));
        assert_eq!(LimitKey::parse("consumer"), Ok(LimitKey::Consumer));
        assert_eq!(
            LimitKey::parse("header:X-User"),
            Ok(LimitKey::Header(HeaderName::from_static("x-user")))
        );
        assert_eq!(
            LimitKey::parse("jwt:tenant"),
            Ok(LimitKey::Claim("tenant".into()))
        );
        for bad in ["ip", "header:", "header:bad name", "jwt:", "cookie:x"] {
            let err = LimitKey::parse(bad).unwrap_err();
            assert!(err.contains("client_ip, consumer"), "{bad}: {err}");
        }
    }

    #[test]
    fn burst_is_allowed_at_once_then_one_per_interval() {
        let c = LocalCounters::new(settings(2, Duration::from_secs(3600), 3)).unwrap();
        for _ in 0..3 {
            assert_eq!(c.check(7), Duration::ZERO);
        }
        let wait = c.check(7);
        // One request is earned every 30 minutes.
        assert!(
            wait > Duration::from_secs(1790) && wait <= Duration::from_secs(1800),
            "{wait:?}"
        );
        // Other keys have their own counters.
        assert_eq!(c.check(8), Duration::ZERO);
    }

    #[test]
    fn a_missing_value_counts_by_client_address() {
        let hasher = RandomState::new();
        let req = Request::new(());
        let header = LimitKey::Header(HeaderName::from_static("x-user"));
        let a = ctx("10.0.0.1");
        assert_eq!(
            header.hash(&hasher, &a, &req),
            LimitKey::ClientIp.hash(&hasher, &a, &req)
        );
        assert_eq!(
            LimitKey::Consumer.hash(&hasher, &a, &req),
            LimitKey::ClientIp.hash(&hasher, &a, &req)
        );
        assert_ne!(
            LimitKey::ClientIp.hash(&hasher, &a, &req),
            LimitKey::ClientIp.hash(&hasher, &ctx("10.0.0.2"), &req)
        );
        // A header that spells the address is still another key.
        let spelled = Request::builder()
            .header("x-user", "10.0.0.1")
            .body(())
            .unwrap();
        assert_ne!(
            header.hash(&hasher, &a, &spelled),
            LimitKey::ClientIp.hash(&hasher, &a, &req)
        );
    }

    #[test]
    fn ipv4_mapped_clients_share_the_ipv4_counter() {
        let hasher = RandomState::new();
        let req = Request::new(());
        assert_eq!(
            LimitKey::ClientIp.hash(&hasher, &ctx("::ffff:10.0.0.1"), &req),
            LimitKey::ClientIp.hash(&hasher, &ctx("10.0.0.1"), &req)
        );
    }

    #[test]
    fn consumer_and_claim_keys_read_the_identity() {
        let hasher = RandomState::new();
        let req = Request::new(());
        let mut alice = ctx("10.0.0.1");
        let mut claims = serde_json::Map::new();
        claims.insert("tenant".into(), "acme".into());
        claims.insert("level".into(), 3.into());
        alice.identity = Some(Arc::new(Identity {
            consumer: Some(Arc::new(Consumer::anonymous("alice"))),
            claims: Arc::new(claims),
        }));
        let mut bob = ctx("10.0.0.1");
        bob.identity = Some(Arc::new(Identity {
            consumer: Some(Arc::new(Consumer::anonymous("bob"))),
            claims: Arc::default(),
        }));
        let consumer = LimitKey::Consumer;
        assert_ne!(
            consumer.hash(&hasher, &alice, &req),
            consumer.hash(&hasher, &bob, &req)
        );
        let tenant = LimitKey::Claim("tenant".into());
        assert_ne!(
            tenant.hash(&hasher, &alice, &req),
            tenant.hash(&hasher, &bob, &req)
        );
        // Bob has no tenant claim: counted by address.
        assert_eq!(
            tenant.hash(&hasher, &bob, &req),
            LimitKey::ClientIp.hash(&hasher, &bob, &req)
        );
        let level = LimitKey::Claim("level".into());
        assert_ne!(
            level.hash(&hasher, &alice, &req),
            LimitKey::ClientIp.hash(&hasher, &alice, &req)
        );
    }

    #[test]
    fn counters_are_kept_for_the_same_settings_only() {
        struct Found {
            counters: Arc<LocalCounters>,
            fresh: bool,
        }
        let registry = CounterRegistry::default();
        let find = |name: &str, s: Settings| {
            let (counters, fresh) = registry
                .get_or_make((name.to_string(), s.clone()), || {
                    LocalCounters::new(s).ok_or(())
                })
                .unwrap();
            Found { counters, fresh }
        };
        let s = settings(5, Duration::from_secs(60), 5);
        let first = find("per-user", s.clone());
        assert!(first.fresh);
        let again = find("per-user", s.clone());
        assert!(!again.fresh);
        assert!(Arc::ptr_eq(&first.counters, &again.counters));
        let changed = find("per-user", settings(6, Duration::from_secs(60), 6));
        assert!(changed.fresh);
        drop((first, again, changed));
        // Once no policy holds them, they go.
        let after = find("per-user", s);
        assert!(after.fresh);
    }
}
