//! The `cors` policy: preflights answered by the gateway (204 with the
//! `Access-Control-Allow-*` headers, or 403 without them) and never sent
//! upstream; `Access-Control-Allow-Origin` and `Vary: Origin` on every
//! answer to an allowed actual request, including a later policy's 401 and
//! the gateway's 502.

use std::net::SocketAddr;

use http::StatusCode;
use hyper::body::Incoming;

use crate::common::*;

const APP: &str = "https://app.example.com";

/// `method url` with `headers`: status, headers and body text.
async fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap, String) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = client().request(method, url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    let h = r.headers().clone();
    (status, h, r.text().await.unwrap())
}

/// A preflight from `origin` asking for `method` and `headers`.
async fn preflight(
    url: &str,
    origin: &str,
    method: &str,
    headers: Option<&str>,
) -> (StatusCode, http::HeaderMap, String) {
    let mut h = vec![
        ("origin", origin),
        ("access-control-request-method", method),
    ];
    if let Some(asked) = headers {
        h.push(("access-control-request-headers", asked));
    }
    send("OPTIONS", url, &h).await
}

/// The header's lines, as text.
fn all(h: &http::HeaderMap, name: &str) -> Vec<String> {
    h.get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

fn no_cors_headers(h: &http::HeaderMap) -> bool {
    !h.keys().any(|k| k.as_str().starts_with("access-control-"))
}

/// The policy the tests share, with credentials.
const STRICT: &str = "{ type: cors, allow_origins: [\"https://app.example.com\", \"https://*.example.net\"], \
     allow_methods: [GET, PUT], allow_headers: [x-trace, content-type], expose_headers: [x-total], \
     max_age: 10m, allow_credentials: true }";

async fn strict(backend: SocketAddr) -> TestGateway {
    TestGateway::start(&policy_config(backend, &[("cors", STRICT)], "")).await
}

#[tokio::test]
async fn an_allowed_preflight_is_answered_204_and_never_reaches_the_upstream() {
    let backend = Backend::echo("app").await;
    let gw = strict(backend.addr).await;
    let url = gw.url("web", "/orders");

    let (status, h, body) = preflight(&url, APP, "PUT", Some("content-type,x-trace")).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(h["access-control-allow-origin"], APP);
    assert_eq!(h["access-control-allow-methods"], "GET, PUT");
    assert_eq!(h["access-control-allow-headers"], "content-type,x-trace");
    assert_eq!(h["access-control-max-age"], "600");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(
        h["vary"],
        "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
    );
    assert!(h.get("access-control-expose-headers").is_none());

    // A subdomain of the wildcard entry, at any depth.
    let (status, h, _) = preflight(&url, "https://a.b.example.net", "GET", None).await;
    assert_eq!(status, 204);
    assert_eq!(h["access-control-allow-origin"], "https://a.b.example.net");
    assert!(h.get("access-control-allow-headers").is_none());

    assert!(backend.seen().is_empty(), "{:?}", backend.seen());
}

#[tokio::test]
async fn a_preflight_refused_by_origin_method_or_header_is_403_without_cors_headers() {
    let backend = Backend::echo("app").await;
    let gw = strict(backend.addr).await;
    let url = gw.url("web", "/orders");

    for (origin, method, headers, why) in [
        ("https://evil.example", "GET", None, "origin"),
        ("https://example.net", "GET", None, "origin"),
        ("http://app.example.com", "GET", None, "origin"),
        (APP, "DELETE", None, "method"),
        (APP, "PUT", Some("x-trace, authorization"), "header"),
    ] {
        let (status, h, body) = preflight(&url, origin, method, headers).await;
        let v = assert_problem(status, &h, &body, 403);
        assert!(v["detail"].as_str().unwrap().contains(why), "{body}");
        assert!(no_cors_headers(&h), "{origin} {method}: {h:?}");
    }
    assert!(backend.seen().is_empty(), "{:?}", backend.seen());
}

#[tokio::test]
async fn an_options_without_a_requested_method_goes_upstream() {
    let backend = Backend::echo("app").await;
    let gw = strict(backend.addr).await;
    let (status, h, _) = send("OPTIONS", &gw.url("web", "/x"), &[("origin", APP)]).await;
    assert_eq!(status, 200);
    assert_eq!(h["access-control-allow-origin"], APP);
    assert_eq!(backend.seen().len(), 1);
    assert_eq!(backend.seen()[0].method, "OPTIONS");
}

#[tokio::test]
async fn an_allowed_actual_request_gets_the_origin_credentials_and_exposed_headers() {
    let backend = Backend::echo("app").await;
    let gw = strict(backend.addr).await;
    let url = gw.url("web", "/orders");

    let (status, h, _) = send("GET", &url, &[("origin", APP)]).await;
    assert_eq!(status, 200);
    assert_eq!(h["access-control-allow-origin"], APP);
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-expose-headers"], "x-total");
    assert_eq!(all(&h, "vary"), ["Origin"]);
    assert!(h.get("access-control-allow-methods").is_none());

    // No Origin, or another one: no CORS headers, but the answer still
    // varies on Origin for caches.
    for headers in [&[][..], &[("origin", "https://evil.example")][..]] {
        let (status, h, _) = send("GET", &url, headers).await;
        assert_eq!(status, 200);
        assert!(no_cors_headers(&h), "{headers:?}: {h:?}");
        assert_eq!(all(&h, "vary"), ["Origin"], "{headers:?}");
    }
}

#[tokio::test]
async fn any_origin_without_credentials_sends_a_star() {
    let backend = Backend::echo("app").await;
    let gw = TestGateway::start(&policy_config(
        backend.addr,
        &[(
            "cors",
            "{ type: cors, allow_origins: [\"*\"], allow_headers: [\"*\"] }",
        )],
        "",
    ))
    .await;
    let url = gw.url("web", "/");

    let (status, h, _) = send("GET", &url, &[("origin", "https://anyone.example")]).await;
    assert_eq!(status, 200);
    assert_eq!(h["access-control-allow-origin"], "*");
    assert!(h.get("access-control-allow-credentials").is_none());
    assert!(h.get("vary").is_none(), "{h:?}");

    let (status, h, _) =
        preflight(&url, "https://anyone.example", "POST", Some("x-anything")).await;
    assert_eq!(status, 204);
    assert_eq!(h["access-control-allow-origin"], "*");
    assert_eq!(h["access-control-allow-methods"], "GET, HEAD, POST");
    assert_eq!(h["access-control-allow-headers"], "x-anything");
    assert!(h.get("access-control-max-age").is_none());
}

#[tokio::test]
async fn headers_go_on_a_401_from_a_later_api_key_policy_and_preflights_need_no_key() {
    let backend = Backend::echo("app").await;
    let consumers = format!(
        "consumers:\n  - name: acme\n    api_keys: [\"{}\"]\n",
        portcullis::policy::consumer::hash_key(b"acme-key")
    );
    // api_key listed first: the phases, not the list, put cors before it.
    let gw = TestGateway::start(&policy_config(
        backend.addr,
        &[("keys", "{ type: api_key }"), ("cors", STRICT)],
        &consumers,
    ))
    .await;
    let url = gw.url("web", "/orders");

    let (status, h, body) = send("GET", &url, &[("origin", APP)]).await;
    assert_problem(status, &h, &body, 401);
    assert_eq!(h["access-control-allow-origin"], APP);
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert!(all(&h, "vary").contains(&"Origin".to_string()), "{h:?}");

    let (status, h, _) = send("GET", &url, &[("origin", APP), ("x-api-key", "acme-key")]).await;
    assert_eq!(status, 200);
    assert_eq!(h["access-control-allow-origin"], APP);

    let (status, h, _) = preflight(&url, APP, "GET", None).await;
    assert_eq!(status, 204);
    assert_eq!(h["access-control-allow-origin"], APP);
    assert_eq!(backend.seen().len(), 1);
}

#[tokio::test]
async fn headers_go_on_the_gateways_502() {
    let dead = dead_addr().await;
    let gw = strict(dead).await;
    let (status, h, body) = send("GET", &gw.url("web", "/"), &[("origin", APP)]).await;
    assert_problem(status, &h, &body, 502);
    assert_eq!(h["access-control-allow-origin"], APP);
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(all(&h, "vary"), ["Origin"]);
}

#[tokio::test]
async fn the_upstreams_vary_is_kept_and_its_cors_headers_replaced() {
    let backend = Backend::start(|req: http::Request<Incoming>| async move {
        let mut r = echo_response("app", req);
        let h = r.headers_mut();
        h.append("vary", "Accept-Encoding".parse().unwrap());
        h.insert("access-control-allow-origin", "*".parse().unwrap());
        h.insert("access-control-allow-methods", "DELETE".parse().unwrap());
        r
    })
    .await;
    let gw = strict(backend.addr).await;
    let url = gw.url("web", "/");

    let (_, h, _) = send("GET", &url, &[("origin", APP)]).await;
    assert_eq!(all(&h, "vary"), ["Accept-Encoding", "Origin"]);
    assert_eq!(all(&h, "access-control-allow-origin"), [APP]);
    assert!(h.get("access-control-allow-methods").is_none());

    let (_, h, _) = send("GET", &url, &[("origin", "https://evil.example")]).await;
    assert!(no_cors_headers(&h), "{h:?}");
    assert_eq!(all(&h, "vary"), ["Accept-Encoding", "Origin"]);
}
