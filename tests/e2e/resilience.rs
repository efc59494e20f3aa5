//! Retries, outlier detection and circuit breaking (issue 3, items 4–6).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::{Response, StatusCode};
use http_body_util::BodyExt;

use crate::common::*;

fn upstream_config(targets: &[std::net::SocketAddr], extra: &str) -> String {
    let list: Vec<String> = targets.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        r#"
admin:
  address: 127.0.0.1:0
listeners:
  - name: web
    address: 127.0.0.1:0
routes:
  - name: all
    upstream: app
upstreams:
  - name: app
    targets: [{}]
{extra}
"#,
        list.join(", ")
    )
}

async fn metric(gw: &TestGateway, name: &str) -> f64 {
    let (_, _, text) = get(&gw.admin_url("/metrics")).await;
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A backend that answers with `status` and counts its requests.
async fn counting(status: u16) -> (Backend, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let b = Backend::start(move |req: http::Request<hyper::body::Incoming>| {
        let h = h.clone();
        async move {
            h.fetch_add(1, Ordering::SeqCst);
            let bytes = req
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let mut r = Response::new(body(bytes));
            *r.status_mut() = StatusCode::from_u16(status).unwrap();
            r
        }
    })
    .await;
    (b, hits)
}

#[tokio::test]
async fn a_target_killed_under_load_fails_no_get_when_retries_are_on() {
    let a = Backend::echo("a").await;
    let b = Backend::echo("b").await;
    let c = Backend::echo("c").await;
    let gw = TestGateway::start(&upstream_config(
        &[a.addr, b.addr, c.addr],
        r#"    retries: { attempts: 2, backoff: 5ms, on: [connect_error, reset, "502", "503"], budget_percent: 50 }
    outlier_detection: { consecutive_failures: 1, base_ejection: 5s }"#,
    ))
    .await;
    let url = gw.url("web", "/work");
    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (url, failures, done) = (url.clone(), failures.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let client = client();
            for _ in 0..150 {
                match client.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {}
                    _ => {
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    assert!(
        eventually(Duration::from_secs(10), || done.load(Ordering::SeqCst)
            >= 150)
        .await
    );
    b.stop();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "failed GETs after a target died"
    );
    assert!(a.seen().len() + c.seen().len() > 450);
}

#[tokio::test]
async fn retry_on_status_goes_to_another_target_and_is_counted() {
    let (bad, bad_hits) = counting(503).await;
    let (good, good_hits) = counting(200).await;
    let gw = TestGateway::start(&upstream_config(
        &[bad.addr, good.addr],
        r#"    retries: { attempts: 1, backoff: 1ms, on: ["503"] }"#,
    ))
    .await;
    for _ in 0..10 {
        let (status, _, text) = get(&gw.url("web", "/")).await;
        assert_eq!(status, 200, "{text}");
    }
    assert_eq!(good_hits.load(Ordering::SeqCst), 10);
    let retried = bad_hits.load(Ordering::SeqCst);
    assert!(retried >= 4, "the 503 target was tried {retried} times");
    assert_eq!(
        metric(&gw, "portcullis_retries_total{upstream=\"app\"}").await,
        retried as f64
    );
}

#[tokio::test]
async fn post_is_not_retried_unless_non_idempotent_is_set() {
    let (bad, _) = counting(503).await;
    let (good, _) = counting(200).await;
    let gw = TestGateway::start(&upstream_config(
        &[bad.addr, good.addr],
        r#"    retries: { attempts: 1, backoff: 1ms, on: ["503"] }"#,
    ))
    .await;
    let client = client();
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let r = client
            .post(gw.url("web", "/"))
            .body("x")
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert!(statuses.contains(&503), "POSTs were retried: {statuses:?}");

    let gw = TestGateway::start(&upstream_config(
        &[bad.addr, good.addr],
        r#"    retries: { attempts: 1, backoff: 1ms, on: ["503"], non_idempotent: true }"#,
    ))
    .await;
    for _ in 0..6 {
        let r = client
            .post(gw.url("web", "/"))
            .body("payload")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        // The retried attempt carries the same body.
        assert_eq!(r.text().await.unwrap(), "payload");
    }
}

#[tokio::test]
async fn retry_budget_stops_retries_that_would_multiply_an_outage() {
    let (bad, bad_hits) = counting(503).await;
    let (bad2, bad2_hits) = counting(503).await;
    let gw = TestGateway::start(&upstream_config(
        &[bad.addr, bad2.addr],
        r#"    retries: { attempts: 1, backoff: 1ms, on: ["503"], budget_percent: 10 }"#,
    ))
    .await;
    for _ in 0..100 {
        let (status, _, _) = get(&gw.url("web", "/")).await;
        assert_eq!(status, 503);
    }
    let attempts = bad_hits.load(Ordering::SeqCst) + bad2_hits.load(Ordering::SeqCst);
    // 100 first attempts, 10 retries from the starting balance, and 10% of 100.
    assert!(
        (100..=121).contains(&attempts),
        "{attempts} attempts for 100 requests"
    );
}

#[tokio::test]
async fn timeouts_are_retried_when_listed() {
    let slow = Backend::start(|_req| async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Response::new(body("late"))
    })
    .await;
    let (fast, _) = counting(200).await;
    let gw = TestGateway::start(&upstream_config(
        &[slow.addr, fast.addr],
        r#"    timeouts: { response_header: 200ms }
    retries: { attempts: 1, backoff: 1ms, on: [timeout] }"#,
    ))
    .await;
    for _ in 0..4 {
        let started = Instant::now();
        let (status, _, _) = get(&gw.url("web", "/")).await;
        assert_eq!(status, 200);
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}

#[tokio::test]
async fn failing_target_is_ejected_then_readmitted() {
    let (bad, bad_hits) = counting(500).await;
    let (good, good_hits) = counting(200).await;
    let gw = TestGateway::start(&upstream_config(
        &[bad.addr, good.addr],
        r#"    outlier_detection: { consecutive_failures: 2, base_ejection: 1s }"#,
    ))
    .await;
    // Round robin alternates: the bad target fails twice within four requests.
    for _ in 0..4 {
        get(&gw.url("web", "/")).await;
    }
    assert_eq!(bad_hits.load(Ordering::SeqCst), 2);
    let ejected_at = Instant::now();
    for _ in 0..10 {
        let (status, _, _) = get(&gw.url("web", "/")).await;
        assert_eq!(status, 200, "an ejected target got a request");
    }
    assert_eq!(bad_hits.load(Ordering::SeqCst), 2);
    assert!(good_hits.load(Ordering::SeqCst) >= 12);
    // After the ejection ends, the target gets requests again.
    let deadline = Instant::now() + Duration::from_secs(3);
    while bad_hits.load(Ordering::SeqCst) == 2 && Instant::now() < deadline {
        get(&gw.url("web", "/")).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let readmitted = bad_hits.load(Ordering::SeqCst) > 2;
    assert!(readmitted, "target never re-admitted");
    let after = ejected_at.elapsed();
    assert!(
        after >= Duration::from_millis(900),
        "re-admitted after only {after:?}"
    );
}

#[tokio::test]
async fn ejection_never_exceeds_max_ejected_percent() {
    let (a, a_hits) = counting(500).await;
    let (b, b_hits) = counting(500).await;
    let gw = TestGateway::start(&upstream_config(
        &[a.addr, b.addr],
        r#"    outlier_detection: { consecutive_failures: 1, base_ejection: 30s, max_ejected_percent: 50 }"#,
    ))
    .await;
    for _ in 0..10 {
        let (status, _, _) = get(&gw.url("web", "/")).await;
        assert_eq!(status, 500);
    }
    // One of the two is ejected; the other keeps serving (its 500s pass through).
    let (ha, hb) = (a_hits.load(Ordering::SeqCst), b_hits.load(Ordering::SeqCst));
    assert!(ha == 1 || hb == 1, "a={ha} b={hb}");
    assert_eq!(ha + hb, 10);
    let (_, _, body) = get(&gw.admin_url("/api/v1/upstreams")).await;
    assert!(body.contains("app"), "{body}");
}

#[tokio::test]
async fn circuit_breaker_fails_fast_past_max_requests() {
    let slow = Backend::start(|_req| async move {
        tokio::time::sleep(Duration::from_millis(600)).await;
        Response::new(body("done"))
    })
    .await;
    let gw = TestGateway::start(&upstream_config(
        &[slow.addr],
        r#"    circuit_breaker: { max_requests: 2 }"#,
    ))
    .await;
    let url = gw.url("web", "/");
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let r = client().get(&url).send().await.unwrap();
            let status = r.status().as_u16();
            let text = r.text().await.unwrap();
            (status, started.elapsed(), text)
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut ok = 0;
    let mut refused = 0;
    for t in tasks {
        let (status, took, text) = t.await.unwrap();
        match status {
            200 => ok += 1,
            503 => {
                refused += 1;
                assert!(took < Duration::from_millis(400), "503 took {took:?}");
                assert!(text.contains("capacity"), "{text}");
            }
            other => panic!("unexpected {other}: {text}"),
        }
    }
    assert_eq!((ok, refused), (2, 3));
    assert_eq!(
        metric(&gw, "portcullis_circuit_open_total{upstream=\"app\"}").await,
        3.0
    );
    // Capacity comes back once the slow requests end.
    let (status, _, _) = get(&url).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn retry_and_breaker_settings_are_validated() {
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
    upstream: app
upstreams:
  - name: app
    targets: [127.0.0.1:1]
    retries: { on: [sometimes] }
    circuit_breaker: { max_requests: 0 }
"#,
    )
    .unwrap();
    let errors = match portcullis::server::Runtime::check(path).await {
        Ok(_) => panic!("accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        errors.contains("`sometimes` is not a retry condition"),
        "{errors}"
    );
    assert!(
        errors.contains("max_requests must be at least 1"),
        "{errors}"
    );
}

#[tokio::test]
async fn past_max_connections_requests_wait_and_past_max_pending_they_fail_fast() {
    let slow = Backend::start(|_req| async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        Response::new(body("done"))
    })
    .await;
    let gw = TestGateway::start(&upstream_config(
        &[slow.addr],
        r#"    timeouts: { connect: 2s }
    circuit_breaker: { max_connections: 1, max_pending: 1 }"#,
    ))
    .await;
    let url = gw.url("web", "/");
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let r = client().get(&url).send().await.unwrap();
            (r.status().as_u16(), started.elapsed())
        }));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let results: Vec<(u16, Duration)> = futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(results[0].0, 200);
    // The second waited for the first's connection slot, then went through.
    assert_eq!(results[1].0, 200);
    assert!(
        results[1].1 >= Duration::from_millis(600),
        "{:?}",
        results[1]
    );
    // The third found one request already waiting: refused at once.
    assert_eq!(results[2].0, 503);
    assert!(
        results[2].1 < Duration::from_millis(200),
        "{:?}",
        results[2]
    );
    assert_eq!(
        metric(&gw, "portcullis_circuit_open_total{upstream=\"app\"}").await,
        1.0
    );
}
