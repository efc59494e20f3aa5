//! The `aggregate` action: parallel calls answered as one JSON object,
//! optional and required failures, timeouts, `select`, `merge`, a call
//! that uses an earlier call's answer, parameters, forwarded headers, and
//! the configuration mistakes `check` reports.

use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::common::*;

/// A backend whose answers depend on the path:
/// `/slow/NAME` (200 ms, then `{"name": NAME}`), `/users/ID`, `/orders?user=ID`,
/// `/fail` (500), `/text` (not JSON), `/hang` (10 s), `/headers` (what it got),
/// `/merge/a` and `/merge/b`.
async fn services() -> Backend {
    Backend::start(|req: Request<Incoming>| async move {
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        let header = |name: &str| {
            req.headers()
                .get(name)
                .map_or(Value::Null, |v| json!(v.to_str().unwrap()))
        };
        let doc = if let Some(name) = path.strip_prefix("/slow/") {
            tokio::time::sleep(Duration::from_millis(200)).await;
            json!({ "name": name })
        } else if let Some(id) = path.strip_prefix("/users/") {
            json!({ "data": { "user": { "id": id, "name": "Ada" }, "total": 1 } })
        } else if path == "/orders" {
            json!({ "orders": [{ "n": 1 }, { "n": 2 }], "query": query })
        } else if path == "/fail" {
            let mut r = Response::new(body("{\"oops\": true}"));
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            return r;
        } else if path == "/text" {
            return Response::new(body("plain words"));
        } else if path == "/hang" {
            tokio::time::sleep(Duration::from_secs(10)).await;
            json!({})
        } else if path == "/headers" {
            json!({
                "authorization": header("authorization"),
                "cookie": header("cookie"),
                "traceparent": header("traceparent"),
                "x-request-id": header("x-request-id"),
                "host": header("host"),
                "x-tenant": header("x-tenant"),
            })
        } else if path == "/merge/a" {
            json!({ "a": 1, "shared": "from a" })
        } else if path == "/merge/b" {
            json!({ "b": 2, "shared": "from b" })
        } else {
            let mut r = Response::new(body("not here"));
            *r.status_mut() = StatusCode::NOT_FOUND;
            return r;
        };
        let mut r = Response::new(body(doc.to_string()));
        r.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("application/json"),
        );
        r
    })
    .await
}

/// A gateway whose only route is `route` (YAML list item fields, indented
/// for a route) in front of `services`.
async fn gateway(backend: &Backend, route: &str) -> TestGateway {
    TestGateway::start(&format!(
        r#"
listeners:
  - name: web
    address: 127.0.0.1:0
routes:
  - name: dash
{route}
upstreams:
  - name: svc
    targets: ["{addr}"]
  - name: other
    targets: ["{addr}"]
"#,
        addr = backend.addr
    ))
    .await
}

/// GETs `url`, asserts a problem+json answer with `status`, returns its text.
async fn problem_at(url: &str, status: u16) -> String {
    let (got, headers, text) = get(url).await;
    assert_problem(got, &headers, &text, status);
    text
}

async fn get_json(url: &str, headers: &[(&str, &str)]) -> (u16, http::HeaderMap, Value) {
    let mut req = client().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, headers, value)
}

#[tokio::test]
async fn three_calls_of_200_ms_take_about_as_long_as_one() {
    let backend = services().await;
    let gw = gateway(
        &backend,
        r#"    match: { path: /dashboard }
    aggregate:
      calls:
        a: { upstream: svc, path: /slow/a }
        b: { upstream: svc, path: /slow/b }
        c: { upstream: other, path: /slow/c }"#,
    )
    .await;
    let url = gw.url("web", "/dashboard");
    // Once to open connections, then timed.
    get_json(&url, &[]).await;
    let started = Instant::now();
    let (status, headers, doc) = get_json(&url, &[]).await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{doc}");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(
        doc,
        json!({ "a": { "name": "a" }, "b": { "name": "b" }, "c": { "name": "c" } })
    );
    assert!(took >= Duration::from_millis(200), "{took:?}");
    assert!(
        took < Duration::from_millis(480),
        "three 200 ms calls took {took:?}: not in parallel"
    );
}

#[tokio::test]
async fn a_failed_optional_call_is_null_and_listed_and_a_required_one_is_a_502() {
    let backend = services().await;
    let gw = gateway(
        &backend,
        r#"    match: { path_prefix: /dash }
    aggregate:
      calls:
        user: { upstream: svc, path: /users/7, select: data.user }
        news: { upstream: svc, path: /fail, optional: true }
        words: { upstream: svc, path: /text, optional: true }
        gone: { upstream: svc, path: /missing, optional: true }"#,
    )
    .await;
    let (status, _, doc) = get_json(&gw.url("web", "/dash"), &[]).await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["user"], json!({ "id": "7", "name": "Ada" }));
    assert_eq!(doc["news"], Value::Null);
    assert_eq!(doc["words"], Value::Null);
    let errors = doc["_errors"].as_array().expect("an _errors list");
    let why = |call: &str| {
        errors
            .iter()
            .find(|e| e["call"] == call)
            .unwrap_or_else(|| panic!("no error for {call}: {doc}"))["error"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(why("news"), "the upstream answered 500");
    assert!(why("words").contains("not JSON"), "{}", why("words"));
    assert_eq!(why("gone"), "the upstream answered 404");
    assert_eq!(errors.len(), 3, "{doc}");

    // The same call, required: the whole answer is a 502 naming it.
    let gw = gateway(
        &backend,
        r#"    match: { path_prefix: /dash }
    aggregate:
      calls:
        user: { upstream: svc, path: /users/7 }
        news: { upstream: svc, path: /fail }"#,
    )
    .await;
    let text = problem_at(&gw.url("web", "/dash"), 502).await;
    assert!(
        text.contains("the `news` call failed: the upstream answered 500"),
        "{text}"
    );
    assert!(
        !text.contains("127.0.0.1"),
        "a backend address leaked: {text}"
    );
}

#[tokio::test]
async fn a_call_past_its_timeout_fails_in_bounded_time() {
    let backend = services().await;
    let gw = gateway(
        &backend,
        r#"    match: { path: /dash }
    aggregate:
      timeout: 2s
      calls:
        quick: { upstream: svc, path: /users/1, select: data.user.name }
        stuck: { upstream: svc, path: /hang, timeout: 300ms, optional: true }"#,
    )
    .await;
    let started = Instant::now();
    let (status, _, doc) = get_json(&gw.url("web", "/dash"), &[]).await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["quick"], "Ada");
    assert_eq!(doc["stuck"], Value::Null);
    assert_eq!(
        doc["_errors"],
        json!([{ "call": "stuck", "error": "no answer within 300 ms" }])
    );
    assert!(took < Duration::from_secs(2), "{took:?}");

    // A dead upstream fails the call at once, without naming the address.
    let dead = dead_addr().await;
    let gw = TestGateway::start(&format!(
        r#"
listeners:
  - name: web
    address: 127.0.0.1:0
routes:
  - name: dash
    aggregate:
      calls:
        down: {{ upstream: dead, path: /x }}
upstreams:
  - name: dead
    targets: ["{dead}"]
"#
    ))
    .await;
    let text = problem_at(&gw.url("web", "/"), 502).await;
    assert!(text.contains("the `down` call failed"), "{text}");
    assert!(!text.contains(&dead.to_string()), "{text}");
}

#[tokio::test]
async fn select_keeps_a_sub_tree_and_merge_flattens_the_answers() {
    let backend = services().await;
    let gw = gateway(
        &backend,
        r#"    match: { path: /dash }
    aggregate:
      merge: true
      calls:
        a: { upstream: svc, path: /merge/a }
        b: { upstream: svc, path: /merge/b }
        orders: { upstream: svc, path: /orders, select: orders.1 }
        missing: { upstream: svc, path: /merge/a, select: nope.deeper, optional: true }"#,
    )
    .await;
    let (status, _, doc) = get_json(&gw.url("web", "/dash"), &[]).await;
    assert_eq!(status, 200, "{doc}");
    // Objects merge in call-name order (b after a wins `shared`); the
    // merged `orders.1` object lends its member too.
    assert_eq!(doc["a"], 1);
    assert_eq!(doc["b"], 2);
    assert_eq!(doc["shared"], "from b");
    assert_eq!(doc["n"], 2);
    // A failed call keeps its name (null), so that `_errors` can be read.
    assert_eq!(doc["missing"], Value::Null);
    assert_eq!(
        doc["_errors"],
        json!([{ "call": "missing", "error": "its answer has no `nope.deeper`" }])
    );
}

#[tokio::test]
async fn a_call_that_uses_an_earlier_answer_runs_after_it_and_the_rest_in_parallel() {
    let backend = services().await;
    let gw = gateway(
        &backend,
        r#"    match: { path_regex: "/dash/(?P<id>[^/]+)" }
    aggregate:
      calls:
        user: { upstream: svc, path: "/users/{id}", select: data.user }
        orders: { upstream: svc, path: "/orders?user={user.id}&name={user.name}&tag={tag}" }
        slow: { upstream: svc, path: /slow/x }"#,
    )
    .await;
    let started = Instant::now();
    let (status, _, doc) = get_json(&gw.url("web", "/dash/42?tag=a%26b"), &[]).await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["user"]["id"], "42");
    assert_eq!(doc["orders"]["query"], "user=42&name=Ada&tag=a%26b");
    assert_eq!(doc["slow"]["name"], "x");
    assert!(took < Duration::from_millis(480), "{took:?}");
    let seen: Vec<String> = backend.seen().iter().map(|s| s.uri.clone()).collect();
    let at = |prefix: &str| seen.iter().position(|u| u.starts_with(prefix)).unwrap();
    assert!(at("/users/42") < at("/orders"), "{seen:?}");

    // A value cannot add a path segment: `..` and `/` are escaped.
    let (status, _, doc) = get_json(&gw.url("web", "/dash/..%2Fadmin?tag=x"), &[]).await;
    assert_eq!(status, 200, "{doc}");
    assert!(
        backend.seen().iter().any(|s| s.uri == "/users/..%2Fadmin"),
        "{:?}",
        backend.seen()
    );
}

#[tokio::test]
async fn a_call_whose_predecessor_failed_fails_too() {
    let backend = services().await;
    let gw = gateway(
        &backend,
        r#"    match: { path: /dash }
    aggregate:
      calls:
        user: { upstream: svc, path: /fail, optional: true }
        orders: { upstream: svc, path: "/orders?user={user.id}", optional: true }
        profile: { upstream: svc, path: "/users/{id}" }"#,
    )
    .await;
    // No `id` parameter: the required `profile` call cannot be made, and
    // that is the client's doing.
    let text = problem_at(&gw.url("web", "/dash"), 400).await;
    assert!(text.contains("the `profile` call failed"), "{text}");
    assert!(text.contains("no `id`"), "{text}");

    let (status, _, doc) = get_json(&gw.url("web", "/dash?id=5"), &[]).await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["orders"], Value::Null);
    let errors = doc["_errors"].as_array().unwrap();
    assert!(
        errors.iter().any(|e| e["call"] == "orders"
            && e["error"] == "it needs the answer of `user`, which failed"),
        "{doc}"
    );
    // Nothing was sent for `orders`.
    assert!(
        !backend.seen().iter().any(|s| s.uri.starts_with("/orders")),
        "{:?}",
        backend.seen()
    );
}

#[tokio::test]
async fn calls_get_the_authorization_trace_context_and_request_id_but_not_cookies() {
    let backend = services().await;
    let gw = gateway(
        &backend,
        r#"    match: { path: /dash }
    aggregate:
      calls:
        h: { upstream: svc, path: /headers }"#,
    )
    .await;
    let (status, _, doc) = get_json(
        &gw.url("web", "/dash"),
        &[
            ("authorization", "Bearer abc"),
            ("cookie", "session=secret"),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("x-request-id", "agg-req-12345678"),
            ("x-tenant", "acme"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{doc}");
    let h = &doc["h"];
    assert_eq!(h["authorization"], "Bearer abc");
    assert_eq!(h["cookie"], Value::Null);
    assert_eq!(
        h["traceparent"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    assert_eq!(h["x-request-id"], "agg-req-12345678");
    assert_eq!(h["x-tenant"], Value::Null);
    assert!(h["host"].as_str().unwrap().starts_with("127.0.0.1"), "{h}");

    // A route may name its own list.
    let gw = gateway(
        &backend,
        r#"    match: { path: /dash }
    aggregate:
      forward_headers: [x-tenant]
      calls:
        h: { upstream: svc, path: /headers }"#,
    )
    .await;
    let (_, _, doc) = get_json(
        &gw.url("web", "/dash"),
        &[("authorization", "Bearer abc"), ("x-tenant", "acme")],
    )
    .await;
    assert_eq!(doc["h"]["x-tenant"], "acme");
    assert_eq!(doc["h"]["authorization"], Value::Null);
}

#[test]
fn check_reports_aggregate_mistakes_at_their_lines() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("portcullis.yaml");
    std::fs::write(
        &file,
        "\
listeners:
  - name: web
    address: 127.0.0.1:0
routes:
  - name: loop
    match: { path: /a }
    aggregate:
      calls:
        a: { upstream: svc, path: \"/x?b={b.id}\" }
        b: { upstream: svc, path: \"/y?a={a.id}\" }
  - name: typos
    match: { path: /b }
    rewrite: { strip_prefix: /z }
    aggregate:
      calls:
        c: { upstream: nope, path: \"/x?u={usr.id}\", method: \"G T\" }
        _d: { upstream: svc, path: relative, select: a..b }
upstreams:
  - name: svc
    targets: [127.0.0.1:9]
",
    )
    .unwrap();
    let (ok, _, stderr) = run_cli("check", &["-c", file.to_str().unwrap()], "");
    assert!(!ok, "{stderr}");
    let line_of = |needle: &str| -> u32 {
        let line = stderr
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no error containing {needle:?}:\n{stderr}"));
        let rest = line.split("portcullis.yaml:").nth(1).unwrap();
        rest.split(':').next().unwrap().parse().unwrap()
    };
    assert_eq!(line_of("wait for each other"), 9);
    assert_eq!(line_of("no single upstream path"), 13);
    assert_eq!(line_of("`nope`"), 16);
    assert_eq!(line_of("`{usr.id}` names no call"), 16);
    assert_eq!(line_of("`G T` is not an HTTP method"), 16);
    assert_eq!(line_of("`_d` cannot name a call"), 17);
    assert_eq!(line_of("`relative` is not a path"), 17);
    assert_eq!(line_of("`a..b` is not a dotted path"), 17);
}
