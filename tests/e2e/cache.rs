//! `cache`: answers stored and served again with Age and Cache-Status,
//! revalidated with 304, identical misses collapsed into one upstream
//! request, stale answers served while refreshing and while the origin
//! fails, URLs forgotten after unsafe requests, purges through the admin
//! API.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;

use crate::common::*;

/// What the test backend does per path; every answer carries the count of
/// requests that path has had, so a test sees whether it went upstream.
#[derive(Default)]
struct Origin {
    hits: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    total: AtomicUsize,
    failing: std::sync::atomic::AtomicBool,
}

impl Origin {
    fn count(&self, path: &str) -> usize {
        *self.hits.lock().unwrap().get(path).unwrap_or(&0)
    }
}

/// A backend whose headers come from the query: `/x?cc=max-age%3D60`
/// answers with that Cache-Control; `etag=...`, `delay_ms=...`,
/// `vary=...`, `tag=...`, `status=...` likewise. A request carrying a
/// matching If-None-Match gets 304.
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
            s.total.fetch_add(1, Ordering::SeqCst);
            let params: Vec<(String, String)> =
                form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                    .into_owned()
                    .collect();
            let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            if let Some(ms) = param("delay_ms") {
                tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
            }
            if s.failing.load(Ordering::SeqCst) {
                let mut r = Response::new(body("down"));
                *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                return r;
            }
            let etag = param("etag");
            if let (Some(etag), Some(inm)) = (&etag, req.headers().get("if-none-match"))
                && inm.to_str().unwrap().contains(etag.as_str())
            {
                let mut r = Response::new(body(""));
                *r.status_mut() = http::StatusCode::NOT_MODIFIED;
                r.headers_mut().insert(
                    "etag",
                    HeaderValue::from_str(&format!("\"{etag}\"")).unwrap(),
                );
                r.headers_mut().insert("x-count", HeaderValue::from(n));
                if let Some(cc) = param("cc") {
                    r.headers_mut()
                        .insert("cache-control", HeaderValue::from_str(&cc).unwrap());
                }
                return r;
            }
            let lang = req
                .headers()
                .get("accept-language")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            let mut r = Response::new(body(format!("{path} #{n} {lang}")));
            let h = r.headers_mut();
            h.insert("content-type", HeaderValue::from_static("text/plain"));
            h.insert("x-count", HeaderValue::from(n));
            if let Some(cc) = param("cc") {
                h.insert("cache-control", HeaderValue::from_str(&cc).unwrap());
            }
            if let Some(etag) = etag {
                h.insert(
                    "etag",
                    HeaderValue::from_str(&format!("\"{etag}\"")).unwrap(),
                );
            }
            if let Some(vary) = param("vary") {
                h.insert("vary", HeaderValue::from_str(&vary).unwrap());
            }
            if let Some(tag) = param("tag") {
                h.insert("cache-tag", HeaderValue::from_str(&tag).unwrap());
            }
            if let Some(status) = param("status") {
                *r.status_mut() = http::StatusCode::from_u16(status.parse().unwrap()).unwrap();
            }
            if req.method() == http::Method::POST || req.method() == http::Method::DELETE {
                *r.body_mut() = body(format!("{} done", req.method()));
            }
            r
        }
    })
    .await;
    (backend, state)
}

async fn gateway(backend: &Backend, cache: &str) -> TestGateway {
    TestGateway::start(&policy_config(backend.addr, &[("edge", cache)], "")).await
}

fn header<'a>(h: &'a http::HeaderMap, name: &str) -> &'a str {
    h.get(name).map_or("", |v| v.to_str().unwrap())
}

async fn fetch(url: &str, headers: &[(&str, &str)]) -> (u16, http::HeaderMap, String) {
    let mut req = client().get(url);
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let h = resp.headers().clone();
    (status, h, resp.text().await.unwrap())
}

#[tokio::test]
async fn a_fresh_answer_is_served_from_the_cache_with_age_and_cache_status() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache }").await;
    let url = gw.url("web", "/a?cc=max-age%3D60");
    let (s, h, first) = fetch(&url, &[]).await;
    assert_eq!(s, 200);
    assert!(header(&h, "cache-status").contains("fwd=uri-miss"), "{h:?}");
    assert!(header(&h, "cache-status").contains("stored"), "{h:?}");
    let (s, h, second) = fetch(&url, &[]).await;
    assert_eq!(s, 200);
    assert_eq!(first, second);
    assert_eq!(origin.count("/a"), 1);
    assert!(
        header(&h, "cache-status").starts_with("portcullis; hit; ttl="),
        "{h:?}"
    );
    assert!(header(&h, "age").parse::<u64>().unwrap() <= 1);
    // The request id is the request's own, not the stored one's.
    assert_ne!(header(&h, "x-request-id"), "");
    // A different query is another key.
    let (_, _, other) = fetch(&gw.url("web", "/a?cc=max-age%3D60&x=1"), &[]).await;
    assert_ne!(other, first);
    assert_eq!(origin.count("/a"), 2);
}

#[tokio::test]
async fn uncacheable_answers_are_not_stored_and_say_why() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache }").await;
    for (query, why) in [
        ("cc=private%2C%20max-age%3D60", "private"),
        ("cc=no-store", "no-store"),
        ("status=500", "status"),
        ("", "no-freshness"),
    ] {
        let url = gw.url("web", &format!("/u?{query}"));
        let (_, h, _) = fetch(&url, &[]).await;
        assert!(
            header(&h, "cache-status").contains(&format!("detail={why}")),
            "{query}: {h:?}"
        );
        let before = origin.count("/u");
        fetch(&url, &[]).await;
        assert_eq!(
            origin.count("/u"),
            before + 1,
            "{query} was served from the cache"
        );
    }
}

#[tokio::test]
async fn a_stale_answer_is_revalidated_and_a_304_refreshes_it() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache }").await;
    let url = gw.url("web", "/r?cc=max-age%3D1&etag=v1");
    let (_, _, first) = fetch(&url, &[]).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (s, h, again) = fetch(&url, &[]).await;
    assert_eq!(s, 200);
    assert_eq!(again, first, "the stored body is served after a 304");
    assert!(
        header(&h, "cache-status").contains("fwd-status=304"),
        "{h:?}"
    );
    assert_eq!(origin.count("/r"), 2);
    let seen = backend.seen();
    assert_eq!(header(&seen[1].headers, "if-none-match"), "\"v1\"");
    // Fresh again after the 304: served without asking.
    let (_, h, _) = fetch(&url, &[]).await;
    assert!(header(&h, "cache-status").contains("hit"), "{h:?}");
    assert_eq!(origin.count("/r"), 2);
}

#[tokio::test]
async fn a_clients_conditional_request_is_answered_304_from_the_cache() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache }").await;
    let url = gw.url("web", "/c?cc=max-age%3D60&etag=v7");
    fetch(&url, &[]).await;
    let (s, h, text) = fetch(&url, &[("if-none-match", "\"v7\"")]).await;
    assert_eq!(s, 304);
    assert_eq!(text, "");
    assert_eq!(header(&h, "etag"), "\"v7\"");
    let (s, h, text) = fetch(&url, &[("range", "bytes=0-1")]).await;
    assert_eq!(s, 206);
    assert_eq!(text, "/c");
    assert!(
        header(&h, "content-range").starts_with("bytes 0-1/"),
        "{h:?}"
    );
    assert_eq!(origin.count("/c"), 1);
}

#[tokio::test]
async fn a_hundred_concurrent_misses_make_one_upstream_request() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache }").await;
    let url = gw.url("web", "/slow?cc=max-age%3D60&delay_ms=300");
    let c = client();
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (c, url) = (c.clone(), url.clone());
            tokio::spawn(async move {
                let resp = c.get(&url).send().await.unwrap();
                let status = resp.status().as_u16();
                let cs = header(resp.headers(), "cache-status").to_string();
                (status, cs, resp.text().await.unwrap())
            })
        })
        .collect();
    let mut collapsed = 0;
    for t in tasks {
        let (status, cs, text) = t.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(text, "/slow #1 ");
        collapsed += usize::from(cs.contains("collapsed"));
    }
    assert_eq!(origin.count("/slow"), 1);
    assert!(collapsed >= 90, "{collapsed} of 100 collapsed");
}

#[tokio::test]
async fn stale_while_revalidate_answers_at_once_and_refreshes_once() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache }").await;
    let url = gw.url(
        "web",
        "/swr?cc=max-age%3D1%2C%20stale-while-revalidate%3D30&delay_ms=200",
    );
    fetch(&url, &[]).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let started = std::time::Instant::now();
    let mut answers = Vec::new();
    for _ in 0..5 {
        answers.push(fetch(&url, &[]).await);
    }
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "stale answers wait for nothing"
    );
    for (s, h, text) in &answers {
        assert_eq!(*s, 200);
        assert_eq!(text, "/swr #1 ");
        assert!(
            header(h, "cache-status").contains("stale-while-revalidate"),
            "{h:?}"
        );
    }
    assert!(
        eventually(Duration::from_secs(3), || origin.count("/swr") == 2).await,
        "one background refresh"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(origin.count("/swr"), 2, "exactly one refresh");
    let (_, h, text) = fetch(&url, &[]).await;
    assert_eq!(text, "/swr #2 ");
    assert!(header(&h, "cache-status").contains("hit"), "{h:?}");
}

#[tokio::test]
async fn stale_if_error_answers_when_the_origin_fails() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache, stale_if_error: 1m }").await;
    let url = gw.url("web", "/sie?cc=max-age%3D1");
    let (_, _, first) = fetch(&url, &[]).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    origin.failing.store(true, Ordering::SeqCst);
    let (s, h, text) = fetch(&url, &[]).await;
    assert_eq!(s, 200);
    assert_eq!(text, first);
    assert!(
        header(&h, "cache-status").contains("stale-if-error"),
        "{h:?}"
    );
    // With the origin gone altogether too.
    backend.stop();
    let (s, _, text) = fetch(&url, &[]).await;
    assert_eq!((s, text), (200, first));
}

#[tokio::test]
async fn vary_keeps_one_answer_per_header_value() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache }").await;
    let url = gw.url("web", "/v?cc=max-age%3D60&vary=accept-language");
    let (_, _, en) = fetch(&url, &[("accept-language", "en")]).await;
    let (_, _, fr) = fetch(&url, &[("accept-language", "fr")]).await;
    assert_ne!(en, fr);
    let (_, h, en_again) = fetch(&url, &[("accept-language", "EN")]).await;
    assert_eq!(en_again, en);
    assert!(header(&h, "cache-status").contains("hit"));
    let (_, h, _) = fetch(&url, &[("accept-language", "de")]).await;
    assert!(
        header(&h, "cache-status").contains("fwd=vary-miss"),
        "{h:?}"
    );
    assert_eq!(origin.count("/v"), 3);
}

#[tokio::test]
async fn a_successful_unsafe_request_forgets_the_url() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache }").await;
    let url = gw.url("web", "/item?cc=max-age%3D60");
    fetch(&url, &[]).await;
    fetch(&url, &[]).await;
    assert_eq!(origin.count("/item"), 1);
    let resp = client().delete(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    fetch(&url, &[]).await;
    assert_eq!(origin.count("/item"), 3, "GET after DELETE goes upstream");
}

#[tokio::test]
async fn only_if_cached_gets_504_on_a_miss() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache }").await;
    let url = gw.url("web", "/o?cc=max-age%3D60");
    let (s, h, text) = fetch(&url, &[("cache-control", "only-if-cached")]).await;
    assert_problem(http::StatusCode::from_u16(s).unwrap(), &h, &text, 504);
    assert_eq!(origin.count("/o"), 0);
    fetch(&url, &[]).await;
    let (s, _, _) = fetch(&url, &[("cache-control", "only-if-cached")]).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn the_admin_api_purges_by_key_prefix_host_and_tag() {
    let (backend, origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache }").await;
    let addr = gw.addr("web");
    let paths = [
        "/shop/1?cc=max-age%3D60&tag=shop%2Cp1",
        "/shop/2?cc=max-age%3D60&tag=shop",
        "/blog/1?cc=max-age%3D60&tag=blog",
    ];
    let fill = || async {
        for p in paths {
            fetch(&gw.url("web", p), &[]).await;
        }
    };
    let upstream = || origin.total.load(Ordering::SeqCst);

    fill().await;
    let key = format!("http://{addr}{}", paths[0]);
    let (s, v) = purge_cache(&gw, &serde_json::json!({ "key": key }).to_string()).await;
    assert_eq!((s, v["purged"].as_u64()), (200, Some(1)), "{v}");
    let before = upstream();
    fill().await;
    assert_eq!(upstream(), before + 1, "only the purged key went upstream");

    let (_, v) = purge_cache(&gw, r#"{"prefix": "/shop/"}"#).await;
    assert_eq!(v["purged"], 2, "{v}");
    let (_, v) = purge_cache(&gw, r#"{"tag": "blog"}"#).await;
    assert_eq!(v["purged"], 1, "{v}");
    fill().await;
    let (_, v) = purge_cache(&gw, &format!(r#"{{"host": "{addr}"}}"#)).await;
    assert_eq!(v["purged"], 3, "{v}");
    let (_, v) = purge_cache(&gw, r#"{"tag": "nothing-has-this"}"#).await;
    assert_eq!(v["purged"], 0, "{v}");

    // Bad requests say what is wrong.
    for bad in [
        "not json",
        r#"{"key": "a", "tag": "b"}"#,
        "{}",
        r#"{"prefix": "no-slash"}"#,
        r#"{"colour": "red"}"#,
    ] {
        let (s, v) = purge_cache(&gw, bad).await;
        assert_eq!(s, 400, "{bad}: {v}");
        assert!(v["detail"].is_string(), "{v}");
    }
    let (s, _) = purge_cache(&gw, r#"{"tag": "x", "cache": "nope"}"#).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn the_admin_api_shows_size_hit_ratio_and_top_keys() {
    let (backend, _origin) = origin().await;
    let gw = gateway(&backend, "{ type: cache, max_size: 1MiB }").await;
    let url = gw.url("web", "/top?cc=max-age%3D60");
    for _ in 0..4 {
        fetch(&url, &[]).await;
    }
    let v = admin_json(&gw, "/api/v1/cache").await;
    let cache = &v["caches"][0];
    assert_eq!(cache["name"], "edge", "{v}");
    assert_eq!(cache["tiers"]["memory"]["entries"], 1, "{v}");
    assert_eq!(cache["tiers"]["memory"]["max_bytes"], 1 << 20, "{v}");
    assert!(
        cache["tiers"]["memory"]["bytes"].as_u64().unwrap() > 0,
        "{v}"
    );
    assert_eq!(cache["hits"], 3, "{v}");
    assert_eq!(cache["misses"], 1, "{v}");
    assert_eq!(cache["hit_ratio"], 0.75, "{v}");
    assert_eq!(cache["top_keys"][0]["hits"], 3, "{v}");
    assert!(
        cache["top_keys"][0]["key"]
            .as_str()
            .unwrap()
            .ends_with("/top?cc=max-age%3D60"),
        "{v}"
    );
    let metrics = client()
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        r#"portcullis_cache_requests_total{route="all",result="hit"} 3"#,
        r#"portcullis_cache_requests_total{route="all",result="miss"} 1"#,
        r#"portcullis_cache_entries{cache="edge",tier="memory"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
}

#[tokio::test]
async fn a_hit_is_compressed_once_and_its_encoded_form_kept() {
    let text = "cached and compressed ".repeat(500);
    let body_text = text.clone();
    let backend = Backend::start(move |_req: Request<Incoming>| {
        let text = body_text.clone();
        async move {
            let mut r = Response::new(body(text));
            r.headers_mut()
                .insert("content-type", HeaderValue::from_static("text/plain"));
            r.headers_mut()
                .insert("cache-control", HeaderValue::from_static("max-age=60"));
            r.headers_mut()
                .insert("etag", HeaderValue::from_static("\"strong\""));
            r
        }
    })
    .await;
    let gw = TestGateway::start(&policy_config(
        backend.addr,
        &[
            ("edge", "{ type: cache }"),
            ("squeeze", "{ type: compress }"),
        ],
        "",
    ))
    .await;
    let url = gw.url("web", "/doc");
    // reqwest without its decoders: the raw encoded bytes come back.
    let raw = |enc: &'static str| {
        let url = url.clone();
        async move {
            let resp = client()
                .get(&url)
                .header("accept-encoding", enc)
                .send()
                .await
                .unwrap();
            let h = resp.headers().clone();
            (h, resp.bytes().await.unwrap())
        }
    };
    let gunzip = |b: &[u8]| {
        let mut out = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(b), &mut out).unwrap();
        out
    };
    let (h, miss) = raw("gzip").await;
    assert!(header(&h, "cache-status").contains("stored"), "{h:?}");
    assert_eq!(header(&h, "content-encoding"), "gzip");
    assert_eq!(gunzip(&miss), text);
    // The first hit encodes the stored body and keeps the result…
    let (h, first_hit) = raw("gzip").await;
    assert!(header(&h, "cache-status").contains("hit"), "{h:?}");
    assert_eq!(gunzip(&first_hit), text);
    assert_eq!(header(&h, "etag"), "W/\"strong\"");
    // …which later hits send as it is, with its length known.
    let (h, kept) = raw("gzip").await;
    assert_eq!(
        header(&h, "content-length"),
        kept.len().to_string(),
        "{h:?}"
    );
    assert_eq!(kept, first_hit);
    assert!(
        header(&h, "vary")
            .to_ascii_lowercase()
            .contains("accept-encoding"),
        "{h:?}"
    );
    // Another encoding is another kept form; no encoding is the stored body.
    let (h, br) = raw("br").await;
    assert_eq!(header(&h, "content-encoding"), "br");
    let mut decoded = Vec::new();
    brotli::BrotliDecompress(&mut &br[..], &mut decoded).unwrap();
    assert_eq!(String::from_utf8(decoded).unwrap(), text);
    let (h, plain) = raw("identity").await;
    assert_eq!(header(&h, "content-encoding"), "");
    assert_eq!(plain, text.as_bytes());
    assert_eq!(
        backend.seen().len(),
        1,
        "one upstream request for all of it"
    );
}

#[tokio::test]
async fn answers_the_upstream_did_not_make_say_so_in_cache_status() {
    let dead = dead_addr().await;
    let gw = TestGateway::start(&format!(
        r#"
listeners:
  - name: web
    address: "127.0.0.1:0"
routes:
  - name: direct
    match: {{ path: /direct }}
    policies: [edge]
    respond: {{ status: 200, body: "made here" }}
  - name: down
    policies: [edge]
    upstream: app
upstreams:
  - name: app
    targets: ["{dead}"]
policies:
  edge: {{ type: cache }}
"#
    ))
    .await;
    let (s, h, _) = fetch(&gw.url("web", "/direct"), &[]).await;
    assert_eq!(s, 200);
    assert_eq!(
        header(&h, "cache-status"),
        "portcullis; fwd=bypass; detail=not-upstream"
    );
    let (s, h, _) = fetch(&gw.url("web", "/anything"), &[]).await;
    assert_eq!(s, 502);
    assert_eq!(
        header(&h, "cache-status"),
        "portcullis; fwd=uri-miss; detail=upstream-error"
    );
    let (s, h, _) = fetch(&gw.url("web", "/x"), &[("cache-control", "only-if-cached")]).await;
    assert_eq!(s, 504);
    assert_eq!(
        header(&h, "cache-status"),
        "portcullis; fwd=miss; detail=only-if-cached"
    );
}
