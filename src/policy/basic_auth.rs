//! `basic_auth`: HTTP Basic authentication (RFC 7617) against `consumers`.
//! The user name is a consumer's `name`; the password is checked against
//! its `password_hash`, argon2id or bcrypt.
//!
//! A check costs what the hash was made to cost (argon2id with the OWASP
//! parameters: 19 MiB and tens of milliseconds), so it runs on tokio's
//! blocking threads, a few at a time, never on an async worker. A
//! credential that passed is remembered for `cache_ttl`: later requests
//! with it cost one keyed hash and one map probe in `on_request`, with no
//! task spawned. Only successes are remembered; a reload rebuilds the
//! policy and forgets them, so a changed or removed password stops working
//! at once.
//!
//! Guessing is slowed per client address (an IPv6 client per /64, which
//! one host can pick addresses from at will): each failed check spends one
//! of `max_failures` per `failure_window` (GCRA, governor); once they are
//! spent the address gets 429 with `Retry-After`, without a check, whatever
//! it sends (the right password too, cached or not: a guesser must not
//! learn that a guess was right) until it has earned another. An unknown
//! user costs a check as well, against a dummy hash with a consumer's
//! parameters, so that the time of an answer does not tell which users
//! exist.
//!
//! The Authorization header is removed before the upstream unless
//! `forward_credentials`.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, RandomState};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::{Duration, Instant};

use argon2::password_hash::phc::{Output, Salt};
use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use dashmap::DashMap;
use futures_util::future::BoxFuture;
use governor::clock::DefaultClock;
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use http::{HeaderValue, Request, StatusCode, header};
use rustc_hash::FxBuildHasher;
use siphasher::sip128::SipHasher13;
use tokio::sync::Semaphore;

use super::auth::Refuser;
use super::consumer::Consumers;
use super::token_cache::AlreadyHashed;
use super::{BuildEnv, Flow, Phase, Policy};
use crate::config::model::BasicAuthDef;
use crate::http::body::Body;
use crate::http::headers::canonical_ip;
use crate::kept::KeptWhileUsed;
use crate::policy::context::{Identity, RequestCtx};

/// What `check` and the consumers' errors suggest for making a hash.
pub const HASH_HINT: &str = "`portcullis hash-password` reads a password on standard input and \
                             prints its argon2id hash (`--bcrypt` for a bcrypt one)";

/// A consumer's password hash, parsed once when the configuration loads.
#[derive(Clone)]
pub enum PasswordHash {
    /// An argon2id PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`).
    Argon2(Box<argon2::PasswordHash>),
    /// A bcrypt hash (`$2a$`, `$2b$` or `$2y$`).
    Bcrypt(Box<str>),
}

impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The kind and cost only: logs have no use for the hash itself.
        match self {
            PasswordHash::Argon2(h) => write!(f, "argon2id({})", h.params),
            PasswordHash::Bcrypt(h) => write!(f, "bcrypt({})", h.get(4..6).unwrap_or("?")),
        }
    }
}

impl PasswordHash {
    /// Parses an argon2id PHC string or a bcrypt hash; the error says what
    /// is wrong without repeating the text (which may be a password).
    pub fn parse(text: &str) -> Result<PasswordHash, String> {
        if text.starts_with("$argon2") {
            Self::parse_argon2(text)
        } else if ["$2a$", "$2b$", "$2y$"].iter().any(|p| text.starts_with(p)) {
            let parts: bcrypt::HashParts = text
                .parse()
                .map_err(|e| format!("not a valid bcrypt hash: {e}"))?;
            if !(4..=31).contains(&parts.get_cost()) {
                return Err(format!(
                    "bcrypt cost {} is out of range (4 to 31)",
                    parts.get_cost()
                ));
            }
            Ok(PasswordHash::Bcrypt(text.into()))
        } else {
            Err("not an argon2id (`$argon2id$…`) or bcrypt (`$2b$…`) hash; \
                 a password is stored hashed, never as it is"
                .into())
        }
    }

    fn parse_argon2(text: &str) -> Result<PasswordHash, String> {
        let h = argon2::PasswordHash::new(text)
            .map_err(|e| format!("not a valid argon2id PHC string: {e}"))?;
        if h.algorithm.as_str() != "argon2id" {
            return Err(format!(
                "`{}` hashes are not accepted; use argon2id",
                h.algorithm.as_str()
            ));
        }
        if let Some(v) = h.version {
            argon2::Version::try_from(v)
                .map_err(|_| format!("argon2 version {v} is not one of 16 or 19"))?;
        }
        argon2::Params::try_from(&h).map_err(|e| format!("argon2id parameters: {e}"))?;
        match (&h.salt, &h.hash) {
            (Some(salt), Some(_)) if salt.len() >= argon2::MIN_SALT_LEN => {
                Ok(PasswordHash::Argon2(Box::new(h)))
            }
            (Some(_), Some(_)) => Err("the argon2id salt is shorter than 8 bytes".into()),
            _ => Err("an argon2id PHC string needs a salt and a hash".into()),
        }
    }

    /// Whether `password` is the one this hash was made from. Slow by
    /// design: call it off the async workers.
    pub fn verify(&self, password: &[u8]) -> bool {
        match self {
            // The hash's own algorithm, version and parameters are used.
            PasswordHash::Argon2(h) => Argon2::default().verify_password(password, &**h).is_ok(),
            // Passwords past 72 bytes are cut there, as every bcrypt does.
            PasswordHash::Bcrypt(h) => bcrypt::verify(password, h).unwrap_or(false),
        }
    }

    /// A hash no password matches that costs as much to check as `like`:
    /// its format and parameters, a fixed salt, an output of zeros.
    pub fn dummy_like(like: &PasswordHash) -> PasswordHash {
        match like {
            PasswordHash::Argon2(h) => {
                let mut d = (**h).clone();
                let len = h.hash.as_ref().map_or(32, Output::len);
                if let (Ok(salt), Ok(out)) =
                    (Salt::new(b"portcullis-dummy"), Output::new(&vec![0; len]))
                {
                    d.salt = Some(salt);
                    d.hash = Some(out);
                }
                PasswordHash::Argon2(Box::new(d))
            }
            PasswordHash::Bcrypt(h) => {
                let cost = h.get(4..6).unwrap_or("12");
                // 53 characters of `.` (zero bits): a salt and hash of zeros.
                PasswordHash::Bcrypt(format!("$2b${cost}${}", ".".repeat(53)).into())
            }
        }
    }

    /// The dummy for consumers without an argon2id or bcrypt hash to copy:
    /// argon2id with the parameters `hash-password` uses.
    fn default_dummy() -> PasswordHash {
        let params = argon2::Params::DEFAULT;
        let h = argon2::PasswordHash {
            algorithm: argon2::ARGON2ID_IDENT,
            version: Some(argon2::Version::V0x13.into()),
            params: (&params).try_into().unwrap_or_default(),
            salt: None,
            hash: None,
        };
        PasswordHash::dummy_like(&PasswordHash::Argon2(Box::new(h)))
    }
}

/// What `hash-password` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashFormat {
    /// argon2id, m=19456 KiB, t=2, p=1 (OWASP's recommendation).
    Argon2id,
    /// bcrypt, cost 12.
    Bcrypt,
}

/// Why a password could not be hashed.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// Nothing to hash.
    #[error("the password is empty")]
    Empty,
    /// bcrypt would silently ignore the rest.
    #[error(
        "bcrypt uses only the first 72 bytes of a password and this one has {0}; \
         use argon2id (the default) for longer passwords"
    )]
    TooLongForBcrypt(usize),
    /// The hashing library refused (bad parameters, no randomness).
    #[error("cannot hash the password: {0}")]
    Failed(String),
}

/// A password's hash as `consumers[].password_hash` stores it, with a
/// random salt.
pub fn hash_password(password: &[u8], format: HashFormat) -> Result<String, HashError> {
    if password.is_empty() {
        return Err(HashError::Empty);
    }
    match format {
        HashFormat::Argon2id => {
            let params = argon2::Params::new(19_456, 2, 1, None)
                .map_err(|e| HashError::Failed(e.to_string()))?;
            Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
                .hash_password(password)
                .map(|h| h.to_string())
                .map_err(|e| HashError::Failed(e.to_string()))
        }
        HashFormat::Bcrypt => {
            if password.len() > 72 {
                return Err(HashError::TooLongForBcrypt(password.len()));
            }
            bcrypt::hash(password, 12).map_err(|e| HashError::Failed(e.to_string()))
        }
    }
}

/// Credentials up to this many decoded bytes are decoded on the stack.
const INLINE: usize = 192;

/// `user:password` as the request carried it, decoded.
struct Credential {
    bytes: Decoded,
    /// Where the first `:` is.
    colon: usize,
}

enum Decoded {
    Inline([u8; INLINE], usize),
    Heap(Vec<u8>),
}

impl Credential {
    fn bytes(&self) -> &[u8] {
        match &self.bytes {
            Decoded::Inline(buf, len) => &buf[..*len],
            Decoded::Heap(v) => v,
        }
    }

    fn user(&self) -> &str {
        // UTF-8 was checked when parsing, and `:` is one byte.
        std::str::from_utf8(&self.bytes()[..self.colon]).unwrap_or("")
    }

    fn password(&self) -> &[u8] {
        &self.bytes()[self.colon + 1..]
    }
}

/// Why a request's credentials are refused before any check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unusable {
    /// No `Basic` credentials.
    Missing,
    /// `Basic` credentials that are not base64 of UTF-8 `user:password`.
    Malformed,
}

/// Standard base64; RFC 7617 writes the padding, some clients leave it off.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Reads `Basic <base64(user:password)>` (RFC 7617 §2: the scheme in any
/// case, one or more spaces, the user without `:`, UTF-8).
fn parse_credentials(value: &[u8]) -> Result<Credential, Unusable> {
    let value = value.trim_ascii();
    let (scheme, rest) = match value.iter().position(|&b| b == b' ') {
        Some(i) => (&value[..i], &value[i..]),
        None => (value, &b""[..]),
    };
    if !scheme.eq_ignore_ascii_case(b"basic") {
        // Another scheme: no credentials this policy can use.
        return Err(Unusable::Missing);
    }
    let encoded = rest.trim_ascii_start();
    if encoded.is_empty() {
        return Err(Unusable::Malformed);
    }
    let bytes = if base64::decoded_len_estimate(encoded.len()) <= INLINE {
        let mut buf = [0u8; INLINE];
        let len = BASE64
            .decode_slice(encoded, &mut buf)
            .map_err(|_| Unusable::Malformed)?;
        Decoded::Inline(buf, len)
    } else {
        Decoded::Heap(BASE64.decode(encoded).map_err(|_| Unusable::Malformed)?)
    };
    let mut cred = Credential { bytes, colon: 0 };
    let text = std::str::from_utf8(cred.bytes()).map_err(|_| Unusable::Malformed)?;
    cred.colon = text.find(':').ok_or(Unusable::Malformed)?;
    Ok(cred)
}

/// A credential's keyed 128-bit hash: the low half finds its shard and
/// slot, the high half tells two credentials sharing a slot apart.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct CacheKey(u64, u64);

const SHARDS: usize = 16;

/// A verified credential.
struct Entry {
    check: u64,
    expires: Instant,
    identity: Arc<Identity>,
}

type Shard = HashMap<u64, Entry, BuildHasherDefault<AlreadyHashed>>;

/// Credentials that passed a check, by their keyed hash (never the
/// password itself), each for `ttl`; bounded, split into shards each under
/// its own short lock (never held across an await), as the JWT policy's
/// token cache.
struct CredentialCache {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
    ttl: Duration,
}

impl CredentialCache {
    /// About `capacity` credentials for `ttl` each; None for no cache.
    fn new(capacity: usize, ttl: Duration) -> Option<CredentialCache> {
        if capacity == 0 || ttl.is_zero() {
            return None;
        }
        Some(CredentialCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: capacity.div_ceil(SHARDS),
            ttl,
        })
    }

    fn shard(&self, key: CacheKey) -> std::sync::MutexGuard<'_, Shard> {
        // The high bits pick the shard; the map uses the low ones.
        crate::lock(&self.shards[(key.0 >> 60) as usize % SHARDS])
    }

    /// Who `key` was verified as, if that is still remembered at `now`.
    fn get(&self, key: CacheKey, now: Instant) -> Option<Arc<Identity>> {
        let shard = self.shard(key);
        let e = shard.get(&key.0)?;
        (e.check == key.1 && now < e.expires).then(|| e.identity.clone())
    }

    /// Remembers that `key` was verified as `identity` at `now`, making
    /// room by dropping expired entries first and, if none, an arbitrary one.
    fn insert(&self, key: CacheKey, identity: Arc<Identity>, now: Instant) {
        let mut shard = self.shard(key);
        if shard.len() >= self.per_shard && !shard.contains_key(&key.0) {
            shard.retain(|_, e| now < e.expires);
            if shard.len() >= self.per_shard
                && let Some(victim) = shard.keys().next().copied()
            {
                shard.remove(&victim);
            }
        }
        shard.insert(
            key.0,
            Entry {
                check: key.1,
                expires: now + self.ttl,
                identity,
            },
        );
    }
}

/// The settings that decide whether failure counters are kept across a reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FailureSettings {
    max_failures: NonZeroU32,
    window: Duration,
}

type FailureLimiter = RateLimiter<
    u64,
    DashMapStateStore<u64, FxBuildHasher>,
    DefaultClock,
    StateInformationMiddleware,
>;

/// Failed checks by client address, for one policy.
pub struct FailureCounters {
    /// One unit per failure; `max_failures` at once, one more every `interval`.
    limiter: FailureLimiter,
    interval: Duration,
    /// Addresses that have spent every unit, until they earn the next.
    /// governor cannot say whether a key is spent without spending, so
    /// the last failure notes it here for the checks that follow.
    blocked: DashMap<u64, Instant, FxBuildHasher>,
    /// Whether `blocked` may hold anything: most of the time it is empty,
    /// and a request then costs one load instead of a hash and a probe.
    maybe_blocked: AtomicBool,
    hasher: RandomState,
}

impl FailureCounters {
    fn new(s: FailureSettings) -> Option<FailureCounters> {
        let interval = s.window / s.max_failures.get();
        let quota = Quota::with_period(interval)?.allow_burst(s.max_failures);
        Some(FailureCounters {
            limiter: RateLimiter::dashmap_with_hasher(quota, FxBuildHasher)
                .with_middleware::<StateInformationMiddleware>(),
            interval,
            blocked: DashMap::with_hasher(FxBuildHasher),
            maybe_blocked: AtomicBool::new(false),
            hasher: RandomState::new(),
        })
    }

    /// The client's key: its address, an IPv6 one by its /64.
    fn client(&self, ip: IpAddr) -> u64 {
        match canonical_ip(ip) {
            IpAddr::V4(v4) => self.hasher.hash_one((4u8, v4.octets())),
            IpAddr::V6(v6) => self.hasher.hash_one((6u8, &v6.octets()[..8])),
        }
    }

    /// How long the client must still wait, when it has no failures left.
    fn blocked(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        if !self.maybe_blocked.load(Ordering::Acquire) {
            return None;
        }
        let until = *self.blocked.get(&self.client(ip))?;
        until.checked_duration_since(now).filter(|d| !d.is_zero())
    }

    /// Spends one of the client's failures; notes it as blocked when that
    /// was its last.
    fn failed(&self, ip: IpAddr, now: Instant) {
        let key = self.client(ip);
        let spent = match self.limiter.check_key(&key) {
            Ok(state) => state.remaining_burst_capacity() == 0,
            Err(_) => true,
        };
        if spent {
            // The next unit comes within one interval; blocking for a whole
            // one errs on the guesser's side.
            self.blocked.insert(key, now + self.interval);
            self.maybe_blocked.store(true, Ordering::Release);
        }
    }

    /// Forgets refilled counters and lifted blocks, every `every`, for as
    /// long as a policy uses these counters.
    fn sweep_while_used(counters: Weak<FailureCounters>, every: Duration) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        handle.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(c) = counters.upgrade() else { return };
                c.sweep(Instant::now());
            }
        });
    }

    fn sweep(&self, now: Instant) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        // Cleared before the retain, set again after it if anything is
        // left: a block noted meanwhile is either seen by the retain or
        // sets the flag itself afterwards.
        self.maybe_blocked.store(false, Ordering::Release);
        self.blocked.retain(|_, until| *until > now);
        if !self.blocked.is_empty() {
            self.maybe_blocked.store(true, Ordering::Release);
        }
    }
}

/// Failure counters by policy name and settings, kept across reloads (a
/// reload, which a DNS change can cause, must not give guessers a fresh
/// allowance).
pub type FailureRegistry = KeptWhileUsed<(String, FailureSettings), FailureCounters>;

/// Checks at once, in the whole process: each holds a blocking thread and,
/// for argon2id, its memory (19 MiB with the OWASP parameters), so a flood
/// of wrong passwords from many addresses queues here instead of taking
/// every core and gigabytes.
static CHECKS: LazyLock<Arc<Semaphore>> = LazyLock::new(|| {
    Arc::new(Semaphore::new(
        std::thread::available_parallelism().map_or(2, |n| n.get()),
    ))
});

/// What `on_request` hands `on_request_async` when the credential must be
/// checked (allocated only then).
#[derive(Clone)]
struct Pending {
    credential: Arc<Credential>,
    key: CacheKey,
}

/// A compiled `basic_auth` policy.
pub struct BasicAuth {
    consumers: Arc<Consumers>,
    challenge: HeaderValue,
    forward_credentials: bool,
    cache: Option<CredentialCache>,
    keys: SipHasher13,
    failures: Arc<FailureCounters>,
    /// What an unknown user's password is checked against.
    dummy: Arc<PasswordHash>,
    refuser: Refuser,
}

impl BasicAuth {
    /// Checks the settings and finds (or makes) this policy's failure counters.
    pub fn build(def: &BasicAuthDef, env: &BuildEnv) -> Result<BasicAuth, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let realm = def.realm.as_deref().unwrap_or(env.name);
        // RFC 9110 §5.6.4: a quoted-string escapes `"` and `\`.
        let quoted = realm.replace('\\', "\\\\").replace('"', "\\\"");
        let challenge =
            HeaderValue::from_str(&format!("Basic realm=\"{quoted}\", charset=\"UTF-8\""))
                .map_err(|_| {
                    errors.push((
                        "realm".to_string(),
                        "the realm goes in a header: printable characters only".to_string(),
                    ))
                })
                .ok();
        let max_failures = NonZeroU32::new(def.max_failures);
        if max_failures.is_none() {
            errors.push((
                "max_failures".into(),
                "`max_failures` must be at least 1".into(),
            ));
        }
        if let Some(n) = max_failures
            && def.failure_window.0 / n.get() < Duration::from_millis(1)
        {
            errors.push((
                "failure_window".into(),
                "more than one failure per millisecond; use a longer `failure_window`".into(),
            ));
        }
        if def.cache_ttl.0.is_zero() && def.cache_size > 0 {
            errors.push((
                "cache_ttl".into(),
                "`cache_ttl` must be longer than 0; to check every request, set `cache_size: 0`"
                    .into(),
            ));
        }
        let (Some(challenge), Some(max_failures), true) =
            (challenge, max_failures, errors.is_empty())
        else {
            return Err(errors);
        };
        let settings = FailureSettings {
            max_failures,
            window: def.failure_window.0,
        };
        let (failures, fresh) =
            env.basic_auth_failures
                .get_or_make((env.name.to_string(), settings), || {
                    FailureCounters::new(settings).ok_or_else(|| {
                        vec![(
                            "failure_window".to_string(),
                            "`failure_window` must not be zero".to_string(),
                        )]
                    })
                })?;
        if fresh && !env.check_only {
            let every = settings
                .window
                .clamp(Duration::from_secs(1), Duration::from_secs(60));
            FailureCounters::sweep_while_used(Arc::downgrade(&failures), every);
        }
        // Unknown users are checked against a hash like a consumer's (the
        // first by name, so that the choice is stable across reloads).
        let dummy = env
            .consumers
            .iter()
            .filter_map(|c| Some((&c.name, c.password_hash.as_ref()?)))
            .min_by(|a, b| a.0.cmp(b.0))
            .map_or_else(PasswordHash::default_dummy, |(_, h)| {
                PasswordHash::dummy_like(h)
            });
        let random = RandomState::new();
        Ok(BasicAuth {
            consumers: env.consumers.clone(),
            challenge,
            forward_credentials: def.forward_credentials,
            cache: CredentialCache::new(def.cache_size, def.cache_ttl.0),
            // Two outputs of a randomly keyed hash: a random key for this policy.
            keys: SipHasher13::new_with_keys(random.hash_one(0u8), random.hash_one(1u8)),
            failures,
            dummy: Arc::new(dummy),
            refuser: Refuser::new(env.name, env.metrics),
        })
    }

    fn key(&self, credential: &Credential) -> CacheKey {
        let (low, high) = self.keys.hash(credential.bytes()).as_u64();
        CacheKey(low, high)
    }

    fn unauthorized(&self, ctx: &RequestCtx, reason: &'static str, detail: &str) -> Flow {
        self.refuser.refuse(
            ctx,
            reason,
            StatusCode::UNAUTHORIZED,
            detail,
            Some(&self.challenge),
        )
    }

    fn too_many_failures(&self, ctx: &RequestCtx, wait: Duration) -> Flow {
        let mut flow = self.refuser.refuse(
            ctx,
            "too_many_failures",
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed logins from this address; retry after the time in Retry-After",
            None,
        );
        if let Flow::Respond(resp) = &mut flow {
            // Whole seconds, rounded up: a client that waits that long is checked.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        flow
    }

    /// Checks the password on a blocking thread, then answers.
    async fn check(&self, ctx: &mut RequestCtx, pending: Pending) -> Flow {
        let Ok(permit) = CHECKS.clone().acquire_owned().await else {
            return self.unavailable(ctx);
        };
        // Again: other requests from this address may have failed while
        // this one waited its turn. (Checks already under way when an
        // address runs out may still fail and count: at most one per core
        // beyond `max_failures`.)
        if let Some(wait) = self.failures.blocked(ctx.client.ip(), Instant::now()) {
            return self.too_many_failures(ctx, wait);
        }
        let identity = self
            .consumers
            .by_name(pending.credential.user())
            .filter(|i| hash_of(i).is_some())
            .cloned();
        let checked = identity.clone();
        let dummy = self.dummy.clone();
        let credential = pending.credential.clone();
        let verified = tokio::task::spawn_blocking(move || {
            // Held by the check itself: a client that leaves cannot free
            // its place while the work goes on.
            let _permit = permit;
            let password = credential.password();
            match checked.as_deref().and_then(hash_of) {
                Some(hash) => hash.verify(password),
                None => {
                    // The same work as for a user that exists.
                    dummy.verify(password);
                    false
                }
            }
        })
        .await;
        let now = Instant::now();
        match (verified, identity) {
            (Ok(true), Some(identity)) => {
                if let Some(cache) = &self.cache {
                    cache.insert(pending.key, identity.clone(), now);
                }
                ctx.identity = Some(identity);
                Flow::Continue
            }
            (Ok(_), identity) => {
                self.failures.failed(ctx.client.ip(), now);
                let reason = if identity.is_some() {
                    "wrong_password"
                } else {
                    "unknown_user"
                };
                self.unauthorized(ctx, reason, "the user name or password is not valid")
            }
            (Err(e), _) => {
                tracing::error!(policy = %self.refuser.policy(), "password check failed: {e}");
                self.unavailable(ctx)
            }
        }
    }

    fn unavailable(&self, ctx: &RequestCtx) -> Flow {
        self.refuser.refuse(
            ctx,
            "unavailable",
            StatusCode::SERVICE_UNAVAILABLE,
            "the password cannot be checked now; try again shortly",
            None,
        )
    }
}

/// The consumer's password hash, if it has one.
fn hash_of(identity: &Identity) -> Option<&PasswordHash> {
    identity.consumer.as_deref()?.password_hash.as_ref()
}

impl Policy for BasicAuth {
    fn phase(&self) -> Phase {
        Phase::Authenticate
    }

    fn on_request(&self, ctx: &mut RequestCtx, req: &mut Request<Body>) -> Flow {
        let parsed = {
            let mut all = req.headers().get_all(header::AUTHORIZATION).iter();
            match (all.next(), all.next()) {
                (None, _) => Err(Unusable::Missing),
                // Two could be read two ways; refuse rather than pick.
                (Some(_), Some(_)) => Err(Unusable::Malformed),
                (Some(v), None) => parse_credentials(v.as_bytes()),
            }
        };
        if !self.forward_credentials {
            req.headers_mut().remove(header::AUTHORIZATION);
        }
        let credential = match parsed {
            Ok(c) => c,
            Err(Unusable::Missing) => {
                return self.unauthorized(
                    ctx,
                    "missing",
                    "this service needs a user name and password",
                );
            }
            Err(Unusable::Malformed) => {
                return self.unauthorized(
                    ctx,
                    "malformed",
                    "the Authorization header is not Basic base64(user:password)",
                );
            }
        };
        let now = Instant::now();
        if let Some(wait) = self.failures.blocked(ctx.client.ip(), now) {
            return self.too_many_failures(ctx, wait);
        }
        let key = self.key(&credential);
        if let Some(identity) = self.cache.as_ref().and_then(|c| c.get(key, now)) {
            ctx.identity = Some(identity);
            return Flow::Continue;
        }
        ctx.extensions.insert(Pending {
            credential: Arc::new(credential),
            key,
        });
        Flow::Continue
    }

    fn on_request_async<'a>(
        &'a self,
        ctx: &'a mut RequestCtx,
        _req: &'a mut Request<Body>,
    ) -> Option<BoxFuture<'a, Flow>> {
        // Nothing pending: the credential was found in the cache (or the
        // request was refused before).
        let pending = ctx.extensions.remove::<Pending>()?;
        Some(Box::pin(self.check(ctx, pending)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::{ConsumerDef, ConsumerHeadersDef};
    use crate::observe::metrics::Metrics;

    /// A real argon2id hash at a cost fit for tests.
    fn cheap_argon2(password: &str) -> String {
        let params = argon2::Params::new(256, 1, 1, None).unwrap();
        Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password(password.as_bytes())
            .unwrap()
            .to_string()
    }

    fn b64(text: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(text)
    }

    /// The user and password, or why there are none.
    type Parsed = Result<(String, Vec<u8>), Unusable>;

    fn parsed(value: &[u8]) -> Parsed {
        parse_credentials(value).map(|c| (c.user().to_string(), c.password().to_vec()))
    }

    #[test]
    fn credentials_parse_as_rfc_7617_says() {
        let ok = |user: &str, pass: &str| Ok((user.to_string(), pass.as_bytes().to_vec()));
        let alice = b64(b"alice:s3cret");
        let long = format!("bob:{}", "x".repeat(500));
        let cases: Vec<(String, Parsed)> = vec![
            (format!("Basic {alice}"), ok("alice", "s3cret")),
            (format!("basic {alice}"), ok("alice", "s3cret")),
            (format!("BASIC {alice}"), ok("alice", "s3cret")),
            (format!("Basic    {alice}  "), ok("alice", "s3cret")),
            (format!("  Basic {alice}"), ok("alice", "s3cret")),
            // Padding left off.
            (
                format!("Basic {}", b64(b"alice:pw").trim_end_matches('=')),
                ok("alice", "pw"),
            ),
            // The first colon ends the user; the password may hold more.
            (format!("Basic {}", b64(b"alice:a:b:")), ok("alice", "a:b:")),
            (format!("Basic {}", b64(b"alice:")), ok("alice", "")),
            (format!("Basic {}", b64(b":pw")), ok("", "pw")),
            (
                format!("Basic {}", b64("jürgen:pässwörd".as_bytes())),
                ok("jürgen", "pässwörd"),
            ),
            // Longer than the stack buffer.
            (
                format!("Basic {}", b64(long.as_bytes())),
                ok("bob", &long[4..]),
            ),
            // No credentials for this scheme.
            ("Bearer abc.def.ghi".into(), Err(Unusable::Missing)),
            ("Basically dXNlcjpwYXNz".into(), Err(Unusable::Missing)),
            ("".into(), Err(Unusable::Missing)),
            ("Basic".into(), Err(Unusable::Malformed)),
            ("Basic   ".into(), Err(Unusable::Malformed)),
            ("Basic not*base64!".into(), Err(Unusable::Malformed)),
            ("Basic YWxpY2U6cHc=garbage".into(), Err(Unusable::Malformed)),
            (format!("Basic {}", b64(b"alice")), Err(Unusable::Malformed)),
            (
                format!("Basic {}", b64(b"al\xffce:pw")),
                Err(Unusable::Malformed),
            ),
            (
                format!("Basic {}", b64(b"alice:p\xc3")),
                Err(Unusable::Malformed),
            ),
        ];
        for (header, expected) in cases {
            assert_eq!(parsed(header.as_bytes()), expected, "{header:?}");
        }
    }

    #[test]
    fn hashes_parse_and_verify_in_both_formats() {
        let argon = PasswordHash::parse(&cheap_argon2("s3cret")).unwrap();
        assert!(matches!(argon, PasswordHash::Argon2(_)));
        assert!(argon.verify(b"s3cret"));
        assert!(!argon.verify(b"s3cret "));
        assert!(!argon.verify(b""));
        let bcrypt = PasswordHash::parse(&bcrypt::hash("s3cret", 4).unwrap()).unwrap();
        assert!(matches!(bcrypt, PasswordHash::Bcrypt(_)));
        assert!(bcrypt.verify(b"s3cret") && !bcrypt.verify(b"S3cret"));
        // Other tools' prefixes.
        let two_y = bcrypt::hash_with_result("pw", 4)
            .unwrap()
            .format_for_version(bcrypt::Version::TwoY);
        assert!(PasswordHash::parse(&two_y).unwrap().verify(b"pw"));
        // A dummy costs the same and matches nothing.
        for h in [&argon, &bcrypt] {
            let dummy = PasswordHash::dummy_like(h);
            assert!(!dummy.verify(b"s3cret") && !dummy.verify(b""));
            assert_eq!(format!("{dummy:?}"), format!("{h:?}"));
        }
        assert!(!PasswordHash::default_dummy().verify(b"s3cret"));
        assert_eq!(
            format!("{:?}", PasswordHash::default_dummy()),
            "argon2id(m=19456,t=2,p=1)"
        );
    }

    #[test]
    fn anything_else_is_refused_without_being_repeated() {
        let argon2i = cheap_argon2("pw").replacen("argon2id", "argon2i", 1);
        let cases: &[(&str, &str)] = &[
            ("hunter2", "never as it is"),
            ("", "never as it is"),
            ("5f4dcc3b5aa765d61d8327deb882cf99", "never as it is"),
            ("$argon2id$v=19$m=19456,t=2,p=1", "salt and a hash"),
            ("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$", "argon2id"),
            (
                "$argon2id$v=19$m=1,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
                "parameters",
            ),
            (
                "$argon2id$v=7$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
                "version",
            ),
            (&argon2i, "use argon2id"),
            ("$2b$12$tooshort", "bcrypt"),
            (
                "$2b$03$......................................................."
                    .get(..60)
                    .unwrap_or_default(),
                "out of range",
            ),
            (
                "$2x$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",
                "never as it is",
            ),
        ];
        for (text, needle) in cases {
            let err = PasswordHash::parse(text).unwrap_err();
            assert!(err.contains(needle), "{text:?}: {err}");
            if text.len() > 3 && !text.starts_with('$') {
                assert!(!err.contains(text), "the password was repeated: {err}");
            }
        }
    }

    #[test]
    fn hash_password_makes_what_parse_accepts() {
        let h = hash_password(b"correct horse", HashFormat::Bcrypt).unwrap();
        assert!(h.starts_with("$2b$12$"), "{h}");
        assert!(PasswordHash::parse(&h).unwrap().verify(b"correct horse"));
        assert!(matches!(
            hash_password(b"", HashFormat::Argon2id),
            Err(HashError::Empty)
        ));
        assert!(matches!(
            hash_password(&[b'x'; 73], HashFormat::Bcrypt),
            Err(HashError::TooLongForBcrypt(73))
        ));
    }

    #[test]
    fn the_cache_remembers_for_its_ttl_and_tells_keys_apart() {
        let cache = CredentialCache::new(64, Duration::from_secs(300)).unwrap();
        let t0 = Instant::now();
        let who = Arc::new(Identity::default());
        cache.insert(CacheKey(7, 70), who.clone(), t0);
        let hit = cache.get(CacheKey(7, 70), t0 + Duration::from_secs(299));
        assert!(hit.is_some_and(|i| Arc::ptr_eq(&i, &who)));
        assert!(
            cache
                .get(CacheKey(7, 70), t0 + Duration::from_secs(300))
                .is_none()
        );
        // Same slot, another credential.
        assert!(cache.get(CacheKey(7, 71), t0).is_none());
        assert!(cache.get(CacheKey(8, 70), t0).is_none());
        assert!(CredentialCache::new(0, Duration::from_secs(1)).is_none());
    }

    #[test]
    fn the_cache_stays_within_its_size() {
        let cache = CredentialCache::new(32, Duration::from_secs(300)).unwrap();
        let now = Instant::now();
        for i in 0..10_000u64 {
            let k = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            cache.insert(CacheKey(k, i), Arc::default(), now);
        }
        let held: usize = cache.shards.iter().map(|s| crate::lock(s).len()).sum();
        assert!(held <= 32, "{held}");
        let last = 9_999u64;
        assert!(
            cache
                .get(
                    CacheKey(last.wrapping_mul(0x9e37_79b9_7f4a_7c15), last),
                    now
                )
                .is_some()
        );
    }

    #[test]
    fn failures_block_an_address_once_spent_and_not_its_neighbours() {
        let c = FailureCounters::new(FailureSettings {
            max_failures: NonZeroU32::new(3).unwrap(),
            window: Duration::from_secs(3600),
        })
        .unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let now = Instant::now();
        assert_eq!(c.blocked(ip("10.0.0.1"), now), None);
        c.failed(ip("10.0.0.1"), now);
        c.failed(ip("10.0.0.1"), now);
        assert_eq!(c.blocked(ip("10.0.0.1"), now), None);
        c.failed(ip("10.0.0.1"), now);
        // One failure is earned back every 20 minutes.
        assert_eq!(
            c.blocked(ip("10.0.0.1"), now),
            Some(Duration::from_secs(1200))
        );
        assert_eq!(
            c.blocked(ip("::ffff:10.0.0.1"), now),
            Some(Duration::from_secs(1200))
        );
        assert_eq!(c.blocked(ip("10.0.0.2"), now), None);
        assert_eq!(
            c.blocked(ip("10.0.0.1"), now + Duration::from_secs(1200)),
            None
        );
        // An IPv6 host picks addresses within its /64 at will.
        for i in 0..3 {
            c.failed(ip(&format!("2001:db8:1:2::{i}")), now);
        }
        assert!(c.blocked(ip("2001:db8:1:2:ffff::9"), now).is_some());
        assert_eq!(c.blocked(ip("2001:db8:1:3::1"), now), None);
        // The sweep lifts what has expired and keeps the rest.
        c.sweep(now + Duration::from_secs(1201));
        assert!(c.blocked.is_empty() && !c.maybe_blocked.load(Ordering::Acquire));
        assert_eq!(c.blocked(ip("2001:db8:1:2::1"), now), None);
    }

    fn consumers(users: &[(&str, Option<String>)]) -> Arc<Consumers> {
        let defs: Vec<ConsumerDef> = users
            .iter()
            .map(|(name, hash)| ConsumerDef {
                name: name.to_string(),
                groups: vec!["staff".into()],
                api_keys: vec![],
                password_hash: hash.clone(),
                rate_limits: Default::default(),
            })
            .collect();
        Arc::new(
            Consumers::build(
                &defs,
                &ConsumerHeadersDef::default(),
                |_| false,
                crate::policy::consumer::Analytics {
                    metrics: None,
                    max_series: 1000,
                },
            )
            .unwrap(),
        )
    }

    fn request(authorization: Option<&str>) -> (RequestCtx, Request<Body>) {
        let mut ctx = RequestCtx::new(
            HeaderValue::from_static("id"),
            ([10, 0, 0, 1], 4000).into(),
            Arc::from("l"),
            false,
            Instant::now(),
        );
        ctx.route = Some(Arc::from("r"));
        let mut req = Request::new(Body::default());
        if let Some(a) = authorization {
            req.headers_mut()
                .insert(header::AUTHORIZATION, HeaderValue::from_str(a).unwrap());
        }
        (ctx, req)
    }

    async fn run(policy: &BasicAuth, ctx: &mut RequestCtx, req: &mut Request<Body>) -> (u16, bool) {
        let mut flow = policy.on_request(ctx, req);
        let mut checked = false;
        if let Flow::Continue = flow
            && let Some(pending) = policy.on_request_async(ctx, req)
        {
            checked = true;
            flow = pending.await;
        }
        let status = match flow {
            Flow::Continue => 200,
            Flow::Respond(r) | Flow::Refresh(r) => r.status().as_u16(),
        };
        (status, checked)
    }

    #[tokio::test]
    async fn a_verified_credential_is_checked_once_then_found_without_a_task() {
        let metrics = Metrics::new();
        let consumers = consumers(&[("alice", Some(cheap_argon2("s3cret"))), ("bob", None)]);
        let env = crate::policy::tests::env("staff", &metrics, &consumers);
        let def: BasicAuthDef = serde_saphyr::from_str("{ max_failures: 100 }").unwrap();
        let policy = BasicAuth::build(&def, &env).unwrap();
        let good = format!("Basic {}", b64(b"alice:s3cret"));

        let (mut ctx, mut req) = request(Some(&good));
        assert_eq!(run(&policy, &mut ctx, &mut req).await, (200, true));
        assert_eq!(
            ctx.identity.as_ref().and_then(|i| i.consumer_name()),
            Some("alice")
        );
        assert!(!req.headers().contains_key(header::AUTHORIZATION));
        // The second time: answered in `on_request`, nothing left to await.
        let (mut ctx, mut req) = request(Some(&good));
        assert_eq!(run(&policy, &mut ctx, &mut req).await, (200, false));
        assert_eq!(
            ctx.identity.as_ref().and_then(|i| i.consumer_name()),
            Some("alice")
        );

        // Failures are never remembered: each is checked again.
        for (header, reason) in [
            (format!("Basic {}", b64(b"alice:wrong")), "wrong"),
            (format!("Basic {}", b64(b"alice:wrong")), "wrong again"),
            (format!("Basic {}", b64(b"mallory:s3cret")), "unknown"),
            (format!("Basic {}", b64(b"bob:")), "no password hash"),
        ] {
            let (mut ctx, mut req) = request(Some(&header));
            assert_eq!(
                run(&policy, &mut ctx, &mut req).await,
                (401, true),
                "{reason}"
            );
            assert!(ctx.identity.is_none());
        }
        for header in [None, Some("Basic !!"), Some("Bearer x")] {
            let (mut ctx, mut req) = request(header);
            assert_eq!(run(&policy, &mut ctx, &mut req).await, (401, false));
        }

        // Without a cache, every request is checked.
        let def: BasicAuthDef = serde_saphyr::from_str("{ cache_size: 0 }").unwrap();
        let uncached = BasicAuth::build(&def, &env).unwrap();
        for _ in 0..2 {
            let (mut ctx, mut req) = request(Some(&good));
            assert_eq!(run(&uncached, &mut ctx, &mut req).await, (200, true));
        }
    }

    #[tokio::test]
    async fn spent_failures_refuse_even_the_right_password() {
        let metrics = Metrics::new();
        let consumers = consumers(&[("alice", Some(cheap_argon2("s3cret")))]);
        let env = crate::policy::tests::env("staff", &metrics, &consumers);
        let def: BasicAuthDef =
            serde_saphyr::from_str("{ max_failures: 2, failure_window: 1h }").unwrap();
        let policy = BasicAuth::build(&def, &env).unwrap();
        let good = format!("Basic {}", b64(b"alice:s3cret"));
        let bad = format!("Basic {}", b64(b"alice:guess"));
        let (mut ctx, mut req) = request(Some(&good));
        assert_eq!(run(&policy, &mut ctx, &mut req).await, (200, true));
        for _ in 0..2 {
            let (mut ctx, mut req) = request(Some(&bad));
            assert_eq!(run(&policy, &mut ctx, &mut req).await.0, 401);
        }
        // Cached or not, refused without a check.
        for header in [&good, &bad] {
            let (mut ctx, mut req) = request(Some(header));
            assert_eq!(run(&policy, &mut ctx, &mut req).await, (429, false));
        }
    }

    #[test]
    fn settings_are_checked() {
        let metrics = Metrics::new();
        let consumers = consumers(&[]);
        let env = crate::policy::tests::env("staff", &metrics, &consumers);
        let errors = |yaml: &str| {
            let def: BasicAuthDef = serde_saphyr::from_str(yaml).unwrap();
            BasicAuth::build(&def, &env)
                .err()
                .unwrap_or_default()
                .into_iter()
                .map(|(f, _)| f)
                .collect::<Vec<_>>()
        };
        assert!(errors("{}").is_empty());
        assert!(errors("{ cache_size: 0, cache_ttl: 0s }").is_empty());
        assert_eq!(errors("{ max_failures: 0 }"), ["max_failures"]);
        assert_eq!(
            errors("{ max_failures: 10, failure_window: 5ms }"),
            ["failure_window"]
        );
        assert_eq!(errors("{ cache_ttl: 0s }"), ["cache_ttl"]);
        assert_eq!(errors("{ realm: \"a\\nb\" }"), ["realm"]);
    }

    #[test]
    fn the_challenge_names_the_realm_quoted() {
        let metrics = Metrics::new();
        let consumers = consumers(&[]);
        let env = crate::policy::tests::env("staff-login", &metrics, &consumers);
        let build = |yaml: &str| {
            let def: BasicAuthDef = serde_saphyr::from_str(yaml).unwrap();
            BasicAuth::build(&def, &env).ok().unwrap().challenge
        };
        assert_eq!(
            build("{}"),
            "Basic realm=\"staff-login\", charset=\"UTF-8\""
        );
        assert_eq!(
            build(r#"{ realm: 'say "hi" \ bye' }"#),
            r#"Basic realm="say \"hi\" \\ bye", charset="UTF-8""#
        );
    }
}
