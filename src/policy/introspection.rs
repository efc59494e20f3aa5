//! `introspection`: the request's bearer token is checked at an OAuth 2.0
//! Token Introspection endpoint (RFC 7662), so that opaque tokens (and JWTs
//! the gateway has no keys for) can be used: the gateway POSTs
//! `token=…&token_type_hint=access_token`, authenticated as a client with
//! HTTP Basic (RFC 6749 §2.3.1), and the answer says whether the token is
//! `active` and what it grants.
//!
//! An active token's answer is the request's claims (for `allow`'s `claims`
//! and `rate_limit`'s `jwt:CLAIM`), its `sub` (else its `client_id`) names
//! the consumer. The answer must hold one of `audiences` in `aud` and
//! every `required_scopes` and `required_claims` value, else 403
//! `insufficient_scope`. An inactive token is 401 `invalid_token`. An
//! endpoint that cannot be asked, or does not answer within `timeout`, is a
//! 503 (or a 401, with `on_unavailable: unauthorized`): the request never
//! goes on unchecked.
//!
//! With `cache_ttl`, an active answer is reused for the same token until
//! `cache_ttl` has passed or the token's `exp` comes, whichever is first.
//! Inactive answers are not kept: a token that was refused is asked about
//! again, so one that becomes valid is not held back, and a revoked token
//! is honoured at most `cache_ttl` longer.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures_util::future::BoxFuture;
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use serde_json::{Map, Value};

use super::answer_cache::{AnswerCache, CacheKey, KeyBuilder};
use super::auth::{Refuser, bearer};
use super::jwt::has_member;
use super::service::{CallError, Service};
use super::{BuildEnv, Flow, Phase, Policy};
use crate::config::model::{IntrospectionDef, OnUnavailable};
use crate::http::body::{Body, full};
use crate::policy::consumer::Consumers;
use crate::policy::context::{Identity, RequestCtx};

/// The largest introspection answer read; a longer one is unusable.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// A compiled `introspection` policy.
pub struct Introspection {
    service: Service,
    timeout: Duration,
    /// `Basic base64(id:secret)`, made once.
    client_auth: HeaderValue,
    audiences: Box<[String]>,
    /// Members the answer must hold, each with every value it must have.
    required: Box<[(String, Box<[String]>)]>,
    on_unavailable: OnUnavailable,
    forward_token: bool,
    cache: Option<AnswerCache<Arc<Verdict>>>,
    cache_ttl: Duration,
    consumers: Arc<Consumers>,
    refuser: Refuser,
    challenges: Challenges,
}

/// The `WWW-Authenticate` values of RFC 6750 §3, made once.
struct Challenges {
    missing: HeaderValue,
    invalid: HeaderValue,
    scope: HeaderValue,
}

/// What an active token's answer allows.
#[derive(Debug)]
enum Verdict {
    /// The request goes on as this identity.
    Pass(Arc<Identity>),
    /// The token is good but not for this route.
    Forbidden,
}

/// Why the endpoint's answer could not be had.
#[derive(Debug, thiserror::Error)]
enum AskError {
    /// Connecting, TLS, HTTP, or no answer in time.
    #[error(transparent)]
    Call(#[from] CallError),
    /// The endpoint answered with another status than 200.
    #[error("the endpoint answered {0}")]
    Status(StatusCode),
    /// The answer is not a JSON object of at most 64 KiB.
    #[error("the answer is not a JSON object of at most 64 KiB")]
    Body,
}

impl Introspection {
    /// Checks the definition: the URL and CA, the client credentials.
    pub fn build(
        def: &IntrospectionDef,
        env: &BuildEnv,
    ) -> Result<Introspection, Vec<(String, String)>> {
        let mut errors: Vec<(String, String)> = Vec::new();
        let service =
            Service::configured(&def.url, def.ca.as_deref(), def.timeout.0, env, &mut errors);
        if def.client_id.is_empty() {
            errors.push((
                "client_id".into(),
                "the endpoint needs the gateway's `client_id`".into(),
            ));
        }
        if def.client_secret.is_empty() {
            errors.push((
                "client_secret".into(),
                "the endpoint needs the gateway's `client_secret`".into(),
            ));
        }
        // Form-encoded, then base64: ASCII, always a valid header value.
        let client_auth =
            HeaderValue::try_from(basic_credentials(&def.client_id, &def.client_secret))
                .map_err(|_| {
                    errors.push(("client_secret".into(), "cannot be sent in a header".into()))
                })
                .ok();
        let (Some(service), Some(client_auth), true) = (service, client_auth, errors.is_empty())
        else {
            return Err(errors);
        };
        let mut required: Vec<(String, Box<[String]>)> = def
            .required_claims
            .iter()
            .map(|(name, value)| (name.clone(), words(value)))
            .collect();
        if !def.required_scopes.is_empty() {
            let scopes = def
                .required_scopes
                .iter()
                .flat_map(|s| s.split_whitespace())
                .map(str::to_string);
            match required.iter_mut().find(|(name, _)| name == "scope") {
                Some((_, values)) => {
                    *values = values.iter().cloned().chain(scopes).collect();
                }
                None => required.push(("scope".into(), scopes.collect())),
            }
        }
        Ok(Introspection {
            service,
            timeout: def.timeout.0,
            client_auth,
            audiences: def.audiences.clone().into_boxed_slice(),
            required: required.into_boxed_slice(),
            on_unavailable: def.on_unavailable,
            forward_token: def.forward_token,
            cache: AnswerCache::new(def.cache_size).filter(|_| !def.cache_ttl.0.is_zero()),
            cache_ttl: def.cache_ttl.0,
            consumers: env.consumers.clone(),
            refuser: Refuser::new(env.name, env.metrics),
            challenges: Challenges {
                missing: HeaderValue::from_static("Bearer"),
                invalid: HeaderValue::from_static("Bearer error=\"invalid_token\""),
                scope: HeaderValue::from_static("Bearer error=\"insufficient_scope\""),
            },
        })
    }

    /// Asks the endpoint about `token`, all within `timeout`: the answer's
    /// members, or why there is none.
    async fn introspect(&self, form: String) -> Result<Map<String, Value>, AskError> {
        let mut ask = self.service.request(full(form));
        *ask.method_mut() = Method::POST;
        let headers = ask.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(header::AUTHORIZATION, self.client_auth.clone());
        let deadline = tokio::time::Instant::now() + self.timeout;
        let timed_out = |_| AskError::Call(CallError::Timeout(self.timeout));
        let answer = tokio::time::timeout_at(deadline, self.service.call(ask))
            .await
            .map_err(timed_out)??;
        if answer.status() != StatusCode::OK {
            return Err(AskError::Status(answer.status()));
        }
        let body = tokio::time::timeout_at(
            deadline,
            Limited::new(answer.into_body(), MAX_ANSWER_BYTES).collect(),
        )
        .await
        .map_err(timed_out)?
        .map_err(|_| AskError::Body)?
        .to_bytes();
        match serde_json::from_slice(&body) {
            Ok(Value::Object(members)) => Ok(members),
            _ => Err(AskError::Body),
        }
    }

    /// What an answer allows, and until when it may be reused (None: not
    /// at all). None for an inactive token.
    fn judge(
        &self,
        answer: Map<String, Value>,
        now: Instant,
    ) -> Option<(Verdict, Option<Instant>)> {
        if answer.get("active") != Some(&Value::Bool(true)) {
            return None;
        }
        let until = self.cache.as_ref().and_then(|_| {
            let exp = answer.get("exp").and_then(unix_seconds);
            reuse_for(exp, since_epoch(), self.cache_ttl).map(|d| now + d)
        });
        if !audience_ok(&answer, &self.audiences) || !grants(&answer, &self.required) {
            return Some((Verdict::Forbidden, until));
        }
        // The resource owner, else (a client credentials grant) the client.
        let consumer = ["sub", "client_id"]
            .iter()
            .find_map(|m| answer.get(*m).and_then(Value::as_str))
            .filter(|name| !name.is_empty())
            .map(|name| self.consumers.resolve(name));
        let identity = Arc::new(Identity {
            consumer,
            claims: Arc::new(answer),
        });
        Some((Verdict::Pass(identity), until))
    }

    /// Applies a verdict to the request.
    fn apply(&self, verdict: &Verdict, ctx: &mut RequestCtx, req: &mut Request<Body>) -> Flow {
        match verdict {
            Verdict::Pass(identity) => {
                if !self.forward_token {
                    req.headers_mut().remove(header::AUTHORIZATION);
                }
                ctx.identity = Some(identity.clone());
                Flow::Continue
            }
            Verdict::Forbidden => self.refuser.refuse(
                ctx,
                "claims",
                StatusCode::FORBIDDEN,
                "the token does not grant what this route requires",
                Some(&self.challenges.scope),
            ),
        }
    }

    /// The refusal of a request without a bearer token.
    fn missing(&self, ctx: &RequestCtx) -> Flow {
        self.refuser.refuse(
            ctx,
            "missing",
            StatusCode::UNAUTHORIZED,
            "this service needs a bearer token in the Authorization header",
            Some(&self.challenges.missing),
        )
    }

    /// Asks the endpoint, keeps an active answer, and applies it.
    async fn decide(
        &self,
        ctx: &mut RequestCtx,
        req: &mut Request<Body>,
        form: String,
        key: Option<CacheKey>,
    ) -> Flow {
        let answer = match self.introspect(form).await {
            Ok(answer) => answer,
            Err(e) => {
                tracing::warn!(
                    policy = %self.refuser.policy(),
                    url = %self.service.url(),
                    request_id = ctx.request_id_str(),
                    error = %e,
                    "the introspection endpoint could not be asked"
                );
                let detail = "the token cannot be checked now";
                return match self.on_unavailable {
                    OnUnavailable::Deny => self.refuser.refuse(
                        ctx,
                        "unavailable",
                        StatusCode::SERVICE_UNAVAILABLE,
                        detail,
                        None,
                    ),
                    OnUnavailable::Unauthorized => self.refuser.refuse(
                        ctx,
                        "unavailable",
                        StatusCode::UNAUTHORIZED,
                        detail,
                        Some(&self.challenges.invalid),
                    ),
                };
            }
        };
        let now = Instant::now();
        let Some((verdict, until)) = self.judge(answer, now) else {
            return self.refuser.refuse(
                ctx,
                "inactive",
                StatusCode::UNAUTHORIZED,
                "the bearer token is not active",
                Some(&self.challenges.invalid),
            );
        };
        let verdict = Arc::new(verdict);
        if let (Some(cache), Some(key), Some(until)) = (&self.cache, key, until) {
            cache.insert(key, verdict.clone(), until, now);
        }
        self.apply(&verdict, ctx, req)
    }
}

impl Policy for Introspection {
    fn phase(&self) -> Phase {
        Phase::Authenticate
    }

    fn on_request(&self, ctx: &mut RequestCtx, req: &mut Request<Body>) -> Flow {
        match bearer(req) {
            Some(_) => Flow::Continue,
            None => self.missing(ctx),
        }
    }

    fn on_request_async<'a>(
        &'a self,
        ctx: &'a mut RequestCtx,
        req: &'a mut Request<Body>,
    ) -> Option<BoxFuture<'a, Flow>> {
        // `on_request` has refused a request without a token, so this
        // does not happen; were it to, the request is refused, not let on.
        let Some(token) = bearer(req) else {
            return Some(Box::pin(std::future::ready(self.missing(ctx))));
        };
        let key = self.cache.as_ref().map(|_| {
            let mut key = KeyBuilder::default();
            key.part(token.as_bytes());
            key.finish()
        });
        if let (Some(cache), Some(key)) = (&self.cache, &key)
            && let Some(verdict) = cache.get(key, Instant::now())
        {
            return match self.apply(&verdict, ctx, req) {
                Flow::Continue => None,
                refused => Some(Box::pin(std::future::ready(refused))),
            };
        }
        let form = token_form(token);
        Some(Box::pin(self.decide(ctx, req, form, key)))
    }
}

/// The introspection request's body (RFC 7662 §2.1).
fn token_form(token: &str) -> String {
    let mut form = String::with_capacity(token.len() + 48);
    form.push_str("token=");
    form_encode(token, &mut form);
    form.push_str("&token_type_hint=access_token");
    form
}

/// `Basic base64(id:secret)`, each form-encoded first (RFC 6749 §2.3.1).
fn basic_credentials(id: &str, secret: &str) -> String {
    let mut pair = String::with_capacity(id.len() + secret.len() + 1);
    form_encode(id, &mut pair);
    pair.push(':');
    form_encode(secret, &mut pair);
    format!("Basic {}", STANDARD.encode(pair))
}

/// Appends `text` form-urlencoded (the WHATWG `application/x-www-form-urlencoded`
/// serializer): letters, digits and `*-._` as they are, space as `+`,
/// every other byte of its UTF-8 as `%XX`.
fn form_encode(text: &str, out: &mut String) {
    for b in text.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => {
                // Writing to a String cannot fail.
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
}

/// A space-separated list as words.
fn words(text: &str) -> Box<[String]> {
    text.split_whitespace().map(str::to_string).collect()
}

/// Whether `answer`'s `aud` (a string or a list) holds one of `audiences`;
/// true when none are required.
fn audience_ok(answer: &Map<String, Value>, audiences: &[String]) -> bool {
    if audiences.is_empty() {
        return true;
    }
    let Some(aud) = answer.get("aud") else {
        return false;
    };
    audiences.iter().any(|want| match aud {
        Value::String(s) => s == want,
        Value::Array(items) => items.iter().any(|i| i.as_str() == Some(want)),
        _ => false,
    })
}

/// Whether `answer` holds every required value of every required member.
fn grants(answer: &Map<String, Value>, required: &[(String, Box<[String]>)]) -> bool {
    required.iter().all(|(name, values)| {
        answer
            .get(name)
            .is_some_and(|have| values.iter().all(|want| has_member(have, want)))
    })
}

/// A NumericDate member as whole Unix seconds.
fn unix_seconds(v: &Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
}

/// The time since the Unix epoch, to the nanosecond: an `exp` is compared
/// with it, not with the whole second, so a reused answer never outlives
/// its token by a fraction of one.
fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// How long an active answer may be reused at `now` (since the Unix
/// epoch): `ttl`, but never past the token's `exp`; None when that leaves
/// nothing.
fn reuse_for(exp: Option<u64>, now: Duration, ttl: Duration) -> Option<Duration> {
    let left = match exp {
        Some(exp) => ttl.min(Duration::from_secs(exp).saturating_sub(now)),
        None => ttl,
    };
    (!left.is_zero()).then_some(left)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::metrics::Metrics;
    use serde_json::json;

    fn members(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    fn policy(fields: &str) -> Result<Introspection, Vec<(String, String)>> {
        let text = format!("url: 'http://127.0.0.1:9/introspect'\n{fields}");
        let def: IntrospectionDef = serde_saphyr::from_str(&text).unwrap();
        let metrics = Box::leak(Box::new(Metrics::new()));
        let consumers = Box::leak(Box::new(Arc::new(Consumers::empty())));
        Introspection::build(
            &def,
            &crate::policy::tests::env("opaque", metrics, consumers),
        )
    }

    #[test]
    fn forms_are_encoded_as_whatwg_says() {
        let enc = |t: &str| {
            let mut s = String::new();
            form_encode(t, &mut s);
            s
        };
        assert_eq!(enc("abc.DEF-9_*"), "abc.DEF-9_*");
        assert_eq!(enc("a b+c/d=e&f"), "a+b%2Bc%2Fd%3De%26f");
        assert_eq!(enc("é~"), "%C3%A9%7E");
        assert_eq!(
            token_form("2YotnFZFEjr1zCsicMWpAA=="),
            "token=2YotnFZFEjr1zCsicMWpAA%3D%3D&token_type_hint=access_token"
        );
    }

    #[test]
    fn client_credentials_are_form_encoded_before_base64() {
        // RFC 6749 §2.3.1: "s3cret:x" is sent as "s3cret%3Ax".
        assert_eq!(
            basic_credentials("gw", "s3cret"),
            format!("Basic {}", STANDARD.encode("gw:s3cret"))
        );
        assert_eq!(
            basic_credentials("my gw", "s3cret:x"),
            format!("Basic {}", STANDARD.encode("my+gw:s3cret%3Ax"))
        );
    }

    #[test]
    fn audiences_match_a_string_or_a_member_of_a_list() {
        let want = ["orders".to_string(), "billing".to_string()];
        assert!(audience_ok(&members(json!({"aud": "orders"})), &want));
        assert!(audience_ok(
            &members(json!({"aud": ["x", "billing"]})),
            &want
        ));
        assert!(!audience_ok(&members(json!({"aud": "orders-api"})), &want));
        assert!(!audience_ok(&members(json!({"aud": ["x"]})), &want));
        assert!(!audience_ok(&members(json!({})), &want));
        assert!(audience_ok(&members(json!({})), &[]));
    }

    #[test]
    fn every_required_scope_must_be_granted() {
        let required = [("scope".to_string(), words("orders:read orders:write"))];
        let answer = |scope: &str| members(json!({ "scope": scope }));
        assert!(grants(
            &answer("profile orders:write orders:read"),
            &required
        ));
        assert!(!grants(&answer("orders:read"), &required));
        assert!(!grants(&members(json!({})), &required));
        assert!(grants(&members(json!({})), &[]));
    }

    #[test]
    fn an_answer_is_reused_for_the_ttl_but_never_past_exp() {
        let ttl = Duration::from_secs(60);
        let at = |secs: f64| Duration::from_secs_f64(secs);
        assert_eq!(reuse_for(None, at(1_000.0), ttl), Some(ttl));
        assert_eq!(reuse_for(Some(5_000), at(1_000.0), ttl), Some(ttl));
        assert_eq!(
            reuse_for(Some(1_010), at(1_000.0), ttl),
            Some(Duration::from_secs(10))
        );
        // Not a whole second: the fraction already gone counts.
        assert_eq!(
            reuse_for(Some(1_002), at(1_000.75), ttl),
            Some(Duration::from_millis(1_250))
        );
        assert_eq!(reuse_for(Some(1_000), at(1_000.0), ttl), None);
        assert_eq!(reuse_for(Some(900), at(1_000.0), ttl), None);
        assert_eq!(unix_seconds(&json!(12.7)), Some(12));
        assert_eq!(unix_seconds(&json!("12")), None);
    }

    #[test]
    fn judging_reads_active_the_consumer_and_the_grants() {
        let p = policy(
            "client_id: gw\nclient_secret: s\naudiences: [orders]\nrequired_scopes: ['orders:read']\ncache_ttl: 1m\n",
        )
        .unwrap();
        let now = Instant::now();
        assert!(p.judge(members(json!({"active": false})), now).is_none());
        assert!(p.judge(members(json!({"active": "true"})), now).is_none());
        assert!(p.judge(members(json!({"sub": "x"})), now).is_none());
        let good =
            json!({"active": true, "aud": "orders", "scope": "orders:read", "client_id": "svc"});
        let Some((Verdict::Pass(identity), until)) = p.judge(members(good), now) else {
            panic!("refused");
        };
        assert_eq!(identity.consumer_name(), Some("svc"));
        assert_eq!(identity.claims["scope"], "orders:read");
        assert_eq!(until, Some(now + Duration::from_secs(60)));
        let expired = json!({"active": true, "aud": "orders", "scope": "orders:read", "exp": 1});
        assert!(matches!(
            p.judge(members(expired), now),
            Some((Verdict::Pass(_), None))
        ));
        let wrong = json!({"active": true, "aud": "billing", "scope": "orders:read"});
        assert!(matches!(
            p.judge(members(wrong), now),
            Some((Verdict::Forbidden, Some(_)))
        ));
    }

    #[test]
    fn mistakes_name_their_field() {
        let fields = |text: &str| -> Vec<String> {
            policy(text)
                .err()
                .unwrap()
                .into_iter()
                .map(|(f, _)| f)
                .collect()
        };
        assert_eq!(
            fields("client_id: ''\nclient_secret: ''\ntimeout: 0s\nca: ca.pem\n"),
            ["timeout", "ca", "client_id", "client_secret"]
        );
        assert!(policy("client_id: gw\nclient_secret: s\n").is_ok());
    }
}
