//! `transform`: JSON bodies changed by dotted path on the way in and out,
//! with request variables; JSON ↔ XML conversion; limits, malformed bodies
//! and what is left alone.

use std::net::SocketAddr;

use http_body_util::BodyExt;
use serde_json::{Value, json};

use crate::common::*;

/// A backend that answers with the request body it got (as JSON when it
/// is), the Content-Length and Content-Type it was sent with, a user
/// object, and an ETag.
async fn body_echo() -> Backend {
    Backend::start(|req: http::Request<hyper::body::Incoming>| async move {
        let length = req
            .headers()
            .get("content-length")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let ctype = req
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let bytes = req.into_body().collect().await.unwrap().to_bytes();
        let got: Value = serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        let answer = json!({"got": got, "length": length, "type": ctype, "user": {"name": "Ada", "secret": "x"}});
        let mut r = http::Response::new(body(answer.to_string()));
        r.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("application/json"),
        );
        r.headers_mut()
            .insert("etag", http::HeaderValue::from_static("\"v1\""));
        r
    })
    .await
}

/// A backend that answers every request with `text` as `content_type`.
async fn typed_answer(content_type: &'static str, text: &'static str) -> Backend {
    Backend::start(move |_req| async move {
        let mut r = http::Response::new(body(text));
        r.headers_mut()
            .insert("content-type", http::HeaderValue::from_static(content_type));
        r
    })
    .await
}

async fn gateway(backend: SocketAddr, policy: &str) -> TestGateway {
    TestGateway::start(&policy_config(backend, &[("shape", policy)], "")).await
}

async fn post(url: &str, ctype: &str, body: &str) -> (u16, http::HeaderMap, String) {
    let r = client()
        .post(url)
        .header("content-type", ctype)
        .header("x-tenant", "acme")
        .header("x-request-id", "req-abcdef12")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap())
}

#[tokio::test]
async fn request_and_response_fields_are_removed_renamed_and_set() {
    let backend = body_echo().await;
    let gw = gateway(
        backend.addr,
        r#"{ type: transform,
             request: { remove: [password], rename: { user.name: user.full_name }, set: { meta.tenant: "{header.x-tenant}", meta.version: 2 } },
             response: { remove: [user.secret], set: { request: "{request_id}" } } }"#,
    )
    .await;
    let sent = r#"{"user": {"name": "Ada", "age": 36}, "password": "hunter2", "list": [1, "é"]}"#;
    let (status, headers, text) = post(&gw.url("web", "/x"), "application/json", sent).await;
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v["got"],
        json!({"user": {"full_name": "Ada", "age": 36}, "list": [1, "é"], "meta": {"tenant": "acme", "version": 2}})
    );
    // The upstream got the new length; the client gets the answer's.
    let upstream_len: usize = v["got"].to_string().len();
    assert_eq!(v["length"], upstream_len.to_string());
    assert_eq!(v["user"], json!({"name": "Ada"}));
    assert_eq!(v["request"], "req-abcdef12");
    assert_eq!(headers["content-length"], text.len().to_string().as_str());
    assert!(!headers.contains_key("etag"), "the old validator went");

    // A request body that is not JSON goes as it is (the JSON answer is
    // still transformed).
    let (status, _, text) = post(&gw.url("web", "/x"), "text/plain", "password=1").await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["got"], "password=1");
}

#[tokio::test]
async fn malformed_and_oversized_bodies_are_refused_with_where_and_why() {
    let backend = body_echo().await;
    let gw = gateway(
        backend.addr,
        "{ type: transform, max_body: 64B, request: { remove: [a] } }",
    )
    .await;
    let url = gw.url("web", "/x");
    let (status, headers, text) = post(&url, "application/json", "{\"a\": 1,\n \"b\": }").await;
    let v = assert_problem(
        http::StatusCode::from_u16(status).unwrap(),
        &headers,
        &text,
        400,
    );
    assert!(
        v["detail"].as_str().unwrap().contains("line 2, column"),
        "{v}"
    );
    let big = format!("{{\"a\": \"{}\"}}", "x".repeat(100));
    let (status, _, _) = post(&url, "application/json", &big).await;
    assert_eq!(status, 413);
    assert!(
        backend.seen().is_empty(),
        "refused bodies never reach the upstream"
    );
}

#[tokio::test]
async fn an_upstream_answer_that_is_not_json_gives_502() {
    let backend = typed_answer("application/json", "{not json").await;
    let gw = gateway(
        backend.addr,
        "{ type: transform, response: { remove: [a] } }",
    )
    .await;
    let (status, headers, text) = get(&gw.url("web", "/x")).await;
    assert_problem(status, &headers, &text, 502);
}

#[tokio::test]
async fn xml_requests_reach_the_upstream_as_json_and_json_answers_go_back_as_xml() {
    let backend = body_echo().await;
    let gw = gateway(
        backend.addr,
        "{ type: transform, request: xml_to_json, response: json_to_xml }",
    )
    .await;
    let sent = "<?xml version=\"1.0\"?>\n<order id=\"7\" xmlns:m=\"urn:m\">\n  \
                <m:item>Grüße &amp; 🦀</m:item>\n  <m:item>b</m:item>\n  <note/>\n</order>";
    let (status, headers, text) =
        post(&gw.url("web", "/x"), "application/xml; charset=utf-8", sent).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(headers["content-type"], "application/xml");
    assert_eq!(headers["content-length"], text.len().to_string().as_str());
    assert!(!headers.contains_key("etag"), "the old validator went");
    // The answer's JSON has several members, so it is wrapped in <root>.
    let v = portcullis::policy::xml::xml_to_json(text.as_bytes()).unwrap();
    let answer = &v["root"];
    assert_eq!(
        answer["got"],
        json!({"order": {"@id": "7", "@xmlns:m": "urn:m", "m:item": ["Grüße & 🦀", "b"], "note": ""}}),
        "{text}"
    );
    assert_eq!(answer["type"], "application/json");
    let upstream_len = answer["got"].to_string().len();
    assert_eq!(answer["length"], upstream_len.to_string());
    assert!(text.contains("<name>Ada</name>"), "{text}");

    // A JSON request is not XML: it goes as it is (its answer still
    // becomes XML).
    let (status, _, text) = post(&gw.url("web", "/x"), "application/json", "{\"a\":1}").await;
    assert_eq!(status, 200);
    let v = portcullis::policy::xml::xml_to_json(text.as_bytes()).unwrap();
    assert_eq!(v["root"]["got"], json!({"a": 1}), "{text}");
}

#[tokio::test]
async fn malformed_xml_and_doctypes_are_refused_with_400() {
    let backend = body_echo().await;
    let gw = gateway(backend.addr, "{ type: transform, request: xml_to_json }").await;
    let url = gw.url("web", "/x");
    let (status, headers, text) = post(&url, "text/xml", "<a>\n  <b>x</c>\n</a>").await;
    let v = assert_problem(
        http::StatusCode::from_u16(status).unwrap(),
        &headers,
        &text,
        400,
    );
    let detail = v["detail"].as_str().unwrap();
    assert!(detail.contains("not valid XML: line 2, column"), "{v}");

    let laughs = "<!DOCTYPE x [<!ENTITY a \"lol\"><!ENTITY b \"&a;&a;&a;&a;\">]>\n<x>&b;</x>";
    let (status, headers, text) = post(&url, "application/soap+xml", laughs).await;
    let v = assert_problem(
        http::StatusCode::from_u16(status).unwrap(),
        &headers,
        &text,
        400,
    );
    assert!(
        v["detail"].as_str().unwrap().contains("DOCTYPE is refused"),
        "{v}"
    );
    assert!(
        backend.seen().is_empty(),
        "refused bodies never reach the upstream"
    );
}

#[tokio::test]
async fn an_upstream_answer_that_is_not_xml_gives_502() {
    let backend = typed_answer("text/xml", "<a><b></a>").await;
    let gw = gateway(backend.addr, "{ type: transform, response: xml_to_json }").await;
    let (status, headers, text) = get(&gw.url("web", "/x")).await;
    assert_problem(status, &headers, &text, 502);
}

#[tokio::test]
async fn a_transforms_own_refusals_pass_its_response_side_as_they_are() {
    let backend = body_echo().await;
    // Conversion on the way back: the 400 stays problem+json, not XML.
    let gw = gateway(
        backend.addr,
        "{ type: transform, request: { remove: [a] }, response: json_to_xml }",
    )
    .await;
    let (status, headers, text) = post(&gw.url("web", "/x"), "application/json", "{\"a\": ").await;
    let v = assert_problem(
        http::StatusCode::from_u16(status).unwrap(),
        &headers,
        &text,
        400,
    );
    assert!(
        v["detail"].as_str().unwrap().contains("not valid JSON"),
        "{v}"
    );

    // Field changes on the way back: the problem body is not edited, and
    // one larger than max_body stays the 413 it is (not a 502).
    let gw = gateway(
        backend.addr,
        "{ type: transform, max_body: 64B, request: { remove: [a] }, response: { remove: [detail], set: { x: 1 } } }",
    )
    .await;
    let url = gw.url("web", "/x");
    let (status, headers, text) = post(&url, "application/json", "{\"a\": ").await;
    let v = assert_problem(
        http::StatusCode::from_u16(status).unwrap(),
        &headers,
        &text,
        400,
    );
    assert!(v["detail"].is_string() && v.get("x").is_none(), "{v}");
    let big = format!("{{\"a\": \"{}\"}}", "x".repeat(100));
    let (status, headers, text) = post(&url, "application/json", &big).await;
    let v = assert_problem(
        http::StatusCode::from_u16(status).unwrap(),
        &headers,
        &text,
        413,
    );
    assert!(v.get("x").is_none(), "{v}");
    assert!(
        backend.seen().is_empty(),
        "refused bodies never reach the upstream"
    );
}

#[tokio::test]
async fn empty_json_answers_and_answers_to_head_pass_response_field_changes() {
    // A 204 that names a JSON type has nothing to change.
    let backend = Backend::start(|_req| async move {
        let mut r = http::Response::new(body(""));
        *r.status_mut() = http::StatusCode::NO_CONTENT;
        r.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("application/json"),
        );
        r
    })
    .await;
    let gw = gateway(
        backend.addr,
        "{ type: transform, response: { remove: [a], set: { x: 1 } } }",
    )
    .await;
    let (status, _, text) = get(&gw.url("web", "/x")).await;
    assert_eq!(status, 204, "{text}");
    assert_eq!(text, "");

    // HEAD: the answer keeps the length of the body a GET would get.
    let backend = body_echo().await;
    let gw = gateway(
        backend.addr,
        "{ type: transform, response: { remove: [user.secret], set: { x: 1 } } }",
    )
    .await;
    let r = client().head(gw.url("web", "/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let length = r.headers()["content-length"].to_str().unwrap().to_string();
    assert_ne!(length, "0", "the upstream's length stands");
    assert_eq!(r.headers()["etag"], "\"v1\"", "nothing was rewritten");
}

#[tokio::test]
async fn doubled_braces_are_single_braces_in_set_strings_with_or_without_variables() {
    let backend = body_echo().await;
    let gw = gateway(
        backend.addr,
        r#"{ type: transform, response: { set: { plain: "{{x}}", filled: "{{{request_id}}}" } } }"#,
    )
    .await;
    let (status, _, text) = post(&gw.url("web", "/x"), "application/json", "{}").await;
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["plain"], "{x}");
    assert_eq!(v["filled"], "{req-abcdef12}");
}

#[tokio::test]
async fn members_keep_their_order_through_field_changes_and_json_to_xml() {
    let backend = typed_answer(
        "application/json",
        r#"{"z":1,"secret":0,"b":{"y":2,"a":3},"m":4}"#,
    )
    .await;
    let gw = gateway(
        backend.addr,
        "{ type: transform, response: { remove: [secret] } }",
    )
    .await;
    let (status, _, text) = get(&gw.url("web", "/x")).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(text, r#"{"z":1,"b":{"y":2,"a":3},"m":4}"#);

    // Schema-ordered XML: Header stays before Body.
    let backend = typed_answer(
        "application/json",
        r#"{"Envelope":{"Header":{"z":"1","a":"2"},"Body":{"Op":"x"}}}"#,
    )
    .await;
    let gw = gateway(backend.addr, "{ type: transform, response: json_to_xml }").await;
    let (status, _, text) = get(&gw.url("web", "/x")).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        text.ends_with(
            "<Envelope><Header><z>1</z><a>2</a></Header><Body><Op>x</Op></Body></Envelope>"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn a_chunked_body_past_the_listeners_max_body_is_413_not_a_broken_body() {
    let backend = body_echo().await;
    let gw = TestGateway::start(&format!(
        r#"
listeners:
  - name: web
    address: "127.0.0.1:0"
    max_body: 100
routes:
  - name: all
    policies: [shape]
    upstream: app
upstreams:
  - name: app
    targets: ["{}"]
policies:
  shape: {{ type: transform, request: {{ remove: [secret] }} }}
"#,
        backend.addr
    ))
    .await;
    // No Content-Length: the listener's limit stops the stream mid-read.
    let chunks: Vec<Result<String, std::io::Error>> = vec![
        Ok("{\"a\": \"".into()),
        Ok("y".repeat(200)),
        Ok("\"}".into()),
    ];
    let r = client()
        .post(gw.url("web", "/"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    assert_problem(status, &headers, &text, 413);
    assert!(text.contains("larger than this listener accepts"), "{text}");
    assert!(backend.seen().is_empty());
}
