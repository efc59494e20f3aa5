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

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Weak};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use http::{HeaderName, HeaderValue, Request, StatusCode, header};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use rustc_hash::FxBuildHasher;

use futures_util::future::BoxFuture;
use sha2::{Digest, Sha256};

use super::redis_store::{Counted, RedisStore, StoreError};
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

type Limiter = RateLimiter<
    u64,
    DashMapStateStore<u64, FxBuildHasher>,
    DefaultClock,
    StateInformationMiddleware,
>;

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
            limiter: RateLimiter::dashmap_with_hasher(quota, FxBuildHasher)
                .with_middleware::<StateInformationMiddleware>(),
            hasher: RandomState::new(),
            settings,
        })
    }

    /// Counts a request against `key`: how much is left, or how long to wait.
    fn check(&self, key: u64) -> Verdict {
        match self.limiter.check_key(&key) {
            Ok(state) => {
                let remaining = state.remaining_burst_capacity();
                let used = self.settings.burst.get().saturating_sub(remaining);
                Verdict::Allowed {
                    remaining: u64::from(remaining),
                    full_in: state.quota().replenish_interval() * used,
                }
            }
            Err(not_until) => {
                Verdict::Refused(not_until.wait_time_from(self.limiter.clock().now()))
            }
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

/// What counting one request decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// Allowed: this many are left now, and the budget is whole again after
    /// `full_in` (the end of the window, for a quota).
    Allowed { remaining: u64, full_in: Duration },
    /// Refused until this long from now.
    Refused(Duration),
}

/// One budget: the policy's own, or a consumer's override of it.
struct Budget {
    counting: Counting,
    /// `"NAME";q=…;w=…` for `RateLimit-Policy`.
    policy_header: HeaderValue,
}

/// Where and how a budget counts.
enum Counting {
    /// A rate, in this process.
    Local(Arc<LocalCounters>),
    /// A rate, in Redis.
    Shared {
        /// `{key_prefix}rl:{policy}:` (and the consumer, for an override).
        prefix: String,
        interval: Duration,
        burst: u32,
    },
    /// A fixed budget per window, in Redis.
    Quota {
        /// `{key_prefix}q:{policy}:` (and the consumer, for an override),
        /// then each key's digest and `:`; the window start follows.
        prefix: String,
        limit: u64,
        /// None: calendar months.
        period: Option<Duration>,
    },
}

/// The shared store a policy counts in, and what to do when it fails.
struct SharedStore {
    store: Arc<RedisStore>,
    on_error: OnStoreError,
    errors: Counter,
}

/// A compiled `rate_limit` policy.
pub struct RateLimit {
    name: Arc<str>,
    key: LimitKey,
    budget: Budget,
    /// Consumers' own budgets, by consumer name.
    overrides: HashMap<Arc<str>, Budget, FxBuildHasher>,
    store: Option<SharedStore>,
    headers: bool,
    /// `"NAME";r=`, the start of every `RateLimit` value.
    state_prefix: Box<[u8]>,
    refused: Family<PolicyLabels, Counter>,
}

/// The limit and window a policy states, as given.
enum Form {
    Rate {
        limit: NonZeroU32,
        per: Duration,
        burst: NonZeroU32,
    },
    Quota {
        limit: u64,
        period: Option<Duration>,
    },
}

impl RateLimit {
    /// Checks the settings and finds (or makes) this policy's counters.
    pub fn build(def: &RateLimitDef, env: &BuildEnv) -> Result<RateLimit, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let key = LimitKey::parse(&def.key)
            .map_err(|e| errors.push(("key".to_string(), e)))
            .ok();
        let form = Self::form(def, &mut errors);
        let store = match (def.store, env.redis) {
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
        if matches!(form, Some(Form::Quota { .. })) && def.store == RateLimitStore::Local {
            errors.push((
                "store".into(),
                "a quota must outlive restarts and hold for every instance: set `store: redis`"
                    .into(),
            ));
        }
        let (Some(key), Some(form), true) = (key, form, errors.is_empty()) else {
            return Err(errors);
        };
        let name: Arc<str> = Arc::from(env.name);
        let budget = Self::budget(env, &key, &form, store, None)?;
        let mut overrides = HashMap::default();
        for consumer in env.consumers.iter() {
            let Some(o) = consumer.rate_limits.get(env.name) else {
                continue;
            };
            let form = match form {
                Form::Rate { .. } => Form::Rate {
                    limit: o.limit,
                    per: o.per,
                    burst: o.burst,
                },
                Form::Quota { .. } => Form::Quota {
                    limit: u64::from(o.limit.get()),
                    period: Some(o.per),
                },
            };
            let b = Self::budget(env, &key, &form, store, Some(&consumer.name))?;
            overrides.insert(consumer.name.clone(), b);
        }
        Ok(RateLimit {
            store: store.map(|s| SharedStore {
                store: s.store.clone(),
                on_error: def.on_store_error,
                errors: env
                    .metrics
                    .rate_limit_store_errors
                    .get_or_create_owned(&PolicyLabel {
                        policy: name.clone(),
                    }),
            }),
            name,
            key,
            budget,
            overrides,
            headers: def.headers,
            state_prefix: format!("{};r=", sf_string(env.name)).into_bytes().into(),
            refused: env.metrics.rate_limited.clone(),
        })
    }

    /// The rate or quota `def` states; mistakes go to `errors`.
    fn form(def: &RateLimitDef, errors: &mut Vec<(String, String)>) -> Option<Form> {
        if let Some(q) = &def.quota {
            if def.limit.is_some() || def.per.is_some() || def.burst.is_some() {
                errors.push((
                    "quota".into(),
                    "give either `limit`/`per`/`burst` (a rate) or `quota`, not both".into(),
                ));
                return None;
            }
            if q.limit == 0 {
                errors.push(("quota.limit".into(), "`limit` must be at least 1".into()));
            }
            let period = match q.per.trim() {
                "month" => None,
                text => match crate::config::units::parse_duration(text) {
                    Ok(d) if d >= Duration::from_secs(1) && d.subsec_nanos() == 0 => Some(d),
                    Ok(_) => {
                        errors.push((
                            "quota.per".into(),
                            "a quota window is whole seconds, at least 1s".into(),
                        ));
                        return None;
                    }
                    Err(e) => {
                        errors.push((
                            "quota.per".into(),
                            format!("{e}; or `month` for calendar months"),
                        ));
                        return None;
                    }
                },
            };
            return (q.limit > 0).then_some(Form::Quota {
                limit: q.limit,
                period,
            });
        }
        let (Some(limit), Some(per)) = (def.limit, def.per) else {
            errors.push((
                String::new(),
                "a rate_limit needs `limit` and `per` (a rate), or `quota: { limit, per }`".into(),
            ));
            return None;
        };
        let Some(limit) = NonZeroU32::new(limit) else {
            errors.push((
                "limit".into(),
                "`limit` must be at least 1 (to refuse everything, use an ip_filter)".into(),
            ));
            return None;
        };
        let Some(burst) = NonZeroU32::new(def.burst.unwrap_or(limit.get())) else {
            errors.push(("burst".into(), "`burst` must be at least 1".into()));
            return None;
        };
        if per.0 / limit.get() < Duration::from_micros(1) {
            errors.push((
                "per".into(),
                format!(
                    "{} requests per {:?} is more than one per microsecond; use a longer `per`",
                    limit, per.0
                ),
            ));
            return None;
        }
        Some(Form::Rate {
            limit,
            per: per.0,
            burst,
        })
    }

    /// Makes (or finds, for local counters) the counters of one budget:
    /// the policy's, or `consumer`'s override.
    fn budget(
        env: &BuildEnv,
        key: &LimitKey,
        form: &Form,
        store: Option<&super::SharedStore>,
        consumer: Option<&str>,
    ) -> Result<Budget, Vec<(String, String)>> {
        let owner = match consumer {
            None => env.name.to_string(),
            Some(c) => format!("{}@{c}", env.name),
        };
        let (counting, q, w) = match (form, store) {
            (Form::Rate { limit, per, burst }, None) => {
                let settings = Settings {
                    key: key.clone(),
                    limit: *limit,
                    per: *per,
                    burst: *burst,
                };
                let sweep_every = (*per).clamp(Duration::from_secs(1), Duration::from_secs(60));
                let (counters, fresh) =
                    env.rate_limits.get_or_make((owner, settings.clone()), || {
                        LocalCounters::new(settings).ok_or_else(|| {
                            vec![("per".to_string(), "`per` must not be zero".to_string())]
                        })
                    })?;
                if fresh {
                    LocalCounters::sweep_while_used(Arc::downgrade(&counters), sweep_every);
                }
                let interval = *per / limit.get();
                (
                    Counting::Local(counters),
                    u64::from(burst.get()),
                    interval * burst.get(),
                )
            }
            (Form::Rate { limit, per, burst }, Some(store)) => {
                let interval = *per / limit.get();
                (
                    Counting::Shared {
                        prefix: format!("{}rl:{owner}:", store.key_prefix),
                        interval,
                        burst: burst.get(),
                    },
                    u64::from(burst.get()),
                    interval * burst.get(),
                )
            }
            (Form::Quota { limit, period }, Some(store)) => (
                Counting::Quota {
                    prefix: format!("{}q:{owner}:", store.key_prefix),
                    limit: *limit,
                    period: *period,
                },
                *limit,
                // A calendar month is stated as 30 days: `w` is a hint.
                period.unwrap_or(Duration::from_secs(30 * 86400)),
            ),
            (Form::Quota { .. }, None) => {
                return Err(vec![(
                    "store".into(),
                    "a quota needs `store: redis`".into(),
                )]);
            }
        };
        let text = format!("{};q={q};w={}", sf_string(env.name), seconds_up(w).max(1));
        Ok(Budget {
            counting,
            policy_header: HeaderValue::from_str(&text)
                .unwrap_or_else(|_| HeaderValue::from_static("\"rate_limit\"")),
        })
    }

    /// The budget this request counts against: its consumer's own, if it
    /// has one for this policy.
    fn budget_for(&self, ctx: &RequestCtx) -> &Budget {
        if self.overrides.is_empty() {
            return &self.budget;
        }
        ctx.identity
            .as_deref()
            .and_then(|i| i.consumer.as_deref())
            .filter(|c| c.configured)
            .and_then(|c| self.overrides.get(&c.name))
            .unwrap_or(&self.budget)
    }

    /// Notes the verdict for the answer's headers and refuses when it says so.
    fn apply(&self, ctx: &mut RequestCtx, budget: &Budget, verdict: Verdict) -> Flow {
        let (remaining, reset) = match verdict {
            Verdict::Allowed { remaining, full_in } => (remaining, full_in),
            Verdict::Refused(wait) => (0, wait),
        };
        if self.headers {
            // Written by hand: `format!` cost more than the counting itself
            // (callgrind, scenario 9's request: about 2,000 instructions).
            let mut itoa = itoa::Buffer::new();
            let remaining = itoa.format(remaining).as_bytes();
            let mut state = Vec::with_capacity(self.state_prefix.len() + remaining.len() + 24);
            state.extend_from_slice(&self.state_prefix);
            state.extend_from_slice(remaining);
            state.extend_from_slice(b";t=");
            state.extend_from_slice(itoa.format(seconds_up(reset)).as_bytes());
            if let Ok(state) = HeaderValue::from_maybe_shared(bytes::Bytes::from(state)) {
                ctx.response_headers.reserve(2);
                ctx.response_headers
                    .push((RATELIMIT_POLICY, budget.policy_header.clone()));
                ctx.response_headers.push((RATELIMIT, state));
            }
        }
        match verdict {
            Verdict::Allowed { .. } => Flow::Continue,
            Verdict::Refused(wait) => self.refuse(ctx, wait),
        }
    }

    fn refuse(&self, ctx: &RequestCtx, wait: Duration) -> Flow {
        if let Some(a) = ctx
            .identity
            .as_deref()
            .and_then(|i| i.consumer.as_deref())
            .and_then(|c| c.activity.as_deref())
        {
            a.note_rate_limited();
        }
        if let Some(route) = &ctx.route {
            self.refused
                .get_or_create(&PolicyLabels {
                    route: route.clone(),
                    policy: self.name.clone(),
                })
                .inc();
        }
        let mut resp = problem(
            StatusCode::TOO_MANY_REQUESTS,
            "too many requests; retry after the time in Retry-After",
            ctx.request_id_str(),
        );
        // Whole seconds, rounded up: a client that waits that long is let in.
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds_up(wait)));
        Flow::Respond(resp)
    }

    /// Counts the request in the shared store.
    async fn count_shared(
        &self,
        store: &SharedStore,
        budget: &Budget,
        digest: &str,
    ) -> Result<Verdict, StoreError> {
        match &budget.counting {
            Counting::Shared {
                prefix,
                interval,
                burst,
            } => {
                let key = format!("{prefix}{digest}");
                Ok(match store.store.check(&key, *interval, *burst).await? {
                    Counted::Allowed(full_in) => {
                        // Whole requests left once this one is counted.
                        let spent = full_in.as_micros().div_ceil(interval.as_micros().max(1));
                        Verdict::Allowed {
                            remaining: u64::from(*burst).saturating_sub(spent as u64),
                            full_in,
                        }
                    }
                    Counted::Refused(wait) => Verdict::Refused(wait),
                })
            }
            Counting::Quota {
                prefix,
                limit,
                period,
            } => {
                let key = format!("{prefix}{digest}:");
                let count = store.store.count_quota(&key, *limit, *period).await?;
                Ok(if count.allowed {
                    Verdict::Allowed {
                        remaining: limit.saturating_sub(count.used),
                        full_in: count.resets_in,
                    }
                } else {
                    Verdict::Refused(count.resets_in)
                })
            }
            // Local budgets count in `on_request`, never here.
            Counting::Local(_) => unreachable!("a local budget counted as a shared one"),
        }
    }
}

/// `text` as a Structured Field string (RFC 8941 §3.3.3): quoted, with `"`
/// and `\` escaped; a character a header cannot carry becomes `?`.
fn sf_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
    out
}

/// Whole seconds, rounded up.
fn seconds_up(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

impl Policy for RateLimit {
    fn phase(&self) -> Phase {
        Phase::RateLimit
    }

    fn on_request(&self, ctx: &mut RequestCtx, req: &mut Request<Body>) -> Flow {
        let budget = self.budget_for(ctx);
        let Counting::Local(c) = &budget.counting else {
            // Shared counters answer in `on_request_async`.
            return Flow::Continue;
        };
        let key = self.key.hash(&c.hasher, ctx, req);
        let verdict = c.check(key);
        self.apply(ctx, budget, verdict)
    }

    fn on_request_async<'a>(
        &'a self,
        ctx: &'a mut RequestCtx,
        req: &'a mut Request<Body>,
    ) -> Option<BoxFuture<'a, Flow>> {
        let store = self.store.as_ref()?;
        let budget = self.budget_for(ctx);
        if let Counting::Local(_) = budget.counting {
            return None;
        }
        let digest = self.key.shared_name(ctx, req);
        Some(Box::pin(async move {
            match self.count_shared(store, budget, &digest).await {
                Ok(verdict) => self.apply(ctx, budget, verdict),
                Err(e) => {
                    store.errors.inc();
                    tracing::debug!(policy = %self.name, "rate-limit store: {e}");
                    match store.on_error {
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
    use crate::policy::consumer::Consumers;
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
        // One request is earned every 30 minutes: after n of the burst of
        // 3, 3 - n are left and the budget is whole after n × 30 min.
        for n in 1..=3u32 {
            match c.check(7) {
                Verdict::Allowed { remaining, full_in } => {
                    assert_eq!(remaining, u64::from(3 - n));
                    assert_eq!(full_in, Duration::from_secs(1800) * n);
                }
                refused => panic!("request {n}: {refused:?}"),
            }
        }
        let Verdict::Refused(wait) = c.check(7) else {
            panic!("the 4th request passed");
        };
        assert!(
            wait > Duration::from_secs(1790) && wait <= Duration::from_secs(1800),
            "{wait:?}"
        );
        // Other keys have their own counters.
        assert!(matches!(c.check(8), Verdict::Allowed { remaining: 2, .. }));
    }

    #[test]
    fn names_become_structured_field_strings() {
        assert_eq!(sf_string("per-user"), "\"per-user\"");
        assert_eq!(sf_string("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(sf_string("naïve"), "\"na?ve\"");
        assert_eq!(seconds_up(Duration::from_millis(1001)), 2);
        assert_eq!(seconds_up(Duration::from_secs(3)), 3);
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
            consumer: Some(Arc::new(Consumers::empty().anonymous("alice"))),
            claims: Arc::new(claims),
        }));
        let mut bob = ctx("10.0.0.1");
        bob.identity = Some(Arc::new(Identity {
            consumer: Some(Arc::new(Consumers::empty().anonymous("bob"))),
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
