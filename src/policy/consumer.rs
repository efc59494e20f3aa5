//! Consumers: who calls the APIs. The top-level `consumers` list names
//! each one with its groups and credentials; every authentication policy
//! resolves a request to one (an API key or a basic-auth user by its
//! credential, a JWT by its subject), and later phases read it from the
//! request's [`Identity`]: `allow` by name and group, `rate_limit` by name
//! and the consumer's own limits, the upstream in `X-Consumer` and
//! `X-Consumer-Groups`.
//!
//! Compiled once per configuration: an API key is found by its SHA-256
//! digest in a hash map (one hash and one probe, whatever the number of
//! consumers), and each consumer's identity and header values are built
//! here, so authenticating a request allocates nothing.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use rustc_hash::FxBuildHasher;
use sha2::{Digest, Sha256};

use crate::config::model::{ConsumerDef, ConsumerHeadersDef};
use crate::observe::consumer_metrics::{ConsumerActivity, ConsumerMetrics, ConsumerSeries, OTHER};
use crate::policy::basic_auth::{HASH_HINT, PasswordHash};
use crate::policy::context::Identity;

/// A consumer, configured or named by a verified token.
#[derive(Debug)]
pub struct Consumer {
    /// Its name.
    pub name: Arc<str>,
    /// Its groups, in file order.
    pub groups: Box<[Arc<str>]>,
    /// Whether it is an entry of `consumers` (false: a token's subject
    /// that names no entry).
    pub configured: bool,
    /// `name` as a header value for the upstream; None when a header
    /// cannot carry it.
    pub name_header: Option<HeaderValue>,
    /// The groups, comma-separated, as a header value; None without groups.
    pub groups_header: Option<HeaderValue>,
    /// The basic-auth password hash (argon2id or bcrypt), parsed when the
    /// configuration loads; checked by `basic_auth`.
    pub password_hash: Option<PasswordHash>,
    /// This consumer's own settings for rate-limit policies, by policy name.
    pub rate_limits: HashMap<Arc<str>, LimitOverride, FxBuildHasher>,
    /// Its place in each route's per-consumer counters (past the cap and
    /// for unconfigured consumers: `other`'s).
    pub slot: usize,
    /// Its exported duration series (or `other`'s).
    pub series: Arc<ConsumerSeries>,
    /// Its activity for the admin API (configured consumers only).
    pub activity: Option<Arc<ConsumerActivity>>,
}

/// A consumer's own `limit`/`per`/`burst` for one rate-limit policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LimitOverride {
    /// Requests allowed per `per`.
    pub limit: NonZeroU32,
    /// The period.
    pub per: Duration,
    /// Requests allowed at once.
    pub burst: NonZeroU32,
}

impl Consumer {
    /// Whether the consumer is in `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| &**g == group)
    }
}

/// The request headers that carry the consumer to the upstream. Copies a
/// client sends are removed from every request, authenticated or not.
#[derive(Clone, Debug)]
pub struct ConsumerHeaders {
    /// The consumer's name (`x-consumer`).
    pub consumer: HeaderName,
    /// Its groups (`x-consumer-groups`).
    pub groups: HeaderName,
}

impl ConsumerHeaders {
    /// Sets the headers for `identity` after removing the client's copies.
    pub fn apply(&self, identity: Option<&Identity>, headers: &mut http::HeaderMap) {
        // A look at the few names a request has is cheaper than hashing
        // both names for removals that almost never find anything (a third
        // of a request's header work, measured with callgrind).
        if headers
            .keys()
            .any(|k| *k == self.consumer || *k == self.groups)
        {
            headers.remove(&self.consumer);
            headers.remove(&self.groups);
        }
        let Some(consumer) = identity.and_then(|i| i.consumer.as_deref()) else {
            return;
        };
        if let Some(v) = &consumer.name_header {
            headers.insert(self.consumer.clone(), v.clone());
        }
        if let Some(v) = &consumer.groups_header {
            headers.insert(self.groups.clone(), v.clone());
        }
    }
}

/// Every configured consumer, found by name or by API key.
pub struct Consumers {
    /// The analytics series by slot; the last is `other`.
    slots: Vec<Arc<ConsumerSeries>>,
    by_name: HashMap<Arc<str>, Arc<Identity>>,
    /// By the SHA-256 digest of each key.
    by_key: HashMap<[u8; 32], Arc<Identity>, FxBuildHasher>,
    /// The headers the upstream learns the consumer from.
    pub headers: Arc<ConsumerHeaders>,
}

/// Where consumers' analytics series come from, and how many may have
/// their own.
#[derive(Clone, Copy)]
pub struct Analytics<'a> {
    /// The long-lived series.
    pub metrics: Option<&'a ConsumerMetrics>,
    /// `observability.max_consumer_series`.
    pub max_series: usize,
}

impl Analytics<'_> {
    fn series(&self, name: &str) -> Arc<ConsumerSeries> {
        match self.metrics {
            Some(m) => m.series(name),
            None => ConsumerSeries::detached(name),
        }
    }

    fn activity(&self, name: &str) -> Arc<ConsumerActivity> {
        match self.metrics {
            Some(m) => m.activity(name),
            None => Arc::default(),
        }
    }
}

/// A mistake in the `consumers` section.
#[derive(Debug)]
pub struct ConsumerError {
    /// Where: a dotted path from the file's root.
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// How to put it right, when there is more to say.
    pub hint: Option<String>,
}

impl ConsumerError {
    fn new(field: String, message: String) -> ConsumerError {
        ConsumerError {
            field,
            message,
            hint: None,
        }
    }
}

impl Consumers {
    /// No consumers, default headers.
    pub fn empty() -> Consumers {
        Consumers {
            slots: vec![ConsumerSeries::detached(OTHER)],
            by_name: HashMap::new(),
            by_key: HashMap::default(),
            headers: Arc::new(ConsumerHeaders {
                consumer: HeaderName::from_static("x-consumer"),
                groups: HeaderName::from_static("x-consumer-groups"),
            }),
        }
    }

    /// Compiles the `consumers` and `consumer_headers` sections.
    /// `rate_limit_policy(name)` says whether `name` is a rate-limit
    /// policy (an override may only name one). Collects every mistake.
    pub fn build(
        defs: &[ConsumerDef],
        headers: &ConsumerHeadersDef,
        rate_limit_policy: impl Fn(&str) -> bool,
        analytics: Analytics,
    ) -> Result<Consumers, Vec<ConsumerError>> {
        let mut errors = Vec::new();
        let mut out = Consumers::empty();
        // The first `max_series` consumers have series of their own.
        out.slots = defs
            .iter()
            .take(analytics.max_series)
            .map(|d| analytics.series(&d.name))
            .chain(std::iter::once(analytics.series(OTHER)))
            .collect();
        let mut header = |field: &str, text: &str, fallback: &HeaderName| {
            HeaderName::from_bytes(text.as_bytes()).unwrap_or_else(|_| {
                errors.push(ConsumerError::new(
                    format!("consumer_headers.{field}"),
                    format!("`{text}` is not a valid header name"),
                ));
                fallback.clone()
            })
        };
        let defaults = Consumers::empty();
        out.headers = Arc::new(ConsumerHeaders {
            consumer: header("consumer", &headers.consumer, &defaults.headers.consumer),
            groups: header("groups", &headers.groups, &defaults.headers.groups),
        });
        for (i, def) in defs.iter().enumerate() {
            let at = format!("consumers.{i}");
            // Built even when in error, so that its name and keys are
            // still checked against the others'.
            let mut consumer = Self::consumer(def, &at, &rate_limit_policy, &mut errors);
            consumer.slot = i.min(out.slots.len() - 1);
            consumer.series = out.slots[consumer.slot].clone();
            consumer.activity = Some(analytics.activity(&def.name));
            let identity = Arc::new(Identity {
                consumer: Some(Arc::new(consumer)),
                claims: Arc::default(),
            });
            if out
                .by_name
                .insert(Arc::from(def.name.as_str()), identity.clone())
                .is_some()
            {
                errors.push(ConsumerError::new(
                    format!("{at}.name"),
                    format!("duplicate consumer name `{}`", def.name),
                ));
            }
            for (k, hex_digest) in def.api_keys.iter().enumerate() {
                let mut digest = [0u8; 32];
                if hex::decode_to_slice(hex_digest.trim(), &mut digest).is_err() {
                    errors.push(ConsumerError::new(
                        format!("{at}.api_keys.{k}"),
                        "an API key is stored as the SHA-256 of the key in hex (64 characters); \
                         `portcullis hash-key KEY` prints it"
                            .into(),
                    ));
                    continue;
                }
                if let Some(other) = out.by_key.insert(digest, identity.clone()) {
                    let other = other.consumer.as_ref().map_or("", |c| &*c.name);
                    errors.push(ConsumerError::new(
                        format!("{at}.api_keys.{k}"),
                        format!("this key is also consumer `{other}`'s; a key names one consumer"),
                    ));
                }
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors)
        }
    }

    fn consumer(
        def: &ConsumerDef,
        at: &str,
        rate_limit_policy: &impl Fn(&str) -> bool,
        errors: &mut Vec<ConsumerError>,
    ) -> Consumer {
        if def.name.is_empty() {
            errors.push(ConsumerError::new(
                format!("{at}.name"),
                "a consumer needs a name".into(),
            ));
        }
        let name_header = HeaderValue::from_str(&def.name).ok();
        if name_header.is_none() {
            errors.push(ConsumerError::new(
                format!("{at}.name"),
                "a consumer's name must be printable ASCII (it goes upstream in a header)".into(),
            ));
        }
        for (g, group) in def.groups.iter().enumerate() {
            if group.is_empty() || group.contains(',') || HeaderValue::from_str(group).is_err() {
                errors.push(ConsumerError::new(
                    format!("{at}.groups.{g}"),
                    format!("`{group}` is not a group name: printable ASCII without commas"),
                ));
            }
        }
        let mut rate_limits = HashMap::default();
        for (policy, o) in &def.rate_limits {
            let field = format!("{at}.rate_limits.{policy}");
            if !rate_limit_policy(policy) {
                errors.push(ConsumerError::new(
                    field.clone(),
                    format!("`{policy}` is not a rate_limit policy; overrides name one"),
                ));
            }
            let limit = NonZeroU32::new(o.limit);
            let burst = NonZeroU32::new(o.burst.unwrap_or(o.limit));
            match (limit, burst) {
                (Some(limit), Some(burst)) if o.per.0 / limit.get() >= Duration::from_micros(1) => {
                    rate_limits.insert(
                        Arc::from(policy.as_str()),
                        LimitOverride {
                            limit,
                            per: o.per.0,
                            burst,
                        },
                    );
                }
                (None, _) => errors.push(ConsumerError::new(
                    format!("{field}.limit"),
                    "`limit` must be at least 1".into(),
                )),
                (_, None) => errors.push(ConsumerError::new(
                    format!("{field}.burst"),
                    "`burst` must be at least 1".into(),
                )),
                _ => errors.push(ConsumerError::new(
                    format!("{field}.per"),
                    "more than one request per microsecond; use a longer `per`".into(),
                )),
            }
        }
        let password_hash = def.password_hash.as_deref().and_then(|text| {
            PasswordHash::parse(text)
                .map_err(|message| {
                    errors.push(ConsumerError {
                        field: format!("{at}.password_hash"),
                        message,
                        hint: Some(HASH_HINT.into()),
                    })
                })
                .ok()
        });
        let groups_header = if def.groups.is_empty() {
            None
        } else {
            HeaderValue::from_str(&def.groups.join(",")).ok()
        };
        Consumer {
            name: Arc::from(def.name.as_str()),
            groups: def.groups.iter().map(|g| Arc::from(g.as_str())).collect(),
            configured: true,
            name_header,
            groups_header,
            password_hash,
            rate_limits,
            // Set by the caller, which knows the slots.
            slot: 0,
            series: ConsumerSeries::detached(OTHER),
            activity: None,
        }
    }

    /// A consumer that no entry of `consumers` describes, named by a
    /// verified token's subject: no groups, no credentials, no overrides,
    /// counted as `other`.
    pub fn anonymous(&self, name: &str) -> Consumer {
        let slot = self.slots.len() - 1;
        Consumer {
            name: Arc::from(name),
            groups: Box::new([]),
            configured: false,
            name_header: HeaderValue::from_str(name).ok(),
            groups_header: None,
            password_hash: None,
            rate_limits: HashMap::default(),
            slot,
            series: self.slots[slot].clone(),
            activity: None,
        }
    }

    /// The consumer a verified credential names: the configured one of
    /// that name (its groups and limits apply), else an anonymous one.
    pub fn resolve(&self, name: &str) -> Arc<Consumer> {
        match self.by_name(name).and_then(|i| i.consumer.clone()) {
            Some(known) => known,
            None => Arc::new(self.anonymous(name)),
        }
    }

    /// The analytics series by slot, `other` last: what each route keeps
    /// counters for.
    pub fn slots(&self) -> &[Arc<ConsumerSeries>] {
        &self.slots
    }

    /// The consumer named `name`, as a request's identity.
    pub fn by_name(&self, name: &str) -> Option<&Arc<Identity>> {
        self.by_name.get(name)
    }

    /// The consumer whose API key is `key`, as a request's identity.
    pub fn by_key(&self, key: &[u8]) -> Option<&Arc<Identity>> {
        self.by_key.get(&<[u8; 32]>::from(Sha256::digest(key)))
    }

    /// Every consumer, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Consumer>> {
        self.by_name.values().filter_map(|i| i.consumer.as_ref())
    }

    /// How many consumers are configured.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// An API key as `consumers` stores it: its SHA-256 digest in lower-case hex.
pub fn hash_key(key: &[u8]) -> String {
    hex::encode(Sha256::digest(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::RateLimitOverride;
    use crate::config::units::Dur;
    use std::collections::BTreeMap;

    fn def(name: &str, groups: &[&str], keys: &[&str]) -> ConsumerDef {
        ConsumerDef {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            api_keys: keys.iter().map(|k| hash_key(k.as_bytes())).collect(),
            password_hash: None,
            rate_limits: BTreeMap::new(),
        }
    }

    fn build(defs: &[ConsumerDef]) -> Result<Consumers, Vec<ConsumerError>> {
        let analytics = Analytics {
            metrics: None,
            max_series: 1,
        };
        Consumers::build(
            defs,
            &ConsumerHeadersDef::default(),
            |p| p == "per-user",
            analytics,
        )
    }

    #[test]
    fn keys_hash_to_the_documented_digest() {
        // echo -n test | sha256sum
        assert_eq!(
            hash_key(b"test"),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
    }

    #[test]
    fn consumers_are_found_by_key_and_by_name() {
        let c = build(&[
            def("acme", &["partners", "beta"], &["k1", "k2"]),
            def("ops", &[], &[]),
        ])
        .unwrap();
        let acme = c.by_key(b"k2").and_then(|i| i.consumer.clone()).unwrap();
        assert_eq!(&*acme.name, "acme");
        assert!(acme.configured && acme.in_group("beta") && !acme.in_group("staff"));
        assert_eq!(acme.groups_header.as_ref().unwrap(), "partners,beta");
        assert!(c.by_key(b"k3").is_none());
        assert!(c.by_key(b"").is_none());
        assert!(c.by_name("ops").is_some() && c.by_name("nobody").is_none());
        assert_eq!(c.len(), 2);
        // One series of its own (the cap is 1 here); ops and token
        // subjects count as `other`.
        assert_eq!((acme.slot, acme.series.name()), (0, "acme"));
        let ops = c.by_name("ops").and_then(|i| i.consumer.clone()).unwrap();
        assert_eq!((ops.slot, ops.series.name()), (1, "other"));
        assert!(
            ops.activity.is_some(),
            "every configured consumer has activity"
        );
        let anon = c.anonymous("svc-1");
        assert_eq!((anon.slot, anon.series.name()), (1, "other"));
        assert!(anon.activity.is_none());
    }

    #[test]
    fn mistakes_are_reported_with_their_place() {
        let mut bad_hex = def("a", &[], &[]);
        bad_hex.api_keys = vec!["not-hex".into()];
        let mut limits = def("b", &["ok", "bad,group"], &["shared"]);
        limits.rate_limits.insert(
            "nope".into(),
            RateLimitOverride {
                limit: 0,
                per: Dur(Duration::from_secs(60)),
                burst: None,
            },
        );
        let errors = build(&[
            bad_hex,
            limits,
            def("b", &[], &["shared"]),
            def("bad\nname", &[], &[]),
        ])
        .err()
        .unwrap();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "consumers.0.api_keys.0",
                "consumers.1.groups.1",
                "consumers.1.rate_limits.nope",
                "consumers.1.rate_limits.nope.limit",
                "consumers.2.name",
                "consumers.2.api_keys.0",
                "consumers.3.name",
            ],
            "{errors:?}"
        );
        assert!(
            errors[0].message.contains("hash-key"),
            "{}",
            errors[0].message
        );
        assert!(errors[5].message.contains("`b`"), "{}", errors[5].message);
    }

    #[test]
    fn password_hashes_are_parsed_and_a_password_in_clear_is_refused_with_a_hint() {
        let mut good = def("ops", &[], &[]);
        good.password_hash = Some(
            crate::policy::basic_auth::hash_password(
                b"pw",
                crate::policy::basic_auth::HashFormat::Bcrypt,
            )
            .unwrap(),
        );
        let c = build(&[good]).unwrap();
        let ops = c.by_name("ops").and_then(|i| i.consumer.clone()).unwrap();
        assert!(ops.password_hash.as_ref().unwrap().verify(b"pw"));

        let mut clear = def("dev", &[], &[]);
        clear.password_hash = Some("hunter2".into());
        let errors = build(&[def("ops", &[], &[]), clear]).err().unwrap();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].field, "consumers.1.password_hash");
        assert!(
            !errors[0].message.contains("hunter2"),
            "{}",
            errors[0].message
        );
        let hint = errors[0].hint.as_deref().unwrap_or_default();
        assert!(hint.contains("portcullis hash-password"), "{hint}");
    }

    #[test]
    fn client_copies_of_the_consumer_headers_never_pass() {
        let c = build(&[def("acme", &["partners"], &["k"])]).unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert("x-consumer", HeaderValue::from_static("admin"));
        headers.insert("x-consumer-groups", HeaderValue::from_static("root"));
        c.headers.apply(None, &mut headers);
        assert!(headers.is_empty(), "{headers:?}");
        headers.insert("x-consumer-groups", HeaderValue::from_static("root"));
        c.headers.apply(c.by_key(b"k").map(|i| &**i), &mut headers);
        assert_eq!(headers["x-consumer"], "acme");
        assert_eq!(headers["x-consumer-groups"], "partners");
        // A token's subject with no entry: its name, no groups.
        let anon = Identity {
            consumer: Some(Arc::new(c.anonymous("svc-42"))),
            claims: Arc::default(),
        };
        headers.insert("x-consumer-groups", HeaderValue::from_static("root"));
        c.headers.apply(Some(&anon), &mut headers);
        assert_eq!(headers["x-consumer"], "svc-42");
        assert!(!headers.contains_key("x-consumer-groups"));
    }
}
