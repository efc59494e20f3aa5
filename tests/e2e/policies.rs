//! Policies: named in the top-level `policies` map, attached to routes and to
//! listeners, able to answer a request themselves; and the first policy,
//! `ip_filter`, over IPv4 and IPv6 clients.

use std::net::SocketAddr;

use crate::common::*;

/// A gateway with one listener on `bind`, one catch-all route to `backend`
/// carrying the policy `guard`, defined by the YAML flow mapping `policy`.
async fn guarded(bind: &str, backend: SocketAddr, policy: &str) -> TestGateway {
    TestGateway::start(&format!(
        r#"
listeners:
  - name: web
    address: "{bind}"
routes:
  - name: all
    policies: [guard]
    upstream: app
upstreams:
  - name: app
    targets: ["{backend}"]
policies:
  guard: {policy}
"#
    ))
    .await
}

/// Asserts that `url` answers 200 from the backend.
async fn assert_allowed(url: &str) {
    let (status, _, text) = get(url).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"app\""), "{text}");
}

/// Asserts that `url` answers 403 problem+json.
async fn assert_forbidden(url: &str) {
    let (status, headers, text) = get(url).await;
    assert_problem(status, &headers, &text, 403);
}

/// Whether this machine can listen and connect on the IPv6 loopback.
async fn ipv6_loopback_available() -> bool {
    let Ok(listener) = tokio::net::TcpListener::bind("[::1]:0").await else {
        return false;
    };
    let Ok(addr) = listener.local_addr() else {
        return false;
    };
    tokio::net::TcpStream::connect(addr).await.is_ok()
}

/// Returns early (the test passes as skipped) when there is no IPv6 loopback.
macro_rules! require_ipv6 {
    () => {
        if !ipv6_loopback_available().await {
            eprintln!("skipped: this machine has no IPv6 loopback");
            return;
        }
    };
}

#[tokio::test]
async fn ip_filter_lets_an_allowed_ipv4_client_through() {
    let backend = Backend::echo("app").await;
    let gw = guarded(
        "127.0.0.1:0",
        backend.addr,
        "{ type: ip_filter, allow: [127.0.0.0/8] }",
    )
    .await;
    assert_allowed(&gw.url("web", "/x")).await;
    assert_eq!(backend.seen().len(), 1);
}

#[tokio::test]
async fn ip_filter_refuses_an_ipv4_client_outside_the_allow_list_with_403() {
    let backend = Backend::echo("app").await;
    let gw = guarded(
        "127.0.0.1:0",
        backend.addr,
        "{ type: ip_filter, allow: [10.0.0.0/8, \"192.168.0.0/16\"] }",
    )
    .await;
    assert_forbidden(&gw.url("web", "/x")).await;
}

#[tokio::test]
async fn policy_that_answers_stops_the_chain_before_the_upstream() {
    let backend = Backend::echo("app").await;
    let gw = guarded(
        "127.0.0.1:0",
        backend.addr,
        "{ type: ip_filter, deny: [127.0.0.1] }",
    )
    .await;
    for path in ["/", "/a", "/b?c=d"] {
        assert_forbidden(&gw.url("web", path)).await;
    }
    let resp = client()
        .post(gw.url("web", "/upload"))
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert!(
        backend.seen().is_empty(),
        "the upstream saw {:?}",
        backend.seen()
    );
}

#[tokio::test]
async fn ip_filter_deny_wins_over_allow() {
    let backend = Backend::echo("app").await;
    let gw = guarded(
        "127.0.0.1:0",
        backend.addr,
        "{ type: ip_filter, allow: [127.0.0.0/8], deny: [127.0.0.1/32] }",
    )
    .await;
    assert_forbidden(&gw.url("web", "/")).await;
}

#[tokio::test]
async fn ip_filter_without_allow_list_permits_every_client_not_denied() {
    let backend = Backend::echo("app").await;
    let gw = guarded(
        "127.0.0.1:0",
        backend.addr,
        "{ type: ip_filter, deny: [10.0.0.0/8, \"::1/128\"] }",
    )
    .await;
    assert_allowed(&gw.url("web", "/")).await;
}

#[tokio::test]
async fn ip_filter_lets_an_allowed_ipv6_client_through() {
    require_ipv6!();
    let backend = Backend::echo("app").await;
    let gw = guarded(
        "[::1]:0",
        backend.addr,
        "{ type: ip_filter, allow: [\"::1/128\"] }",
    )
    .await;
    assert!(gw.addr("web").is_ipv6());
    assert_allowed(&gw.url("web", "/")).await;
}

#[tokio::test]
async fn ip_filter_refuses_an_ipv6_client_outside_the_allow_list_with_403() {
    require_ipv6!();
    let backend = Backend::echo("app").await;
    // IPv4 rules must not admit the IPv6 loopback.
    let gw = guarded(
        "[::1]:0",
        backend.addr,
        "{ type: ip_filter, allow: [127.0.0.0/8, \"2001:db8::/32\"] }",
    )
    .await;
    assert_forbidden(&gw.url("web", "/")).await;
    assert!(backend.seen().is_empty());
}

#[tokio::test]
async fn ip_filter_deny_wins_over_allow_for_ipv6() {
    require_ipv6!();
    let backend = Backend::echo("app").await;
    let gw = guarded(
        "[::1]:0",
        backend.addr,
        "{ type: ip_filter, allow: [\"::/0\"], deny: [\"::1\"] }",
    )
    .await;
    assert_forbidden(&gw.url("web", "/")).await;
}

#[tokio::test]
async fn listener_policies_run_on_every_route_of_that_listener() {
    let backend = Backend::echo("app").await;
    let gw = TestGateway::start(&format!(
        r#"
listeners:
  - name: guarded
    address: 127.0.0.1:0
    policies: [office-only]
  - name: open
    address: 127.0.0.1:0
routes:
  - name: api
    match: {{ path_prefix: /api }}
    upstream: app
  - name: ping
    match: {{ path: /ping }}
    respond: {{ body: pong }}
upstreams:
  - name: app
    targets: ["{}"]
policies:
  office-only: {{ type: ip_filter, allow: [10.1.0.0/16] }}
"#,
        backend.addr
    ))
    .await;
    assert_forbidden(&gw.url("guarded", "/api/x")).await;
    assert_forbidden(&gw.url("guarded", "/ping")).await;
    assert!(backend.seen().is_empty());
    assert_allowed(&gw.url("open", "/api/x")).await;
    let (status, _, text) = get(&gw.url("open", "/ping")).await;
    assert_eq!((status.as_u16(), text.as_str()), (200, "pong"));
}

#[tokio::test]
async fn route_policies_apply_only_to_their_route() {
    let backend = Backend::echo("app").await;
    let gw = TestGateway::start(&format!(
        r#"
listeners:
  - name: web
    address: 127.0.0.1:0
routes:
  - name: admin
    match: {{ path_prefix: /admin }}
    policies: [office-only]
    upstream: app
  - name: public
    match: {{ path_prefix: / }}
    upstream: app
upstreams:
  - name: app
    targets: ["{}"]
policies:
  office-only: {{ type: ip_filter, allow: [10.1.0.0/16] }}
"#,
        backend.addr
    ))
    .await;
    assert_forbidden(&gw.url("web", "/admin/users")).await;
    assert_allowed(&gw.url("web", "/adminx")).await;
    assert_allowed(&gw.url("web", "/home")).await;
    let paths: Vec<String> = backend.seen().into_iter().map(|s| s.uri).collect();
    assert_eq!(paths, ["/adminx", "/home"]);
}

#[tokio::test]
async fn listener_and_route_policies_both_run() {
    let backend = Backend::echo("app").await;
    let gw = TestGateway::start(&format!(
        r#"
listeners:
  - name: web
    address: 127.0.0.1:0
    policies: [loopback]
routes:
  - name: strict
    match: {{ path_prefix: /strict }}
    policies: [not-me]
    upstream: app
  - name: rest
    match: {{ path_prefix: / }}
    policies: [loopback]
    upstream: app
upstreams:
  - name: app
    targets: ["{}"]
policies:
  loopback: {{ type: ip_filter, allow: [127.0.0.0/8, "::1"] }}
  not-me: {{ type: ip_filter, deny: [127.0.0.1] }}
"#,
        backend.addr
    ))
    .await;
    // The listener's policy lets the client through; the route's refuses it.
    assert_forbidden(&gw.url("web", "/strict")).await;
    // The same policy on the listener and on the route does no harm.
    assert_allowed(&gw.url("web", "/other")).await;
}

#[tokio::test]
async fn a_refusing_policy_stops_the_request_wherever_it_is_listed() {
    let backend = Backend::echo("app").await;
    let gw = TestGateway::start(&format!(
        r#"
listeners:
  - name: web
    address: 127.0.0.1:0
routes:
  - name: refuse-first
    match: {{ path: /a }}
    policies: [not-me, loopback]
    upstream: app
  - name: refuse-last
    match: {{ path: /b }}
    policies: [loopback, not-me]
    upstream: app
  - name: allow-only
    match: {{ path: /c }}
    policies: [loopback, loopback-too]
    upstream: app
upstreams:
  - name: app
    targets: ["{}"]
policies:
  loopback: {{ type: ip_filter, allow: [127.0.0.0/8] }}
  loopback-too: {{ type: ip_filter, allow: [127.0.0.1/32] }}
  not-me: {{ type: ip_filter, deny: [127.0.0.1] }}
"#,
        backend.addr
    ))
    .await;
    assert_forbidden(&gw.url("web", "/a")).await;
    assert_forbidden(&gw.url("web", "/b")).await;
    assert_allowed(&gw.url("web", "/c")).await;
    let paths: Vec<String> = backend.seen().into_iter().map(|s| s.uri).collect();
    assert_eq!(paths, ["/c"]);
}

#[tokio::test]
async fn route_naming_an_undefined_policy_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.yaml");
    std::fs::write(
        &path,
        r#"
listeners:
  - name: web
    address: 127.0.0.1:0
routes:
  - name: all
    policies: [firewal]
    respond: { body: hi }
policies:
  firewall: { type: ip_filter, allow: [127.0.0.0/8] }
"#,
    )
    .unwrap();
    let err = match portcullis::gateway::start(path).await {
        Ok(_) => panic!("a route naming an undefined policy must not load"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("firewal"), "{err}");
    assert!(err.contains("did you mean `firewall`"), "{err}");
}

#[tokio::test]
async fn ip_filter_with_a_bad_network_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.yaml");
    std::fs::write(
        &path,
        r#"
listeners:
  - name: web
    address: 127.0.0.1:0
    policies: [firewall]
routes:
  - name: all
    respond: { body: hi }
policies:
  firewall: { type: ip_filter, allow: [10.0.0.0/8, 10.0.0.300/8] }
"#,
    )
    .unwrap();
    let err = match portcullis::gateway::start(path).await {
        Ok(_) => panic!("a bad CIDR must not load"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("10.0.0.300/8"), "{err}");
}
