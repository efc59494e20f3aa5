//! One stored answer and the answers made from it: a hit (200, or 304 for
//! a client's matching conditional request, or 206 for a range), with
//! `Age` and `Cache-Status`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, header};

use super::rules::{self, Freshness, Heuristic, ResponseDirectives};
use crate::http::body::{Body, empty, full};
use crate::http::conditional::{ByteRange, ContentRange, Validators, byte_range};
use crate::http::problem::problem;

/// What one entry costs beyond its body, header and key bytes: the entry
/// itself, the memory tier's own bookkeeping and the allocator's share
/// (with [`HEADER_OVERHEAD`] per header). Measured with
/// `cargo bench --bench cache_memory`: 1,455 bytes allocated for an entry
/// of a 100-byte body, 5 headers and a 40-byte key, 1,199 of them
/// overhead (bench/RESULTS.md); these two constants charge 1,472.
pub const ENTRY_OVERHEAD: u64 = 1024;

/// What each stored header costs beyond its name and value: its slot in
/// the header map, its index entry, the value's own allocation.
pub const HEADER_OVERHEAD: usize = 48;

/// A stored answer.
pub struct Entry {
    /// Its primary key (shared with the memory tier's index).
    pub key: Arc<str>,
    /// Its status.
    pub status: StatusCode,
    /// Its headers, less those never stored (hop-by-hop, Set-Cookie, Age).
    pub headers: HeaderMap,
    /// Its whole body.
    pub body: Bytes,
    /// An answer to HEAD: it has no body to answer a GET with.
    pub head_only: bool,
    /// When the answer arrived.
    pub response_time: SystemTime,
    /// Its age on arrival (RFC 9111 §4.2.3 `corrected_initial_age`).
    pub initial_age: Duration,
    /// How long it is fresh from its generation.
    pub lifetime: Duration,
    /// Its Cache-Control.
    pub directives: ResponseDirectives,
    /// The request header values it was chosen by (its `Vary`).
    pub vary: Box<[(HeaderName, Option<Box<str>>)]>,
    /// Its `Cache-Tag` and `Surrogate-Key` values, for purges by tag.
    pub tags: Box<[Box<str>]>,
    /// What it weighs in the memory tier (bytes, overhead included).
    pub weight: u32,
    /// Times it answered a request.
    pub hits: AtomicU64,
    /// Set while a background refresh of it runs, so one stale entry
    /// makes one refresh however many requests see it.
    pub refreshing: AtomicBool,
    /// Its body as `compress` encoded it, per encoding and level.
    encoded: Mutex<Vec<Encoded>>,
}

/// One encoded form of an entry's body.
struct Encoded {
    coding: &'static str,
    level: i32,
    body: Bytes,
}

impl Entry {
    /// A stored answer from its parts; `headers` are the answer's as they
    /// came (the ones never stored are taken out here).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        key: Arc<str>,
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        head_only: bool,
        request_time: SystemTime,
        response_time: SystemTime,
        heuristic: Heuristic,
        vary: Box<[(HeaderName, Option<Box<str>>)]>,
    ) -> Entry {
        let initial_age = rules::initial_age(&headers, request_time, response_time);
        Entry::restore(
            key,
            status,
            headers,
            body,
            head_only,
            response_time,
            initial_age,
            heuristic,
            vary,
        )
    }

    /// A stored answer whose age on arrival is known (read back from a
    /// tier outside memory).
    #[allow(clippy::too_many_arguments)]
    pub fn restore(
        key: Arc<str>,
        status: StatusCode,
        mut headers: HeaderMap,
        body: Bytes,
        head_only: bool,
        response_time: SystemTime,
        initial_age: Duration,
        heuristic: Heuristic,
        vary: Box<[(HeaderName, Option<Box<str>>)]>,
    ) -> Entry {
        let names: Vec<HeaderName> = headers
            .keys()
            .filter(|n| rules::kept_out_of_store(n))
            .cloned()
            .collect();
        for n in names {
            headers.remove(n);
        }
        let directives = ResponseDirectives::parse(&headers);
        let lifetime =
            rules::freshness_lifetime(&headers, &directives, status, response_time, heuristic);
        let tags = tags_of(&headers);
        let header_bytes: usize = headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + HEADER_OVERHEAD)
            .sum();
        let weight =
            (body.len() as u64 + header_bytes as u64 + ENTRY_OVERHEAD).min(u32::MAX as u64);
        Entry {
            key,
            status,
            headers,
            body,
            head_only,
            response_time,
            initial_age,
            lifetime,
            directives,
            vary,
            tags,
            weight: weight as u32,
            hits: AtomicU64::new(0),
            refreshing: AtomicBool::new(false),
            encoded: Mutex::new(Vec::new()),
        }
    }

    /// What it weighs in the memory tier now: itself and its encoded forms.
    pub fn weight(&self) -> u64 {
        let encoded: usize = crate::lock(&self.encoded)
            .iter()
            .map(|e| e.body.len())
            .sum();
        u64::from(self.weight) + encoded as u64
    }

    /// Its body encoded with `coding` at `level`, if `compress` kept it.
    pub fn encoded(&self, coding: &str, level: i32) -> Option<Bytes> {
        crate::lock(&self.encoded)
            .iter()
            .find(|e| e.coding == coding && e.level == level)
            .map(|e| e.body.clone())
    }

    /// Keeps an encoded form; false when one was kept already (two hits
    /// encoded it at once) or it is no smaller than the body.
    pub fn add_encoded(&self, coding: &'static str, level: i32, body: Bytes) -> bool {
        if body.len() >= self.body.len() {
            return false;
        }
        let mut encoded = crate::lock(&self.encoded);
        if encoded
            .iter()
            .any(|e| e.coding == coding && e.level == level)
        {
            return false;
        }
        encoded.push(Encoded {
            coding,
            level,
            body,
        });
        true
    }

    /// This entry brought up to date by a 304 (RFC 9111 §4.3.4): the
    /// 304's headers replace the stored ones of the same name (Content-Length
    /// and the never-stored ones excepted), and its times restart the age.
    pub fn refreshed(
        &self,
        not_modified: &HeaderMap,
        request_time: SystemTime,
        response_time: SystemTime,
        heuristic: Heuristic,
    ) -> Entry {
        let mut headers = self.headers.clone();
        for name in not_modified.keys() {
            if rules::kept_out_of_store(name) || name == header::CONTENT_LENGTH {
                continue;
            }
            headers.remove(name);
            for v in not_modified.get_all(name) {
                headers.append(name.clone(), v.clone());
            }
        }
        // The 304's own Age and Date describe it, not the stored answer.
        if let Some(age) = not_modified.get(header::AGE) {
            headers.insert(header::AGE, age.clone());
        }
        Entry::new(
            self.key.clone(),
            self.status,
            headers,
            self.body.clone(),
            self.head_only,
            request_time,
            response_time,
            heuristic,
            self.vary.clone(),
        )
    }

    /// Its age now (§4.2.3 `current_age`).
    pub fn age(&self, now: SystemTime) -> Duration {
        self.initial_age + now.duration_since(self.response_time).unwrap_or_default()
    }

    /// Its state for [`rules::usable`], with the policy's own
    /// stale-while-revalidate when the answer gives none.
    pub fn freshness(&self, now: SystemTime, policy_swr: Duration) -> Freshness {
        Freshness {
            age: self.age(now),
            lifetime: self.lifetime,
            never_stale: self.directives.never_stale(),
            no_cache: self.directives.no_cache,
            swr_from_answer: self.directives.stale_while_revalidate.is_some(),
            stale_while_revalidate: self
                .directives
                .stale_while_revalidate
                .map_or(policy_swr, Duration::from_secs),
        }
    }

    /// Whether it may be served stale now because the origin failed
    /// (RFC 5861 §4), with the policy's own window when the answer gives
    /// none. An answer that must never be served stale is served so only
    /// when it says stale-if-error itself.
    pub fn stale_if_error(&self, now: SystemTime, policy_sie: Duration) -> bool {
        let window = match self.directives.stale_if_error {
            Some(s) => Duration::from_secs(s),
            None if self.directives.never_stale() => return false,
            None => policy_sie,
        };
        self.age(now) < self.lifetime + window
    }

    /// Whether it may answer a request with Authorization (RFC 9111 §3.5).
    pub fn shareable_with_authorization(&self) -> bool {
        let d = &self.directives;
        d.public || d.s_maxage.is_some() || d.must_revalidate
    }

    /// Its validators, for conditional requests.
    pub fn validators(&self) -> Validators {
        Validators::of_response(&self.headers)
    }

    /// The answer this entry gives a request: 200 (or its stored status),
    /// 304 when the request's own validators match, 206 for a satisfiable
    /// range of a 200, 416 for an unsatisfiable one; no body for HEAD.
    /// `status` is the Cache-Status value.
    pub fn answer(
        &self,
        method: &Method,
        req: &HeaderMap,
        now: SystemTime,
        status: HeaderValue,
        request_id: &str,
    ) -> Response<Body> {
        self.hits.fetch_add(1, Ordering::Relaxed);
        let age = HeaderValue::from(self.age(now).as_secs());
        let conditional = (method == Method::GET || method == Method::HEAD)
            && (req.contains_key(header::IF_NONE_MATCH)
                || req.contains_key(header::IF_MODIFIED_SINCE));
        if conditional && self.status == StatusCode::OK && self.validators().not_modified(req) {
            let mut resp = Response::new(empty());
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            let h = resp.headers_mut();
            // RFC 9110 §15.4.5: what a 200 would have said about caching
            // and the representation's identity.
            for name in [
                header::CACHE_CONTROL,
                header::CONTENT_LOCATION,
                header::DATE,
                header::ETAG,
                header::EXPIRES,
                header::LAST_MODIFIED,
                header::VARY,
            ] {
                for v in self.headers.get_all(&name) {
                    h.append(name.clone(), v.clone());
                }
            }
            h.insert(header::AGE, age);
            h.insert(CACHE_STATUS, status);
            return resp;
        }
        let mut headers = self.headers.clone();
        headers.insert(header::AGE, age);
        headers.insert(CACHE_STATUS, status);
        let size = self.body.len() as u64;
        let range = if *method == Method::GET
            && self.status == StatusCode::OK
            && req.contains_key(header::RANGE)
            && self.validators().if_range_allows(req)
        {
            byte_range(req, size)
        } else {
            ByteRange::Whole
        };
        let (status, body) = match range {
            ByteRange::Whole => (self.status, self.body.clone()),
            ByteRange::Part { start, end } => {
                headers.insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from(ContentRange::Part { start, end, size }),
                );
                // Positions are clamped to the body by `byte_range`.
                let part = self.body.slice(start as usize..=end as usize);
                (StatusCode::PARTIAL_CONTENT, part)
            }
            ByteRange::Unsatisfiable => {
                let mut resp = problem(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "the requested range starts past the end of the document",
                    request_id,
                );
                let h = resp.headers_mut();
                h.insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from(ContentRange::Size(size)),
                );
                for name in [header::AGE, CACHE_STATUS] {
                    if let Some(v) = headers.remove(&name) {
                        h.insert(name, v);
                    }
                }
                return resp;
            }
        };
        if self.status == StatusCode::OK {
            headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        }
        if !self.head_only {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        let body = if *method == Method::HEAD || body.is_empty() {
            empty()
        } else {
            full(body)
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        *resp.headers_mut() = headers;
        resp
    }
}

/// The `Cache-Status` header (RFC 9211).
pub const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// Tags from `Cache-Tag` (comma-separated) and `Surrogate-Key`
/// (space-separated) headers.
fn tags_of(headers: &HeaderMap) -> Box<[Box<str>]> {
    let mut tags: Vec<Box<str>> = Vec::new();
    for v in headers.get_all("cache-tag") {
        if let Ok(v) = v.to_str() {
            tags.extend(
                v.split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(Box::from),
            );
        }
    }
    for v in headers.get_all("surrogate-key") {
        if let Ok(v) = v.to_str() {
            tags.extend(v.split_ascii_whitespace().map(Box::from));
        }
    }
    tags.into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        crate::http::headers::map_of(pairs)
    }

    const NO_HEURISTIC: Heuristic = Heuristic {
        max: Duration::ZERO,
        default_ttl: Duration::ZERO,
    };

    fn entry(pairs: &[(&str, &str)], body: &'static str) -> Entry {
        let now = SystemTime::now();
        Entry::new(
            Arc::from("k"),
            StatusCode::OK,
            h(pairs),
            Bytes::from_static(body.as_bytes()),
            false,
            now,
            now,
            NO_HEURISTIC,
            Box::new([]),
        )
    }

    async fn text(resp: Response<Body>) -> String {
        String::from_utf8(
            resp.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap()
    }

    fn hit() -> HeaderValue {
        HeaderValue::from_static("portcullis; hit")
    }

    #[test]
    fn never_stored_headers_are_left_out_and_tags_read() {
        let e = entry(
            &[
                ("set-cookie", "s=1"),
                ("connection", "close"),
                ("age", "3"),
                ("cache-tag", "a, b"),
                ("surrogate-key", "c  d"),
                ("etag", "\"x\""),
            ],
            "x",
        );
        assert!(!e.headers.contains_key("set-cookie") && !e.headers.contains_key("age"));
        assert!(e.headers.contains_key("etag"));
        assert_eq!(
            &*e.tags,
            &["a".into(), "b".into(), "c".into(), "d".into()] as &[Box<str>]
        );
        assert_eq!(e.initial_age.as_secs(), 3);
    }

    #[tokio::test]
    async fn answers_conditionals_ranges_and_head() {
        let e = entry(
            &[("etag", "\"v1\""), ("cache-control", "max-age=60")],
            "0123456789",
        );
        let now = SystemTime::now();
        let r = e.answer(
            &Method::GET,
            &h(&[("if-none-match", "\"v1\"")]),
            now,
            hit(),
            "id",
        );
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(r.headers()["etag"], "\"v1\"");
        assert_eq!(r.headers()["age"], "0");
        let r = e.answer(
            &Method::GET,
            &h(&[("range", "bytes=2-4")]),
            now,
            hit(),
            "id",
        );
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(r.headers()["content-range"], "bytes 2-4/10");
        assert_eq!(text(r).await, "234");
        let r = e.answer(
            &Method::GET,
            &h(&[("range", "bytes=20-")]),
            now,
            hit(),
            "id",
        );
        assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        let r = e.answer(
            &Method::GET,
            &h(&[("range", "bytes=2-4"), ("if-range", "\"old\"")]),
            now,
            hit(),
            "id",
        );
        assert_eq!(r.status(), StatusCode::OK);
        let r = e.answer(&Method::HEAD, &h(&[]), now, hit(), "id");
        assert_eq!(r.headers()["content-length"], "10");
        assert_eq!(text(r).await, "");
        assert_eq!(e.hits.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn a_304_refreshes_headers_but_not_the_length() {
        let e = entry(
            &[
                ("etag", "\"v1\""),
                ("content-length", "10"),
                ("x-a", "old"),
                ("cache-control", "max-age=1"),
            ],
            "0123456789",
        );
        let now = SystemTime::now();
        let r = e.refreshed(
            &h(&[
                ("x-a", "new"),
                ("content-length", "0"),
                ("cache-control", "max-age=100"),
            ]),
            now,
            now,
            NO_HEURISTIC,
        );
        assert_eq!(r.headers["x-a"], "new");
        assert_eq!(r.headers["content-length"], "10");
        assert_eq!(r.lifetime.as_secs(), 100);
        assert_eq!(r.body, e.body);
    }

    #[test]
    fn stale_if_error_windows() {
        let now = SystemTime::now();
        let mut e = entry(&[("cache-control", "max-age=10")], "x");
        e.initial_age = Duration::from_secs(15);
        assert!(!e.stale_if_error(now, Duration::ZERO));
        assert!(e.stale_if_error(now, Duration::from_secs(60)));
        let mut strict = entry(&[("cache-control", "max-age=10, must-revalidate")], "x");
        strict.initial_age = Duration::from_secs(15);
        assert!(!strict.stale_if_error(now, Duration::from_secs(60)));
        let mut own = entry(
            &[(
                "cache-control",
                "max-age=10, must-revalidate, stale-if-error=60",
            )],
            "x",
        );
        own.initial_age = Duration::from_secs(15);
        assert!(own.stale_if_error(now, Duration::ZERO));
    }
}
