//! `rate_limit` with `store: redis`: one budget for every gateway instance
//! that names the same Redis, and what happens when Redis is down, slow, or
//! comes back. Each test starts its own `redis-server` on a free port.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::*;

/// A gateway with one route to `backend` and the policy `limit` (`policy`,
/// a YAML flow mapping) counting in Redis at `url`.
async fn gateway(backend: SocketAddr, url: &str, policy: &str) -> TestGateway {
    let stores = format!("stores:\n  redis: {{ url: \"{url}\", timeout: 200ms }}");
    TestGateway::start(&policy_config(backend, &[("limit", policy)], &stores)).await
}

#[tokio::test]
async fn two_gateways_on_one_redis_share_one_budget() {
    let redis = Redis::start().await;
    let backend = Backend::echo("app").await;
    let policy = "{ type: rate_limit, store: redis, limit: 3, per: 1h }";
    let a = gateway(backend.addr, &redis.url(), policy).await;
    let b = gateway(backend.addr, &redis.url(), policy).await;
    assert_eq!(status_with(&a.url("web", "/"), &[]).await, 200);
    assert_eq!(status_with(&b.url("web", "/"), &[]).await, 200);
    assert_eq!(status_with(&a.url("web", "/"), &[]).await, 200);
    let (code, headers, text) = get(&b.url("web", "/")).await;
    assert_problem(code, &headers, &text, 429);
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    // One request is earned every 20 minutes.
    assert!((1190..=1200).contains(&retry), "Retry-After: {retry}");
    assert_eq!(status_with(&a.url("web", "/"), &[]).await, 429);
    assert_eq!(backend.seen().len(), 3);

    // One key in Redis, under the prefix and the policy's name, expiring
    // once the budget would have refilled.
    let keys = redis.command(&["KEYS", "portcullis:rl:limit:*"]).await;
    assert!(keys.starts_with("*1\r\n"), "{keys}");
    let key = keys.lines().nth(2).unwrap().to_string();
    let ttl: i64 = redis.command(&["PTTL", &key]).await[1..]
        .trim()
        .parse()
        .unwrap();
    assert!(ttl > 0 && ttl <= 3_600_000, "PTTL {ttl}");
}

#[tokio::test]
async fn keys_are_the_same_value_in_every_instance_but_apart_per_value() {
    let redis = Redis::start().await;
    let backend = Backend::echo("app").await;
    let policy = "{ type: rate_limit, store: redis, key: 'header:x-api-key', limit: 1, per: 1h }";
    let a = gateway(backend.addr, &redis.url(), policy).await;
    let b = gateway(backend.addr, &redis.url(), policy).await;
    let send = |gw: &TestGateway, key: &str| {
        client()
            .get(gw.url("web", "/"))
            .header("x-api-key", key)
            .send()
    };
    assert_eq!(send(&a, "k1").await.unwrap().status(), 200);
    assert_eq!(send(&b, "k1").await.unwrap().status(), 429);
    assert_eq!(send(&b, "k2").await.unwrap().status(), 200);
}

#[tokio::test]
async fn with_redis_down_requests_pass_by_default_and_are_counted_as_store_errors() {
    let backend = Backend::echo("app").await;
    let dead = dead_addr().await;
    let gw = gateway(
        backend.addr,
        &format!("redis://{dead}"),
        "{ type: rate_limit, store: redis, limit: 1, per: 1h }",
    )
    .await;
    for _ in 0..3 {
        assert_eq!(status_with(&gw.url("web", "/"), &[]).await, 200);
    }
    let (_, _, metrics) = get(&gw.admin_url("/metrics")).await;
    assert!(
        metrics.contains(r#"portcullis_rate_limit_store_errors_total{policy="limit"} 3"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn with_on_store_error_deny_a_dead_redis_means_503() {
    let backend = Backend::echo("app").await;
    let dead = dead_addr().await;
    let gw = gateway(
        backend.addr,
        &format!("redis://{dead}"),
        "{ type: rate_limit, store: redis, on_store_error: deny, limit: 1, per: 1h }",
    )
    .await;
    let (code, headers, text) = get(&gw.url("web", "/")).await;
    assert_problem(code, &headers, &text, 503);
    assert!(backend.seen().is_empty());
}

#[tokio::test]
async fn a_redis_that_stops_answering_costs_the_timeout_not_a_hang() {
    let redis = Redis::start().await;
    let backend = Backend::echo("app").await;
    let gw = gateway(
        backend.addr,
        &redis.url(),
        "{ type: rate_limit, store: redis, limit: 100, per: 1s }",
    )
    .await;
    assert_eq!(status_with(&gw.url("web", "/"), &[]).await, 200);
    // Redis holds every client's commands for 3 s.
    assert!(
        redis
            .command(&["CLIENT", "PAUSE", "3000"])
            .await
            .starts_with("+OK")
    );
    let started = Instant::now();
    assert_eq!(status_with(&gw.url("web", "/"), &[]).await, 200);
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1500), "took {took:?}");
}

#[tokio::test]
async fn counting_resumes_when_redis_comes_back() {
    let mut redis = Redis::start().await;
    let port = redis.port;
    let backend = Backend::echo("app").await;
    let gw = gateway(
        backend.addr,
        &redis.url(),
        "{ type: rate_limit, store: redis, limit: 1, per: 1h }",
    )
    .await;
    let url = gw.url("web", "/");
    assert_eq!(status_with(&url, &[]).await, 200);
    assert_eq!(status_with(&url, &[]).await, 429);
    redis.stop();
    // Without Redis, requests pass (on_store_error: allow).
    assert_eq!(status_with(&url, &[]).await, 200);
    // A fresh Redis on the same port holds no counters: one request passes,
    // then the limit holds again once the gateway has reconnected.
    let _redis = Redis::start_on(port).await;
    let mut limited = false;
    for _ in 0..100 {
        if status_with(&url, &[]).await == 429 {
            limited = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(limited, "the gateway never counted in Redis again");
}

#[tokio::test]
async fn a_redis_answering_errors_is_a_store_error_until_it_recovers() {
    let redis = Redis::start().await;
    let backend = Backend::echo("app").await;
    let gw = gateway(
        backend.addr,
        &redis.url(),
        "{ type: rate_limit, store: redis, on_store_error: deny, limit: 100, per: 1s }",
    )
    .await;
    let url = gw.url("web", "/");
    assert_eq!(status_with(&url, &[]).await, 200);
    // A full Redis refuses writes: the connection is fine, the answer is an
    // error, and on_store_error decides.
    let config = ["CONFIG", "SET", "maxmemory", "1"];
    assert!(redis.command(&config).await.starts_with("+OK"));
    let (code, headers, text) = get(&url).await;
    assert_problem(code, &headers, &text, 503);
    let (_, _, metrics) = get(&gw.admin_url("/metrics")).await;
    assert!(
        metrics.contains(r#"portcullis_rate_limit_store_errors_total{policy="limit"} 1"#),
        "{metrics}"
    );
    // Room again: counted in Redis again, on the same connection.
    assert!(
        redis
            .command(&["CONFIG", "SET", "maxmemory", "0"])
            .await
            .starts_with("+OK")
    );
    assert_eq!(status_with(&url, &[]).await, 200);
    assert_eq!(backend.seen().len(), 2);
}

/// GETs `url` and returns the status and the `ratelimit` field.
async fn quota_call(url: &str) -> (u16, String) {
    let r = client().get(url).send().await.unwrap();
    let state = r
        .headers()
        .get("ratelimit")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (r.status().as_u16(), state)
}

#[tokio::test]
async fn a_quota_is_exact_across_instances_and_survives_a_restart() {
    let redis = Redis::start().await;
    let backend = Backend::echo("app").await;
    let policy = "{ type: rate_limit, quota: { limit: 7, per: 1d }, store: redis }";
    let a = gateway(backend.addr, &redis.url(), policy).await;
    let b = gateway(backend.addr, &redis.url(), policy).await;
    let (ua, ub) = (a.url("web", "/x"), b.url("web", "/x"));

    // Both instances at once, 20 requests: exactly 7 pass.
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let url = if i % 2 == 0 { ua.clone() } else { ub.clone() };
            tokio::spawn(async move { quota_call(&url).await })
        })
        .collect();
    let mut passed = 0;
    for c in calls {
        let (status, _) = c.await.unwrap();
        match status {
            200 => passed += 1,
            429 => {}
            other => panic!("status {other}"),
        }
    }
    assert_eq!(passed, 7);
    assert_eq!(backend.seen().len(), 7);

    // The window is the UTC day, from Redis's clock.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let to_midnight = 86400 - now % 86400;
    let r = client().get(&ua).send().await.unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry.abs_diff(to_midnight) <= 2, "{retry} vs {to_midnight}");
    assert_eq!(r.headers()["ratelimit-policy"], "\"limit\";q=7;w=86400");

    // A restarted instance finds the same count.
    drop(a);
    let a = gateway(backend.addr, &redis.url(), policy).await;
    assert_eq!(quota_call(&a.url("web", "/x")).await.0, 429);
}

#[tokio::test]
async fn a_monthly_quota_counts_to_the_end_of_the_utc_month() {
    let redis = Redis::start().await;
    let backend = Backend::echo("app").await;
    let gw = gateway(
        backend.addr,
        &redis.url(),
        "{ type: rate_limit, quota: { limit: 2, per: month }, store: redis }",
    )
    .await;
    let url = gw.url("web", "/x");
    let (status, state) = quota_call(&url).await;
    assert_eq!(status, 200);
    // Seconds to the first day of next month, 00:00 UTC, computed here
    // from the civil calendar.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let (y, m) = civil_year_month(now.div_euclid(86400));
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    let next = days_from_civil(ny, nm) * 86400;
    let t: i64 = state
        .rsplit("t=")
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("{state}"));
    assert!(
        (t - (next - now)).abs() <= 2,
        "{state}: expected t={}",
        next - now
    );
    assert!(state.starts_with("\"limit\";r=1;"), "{state}");
    assert_eq!(quota_call(&url).await.0, 200);
    assert_eq!(quota_call(&url).await.0, 429);
}

/// The (year, month) of a day number since 1970-01-01.
fn civil_year_month(days: i64) -> (i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m)
}

/// The day number of the first of month `m` of year `y`.
fn days_from_civil(y: i64, m: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}
