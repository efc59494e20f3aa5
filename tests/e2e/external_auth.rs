//! Authentication by an external service: `forward_auth` (an auth service
//! asked about every request, Traefik's ForwardAuth) and `introspection`
//! (OAuth 2.0 Token Introspection, RFC 7662). Real auth servers on port 0:
//! what they see of each request, their answers reaching the client or the
//! upstream, consumers, caching by counting what they were asked, and a
//! server that is down or too slow costing at most the timeout.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::common::*;

/// acme (partners, beta) and ops (staff).
const CONSUMERS: &str = "
consumers:
  - name: acme
    groups: [partners, beta]
  - name: ops
    groups: [staff]
";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// GET (or `method`) `url` with `headers`: status, headers, body text, and
/// how long the answer took.
async fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap, String, Duration) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let mut req = client.request(method.parse().unwrap(), url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if method == "POST" {
        req = req.body("the client's body");
    }
    let started = Instant::now();
    let r = req.send().await.unwrap();
    let status = r.status();
    let h = r.headers().clone();
    let text = r.text().await.unwrap();
    (status, h, text, started.elapsed())
}

async fn call(url: &str, headers: &[(&str, &str)]) -> (StatusCode, http::HeaderMap, String) {
    let (s, h, t, _) = send("GET", url, headers).await;
    (s, h, t)
}

async fn metrics(gw: &TestGateway) -> String {
    get(&gw.admin_url("/metrics")).await.2
}

fn failures(policy: &str, reason: &str, n: u32) -> String {
    format!(
        r#"portcullis_auth_failures_total{{route="all",policy="{policy}",reason="{reason}"}} {n}"#
    )
}

fn respond(status: u16, headers: &[(&str, &str)], text: &str) -> Response<TestBody> {
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(body(text.to_string())).unwrap()
}

// ---------------------------------------------------------------- forward_auth

/// An auth service: `Bearer acme` and `Bearer svc-7` pass (naming
/// themselves in `x-user`), a request with no credential is sent to log in
/// (302), anything else is refused with 401 and a text body.
async fn auth_service() -> Backend {
    Backend::start(|req: Request<Incoming>| async move {
        let authz = req
            .headers()
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_string());
        match authz.as_deref() {
            Some("Bearer acme") | Some("Bearer svc-7") => {
                let user = authz.as_deref().unwrap().trim_start_matches("Bearer ");
                respond(
                    200,
                    &[
                        ("x-user", user),
                        ("x-roles", "a"),
                        ("x-roles", "b"),
                        ("x-secret", "no"),
                    ],
                    "",
                )
            }
            None if !req.headers().contains_key("cookie") => respond(
                302,
                &[
                    ("location", "https://sso.example/login?rd=/orders"),
                    ("set-cookie", "state=xyz; HttpOnly"),
                    ("x-internal", "never to the client"),
                ],
                "",
            ),
            _ => respond(
                401,
                &[
                    ("www-authenticate", "Bearer realm=\"sso\""),
                    ("content-type", "text/plain"),
                    ("x-internal", "never to the client"),
                ],
                "who are you?",
            ),
        }
    })
    .await
}

/// A `forward_auth` definition asking `auth`, with the extra flow-map
/// entries `more`.
fn sso(auth: SocketAddr, more: &str) -> String {
    format!("{{ type: forward_auth, url: 'http://{auth}/check'{more} }}")
}

#[tokio::test]
async fn forward_auth_lets_a_2xx_through_with_its_headers_and_consumer() {
    let backend = Backend::echo("app").await;
    let auth = auth_service().await;
    let policy = sso(
        auth.addr,
        ", copy_headers: [x-user, x-roles], consumer_header: x-user",
    );
    let gw = TestGateway::start(&policy_config(backend.addr, &[("sso", &policy)], CONSUMERS)).await;
    let url = gw.url("web", "/orders/7?x=1");

    // A configured consumer, with its groups; the client's own x-user,
    // x-roles and x-consumer never reach the upstream.
    let (status, _, text, _) = send(
        "POST",
        &url,
        &[
            ("authorization", "Bearer acme"),
            ("cookie", "session=1"),
            ("x-user", "admin"),
            ("x-roles", "root"),
            ("x-consumer", "admin"),
            ("x-other", "not sent"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let echo: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(echo["method"], "POST");
    let seen = &backend.seen()[0];
    assert_eq!(
        seen.headers.get_all("x-user").iter().collect::<Vec<_>>(),
        ["acme"]
    );
    assert_eq!(
        seen.headers.get_all("x-roles").iter().collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert!(
        !seen.headers.contains_key("x-secret"),
        "not in copy_headers"
    );
    assert_eq!(seen.headers["x-consumer"], "acme");
    assert_eq!(seen.headers["x-consumer-groups"], "partners,beta");
    assert_eq!(seen.headers["authorization"], "Bearer acme");

    // What the auth service saw: a GET with the credentials and where the
    // request was going, no body.
    let asked = &auth.seen()[0];
    assert_eq!(asked.method, "GET");
    assert_eq!(asked.uri, "/check");
    let h = &asked.headers;
    assert_eq!(h["authorization"], "Bearer acme");
    assert_eq!(h["cookie"], "session=1");
    assert!(
        !h.contains_key("x-other") && !h.contains_key("x-user"),
        "{h:?}"
    );
    assert_eq!(h["x-forwarded-method"], "POST");
    assert_eq!(h["x-forwarded-uri"], "/orders/7?x=1");
    assert_eq!(h["x-forwarded-host"], gw.addr("web").to_string());
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert!(h.contains_key("x-request-id"));
    assert!(
        !h.contains_key("content-length") && !h.contains_key("transfer-encoding"),
        "{h:?}"
    );

    // A name no consumer has: an anonymous consumer of that name.
    let (status, _, _) = call(&url, &[("authorization", "Bearer svc-7")]).await;
    assert_eq!(status, 200);
    let seen = &backend.seen()[1];
    assert_eq!(seen.headers["x-consumer"], "svc-7");
    assert!(!seen.headers.contains_key("x-consumer-groups"));
}

#[tokio::test]
async fn forward_auth_refusals_reach_the_client_as_the_auth_service_made_them() {
    let backend = Backend::echo("app").await;
    let auth = auth_service().await;
    let gw = TestGateway::start(&policy_config(
        backend.addr,
        &[("sso", &sso(auth.addr, ""))],
        "",
    ))
    .await;
    let url = gw.url("web", "/orders");

    let (status, h, text) = call(&url, &[("authorization", "Bearer mallory")]).await;
    assert_eq!(status, 401);
    assert_eq!(h["www-authenticate"], "Bearer realm=\"sso\"");
    assert_eq!(h["content-type"], "text/plain");
    assert_eq!(text, "who are you?");
    assert!(!h.contains_key("x-internal"));

    let (status, h, text) = call(&url, &[]).await;
    assert_eq!(status, 302, "{text}");
    assert_eq!(h["location"], "https://sso.example/login?rd=/orders");
    assert_eq!(h["set-cookie"], "state=xyz; HttpOnly");
    assert!(!h.contains_key("x-internal"));

    assert!(backend.seen().is_empty());
    let m = metrics(&gw).await;
    assert!(m.contains(&failures("sso", "denied", 2)), "{m}");
}

#[tokio::test]
async fn an_auth_service_that_is_down_or_slow_is_a_503_within_the_timeout() {
    let backend = Backend::echo("app").await;
    let dead = dead_addr().await;
    let slow = Backend::start(|_req| async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        respond(200, &[], "")
    })
    .await;
    let timeout = Duration::from_millis(500);
    let gw = TestGateway::start(&format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
listeners:
  - name: web
    address: "127.0.0.1:0"
routes:
  - name: dead
    match: {{ path_prefix: /dead }}
    policies: [dead]
    upstream: app
  - name: all
    policies: [slow]
    upstream: app
upstreams:
  - name: app
    targets: ["{}"]
policies:
  dead: {}
  slow: {}
"#,
        backend.addr,
        sso(dead, ", timeout: 500ms"),
        sso(slow.addr, ", timeout: 500ms"),
    ))
    .await;
    for path in ["/dead", "/slow"] {
        let (status, h, text, took) = send(
            "GET",
            &gw.url("web", path),
            &[("authorization", "Bearer acme")],
        )
        .await;
        let v = assert_problem(status, &h, &text, 503);
        assert!(
            !v["detail"].as_str().unwrap().contains("127.0.0.1"),
            "{text}"
        );
        assert!(took < timeout + Duration::from_secs(2), "{path}: {took:?}");
    }
    assert_eq!(slow.seen().len(), 1, "the slow service was asked");
    assert!(backend.seen().is_empty(), "never let through unchecked");
    let m = metrics(&gw).await;
    assert!(m.contains(&failures("slow", "unavailable", 1)), "{m}");
    assert!(
        m.contains(
            r#"portcullis_auth_failures_total{route="dead",policy="dead",reason="unavailable"} 1"#
        ),
        "{m}"
    );
}

#[tokio::test]
async fn forward_auth_reuses_a_2xx_for_its_credential_until_cache_ttl() {
    let backend = Backend::echo("app").await;
    let auth = auth_service().await;
    let policy = sso(
        auth.addr,
        ", copy_headers: [x-user], consumer_header: x-user, cache_ttl: 2s",
    );
    let gw = TestGateway::start(&policy_config(backend.addr, &[("sso", &policy)], CONSUMERS)).await;
    let url = gw.url("web", "/");
    let acme = [("authorization", "Bearer acme")];

    for _ in 0..3 {
        assert_eq!(call(&url, &acme).await.0, 200);
    }
    assert_eq!(auth.seen().len(), 1, "asked once within cache_ttl");
    // The remembered answer still sets the headers and the consumer.
    for seen in backend.seen() {
        assert_eq!(seen.headers["x-user"], "acme");
        assert_eq!(seen.headers["x-consumer"], "acme");
    }
    // Another credential is another question; a refusal is never kept.
    assert_eq!(
        call(&url, &[("authorization", "Bearer svc-7")]).await.0,
        200
    );
    assert_eq!(call(&url, &[("authorization", "Bearer eve")]).await.0, 401);
    assert_eq!(call(&url, &[("authorization", "Bearer eve")]).await.0, 401);
    assert_eq!(auth.seen().len(), 4);
    // Once cache_ttl has passed, the service is asked again.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert_eq!(call(&url, &acme).await.0, 200);
    assert_eq!(auth.seen().len(), 5);
}

#[tokio::test]
async fn forward_auth_over_https_trusts_its_ca() {
    let backend = Backend::echo("app").await;
    let ca = TestCa::new("auth-ca");
    let cert = ca.server("auth", &["127.0.0.1"]);
    let auth = TlsBackend::start(
        tls_server_config(&cert, None, &["http/1.1"]),
        |_req| async { respond(200, &[("x-user", "tls-user")], "") },
    )
    .await;
    let url = format!("https://{}/check", auth.addr());
    let trusted = format!(
        "{{ type: forward_auth, url: '{url}', ca: '{}', copy_headers: [x-user] }}",
        ca.cert_path.display()
    );
    let gw = TestGateway::start(&policy_config(backend.addr, &[("sso", &trusted)], "")).await;
    assert_eq!(call(&gw.url("web", "/"), &[]).await.0, 200);
    assert_eq!(backend.seen()[0].headers["x-user"], "tls-user");
    // Without the CA the service's certificate is not trusted: 503.
    let untrusted = format!("{{ type: forward_auth, url: '{url}' }}");
    let gw = TestGateway::start(&policy_config(backend.addr, &[("sso", &untrusted)], "")).await;
    let (status, h, text) = call(&gw.url("web", "/"), &[]).await;
    assert_problem(status, &h, &text, 503);
    assert_eq!(auth.seen().len(), 1);
}

// --------------------------------------------------------------- introspection

/// An introspection endpoint: what it answers for each token, what it was
/// sent (Authorization and body) and how often.
struct Idp {
    server: Backend,
    bodies: Arc<Mutex<Vec<String>>>,
}

/// The endpoint's answer for `token`.
fn introspected(token: &str) -> Value {
    let exp = now() + 600;
    match token {
        "opaque-acme" => json!({
            "active": true, "sub": "acme", "client_id": "web-app", "aud": "orders",
            "scope": "orders:read profile", "tenant": "acme", "exp": exp,
        }),
        "opaque-svc" => json!({
            "active": true, "client_id": "svc-9", "aud": ["billing", "orders"],
            "scope": "orders:read", "tenant": "acme", "exp": exp,
        }),
        "opaque-other-tenant" => json!({
            "active": true, "sub": "ops", "aud": "orders", "scope": "orders:read",
            "tenant": "globex", "exp": exp,
        }),
        "opaque-billing" => json!({
            "active": true, "sub": "acme", "aud": "billing", "scope": "orders:read",
            "tenant": "acme",
        }),
        "opaque-profile-only" => json!({
            "active": true, "sub": "acme", "aud": "orders", "scope": "profile", "tenant": "acme",
        }),
        "short-lived" => json!({
            "active": true, "sub": "acme", "aud": "orders", "scope": "orders:read",
            "tenant": "acme", "exp": now() + 3,
        }),
        // A JWT is just a token to the endpoint.
        t if t.split('.').count() == 3 => json!({
            "active": true, "sub": "ops", "aud": "orders", "scope": "orders:read",
            "tenant": "acme", "token_type": "Bearer",
        }),
        _ => json!({ "active": false }),
    }
}

/// The form member `name` of `body`, percent- and plus-decoded.
fn form_value(body: &str, name: &str) -> Option<String> {
    body.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| {
            let v = v.replace('+', " ");
            let mut out = Vec::new();
            let b = v.as_bytes();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'%' {
                    out.push(u8::from_str_radix(&v[i + 1..i + 3], 16).unwrap());
                    i += 3;
                } else {
                    out.push(b[i]);
                    i += 1;
                }
            }
            String::from_utf8(out).unwrap()
        })
    })
}

impl Idp {
    async fn start() -> Idp {
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let kept = bodies.clone();
        let server = Backend::start(move |req: Request<Incoming>| {
            let kept = kept.clone();
            async move {
                let bytes = req.into_body().collect().await.unwrap().to_bytes();
                let text = String::from_utf8(bytes.to_vec()).unwrap();
                kept.lock().unwrap().push(text.clone());
                let token = form_value(&text, "token").unwrap_or_default();
                respond(
                    200,
                    &[("content-type", "application/json")],
                    &introspected(&token).to_string(),
                )
            }
        })
        .await;
        Idp { server, bodies }
    }

    fn url(&self) -> String {
        format!("http://{}/introspect", self.server.addr)
    }

    fn asked(&self) -> usize {
        self.bodies.lock().unwrap().len()
    }
}

/// An `introspection` definition for `url`, with the extra entries `more`.
fn opaque(url: &str, more: &str) -> String {
    format!(
        "{{ type: introspection, url: '{url}', client_id: gw, client_secret: 's3cret:x', \
         audiences: [orders], required_scopes: ['orders:read']{more} }}"
    )
}

async fn bearer(url: &str, token: &str) -> (StatusCode, http::HeaderMap, String) {
    call(url, &[("authorization", &format!("Bearer {token}"))]).await
}

#[tokio::test]
async fn introspection_passes_an_active_token_as_its_consumer_with_its_claims() {
    let backend = Backend::echo("app").await;
    let idp = Idp::start().await;
    let gw = TestGateway::start(&policy_config(
        backend.addr,
        &[
            ("opaque-tokens", &opaque(&idp.url(), "")),
            ("tenant", "{ type: allow, claims: { tenant: acme } }"),
        ],
        CONSUMERS,
    ))
    .await;
    let url = gw.url("web", "/orders");

    let (status, _, text) = bearer(&url, "opaque-acme").await;
    assert_eq!(status, 200, "{text}");
    let seen = &backend.seen()[0];
    assert_eq!(seen.headers["x-consumer"], "acme");
    assert_eq!(seen.headers["x-consumer-groups"], "partners,beta");
    assert_eq!(seen.headers["authorization"], "Bearer opaque-acme");

    // What the endpoint was sent: a form with the token, and the gateway's
    // own credentials as HTTP Basic, each form-encoded first.
    let asked = &idp.server.seen()[0];
    assert_eq!(asked.method, "POST");
    assert_eq!(asked.uri, "/introspect");
    assert_eq!(
        asked.headers["content-type"],
        "application/x-www-form-urlencoded"
    );
    assert_eq!(
        asked.headers["authorization"],
        format!("Basic {}", STANDARD.encode("gw:s3cret%3Ax"))
    );
    assert_eq!(
        idp.bodies.lock().unwrap()[0],
        "token=opaque-acme&token_type_hint=access_token"
    );

    // No `sub`: the client names the consumer, anonymous here.
    let (status, _, _) = bearer(&url, "opaque-svc").await;
    assert_eq!(status, 200);
    assert_eq!(backend.seen()[1].headers["x-consumer"], "svc-9");
    assert!(!backend.seen()[1].headers.contains_key("x-consumer-groups"));

    // The answer's members are the claims `allow` reads.
    let (status, h, text) = bearer(&url, "opaque-other-tenant").await;
    assert_problem(status, &h, &text, 403);

    // A JWT is introspected like any token; one that needs encoding is
    // sent encoded.
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJvcHMifQ.c2lnbmF0dXJl";
    assert_eq!(bearer(&url, jwt).await.0, 200);
    assert_eq!(backend.seen().last().unwrap().headers["x-consumer"], "ops");
    assert_eq!(bearer(&url, "a+b/c=").await.0, 401);
    let bodies = idp.bodies.lock().unwrap().clone();
    assert!(
        bodies.contains(&"token=a%2Bb%2Fc%3D&token_type_hint=access_token".to_string()),
        "{bodies:?}"
    );
}

#[tokio::test]
async fn introspection_refuses_missing_inactive_and_ungranted_tokens() {
    let backend = Backend::echo("app").await;
    let idp = Idp::start().await;
    let gw = TestGateway::start(&policy_config(
        backend.addr,
        &[("opaque-tokens", &opaque(&idp.url(), ""))],
        "",
    ))
    .await;
    let url = gw.url("web", "/orders");

    let (status, h, text) = call(&url, &[]).await;
    assert_problem(status, &h, &text, 401);
    assert_eq!(h["www-authenticate"], "Bearer");
    assert_eq!(idp.asked(), 0, "no token, no question");

    let (status, h, text) = bearer(&url, "revoked").await;
    assert_problem(status, &h, &text, 401);
    assert_eq!(h["www-authenticate"], "Bearer error=\"invalid_token\"");

    for token in ["opaque-billing", "opaque-profile-only"] {
        let (status, h, text) = bearer(&url, token).await;
        assert_problem(status, &h, &text, 403);
        assert_eq!(h["www-authenticate"], "Bearer error=\"insufficient_scope\"");
    }
    assert!(backend.seen().is_empty());
    let m = metrics(&gw).await;
    for line in [
        failures("opaque-tokens", "missing", 1),
        failures("opaque-tokens", "inactive", 1),
        failures("opaque-tokens", "claims", 2),
    ] {
        assert!(m.contains(&line), "{line} in\n{m}");
    }
}

#[tokio::test]
async fn an_introspection_endpoint_that_cannot_answer_is_a_503_or_a_401_never_a_pass() {
    let backend = Backend::echo("app").await;
    let dead = dead_addr().await;
    let slow = Backend::start(|_req| async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        respond(200, &[], r#"{"active":true}"#)
    })
    .await;
    let broken = Backend::start(|req: Request<Incoming>| async move {
        if req.uri().path() == "/500" {
            respond(500, &[], r#"{"active":true}"#)
        } else {
            respond(
                200,
                &[("content-type", "text/html")],
                "<html>maintenance</html>",
            )
        }
    })
    .await;
    let timeout = Duration::from_millis(500);
    let policy = |url: String, more: &str| opaque(&url, &format!(", timeout: 500ms{more}"));
    let cases = [
        ("dead", policy(format!("http://{dead}/i"), ""), 503),
        ("slow", policy(format!("http://{}/i", slow.addr), ""), 503),
        (
            "status",
            policy(format!("http://{}/500", broken.addr), ""),
            503,
        ),
        ("html", policy(format!("http://{}/i", broken.addr), ""), 503),
        (
            "unauthorized",
            policy(
                format!("http://{}/i", slow.addr),
                ", on_unavailable: unauthorized",
            ),
            401,
        ),
    ];
    for (name, def, expected) in &cases {
        let gw = TestGateway::start(&policy_config(backend.addr, &[(name, def)], "")).await;
        let (status, h, text, took) = send(
            "GET",
            &gw.url("web", "/"),
            &[("authorization", "Bearer opaque-acme")],
        )
        .await;
        assert_problem(status, &h, &text, *expected);
        assert!(took < timeout + Duration::from_secs(2), "{name}: {took:?}");
        if *expected == 401 {
            assert_eq!(h["www-authenticate"], "Bearer error=\"invalid_token\"");
        }
        let m = metrics(&gw).await;
        assert!(m.contains(&failures(name, "unavailable", 1)), "{name}: {m}");
    }
    assert!(backend.seen().is_empty());
}

#[tokio::test]
async fn introspection_reuses_active_answers_until_cache_ttl_or_exp() {
    let backend = Backend::echo("app").await;
    let idp = Idp::start().await;
    let gw = TestGateway::start(&policy_config(
        backend.addr,
        &[("opaque-tokens", &opaque(&idp.url(), ", cache_ttl: 60s"))],
        CONSUMERS,
    ))
    .await;
    let url = gw.url("web", "/");

    for _ in 0..3 {
        assert_eq!(bearer(&url, "opaque-acme").await.0, 200);
    }
    assert_eq!(idp.asked(), 1, "one question within cache_ttl");
    assert!(
        backend
            .seen()
            .iter()
            .all(|s| s.headers["x-consumer"] == "acme")
    );
    // A remembered 403 is still a 403, without asking again.
    assert_eq!(bearer(&url, "opaque-billing").await.0, 403);
    assert_eq!(bearer(&url, "opaque-billing").await.0, 403);
    assert_eq!(idp.asked(), 2);
    // Inactive answers are not kept.
    assert_eq!(bearer(&url, "revoked").await.0, 401);
    assert_eq!(bearer(&url, "revoked").await.0, 401);
    assert_eq!(idp.asked(), 4);
    // A token that expires in under 3 s (over 2: time for two requests on a
    // busy machine) is reused until then, not for 60 s.
    assert_eq!(bearer(&url, "short-lived").await.0, 200);
    assert_eq!(bearer(&url, "short-lived").await.0, 200);
    assert_eq!(idp.asked(), 5);
    tokio::time::sleep(Duration::from_millis(3_100)).await;
    assert_eq!(bearer(&url, "short-lived").await.0, 200);
    assert_eq!(idp.asked(), 6, "asked again once exp had passed");
}

#[tokio::test]
async fn introspected_claims_key_rate_limits_and_forward_token_false_keeps_the_token() {
    let backend = Backend::echo("app").await;
    let idp = Idp::start().await;
    let gw = TestGateway::start(&policy_config(
        backend.addr,
        &[
            (
                "opaque-tokens",
                &opaque(&idp.url(), ", forward_token: false"),
            ),
            (
                "per-client",
                "{ type: rate_limit, key: 'jwt:client_id', limit: 1, per: 1h }",
            ),
        ],
        "",
    ))
    .await;
    let url = gw.url("web", "/");
    assert_eq!(bearer(&url, "opaque-acme").await.0, 200);
    assert!(!backend.seen()[0].headers.contains_key("authorization"));
    assert_eq!(bearer(&url, "opaque-acme").await.0, 429);
    assert_eq!(bearer(&url, "opaque-svc").await.0, 200, "another client_id");
}

// ------------------------------------------------------------ portcullis check

/// `portcullis check -c FILE` on `text`: the exit code and every
/// `(line, message)` of its errors.
fn check(text: &str) -> (Option<i32>, Vec<(u32, String)>, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("portcullis.yaml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check", "-c"])
        .arg(&file)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let prefix = format!("{}:", file.display());
    let errors = stderr
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| {
            let mut parts = rest.splitn(3, ':');
            let line = parts.next()?.parse().ok()?;
            let _col = parts.next()?;
            Some((line, parts.next()?.trim().to_string()))
        })
        .collect();
    (out.status.code(), errors, stderr)
}

const MINIMAL: &str = "\
listeners:
  - name: web
    address: 127.0.0.1:0
routes:
  - name: all
    upstream: app
upstreams:
  - name: app
    targets: [127.0.0.1:9]
";

#[test]
fn check_reports_external_auth_mistakes_at_their_lines() {
    let (code, errors, stderr) = check(&format!(
        "{MINIMAL}\
policies:
  sso:
    type: forward_auth
    url: 'ftp://auth.internal/check'
    copy_headers: [x-user, 'bad header', content-length]
  sso-ca: {{ type: forward_auth, url: 'http://auth.internal/check', ca: ca.pem }}
  opaque:
    type: introspection
    url: 'https://idp.example.com/introspect'
    client_id: ''
    client_secret: s3cret
    ca: no-such-ca.pem
"
    ));
    assert_eq!(code, Some(1), "{stderr}");
    let line_of = |needle: &str| -> u32 {
        errors
            .iter()
            .find(|(_, m)| m.contains(needle))
            .map(|(l, _)| *l)
            .unwrap_or_else(|| panic!("no error containing {needle:?}:\n{stderr}"))
    };
    assert_eq!(line_of("`ftp://auth.internal/check` is not an http"), 13);
    assert_eq!(line_of("`bad header` is not a valid header name"), 14);
    assert_eq!(line_of("`content-length` describes a message"), 14);
    assert_eq!(line_of("`ca` applies to an https `url` only"), 15);
    assert_eq!(line_of("needs the gateway's `client_id`"), 19);
    assert_eq!(line_of("no-such-ca.pem"), 21);
    assert_eq!(errors.len(), 6, "{stderr}");
}

#[test]
fn check_names_an_unknown_key_of_an_external_auth_policy() {
    let (code, errors, stderr) = check(&format!(
        "{MINIMAL}\
policies:
  opaque: {{ type: introspection, url: 'https://idp/i', client_id: gw, client_secret: s, audience: x }}
"
    ));
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(errors.len(), 1, "{stderr}");
    assert_eq!(errors[0].0, 11, "{stderr}");
    assert!(errors[0].1.contains("audience"), "{stderr}");
}

#[test]
fn check_does_not_call_an_auth_service() {
    // Nothing listens there: checking must neither wait for it nor fail.
    let (code, _, stderr) = check(&format!(
        "{MINIMAL}\
policies:
  sso: {{ type: forward_auth, url: 'http://127.0.0.1:9/check', copy_headers: [x-user], cache_ttl: 30s }}
  opaque: {{ type: introspection, url: 'http://127.0.0.1:9/i', client_id: gw, client_secret: s, cache_ttl: 60s }}
"
    ));
    assert_eq!(code, Some(0), "{stderr}");
}
