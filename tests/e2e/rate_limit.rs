//! `rate_limit`: a budget per key (client address, header, consumer), 429
//! with `Retry-After` past it, the refusals counted in
//! `portcullis_rate_limited_total`, the counters kept across a reload that
//! keeps the policy's settings.

use std::net::SocketAddr;

use crate::common::*;

/// A configuration with one catch-all route to `backend` carrying the
/// policy `limit`, defined by the YAML flow mapping `policy`.
fn config(backend: SocketAddr, policy: &str) -> String {
    policy_config(backend, &[("limit", policy)], "")
}

#[tokio::test]
async fn past_the_burst_requests_get_429_with_retry_after_and_are_counted() {
    let backend = Backend::echo("app").await;
    let gw = TestGateway::start(&config(
        backend.addr,
        "{ type: rate_limit, key: client_ip, limit: 3, per: 1h }",
    ))
    .await;
    let url = gw.url("web", "/x");
    for _ in 0..3 {
        assert_eq!(status_with(&url, &[]).await, 200);
    }
    let (status, headers, text) = get(&url).await;
    assert_problem(status, &headers, &text, 429);
    // One request is earned every 20 minutes.
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1190..=1200).contains(&retry), "Retry-After: {retry}");
    assert_eq!(headers["ratelimit-limit"], "3");
    assert_eq!(headers["ratelimit-remaining"], "0");
    assert_eq!(
        backend.seen().len(),
        3,
        "refused requests never reach the backend"
    );

    let (_, _, metrics) = get(&gw.admin_url("/metrics")).await;
    assert!(
        metrics.contains(r#"portcullis_rate_limited_total{route="all",policy="limit"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_steady_client_within_the_rate_is_never_refused() {
    let backend = Backend::echo("app").await;
    // 4 per second, one at a time: a request every 250 ms.
    let gw = TestGateway::start(&config(
        backend.addr,
        "{ type: rate_limit, limit: 4, per: 1s, burst: 1 }",
    ))
    .await;
    let url = gw.url("web", "/x");
    for _ in 0..4 {
        assert_eq!(status_with(&url, &[]).await, 200);
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    // Without the pause, the second of two requests is refused.
    assert_eq!(status_with(&url, &[]).await, 200);
    assert_eq!(status_with(&url, &[]).await, 429);
}

#[tokio::test]
async fn each_header_value_has_its_own_budget_and_no_header_means_the_client_address() {
    let backend = Backend::echo("app").await;
    let gw = TestGateway::start(&config(
        backend.addr,
        "{ type: rate_limit, key: 'header:x-api-user', limit: 1, per: 1h }",
    ))
    .await;
    let url = gw.url("web", "/x");
    assert_eq!(status_with(&url, &[("x-api-user", "alice")]).await, 200);
    assert_eq!(status_with(&url, &[("x-api-user", "alice")]).await, 429);
    assert_eq!(status_with(&url, &[("x-api-user", "bob")]).await, 200);
    // Without the header, the client's address is the key: one budget.
    assert_eq!(status_with(&url, &[]).await, 200);
    assert_eq!(status_with(&url, &[]).await, 429);
}

#[tokio::test]
async fn counters_survive_a_reload_that_keeps_the_settings_and_restart_when_they_change() {
    let backend = Backend::echo("app").await;
    let policy = "{ type: rate_limit, limit: 2, per: 1h }";
    let gw = TestGateway::start(&config(backend.addr, policy)).await;
    let url = gw.url("web", "/x");
    assert_eq!(status_with(&url, &[]).await, 200);
    assert_eq!(status_with(&url, &[]).await, 200);
    assert_eq!(status_with(&url, &[]).await, 429);

    // Same settings (another route added): the budget is still spent.
    let mut same = config(backend.addr, policy);
    same = same.replace(
        "routes:\n",
        "routes:\n  - name: other\n    match: { path: /other }\n    upstream: app\n",
    );
    gw.write_config(&same);
    reload_ok(&gw).await;
    assert_eq!(status_with(&url, &[]).await, 429);

    // A new limit starts new counters.
    gw.write_config(&config(
        backend.addr,
        "{ type: rate_limit, limit: 3, per: 1h }",
    ));
    reload_ok(&gw).await;
    assert_eq!(status_with(&url, &[]).await, 200);
}

#[tokio::test]
async fn a_listener_wide_limit_counts_every_route_together() {
    let backend = Backend::echo("app").await;
    let gw = TestGateway::start(&format!(
        r#"
listeners:
  - name: web
    address: "127.0.0.1:0"
    policies: [limit]
routes:
  - name: a
    match: {{ path_prefix: /a }}
    upstream: app
  - name: b
    upstream: app
upstreams:
  - name: app
    targets: ["{}"]
policies:
  limit: {{ type: rate_limit, limit: 2, per: 1h }}
"#,
        backend.addr
    ))
    .await;
    assert_eq!(status_with(&gw.url("web", "/a"), &[]).await, 200);
    assert_eq!(status_with(&gw.url("web", "/b"), &[]).await, 200);
    assert_eq!(status_with(&gw.url("web", "/a"), &[]).await, 429);
    assert_eq!(status_with(&gw.url("web", "/b"), &[]).await, 429);
}
