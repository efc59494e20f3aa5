//! `cors`: cross-origin resource sharing, as the Fetch standard describes
//! it, for the routes the policy is on.
//!
//! Request phase filter, so that it runs before authentication: a browser's
//! preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`)
//! carries no credentials, and the policy answers it itself, 204 with the
//! `Access-Control-Allow-*` headers or 403 problem+json without them; the
//! upstream never sees a preflight. For an actual request from an allowed
//! origin, its response phase adds `Access-Control-Allow-Origin` (and
//! `-Credentials`, `Access-Control-Expose-Headers`) to whatever answer the
//! request gets: the upstream's, a 401 or 429 from a later policy, the
//! gateway's 502. The policy is the one source of CORS headers on its
//! routes: the `Access-Control-*` response headers an upstream sends are
//! removed, so a backend's own `Access-Control-Allow-Origin: *` cannot widen
//! what the configuration allows. Every header value but the echoed origin
//! is built once, here.

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use regex::Regex;

use super::{Flow, Phase, Policy, ResponsePhase};
use crate::config::model::CorsDef;
use crate::http::body::{Body, empty};
use crate::http::problem::problem;
use crate::policy::context::RequestCtx;

/// What a `cors` policy's request phase leaves for its response phase.
#[derive(Clone, Debug, Default)]
pub enum CorsMark {
    /// No `Origin`, or an origin not allowed: no CORS headers.
    #[default]
    None,
    /// A preflight the policy answered; that answer is complete as it is.
    Answered,
    /// An allowed actual request: the `Access-Control-Allow-Origin` to send.
    Allowed(HeaderValue),
}

/// The methods `allow_methods` may name (RFC 9110's, and PATCH).
const KNOWN_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT",
];

/// The `allow_methods` a policy that names none has: the CORS-safelisted ones.
const DEFAULT_METHODS: [&str; 3] = ["GET", "HEAD", "POST"];

const ANY: HeaderValue = HeaderValue::from_static("*");
const TRUE: HeaderValue = HeaderValue::from_static("true");
const VARY_ORIGIN: HeaderValue = HeaderValue::from_static("Origin");
const VARY_PREFLIGHT: HeaderValue = HeaderValue::from_static(
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
);

/// The response headers the policy owns (removed from upstream answers).
const OWNED: [HeaderName; 6] = [
    ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_ALLOW_CREDENTIALS,
    ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_HEADERS,
    ACCESS_CONTROL_EXPOSE_HEADERS,
    ACCESS_CONTROL_MAX_AGE,
];

/// One `allow_origins` entry, compiled.
#[derive(Debug)]
enum OriginRule {
    /// `https://app.example.com`, lowercase.
    Exact(Box<str>),
    /// `https://*.example.com:8443`: `https://` and `.example.com:8443`,
    /// lowercase; one or more labels go between.
    Subdomains { scheme: Box<str>, suffix: Box<str> },
    /// `regex:…`, anchored to the whole origin.
    Regex(Regex),
}

impl OriginRule {
    fn matches(&self, origin: &str) -> bool {
        match self {
            OriginRule::Exact(o) => origin.eq_ignore_ascii_case(o),
            OriginRule::Subdomains { scheme, suffix } => {
                let (o, s, x) = (origin.as_bytes(), scheme.as_bytes(), suffix.as_bytes());
                if o.len() <= s.len() + x.len()
                    || !o[..s.len()].eq_ignore_ascii_case(s)
                    || !o[o.len() - x.len()..].eq_ignore_ascii_case(x)
                {
                    return false;
                }
                // Only host labels between: no `@`, `:` or `/` that would
                // make `https://evil.com/.example.com` pass.
                o[s.len()..o.len() - x.len()]
                    .split(|b| *b == b'.')
                    .all(|label| {
                        !label.is_empty()
                            && label
                                .iter()
                                .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
                    })
            }
            OriginRule::Regex(r) => r.is_match(origin),
        }
    }
}

/// A compiled `cors` policy.
#[derive(Debug)]
pub struct Cors {
    any_origin: bool,
    origins: Box<[OriginRule]>,
    methods: Box<[Method]>,
    allow_methods: HeaderValue,
    any_header: bool,
    headers: Box<[HeaderName]>,
    expose_headers: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
    credentials: bool,
}

impl Cors {
    /// Checks and compiles the definition; errors name the field and entry.
    pub fn build(def: &CorsDef) -> Result<Cors, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let credentials = def.allow_credentials;
        if def.allow_origins.is_empty() {
            errors.push((
                "allow_origins".into(),
                "list at least one origin (like https://app.example.com), or `*` for any".into(),
            ));
        }
        let mut any_origin = false;
        let mut origins = Vec::with_capacity(def.allow_origins.len());
        for (i, s) in def.allow_origins.iter().enumerate() {
            let s = s.trim();
            let rule = if s == "*" {
                if credentials {
                    errors.push((
                        format!("allow_origins.{i}"),
                        "`*` cannot go with allow_credentials: true (browsers refuse \
                         `Access-Control-Allow-Origin: *` on a credentialed request); \
                         list the origins instead"
                            .into(),
                    ));
                }
                any_origin = true;
                continue;
            } else if let Some(pattern) = s.strip_prefix("regex:") {
                Regex::new(&format!("^(?:{pattern})$"))
                    .map(OriginRule::Regex)
                    .map_err(|e| format!("`{pattern}` is not a valid regular expression: {e}"))
            } else if s.contains('*') {
                subdomains(s)
            } else {
                check_origin(s).map(|()| OriginRule::Exact(s.to_ascii_lowercase().into()))
            };
            match rule {
                Ok(r) => origins.push(r),
                Err(m) => errors.push((format!("allow_origins.{i}"), m)),
            }
        }

        let listed: Vec<String> = match &def.allow_methods {
            Some(m) => m.clone(),
            None => DEFAULT_METHODS.iter().map(|m| m.to_string()).collect(),
        };
        let mut methods: Vec<Method> = Vec::with_capacity(listed.len());
        for (i, m) in listed.iter().enumerate() {
            let upper = m.trim().to_ascii_uppercase();
            match Method::from_bytes(upper.as_bytes()) {
                Ok(method) if KNOWN_METHODS.contains(&upper.as_str()) => {
                    if !methods.contains(&method) {
                        methods.push(method);
                    }
                }
                _ => errors.push((
                    format!("allow_methods.{i}"),
                    format!(
                        "`{m}` is not an HTTP method (use {})",
                        KNOWN_METHODS.join(", ")
                    ),
                )),
            }
        }
        if def.allow_methods.as_ref().is_some_and(|m| m.is_empty()) {
            errors.push((
                "allow_methods".into(),
                "list at least one method, or leave the key out for GET, HEAD, POST".into(),
            ));
        }
        let joined: Vec<&str> = methods.iter().map(Method::as_str).collect();
        // Known method names are ASCII tokens, so this never falls back.
        let allow_methods = HeaderValue::from_str(&joined.join(", ")).unwrap_or(ANY);

        let (any_header, headers) = header_list(
            "allow_headers",
            &def.allow_headers,
            credentials,
            &mut errors,
        );
        let (any_exposed, exposed) = header_list(
            "expose_headers",
            &def.expose_headers,
            credentials,
            &mut errors,
        );
        let expose_headers = if any_exposed {
            Some(ANY)
        } else if exposed.is_empty() {
            None
        } else {
            let names: Vec<&str> = exposed.iter().map(HeaderName::as_str).collect();
            HeaderValue::from_str(&names.join(", ")).ok()
        };

        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Cors {
            any_origin,
            origins: origins.into(),
            methods: methods.into(),
            allow_methods,
            any_header,
            headers: headers.into(),
            expose_headers,
            max_age: def.max_age.map(|d| HeaderValue::from(d.0.as_secs())),
            credentials,
        })
    }

    /// The `Access-Control-Allow-Origin` for a request from `origin`, if
    /// that origin is allowed: `*` when any is (never with credentials:
    /// `build` refuses that), else the origin itself.
    fn allow_origin(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        if self.any_origin {
            return Some(ANY);
        }
        let text = origin.to_str().ok()?;
        self.origins
            .iter()
            .any(|r| r.matches(text))
            .then(|| origin.clone())
    }

    /// Whether a preflight may ask for `method` (compared exactly: the
    /// Fetch standard upper-cases only the methods it knows, so `patch`
    /// is not `PATCH`).
    fn allows_method(&self, method: &HeaderValue) -> bool {
        self.methods
            .iter()
            .any(|m| m.as_str().as_bytes() == method.as_bytes())
    }

    /// Whether every header name a preflight's
    /// `Access-Control-Request-Headers` lines ask for is allowed.
    fn allows_headers(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all(ACCESS_CONTROL_REQUEST_HEADERS)
            .iter()
            .all(|line| match line.to_str() {
                Ok(text) => text
                    .split(',')
                    .map(|n| n.trim_matches([' ', '\t']))
                    .filter(|n| !n.is_empty())
                    .all(|n| {
                        self.any_header
                            || self
                                .headers
                                .iter()
                                .any(|h| h.as_str().eq_ignore_ascii_case(n))
                    }),
                Err(_) => false,
            })
    }

    /// The answer to a preflight from an origin whose
    /// `Access-Control-Allow-Origin` would be `allow` (`None`: refused).
    fn preflight(
        &self,
        ctx: &RequestCtx,
        allow: Option<HeaderValue>,
        method: &HeaderValue,
        headers: &HeaderMap,
    ) -> Response<Body> {
        let refuse = |detail| problem(StatusCode::FORBIDDEN, detail, ctx.request_id_str());
        let Some(allow) = allow else {
            return refuse("this origin may not call this route");
        };
        if !self.allows_method(method) {
            return refuse("the method the preflight asks for is not allowed on this route");
        }
        if !self.allows_headers(headers) {
            return refuse("a header the preflight asks for is not allowed on this route");
        }
        let mut resp = Response::new(empty());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        let out = resp.headers_mut();
        out.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        out.insert(ACCESS_CONTROL_ALLOW_METHODS, self.allow_methods.clone());
        // Every name asked for is allowed, so the lines asked with are the answer.
        for line in headers.get_all(ACCESS_CONTROL_REQUEST_HEADERS) {
            if !line.is_empty() {
                out.append(ACCESS_CONTROL_ALLOW_HEADERS, line.clone());
            }
        }
        if let Some(age) = &self.max_age {
            out.insert(ACCESS_CONTROL_MAX_AGE, age.clone());
        }
        if self.credentials {
            out.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE);
        }
        out.insert(VARY, VARY_PREFLIGHT);
        resp
    }
}

impl Policy for Cors {
    fn phase(&self) -> Phase {
        Phase::Filter
    }

    fn on_request(&self, ctx: &mut RequestCtx, req: &mut Request<Body>) -> Flow {
        let headers = req.headers();
        let Some(origin) = headers.get(ORIGIN) else {
            return Flow::Continue;
        };
        let allow = self.allow_origin(origin);
        // An OPTIONS without Access-Control-Request-Method is an ordinary
        // request, for the route to answer.
        if req.method() == Method::OPTIONS
            && let Some(method) = headers.get(ACCESS_CONTROL_REQUEST_METHOD)
        {
            ctx.cors = CorsMark::Answered;
            return Flow::Respond(self.preflight(ctx, allow, method, headers));
        }
        if let Some(allow) = allow {
            ctx.cors = CorsMark::Allowed(allow);
        }
        Flow::Continue
    }

    fn response_phase(&self) -> Option<ResponsePhase> {
        Some(ResponsePhase::ResponseTransform)
    }

    fn on_response(&self, ctx: &mut RequestCtx, resp: &mut Response<Body>) {
        let mark = std::mem::take(&mut ctx.cors);
        if let CorsMark::Answered = mark {
            return;
        }
        let headers = resp.headers_mut();
        for name in OWNED {
            headers.remove(name);
        }
        // The answer depends on Origin unless every origin gets `*`: say
        // so even when no CORS header went out, so that a cache does not
        // hand one origin's answer to another.
        if !self.any_origin {
            vary_origin(headers);
        }
        if let CorsMark::Allowed(allow) = mark {
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allow);
            if self.credentials {
                headers.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE);
            }
            if let Some(expose) = &self.expose_headers {
                headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
            }
        }
    }
}

/// Adds `Origin` to `Vary`, keeping the values there (a line of its own,
/// which means the same as a longer list), unless it is there or `*` is.
fn vary_origin(headers: &mut HeaderMap) {
    let present = headers.get_all(VARY).iter().any(|line| {
        line.to_str().is_ok_and(|text| {
            text.split(',')
                .map(str::trim)
                .any(|v| v == "*" || v.eq_ignore_ascii_case("origin"))
        })
    });
    if !present {
        headers.append(VARY, VARY_ORIGIN);
    }
}

/// Checks that `s` is an origin as browsers send it: `scheme://host` with
/// an optional `:port`, nothing after.
fn check_origin(s: &str) -> Result<(), String> {
    let shape = || {
        format!("`{s}` is not an origin: write scheme://host[:port], like https://app.example.com")
    };
    let Some((scheme, rest)) = s.split_once("://") else {
        return Err(shape());
    };
    let scheme_ok = scheme
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !scheme_ok {
        return Err(shape());
    }
    if rest.contains(['/', '?', '#']) {
        return Err(format!(
            "`{s}` has a path: an origin is scheme://host[:port] only, with no `/` after it"
        ));
    }
    // `p.parse::<u16>()` alone would take `+80`.
    let port_ok = |p: Option<&str>| {
        p.is_none_or(|p| p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok())
    };
    let ok = match rest.strip_prefix('[') {
        // An IPv6 literal: `[::1]` or `[::1]:8080`.
        Some(v6) => match v6.split_once(']') {
            Some((addr, after)) => {
                !addr.is_empty()
                    && addr
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
                    && (after.is_empty()
                        || after.strip_prefix(':').is_some_and(|p| port_ok(Some(p))))
            }
            None => false,
        },
        None => {
            let (host, port) = match rest.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            };
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
                && port_ok(port)
        }
    };
    if ok { Ok(()) } else { Err(shape()) }
}

/// Compiles `scheme://*.domain[:port]`.
fn subdomains(s: &str) -> Result<OriginRule, String> {
    let shape = || {
        format!(
            "`{s}` is not a subdomain pattern: `*` goes only at the start of the host, \
             as in https://*.example.com"
        )
    };
    let (scheme, rest) = s.split_once("://").ok_or_else(shape)?;
    let domain = rest.strip_prefix("*.").ok_or_else(shape)?;
    if domain.contains('*') {
        return Err(shape());
    }
    check_origin(&format!("{scheme}://{domain}"))?;
    Ok(OriginRule::Subdomains {
        scheme: format!("{scheme}://").to_ascii_lowercase().into(),
        suffix: format!(".{domain}").to_ascii_lowercase().into(),
    })
}

/// Compiles a list of header names (`field` names it in errors); `*` is
/// allowed only without credentials. Returns whether `*` was listed.
fn header_list(
    field: &str,
    list: &[String],
    credentials: bool,
    errors: &mut Vec<(String, String)>,
) -> (bool, Vec<HeaderName>) {
    let mut any = false;
    let mut names = Vec::with_capacity(list.len());
    for (i, s) in list.iter().enumerate() {
        let s = s.trim();
        if s == "*" {
            if credentials {
                errors.push((
                    format!("{field}.{i}"),
                    "`*` cannot go with allow_credentials: true (browsers read it as a \
                     header named `*` then); list the headers instead"
                        .into(),
                ));
            }
            any = true;
            continue;
        }
        match HeaderName::from_bytes(s.as_bytes()) {
            Ok(name) => {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
            Err(_) => errors.push((
                format!("{field}.{i}"),
                format!("`{s}` is not a header name"),
            )),
        }
    }
    (any, names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::units::Dur;
    use std::time::{Duration, Instant};

    fn def(origins: &[&str]) -> CorsDef {
        CorsDef {
            allow_origins: origins.iter().map(|s| s.to_string()).collect(),
            ..CorsDef::default()
        }
    }

    fn cors(d: CorsDef) -> Cors {
        Cors::build(&d).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn errors(d: CorsDef) -> Vec<(String, String)> {
        Cors::build(&d).err().unwrap_or_default()
    }

    fn ctx() -> RequestCtx {
        RequestCtx::new(
            HeaderValue::from_static("id"),
            "127.0.0.1:1".parse().unwrap(),
            "web".into(),
            false,
            Instant::now(),
        )
    }

    fn request(method: &str, headers: &[(&str, &str)]) -> Request<Body> {
        let mut b = Request::builder().method(method).uri("/");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(empty()).unwrap()
    }

    #[test]
    fn origins_match_exactly_by_subdomain_by_regex_or_any() {
        let p = cors(def(&[
            "https://app.example.com",
            "https://*.example.net",
            "http://*.local.test:8080",
            "regex:https://[a-z]+\\.example\\.org",
        ]));
        let table = [
            ("https://app.example.com", true),
            ("HTTPS://APP.EXAMPLE.COM", true),
            ("http://app.example.com", false),
            ("https://app.example.com:8443", false),
            ("https://app.example.com.evil.com", false),
            ("https://other.example.com", false),
            ("https://a.example.net", true),
            ("https://a.b.c.example.net", true),
            ("https://example.net", false),
            ("https://.example.net", false),
            ("https://a..example.net", false),
            ("http://a.example.net", false),
            ("https://a.example.net:8443", false),
            ("https://evil.com/.example.net", false),
            ("https://u@a.example.net", false),
            ("https://evilexample.net", false),
            ("http://x.local.test:8080", true),
            ("http://x.local.test", false),
            ("http://x.local.test:8081", false),
            ("https://api.example.org", true),
            ("https://api.example.org.evil.com", false),
            ("https://api1.example.org", false),
            ("null", false),
        ];
        for (origin, allowed) in table {
            let got = p.allow_origin(&HeaderValue::from_static(origin));
            assert_eq!(got.is_some(), allowed, "{origin}");
            if let Some(v) = got {
                assert_eq!(v, origin, "the origin is echoed as sent");
            }
        }
        let any = cors(def(&["*"]));
        for origin in ["https://anything.example", "null", "http://localhost:3000"] {
            assert_eq!(
                any.allow_origin(&HeaderValue::from_static(origin)),
                Some(ANY)
            );
        }
    }

    #[test]
    fn bad_origins_methods_headers_and_credentials_with_any_are_refused() {
        let e = errors(CorsDef {
            allow_origins: vec![
                "*".into(),
                "https://app.example.com/".into(),
                "app.example.com".into(),
                "https://a.*.example.com".into(),
                "regex:https://(".into(),
                "https://app.example.com:99999".into(),
            ],
            allow_methods: Some(vec!["get".into(), "FETCH".into()]),
            allow_headers: vec!["x-ok".into(), "bad header".into(), "*".into()],
            expose_headers: vec!["*".into()],
            allow_credentials: true,
            ..CorsDef::default()
        });
        let fields: Vec<&str> = e.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "allow_origins.0",
                "allow_origins.1",
                "allow_origins.2",
                "allow_origins.3",
                "allow_origins.4",
                "allow_origins.5",
                "allow_methods.1",
                "allow_headers.1",
                "allow_headers.2",
                "expose_headers.0",
            ],
            "{e:?}"
        );
        assert!(e[0].1.contains("allow_credentials"), "{e:?}");
        assert!(e[1].1.contains("path"), "{e:?}");
        assert!(e[4].1.contains("regular expression"), "{e:?}");
        assert!(errors(def(&[]))[0].1.contains("at least one origin"));
        let no_methods = errors(CorsDef {
            allow_methods: Some(vec![]),
            ..def(&["*"])
        });
        assert_eq!(no_methods[0].0, "allow_methods");
        // `*` is fine without credentials, as are IPv6 and port origins.
        cors(CorsDef {
            allow_headers: vec!["*".into()],
            expose_headers: vec!["*".into()],
            ..def(&["*", "http://[::1]:8080", "http://localhost:3000"])
        });
    }

    #[test]
    fn an_allowed_preflight_is_answered_with_every_header() {
        let p = cors(CorsDef {
            allow_methods: Some(vec!["get".into(), "put".into()]),
            allow_headers: vec!["X-Trace".into(), "content-type".into()],
            max_age: Some(Dur(Duration::from_secs(600))),
            allow_credentials: true,
            ..def(&["https://app.example.com"])
        });
        let mut c = ctx();
        let mut req = request(
            "OPTIONS",
            &[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "PUT"),
                ("access-control-request-headers", "content-type,x-trace"),
            ],
        );
        let Flow::Respond(mut resp) = p.on_request(&mut c, &mut req) else {
            panic!("a preflight is answered by the policy");
        };
        assert_eq!(resp.status(), 204);
        let h = resp.headers();
        assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
        assert_eq!(h["access-control-allow-methods"], "GET, PUT");
        assert_eq!(h["access-control-allow-headers"], "content-type,x-trace");
        assert_eq!(h["access-control-max-age"], "600");
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert_eq!(h["vary"], VARY_PREFLIGHT);
        // Its own response phase leaves the answer as it is.
        p.on_response(&mut c, &mut resp);
        assert_eq!(resp.headers().get_all("vary").iter().count(), 1);
        assert!(
            resp.headers()
                .get("access-control-expose-headers")
                .is_none()
        );
    }

    #[test]
    fn a_preflight_refused_by_origin_method_or_header_gets_403_without_cors_headers() {
        let p = cors(CorsDef {
            allow_headers: vec!["x-trace".into()],
            ..def(&["https://app.example.com"])
        });
        let cases: [&[(&str, &str)]; 4] = [
            &[
                ("origin", "https://evil.example"),
                ("access-control-request-method", "GET"),
            ],
            &[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "DELETE"),
            ],
            &[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "get"),
            ],
            &[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "x-trace, authorization"),
            ],
        ];
        for headers in cases {
            let Flow::Respond(resp) = p.on_request(&mut ctx(), &mut request("OPTIONS", headers))
            else {
                panic!("{headers:?}: answered");
            };
            assert_eq!(resp.status(), 403, "{headers:?}");
            assert!(
                !resp
                    .headers()
                    .keys()
                    .any(|k| k.as_str().starts_with("access-control-")),
                "{headers:?}"
            );
        }
    }

    #[test]
    fn actual_requests_get_headers_and_vary_only_when_allowed() {
        let p = cors(CorsDef {
            expose_headers: vec!["X-Total".into(), "x-page".into()],
            allow_credentials: true,
            ..def(&["https://app.example.com"])
        });
        let answer = |headers: &[(&str, &str)], method: &str, upstream: &[(&str, &str)]| {
            let mut c = ctx();
            let Flow::Continue = p.on_request(&mut c, &mut request(method, headers)) else {
                panic!("{headers:?}: not a preflight");
            };
            let mut resp = Response::new(empty());
            for (k, v) in upstream {
                resp.headers_mut().append(
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            p.on_response(&mut c, &mut resp);
            resp.headers().clone()
        };
        let h = answer(
            &[("origin", "https://app.example.com")],
            "GET",
            &[
                ("vary", "Accept-Encoding"),
                ("access-control-allow-origin", "*"),
            ],
        );
        assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert_eq!(h["access-control-expose-headers"], "x-total, x-page");
        let vary: Vec<_> = h.get_all("vary").iter().collect();
        assert_eq!(vary, ["Accept-Encoding", "Origin"]);

        // Already varying on Origin: not twice.
        let h = answer(
            &[("origin", "https://app.example.com")],
            "GET",
            &[("vary", "accept, origin")],
        );
        assert_eq!(h.get_all("vary").iter().count(), 1);

        // No Origin, or another: no CORS headers (the upstream's removed), but Vary.
        for headers in [&[][..], &[("origin", "https://evil.example")][..]] {
            let h = answer(headers, "GET", &[("access-control-allow-origin", "*")]);
            assert!(
                !h.keys().any(|k| k.as_str().starts_with("access-control-")),
                "{headers:?}"
            );
            assert_eq!(h["vary"], "Origin");
        }

        // An OPTIONS without Access-Control-Request-Method is an actual request.
        let h = answer(&[("origin", "https://app.example.com")], "OPTIONS", &[]);
        assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    }

    #[test]
    fn any_origin_sends_a_star_and_no_vary() {
        let p = cors(def(&["*"]));
        let mut c = ctx();
        let mut req = request("GET", &[("origin", "https://x.example")]);
        let Flow::Continue = p.on_request(&mut c, &mut req) else {
            panic!("not a preflight");
        };
        let mut resp = Response::new(empty());
        p.on_response(&mut c, &mut resp);
        assert_eq!(resp.headers()["access-control-allow-origin"], "*");
        assert!(
            resp.headers()
                .get("access-control-allow-credentials")
                .is_none()
        );
        assert!(resp.headers().get("vary").is_none());
    }
}
