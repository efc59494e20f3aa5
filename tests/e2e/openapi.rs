//! `openapi`: requests checked against a real OpenAPI 3.0 document
//! (examples/specs/orders.yaml, with `$ref`s to its sibling common.yaml,
//! `oneOf`, formats and `nullable`) and a 3.1 one with type arrays:
//! bodies, path, query and header parameters, content types, strict mode's
//! 404 and 405, answers checked in `log` and `enforce` modes, and the
//! body limit.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use http_body_util::BodyExt;
use serde_json::{Value, json};

use crate::common::*;

/// The example description, by absolute path.
fn orders_spec() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/specs/orders.yaml")
}

/// A backend that answers every request with the body it got (as JSON) and
/// the Content-Type it was sent with.
async fn body_echo() -> Backend {
    Backend::start(|req: http::Request<hyper::body::Incoming>| async move {
        let ctype = req
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let bytes = req.into_body().collect().await.unwrap().to_bytes();
        let got: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let mut r = http::Response::new(body(json!({"got": got, "type": ctype}).to_string()));
        r.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("application/json"),
        );
        r
    })
    .await
}

async fn gateway(backend: SocketAddr, policy: &str) -> TestGateway {
    TestGateway::start(&policy_config(backend, &[("orders-spec", policy)], "")).await
}

fn spec_policy(extra: &str) -> String {
    format!(
        "{{ type: openapi, spec: \"{}\"{extra} }}",
        orders_spec().display()
    )
}

async fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (http::StatusCode, http::HeaderMap, String) {
    let mut r = client().request(method.parse().unwrap(), url);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let r = r.body(body.to_string()).send().await.unwrap();
    let status = r.status();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap())
}

/// The `(pointer, rule)` of every violation a 400 lists, sorted.
fn violations(problem: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = problem["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors in {problem}"))
        .iter()
        .map(|e| {
            assert!(e["message"].is_string(), "{e}");
            (
                e["pointer"].as_str().unwrap().to_string(),
                e["rule"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = list
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    out.sort();
    out
}

const KEY: (&str, &str) = ("idempotency-key", "1b4e28ba-2fa1-11d2-883f-0016d3cca427");
const JSON: (&str, &str) = ("content-type", "application/json");

fn new_order() -> Value {
    json!({
        "customer_email": "ada@example.com",
        "lines": [
            {"sku": "BKS-0042", "quantity": 2, "unit_price": {"amount": 12.5, "currency": "EUR"}},
        ],
        "shipping_address": {"line1": "1 Analytical Row", "line2": null, "city": "London", "country": "GB"},
        "payment": {"method": "card", "card_token": "tok_4242424242"},
        "note": null,
    })
}

#[tokio::test]
async fn a_valid_order_reaches_the_upstream_as_sent() {
    let backend = body_echo().await;
    let gw = gateway(backend.addr, &spec_policy("")).await;
    let order = new_order();
    let (status, _, text) = send(
        "POST",
        &gw.url("web", "/v1/orders"),
        &[JSON, KEY],
        &order.to_string(),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let got: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(got["got"], order);
    assert_eq!(got["type"], "application/json");
    let (status, _, text) = send(
        "GET",
        &gw.url(
            "web",
            "/v1/orders?limit=5&status=paid&status=shipped&since=2026-12-01T10:00:00Z",
        ),
        &[("x-request-id", "req-12345678")],
        "",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    // A merge-patch body is one of the types PATCH accepts.
    let (status, _, text) = send(
        "PATCH",
        &gw.url("web", "/v1/orders/7"),
        &[("content-type", "application/merge-patch+json")],
        r#"{"note": null}"#,
    )
    .await;
    assert_eq!(status, 200, "{text}");
}

#[tokio::test]
async fn an_invalid_body_gets_400_listing_every_violation() {
    let backend = body_echo().await;
    let gw = gateway(backend.addr, &spec_policy("")).await;
    let mut order = new_order();
    order["customer_email"] = json!("ada-at-example");
    order["lines"][0]["quantity"] = json!(0);
    order["lines"][0]["unit_price"]["currency"] = json!("euro");
    order["shipping_address"]["line2"] = json!(7);
    order["payment"] = json!({"method": "card", "iban": "DE00"});
    order["gift"] = json!(true);
    let (status, headers, text) = send(
        "POST",
        &gw.url("web", "/v1/orders"),
        &[JSON, KEY, ("x-request-id", "req-bad-body-1")],
        &order.to_string(),
    )
    .await;
    let problem = assert_problem(status, &headers, &text, 400);
    assert_eq!(problem["request_id"], "req-bad-body-1");
    assert!(
        problem["detail"].as_str().unwrap().contains("6 violations"),
        "{problem}"
    );
    assert_eq!(
        violations(&problem),
        pairs(&[
            ("/body", "additionalProperties"),
            ("/body/customer_email", "format"),
            ("/body/lines/0/quantity", "minimum"),
            ("/body/lines/0/unit_price/currency", "pattern"),
            ("/body/shipping_address/line2", "type"),
            ("/body/payment", "oneOf"),
        ])
    );
    // Not JSON at all.
    let (status, headers, text) = send(
        "POST",
        &gw.url("web", "/v1/orders"),
        &[JSON, KEY],
        "{\"lines\": [",
    )
    .await;
    let problem = assert_problem(status, &headers, &text, 400);
    assert_eq!(violations(&problem), pairs(&[("/body", "json")]));
    assert!(backend.seen().is_empty(), "nothing reached the upstream");
}

#[tokio::test]
async fn parameters_are_checked_in_the_path_query_and_headers() {
    let backend = body_echo().await;
    let gw = gateway(backend.addr, &spec_policy("")).await;
    let (status, headers, text) = send("GET", &gw.url("web", "/v1/orders/0/items"), &[], "").await;
    let problem = assert_problem(status, &headers, &text, 400);
    assert_eq!(violations(&problem), pairs(&[("/path/orderId", "minimum")]));

    let (status, headers, text) = send("GET", &gw.url("web", "/v1/orders/abc"), &[], "").await;
    let problem = assert_problem(status, &headers, &text, 400);
    assert_eq!(violations(&problem), pairs(&[("/path/orderId", "type")]));

    let (status, headers, text) = send(
        "GET",
        &gw.url("web", "/v1/orders?limit=500&status=lost&since=yesterday"),
        &[("x-request-id", "short")],
        "",
    )
    .await;
    let problem = assert_problem(status, &headers, &text, 400);
    assert_eq!(
        violations(&problem),
        pairs(&[
            ("/query/limit", "maximum"),
            ("/query/status/0", "enum"),
            ("/query/since", "format"),
            ("/header/x-request-id", "minLength"),
        ])
    );

    // The Idempotency-Key header is required, and a UUID.
    let body = new_order().to_string();
    let (status, headers, text) = send("POST", &gw.url("web", "/v1/orders"), &[JSON], &body).await;
    let problem = assert_problem(status, &headers, &text, 400);
    assert_eq!(
        violations(&problem),
        pairs(&[("/header/idempotency-key", "required")])
    );
    let (status, headers, text) = send(
        "POST",
        &gw.url("web", "/v1/orders"),
        &[JSON, ("Idempotency-Key", "twice")],
        &body,
    )
    .await;
    let problem = assert_problem(status, &headers, &text, 400);
    assert_eq!(
        violations(&problem),
        pairs(&[("/header/idempotency-key", "format")])
    );
    assert!(backend.seen().is_empty());
}

#[tokio::test]
async fn a_content_type_the_operation_does_not_list_gets_415() {
    let backend = body_echo().await;
    let gw = gateway(backend.addr, &spec_policy("")).await;
    let (status, headers, text) = send(
        "POST",
        &gw.url("web", "/v1/orders"),
        &[("content-type", "application/xml"), KEY],
        "<order/>",
    )
    .await;
    let problem = assert_problem(status, &headers, &text, 415);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("application/json"),
        "{problem}"
    );
    assert_eq!(
        violations(&problem),
        pairs(&[("/header/content-type", "contentType")])
    );
    // A required body that is missing is a 400.
    let (status, headers, text) = send("POST", &gw.url("web", "/v1/orders"), &[KEY], "").await;
    let problem = assert_problem(status, &headers, &text, 400);
    assert_eq!(violations(&problem), pairs(&[("/body", "required")]));
    // So is an empty chunked one, which is only known empty once read.
    let answer = raw(
        gw.addr("web"),
        b"POST /v1/orders HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n\
          Idempotency-Key: 1b4e28ba-2fa1-11d2-883f-0016d3cca427\r\n\
          Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
        std::time::Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains(r#""pointer":"/body","rule":"required""#),
        "{answer}"
    );
    assert!(backend.seen().is_empty());
}

#[tokio::test]
async fn strict_mode_answers_unknown_paths_404_and_unknown_methods_405() {
    let backend = body_echo().await;
    let lax = gateway(backend.addr, &spec_policy("")).await;
    let (status, _, _) = send("GET", &lax.url("web", "/v1/customers/1"), &[], "").await;
    assert_eq!(status, 200, "undocumented operations pass without strict");
    let (status, _, _) = send("PUT", &lax.url("web", "/v1/orders/1"), &[], "").await;
    assert_eq!(status, 200);

    let strict = gateway(backend.addr, &spec_policy(", strict: true")).await;
    let (status, headers, text) = send("GET", &strict.url("web", "/v1/customers/1"), &[], "").await;
    assert_problem(status, &headers, &text, 404);
    let (status, headers, text) = send("GET", &strict.url("web", "/orders/1"), &[], "").await;
    assert_problem(status, &headers, &text, 404);
    let (status, headers, text) = send("PUT", &strict.url("web", "/v1/orders/1"), &[], "").await;
    assert_problem(status, &headers, &text, 405);
    assert_eq!(headers["allow"], "GET, DELETE, PATCH, HEAD");
    let (status, _, _) = send("DELETE", &strict.url("web", "/v1/orders/1"), &[], "").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_request_body_past_max_body_gets_413() {
    let backend = body_echo().await;
    let gw = gateway(backend.addr, &spec_policy(", max_body: 256B")).await;
    let mut order = new_order();
    order["note"] = json!("x".repeat(400));
    let (status, headers, text) = send(
        "POST",
        &gw.url("web", "/v1/orders"),
        &[JSON, KEY],
        &order.to_string(),
    )
    .await;
    assert_problem(status, &headers, &text, 413);
    assert!(backend.seen().is_empty());
}

/// A backend answering GET /v1/orders/1 with a good order, /v1/orders/2
/// with one missing fields, /v1/orders/3 with HTML, and the rest 418.
async fn orders_backend() -> Backend {
    Backend::start(|req: http::Request<hyper::body::Incoming>| async move {
        let (status, ctype, text) = match req.uri().path() {
            "/v1/orders/1" => (
                200,
                "application/json",
                r#"{"id": 1, "status": "paid", "customer_email": "ada@example.com", "lines": [], "total": {"amount": 3.5, "currency": "EUR"}, "created_at": "2026-12-07T10:00:00Z"}"#,
            ),
            "/v1/orders/2" => (200, "application/json", r#"{"id": 2, "status": "lost"}"#),
            "/v1/orders/3" => (200, "text/html", "<p>an order</p>"),
            _ => (418, "text/plain", "teapot"),
        };
        let mut r = http::Response::new(body(text));
        *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
        r.headers_mut()
            .insert("content-type", http::HeaderValue::from_static(ctype));
        r
    })
    .await
}

#[tokio::test]
async fn answers_that_break_the_description_are_502_under_enforce() {
    let backend = orders_backend().await;
    let gw = gateway(backend.addr, &spec_policy(", validate_responses: enforce")).await;
    let (status, _, text) = send("GET", &gw.url("web", "/v1/orders/1"), &[], "").await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["id"], 1);
    for path in ["/v1/orders/2", "/v1/orders/3", "/v1/orders/4"] {
        let (status, headers, text) = send("GET", &gw.url("web", path), &[], "").await;
        let problem = assert_problem(status, &headers, &text, 502);
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("did not match"),
            "{problem}"
        );
        assert!(!text.contains(&backend.addr.to_string()), "{text}");
    }
    // The gateway's own refusals are not the upstream's answers.
    let (status, headers, text) = send("GET", &gw.url("web", "/v1/orders/0"), &[], "").await;
    assert_problem(status, &headers, &text, 400);
}

#[tokio::test]
async fn answers_that_break_the_description_pass_under_log() {
    let backend = orders_backend().await;
    let gw = gateway(backend.addr, &spec_policy(", validate_responses: log")).await;
    let (status, _, text) = send("GET", &gw.url("web", "/v1/orders/2"), &[], "").await;
    assert_eq!(status, 200);
    assert_eq!(text, r#"{"id": 2, "status": "lost"}"#);
    let (status, _, text) = send("GET", &gw.url("web", "/v1/orders/4"), &[], "").await;
    assert_eq!((status.as_u16(), text.as_str()), (418, "teapot"));
}

const CATALOG_31: &str = r##"openapi: 3.1.0
info: { title: catalog, version: "2" }
paths:
  /books/{isbn}:
    parameters:
      - { name: isbn, in: path, required: true, schema: { type: string, pattern: "^[0-9]{13}$" } }
    put:
      parameters:
        - { name: dry_run, in: query, schema: { type: [boolean, "null"] } }
      requestBody:
        required: true
        content:
          application/json:
            schema: { $ref: "#/components/schemas/Book" }
      responses:
        "200": { description: stored }
components:
  schemas:
    Book:
      type: object
      required: [title, year]
      properties:
        title: { type: string, minLength: 1 }
        subtitle: { type: [string, "null"] }
        year: { type: [integer, "null"], minimum: 1450 }
        tags: { type: array, items: { type: string }, uniqueItems: true }
        related: { type: array, items: { $ref: "#/components/schemas/Book" } }
"##;

#[tokio::test]
async fn openapi_31_type_arrays_accept_null_and_refuse_other_types() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("catalog.yaml");
    std::fs::write(&spec, CATALOG_31).unwrap();
    let backend = body_echo().await;
    let gw = gateway(
        backend.addr,
        &format!(
            "{{ type: openapi, spec: \"{}\", strict: true }}",
            spec.display()
        ),
    )
    .await;
    let url = gw.url("web", "/books/9780262510875?dry_run=true");
    let (status, _, text) = send(
        "PUT",
        &url,
        &[JSON],
        r#"{"title": "SICP", "subtitle": null, "year": null, "related": [{"title": "HtDP", "year": 2001}]}"#,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let (status, headers, text) = send(
        "PUT",
        &gw.url("web", "/books/12?dry_run=maybe"),
        &[JSON],
        r#"{"title": "", "subtitle": 1, "year": 1200, "tags": ["a", "a"], "related": [{"year": "1999"}]}"#,
    )
    .await;
    let problem = assert_problem(status, &headers, &text, 400);
    assert_eq!(
        violations(&problem),
        pairs(&[
            ("/path/isbn", "pattern"),
            ("/query/dry_run", "type"),
            ("/body/title", "minLength"),
            ("/body/subtitle", "type"),
            ("/body/year", "minimum"),
            ("/body/tags", "uniqueItems"),
            ("/body/related/0", "required"),
            ("/body/related/0/year", "type"),
        ])
    );
}
