//! The cache's tiers behind memory: a local directory that a restarted
//! gateway reads again, and Redis shared by two gateway instances (a real
//! `redis-server` per test), purges reaching both, and a dead Redis that
//! only makes misses.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;

use crate::common::*;

/// An origin whose answers are fresh for a minute, tagged by path, and
/// count its requests.
async fn origin() -> (Backend, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let backend = Backend::start(move |req: Request<Incoming>| {
        let c = c.clone();
        async move {
            let n = c.fetch_add(1, Ordering::SeqCst) + 1;
            let path = req.uri().path().to_string();
            let mut r = Response::new(body(format!("{path} #{n}")));
            let h = r.headers_mut();
            h.insert("cache-control", HeaderValue::from_static("max-age=60"));
            h.insert("content-type", HeaderValue::from_static("text/plain"));
            h.insert(
                "cache-tag",
                HeaderValue::from_str(path.trim_start_matches('/')).unwrap(),
            );
            r
        }
    })
    .await;
    (backend, count)
}

/// A GET naming the site's public host, as clients of every instance
/// behind one load balancer do (the host is part of cache keys).
async fn fetch(url: &str) -> (String, String) {
    let resp = client()
        .get(url)
        .header("host", "shop.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let status = resp
        .headers()
        .get("cache-status")
        .map_or("", |v| v.to_str().unwrap())
        .to_string();
    (status, resp.text().await.unwrap())
}

#[tokio::test]
async fn the_disk_tier_serves_what_was_stored_before_a_restart() {
    let (backend, count) = origin().await;
    let dir = tempfile::tempdir().unwrap();
    let cache = format!(
        "{{ type: cache, disk: {{ path: \"{}\", max_size: 10MiB }} }}",
        dir.path().join("cache").display()
    );
    let config = policy_config(backend.addr, &[("edge", &cache)], "");
    let first = TestGateway::start(&config).await;
    let (_, stored) = fetch(&first.url("web", "/page")).await;
    // Written in the background: wait for the record.
    let records = || {
        std::fs::read_dir(dir.path().join("cache"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.path().extension().is_some_and(|x| x == "pce"))
                    .count()
            })
            .unwrap_or(0)
    };
    assert!(eventually(Duration::from_secs(5), || records() == 1).await);
    first.gateway.shutdown().await;
    drop(first);

    let second = TestGateway::start(&config).await;
    let (status, text) = fetch(&second.url("web", "/page")).await;
    assert_eq!(text, stored);
    assert!(status.contains("hit"), "{status}");
    assert_eq!(
        count.load(Ordering::SeqCst),
        1,
        "no second upstream request"
    );
    let v = admin_json(&second, "/api/v1/cache").await;
    assert_eq!(v["caches"][0]["tiers"]["disk"]["entries"], 1, "{v}");
    assert_eq!(
        v["caches"][0]["tiers"]["disk"]["max_bytes"],
        10 << 20,
        "{v}"
    );

    // A purge takes it from the disk too.
    let (_, purged) = purge_cache(&second, r#"{"tag": "page"}"#).await;
    assert_eq!(purged["purged"], 1, "{purged}");
    assert_eq!(purged["tiers"]["disk"], 1, "{purged}");
    assert_eq!(records(), 0);
}

async fn redis_gateway(backend: &Backend, redis: &Redis) -> TestGateway {
    let stores = format!(
        "stores:\n  redis: {{ url: \"{}\", timeout: 200ms }}",
        redis.url()
    );
    TestGateway::start(&policy_config(
        backend.addr,
        &[("edge", "{ type: cache, redis: { max_entry_size: 64KiB } }")],
        &stores,
    ))
    .await
}

#[tokio::test]
async fn a_second_instance_hits_what_the_first_stored_in_redis() {
    let (backend, count) = origin().await;
    let redis = Redis::start().await;
    let a = redis_gateway(&backend, &redis).await;
    let b = redis_gateway(&backend, &redis).await;
    let (status, stored) = fetch(&a.url("web", "/shared")).await;
    assert!(status.contains("stored"), "{status}");
    // Stored in Redis in the background.
    let mut hit = None;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let (status, text) = fetch(&b.url("web", "/shared")).await;
        if status.contains("hit") {
            hit = Some(text);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The polling itself may have missed once before the record landed.
    let upstream = count.load(Ordering::SeqCst);
    assert_eq!(hit.as_deref(), Some(stored.as_str()), "b never hit");
    assert!(upstream <= 2, "{upstream} upstream requests");
    let ttl = redis.command(&["PTTL", &redis_key(&redis).await]).await;
    assert!(ttl.starts_with(':'), "{ttl}");

    // A purge through one instance's admin reaches Redis; the other then
    // misses once its memory copy is gone too.
    let (_, purged) = purge_cache(&a, r#"{"prefix": "/shared"}"#).await;
    assert_eq!(purged["tiers"]["redis"], 1, "{purged}");
    purge_cache(&b, r#"{"prefix": "/shared"}"#).await;
    let (status, _) = fetch(&b.url("web", "/shared")).await;
    assert!(status.contains("fwd=uri-miss"), "{status}");
}

/// The one cache record key in Redis.
async fn redis_key(redis: &Redis) -> String {
    let answer = redis.command(&["KEYS", "*cache:edge:*"]).await;
    // *1\r\n$N\r\nKEY\r\n
    answer.lines().nth(2).unwrap_or_default().to_string()
}

#[tokio::test]
async fn a_dead_redis_tier_makes_misses_in_bounded_time() {
    let (backend, count) = origin().await;
    let mut redis = Redis::start().await;
    let gw = redis_gateway(&backend, &redis).await;
    redis.stop();
    let started = Instant::now();
    for i in 0..3 {
        let (status, _) = fetch(&gw.url("web", &format!("/p{i}"))).await;
        assert!(status.contains("fwd=uri-miss"), "{status}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(count.load(Ordering::SeqCst), 3);
    // Memory still works without Redis.
    let (status, _) = fetch(&gw.url("web", "/p0")).await;
    assert!(status.contains("hit"), "{status}");
}

#[tokio::test]
async fn the_redis_tier_needs_a_redis_store() {
    let (backend, _) = origin().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.yaml");
    std::fs::write(
        &path,
        policy_config(backend.addr, &[("edge", "{ type: cache, redis: {} }")], ""),
    )
    .unwrap();
    let err = portcullis::gateway::start(path)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("stores: { redis"), "{err}");
}

#[tokio::test]
async fn a_disk_tier_directory_that_cannot_be_made_is_a_start_error() {
    let (backend, _) = origin().await;
    let dir = tempfile::tempdir().unwrap();
    // A file where the directory should be.
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"x").unwrap();
    let cache = format!(
        "{{ type: cache, disk: {{ path: \"{}\", max_size: 10MiB }} }}",
        blocker.join("cache").display()
    );
    let path = dir.path().join("portcullis.yaml");
    std::fs::write(&path, policy_config(backend.addr, &[("edge", &cache)], "")).unwrap();
    let err = portcullis::gateway::start(path)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("cache directory") && err.contains("not-a-dir"),
        "{err}"
    );
}
