//! Listeners and routing: hosts, paths, methods, headers and query; the
//! precedence rule of DESIGN.md section 4; dot-segment normalization;
//! `respond` routes; HTTP/2 with prior knowledge; 10,000 routes.

use std::time::Duration;

use crate::common::*;

/// YAML for one `web` listener plus routes that each answer with their own
/// name, so a response body says which route took the request. `routes` are
/// `(name, match)` pairs in file order, the match block in YAML flow style.
fn named_routes_config(routes: &[(&str, &str)]) -> String {
    let mut yaml = String::from("listeners:\n  - name: web\n    address: 127.0.0.1:0\nroutes:\n");
    for (name, m) in routes {
        yaml.push_str(&format!(
            "  - {{ name: {name}, match: {m}, respond: {{ body: {name} }} }}\n"
        ));
    }
    yaml
}

/// A gateway built from [`named_routes_config`].
async fn named_routes(routes: &[(&str, &str)]) -> TestGateway {
    TestGateway::start(&named_routes_config(routes)).await
}

/// Sends `req` and names the route that answered: the body of a 200, or
/// `"404"` after checking that the 404 is a problem+json "no route" answer.
async fn route_of(req: reqwest::RequestBuilder) -> String {
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    match status.as_u16() {
        200 => text,
        404 => {
            assert_problem(status, &headers, &text, 404);
            "404".to_string()
        }
        other => panic!("unexpected status {other}: {text}"),
    }
}

/// The route that answers `GET path` with `Host: host` on listener `web`.
async fn route_for_host(gw: &TestGateway, host: &str, path: &str) -> String {
    route_of(client().get(gw.url("web", path)).header("host", host)).await
}

/// The route that answers `method path` on listener `web`.
async fn route_for(gw: &TestGateway, method: &str, path: &str) -> String {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    route_of(client().request(method, gw.url("web", path))).await
}

/// Status line and body of a raw HTTP/1.1 exchange.
fn status_and_body(response: &str) -> (u16, &str) {
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body)
}

/// Sends `GET target` byte for byte (no client-side normalization) and
/// returns the status and body.
async fn raw_get(gw: &TestGateway, target: &str) -> (u16, String) {
    let request = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let response = raw(gw.addr("web"), request.as_bytes(), Duration::from_secs(5)).await;
    let (status, body) = status_and_body(&response);
    (status, body.to_string())
}

#[tokio::test]
async fn exact_host_matches_case_insensitively_and_ignores_the_port() {
    let gw = named_routes(&[("api", "{ hosts: [api.example.com] }"), ("fallback", "{}")]).await;
    assert_eq!(route_for_host(&gw, "api.example.com", "/").await, "api");
    assert_eq!(route_for_host(&gw, "API.Example.COM", "/").await, "api");
    assert_eq!(
        route_for_host(&gw, "api.example.com:8080", "/x").await,
        "api"
    );
    assert_eq!(
        route_for_host(&gw, "www.example.com", "/").await,
        "fallback"
    );
    assert_eq!(
        route_for_host(&gw, "api.example.com.evil.org", "/").await,
        "fallback"
    );
}

#[tokio::test]
async fn wildcard_host_matches_subdomains_but_not_the_bare_domain() {
    let gw = named_routes(&[
        ("wild", "{ hosts: [\"*.example.org\"] }"),
        ("fallback", "{}"),
    ])
    .await;
    assert_eq!(route_for_host(&gw, "a.example.org", "/").await, "wild");
    assert_eq!(
        route_for_host(&gw, "A.B.Example.ORG:443", "/").await,
        "wild"
    );
    assert_eq!(route_for_host(&gw, "example.org", "/").await, "fallback");
    assert_eq!(route_for_host(&gw, "a.example.com", "/").await, "fallback");
}

#[tokio::test]
async fn host_routes_without_a_fallback_give_404_for_other_hosts() {
    let gw = named_routes(&[("api", "{ hosts: [api.example.com] }")]).await;
    assert_eq!(route_for_host(&gw, "api.example.com", "/").await, "api");
    assert_eq!(route_for_host(&gw, "other.example.com", "/").await, "404");
}

#[tokio::test]
async fn exact_host_beats_wildcard_beats_no_host() {
    // File order is the reverse of precedence, so file order alone would pick `any`.
    let gw = named_routes(&[
        ("any", "{ path_prefix: / }"),
        ("wild", "{ hosts: [\"*.example.com\"], path_prefix: / }"),
        ("exact", "{ hosts: [api.example.com], path_prefix: / }"),
    ])
    .await;
    assert_eq!(route_for_host(&gw, "api.example.com", "/v1").await, "exact");
    assert_eq!(route_for_host(&gw, "web.example.com", "/v1").await, "wild");
    assert_eq!(route_for_host(&gw, "example.net", "/v1").await, "any");
}

#[tokio::test]
async fn longest_wildcard_host_wins() {
    let gw = named_routes(&[
        ("short", "{ hosts: [\"*.example.com\"] }"),
        ("long", "{ hosts: [\"*.eu.example.com\"] }"),
    ])
    .await;
    assert_eq!(
        route_for_host(&gw, "paris.eu.example.com", "/").await,
        "long"
    );
    assert_eq!(route_for_host(&gw, "eu.example.com", "/").await, "short");
    assert_eq!(
        route_for_host(&gw, "paris.us.example.com", "/").await,
        "short"
    );
}

#[tokio::test]
async fn exact_path_matches_only_the_whole_path() {
    let gw = named_routes(&[("ping", "{ path: /ping }")]).await;
    assert_eq!(route_for(&gw, "GET", "/ping").await, "ping");
    assert_eq!(route_for(&gw, "GET", "/ping?x=1").await, "ping");
    assert_eq!(route_for(&gw, "GET", "/ping/").await, "404");
    assert_eq!(route_for(&gw, "GET", "/ping/x").await, "404");
    assert_eq!(route_for(&gw, "GET", "/pingx").await, "404");
}

#[tokio::test]
async fn path_prefix_is_segment_aware() {
    let gw = named_routes(&[("api", "{ path_prefix: /api }")]).await;
    assert_eq!(route_for(&gw, "GET", "/api").await, "api");
    assert_eq!(route_for(&gw, "GET", "/api/").await, "api");
    assert_eq!(route_for(&gw, "GET", "/api/x/y?z=1").await, "api");
    assert_eq!(route_for(&gw, "GET", "/apix").await, "404");
    assert_eq!(route_for(&gw, "GET", "/ap").await, "404");
    assert_eq!(route_for(&gw, "GET", "/").await, "404");
}

#[tokio::test]
async fn path_regex_must_match_the_whole_path() {
    let gw = named_routes(&[("items", "{ path_regex: \"/items/[0-9]+\" }")]).await;
    assert_eq!(route_for(&gw, "GET", "/items/42").await, "items");
    assert_eq!(route_for(&gw, "GET", "/items/42?full=1").await, "items");
    assert_eq!(route_for(&gw, "GET", "/items/42/x").await, "404");
    assert_eq!(route_for(&gw, "GET", "/v1/items/42").await, "404");
    assert_eq!(route_for(&gw, "GET", "/items/abc").await, "404");
}

#[tokio::test]
async fn exact_path_beats_regex_beats_longest_prefix() {
    // Listed from least to most specific, so file order alone would pick `short`.
    let gw = named_routes(&[
        ("short", "{ path_prefix: /a }"),
        ("long", "{ path_prefix: /a/b }"),
        ("regex", "{ path_regex: \"/a/b/[0-9]+\" }"),
        ("exact", "{ path: /a/b/1 }"),
    ])
    .await;
    assert_eq!(route_for(&gw, "GET", "/a/b/1").await, "exact");
    assert_eq!(route_for(&gw, "GET", "/a/b/2").await, "regex");
    assert_eq!(route_for(&gw, "GET", "/a/b/x").await, "long");
    assert_eq!(route_for(&gw, "GET", "/a/b").await, "long");
    assert_eq!(route_for(&gw, "GET", "/a/x").await, "short");
}

#[tokio::test]
async fn host_precedence_comes_before_path_precedence() {
    // An exact path on no host loses to a catch-all prefix on an exact host.
    let gw = named_routes(&[
        ("exact-path", "{ path: /status }"),
        (
            "host-prefix",
            "{ hosts: [api.example.com], path_prefix: / }",
        ),
    ])
    .await;
    assert_eq!(
        route_for_host(&gw, "api.example.com", "/status").await,
        "host-prefix"
    );
    assert_eq!(
        route_for_host(&gw, "www.example.com", "/status").await,
        "exact-path"
    );
}

#[tokio::test]
async fn method_mismatch_falls_through_to_the_next_candidate() {
    let gw = named_routes(&[
        ("create", "{ path: /users, methods: [POST] }"),
        (
            "delete",
            "{ path_regex: \"/users(/.*)?\", methods: [delete] }",
        ),
        ("read", "{ path_prefix: /users, methods: [GET, HEAD] }"),
    ])
    .await;
    assert_eq!(route_for(&gw, "POST", "/users").await, "create");
    assert_eq!(route_for(&gw, "DELETE", "/users").await, "delete");
    assert_eq!(route_for(&gw, "GET", "/users").await, "read");
    assert_eq!(route_for(&gw, "GET", "/users/7").await, "read");
    assert_eq!(route_for(&gw, "PUT", "/users").await, "404");
}

#[tokio::test]
async fn header_condition_requires_the_exact_value() {
    let gw = named_routes(&[
        (
            "mobile",
            "{ path_prefix: /app, headers: { x-client: mobile } }",
        ),
        ("web", "{ path_prefix: /app }"),
    ])
    .await;
    let get = |value: Option<&'static str>| {
        let mut req = client().get(gw.url("web", "/app/home"));
        if let Some(v) = value {
            req = req.header("X-Client", v);
        }
        route_of(req)
    };
    assert_eq!(get(Some("mobile")).await, "mobile");
    assert_eq!(get(Some("Mobile")).await, "web");
    assert_eq!(get(Some("desktop")).await, "web");
    assert_eq!(get(None).await, "web");
}

#[tokio::test]
async fn query_condition_matches_decoded_parameters() {
    let gw = named_routes(&[
        ("debug", "{ path_prefix: /app, query: { debug: \"1\" } }"),
        ("search", "{ path_prefix: /app, query: { q: \"a b\" } }"),
        ("plain", "{ path_prefix: /app }"),
    ])
    .await;
    assert_eq!(route_for(&gw, "GET", "/app?debug=1").await, "debug");
    assert_eq!(route_for(&gw, "GET", "/app?x=2&debug=1").await, "debug");
    assert_eq!(route_for(&gw, "GET", "/app?debug=0").await, "plain");
    assert_eq!(route_for(&gw, "GET", "/app?debug").await, "plain");
    assert_eq!(route_for(&gw, "GET", "/app?q=a+b").await, "search");
    assert_eq!(route_for(&gw, "GET", "/app?q=a%20b").await, "search");
    assert_eq!(route_for(&gw, "GET", "/app?q=ab").await, "plain");
    assert_eq!(route_for(&gw, "GET", "/app").await, "plain");
}

#[tokio::test]
async fn route_with_more_conditions_wins() {
    // Same host and path rank; the later route has more conditions and wins
    // whenever all of them hold.
    let gw = named_routes(&[
        ("none", "{ path_prefix: /api }"),
        ("one", "{ path_prefix: /api, methods: [GET] }"),
        ("three", "{ path_prefix: /api, methods: [GET], headers: { x-beta: \"yes\" }, query: { v: \"2\" } }"),
    ])
    .await;
    let beta = |path: &str| route_of(client().get(gw.url("web", path)).header("x-beta", "yes"));
    assert_eq!(beta("/api/x?v=2").await, "three");
    assert_eq!(beta("/api/x?v=1").await, "one");
    assert_eq!(route_for(&gw, "GET", "/api/x?v=2").await, "one");
    assert_eq!(route_for(&gw, "POST", "/api/x?v=2").await, "none");
}

#[tokio::test]
async fn ties_go_to_file_order() {
    let gw = named_routes(&[
        ("first", "{ path_prefix: /same, methods: [GET] }"),
        ("second", "{ path_prefix: /same/, methods: [GET] }"),
        ("regex-first", "{ path_regex: \"/r/.*\" }"),
        ("regex-second", "{ path_regex: \"/r/[a-z]+\" }"),
    ])
    .await;
    assert_eq!(route_for(&gw, "GET", "/same/x").await, "first");
    assert_eq!(route_for(&gw, "GET", "/r/abc").await, "regex-first");
}

#[tokio::test]
async fn no_matching_route_gives_404_problem_json() {
    let gw = named_routes(&[("api", "{ path_prefix: /api }")]).await;
    let (status, headers, text) = get(&gw.url("web", "/nothing/here")).await;
    let v = assert_problem(status, &headers, &text, 404);
    assert_eq!(
        v["request_id"].as_str(),
        headers.get("x-request-id").and_then(|h| h.to_str().ok())
    );
}

#[tokio::test]
async fn dot_segments_are_normalized_before_routing() {
    let gw = named_routes(&[
        ("public", "{ path_prefix: /public }"),
        ("admin", "{ path_prefix: /admin }"),
    ])
    .await;
    assert_eq!(
        raw_get(&gw, "/public/../admin").await,
        (200, "admin".to_string())
    );
    assert_eq!(
        raw_get(&gw, "/public/./../admin/x").await,
        (200, "admin".to_string())
    );
    assert_eq!(
        raw_get(&gw, "/public/%2e%2e/admin").await,
        (200, "admin".to_string())
    );
    assert_eq!(
        raw_get(&gw, "/public/%2E%2E/admin").await,
        (200, "admin".to_string())
    );
    assert_eq!(
        raw_get(&gw, "/admin/../public/x").await,
        (200, "public".to_string())
    );
    assert_eq!(
        raw_get(&gw, "/../../public").await,
        (200, "public".to_string())
    );
}

#[tokio::test]
async fn upstream_sees_the_normalized_path() {
    // Routing and the backend must agree on the path, or `/public/../admin`
    // would be routed as /admin but could be read differently upstream.
    let backend = Backend::echo("app").await;
    let gw = TestGateway::start(&format!(
        r#"
listeners:
  - name: web
    address: 127.0.0.1:0
routes:
  - name: admin
    match: {{ path_prefix: /admin }}
    upstream: app
upstreams:
  - name: app
    targets: ["{}"]
"#,
        backend.addr
    ))
    .await;
    let (status, body) = raw_get(&gw, "/public/../admin/users?x=1").await;
    assert_eq!(status, 200, "{body}");
    let seen = backend.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri, "/admin/users?x=1");
}

#[tokio::test]
async fn respond_route_answers_with_status_body_and_headers() {
    let gw = TestGateway::start(
        r#"
listeners:
  - name: web
    address: 127.0.0.1:0
routes:
  - name: teapot
    match: { path: /tea }
    respond:
      status: 418
      body: "short and stout"
      headers: { content-type: text/plain, x-kind: teapot }
  - name: ping
    match: { path: /ping }
    respond: { body: pong }
  - name: gone
    match: { path: /old }
    respond: { status: 204 }
"#,
    )
    .await;
    let (status, headers, text) = get(&gw.url("web", "/tea")).await;
    assert_eq!(status, 418);
    assert_eq!(text, "short and stout");
    assert_eq!(headers["content-type"], "text/plain");
    assert_eq!(headers["x-kind"], "teapot");
    assert!(headers.contains_key("x-request-id"));

    let (status, _, text) = get(&gw.url("web", "/ping")).await;
    assert_eq!((status.as_u16(), text.as_str()), (200, "pong"));

    let (status, _, text) = get(&gw.url("web", "/old")).await;
    assert_eq!((status.as_u16(), text.as_str()), (204, ""));
}

#[tokio::test]
async fn routes_forward_to_their_own_upstreams() {
    let users = Backend::echo("users").await;
    let orders = Backend::echo("orders").await;
    let gw = TestGateway::start(&format!(
        r#"
listeners:
  - name: web
    address: 127.0.0.1:0
routes:
  - name: users
    match: {{ path_prefix: /users }}
    upstream: users
  - name: orders
    match: {{ path_prefix: /orders }}
    upstream: orders
upstreams:
  - name: users
    targets: ["{}"]
  - name: orders
    targets: ["{}"]
"#,
        users.addr, orders.addr
    ))
    .await;
    for (path, backend) in [("/users/1", "users"), ("/orders/9?x=1", "orders")] {
        let (status, _, text) = get(&gw.url("web", path)).await;
        assert_eq!(status, 200, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            (v["backend"].as_str(), v["path"].as_str()),
            (Some(backend), Some(path))
        );
    }
    assert_eq!(users.seen().len(), 1);
    assert_eq!(orders.seen().len(), 1);
}

#[tokio::test]
async fn http2_prior_knowledge_request_is_routed_like_http1() {
    let gw = named_routes(&[
        (
            "local-get",
            "{ hosts: [127.0.0.1], path_prefix: /api, methods: [GET], query: { v: \"2\" } }",
        ),
        ("local", "{ hosts: [127.0.0.1], path_prefix: /api }"),
        ("other", "{ path_prefix: / }"),
    ])
    .await;
    let h2 = h2c_client();
    for (path, want) in [
        ("/api/x?v=2", "local-get"),
        ("/api/x", "local"),
        ("/else", "other"),
    ] {
        let resp = h2.get(gw.url("web", path)).send().await.unwrap();
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), want, "HTTP/2 {path}");
        assert_eq!(route_for(&gw, "GET", path).await, want, "HTTP/1.1 {path}");
    }
    let resp = h2.post(gw.url("web", "/api/x?v=2")).send().await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "local");
}

#[tokio::test]
async fn several_listeners_serve_in_one_process() {
    let gw = TestGateway::start(
        r#"
listeners:
  - name: one
    address: 127.0.0.1:0
  - name: two
    address: 127.0.0.1:0
routes:
  - name: hello
    match: { path: /hello }
    respond: { body: hello }
"#,
    )
    .await;
    assert_ne!(gw.addr("one"), gw.addr("two"));
    for listener in ["one", "two"] {
        let (status, _, text) = get(&gw.url(listener, "/hello")).await;
        assert_eq!(
            (status.as_u16(), text.as_str()),
            (200, "hello"),
            "{listener}"
        );
    }
}

#[tokio::test]
async fn route_with_listeners_attaches_only_to_those_listeners() {
    let gw = TestGateway::start(
        r#"
listeners:
  - name: public
    address: 127.0.0.1:0
  - name: internal
    address: 127.0.0.1:0
routes:
  - name: internal-only
    listeners: [internal]
    match: { path_prefix: /admin }
    respond: { body: internal-only }
  - name: everywhere
    match: { path_prefix: / }
    respond: { body: everywhere }
"#,
    )
    .await;
    let (_, _, text) = get(&gw.url("internal", "/admin/x")).await;
    assert_eq!(text, "internal-only");
    let (_, _, text) = get(&gw.url("public", "/admin/x")).await;
    assert_eq!(text, "everywhere");
    let (_, _, text) = get(&gw.url("internal", "/other")).await;
    assert_eq!(text, "everywhere");
}

#[tokio::test]
async fn routes_attach_to_https_listeners_by_default() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert_pem = cert.cert.pem();
    std::fs::write(dir.path().join("cert.pem"), &cert_pem).unwrap();
    std::fs::write(dir.path().join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    let gw = TestGateway::start(&format!(
        r#"
listeners:
  - name: web
    address: 127.0.0.1:0
  - name: secure
    address: 127.0.0.1:0
    protocol: https
    tls:
      certificates:
        - {{ cert: "{dir}/cert.pem", key: "{dir}/key.pem" }}
routes:
  - name: hello
    match: {{ path: /hello }}
    respond: {{ body: hello }}
"#,
        dir = dir.path().display()
    ))
    .await;
    let https = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap()])
        .resolve("localhost", gw.addr("secure"))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/hello", gw.addr("secure").port());
    let resp = https.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "hello");
    let (status, _, text) = get(&gw.url("web", "/hello")).await;
    assert_eq!((status.as_u16(), text.as_str()), (200, "hello"));
}

#[tokio::test]
async fn ten_thousand_routes_load_and_route_correctly() {
    // Route i: host h{i % 100}.example.com and prefix /p{i / 100}, plus a
    // regex and an exact route on one host, in one table of 10,002 routes.
    let mut routes: Vec<(String, String)> = (0..10_000)
        .map(|i| {
            (
                format!("r{i}"),
                format!(
                    "{{ hosts: [h{}.example.com], path_prefix: /p{} }}",
                    i % 100,
                    i / 100
                ),
            )
        })
        .collect();
    routes.push((
        "regex".into(),
        "{ hosts: [h7.example.com], path_regex: \"/p5/item/[0-9]+\" }".into(),
    ));
    routes.push((
        "exact".into(),
        "{ hosts: [h7.example.com], path: /p5/item/x }".into(),
    ));
    let refs: Vec<(&str, &str)> = routes
        .iter()
        .map(|(n, m)| (n.as_str(), m.as_str()))
        .collect();
    let gw = named_routes(&refs).await;

    let c = client();
    let mut state = 12345u64;
    for _ in 0..60 {
        // A small deterministic generator picks the sample.
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let i = ((state >> 33) % 10_000) as usize;
        let (host, prefix) = (i % 100, i / 100);
        let req = c
            .get(gw.url("web", &format!("/p{prefix}/items/{i}")))
            .header("host", format!("H{host}.Example.com:80"));
        assert_eq!(route_of(req).await, format!("r{i}"));
    }
    assert_eq!(route_for_host(&gw, "h0.example.com", "/p0").await, "r0");
    assert_eq!(
        route_for_host(&gw, "h99.example.com", "/p99/z").await,
        "r9999"
    );
    assert_eq!(
        route_for_host(&gw, "h7.example.com", "/p5/item/12").await,
        "regex"
    );
    assert_eq!(
        route_for_host(&gw, "h7.example.com", "/p5/item/x").await,
        "exact"
    );
    assert_eq!(
        route_for_host(&gw, "h7.example.com", "/p5/item/y").await,
        "r507"
    );
    assert_eq!(route_for_host(&gw, "h7.example.com", "/p5x").await, "404");
    assert_eq!(route_for_host(&gw, "h100.example.com", "/p1").await, "404");
    assert_eq!(route_for_host(&gw, "h3.example.com", "/p100").await, "404");
}

// ---------------------------------------------------------------------------
// One host per request (RFC 9112 §3.2.2, RFC 9113 §8.3.1)
// ---------------------------------------------------------------------------

/// A gateway with an `admin.example` route that refuses every client
/// (ip_filter) and a `good.example` route to `backend`.
async fn host_guarded(backend: std::net::SocketAddr) -> TestGateway {
    TestGateway::start(&format!(
        r#"
listeners:
  - name: web
    address: 127.0.0.1:0
routes:
  - name: admin
    match: {{ hosts: [admin.example] }}
    policies: [nobody]
    upstream: app
  - name: good
    match: {{ hosts: [good.example] }}
    upstream: app
policies:
  nobody: {{ type: ip_filter, deny: [0.0.0.0/0, "::/0"] }}
upstreams:
  - name: app
    targets: ["{backend}"]
"#
    ))
    .await
}

#[tokio::test]
async fn an_absolute_form_target_wins_over_the_host_header_for_routing_and_upstream() {
    let backend = Backend::echo("app").await;
    let gw = host_guarded(backend.addr).await;
    // Routed by the target's authority, and the backend sees that host
    // (never the Host header's admin.example, whose route refuses).
    let answer = raw(
        gw.addr("web"),
        b"GET http://good.example/x HTTP/1.1\r\nHost: admin.example\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = backend.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["host"], "good.example");
    assert_eq!(seen[0].headers["x-forwarded-host"], "good.example");
    // The other way round, the refusing route is the one that runs.
    let answer = raw(
        gw.addr("web"),
        b"GET http://admin.example/x HTTP/1.1\r\nHost: good.example\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert_eq!(
        backend.seen().len(),
        1,
        "the refused request reached the backend"
    );
}

#[tokio::test]
async fn an_absolute_form_target_with_user_information_is_refused() {
    let backend = Backend::echo("app").await;
    let gw = host_guarded(backend.addr).await;
    let answer = raw(
        gw.addr("web"),
        b"GET http://me@good.example/x HTTP/1.1\r\nHost: good.example\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(backend.seen().is_empty());
}

/// Sends `GET http://{authority}/x` over h2c with an optional `host`
/// header and returns the status.
async fn h2c_status(addr: std::net::SocketAddr, authority: &str, host: Option<&str>) -> u16 {
    use http_body_util::Empty;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::get(format!("http://{authority}/x"));
    if let Some(host) = host {
        req = req.header("host", host);
    }
    let req = req.body(Empty::<bytes::Bytes>::new()).unwrap();
    sender.send_request(req).await.unwrap().status().as_u16()
}

#[tokio::test]
async fn an_http2_request_whose_authority_and_host_differ_is_malformed() {
    let backend = Backend::echo("app").await;
    let gw = host_guarded(backend.addr).await;
    let addr = gw.addr("web");
    assert_eq!(
        h2c_status(addr, "good.example", Some("admin.example")).await,
        400
    );
    assert_eq!(
        h2c_status(addr, "admin.example", Some("good.example")).await,
        400
    );
    assert!(
        backend.seen().is_empty(),
        "a malformed request reached the backend"
    );
    // The same host twice (in any case) is one host.
    assert_eq!(
        h2c_status(addr, "good.example", Some("Good.Example")).await,
        200
    );
    assert_eq!(h2c_status(addr, "good.example", None).await, 200);
    assert_eq!(h2c_status(addr, "admin.example", None).await, 403);
    let seen = backend.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].headers["x-forwarded-host"], "good.example");
}
