//! Consumers and the policies that resolve requests to them: `api_key` (by
//! header and by query parameter), `jwt` (by subject, or another claim),
//! `allow` (consumers, groups, claims, networks), `skip_policies`, and
//! what the upstream learns (`X-Consumer`, `X-Consumer-Groups`, never the
//! credential nor a client's copy of those headers). `portcullis hash-key`.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::common::*;

/// sha256("acme-key-1"), sha256("acme-key-2"), sha256("ops-key").
fn digest(key: &str) -> String {
    portcullis::policy::consumer::hash_key(key.as_bytes())
}

const SECRET: &str = "test-secret-of-at-least-32-bytes!!";

/// The `consumers` section the tests share: acme (partners, two keys) and
/// ops (staff, one key).
fn consumers() -> String {
    format!(
        r#"
consumers:
  - name: acme
    groups: [partners, beta]
    api_keys: ["{}", "{}"]
  - name: ops
    groups: [staff]
    api_keys: ["{}"]
"#,
        digest("acme-key-1"),
        digest("acme-key-2"),
        digest("ops-key")
    )
}

/// A gateway whose one route `all` carries `policies` (name, definition).
async fn gateway(backend: SocketAddr, policies: &[(&str, &str)]) -> TestGateway {
    TestGateway::start(&policy_config(backend, policies, &consumers())).await
}

/// GET `url` with `headers`; status, headers, and the body as JSON (or a
/// string value when it is not JSON).
async fn call(url: &str, headers: &[(&str, &str)]) -> (u16, http::HeaderMap, Value) {
    let mut req = client().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let h = r.headers().clone();
    let text = r.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, h, v)
}

async fn metrics(gw: &TestGateway) -> String {
    get(&gw.admin_url("/metrics")).await.2
}

fn hs256(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn exp() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600
}

#[tokio::test]
async fn an_api_key_in_a_header_names_its_consumer_and_never_reaches_the_upstream() {
    let backend = Backend::echo("app").await;
    let gw = gateway(backend.addr, &[("keys", "{ type: api_key }")]).await;
    let url = gw.url("web", "/orders");

    for key in ["acme-key-1", "acme-key-2"] {
        let (status, _, echo) = call(
            &url,
            &[
                ("x-api-key", key),
                ("x-consumer", "admin"),
                ("x-consumer-groups", "root"),
            ],
        )
        .await;
        assert_eq!(status, 200, "{echo}");
        let h = &echo["headers"];
        assert_eq!(h["x-consumer"], "acme", "{echo}");
        assert_eq!(h["x-consumer-groups"], "partners,beta", "{echo}");
        assert!(
            h.get("x-api-key").is_none(),
            "the key went upstream: {echo}"
        );
    }
    let (_, _, echo) = call(&url, &[("x-api-key", "ops-key")]).await;
    assert_eq!(echo["headers"]["x-consumer"], "ops");
    assert_eq!(echo["headers"]["x-consumer-groups"], "staff");

    // Missing, empty and unknown keys: 401 problem+json with a challenge
    // that says where the key goes; nothing reaches the upstream.
    let seen_before = backend.seen().len();
    for headers in [
        vec![],
        vec![("x-api-key", "")],
        vec![("x-api-key", "acme-key-3")],
    ] {
        let r = client().get(&url);
        let r = headers.iter().fold(r, |r, (k, v)| r.header(*k, *v));
        let r = r.send().await.unwrap();
        let status = r.status();
        let h = r.headers().clone();
        let text = r.text().await.unwrap();
        assert_problem(status, &h, &text, 401);
        assert_eq!(
            h["www-authenticate"],
            "ApiKey realm=\"keys\", header=\"x-api-key\""
        );
    }
    assert_eq!(backend.seen().len(), seen_before);
    let m = metrics(&gw).await;
    assert!(
        m.contains(
            r#"portcullis_auth_failures_total{route="all",policy="keys",reason="missing"} 2"#
        ),
        "{m}"
    );
    assert!(
        m.contains(
            r#"portcullis_auth_failures_total{route="all",policy="keys",reason="unknown_key"} 1"#
        ),
        "{m}"
    );
}

#[tokio::test]
async fn an_api_key_in_the_query_is_removed_and_the_other_parameters_keep_their_order() {
    let backend = Backend::echo("app").await;
    let gw = gateway(
        backend.addr,
        &[("keys", "{ type: api_key, query: api_key }")],
    )
    .await;
    let (status, _, echo) = call(
        &gw.url("web", "/search?q=rust&api_key=acme-key-1&page=2&api_key=x"),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{echo}");
    assert_eq!(echo["path"], "/search?q=rust&page=2");
    assert_eq!(echo["headers"]["x-consumer"], "acme");
    // Percent-encoded keys are decoded before the lookup.
    let (status, _, _) = call(&gw.url("web", "/?api_key=%6Fps-key"), &[]).await;
    assert_eq!(status, 200);
    // A query-only policy ignores the header.
    let (status, h, _) = call(&gw.url("web", "/"), &[("x-api-key", "acme-key-1")]).await;
    assert_eq!(status, 401);
    assert_eq!(
        h["www-authenticate"],
        "ApiKey realm=\"keys\", query=\"api_key\""
    );
}

#[tokio::test]
async fn a_verified_token_names_a_configured_consumer_or_an_anonymous_one() {
    let backend = Backend::echo("app").await;
    let jwt = format!("{{ type: jwt, secret: '{SECRET}' }}");
    let by_client = format!("{{ type: jwt, secret: '{SECRET}', consumer_claim: client_id }}");
    let gw = TestGateway::start(&format!(
        r#"
listeners:
  - name: web
    address: "127.0.0.1:0"
routes:
  - name: sub
    match: {{ path_prefix: /sub }}
    policies: [tokens]
    upstream: app
  - name: client
    match: {{ path_prefix: /client }}
    policies: [client-tokens]
    upstream: app
upstreams:
  - name: app
    targets: ["{}"]
policies:
  tokens: {jwt}
  client-tokens: {by_client}
{}"#,
        backend.addr,
        consumers()
    ))
    .await;
    let bearer = |claims: Value| format!("Bearer {}", hs256(claims));

    let (status, _, echo) = call(
        &gw.url("web", "/sub"),
        &[(
            "authorization",
            &bearer(json!({"sub": "acme", "exp": exp()})),
        )],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(echo["headers"]["x-consumer"], "acme");
    assert_eq!(echo["headers"]["x-consumer-groups"], "partners,beta");

    // A subject that is not in `consumers` still authenticates, as itself.
    let (status, _, echo) = call(
        &gw.url("web", "/sub"),
        &[
            (
                "authorization",
                &bearer(json!({"sub": "svc-9", "exp": exp()})),
            ),
            ("x-consumer-groups", "partners"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(echo["headers"]["x-consumer"], "svc-9");
    assert!(echo["headers"].get("x-consumer-groups").is_none(), "{echo}");

    let (status, _, echo) = call(
        &gw.url("web", "/client"),
        &[(
            "authorization",
            &bearer(json!({"sub": "someone", "client_id": "ops", "exp": exp()})),
        )],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(echo["headers"]["x-consumer"], "ops");
    assert_eq!(echo["headers"]["x-consumer-groups"], "staff");
}

#[tokio::test]
async fn a_route_without_authentication_still_drops_the_clients_consumer_headers() {
    let backend = Backend::echo("app").await;
    let gw = TestGateway::start(&format!(
        r#"
listeners:
  - name: web
    address: "127.0.0.1:0"
routes:
  - name: all
    upstream: app
upstreams:
  - name: app
    targets: ["{}"]
consumer_headers: {{ consumer: x-caller, groups: x-caller-groups }}
"#,
        backend.addr
    ))
    .await;
    let (status, _, echo) = call(
        &gw.url("web", "/"),
        &[
            ("x-caller", "admin"),
            ("x-caller-groups", "root"),
            ("x-consumer", "kept"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    let h = &echo["headers"];
    assert!(
        h.get("x-caller").is_none() && h.get("x-caller-groups").is_none(),
        "{echo}"
    );
    // Only the configured names are the gateway's.
    assert_eq!(h["x-consumer"], "kept");
}

#[tokio::test]
async fn allow_decides_by_consumer_group_claim_and_network_after_authentication() {
    let backend = Backend::echo("app").await;
    // Listed before the key policy: the phases still authenticate first.
    let gw = gateway(
        backend.addr,
        &[
            ("partners-only", "{ type: allow, groups: [partners] }"),
            ("local", "{ type: allow, cidrs: [127.0.0.0/8, '::1'] }"),
            ("keys", "{ type: api_key }"),
        ],
    )
    .await;
    let url = gw.url("web", "/");
    let (status, _, _) = call(&url, &[("x-api-key", "acme-key-1")]).await;
    assert_eq!(status, 200);
    let r = client()
        .get(&url)
        .header("x-api-key", "ops-key")
        .send()
        .await
        .unwrap();
    let (status, h) = (r.status(), r.headers().clone());
    assert_problem(status, &h, &r.text().await.unwrap(), 403);
    // No key: authentication answers before authorization is asked.
    assert_eq!(call(&url, &[]).await.0, 401);
    let m = metrics(&gw).await;
    assert!(
        m.contains(
            r#"portcullis_auth_failures_total{route="all",policy="partners-only",reason="group"} 1"#
        ),
        "{m}"
    );

    // Claims from a token, and a network the client is not in.
    let claims = format!("{{ type: jwt, secret: '{SECRET}' }}");
    let gw = gateway(
        backend.addr,
        &[
            ("tokens", &claims),
            ("admins", "{ type: allow, claims: { roles: [admin, ops] } }"),
        ],
    )
    .await;
    let url = gw.url("web", "/");
    let token = |roles: Value| {
        format!(
            "Bearer {}",
            hs256(json!({"sub": "x", "roles": roles, "exp": exp()}))
        )
    };
    assert_eq!(
        call(&url, &[("authorization", &token(json!(["reader", "ops"])))])
            .await
            .0,
        200
    );
    assert_eq!(
        call(&url, &[("authorization", &token(json!("admin reader")))])
            .await
            .0,
        200
    );
    assert_eq!(
        call(&url, &[("authorization", &token(json!(["reader"])))])
            .await
            .0,
        403
    );
    let gw = gateway(
        backend.addr,
        &[("far", "{ type: allow, cidrs: [10.0.0.0/8] }")],
    )
    .await;
    assert_eq!(call(&gw.url("web", "/"), &[]).await.0, 403);
}

#[tokio::test]
async fn skip_policies_lets_one_route_out_of_its_listeners_authentication() {
    let backend = Backend::echo("app").await;
    let gw = TestGateway::start(&format!(
        r#"
listeners:
  - name: web
    address: "127.0.0.1:0"
    policies: [keys]
routes:
  - name: health
    match: {{ path: /health }}
    skip_policies: [keys]
    respond: {{ status: 200, body: ok }}
  - name: all
    upstream: app
upstreams:
  - name: app
    targets: ["{}"]
policies:
  keys: {{ type: api_key }}
{}"#,
        backend.addr,
        consumers()
    ))
    .await;
    assert_eq!(call(&gw.url("web", "/health"), &[]).await.0, 200);
    assert_eq!(call(&gw.url("web", "/orders"), &[]).await.0, 401);
    assert_eq!(
        call(&gw.url("web", "/orders"), &[("x-api-key", "ops-key")])
            .await
            .0,
        200
    );
}

fn hash_key_cli(args: &[&str], stdin: &str) -> (bool, String, String) {
    run_cli("hash-key", args, stdin)
}

#[test]
fn hash_key_prints_the_digest_consumers_store_from_an_argument_or_stdin() {
    let test = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\n";
    assert_eq!(
        hash_key_cli(&["test"], ""),
        (true, test.into(), String::new())
    );
    assert_eq!(
        hash_key_cli(&[], "test\n"),
        (true, test.into(), String::new())
    );
    let (ok, _, err) = hash_key_cli(&[], "");
    assert!(!ok && err.contains("empty"), "{err}");
}

#[tokio::test]
async fn requests_are_counted_per_consumer_with_a_cap_and_listed_on_the_admin_api() {
    let backend = Backend::echo("app").await;
    let extra = format!(
        "{}\nobservability: {{ max_consumer_series: 1 }}\n",
        consumers()
    );
    let gw = TestGateway::start(&policy_config(
        backend.addr,
        &[
            ("keys", "{ type: api_key }"),
            (
                "limit",
                "{ type: rate_limit, key: consumer, limit: 2, per: 1h }",
            ),
        ],
        &extra,
    ))
    .await;
    let url = gw.url("web", "/x");
    for key in ["acme-key-1", "acme-key-2", "acme-key-1", "ops-key"] {
        call(&url, &[("x-api-key", key)]).await;
    }
    let m = metrics(&gw).await;
    // acme: two answered, one refused by its rate limit; ops is past the
    // cap of 1 and counts as `other`.
    for line in [
        r#"portcullis_consumer_requests_total{consumer="acme",route="all",status_class="2xx"} 2"#,
        r#"portcullis_consumer_requests_total{consumer="acme",route="all",status_class="4xx"} 1"#,
        r#"portcullis_consumer_requests_total{consumer="other",route="all",status_class="2xx"} 1"#,
        r#"portcullis_consumer_request_duration_seconds_count{consumer="acme"} 3"#,
        r#"portcullis_consumer_request_duration_seconds_count{consumer="other"} 1"#,
    ] {
        assert!(m.contains(line), "missing {line}\n{m}");
    }
    assert!(!m.contains(r#"consumer="ops""#), "{m}");

    // The admin list has every consumer, past the cap too.
    let (status, _, body) = get(&gw.admin_url("/api/v1/consumers")).await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    let list = v["consumers"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{v}");
    assert_eq!(list[0]["name"], "acme");
    assert_eq!(list[0]["groups"], json!(["partners", "beta"]));
    assert_eq!(list[0]["requests"], 3);
    assert_eq!(list[0]["rate_limited"], 1);
    assert_eq!(list[0]["metrics_series"], "acme");
    assert!(list[0]["last_seen_unix"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(list[1]["name"], "ops");
    assert_eq!(list[1]["requests"], 1);
    assert_eq!(list[1]["metrics_series"], "other");

    // A reload keeps the counts.
    reload_ok(&gw).await;
    call(&url, &[("x-api-key", "ops-key")]).await;
    let (_, _, body) = get(&gw.admin_url("/api/v1/consumers")).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["consumers"][1]["requests"], 2, "{v}");
    assert_eq!(v["consumers"][0]["requests"], 3, "{v}");
}
