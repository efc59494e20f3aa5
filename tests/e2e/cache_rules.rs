//! `cache`: the RFC 9111 rules one by one, over real sockets. Response
//! directives (s-maxage over max-age, no-cache, must-revalidate and
//! proxy-revalidate, Expires against Date, heuristic freshness and
//! `heuristic_max`); request directives (no-cache, max-age=0, min-fresh,
//! max-stale, no-store, Pragma); Authorization (§3.5); Set-Cookie and
//! `store_set_cookie`; Age; the key settings (`query`, `ignore_params`,
//! `headers`, the host); HEAD; Range and If-Range; invalidation by unsafe
//! requests and their Location / Content-Location (§4.4); POST caching;
//! `max_entry_size`; collapsed requests and `lock_timeout`; metrics; a
//! reload keeping the store; and the configuration mistakes refused at load.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};

use crate::common::*;

/// What the test backend saw: requests per path and when each came.
#[derive(Default)]
struct Origin {
    hits: Mutex<HashMap<String, usize>>,
    arrivals: Mutex<Vec<(String, Instant)>>,
    /// Unsafe methods (POST, PUT, DELETE) answer 500 while set.
    fail_unsafe: AtomicBool,
}

impl Origin {
    /// Requests `path` has had (every method).
    fn count(&self, path: &str) -> usize {
        *self.hits.lock().unwrap().get(path).unwrap_or(&0)
    }

    /// When each request for `path` arrived.
    fn arrivals(&self, path: &str) -> Vec<Instant> {
        self.arrivals
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, t)| *t)
            .collect()
    }
}

/// A backend driven by the query string, so that every test names what it
/// wants in its URL:
///
/// - `cc=...`: the Cache-Control (default `max-age=60`; `cc=` sends none);
/// - `etag=v`: ETag `"v"`; a matching If-None-Match gets 304;
/// - `h.NAME=VALUE`: any other header (`h.date`, `h.expires`,
///   `h.last-modified`, `h.age`, `h.set-cookie`, `h.location`, ...); a
///   matching If-Modified-Since on `h.last-modified` gets 304;
/// - `status=N`, `delay_ms=N`;
/// - `size=N`: a body of N bytes; with `chunked=1` sent in 512-byte chunks
///   without Content-Length;
/// - `ranges=1`: a `Range: bytes=A-B` request gets 206.
///
/// The default body is `METHOD PATH #N` (N counts the path's requests),
/// plus the request body for POST.
async fn origin() -> (Backend, Arc<Origin>) {
    let state = Arc::new(Origin::default());
    let s = state.clone();
    let backend = Backend::start(move |req: Request<Incoming>| {
        let s = s.clone();
        async move {
            let path = req.uri().path().to_string();
            let n = {
                let mut hits = s.hits.lock().unwrap();
                let n = hits.entry(path.clone()).or_insert(0);
                *n += 1;
                *n
            };
            s.arrivals
                .lock()
                .unwrap()
                .push((path.clone(), Instant::now()));
            let params: Vec<(String, String)> =
                form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                    .into_owned()
                    .collect();
            let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            let method = req.method().clone();
            let req_headers = req.headers().clone();
            let req_body = req.into_body().collect().await.unwrap().to_bytes();
            if let Some(ms) = param("delay_ms") {
                tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
            }
            let mut headers = HeaderMap::new();
            match param("cc") {
                None => {
                    headers.insert("cache-control", HeaderValue::from_static("max-age=60"));
                }
                Some(cc) if cc.is_empty() => {}
                Some(cc) => {
                    headers.insert("cache-control", HeaderValue::from_str(&cc).unwrap());
                }
            }
            if let Some(etag) = param("etag") {
                headers.insert(
                    "etag",
                    HeaderValue::from_str(&format!("\"{etag}\"")).unwrap(),
                );
            }
            for (k, v) in &params {
                if let Some(name) = k.strip_prefix("h.") {
                    headers.append(
                        HeaderName::from_bytes(name.as_bytes()).unwrap(),
                        HeaderValue::from_str(v).unwrap(),
                    );
                }
            }
            headers.insert("x-count", HeaderValue::from(n));
            let unsafe_method = !method.is_safe();
            if unsafe_method && s.fail_unsafe.load(Ordering::SeqCst) {
                let mut r = Response::new(body("failed"));
                *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                return r;
            }
            let not_modified = match (headers.get("etag"), req_headers.get("if-none-match")) {
                (Some(etag), Some(inm)) => inm.to_str().unwrap().contains(etag.to_str().unwrap()),
                _ => false,
            } || matches!(
                (headers.get("last-modified"), req_headers.get("if-modified-since")),
                (Some(lm), Some(ims)) if lm == ims
            );
            if not_modified && !unsafe_method {
                let mut r = Response::new(body(""));
                *r.status_mut() = StatusCode::NOT_MODIFIED;
                for name in ["cache-control", "etag", "x-count", "date", "last-modified"] {
                    if let Some(v) = headers.get(name) {
                        r.headers_mut().insert(name, v.clone());
                    }
                }
                return r;
            }
            let mut content: Bytes = match param("size") {
                Some(size) => vec![b'x'; size.parse().unwrap()].into(),
                None => {
                    let mut text = format!("{method} {path} #{n}");
                    if method == http::Method::POST {
                        text.push(' ');
                        text.push_str(&String::from_utf8_lossy(&req_body));
                    }
                    text.into()
                }
            };
            let mut status = param("status").map_or(StatusCode::OK, |s| {
                StatusCode::from_u16(s.parse().unwrap()).unwrap()
            });
            if param("ranges").is_some() {
                headers.insert("accept-ranges", HeaderValue::from_static("bytes"));
                if let Some(range) = req_headers
                    .get("range")
                    .and_then(|r| r.to_str().unwrap().strip_prefix("bytes="))
                {
                    let (a, b) = range.split_once('-').unwrap();
                    let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
                    let b = b.min(content.len() - 1);
                    headers.insert(
                        "content-range",
                        HeaderValue::from_str(&format!("bytes {a}-{b}/{}", content.len())).unwrap(),
                    );
                    content = content.slice(a..=b);
                    status = StatusCode::PARTIAL_CONTENT;
                }
            }
            let resp_body = if param("chunked").is_some() {
                let frames: Vec<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>> =
                    content
                        .chunks(512)
                        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
                        .collect();
                http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed()
            } else {
                body(content)
            };
            let mut r = Response::new(resp_body);
            *r.status_mut() = status;
            *r.headers_mut() = headers;
            r
        }
    })
    .await;
    (backend, state)
}

/// A gateway whose catch-all route `all` carries the cache policy `def`.
async fn gateway(backend: &Backend, def: &str) -> TestGateway {
    TestGateway::start(&policy_config(backend.addr, &[("edge", def)], "")).await
}

/// One answer as the client saw it.
struct Answer {
    status: u16,
    headers: HeaderMap,
    text: String,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }

    fn cache_status(&self) -> &str {
        self.header("cache-status")
    }

    /// Whether Cache-Status says it came from the store.
    fn is_hit(&self) -> bool {
        self.cache_status().starts_with("portcullis; hit")
    }

    /// The `ttl=` of Cache-Status.
    fn ttl(&self) -> Option<i64> {
        self.cache_status()
            .split(';')
            .find_map(|p| p.trim().strip_prefix("ttl="))
            .and_then(|v| v.parse().ok())
    }
}

async fn send(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&str>) -> Answer {
    let method = http::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = client().request(method, url);
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    if let Some(b) = body {
        req = req.body(b.to_string());
    }
    let resp = req.send().await.unwrap();
    Answer {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        text: resp.text().await.unwrap(),
    }
}

async fn get(url: &str, headers: &[(&str, &str)]) -> Answer {
    send("GET", url, headers, None).await
}

/// `path?k=v&...` with the values URL-encoded.
fn at(path: &str, params: &[(&str, &str)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        q.append_pair(k, v);
    }
    format!("{path}?{}", q.finish())
}

/// An HTTP-date `offset_secs` from now (negative: in the past).
fn http_date(base: SystemTime, offset_secs: i64) -> String {
    let t = if offset_secs < 0 {
        base - Duration::from_secs(offset_secs.unsigned_abs())
    } else {
        base + Duration::from_secs(offset_secs as u64)
    };
    httpdate::fmt_http_date(t)
}

// ---------------------------------------------------------------------
// Response directives
// ---------------------------------------------------------------------

#[tokio::test]
async fn s_maxage_wins_over_max_age_in_a_shared_cache() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache }").await;
    let url = gw.url("web", &at("/smax", &[("cc", "max-age=60, s-maxage=2")]));
    let first = get(&url, &[]).await;
    assert!(
        first.cache_status().contains("stored"),
        "{:?}",
        first.headers
    );
    let hit = get(&url, &[]).await;
    assert!(hit.is_hit(), "fresh within s-maxage: {:?}", hit.headers);
    let ttl = hit.ttl().unwrap();
    assert!(
        (1..=2).contains(&ttl),
        "ttl from s-maxage=2: {:?}",
        hit.headers
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let later = get(&url, &[]).await;
    assert!(
        !later.is_hit(),
        "stale after s-maxage although max-age=60: {:?}",
        later.headers
    );
    assert_eq!(origin.count("/smax"), 2, "{:?}", later.headers);
}

#[tokio::test]
async fn a_no_cache_answer_is_stored_but_revalidated_on_every_use() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache }").await;
    let url = gw.url("web", &at("/nc", &[("cc", "no-cache"), ("etag", "v1")]));
    let first = get(&url, &[]).await;
    assert!(
        first.cache_status().contains("stored"),
        "{:?}",
        first.headers
    );
    for round in 2..=3 {
        let again = get(&url, &[]).await;
        assert_eq!(again.status, 200, "{:?}", again.headers);
        assert_eq!(again.text, first.text, "the stored body after a 304");
        assert!(
            again.cache_status().contains("fwd-status=304"),
            "{:?}",
            again.headers
        );
        assert_eq!(origin.count("/nc"), round, "every use asks the origin");
        let seen = backend.seen();
        assert_eq!(
            seen[round - 1]
                .headers
                .get("if-none-match")
                .map(|v| v.to_str().unwrap()),
            Some("\"v1\""),
            "{:?}",
            seen[round - 1].headers
        );
    }
}

#[tokio::test]
async fn must_revalidate_and_proxy_revalidate_answers_are_never_served_stale() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache }").await;
    let urls = [
        ("/mr", "max-age=1, must-revalidate"),
        ("/pr", "max-age=1, proxy-revalidate"),
        ("/plain", "max-age=1"),
    ]
    .map(|(p, cc)| (p, gw.url("web", &at(p, &[("cc", cc)]))));
    for (_, url) in &urls {
        get(url, &[]).await;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for (path, url) in &urls[..2] {
        let a = get(url, &[("cache-control", "max-stale=600")]).await;
        assert!(!a.is_hit(), "{path} served stale: {:?}", a.headers);
        assert_eq!(origin.count(path), 2, "{path}: {:?}", a.headers);
    }
    // The control: the same answer without the directive is served stale.
    let a = get(&urls[2].1, &[("cache-control", "max-stale=600")]).await;
    assert!(a.is_hit(), "{:?}", a.headers);
    assert_eq!(origin.count("/plain"), 1);
}

#[tokio::test]
async fn expires_counts_from_date_and_an_old_date_makes_the_answer_stale_at_once() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache }").await;
    let now = SystemTime::now();
    // Date an hour ago, Expires 60 s after it: the lifetime is 60 s
    // (Expires - Date) and the apparent age an hour (§4.2.3): stale.
    let skewed = gw.url(
        "web",
        &at(
            "/skewed",
            &[
                ("cc", ""),
                ("h.date", &http_date(now, -3600)),
                ("h.expires", &http_date(now, -3540)),
            ],
        ),
    );
    let first = get(&skewed, &[]).await;
    assert!(
        first.cache_status().contains("stored"),
        "{:?}",
        first.headers
    );
    let again = get(&skewed, &[]).await;
    assert!(!again.is_hit(), "{:?}", again.headers);
    assert_eq!(origin.count("/skewed"), 2, "{:?}", again.headers);
    // The control: Date now, Expires 60 s later: fresh.
    let fresh = gw.url(
        "web",
        &at(
            "/expires",
            &[
                ("cc", ""),
                ("h.date", &http_date(now, 0)),
                ("h.expires", &http_date(now, 60)),
            ],
        ),
    );
    get(&fresh, &[]).await;
    let hit = get(&fresh, &[]).await;
    assert!(hit.is_hit(), "{:?}", hit.headers);
    let ttl = hit.ttl().unwrap();
    assert!((55..=60).contains(&ttl), "{:?}", hit.headers);
    assert_eq!(origin.count("/expires"), 1);
}

#[tokio::test]
async fn an_invalid_expires_is_already_stale() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache }").await;
    // No validator: nothing to keep.
    let url = gw.url("web", &at("/exp0", &[("cc", ""), ("h.expires", "0")]));
    let first = get(&url, &[]).await;
    assert!(
        first.cache_status().contains("detail=no-freshness"),
        "{:?}",
        first.headers
    );
    get(&url, &[]).await;
    assert_eq!(origin.count("/exp0"), 2);
    // With one: kept, but asked about before each use.
    let url = gw.url(
        "web",
        &at("/exp0v", &[("cc", ""), ("h.expires", "0"), ("etag", "e")]),
    );
    get(&url, &[]).await;
    let again = get(&url, &[]).await;
    assert!(
        again.cache_status().contains("fwd-status=304"),
        "{:?}",
        again.headers
    );
    assert_eq!(origin.count("/exp0v"), 2);
}

#[tokio::test]
async fn heuristic_freshness_is_a_tenth_of_the_time_since_last_modified() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache }").await;
    let now = SystemTime::now();
    let url = gw.url(
        "web",
        &at(
            "/heur",
            &[
                ("cc", ""),
                ("h.date", &http_date(now, 0)),
                ("h.last-modified", &http_date(now, -100)),
            ],
        ),
    );
    let first = get(&url, &[]).await;
    assert!(
        first.cache_status().contains("stored"),
        "{:?}",
        first.headers
    );
    let hit = get(&url, &[]).await;
    assert!(hit.is_hit(), "{:?}", hit.headers);
    let ttl = hit.ttl().unwrap();
    assert!((8..=10).contains(&ttl), "10% of 100 s: {:?}", hit.headers);
    assert_eq!(origin.count("/heur"), 1);
}

#[tokio::test]
async fn heuristic_max_zero_turns_heuristic_freshness_off() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache, heuristic_max: 0s }").await;
    let now = SystemTime::now();
    let lm = http_date(now, -100);
    let url = gw.url(
        "web",
        &at(
            "/noheur",
            &[
                ("cc", ""),
                ("h.date", &http_date(now, 0)),
                ("h.last-modified", &lm),
            ],
        ),
    );
    let first = get(&url, &[]).await;
    let again = get(&url, &[]).await;
    assert!(!again.is_hit(), "{:?}", again.headers);
    assert_eq!(origin.count("/noheur"), 2);
    // Stored for its validator: the second request asked conditionally.
    let seen = backend.seen();
    assert_eq!(
        seen[1]
            .headers
            .get("if-modified-since")
            .map(|v| v.to_str().unwrap()),
        Some(lm.as_str()),
        "{:?}",
        seen[1].headers
    );
    assert_eq!(again.text, first.text, "{:?}", again.headers);
}

#[tokio::test]
async fn default_ttl_gives_an_answer_without_freshness_a_lifetime() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache, default_ttl: 30s }").await;
    let url = gw.url("web", &at("/dttl", &[("cc", "")]));
    get(&url, &[]).await;
    let hit = get(&url, &[]).await;
    assert!(hit.is_hit(), "{:?}", hit.headers);
    assert!((29..=30).contains(&hit.ttl().unwrap()), "{:?}", hit.headers);
    // Not for a status that is not heuristically cacheable.
    let url = gw.url("web", &at("/dttl302", &[("cc", ""), ("status", "302")]));
    get(&url, &[]).await;
    assert!(!get(&url, &[]).await.is_hit());
    assert_eq!((origin.count("/dttl"), origin.count("/dttl302")), (1, 2));
}

#[tokio::test]
async fn vary_star_answers_are_never_stored() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache }").await;
    let url = gw.url("web", &at("/vstar", &[("h.vary", "*")]));
    let a = get(&url, &[]).await;
    assert!(
        a.cache_status().contains("detail=vary-star"),
        "{:?}",
        a.headers
    );
    assert!(!get(&url, &[]).await.is_hit());
    assert_eq!(origin.count("/vstar"), 2);
}

// ---------------------------------------------------------------------
// Request directives
// ---------------------------------------------------------------------

/// Stores `path` (max-age=60, ETag), then sends it again with `headers`:
/// the answer, and whether it went upstream.
async fn fresh_entry_then(path: &str, headers: &[(&str, &str)]) -> (Answer, bool, Vec<Seen>) {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache }").await;
    let url = gw.url("web", &at(path, &[("etag", "v1")]));
    let first = get(&url, &[]).await;
    assert!(
        first.cache_status().contains("stored"),
        "{:?}",
        first.headers
    );
    let a = get(&url, headers).await;
    assert_eq!(a.text, first.text, "{:?}", a.headers);
    (a, origin.count(path) == 2, backend.seen())
}

#[tokio::test]
async fn a_request_no_cache_revalidates_a_fresh_entry() {
    let (a, upstream, seen) = fresh_entry_then("/rnc", &[("cache-control", "no-cache")]).await;
    assert!(upstream, "{:?}", a.headers);
    assert!(a.cache_status().contains("fwd=request"), "{:?}", a.headers);
    assert_eq!(header_of(&seen[1].headers, "if-none-match"), "\"v1\"");
}

#[tokio::test]
async fn a_request_max_age_zero_revalidates_a_fresh_entry() {
    let (a, upstream, seen) = fresh_entry_then("/rma0", &[("cache-control", "max-age=0")]).await;
    assert!(upstream, "{:?}", a.headers);
    assert!(a.cache_status().contains("fwd=request"), "{:?}", a.headers);
    assert_eq!(header_of(&seen[1].headers, "if-none-match"), "\"v1\"");
}

#[tokio::test]
async fn min_fresh_within_the_remaining_lifetime_is_a_hit() {
    let (a, upstream, _) = fresh_entry_then("/mf10", &[("cache-control", "min-fresh=10")]).await;
    assert!(!upstream && a.is_hit(), "{:?}", a.headers);
}

#[tokio::test]
async fn min_fresh_beyond_the_remaining_lifetime_goes_upstream() {
    let (a, upstream, _) = fresh_entry_then("/mf120", &[("cache-control", "min-fresh=120")]).await;
    assert!(upstream && !a.is_hit(), "{:?}", a.headers);
}

#[tokio::test]
async fn pragma_no_cache_without_cache_control_revalidates() {
    let (a, upstream, _) = fresh_entry_then("/pragma", &[("pragma", "no-cache")]).await;
    assert!(upstream && !a.is_hit(), "{:?}", a.headers);
}

#[tokio::test]
async fn pragma_no_cache_is_ignored_beside_cache_control() {
    let (a, upstream, _) = fresh_entry_then(
        "/pragma-cc",
        &[("pragma", "no-cache"), ("cache-control", "max-stale=5")],
    )
    .await;
    assert!(!upstream && a.is_hit(), "{:?}", a.headers);
}

fn header_of<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name).map_or("", |v| v.to_str().unwrap())
}

#[tokio::test]
async fn max_stale_serves_a_stale_answer_without_asking_the_origin() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache }").await;
    let url = gw.url("web", &at("/ms", &[("cc", "max-age=1")]));
    let first = get(&url, &[]).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let a = get(&url, &[("cache-control", "max-stale=60")]).await;
    assert_eq!(a.text, first.text, "{:?}", a.headers);
    assert!(a.is_hit(), "{:?}", a.headers);
    assert!(
        a.cache_status().contains("detail=max-stale"),
        "{:?}",
        a.headers
    );
    assert!(a.ttl().unwrap() <= 0, "stale: {:?}", a.headers);
    assert_eq!(origin.count("/ms"), 1);
    // Without max-stale it is not served.
    let b = get(&url, &[]).await;
    assert!(!b.is_hit(), "{:?}", b.headers);
    assert_eq!(origin.count("/ms"), 2);
}

#[tokio::test]
async fn a_request_no_store_bypasses_the_cache_and_its_answer_is_not_stored() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache }").await;
    let url = gw.url("web", "/ns");
    let a = get(&url, &[("cache-control", "no-store")]).await;
    assert_eq!(a.status, 200);
    assert!(
        a.cache_status().contains("fwd=bypass") && a.cache_status().contains("detail=no-store"),
        "{:?}",
        a.headers
    );
    let b = get(&url, &[]).await;
    assert!(
        b.cache_status().contains("fwd=uri-miss"),
        "nothing was stored: {:?}",
        b.headers
    );
    assert_eq!(origin.count("/ns"), 2);
}

// ---------------------------------------------------------------------
// Authorization (§3.5)
// ---------------------------------------------------------------------

const AUTH: (&str, &str) = ("authorization", "Bearer t0ken");

#[tokio::test]
async fn an_authorized_answer_with_only_max_age_is_not_stored() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache }").await;
    let url = gw.url("web", "/auth");
    let a = get(&url, &[AUTH]).await;
    assert!(
        a.cache_status().contains("detail=authorization"),
        "{:?}",
        a.headers
    );
    get(&url, &[AUTH]).await;
    let c = get(&url, &[]).await;
    assert!(!c.is_hit(), "{:?}", c.headers);
    assert_eq!(origin.count("/auth"), 3);
}

#[tokio::test]
async fn public_or_s_maxage_lets_an_authorized_answer_be_stored_and_shared() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache }").await;
    for (path, cc) in [("/pub", "public, max-age=60"), ("/smaxage", "s-maxage=60")] {
        let url = gw.url("web", &at(path, &[("cc", cc)]));
        let a = get(&url, &[AUTH]).await;
        assert!(a.cache_status().contains("stored"), "{cc}: {:?}", a.headers);
        let b = get(&url, &[AUTH]).await;
        assert!(b.is_hit(), "{cc}: {:?}", b.headers);
        let c = get(&url, &[]).await;
        assert!(c.is_hit(), "{cc}: {:?}", c.headers);
        assert_eq!(origin.count(path), 1, "{cc}");
    }
}

#[tokio::test]
async fn an_authorized_request_is_not_served_an_answer_stored_without_public() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache }").await;
    let url = gw.url("web", "/shared");
    get(&url, &[]).await;
    assert!(get(&url, &[]).await.is_hit());
    let a = get(&url, &[AUTH]).await;
    assert!(!a.is_hit(), "{:?}", a.headers);
    assert_eq!(origin.count("/shared"), 2, "{:?}", a.headers);
    assert_eq!(a.text, "GET /shared #2", "{:?}", a.headers);
}

// ---------------------------------------------------------------------
// Set-Cookie
// ---------------------------------------------------------------------

#[tokio::test]
async fn answers_setting_a_cookie_are_not_stored_by_default() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache }").await;
    let url = gw.url("web", &at("/cookie", &[("h.set-cookie", "s=1")]));
    let a = get(&url, &[]).await;
    assert_eq!(a.header("set-cookie"), "s=1", "{:?}", a.headers);
    assert!(
        a.cache_status().contains("detail=set-cookie"),
        "{:?}",
        a.headers
    );
    let b = get(&url, &[]).await;
    assert!(!b.is_hit(), "{:?}", b.headers);
    assert_eq!(origin.count("/cookie"), 2);
}

#[tokio::test]
async fn store_set_cookie_keeps_the_answer_but_never_replays_the_cookie() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache, store_set_cookie: true }").await;
    let url = gw.url("web", &at("/cookie2", &[("h.set-cookie", "s=1")]));
    let a = get(&url, &[]).await;
    assert_eq!(a.header("set-cookie"), "s=1", "the first client gets it");
    assert!(a.cache_status().contains("stored"), "{:?}", a.headers);
    let b = get(&url, &[]).await;
    assert!(b.is_hit(), "{:?}", b.headers);
    assert!(
        !b.headers.contains_key("set-cookie"),
        "a stored cookie went to another client: {:?}",
        b.headers
    );
    assert_eq!(b.text, a.text);
    assert_eq!(origin.count("/cookie2"), 1);
}

// ---------------------------------------------------------------------
// Age
// ---------------------------------------------------------------------

#[tokio::test]
async fn an_answer_arriving_older_than_its_max_age_is_already_stale() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache }").await;
    let url = gw.url("web", &at("/old", &[("h.age", "100")]));
    get(&url, &[]).await;
    let b = get(&url, &[]).await;
    assert!(!b.is_hit(), "Age 100 > max-age 60: {:?}", b.headers);
    assert_eq!(origin.count("/old"), 2);
}

#[tokio::test]
async fn the_age_of_a_hit_counts_up_from_the_age_it_arrived_with() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache }").await;
    let young = gw.url("web", "/young");
    let aged = gw.url("web", &at("/aged", &[("h.age", "10")]));
    get(&young, &[]).await;
    get(&aged, &[]).await;
    let age = |a: &Answer| -> u64 { a.header("age").parse().unwrap() };
    let y0 = get(&young, &[]).await;
    assert!(y0.is_hit() && age(&y0) <= 1, "{:?}", y0.headers);
    let a0 = get(&aged, &[]).await;
    assert!(
        a0.is_hit() && (10..=11).contains(&age(&a0)),
        "{:?}",
        a0.headers
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let y1 = get(&young, &[]).await;
    assert!(age(&y1) >= 1, "{:?}", y1.headers);
    let a1 = get(&aged, &[]).await;
    assert!(age(&a1) >= 11, "{:?}", a1.headers);
    assert_eq!((origin.count("/young"), origin.count("/aged")), (1, 1));
}

// ---------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------

#[tokio::test]
async fn query_sort_makes_parameter_order_one_key() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache, key: { query: sort } }").await;
    let a = get(&gw.url("web", "/sort?a=1&b=2"), &[]).await;
    let b = get(&gw.url("web", "/sort?b=2&a=1"), &[]).await;
    assert!(b.is_hit(), "{:?}", b.headers);
    assert_eq!(a.text, b.text);
    let c = get(&gw.url("web", "/sort?b=3&a=1"), &[]).await;
    assert!(!c.is_hit(), "{:?}", c.headers);
    assert_eq!(origin.count("/sort"), 2);
}

#[tokio::test]
async fn query_keep_keeps_parameter_order_in_the_key() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache }").await;
    get(&gw.url("web", "/keep?a=1&b=2"), &[]).await;
    let b = get(&gw.url("web", "/keep?b=2&a=1"), &[]).await;
    assert!(!b.is_hit(), "{:?}", b.headers);
    assert_eq!(origin.count("/keep"), 2);
}

#[tokio::test]
async fn query_ignore_makes_every_query_one_key() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache, key: { query: ignore } }").await;
    let a = get(&gw.url("web", "/ign?x=1"), &[]).await;
    for q in ["/ign?x=2", "/ign", "/ign?y=1&x=1"] {
        let b = get(&gw.url("web", q), &[]).await;
        assert!(b.is_hit(), "{q}: {:?}", b.headers);
        assert_eq!(b.text, a.text, "{q}");
    }
    assert_eq!(origin.count("/ign"), 1);
}

#[tokio::test]
async fn ignore_params_leaves_tracking_parameters_out_of_the_key() {
    let (backend, origin) = origin().await;
    let gw = gateway(
        &backend,
        "{ type: cache, key: { ignore_params: [utm_source] } }",
    )
    .await;
    let a = get(&gw.url("web", "/utm?x=1&utm_source=mail"), &[]).await;
    for q in [
        "/utm?x=1",
        "/utm?utm_source=ads&x=1",
        "/utm?x=1&utm_source=",
    ] {
        let b = get(&gw.url("web", q), &[]).await;
        assert!(b.is_hit(), "{q}: {:?}", b.headers);
        assert_eq!(b.text, a.text, "{q}");
    }
    let c = get(&gw.url("web", "/utm?x=2&utm_source=mail"), &[]).await;
    assert!(!c.is_hit(), "{:?}", c.headers);
    assert_eq!(origin.count("/utm"), 2);
}

#[tokio::test]
async fn key_headers_keep_one_entry_per_tenant() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache, key: { headers: [x-tenant] } }").await;
    let url = gw.url("web", "/tenant");
    let acme = get(&url, &[("x-tenant", "acme")]).await;
    let globex = get(&url, &[("x-tenant", "globex")]).await;
    assert!(!globex.is_hit(), "{:?}", globex.headers);
    assert_ne!(acme.text, globex.text);
    let none = get(&url, &[]).await;
    assert!(
        !none.is_hit(),
        "no tenant is a third key: {:?}",
        none.headers
    );
    let again = get(&url, &[("x-tenant", "acme")]).await;
    assert!(again.is_hit(), "{:?}", again.headers);
    assert_eq!(again.text, acme.text);
    assert_eq!(origin.count("/tenant"), 3);
}

#[tokio::test]
async fn the_host_is_part_of_the_key() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache }").await;
    let url = gw.url("web", "/host");
    let a = get(&url, &[("host", "a.example")]).await;
    let b = get(&url, &[("host", "b.example")]).await;
    assert!(!b.is_hit(), "{:?}", b.headers);
    assert_ne!(a.text, b.text);
    // Host names are case-insensitive.
    let a2 = get(&url, &[("host", "A.Example")]).await;
    assert!(a2.is_hit(), "{:?}", a2.headers);
    assert_eq!(a2.text, a.text);
    assert_eq!(origin.count("/host"), 2);
}

// ---------------------------------------------------------------------
// HEAD
// ---------------------------------------------------------------------

#[tokio::test]
async fn a_head_after_a_get_is_answered_from_the_get_entry_without_a_body() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache }").await;
    let url = gw.url("web", "/head");
    let g = get(&url, &[]).await;
    let h = send("HEAD", &url, &[], None).await;
    assert_eq!(h.status, 200);
    assert!(h.is_hit(), "{:?}", h.headers);
    assert_eq!(
        h.header("content-length"),
        g.text.len().to_string(),
        "{:?}",
        h.headers
    );
    assert_eq!(h.text, "");
    assert_eq!(origin.count("/head"), 1);
    // On the wire: no body bytes after the head.
    let raw_answer = raw(
        gw.addr("web"),
        format!(
            "HEAD /head HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            gw.addr("web")
        )
        .as_bytes(),
        Duration::from_secs(3),
    )
    .await;
    assert!(raw_answer.ends_with("\r\n\r\n"), "{raw_answer}");
    assert!(
        raw_answer
            .to_ascii_lowercase()
            .contains("cache-status: portcullis; hit"),
        "{raw_answer}"
    );
}

#[tokio::test]
async fn a_head_miss_is_never_used_to_answer_a_get() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache }").await;
    let url = gw.url("web", "/headfirst");
    let h = send("HEAD", &url, &[], None).await;
    assert_eq!(h.status, 200, "{:?}", h.headers);
    let g = get(&url, &[]).await;
    assert_eq!(g.text, "GET /headfirst #2", "{:?}", g.headers);
    assert!(!g.is_hit(), "{:?}", g.headers);
    let g2 = get(&url, &[]).await;
    assert!(g2.is_hit(), "{:?}", g2.headers);
    assert_eq!(g2.text, g.text);
    assert_eq!(origin.count("/headfirst"), 2);
}

// ---------------------------------------------------------------------
// Range
// ---------------------------------------------------------------------

#[tokio::test]
async fn a_range_request_on_a_miss_passes_to_the_origin_and_its_206_is_not_stored() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache }").await;
    let url = gw.url("web", &at("/range", &[("ranges", "1"), ("etag", "r1")]));
    let part = get(&url, &[("range", "bytes=0-2")]).await;
    assert_eq!(part.status, 206, "{:?}", part.headers);
    assert_eq!(part.text, "GET");
    assert_eq!(
        header_of(&backend.seen()[0].headers, "range"),
        "bytes=0-2",
        "the origin saw the Range"
    );
    let whole = get(&url, &[]).await;
    assert_eq!(whole.status, 200);
    assert!(!whole.is_hit(), "the 206 was stored: {:?}", whole.headers);
    assert_eq!(whole.text, "GET /range #2");
    assert_eq!(origin.count("/range"), 2);
}

#[tokio::test]
async fn a_range_request_on_a_hit_is_answered_206_from_the_cache() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache }").await;
    let url = gw.url("web", &at("/range2", &[("ranges", "1"), ("etag", "r1")]));
    let whole = get(&url, &[]).await;
    let part = get(&url, &[("range", "bytes=4-9")]).await;
    assert_eq!(part.status, 206, "{:?}", part.headers);
    assert!(part.is_hit(), "{:?}", part.headers);
    assert_eq!(part.text, &whole.text[4..=9]);
    assert_eq!(
        part.header("content-range"),
        format!("bytes 4-9/{}", whole.text.len())
    );
    assert_eq!(origin.count("/range2"), 1);
    // A matching If-Range still gets the part.
    let part = get(&url, &[("range", "bytes=0-2"), ("if-range", "\"r1\"")]).await;
    assert_eq!((part.status, part.text.as_str()), (206, "GET"));
}

#[tokio::test]
async fn if_range_with_another_etag_gets_the_whole_answer_from_the_cache() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache }").await;
    let url = gw.url("web", &at("/ifrange", &[("ranges", "1"), ("etag", "r2")]));
    let whole = get(&url, &[]).await;
    let a = get(&url, &[("range", "bytes=0-2"), ("if-range", "\"r1\"")]).await;
    assert_eq!(a.status, 200, "{:?}", a.headers);
    assert_eq!(a.text, whole.text);
    assert!(!a.headers.contains_key("content-range"), "{:?}", a.headers);
    assert_eq!(origin.count("/ifrange"), 1);
}

#[tokio::test]
async fn a_range_request_on_a_stale_entry_revalidates_whole_and_answers_the_part() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache }").await;
    let url = gw.url(
        "web",
        &at(
            "/range3",
            &[("ranges", "1"), ("etag", "r3"), ("cc", "max-age=1")],
        ),
    );
    get(&url, &[]).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let part = get(&url, &[("range", "bytes=0-2")]).await;
    assert_eq!(
        (part.status, part.text.as_str()),
        (206, "GET"),
        "{:?}",
        part.headers
    );
    assert!(
        part.cache_status().contains("fwd-status=304"),
        "{:?}",
        part.headers
    );
    let seen = backend.seen();
    assert_eq!(origin.count("/range3"), 2);
    assert_eq!(header_of(&seen[1].headers, "if-none-match"), "\"r3\"");
    assert!(
        !seen[1].headers.contains_key("range"),
        "the revalidation asked for a part: {:?}",
        seen[1].headers
    );
}

// ---------------------------------------------------------------------
// Invalidation (§4.4)
// ---------------------------------------------------------------------

#[tokio::test]
async fn a_successful_post_forgets_the_url_and_a_failed_one_does_not() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache }").await;
    let url = gw.url("web", "/inv");
    get(&url, &[]).await;
    origin.fail_unsafe.store(true, Ordering::SeqCst);
    let failed = send("POST", &url, &[], Some("x")).await;
    assert_eq!(failed.status, 500);
    let a = get(&url, &[]).await;
    assert!(a.is_hit(), "a 500 forgot the entry: {:?}", a.headers);
    origin.fail_unsafe.store(false, Ordering::SeqCst);
    let ok = send("POST", &url, &[], Some("x")).await;
    assert_eq!(ok.status, 200);
    let b = get(&url, &[]).await;
    assert!(!b.is_hit(), "{:?}", b.headers);
    assert_eq!(b.text, "GET /inv #4");
}

#[tokio::test]
async fn location_and_content_location_on_the_same_host_are_forgotten_too() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache }").await;
    let host = gw.addr("web").to_string();
    for p in ["/loc-a", "/loc-b", "/loc-c"] {
        get(&gw.url("web", p), &[]).await;
        assert!(get(&gw.url("web", p), &[]).await.is_hit(), "{p}");
    }
    let post = gw.url(
        "web",
        &at(
            "/loc-new",
            &[
                ("h.location", "/loc-a"),
                ("h.content-location", &format!("http://{host}/loc-b")),
            ],
        ),
    );
    let p = send("POST", &post, &[], Some("x")).await;
    assert_eq!(p.status, 200, "{:?}", p.headers);
    for path in ["/loc-a", "/loc-b"] {
        let a = get(&gw.url("web", path), &[]).await;
        assert!(!a.is_hit(), "{path} was not forgotten: {:?}", a.headers);
        assert_eq!(origin.count(path), 2, "{path}");
    }
    let c = get(&gw.url("web", "/loc-c"), &[]).await;
    assert!(
        c.is_hit(),
        "an unrelated URL was forgotten: {:?}",
        c.headers
    );
}

#[tokio::test]
async fn location_on_another_host_is_not_forgotten() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache }").await;
    let url = gw.url("web", "/other");
    let other = [("host", "other.example")];
    get(&url, &other).await;
    assert!(get(&url, &other).await.is_hit());
    let post = gw.url(
        "web",
        &at(
            "/make",
            &[
                ("h.location", "http://other.example/other"),
                ("h.content-location", "http://other.example/other"),
            ],
        ),
    );
    let p = send("POST", &post, &[], Some("x")).await;
    assert_eq!(p.status, 200, "{:?}", p.headers);
    let a = get(&url, &other).await;
    assert!(
        a.is_hit(),
        "another host's entry was forgotten: {:?}",
        a.headers
    );
    assert_eq!(origin.count("/other"), 1);
}

#[tokio::test]
async fn a_location_is_forgotten_under_the_key_its_query_normalises_to() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache, key: { query: sort } }").await;
    let list = gw.url("web", "/list?a=1&b=2");
    get(&list, &[]).await;
    assert!(get(&list, &[]).await.is_hit());
    let post = gw.url("web", &at("/list-add", &[("h.location", "/list?b=2&a=1")]));
    let p = send("POST", &post, &[], Some("x")).await;
    assert_eq!(p.status, 200, "{:?}", p.headers);
    let a = get(&list, &[]).await;
    assert!(
        !a.is_hit(),
        "Location /list?b=2&a=1 is the same key as /list?a=1&b=2 under query: sort: {:?}",
        a.headers
    );
    assert_eq!(origin.count("/list"), 2);
}

#[tokio::test]
async fn a_successful_unsafe_request_forgets_every_keyed_variant_of_the_url() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache, key: { headers: [x-tenant] } }").await;
    let url = gw.url("web", "/tenant-doc");
    let other = gw.url("web", "/tenant-doc2");
    for t in ["acme", "globex"] {
        get(&url, &[("x-tenant", t)]).await;
        get(&other, &[("x-tenant", t)]).await;
    }
    let put = send("PUT", &url, &[("x-tenant", "acme")], Some("x")).await;
    assert_eq!(put.status, 200, "{:?}", put.headers);
    for t in ["acme", "globex"] {
        let a = get(&url, &[("x-tenant", t)]).await;
        assert!(!a.is_hit(), "{t}: {:?}", a.headers);
        let b = get(&other, &[("x-tenant", t)]).await;
        assert!(
            b.is_hit(),
            "{t}: another URL was forgotten: {:?}",
            b.headers
        );
    }
    assert_eq!(origin.count("/tenant-doc"), 5);
}

// ---------------------------------------------------------------------
// POST caching
// ---------------------------------------------------------------------

#[tokio::test]
async fn listed_post_answers_with_max_age_are_reused_for_the_same_body() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache, methods: [GET, HEAD, POST] }").await;
    let url = gw.url("web", "/search");
    let a = send("POST", &url, &[], Some("q=cats")).await;
    assert!(a.cache_status().contains("stored"), "{:?}", a.headers);
    let b = send("POST", &url, &[], Some("q=cats")).await;
    assert!(b.is_hit(), "{:?}", b.headers);
    assert_eq!(b.text, a.text);
    assert_eq!(origin.count("/search"), 1);
    let c = send("POST", &url, &[], Some("q=dogs")).await;
    assert!(!c.is_hit(), "{:?}", c.headers);
    assert_eq!(c.text, "POST /search #2 q=dogs");
    // A POST answer never answers a GET.
    let g = get(&url, &[]).await;
    assert_eq!(g.text, "GET /search #3", "{:?}", g.headers);
}

#[tokio::test]
async fn post_answers_are_never_stored_unless_post_is_listed() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache }").await;
    let url = gw.url("web", "/search2");
    for n in 1..=2 {
        let a = send("POST", &url, &[], Some("q=cats")).await;
        assert_eq!(
            a.text,
            format!("POST /search2 #{n} q=cats"),
            "{:?}",
            a.headers
        );
        assert!(!a.is_hit(), "{:?}", a.headers);
    }
    assert_eq!(origin.count("/search2"), 2);
}

#[tokio::test]
async fn a_successful_post_forgets_the_get_entry_even_when_post_is_cached() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache, methods: [GET, HEAD, POST] }").await;
    let get_url = gw.url("web", "/cart");
    get(&get_url, &[]).await;
    assert!(get(&get_url, &[]).await.is_hit());
    let p = send("POST", &get_url, &[], Some("add=1")).await;
    assert_eq!(p.status, 200, "{:?}", p.headers);
    let a = get(&get_url, &[]).await;
    assert!(
        !a.is_hit(),
        "a successful POST /cart left GET /cart in the cache: {:?}",
        a.headers
    );
    assert_eq!(origin.count("/cart"), 3);
}

#[tokio::test]
async fn a_successful_delete_forgets_the_urls_cached_post_answers() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache, methods: [GET, HEAD, POST] }").await;
    let url = gw.url("web", "/doc");
    send("POST", &url, &[], Some("q=1")).await;
    assert!(send("POST", &url, &[], Some("q=1")).await.is_hit());
    let d = send("DELETE", &url, &[], None).await;
    assert_eq!(d.status, 200, "{:?}", d.headers);
    let a = send("POST", &url, &[], Some("q=1")).await;
    assert!(
        !a.is_hit(),
        "POST /doc was answered from the cache after DELETE /doc: {:?}",
        a.headers
    );
    assert_eq!(origin.count("/doc"), 3);
}

// ---------------------------------------------------------------------
// max_entry_size
// ---------------------------------------------------------------------

#[tokio::test]
async fn an_answer_over_max_entry_size_streams_whole_and_is_not_stored() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache, max_entry_size: 1KiB }").await;
    let url = gw.url("web", &at("/big", &[("size", "4096")]));
    let a = get(&url, &[]).await;
    assert_eq!(a.text.len(), 4096, "{:?}", a.headers);
    assert!(
        a.cache_status().contains("detail=too-big"),
        "{:?}",
        a.headers
    );
    let b = get(&url, &[]).await;
    assert_eq!(b.text.len(), 4096);
    assert!(!b.is_hit(), "{:?}", b.headers);
    assert_eq!(origin.count("/big"), 2);
    // A small one is stored under the same policy.
    let small = gw.url("web", &at("/small", &[("size", "512")]));
    get(&small, &[]).await;
    assert!(get(&small, &[]).await.is_hit());
}

#[tokio::test]
async fn a_chunked_answer_over_max_entry_size_streams_whole_and_is_not_stored() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache, max_entry_size: 1KiB }").await;
    let url = gw.url("web", &at("/bigc", &[("size", "4096"), ("chunked", "1")]));
    let a = get(&url, &[]).await;
    assert_eq!(a.text.len(), 4096, "{:?}", a.headers);
    assert!(
        !a.headers.contains_key("content-length"),
        "the origin's answer was chunked: {:?}",
        a.headers
    );
    let b = get(&url, &[]).await;
    assert_eq!(b.text.len(), 4096);
    assert!(!b.is_hit(), "{:?}", b.headers);
    assert_eq!(origin.count("/bigc"), 2);
    // A chunked one under the bound is stored.
    let small = gw.url("web", &at("/smallc", &[("size", "1000"), ("chunked", "1")]));
    get(&small, &[]).await;
    let s = get(&small, &[]).await;
    assert!(s.is_hit(), "{:?}", s.headers);
    assert_eq!(s.text.len(), 1000);
}

// ---------------------------------------------------------------------
// Collapsing
// ---------------------------------------------------------------------

#[tokio::test]
async fn a_collapsed_request_waits_no_longer_than_lock_timeout() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache, lock_timeout: 200ms }").await;
    let url = gw.url("web", &at("/slowlock", &[("delay_ms", "1000")]));
    let leader = tokio::spawn({
        let url = url.clone();
        async move { get(&url, &[]).await }
    });
    assert!(
        eventually(Duration::from_secs(2), || origin.count("/slowlock") == 1).await,
        "the leader reached the origin"
    );
    let sent = Instant::now();
    let follower = get(&url, &[]).await;
    let arrivals = origin.arrivals("/slowlock");
    assert_eq!(arrivals.len(), 2, "the follower went upstream itself");
    let waited = arrivals[1].saturating_duration_since(sent);
    assert!(
        waited >= Duration::from_millis(150) && waited < Duration::from_millis(700),
        "the follower reached the origin {waited:?} after it was sent"
    );
    assert!(!follower.cache_status().contains("collapsed"));
    assert_eq!(follower.text, "GET /slowlock #2");
    let leader = leader.await.unwrap();
    assert_eq!(leader.text, "GET /slowlock #1");
}

#[tokio::test]
async fn an_uncacheable_answer_sends_the_waiting_requests_upstream_themselves() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache }").await;
    let url = gw.url(
        "web",
        &at(
            "/private",
            &[("cc", "private, max-age=60"), ("delay_ms", "300")],
        ),
    );
    let started = Instant::now();
    let leader = tokio::spawn({
        let url = url.clone();
        async move { get(&url, &[]).await }
    });
    assert!(eventually(Duration::from_secs(2), || origin.count("/private") == 1).await);
    let followers: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&url, &[]).await })
        })
        .collect();
    let mut texts = vec![leader.await.unwrap().text];
    for f in followers {
        let a = f.await.unwrap();
        assert!(
            a.cache_status().contains("detail=private") && !a.is_hit(),
            "{:?}",
            a.headers
        );
        texts.push(a.text);
    }
    texts.sort();
    assert_eq!(
        texts,
        (1..=4)
            .map(|n| format!("GET /private #{n}"))
            .collect::<Vec<_>>(),
        "each got its own answer"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the followers waited for the lock timeout: {:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------
// Metrics, reload
// ---------------------------------------------------------------------

#[tokio::test]
async fn metrics_count_hits_and_misses_by_route() {
    let (backend, _origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache }").await;
    let url = gw.url("web", "/metered");
    get(&url, &[]).await;
    assert!(get(&url, &[]).await.is_hit());
    let text = client()
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("portcullis_cache_requests_total"))
        .collect();
    for want in [
        r#"portcullis_cache_requests_total{route="all",result="hit"} 1"#,
        r#"portcullis_cache_requests_total{route="all",result="miss"} 1"#,
    ] {
        assert!(lines.contains(&want), "{want} not in {lines:#?}");
    }
}

#[tokio::test]
async fn a_reload_keeps_the_stored_answers() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache, max_size: 10MiB }").await;
    let url = gw.url("web", "/kept");
    let first = get(&url, &[]).await;
    assert!(get(&url, &[]).await.is_hit());
    // Another lock_timeout, and a header set on the route: same name and
    // size, so the same store.
    let config = policy_config(
        backend.addr,
        &[("edge", "{ type: cache, max_size: 10MiB, lock_timeout: 1s }")],
        "",
    )
    .replacen(
        "    upstream: app\n",
        "    response_headers: { set: { x-reloaded: \"yes\" } }\n    upstream: app\n",
        1,
    );
    gw.write_config(&config);
    let (status, answer) = post_reload(&gw).await;
    assert_eq!(status, 200, "{answer}");
    let a = get(&url, &[]).await;
    assert!(a.is_hit(), "the reload emptied the cache: {:?}", a.headers);
    assert_eq!(a.text, first.text);
    assert_eq!(origin.count("/kept"), 1);
    // The new snapshot is the one answering.
    let b = get(&gw.url("web", "/fresh-after-reload"), &[]).await;
    assert_eq!(b.header("x-reloaded"), "yes", "{:?}", b.headers);
}

// ---------------------------------------------------------------------
// Configuration mistakes
// ---------------------------------------------------------------------

/// Runs `portcullis check` on a file whose route uses the cache policy
/// `edge`, defined at line 12 (`  edge:`, `    type: cache` on line 13)
/// with the YAML lines `def` (indented four spaces) from line 14: the file
/// and every `(line, col, message)` error. Asserts the file is refused.
fn check_cache(def: &str) -> (String, String, Vec<(u32, u32, String)>) {
    let text = format!(
        "\
listeners:
  - name: web
    address: 127.0.0.1:0
routes:
  - name: all
    policies: [edge]
    upstream: app
upstreams:
  - name: app
    targets: [127.0.0.1:9]
policies:
  edge:
    type: cache
{def}"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("portcullis.yaml");
    std::fs::write(&file, &text).unwrap();
    let (ok, stdout, stderr) = run_cli("check", &["-c", file.to_str().unwrap()], "");
    assert!(!ok, "accepted:\n{text}\nstdout: {stdout}");
    let prefix = format!("{}:", file.display());
    let errors = stderr
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| {
            let mut parts = rest.splitn(3, ':');
            let line = parts.next()?.parse().ok()?;
            let col = parts.next()?.parse().ok()?;
            Some((line, col, parts.next()?.trim().to_string()))
        })
        .collect();
    (text, stderr, errors)
}

/// The line of the one error mentioning `needle`.
fn error_line(def: &str, needle: &str) -> (u32, String) {
    let (text, stderr, errors) = check_cache(def);
    assert_eq!(errors.len(), 1, "{stderr}\n{text}");
    let (line, _, message) = &errors[0];
    assert!(message.contains(needle), "{stderr}\n{text}");
    // Mistakes found when the policy is built name it; the parser's own
    // (an unknown field) stand at its line.
    assert!(
        message.contains("policy `edge`") || message.starts_with("unknown field"),
        "names the policy: {stderr}\n{text}"
    );
    (*line, stderr)
}

#[test]
fn a_max_entry_size_larger_than_max_size_is_refused_at_its_line() {
    let (line, stderr) = error_line(
        "    max_size: 1MiB\n    max_entry_size: 2MiB\n",
        "larger than max_size",
    );
    assert_eq!(line, 15, "{stderr}");
}

#[test]
fn an_unknown_cache_field_is_refused_at_the_policys_line() {
    let (line, stderr) = error_line("    max_sise: 1MiB\n", "unknown field `max_sise`");
    // Like every policy's unknown field (the `type` tag hides positions
    // below it): the policy's own line.
    assert_eq!(line, 12, "{stderr}");
}

#[test]
fn a_method_other_than_get_head_or_post_is_refused_at_load() {
    let (line, stderr) = error_line("    methods: [GET, PUT]\n", "`PUT`");
    assert!((12..=14).contains(&line), "{stderr}");
}

#[test]
fn a_key_header_that_is_not_a_header_name_is_refused_at_load() {
    let (line, stderr) = error_line("    key: { headers: [\"bad header\"] }\n", "`bad header`");
    assert!((12..=14).contains(&line), "{stderr}");
}

#[test]
fn list_item_errors_point_at_the_item_like_other_policies() {
    let (text, stderr, errors) = check_cache(
        "    methods:\n      - GET\n      - PUT\n    key:\n      headers:\n        - x-ok\n        - \"bad header\"\n",
    );
    let at = |needle: &str| {
        errors
            .iter()
            .find(|(_, _, m)| m.contains(needle))
            .map(|(l, _, _)| *l)
            .unwrap_or_else(|| panic!("no error with {needle}: {stderr}\n{text}"))
    };
    // compress and cors point at the item (`algorithms.1`): so should this.
    assert_eq!(at("`PUT`"), 16, "{stderr}\n{text}");
    assert_eq!(at("`bad header`"), 20, "{stderr}\n{text}");
}

#[test]
fn a_disk_tier_smaller_than_max_entry_size_is_refused_at_its_line() {
    let (line, stderr) = error_line(
        "    max_entry_size: 2MiB\n    disk: { path: cache-data, max_size: 1MiB }\n",
        "disk.max_size",
    );
    assert!((12..=16).contains(&line), "{stderr}");
}

#[test]
fn a_redis_tier_that_could_hold_nothing_is_refused() {
    let (line, stderr) = error_line("    redis: { max_entry_size: 0 }\n", "redis.max_entry_size");
    assert!((12..=15).contains(&line), "{stderr}");
}
