//! Redirects: the `redirect` action keeps whatever it does not replace
//! (scheme, host, port, path, query), `https_redirect: true` on an http
//! listener, and request variables in `respond` bodies and headers.

use std::net::SocketAddr;

use crate::common::*;

/// GET `url` with `headers` without following redirects: status and Location.
async fn location(url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut req = client.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let loc = r
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (r.status().as_u16(), loc)
}

async fn gateway(backend: SocketAddr) -> TestGateway {
    TestGateway::start(&format!(
        r#"
listeners:
  - name: web
    address: "127.0.0.1:0"
routes:
  - name: to-https
    match: {{ path_prefix: /secure }}
    redirect: {{ scheme: https, status: 308 }}
  - name: docs
    match: {{ path_prefix: /docs }}
    redirect: {{ host: docs.example.com, status: 301 }}
  - name: moved
    match: {{ path_prefix: /old }}
    redirect: {{ path: "/new{{path}}", port: 8443, strip_query: true }}
  - name: hello
    match: {{ path: /hello }}
    respond:
      status: 200
      body: '{{"host": "{{host}}", "path": "{{path}}", "query": "{{query}}", "id": "{{request_id}}", "literal": "{{{{x}}}}"}}'
      headers: {{ content-type: application/json, x-tenant-was: "{{header.x-tenant}}", x-fixed: "{{not a variable}}", x-escaped: "{{{{y}}}}" }}
  - name: all
    upstream: app
upstreams:
  - name: app
    targets: ["{backend}"]
"#
    ))
    .await
}

#[tokio::test]
async fn a_redirect_keeps_what_it_does_not_replace() {
    let backend = Backend::echo("app").await;
    let gw = gateway(backend.addr).await;
    let url = |p: &str| gw.url("web", p);
    let host = [("host", "shop.example:8080")];
    // Another scheme drops the request's port (its default differs).
    assert_eq!(
        location(&url("/secure/cart?item=7&q=a%20b"), &host).await,
        (
            308,
            "https://shop.example/secure/cart?item=7&q=a%20b".into()
        )
    );
    // Another host keeps the scheme, the port, the path and the query.
    assert_eq!(
        location(&url("/docs/guide?v=2"), &host).await,
        (301, "http://docs.example.com:8080/docs/guide?v=2".into())
    );
    // A path with the old one in it, a port of its own, no query; the
    // default status is 302.
    assert_eq!(
        location(&url("/old/a?drop=1"), &host).await,
        (302, "http://shop.example:8443/new/old/a".into())
    );
    assert!(
        backend.seen().is_empty(),
        "redirects never reach the upstream"
    );
}

#[tokio::test]
async fn respond_fills_in_request_variables_and_leaves_other_braces() {
    let backend = Backend::echo("app").await;
    let gw = gateway(backend.addr).await;
    let r = client()
        .get(gw.url("web", "/hello?a=1"))
        .header("host", "api.example.com")
        .header("x-tenant", "acme")
        .header("x-request-id", "req-12345678")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-tenant-was"], "acme");
    assert_eq!(r.headers()["x-fixed"], "{not a variable}");
    // `{{` and `}}` are braces in a header without variables too.
    assert_eq!(r.headers()["x-escaped"], "{y}");
    let v: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(v["host"], "api.example.com");
    assert_eq!(v["path"], "/hello");
    assert_eq!(v["query"], "a=1");
    assert_eq!(v["id"], "req-12345678");
    assert_eq!(v["literal"], "{x}");
}

#[tokio::test]
async fn an_https_redirect_listener_sends_every_request_to_https() {
    let backend = Backend::echo("app").await;
    let gw = TestGateway::start(&format!(
        r#"
listeners:
  - name: web
    address: "127.0.0.1:0"
    https_redirect: true
routes:
  - name: all
    upstream: app
upstreams:
  - name: app
    targets: ["{}"]
"#,
        backend.addr
    ))
    .await;
    for (path, host, want) in [
        ("/", "www.example.com", "https://www.example.com/"),
        (
            "/a/../b/c?x=1",
            "www.example.com:80",
            "https://www.example.com/b/c?x=1",
        ),
        ("/p", "[2001:db8::1]:8080", "https://[2001:db8::1]/p"),
    ] {
        assert_eq!(
            location(&gw.url("web", path), &[("host", host)]).await,
            (308, want.to_string()),
            "{path} {host}"
        );
    }
    assert!(backend.seen().is_empty());
}
