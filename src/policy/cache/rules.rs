//! The rules of RFC 9111 (HTTP caching) for a shared cache, and RFC 5861's
//! stale-while-revalidate and stale-if-error: what the directives of a
//! request and a response say, whether a response may be stored, how long
//! it stays fresh and how old it is. Pure functions over headers and
//! times, so every rule has a table test against the RFC's words.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, Method, StatusCode, header};

/// Delta-seconds past this are taken as this (RFC 9111 §1.2.2: 2^31).
const DELTA_SECONDS_MAX: u64 = 1 << 31;

/// `Cache-Control` directives of a request (§5.2.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestDirectives {
    /// `max-age`: the client takes nothing older.
    pub max_age: Option<u64>,
    /// `max-stale`: the client takes an answer stale by this much;
    /// `u64::MAX` when it gave no value (any staleness).
    pub max_stale: Option<u64>,
    /// `min-fresh`: the answer must stay fresh this much longer.
    pub min_fresh: Option<u64>,
    /// `no-cache` (or `Pragma: no-cache` without `Cache-Control`): never
    /// answer from the cache without asking the origin.
    pub no_cache: bool,
    /// `no-store`: neither answer from the cache nor store the answer.
    pub no_store: bool,
    /// `only-if-cached`: answer from the cache or 504.
    pub only_if_cached: bool,
}

impl RequestDirectives {
    /// The directives of a request's headers.
    pub fn parse(headers: &HeaderMap) -> RequestDirectives {
        let mut d = RequestDirectives::default();
        let mut any = false;
        for (name, value) in directives(headers) {
            any = true;
            match name.as_str() {
                "max-age" => set_once(&mut d.max_age, delta_or_zero(value)),
                "max-stale" => set_once(
                    &mut d.max_stale,
                    value.map_or(u64::MAX, |v| delta(v).unwrap_or(0)),
                ),
                "min-fresh" => set_once(&mut d.min_fresh, delta_or_zero(value)),
                "no-cache" => d.no_cache = true,
                "no-store" => d.no_store = true,
                "only-if-cached" => d.only_if_cached = true,
                _ => {}
            }
        }
        // §5.4: Pragma stands in only when there is no Cache-Control.
        if !any
            && headers
                .get_all(header::PRAGMA)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|p| p.trim().eq_ignore_ascii_case("no-cache"))
        {
            d.no_cache = true;
        }
        d
    }
}

/// `Cache-Control` directives of a response (§5.2.2, RFC 5861 §3 and §4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResponseDirectives {
    /// `max-age`.
    pub max_age: Option<u64>,
    /// `s-maxage`: wins over `max-age` in a shared cache.
    pub s_maxage: Option<u64>,
    /// `no-cache` (qualified or not: a shared cache revalidates every use).
    pub no_cache: bool,
    /// `no-store`.
    pub no_store: bool,
    /// `private` (qualified or not: this cache is shared, so never stored).
    pub private: bool,
    /// `public`.
    pub public: bool,
    /// `must-revalidate`: never served stale.
    pub must_revalidate: bool,
    /// `proxy-revalidate`: never served stale by a shared cache.
    pub proxy_revalidate: bool,
    /// `no-transform`.
    pub no_transform: bool,
    /// `stale-while-revalidate=N`.
    pub stale_while_revalidate: Option<u64>,
    /// `stale-if-error=N`.
    pub stale_if_error: Option<u64>,
}

impl ResponseDirectives {
    /// The directives of a response's headers.
    pub fn parse(headers: &HeaderMap) -> ResponseDirectives {
        let mut d = ResponseDirectives::default();
        for (name, value) in directives(headers) {
            match name.as_str() {
                "max-age" => set_once(&mut d.max_age, delta_or_zero(value)),
                "s-maxage" => set_once(&mut d.s_maxage, delta_or_zero(value)),
                "no-cache" => d.no_cache = true,
                "no-store" => d.no_store = true,
                "private" => d.private = true,
                "public" => d.public = true,
                "must-revalidate" => d.must_revalidate = true,
                "proxy-revalidate" => d.proxy_revalidate = true,
                "no-transform" => d.no_transform = true,
                "stale-while-revalidate" => {
                    if let Some(v) = value.and_then(delta) {
                        set_once(&mut d.stale_while_revalidate, v);
                    }
                }
                "stale-if-error" => {
                    if let Some(v) = value.and_then(delta) {
                        set_once(&mut d.stale_if_error, v);
                    }
                }
                _ => {}
            }
        }
        d
    }

    /// Whether the answer may never be served stale (§4.2.4: must-revalidate,
    /// and for a shared cache proxy-revalidate and s-maxage).
    pub fn never_stale(&self) -> bool {
        self.must_revalidate || self.proxy_revalidate || self.s_maxage.is_some()
    }
}

/// Keeps the first occurrence of a directive (§4.2.1 allows the first).
fn set_once(slot: &mut Option<u64>, value: u64) {
    if slot.is_none() {
        *slot = Some(value);
    }
}

/// A delta-seconds value; malformed values make the answer stale (§1.2.2:
/// "a cache ... considers it invalid"; §4.2.1 for max-age), so they read as 0.
fn delta_or_zero(value: Option<&str>) -> u64 {
    value.and_then(delta).unwrap_or(0)
}

/// Parses delta-seconds, saturating at 2^31.
fn delta(value: &str) -> Option<u64> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(value.bytes().fold(0u64, |n, d| {
        n.saturating_mul(10)
            .saturating_add(u64::from(d - b'0'))
            .min(DELTA_SECONDS_MAX)
    }))
}

/// Every `name[=value]` of the `Cache-Control` lines, names lowercased and
/// quoted values unquoted. Commas inside quotes (`no-cache="a, b"`) do not
/// split.
fn directives(headers: &HeaderMap) -> impl Iterator<Item = (Name, Option<&str>)> {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .flat_map(|v| split_list(v.as_bytes()))
        // Item by item: a byte outside ASCII (obs-text) spoils only the
        // directive it sits in, not the others on its line.
        .filter_map(|item| std::str::from_utf8(item).ok().filter(|i| i.is_ascii()))
        .filter_map(|item| {
            let (name, value) = match item.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                None => (item.trim(), None),
            };
            (!name.is_empty()).then(|| (Name::lowercase(name), value))
        })
}

/// A directive name lowercased on the stack: the requests' own
/// Cache-Control is read on every request, without allocating.
struct Name {
    bytes: [u8; 24],
    len: usize,
}

impl Name {
    /// Longer names than any known directive read as "" (unknown).
    fn lowercase(name: &str) -> Name {
        let mut bytes = [0; 24];
        let len = if name.len() <= bytes.len() {
            bytes[..name.len()].copy_from_slice(name.as_bytes());
            bytes[..name.len()].make_ascii_lowercase();
            name.len()
        } else {
            0
        };
        Name { bytes, len }
    }

    fn as_str(&self) -> &str {
        // Lowercasing ASCII keeps UTF-8 valid; a name cut short never is.
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or("")
    }
}

/// Splits a comma-separated list, leaving commas inside quoted strings.
fn split_list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = value;
    std::iter::from_fn(move || {
        loop {
            if rest.is_empty() {
                return None;
            }
            let mut quoted = false;
            let mut end = rest.len();
            for (i, b) in rest.iter().enumerate() {
                match b {
                    b'"' => quoted = !quoted,
                    b',' if !quoted => {
                        end = i;
                        break;
                    }
                    _ => {}
                }
            }
            let item = rest[..end].trim_ascii();
            rest = rest.get(end + 1..).unwrap_or_default();
            if !item.is_empty() {
                return Some(item);
            }
        }
    })
}

/// Statuses a cache may store without explicit freshness (RFC 9110 §15.1,
/// "heuristically cacheable"). 206 is left out: this cache stores whole
/// answers only.
pub fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Why an answer was not stored (the `detail` of Cache-Status, and a
/// reason an operator can read).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotStored {
    /// The method is not one the cache stores.
    Method,
    /// A status without explicit freshness that is not heuristically
    /// cacheable (or partial content, or an interim answer).
    Status,
    /// `no-store` in the request or the answer.
    NoStore,
    /// `private` in the answer.
    Private,
    /// The request had Authorization and the answer did not allow sharing
    /// it (public, s-maxage, must-revalidate).
    Authorization,
    /// The answer sets a cookie and the policy keeps such answers out.
    SetCookie,
    /// `Vary: *`: no request could ever match it.
    VaryStar,
    /// Neither fresh for any time nor revalidatable.
    NoFreshness,
    /// Bigger than `max_entry_size`.
    TooBig,
}

impl NotStored {
    /// The reason as Cache-Status and logs name it.
    pub fn as_str(self) -> &'static str {
        match self {
            NotStored::Method => "method",
            NotStored::Status => "status",
            NotStored::NoStore => "no-store",
            NotStored::Private => "private",
            NotStored::Authorization => "authorization",
            NotStored::SetCookie => "set-cookie",
            NotStored::VaryStar => "vary-star",
            NotStored::NoFreshness => "no-freshness",
            NotStored::TooBig => "too-big",
        }
    }
}

/// What a policy allows beyond the RFC's defaults.
#[derive(Clone, Copy, Debug)]
pub struct StoreRules {
    /// Keep answers that set cookies (the cookie itself is never stored).
    pub set_cookie: bool,
    /// Methods besides GET and HEAD whose answers are stored (POST when
    /// the policy lists it).
    pub post: bool,
}

/// §3: whether an answer to this request may be stored, and if not, why.
pub fn storable(
    method: &Method,
    req: &RequestDirectives,
    authorized: bool,
    status: StatusCode,
    headers: &HeaderMap,
    resp: &ResponseDirectives,
    rules: StoreRules,
) -> Result<(), NotStored> {
    if !(method == Method::GET || method == Method::HEAD || (rules.post && method == Method::POST))
    {
        return Err(NotStored::Method);
    }
    if status.is_informational()
        || status == StatusCode::PARTIAL_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Err(NotStored::Status);
    }
    if req.no_store || resp.no_store {
        return Err(NotStored::NoStore);
    }
    if resp.private {
        return Err(NotStored::Private);
    }
    // §3.5
    if authorized && !(resp.public || resp.s_maxage.is_some() || resp.must_revalidate) {
        return Err(NotStored::Authorization);
    }
    if !rules.set_cookie && headers.contains_key(header::SET_COOKIE) {
        return Err(NotStored::SetCookie);
    }
    if vary_names(headers).any(|n| n == "*") {
        return Err(NotStored::VaryStar);
    }
    let explicit = resp.public
        || resp.max_age.is_some()
        || resp.s_maxage.is_some()
        || headers.contains_key(header::EXPIRES);
    if !explicit && !heuristically_cacheable(status) {
        return Err(NotStored::Status);
    }
    // A POST answer is reusable only with explicit freshness (RFC 9110 §9.3.3).
    if method == Method::POST && !(resp.max_age.is_some() || resp.s_maxage.is_some()) {
        return Err(NotStored::Status);
    }
    Ok(())
}

/// The lowercased field names of an answer's `Vary`.
pub fn vary_names(headers: &HeaderMap) -> impl Iterator<Item = String> + '_ {
    headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
}

/// How a policy bounds heuristic freshness (§4.2.2).
#[derive(Clone, Copy, Debug)]
pub struct Heuristic {
    /// The cap on 10% of the Last-Modified age (0 turns heuristics off).
    pub max: Duration,
    /// Freshness for a heuristically cacheable answer with no explicit
    /// freshness and no Last-Modified (0: none).
    pub default_ttl: Duration,
}

/// §4.2.1: how long the answer is fresh from its generation.
pub fn freshness_lifetime(
    headers: &HeaderMap,
    resp: &ResponseDirectives,
    status: StatusCode,
    response_time: SystemTime,
    heuristic: Heuristic,
) -> Duration {
    if let Some(s) = resp.s_maxage.or(resp.max_age) {
        return Duration::from_secs(s);
    }
    let date = date_header(headers, header::DATE).unwrap_or(response_time);
    if let Some(expires) = headers.get(header::EXPIRES) {
        // An invalid Expires (often "0") means already expired (§5.3).
        return expires
            .to_str()
            .ok()
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .and_then(|e| e.duration_since(date).ok())
            .unwrap_or(Duration::ZERO);
    }
    if !(heuristically_cacheable(status) || resp.public) {
        return Duration::ZERO;
    }
    match date_header(headers, header::LAST_MODIFIED) {
        Some(modified) => date
            .duration_since(modified)
            .map(|age| (age / 10).min(heuristic.max))
            .unwrap_or(Duration::ZERO),
        None => heuristic.default_ttl,
    }
}

/// §4.2.3: the answer's age when it arrived (`corrected_initial_age`),
/// from its `Age` and `Date` and when the request left and the answer came.
pub fn initial_age(
    headers: &HeaderMap,
    request_time: SystemTime,
    response_time: SystemTime,
) -> Duration {
    let age_value = headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| delta(v.trim()))
        .map_or(Duration::ZERO, Duration::from_secs);
    let apparent_age = date_header(headers, header::DATE)
        .and_then(|date| response_time.duration_since(date).ok())
        .unwrap_or(Duration::ZERO);
    let response_delay = response_time
        .duration_since(request_time)
        .unwrap_or(Duration::ZERO);
    apparent_age.max(age_value + response_delay)
}

/// An HTTP-date header's time.
pub fn date_header(headers: &HeaderMap, name: HeaderName) -> Option<SystemTime> {
    httpdate::parse_http_date(headers.get(name)?.to_str().ok()?).ok()
}

/// How a stored answer stands against one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usable {
    /// Serve it as it is.
    Fresh,
    /// Stale, but the client or the answer allows serving it stale now
    /// (`max-stale`, `stale-while-revalidate`): the `bool` says whether to
    /// refresh it in the background.
    Stale {
        /// Refresh in the background (stale-while-revalidate).
        refresh: bool,
    },
    /// Ask the origin first (conditionally, when there is a validator).
    Revalidate,
}

/// A stored answer's state as [`usable`] needs it.
#[derive(Clone, Copy, Debug)]
pub struct Freshness {
    /// Its age now.
    pub age: Duration,
    /// How long it is fresh.
    pub lifetime: Duration,
    /// Whether it may never be served stale.
    pub never_stale: bool,
    /// `no-cache` on the answer: revalidate every use.
    pub no_cache: bool,
    /// How long past its freshness it may be served while it is refreshed.
    pub stale_while_revalidate: Duration,
    /// Whether that window is the answer's own `stale-while-revalidate`
    /// (an explicit permission, which holds even for an answer that is
    /// otherwise never served stale, as CDNs read `s-maxage=60,
    /// stale-while-revalidate=30`), not the policy's default.
    pub swr_from_answer: bool,
}

/// §4.2 and §5.2.1: whether a stored answer may answer this request.
pub fn usable(req: &RequestDirectives, f: &Freshness) -> Usable {
    if req.no_cache || f.no_cache {
        return Usable::Revalidate;
    }
    if let Some(max_age) = req.max_age
        && f.age > Duration::from_secs(max_age)
    {
        return Usable::Revalidate;
    }
    let min_fresh = Duration::from_secs(req.min_fresh.unwrap_or(0));
    if f.age + min_fresh < f.lifetime {
        return Usable::Fresh;
    }
    let staleness = (f.age + min_fresh).saturating_sub(f.lifetime);
    if f.never_stale {
        if f.swr_from_answer && staleness < f.stale_while_revalidate {
            return Usable::Stale { refresh: true };
        }
        return Usable::Revalidate;
    }
    if let Some(max_stale) = req.max_stale
        && (max_stale == u64::MAX || staleness <= Duration::from_secs(max_stale))
    {
        return Usable::Stale { refresh: false };
    }
    if staleness < f.stale_while_revalidate {
        return Usable::Stale { refresh: true };
    }
    Usable::Revalidate
}

/// §3.1 and §3.2: headers that are never stored, and never taken from a
/// 304 into a stored answer.
pub fn kept_out_of_store(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authenticate"
            | "proxy-authentication-info"
            | "set-cookie"
            | "age"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        crate::http::headers::map_of(pairs)
    }

    fn cc(v: &str) -> ResponseDirectives {
        ResponseDirectives::parse(&headers(&[("cache-control", v)]))
    }

    fn req_cc(v: &str) -> RequestDirectives {
        RequestDirectives::parse(&headers(&[("cache-control", v)]))
    }

    #[test]
    fn response_directives_table() {
        let d = cc("public, Max-Age=60, s-maxage=\"30\", must-revalidate");
        assert!(d.public && d.must_revalidate);
        assert_eq!((d.max_age, d.s_maxage), (Some(60), Some(30)));
        // The first of two wins; malformed counts as 0 (stale).
        assert_eq!(cc("max-age=10, max-age=99").max_age, Some(10));
        assert_eq!(cc("max-age=ten").max_age, Some(0));
        assert_eq!(cc("max-age=99999999999999").max_age, Some(1 << 31));
        // A quoted comma does not split the list.
        let d = cc("no-cache=\"set-cookie, x-a\", max-age=5");
        assert!(d.no_cache);
        assert_eq!(d.max_age, Some(5));
        assert!(cc("private=\"x\"").private);
        assert!(cc("no-store").no_store);
        assert!(cc("proxy-revalidate").never_stale());
        assert!(cc("s-maxage=1").never_stale());
        assert!(!cc("max-age=1").never_stale());
        let d = cc("max-age=1, stale-while-revalidate=30, stale-if-error=600");
        assert_eq!(d.stale_while_revalidate, Some(30));
        assert_eq!(d.stale_if_error, Some(600));
        assert_eq!(cc("stale-if-error=x").stale_if_error, None);
        assert_eq!(cc(""), ResponseDirectives::default());
        assert_eq!(cc(" , ,"), ResponseDirectives::default());
        // A byte outside ASCII spoils its own directive only (found by the
        // cache_control fuzz target).
        let obs_text = ResponseDirectives::parse(
            &[(
                header::CACHE_CONTROL,
                http::HeaderValue::from_bytes(b"\xffq#, proxy-revalidate, max-age=\xff1").unwrap(),
            )]
            .into_iter()
            .collect(),
        );
        assert!(obs_text.proxy_revalidate);
        assert_eq!(obs_text.max_age, None);
        // Several lines add up.
        let d = ResponseDirectives::parse(&headers(&[
            ("cache-control", "public"),
            ("cache-control", "max-age=3"),
        ]));
        assert!(d.public && d.max_age == Some(3));
    }

    #[test]
    fn request_directives_table() {
        assert_eq!(req_cc("max-stale").max_stale, Some(u64::MAX));
        assert_eq!(req_cc("max-stale=5").max_stale, Some(5));
        assert_eq!(req_cc("min-fresh=7").min_fresh, Some(7));
        assert_eq!(req_cc("max-age=0").max_age, Some(0));
        assert!(req_cc("only-if-cached").only_if_cached);
        assert!(req_cc("no-store").no_store);
        assert!(req_cc("NO-CACHE").no_cache);
        // Pragma only without Cache-Control.
        assert!(RequestDirectives::parse(&headers(&[("pragma", "no-cache")])).no_cache);
        assert!(
            !RequestDirectives::parse(&headers(&[
                ("pragma", "no-cache"),
                ("cache-control", "max-stale")
            ]))
            .no_cache
        );
    }

    fn store(
        method: Method,
        req: &str,
        authorized: bool,
        status: u16,
        resp: &[(&str, &str)],
    ) -> Result<(), NotStored> {
        let h = headers(resp);
        storable(
            &method,
            &req_cc(req),
            authorized,
            StatusCode::from_u16(status).unwrap(),
            &h,
            &ResponseDirectives::parse(&h),
            StoreRules {
                set_cookie: false,
                post: true,
            },
        )
    }

    /// Method, request Cache-Control, Authorization sent, status, answer
    /// headers, verdict.
    type Case = (
        Method,
        &'static str,
        bool,
        u16,
        &'static [(&'static str, &'static str)],
        Result<(), NotStored>,
    );

    #[test]
    fn storability_table() {
        use NotStored as N;
        let cases: &[Case] = &[
            (Method::GET, "", false, 200, &[], Ok(())),
            (Method::HEAD, "", false, 200, &[], Ok(())),
            (
                Method::PUT,
                "",
                false,
                200,
                &[("cache-control", "max-age=9")],
                Err(N::Method),
            ),
            (Method::POST, "", false, 200, &[], Err(N::Status)),
            (
                Method::POST,
                "",
                false,
                200,
                &[("cache-control", "max-age=9")],
                Ok(()),
            ),
            (Method::GET, "", false, 404, &[], Ok(())),
            (Method::GET, "", false, 500, &[], Err(N::Status)),
            (
                Method::GET,
                "",
                false,
                500,
                &[("cache-control", "max-age=5")],
                Ok(()),
            ),
            (Method::GET, "", false, 302, &[], Err(N::Status)),
            (
                Method::GET,
                "",
                false,
                302,
                &[("expires", "Thu, 01 Jan 2099 00:00:00 GMT")],
                Ok(()),
            ),
            (
                Method::GET,
                "",
                false,
                206,
                &[("cache-control", "max-age=5")],
                Err(N::Status),
            ),
            (Method::GET, "", false, 304, &[], Err(N::Status)),
            (Method::GET, "no-store", false, 200, &[], Err(N::NoStore)),
            (
                Method::GET,
                "",
                false,
                200,
                &[("cache-control", "no-store")],
                Err(N::NoStore),
            ),
            (
                Method::GET,
                "",
                false,
                200,
                &[("cache-control", "private, max-age=9")],
                Err(N::Private),
            ),
            (
                Method::GET,
                "",
                true,
                200,
                &[("cache-control", "max-age=9")],
                Err(N::Authorization),
            ),
            (
                Method::GET,
                "",
                true,
                200,
                &[("cache-control", "public")],
                Ok(()),
            ),
            (
                Method::GET,
                "",
                true,
                200,
                &[("cache-control", "s-maxage=9")],
                Ok(()),
            ),
            (
                Method::GET,
                "",
                true,
                200,
                &[("cache-control", "must-revalidate")],
                Ok(()),
            ),
            (
                Method::GET,
                "",
                false,
                200,
                &[("set-cookie", "a=b")],
                Err(N::SetCookie),
            ),
            (
                Method::GET,
                "",
                false,
                200,
                &[("vary", "accept, *")],
                Err(N::VaryStar),
            ),
            (
                Method::GET,
                "",
                false,
                200,
                &[("cache-control", "no-cache")],
                Ok(()),
            ),
        ];
        for (method, req, auth, status, resp, want) in cases {
            assert_eq!(
                store(method.clone(), req, *auth, *status, resp),
                *want,
                "{method} {req:?} {auth} {status} {resp:?}"
            );
        }
    }

    const NO_HEURISTIC: Heuristic = Heuristic {
        max: Duration::ZERO,
        default_ttl: Duration::ZERO,
    };

    fn lifetime(status: u16, pairs: &[(&str, &str)], heuristic: Heuristic) -> u64 {
        let h = headers(pairs);
        let now = httpdate::parse_http_date("Mon, 07 Dec 2026 12:00:00 GMT").unwrap();
        freshness_lifetime(
            &h,
            &ResponseDirectives::parse(&h),
            StatusCode::from_u16(status).unwrap(),
            now,
            heuristic,
        )
        .as_secs()
    }

    #[test]
    fn freshness_lifetime_table() {
        let day = Heuristic {
            max: Duration::from_secs(86_400),
            default_ttl: Duration::ZERO,
        };
        let date = ("date", "Mon, 07 Dec 2026 12:00:00 GMT");
        // s-maxage wins over max-age, which wins over Expires.
        assert_eq!(
            lifetime(200, &[("cache-control", "max-age=60, s-maxage=5")], day),
            5
        );
        assert_eq!(
            lifetime(
                200,
                &[
                    ("cache-control", "max-age=60"),
                    ("expires", "Thu, 01 Jan 2099 00:00:00 GMT")
                ],
                day
            ),
            60
        );
        // Expires counts from Date, not from the local clock.
        assert_eq!(
            lifetime(
                200,
                &[
                    ("date", "Mon, 07 Dec 2026 11:00:00 GMT"),
                    ("expires", "Mon, 07 Dec 2026 11:10:00 GMT")
                ],
                day
            ),
            600
        );
        assert_eq!(lifetime(200, &[date, ("expires", "0")], day), 0);
        assert_eq!(
            lifetime(
                200,
                &[date, ("expires", "Mon, 07 Dec 2026 11:00:00 GMT")],
                day
            ),
            0
        );
        // Heuristic: 10% of the Last-Modified age, capped, only when allowed.
        let ten_days_old = ("last-modified", "Fri, 27 Nov 2026 12:00:00 GMT");
        assert_eq!(lifetime(200, &[date, ten_days_old], day), 86_400);
        let capped = Heuristic {
            max: Duration::from_secs(3600),
            ..day
        };
        assert_eq!(lifetime(200, &[date, ten_days_old], capped), 3600);
        assert_eq!(
            lifetime(
                200,
                &[date, ("last-modified", "Mon, 07 Dec 2026 11:00:00 GMT")],
                day
            ),
            360
        );
        assert_eq!(lifetime(200, &[date, ten_days_old], NO_HEURISTIC), 0);
        assert_eq!(lifetime(302, &[date, ten_days_old], day), 0);
        assert_eq!(lifetime(200, &[date], day), 0);
        let default_ttl = Heuristic {
            max: Duration::ZERO,
            default_ttl: Duration::from_secs(30),
        };
        assert_eq!(lifetime(200, &[date], default_ttl), 30);
        assert_eq!(lifetime(500, &[date], default_ttl), 0);
    }

    #[test]
    fn age_calculation_follows_section_4_2_3() {
        let t = |s: &str| httpdate::parse_http_date(s).unwrap();
        let sent = t("Mon, 07 Dec 2026 12:00:00 GMT");
        let came = t("Mon, 07 Dec 2026 12:00:02 GMT");
        // Age from upstream caches plus the time in transit.
        let h = headers(&[("age", "100"), ("date", "Mon, 07 Dec 2026 12:00:01 GMT")]);
        assert_eq!(initial_age(&h, sent, came).as_secs(), 102);
        // A Date in the past (a slow or skewed origin clock) shows as age.
        let h = headers(&[("date", "Mon, 07 Dec 2026 11:59:00 GMT")]);
        assert_eq!(initial_age(&h, sent, came).as_secs(), 62);
        // A Date in the future never makes the age negative.
        let h = headers(&[("date", "Mon, 07 Dec 2026 13:00:00 GMT")]);
        assert_eq!(initial_age(&h, sent, came).as_secs(), 2);
        let h = headers(&[("age", "junk")]);
        assert_eq!(initial_age(&h, sent, came).as_secs(), 2);
    }

    fn fresh(age: u64, lifetime: u64) -> Freshness {
        Freshness {
            age: Duration::from_secs(age),
            lifetime: Duration::from_secs(lifetime),
            never_stale: false,
            no_cache: false,
            stale_while_revalidate: Duration::ZERO,
            swr_from_answer: false,
        }
    }

    #[test]
    fn usable_table() {
        let none = RequestDirectives::default();
        assert_eq!(usable(&none, &fresh(5, 10)), Usable::Fresh);
        assert_eq!(usable(&none, &fresh(10, 10)), Usable::Revalidate);
        assert_eq!(
            usable(&req_cc("max-age=4"), &fresh(5, 10)),
            Usable::Revalidate
        );
        assert_eq!(
            usable(&req_cc("min-fresh=5"), &fresh(5, 10)),
            Usable::Revalidate
        );
        assert_eq!(usable(&req_cc("min-fresh=4"), &fresh(5, 10)), Usable::Fresh);
        assert_eq!(
            usable(&req_cc("no-cache"), &fresh(0, 10)),
            Usable::Revalidate
        );
        let stale = Usable::Stale { refresh: false };
        assert_eq!(usable(&req_cc("max-stale"), &fresh(500, 10)), stale);
        assert_eq!(usable(&req_cc("max-stale=5"), &fresh(15, 10)), stale);
        assert_eq!(
            usable(&req_cc("max-stale=5"), &fresh(16, 10)),
            Usable::Revalidate
        );
        let never = Freshness {
            never_stale: true,
            ..fresh(15, 10)
        };
        assert_eq!(usable(&req_cc("max-stale"), &never), Usable::Revalidate);
        // s-maxage=10, stale-while-revalidate=30: the answer's own window holds.
        let cdn = Freshness {
            stale_while_revalidate: Duration::from_secs(30),
            swr_from_answer: true,
            ..never
        };
        assert_eq!(usable(&none, &cdn), Usable::Stale { refresh: true });
        let policy_window = Freshness {
            swr_from_answer: false,
            ..cdn
        };
        assert_eq!(usable(&none, &policy_window), Usable::Revalidate);
        let swr = Freshness {
            stale_while_revalidate: Duration::from_secs(30),
            ..fresh(15, 10)
        };
        assert_eq!(usable(&none, &swr), Usable::Stale { refresh: true });
        let too_late = Freshness {
            stale_while_revalidate: Duration::from_secs(30),
            ..fresh(41, 10)
        };
        assert_eq!(usable(&none, &too_late), Usable::Revalidate);
        let no_cache = Freshness {
            no_cache: true,
            ..fresh(0, 10)
        };
        assert_eq!(usable(&none, &no_cache), Usable::Revalidate);
    }
}
