//! `jwt`: bearer tokens verified against a secret, a key set file or a key
//! set fetched by URL (and fetched again when a token names a new key);
//! issuer, audience, expiry and required claims; the subject as consumer
//! and claims forwarded as headers; RFC 6750 refusals, counted by reason.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

use crate::common::*;

const SECRET: &str = "test-secret-of-at-least-32-bytes!!";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HS256 token over `claims`, signed with `secret`.
fn hs256(secret: &str, claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// Claims that pass a policy with issuer `idp` and audience `orders`.
fn good_claims(sub: &str) -> Value {
    json!({
        "sub": sub,
        "iss": "idp",
        "aud": "orders",
        "exp": now() + 600,
        "scope": "orders:read profile",
        "tenant": "acme",
    })
}

/// An ES256 signing key and its public JWK under `kid`.
struct EcKey {
    encoding: EncodingKey,
    jwk: Value,
    kid: String,
}

impl EcKey {
    fn new(kid: &str) -> EcKey {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let point = pair.public_key_raw();
        // An uncompressed point: 0x04, then x and y.
        assert_eq!(point.len(), 65);
        EcKey {
            encoding: EncodingKey::from_ec_der(&pair.serialize_der()),
            jwk: json!({
                "kty": "EC",
                "crv": "P-256",
                "kid": kid,
                "use": "sig",
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&point[33..]),
            }),
            kid: kid.to_string(),
        }
    }

    fn sign(&self, claims: Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        encode(&header, &claims, &self.encoding).unwrap()
    }
}

fn jwks(keys: &[&EcKey]) -> String {
    json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() }).to_string()
}

/// A gateway with one catch-all route `all` to `backend` carrying the
/// policies `auth` (the YAML flow mapping `policy`) and, when given, `extra`.
async fn gateway(backend: SocketAddr, policy: &str, extra: Option<&str>) -> TestGateway {
    let mut policies = vec![("auth", policy)];
    policies.extend(extra.map(|e| ("extra", e)));
    TestGateway::start(&policy_config(backend, &policies, "")).await
}

fn secret_policy(more: &str) -> String {
    format!("{{ type: jwt, secret: '{SECRET}', issuer: idp, audiences: [orders]{more} }}")
}

/// GET `url` with `Authorization: Bearer token` (none when empty).
async fn get_with(url: &str, token: &str) -> (http::StatusCode, http::HeaderMap, String) {
    let mut req = client().get(url).header("x-user-id", "spoofed");
    if !token.is_empty() {
        req = req.bearer_auth(token);
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap())
}

/// Asserts a 401 with `WWW-Authenticate: challenge` and returns the detail.
fn assert_401(resp: &(http::StatusCode, http::HeaderMap, String), challenge: &str) -> String {
    let (status, headers, text) = resp;
    let v = assert_problem(*status, headers, text, 401);
    assert_eq!(headers["www-authenticate"], challenge, "{text}");
    v["detail"].as_str().unwrap().to_string()
}

async fn metrics(gw: &TestGateway) -> String {
    get(&gw.admin_url("/metrics")).await.2
}

#[tokio::test]
async fn a_valid_token_passes_with_its_subject_and_claims_forwarded() {
    let backend = Backend::echo("app").await;
    let gw = gateway(
        backend.addr,
        &secret_policy(", forward_claims: { sub: x-user-id, tenant: x-tenant }"),
        None,
    )
    .await;
    let token = hs256(SECRET, good_claims("alice"));
    let (status, _, text) = get_with(&gw.url("web", "/orders"), &token).await;
    assert_eq!(status, 200, "{text}");
    let seen = &backend.seen()[0];
    // The client's own x-user-id is replaced by the token's subject.
    assert_eq!(seen.headers.get_all("x-user-id").iter().count(), 1);
    assert_eq!(seen.headers["x-user-id"], "alice");
    assert_eq!(seen.headers["x-tenant"], "acme");
    assert!(
        seen.headers.contains_key("authorization"),
        "forwarded by default"
    );
}

#[tokio::test]
async fn without_a_token_the_answer_is_401_with_a_bearer_challenge() {
    let backend = Backend::echo("app").await;
    let gw = gateway(backend.addr, &secret_policy(""), None).await;
    let url = gw.url("web", "/orders");
    assert_401(&get_with(&url, "").await, "Bearer");
    // Another scheme is no bearer token either.
    let r = client()
        .get(&url)
        .basic_auth("user", Some("pass"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(backend.seen().is_empty());
    assert!(metrics(&gw).await.contains(
        r#"portcullis_auth_failures_total{route="all",policy="auth",reason="missing"} 2"#
    ));
}

#[tokio::test]
async fn bad_tokens_are_refused_with_invalid_token_and_counted_by_reason() {
    let backend = Backend::echo("app").await;
    let gw = gateway(backend.addr, &secret_policy(""), None).await;
    let url = gw.url("web", "/orders");
    let invalid = "Bearer error=\"invalid_token\"";
    let mut expired = good_claims("alice");
    expired["exp"] = json!(now() - 3600);
    let mut early = good_claims("alice");
    early["nbf"] = json!(now() + 3600);
    let mut issuer = good_claims("alice");
    issuer["iss"] = json!("someone-else");
    let mut audience = good_claims("alice");
    audience["aud"] = json!("billing");
    let mut no_exp = good_claims("alice");
    no_exp.as_object_mut().unwrap().remove("exp");
    // RFC 7515 §4.1.11: an extension marked critical must be understood.
    let mut crit_header = Header::new(Algorithm::HS256);
    crit_header.crit = Some(vec!["urn:example:ext".into()]);
    crit_header
        .extras
        .insert("urn:example:ext", "must-understand");
    let critical = encode(
        &crit_header,
        &good_claims("alice"),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    // An issuer list holding the right issuer is not the right issuer.
    let mut issuers = good_claims("alice");
    issuers["iss"] = json!(["idp", "evil"]);
    let mut numeric_sub = good_claims("alice");
    numeric_sub["sub"] = json!(42);
    let cases = [
        ("expired", hs256(SECRET, expired), "expired"),
        ("not_yet_valid", hs256(SECRET, early), "not valid yet"),
        ("issuer", hs256(SECRET, issuer), "issuer"),
        (
            "audience",
            hs256(SECRET, audience),
            "not meant for this service",
        ),
        ("claims", hs256(SECRET, no_exp), "lacks a claim"),
        (
            "signature",
            hs256("another-secret-of-at-least-32-bytes", good_claims("alice")),
            "signature",
        ),
        ("malformed", "not.a-jwt".to_string(), "well-formed"),
        ("critical_header", critical, "crit header"),
        ("malformed", hs256(SECRET, issuers), "must be strings"),
        ("malformed", hs256(SECRET, numeric_sub), "must be strings"),
    ];
    for (reason, token, detail) in &cases {
        let got = assert_401(&get_with(&url, token).await, invalid);
        assert!(got.contains(detail), "{reason}: {got}");
    }
    assert!(backend.seen().is_empty());
    let m = metrics(&gw).await;
    for (reason, ..) in &cases {
        let line = format!(
            r#"portcullis_auth_failures_total{{route="all",policy="auth",reason="{reason}"}}"#
        );
        assert!(m.contains(&line), "{line} in\n{m}");
    }
}

#[tokio::test]
async fn a_valid_token_without_the_required_claims_gets_403_insufficient_scope() {
    let backend = Backend::echo("app").await;
    let gw = gateway(
        backend.addr,
        &secret_policy(", required_claims: { scope: 'orders:write' }"),
        None,
    )
    .await;
    let url = gw.url("web", "/orders");
    let (status, headers, text) = get_with(&url, &hs256(SECRET, good_claims("alice"))).await;
    assert_problem(status, &headers, &text, 403);
    assert_eq!(
        headers["www-authenticate"],
        "Bearer error=\"insufficient_scope\""
    );
    let mut writer = good_claims("bob");
    writer["scope"] = json!("orders:read orders:write");
    let (status, _, text) = get_with(&url, &hs256(SECRET, writer)).await;
    assert_eq!(status, 200, "{text}");
}

#[tokio::test]
async fn forward_token_false_keeps_the_token_from_the_upstream() {
    let backend = Backend::echo("app").await;
    let gw = gateway(backend.addr, &secret_policy(", forward_token: false"), None).await;
    let (status, ..) = get_with(&gw.url("web", "/"), &hs256(SECRET, good_claims("a"))).await;
    assert_eq!(status, 200);
    assert!(!backend.seen()[0].headers.contains_key("authorization"));
}

#[tokio::test]
async fn a_key_set_file_verifies_es256_tokens_by_kid_and_refuses_algorithm_tricks() {
    let backend = Backend::echo("app").await;
    let key = EcKey::new("k1");
    let other = EcKey::new("k2");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, jwks(&[&key])).unwrap();
    let gw = gateway(
        backend.addr,
        &format!("{{ type: jwt, jwks_file: '{}' }}", file.display()),
        None,
    )
    .await;
    let url = gw.url("web", "/");
    let claims = json!({ "sub": "carol", "exp": now() + 600 });
    let (status, _, text) = get_with(&url, &key.sign(claims.clone())).await;
    assert_eq!(status, 200, "{text}");

    let invalid = "Bearer error=\"invalid_token\"";
    // A key the set does not hold.
    let got = assert_401(&get_with(&url, &other.sign(claims.clone())).await, invalid);
    assert!(got.contains("key this service does not know"), "{got}");
    // The right kid, signed by another key.
    let mut forged = Header::new(Algorithm::ES256);
    forged.kid = Some("k1".into());
    let token = encode(&forged, &claims, &other.encoding).unwrap();
    assert!(assert_401(&get_with(&url, &token).await, invalid).contains("signature"));
    // HS256 "signed" with the public key as the secret: an EC key is
    // never used as an HMAC secret.
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some("k1".into());
    let public = key.jwk.to_string();
    let token = encode(&hs, &claims, &EncodingKey::from_secret(public.as_bytes())).unwrap();
    assert_401(&get_with(&url, &token).await, invalid);
    // alg "none" is not an algorithm at all.
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    assert_401(&get_with(&url, &none).await, invalid);
    assert_eq!(backend.seen().len(), 1);
}

/// A server answering GET with whatever `keys` holds at the time.
async fn key_server(keys: Arc<Mutex<String>>) -> Backend {
    Backend::start(move |_req| {
        let keys = keys.clone();
        async move {
            let text = keys.lock().unwrap().clone();
            http::Response::builder()
                .header("content-type", "application/json")
                .body(body(text))
                .unwrap()
        }
    })
    .await
}

/// An identity provider serving a key set that holds `old` and, after
/// [`Idp::serve`], whatever it is told; and a gateway verifying against it.
struct Idp {
    old: EcKey,
    new: EcKey,
    served: Arc<Mutex<String>>,
    server: Backend,
    gw: TestGateway,
    _backend: Backend,
}

impl Idp {
    async fn start(path: &str) -> Idp {
        let backend = Backend::echo("app").await;
        let (old, new) = (EcKey::new("2026-old"), EcKey::new("2026-new"));
        let served = Arc::new(Mutex::new(jwks(&[&old])));
        let server = key_server(served.clone()).await;
        let policy = format!(
            "{{ type: jwt, jwks_url: 'http://{}{path}', jwks_refresh: 1h }}",
            server.addr
        );
        let gw = gateway(backend.addr, &policy, None).await;
        Idp {
            old,
            new,
            served,
            server,
            gw,
            _backend: backend,
        }
    }

    fn serve(&self, keys: &[&EcKey]) {
        *self.served.lock().unwrap() = jwks(keys);
    }

    /// Whether a request with `token` is let through within 5 s.
    async fn passes_soon(&self, token: &str) -> bool {
        passes_soon(&self.gw.url("web", "/"), token).await
    }
}

/// Whether a GET of `url` with `token` is let through within 5 s (the key
/// set fetched in the background meanwhile).
async fn passes_soon(url: &str, token: &str) -> bool {
    for _ in 0..100 {
        match get_with(url, token).await.0.as_u16() {
            200 => return true,
            // No key set yet, or not the one with this token's key.
            503 | 401 => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("answered {other}"),
        }
    }
    false
}

#[tokio::test]
async fn a_key_set_url_is_fetched_and_fetched_again_when_a_token_names_a_new_key() {
    let idp = Idp::start("/.well-known/jwks.json").await;
    let claims = json!({ "sub": "dave", "exp": now() + 600 });
    // Until the first fetch lands there are no keys: 503, then 200.
    let first = get_with(&idp.gw.url("web", "/"), &idp.old.sign(claims.clone())).await;
    assert!([200, 503].contains(&first.0.as_u16()), "{first:?}");
    assert!(
        idp.passes_soon(&idp.old.sign(claims.clone())).await,
        "never fetched"
    );
    assert_eq!(idp.server.seen()[0].uri, "/.well-known/jwks.json");

    // The issuer rotates; a token under the new key triggers a fetch well
    // before the hour of `jwks_refresh` is up.
    idp.serve(&[&idp.old, &idp.new]);
    assert!(
        idp.passes_soon(&idp.new.sign(claims)).await,
        "the new key was never fetched"
    );
    assert_eq!(idp.server.seen().len(), 2);
}

#[tokio::test]
async fn a_key_set_url_that_answers_no_key_set_is_fetched_again_until_it_does() {
    refused_then_fetched_again(|_| "<html>maintenance</html>".to_string()).await;
}

#[tokio::test]
async fn a_key_set_over_1_mib_is_refused_and_fetched_again() {
    // A usable key set, but padded past the 1 MiB a key set may take.
    refused_then_fetched_again(|key| {
        let keys = jwks(&[key]);
        let padding = "x".repeat(1 << 20);
        format!(
            "{}, \"padding\": \"{padding}\"}}",
            keys.trim_end().trim_end_matches('}')
        )
    })
    .await;
}

/// A key-set URL first answers `first(key)`, which must be refused (503
/// while there are no keys), then the key set with `key`, which a later
/// fetch must find.
async fn refused_then_fetched_again(first: impl Fn(&EcKey) -> String) {
    let backend = Backend::echo("app").await;
    let key = EcKey::new("k1");
    let served = Arc::new(Mutex::new(first(&key)));
    let idp = key_server(served.clone()).await;
    let policy = format!("{{ type: jwt, jwks_url: 'http://{}/keys' }}", idp.addr);
    let gw = gateway(backend.addr, &policy, None).await;
    let url = gw.url("web", "/");
    let token = key.sign(json!({ "sub": "gina", "exp": now() + 600 }));
    assert!(eventually(Duration::from_secs(5), || !idp.seen().is_empty()).await);
    // Nothing usable fetched: no keys to verify with.
    let (status, headers, text) = get_with(&url, &token).await;
    assert_problem(status, &headers, &text, 503);
    // The next attempt (after a second) finds a key set.
    *served.lock().unwrap() = jwks(&[&key]);
    assert!(
        passes_soon(&url, &token).await,
        "the key set was never fetched again"
    );
    assert!(idp.seen().len() >= 2);
}

#[tokio::test]
async fn a_key_set_url_over_https_is_verified_against_jwks_ca() {
    let backend = Backend::echo("app").await;
    let key = EcKey::new("k1");
    let ca = TestCa::new("idp-ca");
    let cert = ca.server("idp", &["127.0.0.1"]);
    let keys = jwks(&[&key]);
    let idp = TlsBackend::start(tls_server_config(&cert, None, &["http/1.1"]), move |_req| {
        let keys = keys.clone();
        async move { http::Response::new(body(keys)) }
    })
    .await;
    let url = format!("https://{}/keys", idp.addr());
    let token = key.sign(json!({ "sub": "hana", "exp": now() + 600 }));
    let trusted = format!(
        "{{ type: jwt, jwks_url: '{url}', jwks_ca: '{}' }}",
        ca.cert_path.display()
    );
    let gw = gateway(backend.addr, &trusted, None).await;
    assert!(
        passes_soon(&gw.url("web", "/"), &token).await,
        "never fetched over TLS"
    );
    // Without the CA, the IdP's certificate is not trusted: no keys, 503.
    let untrusted = gateway(
        backend.addr,
        &format!("{{ type: jwt, jwks_url: '{url}' }}"),
        None,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, headers, text) = get_with(&untrusted.url("web", "/"), &token).await;
    assert_problem(status, &headers, &text, 503);
    assert_eq!(
        idp.seen().len(),
        1,
        "only the gateway that trusts the CA got through"
    );
}

#[tokio::test]
async fn an_unreachable_key_set_url_answers_503_not_a_hang() {
    let backend = Backend::echo("app").await;
    let dead = dead_addr().await;
    let gw = gateway(
        backend.addr,
        &format!("{{ type: jwt, jwks_url: 'http://{dead}/keys' }}"),
        None,
    )
    .await;
    let key = EcKey::new("k");
    let (status, headers, text) = get_with(
        &gw.url("web", "/"),
        &key.sign(json!({ "sub": "x", "exp": now() + 60 })),
    )
    .await;
    assert_problem(status, &headers, &text, 503);
    assert!(backend.seen().is_empty());
}

#[tokio::test]
async fn rate_limits_by_consumer_and_by_claim_count_each_subject_apart() {
    let backend = Backend::echo("app").await;
    for key in ["consumer", "'jwt:sub'"] {
        let gw = gateway(
            backend.addr,
            &secret_policy(""),
            Some(&format!(
                "{{ type: rate_limit, key: {key}, limit: 1, per: 1h }}"
            )),
        )
        .await;
        let url = gw.url("web", "/");
        let alice = hs256(SECRET, good_claims("alice"));
        let bob = hs256(SECRET, good_claims("bob"));
        assert_eq!(get_with(&url, &alice).await.0, 200, "{key}");
        assert_eq!(get_with(&url, &alice).await.0, 429, "{key}");
        assert_eq!(get_with(&url, &bob).await.0, 200, "{key}");
    }
}

#[tokio::test]
async fn a_remembered_token_still_expires_on_time() {
    let backend = Backend::echo("app").await;
    let gw = gateway(backend.addr, &secret_policy(", leeway: 0s"), None).await;
    let url = gw.url("web", "/");
    let mut claims = good_claims("erin");
    claims["exp"] = json!(now() + 2);
    let token = hs256(SECRET, claims);
    assert_eq!(get_with(&url, &token).await.0, 200);
    assert_eq!(get_with(&url, &token).await.0, 200);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let got = assert_401(
        &get_with(&url, &token).await,
        "Bearer error=\"invalid_token\"",
    );
    assert!(got.contains("expired"), "{got}");
}

#[tokio::test]
async fn a_remembered_token_is_refused_once_its_key_is_rotated_out() {
    let idp = Idp::start("/jwks").await;
    let claims = json!({ "sub": "frank", "exp": now() + 600 });
    let old_token = idp.old.sign(claims.clone());
    assert!(idp.passes_soon(&old_token).await, "never fetched");

    // The issuer drops the old key; a token under the new one makes the
    // gateway fetch the set again, and the remembered old token goes.
    idp.serve(&[&idp.new]);
    assert!(
        idp.passes_soon(&idp.new.sign(claims)).await,
        "never fetched again"
    );
    let got = assert_401(
        &get_with(&idp.gw.url("web", "/"), &old_token).await,
        "Bearer error=\"invalid_token\"",
    );
    assert!(got.contains("key this service does not know"), "{got}");
}
