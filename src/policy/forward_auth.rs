//! `forward_auth`: every request is first put to an auth service, as
//! Traefik's ForwardAuth and nginx's `auth_request` do. The gateway sends a
//! GET with the client's credentials (`request_headers`, by default
//! `Authorization` and `Cookie`) and where the request was going
//! (`X-Forwarded-Method`, `-Uri`, `-Host`, `-For`, `-Proto`), never its body.
//!
//! A 2xx answer lets the request on, with the answer's `copy_headers` set on
//! it (a client's own copies of those headers are always removed first, so
//! a client cannot send its own `x-user`) and, with `consumer_header`, the
//! consumer the answer names. Any other answer goes back to the client as
//! it came: its status, body, `WWW-Authenticate`, `Location`, `Set-Cookie`
//! and `Content-Type`, so an auth service's login redirect works. An auth
//! service that cannot be reached, or does not answer within `timeout`, is
//! a 503: the request never goes on unchecked.
//!
//! With `cache_ttl`, a 2xx answer is reused for requests carrying the same
//! values of the `cache_key` headers; that assumes the service's verdict
//! depends on those values only (not on the path or the client address).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};

use super::answer_cache::{AnswerCache, CacheKey, KeyBuilder};
use super::auth::Refuser;
use super::consumer::Consumers;
use super::service::{CallError, Service};
use super::{BuildEnv, Flow, Phase, Policy};
use crate::config::model::ForwardAuthDef;
use crate::http::body::{Body, empty, full};
use crate::http::headers::{
    X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, X_REQUEST_ID, canonical_ip,
    forwarded_for, host_of,
};
use crate::policy::context::{Identity, RequestCtx};
use crate::upstream::client::UpstreamBody;

/// `X-Forwarded-Method`: the client request's method (the auth service is
/// always asked with a GET).
static X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
/// `X-Forwarded-Uri`: the client request's path and query.
static X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");

/// The headers of a refusal that reach the client with its status and body.
const PASSED_BACK: [HeaderName; 4] = [
    header::WWW_AUTHENTICATE,
    header::LOCATION,
    header::SET_COOKIE,
    header::CONTENT_TYPE,
];

/// The largest refusal body passed back; a longer one makes the answer
/// unreadable (503), so a misbehaving service cannot make the gateway
/// hold megabytes per request.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Headers that frame a message or describe one connection: never sent to
/// the auth service from the client's request nor copied from its answer.
const NOT_COPIED: [&str; 8] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
];

/// A compiled `forward_auth` policy.
pub struct ForwardAuth {
    service: Service,
    timeout: Duration,
    request_headers: Box<[HeaderName]>,
    copy_headers: Box<[HeaderName]>,
    consumer_header: Option<HeaderName>,
    consumers: Arc<Consumers>,
    cache: Option<Cache>,
    refuser: Refuser,
}

/// 2xx answers by the digest of the `cache_key` headers' values.
struct Cache {
    answers: AnswerCache<Arc<Granted>>,
    ttl: Duration,
    key: Box<[HeaderName]>,
}

/// What a 2xx answer grants, ready to apply to a request.
struct Granted {
    /// The `copy_headers` the answer carried, every value of each.
    headers: Box<[(HeaderName, HeaderValue)]>,
    /// The consumer `consumer_header` named, if it did.
    identity: Option<Arc<Identity>>,
}

/// What the auth service said.
enum Verdict {
    Granted(Arc<Granted>),
    Refused(Response<Body>),
}

impl ForwardAuth {
    /// Checks the definition: the URL and CA, the header names.
    pub fn build(
        def: &ForwardAuthDef,
        env: &BuildEnv,
    ) -> Result<ForwardAuth, Vec<(String, String)>> {
        let mut errors: Vec<(String, String)> = Vec::new();
        let service =
            Service::configured(&def.url, def.ca.as_deref(), def.timeout.0, env, &mut errors);
        let request_headers = header_names("request_headers", &def.request_headers, &mut errors);
        let copy_headers = header_names("copy_headers", &def.copy_headers, &mut errors);
        let cache_key = header_names("cache_key", &def.cache_key, &mut errors);
        let consumer_header = def.consumer_header.as_ref().and_then(|h| {
            HeaderName::from_bytes(h.as_bytes())
                .map_err(|_| {
                    errors.push((
                        "consumer_header".into(),
                        format!("`{h}` is not a valid header name"),
                    ))
                })
                .ok()
        });
        let caching = !def.cache_ttl.0.is_zero() && def.cache_size > 0;
        if caching && def.cache_key.is_empty() {
            errors.push((
                "cache_key".into(),
                "a cache needs at least one `cache_key` header to tell clients apart".into(),
            ));
        }
        let Some(service) = service.filter(|_| errors.is_empty()) else {
            return Err(errors);
        };
        let cache = AnswerCache::new(def.cache_size)
            .filter(|_| caching)
            .map(|answers| Cache {
                answers,
                ttl: def.cache_ttl.0,
                key: cache_key,
            });
        Ok(ForwardAuth {
            service,
            timeout: def.timeout.0,
            request_headers,
            copy_headers,
            consumer_header,
            consumers: env.consumers.clone(),
            cache,
            refuser: Refuser::new(env.name, env.metrics),
        })
    }

    /// The GET that asks the auth service about `req`.
    fn question(&self, ctx: &RequestCtx, req: &Request<Body>) -> Request<Body> {
        let mut ask = self.service.request(empty());
        *ask.method_mut() = Method::GET;
        let headers = ask.headers_mut();
        for name in &self.request_headers {
            for value in req.headers().get_all(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        // Set after the client's headers, so that a client's own copies
        // (had `request_headers` named them) cannot stand in for these.
        if let Ok(method) = HeaderValue::from_str(req.method().as_str()) {
            headers.insert(X_FORWARDED_METHOD.clone(), method);
        }
        let uri = req.uri().path_and_query().map_or("/", |p| p.as_str());
        if let Ok(uri) = HeaderValue::from_str(uri) {
            headers.insert(X_FORWARDED_URI.clone(), uri);
        }
        match host_of(req).map(HeaderValue::from_str) {
            Some(Ok(host)) => {
                headers.insert(X_FORWARDED_HOST.clone(), host);
            }
            _ => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
        headers.insert(
            X_FORWARDED_FOR.clone(),
            forwarded_for(canonical_ip(ctx.client.ip())),
        );
        headers.insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(if ctx.tls { "https" } else { "http" }),
        );
        // The auth service's log line can then be matched to the gateway's.
        headers.insert(X_REQUEST_ID.clone(), ctx.request_id.clone());
        ask
    }

    /// Puts `question` to the auth service, all within `timeout`.
    async fn ask(&self, question: Request<Body>) -> Result<Verdict, String> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let answer = tokio::time::timeout_at(deadline, self.service.call(question))
            .await
            .map_err(|_| CallError::Timeout(self.timeout).to_string())?
            .map_err(|e| e.to_string())?;
        let status = answer.status();
        if status.is_success() {
            let granted = Arc::new(self.grant(answer.headers()));
            // The verdict is in the head; reading the (usually empty) body
            // to its end only lets the connection be used again, so a body
            // that is long, broken or slow costs the connection, not the
            // request.
            let _ = tokio::time::timeout_at(deadline, read_limited(answer.into_body())).await;
            return Ok(Verdict::Granted(granted));
        }
        if status.is_informational() {
            // A 101 cannot be passed to a client that did not ask to switch.
            return Err(format!("the auth service answered {status}"));
        }
        let (parts, body) = answer.into_parts();
        let body = tokio::time::timeout_at(deadline, read_limited(body))
            .await
            .map_err(|_| CallError::Timeout(self.timeout).to_string())?
            .ok_or_else(|| {
                format!("the auth service's {status} answer has no body of at most 64 KiB")
            })?;
        Ok(Verdict::Refused(passed_back(status, &parts.headers, body)))
    }

    /// What a 2xx answer with `headers` grants.
    fn grant(&self, headers: &HeaderMap) -> Granted {
        let copied = self
            .copy_headers
            .iter()
            .flat_map(|name| {
                headers
                    .get_all(name)
                    .iter()
                    .map(move |v| (name.clone(), v.clone()))
            })
            .collect();
        let identity = self
            .consumer_header
            .as_ref()
            .and_then(|h| headers.get(h))
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .map(|name| consumer_identity(&self.consumers, name));
        Granted {
            headers: copied,
            identity,
        }
    }

    /// Sets what `granted` grants on the request.
    fn apply(&self, granted: &Granted, ctx: &mut RequestCtx, req: &mut Request<Body>) {
        let headers = req.headers_mut();
        for (name, value) in &granted.headers {
            headers.append(name.clone(), value.clone());
        }
        if let Some(identity) = &granted.identity {
            ctx.identity = Some(identity.clone());
        }
    }

    /// Asks, applies the verdict, and keeps a grant in the cache.
    async fn decide(
        &self,
        ctx: &mut RequestCtx,
        req: &mut Request<Body>,
        key: Option<CacheKey>,
    ) -> Flow {
        // Built before the wait: the future holds no shared borrow of the
        // request (whose body is not `Sync`) across it.
        let question = self.question(ctx, req);
        match self.ask(question).await {
            Ok(Verdict::Granted(granted)) => {
                if let (Some(cache), Some(key)) = (&self.cache, key) {
                    let now = Instant::now();
                    cache
                        .answers
                        .insert(key, granted.clone(), now + cache.ttl, now);
                }
                self.apply(&granted, ctx, req);
                Flow::Continue
            }
            Ok(Verdict::Refused(resp)) => {
                self.refuser.count(ctx, "denied");
                Flow::Respond(resp)
            }
            Err(e) => {
                tracing::warn!(
                    policy = %self.refuser.policy(),
                    url = %self.service.url(),
                    request_id = ctx.request_id_str(),
                    error = %e,
                    "the auth service could not be asked"
                );
                self.refuser.refuse(
                    ctx,
                    "unavailable",
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the authentication service is not available",
                    None,
                )
            }
        }
    }
}

impl Cache {
    /// The cache key of `req`: the digest of every `cache_key` header's
    /// values. None when the request carries none of them: without a
    /// credential to tell clients apart, the answer is not reused.
    fn key_of(&self, req: &Request<Body>) -> Option<CacheKey> {
        let headers = req.headers();
        if !self.key.iter().any(|name| headers.contains_key(name)) {
            return None;
        }
        let mut key = KeyBuilder::default();
        for name in &self.key {
            let values = headers.get_all(name);
            key.count(values.iter().count());
            for value in values {
                key.part(value.as_bytes());
            }
        }
        Some(key.finish())
    }
}

/// The configured consumer `name`, else an anonymous consumer of that name.
fn consumer_identity(consumers: &Consumers, name: &str) -> Arc<Identity> {
    match consumers.by_name(name) {
        Some(known) => known.clone(),
        None => Arc::new(Identity {
            consumer: Some(Arc::new(consumers.anonymous(name))),
            claims: Arc::default(),
        }),
    }
}

/// The auth service's refusal as the client gets it.
fn passed_back(status: StatusCode, headers: &HeaderMap, body: Bytes) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    let out = resp.headers_mut();
    for name in &PASSED_BACK {
        for value in headers.get_all(name) {
            out.append(name.clone(), value.clone());
        }
    }
    resp
}

/// The whole body, if it is at most [`MAX_ANSWER_BYTES`] and arrives intact.
async fn read_limited(body: UpstreamBody) -> Option<Bytes> {
    Limited::new(body, MAX_ANSWER_BYTES)
        .collect()
        .await
        .ok()
        .map(|b| b.to_bytes())
}

/// Header names from the list at `field`; each mistake goes to `errors`.
fn header_names(
    field: &str,
    names: &[String],
    errors: &mut Vec<(String, String)>,
) -> Box<[HeaderName]> {
    let mut out = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(h) if NOT_COPIED.contains(&h.as_str()) => errors.push((
                format!("{field}.{i}"),
                format!("`{name}` describes a message or a connection; it cannot be passed on"),
            )),
            Ok(h) => out.push(h),
            Err(_) => errors.push((
                format!("{field}.{i}"),
                format!("`{name}` is not a valid header name"),
            )),
        }
    }
    out.into_boxed_slice()
}

impl Policy for ForwardAuth {
    fn phase(&self) -> Phase {
        Phase::Authenticate
    }

    fn on_request(&self, _ctx: &mut RequestCtx, req: &mut Request<Body>) -> Flow {
        // Whatever the auth service says, only it sets these headers.
        for name in &self.copy_headers {
            req.headers_mut().remove(name);
        }
        Flow::Continue
    }

    fn on_request_async<'a>(
        &'a self,
        ctx: &'a mut RequestCtx,
        req: &'a mut Request<Body>,
    ) -> Option<BoxFuture<'a, Flow>> {
        let key = self.cache.as_ref().and_then(|c| c.key_of(req));
        if let (Some(cache), Some(key)) = (&self.cache, &key)
            && let Some(granted) = cache.answers.get(key, Instant::now())
        {
            self.apply(&granted, ctx, req);
            return None;
        }
        Some(Box::pin(self.decide(ctx, req, key)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::units::Dur;
    use crate::observe::metrics::Metrics;
    use std::net::SocketAddr;

    fn def(yaml_fields: &[(&str, &str)]) -> ForwardAuthDef {
        let mut text = String::from("url: 'http://127.0.0.1:9/check'\n");
        for (k, v) in yaml_fields {
            text.push_str(&format!("{k}: {v}\n"));
        }
        serde_saphyr::from_str(&text).unwrap()
    }

    fn build(def: &ForwardAuthDef) -> Result<ForwardAuth, Vec<(String, String)>> {
        let metrics = Box::leak(Box::new(Metrics::new()));
        let consumers = Box::leak(Box::new(Arc::new(Consumers::empty())));
        ForwardAuth::build(def, &crate::policy::tests::env("sso", metrics, consumers))
    }

    fn ctx() -> RequestCtx {
        let client: SocketAddr = "[::ffff:10.1.2.3]:4567".parse().unwrap();
        RequestCtx::new(
            HeaderValue::from_static("req-1"),
            client,
            Arc::from("web"),
            true,
            Instant::now(),
        )
    }

    #[test]
    fn the_defaults_send_the_credentials_and_cache_nothing() {
        let d = def(&[]);
        assert_eq!(d.timeout, Dur(Duration::from_secs(5)));
        assert_eq!(d.request_headers, ["authorization", "cookie"]);
        assert_eq!(d.cache_key, ["authorization", "cookie"]);
        assert_eq!(d.cache_size, 10_000);
        let p = build(&d).unwrap();
        assert!(p.cache.is_none());
        assert!(
            build(&def(&[("cache_ttl", "30s")]))
                .unwrap()
                .cache
                .is_some()
        );
    }

    #[test]
    fn mistakes_name_their_field() {
        let fields = |d: &ForwardAuthDef| -> Vec<String> {
            build(d)
                .err()
                .unwrap()
                .into_iter()
                .map(|(f, _)| f)
                .collect()
        };
        assert_eq!(fields(&def(&[("timeout", "0s")])), ["timeout"]);
        assert_eq!(
            fields(&def(&[
                ("request_headers", "[authorization, 'bad header']"),
                ("copy_headers", "[x-user, content-length]"),
                ("consumer_header", "'x y'"),
            ])),
            ["request_headers.1", "copy_headers.1", "consumer_header"]
        );
        assert_eq!(
            fields(&def(&[("cache_ttl", "1m"), ("cache_key", "[]")])),
            ["cache_key"]
        );
        assert_eq!(fields(&def(&[("ca", "ca.pem")])), ["ca"]);
        let bad: ForwardAuthDef = serde_saphyr::from_str("url: 'ftp://x/'").unwrap();
        assert_eq!(fields(&bad), ["url"]);
    }

    #[test]
    fn the_question_carries_the_credentials_and_where_the_request_was_going() {
        let p = build(&def(&[("request_headers", "[authorization, x-tenant]")])).unwrap();
        let req = Request::builder()
            .method(Method::DELETE)
            .uri("/orders/7?force=1")
            .header("host", "api.example.com")
            .header("authorization", "Bearer abc")
            .header("cookie", "session=1")
            .header("x-tenant", "a")
            .header("x-tenant", "b")
            .header("x-forwarded-method", "GET")
            .body(empty())
            .unwrap();
        let ask = p.question(&ctx(), &req);
        let h = ask.headers();
        assert_eq!(ask.method(), Method::GET);
        assert_eq!(ask.uri(), "/check");
        assert_eq!(h["host"], "127.0.0.1:9");
        assert_eq!(h["authorization"], "Bearer abc");
        assert!(!h.contains_key("cookie"), "not in request_headers");
        assert_eq!(h.get_all("x-tenant").iter().count(), 2);
        assert_eq!(h["x-forwarded-method"], "DELETE");
        assert_eq!(h["x-forwarded-uri"], "/orders/7?force=1");
        assert_eq!(h["x-forwarded-host"], "api.example.com");
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-request-id"], "req-1");
    }

    #[test]
    fn a_refusal_keeps_its_status_body_and_the_headers_a_login_flow_needs() {
        let mut headers = HeaderMap::new();
        headers.insert("location", HeaderValue::from_static("https://sso/login"));
        headers.append("set-cookie", HeaderValue::from_static("a=1"));
        headers.append("set-cookie", HeaderValue::from_static("b=2"));
        headers.insert("x-internal", HeaderValue::from_static("secret"));
        let resp = passed_back(StatusCode::FOUND, &headers, Bytes::from_static(b"go"));
        assert_eq!(resp.status(), StatusCode::FOUND);
        assert_eq!(resp.headers()["location"], "https://sso/login");
        assert_eq!(resp.headers().get_all("set-cookie").iter().count(), 2);
        assert!(!resp.headers().contains_key("x-internal"));
    }

    #[test]
    fn a_grant_copies_every_value_and_names_an_anonymous_consumer() {
        let p = build(&def(&[
            ("copy_headers", "[x-user, x-groups]"),
            ("consumer_header", "x-user"),
        ]))
        .unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-user", HeaderValue::from_static(" alice "));
        headers.append("x-groups", HeaderValue::from_static("a"));
        headers.append("x-groups", HeaderValue::from_static("b"));
        headers.insert("x-other", HeaderValue::from_static("no"));
        let granted = p.grant(&headers);
        assert_eq!(granted.headers.len(), 3);
        let consumer = granted.identity.as_ref().unwrap().consumer.clone().unwrap();
        assert_eq!(&*consumer.name, "alice");
        assert!(!consumer.configured);
        assert!(p.grant(&HeaderMap::new()).identity.is_none());
    }

    #[test]
    fn the_cache_key_needs_a_credential_and_tells_headers_apart() {
        let p = build(&def(&[("cache_ttl", "1m")])).unwrap();
        let cache = p.cache.as_ref().unwrap();
        let req = |pairs: &[(&str, &str)]| {
            let mut r = Request::builder();
            for (k, v) in pairs {
                r = r.header(*k, *v);
            }
            r.body(empty()).unwrap()
        };
        assert!(cache.key_of(&req(&[("x-other", "1")])).is_none());
        let a = cache.key_of(&req(&[("authorization", "x")])).unwrap();
        let c = cache.key_of(&req(&[("cookie", "x")])).unwrap();
        assert_ne!(a, c, "the same value in another header is another key");
        let both = cache.key_of(&req(&[("authorization", "x"), ("cookie", "s=1")]));
        assert_ne!(Some(a), both);
        assert_eq!(Some(a), cache.key_of(&req(&[("authorization", "x")])));
    }
}
