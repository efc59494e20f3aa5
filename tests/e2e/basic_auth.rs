//! `basic_auth`: user names and passwords of `consumers` (RFC 7617) with
//! argon2id and bcrypt hashes; what the upstream sees (the consumer, never
//! the credential); every refusal with its challenge and metric reason;
//! guessing slowed per client address; a reload taking a changed password
//! at once; `portcullis hash-password` whose output the gateway accepts.

use base64::Engine;
use serde_json::Value;

use crate::common::*;

const CHALLENGE: &str = "Basic realm=\"staff\", charset=\"UTF-8\"";

/// A real argon2id hash, at a cost fit for tests (the gateway reads the
/// parameters from the hash).
fn argon2id(password: &str) -> String {
    use argon2::PasswordHasher;
    let params = argon2::Params::new(256, 1, 1, None).unwrap();
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(password.as_bytes())
        .unwrap()
        .to_string()
}

/// A real bcrypt hash at the lowest cost.
fn bcrypt(password: &str) -> String {
    ::bcrypt::hash(password, 4).unwrap()
}

/// `alice` (argon2id, groups staff and ops), `bob` (bcrypt, staff) and
/// `carol` (an API key, no password).
fn consumers(alice: &str, bob: &str) -> String {
    format!(
        r#"
consumers:
  - name: alice
    groups: [staff, ops]
    password_hash: "{alice}"
  - name: bob
    groups: [staff]
    password_hash: '{bob}'
  - name: carol
    api_keys: ["{}"]
"#,
        portcullis::policy::consumer::hash_key(b"carol-key")
    )
}

fn basic(user_and_password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_and_password)
    )
}

/// GET `url` with `headers`: status, headers and body text.
async fn call(url: &str, headers: &[(&str, &str)]) -> (http::StatusCode, http::HeaderMap, String) {
    let r = headers
        .iter()
        .fold(client().get(url), |r, (k, v)| r.header(*k, *v))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let h = r.headers().clone();
    (status, h, r.text().await.unwrap())
}

async fn metrics(gw: &TestGateway) -> String {
    get(&gw.admin_url("/metrics")).await.2
}

fn failures(policy: &str, reason: &str, n: u32) -> String {
    format!(
        r#"portcullis_auth_failures_total{{route="all",policy="{policy}",reason="{reason}"}} {n}"#
    )
}

#[tokio::test]
async fn a_good_password_in_either_format_names_the_consumer_and_stays_at_the_gateway() {
    let backend = Backend::echo("app").await;
    let gw = TestGateway::start(&policy_config(
        backend.addr,
        &[("staff-login", "{ type: basic_auth, realm: staff }")],
        &consumers(&argon2id("alice-pw"), &bcrypt("bob: pw")),
    ))
    .await;
    let url = gw.url("web", "/reports");

    // Twice each: the second is answered from the cache, the same way.
    for (credential, consumer, groups) in [
        ("alice:alice-pw", "alice", "staff,ops"),
        ("alice:alice-pw", "alice", "staff,ops"),
        ("bob:bob: pw", "bob", "staff"),
        ("bob:bob: pw", "bob", "staff"),
    ] {
        let (status, _, text) = call(
            &url,
            &[
                ("authorization", &basic(credential)),
                ("x-consumer", "admin"),
                ("x-consumer-groups", "root"),
            ],
        )
        .await;
        assert_eq!(status, 200, "{text}");
        let echo: Value = serde_json::from_str(&text).unwrap();
        let h = &echo["headers"];
        assert_eq!(h["x-consumer"], consumer, "{echo}");
        assert_eq!(h["x-consumer-groups"], groups, "{echo}");
        assert!(
            h.get("authorization").is_none(),
            "the credential went upstream: {echo}"
        );
    }
    // The scheme in any case.
    let lower = basic("alice:alice-pw").replace("Basic", "basic");
    let (status, _, _) = call(&url, &[("authorization", &lower)]).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn every_refusal_is_401_with_the_basic_challenge_and_counted_by_reason() {
    let backend = Backend::echo("app").await;
    let gw = TestGateway::start(&policy_config(
        backend.addr,
        &[("staff-login", "{ type: basic_auth, realm: staff }")],
        &consumers(&argon2id("alice-pw"), &bcrypt("bob-pw")),
    ))
    .await;
    let url = gw.url("web", "/");

    let alice_wrong = basic("alice:bob-pw");
    let bob_wrong = basic("bob:alice-pw");
    let unknown = basic("mallory:alice-pw");
    let no_password = basic("carol:carol-key");
    let no_colon = basic("alice");
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[], "missing"),
        (&[("authorization", "Bearer abc")], "missing"),
        (&[("x-api-key", "carol-key")], "missing"),
        (&[("authorization", "Basic")], "malformed"),
        (&[("authorization", "Basic %%%")], "malformed"),
        (&[("authorization", &no_colon)], "malformed"),
        (&[("authorization", &alice_wrong)], "wrong_password"),
        (&[("authorization", &bob_wrong)], "wrong_password"),
        (&[("authorization", &unknown)], "unknown_user"),
        // A consumer without a password hash is no basic-auth user.
        (&[("authorization", &no_password)], "unknown_user"),
    ];
    for (headers, reason) in cases {
        let (status, h, text) = call(&url, headers).await;
        let problem = assert_problem(status, &h, &text, 401);
        assert_eq!(h["www-authenticate"], CHALLENGE, "{reason}");
        // Which users exist is not told: one answer for both.
        if reason.ends_with("_user") || reason.ends_with("_password") {
            assert_eq!(
                problem["detail"], "the user name or password is not valid",
                "{reason}"
            );
        }
    }
    assert!(backend.seen().is_empty(), "a refused request went upstream");
    let m = metrics(&gw).await;
    for (reason, n) in [
        ("missing", 3),
        ("malformed", 3),
        ("wrong_password", 2),
        ("unknown_user", 2),
    ] {
        assert!(
            m.contains(&failures("staff-login", reason, n)),
            "{reason}\n{m}"
        );
    }
}

#[tokio::test]
async fn the_realm_defaults_to_the_policy_name_and_credentials_may_be_forwarded() {
    let backend = Backend::echo("app").await;
    let gw = TestGateway::start(&policy_config(
        backend.addr,
        &[(
            "intranet",
            "{ type: basic_auth, forward_credentials: true, cache_size: 0 }",
        )],
        &consumers(&argon2id("alice-pw"), &bcrypt("bob-pw")),
    ))
    .await;
    let url = gw.url("web", "/");
    let (status, h, _) = call(&url, &[]).await;
    assert_eq!(status, 401);
    assert_eq!(
        h["www-authenticate"],
        "Basic realm=\"intranet\", charset=\"UTF-8\""
    );
    let credential = basic("alice:alice-pw");
    let (status, _, text) = call(&url, &[("authorization", &credential)]).await;
    assert_eq!(status, 200, "{text}");
    let echo: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(echo["headers"]["authorization"], credential.as_str());
    assert_eq!(echo["headers"]["x-consumer"], "alice");
}

#[tokio::test]
async fn spent_failures_get_429_without_a_check_even_for_the_right_password() {
    let backend = Backend::echo("app").await;
    let gw = TestGateway::start(&policy_config(
        backend.addr,
        &[(
            "staff-login",
            "{ type: basic_auth, realm: staff, max_failures: 3, failure_window: 1h }",
        )],
        &consumers(&argon2id("alice-pw"), &bcrypt("bob-pw")),
    ))
    .await;
    let url = gw.url("web", "/");
    let good = basic("alice:alice-pw");
    // Verified (and remembered) before the guessing starts.
    let (status, _, _) = call(&url, &[("authorization", &good)]).await;
    assert_eq!(status, 200);
    for guess in ["alice:123456", "alice:password", "nobody:alice-pw"] {
        let (status, _, _) = call(&url, &[("authorization", &basic(guess))]).await;
        assert_eq!(status, 401, "{guess}");
    }
    // Spent: the right password (remembered or not) and any guess are
    // refused alike, so a guesser cannot learn which guess was right.
    for credential in [&good, &basic("bob:bob-pw"), &basic("alice:letmein")] {
        let (status, h, text) = call(&url, &[("authorization", credential)]).await;
        assert_problem(status, &h, &text, 429);
        // One failure is earned back every 20 minutes.
        let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1_190..=1_200).contains(&retry), "{retry}");
        assert!(!h.contains_key("www-authenticate"));
    }
    // No credentials, nothing to check: still the challenge.
    let (status, _, _) = call(&url, &[]).await;
    assert_eq!(status, 401);
    let m = metrics(&gw).await;
    assert!(
        m.contains(&failures("staff-login", "too_many_failures", 3)),
        "{m}"
    );
    assert!(
        m.contains(&failures("staff-login", "wrong_password", 2)),
        "{m}"
    );
    assert!(
        m.contains(&failures("staff-login", "unknown_user", 1)),
        "{m}"
    );
    assert_eq!(backend.seen().len(), 1);
}

#[tokio::test]
async fn a_reload_forgets_remembered_credentials_so_a_new_password_counts_at_once() {
    let backend = Backend::echo("app").await;
    let policies = [("staff-login", "{ type: basic_auth, realm: staff }")];
    let gw = TestGateway::start(&policy_config(
        backend.addr,
        &policies,
        &consumers(&argon2id("old-pw"), &bcrypt("bob-pw")),
    ))
    .await;
    let url = gw.url("web", "/");
    let old = basic("alice:old-pw");
    let (status, _, _) = call(&url, &[("authorization", &old)]).await;
    assert_eq!(status, 200);

    gw.write_config(&policy_config(
        backend.addr,
        &policies,
        &consumers(&argon2id("new-pw"), &bcrypt("bob-pw")),
    ));
    reload_ok(&gw).await;
    let (status, _, _) = call(&url, &[("authorization", &old)]).await;
    assert_eq!(status, 401, "the old password was still remembered");
    let (status, _, _) = call(&url, &[("authorization", &basic("alice:new-pw"))]).await;
    assert_eq!(status, 200);
}

/// Runs `portcullis hash-password ARGS` with `stdin`: success, stdout, stderr.
fn hash_password_cli(args: &[&str], stdin: &str) -> (bool, String, String) {
    run_cli("hash-password", args, stdin)
}

#[tokio::test]
async fn hash_password_prints_hashes_the_gateway_accepts() {
    let (ok, argon, err) = hash_password_cli(&[], "correct horse\n");
    assert!(ok, "{err}");
    let argon = argon.trim_end();
    assert!(
        argon.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{argon}"
    );
    // A fresh salt every time.
    let (_, again, _) = hash_password_cli(&[], "correct horse\n");
    assert_ne!(argon, again.trim_end());
    let (ok, bcrypt, err) = hash_password_cli(&["--bcrypt"], "battery staple");
    assert!(ok, "{err}");
    let bcrypt = bcrypt.trim_end();
    assert!(
        bcrypt.starts_with("$2b$12$") && bcrypt.len() == 60,
        "{bcrypt}"
    );

    let backend = Backend::echo("app").await;
    let gw = TestGateway::start(&policy_config(
        backend.addr,
        &[("staff-login", "{ type: basic_auth, realm: staff }")],
        &consumers(argon, bcrypt),
    ))
    .await;
    let url = gw.url("web", "/");
    for (credential, status) in [
        ("alice:correct horse", 200),
        ("bob:battery staple", 200),
        ("alice:correct horse\n", 401),
    ] {
        let (got, _, _) = call(&url, &[("authorization", &basic(credential))]).await;
        assert_eq!(got, status, "{credential:?}");
    }

    for stdin in ["", "\n"] {
        let (ok, out, err) = hash_password_cli(&[], stdin);
        assert!(!ok && out.is_empty() && err.contains("empty"), "{err}");
    }
}
