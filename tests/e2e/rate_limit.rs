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
    // The IETF httpapi fields: the policy (3 at once, whole again after
    // an hour) and where the client stands.
    assert_eq!(headers["ratelimit-policy"], "\"limit\";q=3;w=3600");
    assert_eq!(
        headers["ratelimit"],
        format!("\"limit\";r=0;t={retry}").as_str()
    );
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

#[tokio::test]
async fn allowed_answers_say_how_much_is_left_unless_headers_are_off() {
    let backend = Backend::echo("app").await;
    let gw = TestGateway::start(&policy_config(
        backend.addr,
        &[
            ("hourly", "{ type: rate_limit, limit: 3, per: 1h }"),
            (
                "quiet",
                "{ type: rate_limit, limit: 100, per: 1s, headers: false }",
            ),
        ],
        "",
    ))
    .await;
    let url = gw.url("web", "/x");
    for (left, full_in) in [(2, 1200), (1, 2400), (0, 3600)] {
        let (status, headers, _) = get(&url).await;
        assert_eq!(status, 200);
        assert_eq!(headers["ratelimit-policy"], "\"hourly\";q=3;w=3600");
        let state = headers["ratelimit"].to_str().unwrap();
        // `t` rounds up a wait that started a moment ago.
        assert!(
            [full_in, full_in - 1]
                .iter()
                .any(|t| state == format!("\"hourly\";r={left};t={t}")),
            "{state}"
        );
        assert_eq!(
            headers.get_all("ratelimit").iter().count(),
            1,
            "quiet adds none"
        );
    }
    let (status, headers, _) = get(&url).await;
    assert_eq!(status, 429);
    assert!(headers.contains_key("retry-after"));

    let gw = TestGateway::start(&policy_config(
        backend.addr,
        &[(
            "quiet",
            "{ type: rate_limit, limit: 1, per: 1h, headers: false }",
        )],
        "",
    ))
    .await;
    let url = gw.url("web", "/x");
    let (_, headers, _) = get(&url).await;
    assert!(!headers.contains_key("ratelimit") && !headers.contains_key("ratelimit-policy"));
    let (status, headers, _) = get(&url).await;
    assert_eq!(status, 429);
    assert!(
        headers.contains_key("retry-after"),
        "Retry-After is always sent"
    );
    assert!(!headers.contains_key("ratelimit"));
}

#[tokio::test]
async fn a_consumer_has_its_own_limit_and_key_consumer_counts_by_consumer() {
    let backend = Backend::echo("app").await;
    let digest = |k: &str| portcullis::policy::consumer::hash_key(k.as_bytes());
    let consumers = format!(
        r#"
consumers:
  - name: acme
    api_keys: ["{}", "{}"]
    rate_limits: {{ per-consumer: {{ limit: 5, per: 1h }} }}
  - name: ops
    api_keys: ["{}"]
"#,
        digest("acme-1"),
        digest("acme-2"),
        digest("ops-1")
    );
    // Listed before the key policy: authentication still runs first.
    let gw = TestGateway::start(&policy_config(
        backend.addr,
        &[
            (
                "per-consumer",
                "{ type: rate_limit, key: consumer, limit: 2, per: 1h }",
            ),
            ("keys", "{ type: api_key }"),
        ],
        &consumers,
    ))
    .await;
    let url = gw.url("web", "/x");
    // ops has the policy's 2; acme its own 5, shared by both its keys.
    assert_eq!(status_with(&url, &[("x-api-key", "ops-1")]).await, 200);
    assert_eq!(status_with(&url, &[("x-api-key", "ops-1")]).await, 200);
    assert_eq!(status_with(&url, &[("x-api-key", "ops-1")]).await, 429);
    for i in 0..5 {
        let key = if i % 2 == 0 { "acme-1" } else { "acme-2" };
        let r = client()
            .get(&url)
            .header("x-api-key", key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(
            r.headers()["ratelimit-policy"],
            "\"per-consumer\";q=5;w=3600"
        );
    }
    assert_eq!(status_with(&url, &[("x-api-key", "acme-2")]).await, 429);
}
