//! Active health checks: HTTP and TCP checks eject a failing target after
//! `unhealthy_threshold` failures and re-admit it after `healthy_threshold`
//! passes; `expect_status`, `host` and `path` reach the backend as written;
//! `when_all_down` decides between 503 and using every target anyway; the
//! admin API and `portcullis_upstream_target_healthy` show the verdicts;
//! reload and shutdown start and stop the checks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::common::*;

/// The `User-Agent` every HTTP check sends.
const CHECK_AGENT: &str = "portcullis-health-check";

/// Check interval of the timing tests.
const INTERVAL: Duration = Duration::from_millis(100);

/// Room for a loaded CI machine on top of the computed upper bounds.
const SLACK: Duration = Duration::from_millis(400);

/// A backend whose `/healthz` answers with the status held in `health`
/// (changeable while it runs), whose `/slow` answers after 1.5 s, and which
/// echoes every other request tagged `name`.
async fn backend(name: &'static str, health: Arc<AtomicU16>) -> Backend {
    Backend::serve(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        handler(name, health),
    )
}

/// The handler of [`backend`], to serve it again on a given listener.
fn handler(
    name: &'static str,
    health: Arc<AtomicU16>,
) -> impl Fn(Request<Incoming>) -> std::pin::Pin<Box<dyn Future<Output = Response<TestBody>> + Send>>
+ Clone
+ Send
+ Sync
+ 'static {
    move |req: Request<Incoming>| {
        let health = health.clone();
        Box::pin(async move {
            match req.uri().path() {
                "/healthz" => {
                    let mut r = Response::new(body("health"));
                    *r.status_mut() = StatusCode::from_u16(health.load(Ordering::SeqCst)).unwrap();
                    r
                }
                "/slow" => {
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                    Response::new(body("slow done"))
                }
                _ => echo_response(name, req),
            }
        })
    }
}

/// A health status cell starting at `status`.
fn status(status: u16) -> Arc<AtomicU16> {
    Arc::new(AtomicU16::new(status))
}

/// Requests the backend saw that were health checks.
fn checks(b: &Backend) -> Vec<Seen> {
    b.seen()
        .into_iter()
        .filter(|s| {
            s.headers
                .get("user-agent")
                .is_some_and(|v| v == CHECK_AGENT)
        })
        .collect()
}

/// Requests the backend saw that were client traffic.
fn traffic(b: &Backend) -> usize {
    b.seen().len() - checks(b).len()
}

/// An admin section, one listener `web`, and the given routes and upstreams
/// (YAML list items).
fn config(routes: &str, upstreams: &str) -> String {
    format!(
        "admin:\n  address: 127.0.0.1:0\nlisteners:\n  - name: web\n    address: 127.0.0.1:0\nroutes:\n{routes}upstreams:\n{upstreams}"
    )
}

/// One route sending everything to upstream `app`, whose targets are
/// `targets` and whose `health_check` is `check` (a YAML flow mapping).
fn app_config(targets: &[SocketAddr], check: &str) -> String {
    let list: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    config(
        "  - name: all\n    upstream: app\n",
        &format!(
            "  - name: app\n    targets: [{}]\n    health_check: {check}\n",
            list.join(", ")
        ),
    )
}

/// The active verdict of target `index` of `upstream`, read from the running gateway.
fn healthy(gw: &TestGateway, upstream: &str, index: usize) -> bool {
    let snapshot = gw.gateway.runtime().snapshot.load();
    snapshot
        .upstreams
        .get(upstream)
        .expect("no such upstream")
        .targets[index]
        .state
        .active_healthy()
}

/// Polls `f` every 5 ms; returns how long it took to hold, or `None` after `within`.
async fn time_until(within: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if f() {
            return Some(start.elapsed());
        }
        if start.elapsed() >= within {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The `backend` field of the echo answer to GET `url`.
async fn backend_of(url: &str) -> String {
    let (status, _, text) = get(url).await;
    assert_eq!(status, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["backend"].as_str().unwrap().to_string()
}

// ---------------------------------------------------------------------------
// Ejection and re-admission
// ---------------------------------------------------------------------------

#[tokio::test]
async fn http_check_ejects_after_unhealthy_threshold_and_readmits_after_healthy_threshold() {
    let (a_health, b_health) = (status(200), status(200));
    let a = backend("a", a_health.clone()).await;
    let b = backend("b", b_health).await;
    let gw = TestGateway::start(&app_config(
        &[a.addr, b.addr],
        "{ type: http, path: /healthz, interval: 100ms, timeout: 500ms, healthy_threshold: 2, unhealthy_threshold: 3 }",
    ))
    .await;
    // The first check runs within 10% of the interval of the start.
    assert!(
        eventually(Duration::from_secs(1), || !checks(&a).is_empty()).await,
        "no health check reached the backend"
    );
    assert!(healthy(&gw, "app", 0) && healthy(&gw, "app", 1));

    // Three failures in a row take `a` out: between 2 and 3 intervals (each
    // gap is the interval plus up to 10% jitter plus the check itself).
    a_health.store(500, Ordering::SeqCst);
    let ejected = time_until(Duration::from_secs(3), || !healthy(&gw, "app", 0))
        .await
        .expect("the failing target was never marked unhealthy");
    println!("ejected after {ejected:?} (interval 100ms, unhealthy_threshold 3)");
    assert!(ejected >= INTERVAL * 2, "ejected too early: {ejected:?}");
    assert!(
        ejected <= INTERVAL.mul_f64(3.3) + SLACK,
        "ejected too late: {ejected:?}"
    );

    // No new request goes to `a` while it is out.
    let before = traffic(&a);
    for _ in 0..10 {
        assert_eq!(backend_of(&gw.url("web", "/x")).await, "b");
    }
    assert_eq!(traffic(&a), before);

    // Two passes in a row bring it back: between 1 and 2 intervals.
    a_health.store(200, Ordering::SeqCst);
    let readmitted = time_until(Duration::from_secs(3), || healthy(&gw, "app", 0))
        .await
        .expect("the recovered target was never re-admitted");
    println!("re-admitted after {readmitted:?} (interval 100ms, healthy_threshold 2)");
    assert!(
        readmitted >= INTERVAL,
        "re-admitted too early: {readmitted:?}"
    );
    assert!(
        readmitted <= INTERVAL.mul_f64(2.2) + SLACK,
        "re-admitted too late: {readmitted:?}"
    );
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(backend_of(&gw.url("web", "/x")).await);
    }
    assert!(answers.iter().any(|n| n == "a"), "{answers:?}");
    assert!(answers.iter().any(|n| n == "b"), "{answers:?}");
}

#[tokio::test]
async fn tcp_check_marks_a_closed_port_unhealthy_and_a_reopened_one_healthy() {
    let a_health = status(200);
    let a = backend("a", a_health.clone()).await;
    let b = backend("b", status(200)).await;
    let a_addr = a.addr;
    let gw = TestGateway::start(&app_config(
        &[a_addr, b.addr],
        "{ type: tcp, interval: 100ms, timeout: 500ms, healthy_threshold: 1, unhealthy_threshold: 2 }",
    ))
    .await;
    assert!(healthy(&gw, "app", 0));

    let stopped = Instant::now();
    a.stop();
    assert!(wait_refusing(a_addr, Duration::from_secs(2)).await);
    assert!(
        time_until(Duration::from_secs(3), || !healthy(&gw, "app", 0))
            .await
            .is_some(),
        "the closed port was never marked unhealthy"
    );
    // Two failed connects in a row: between 1 and 2 intervals after the close.
    let ejected = stopped.elapsed();
    println!("tcp: ejected after {ejected:?} (interval 100ms, unhealthy_threshold 2)");
    assert!(ejected >= INTERVAL, "ejected too early: {ejected:?}");
    assert!(ejected <= INTERVAL.mul_f64(2.2) + SLACK, "{ejected:?}");
    for _ in 0..5 {
        assert_eq!(backend_of(&gw.url("web", "/x")).await, "b");
    }
    assert!(healthy(&gw, "app", 1), "the open port must stay healthy");

    let reopened = Backend::serve(
        TcpListener::bind(a_addr).await.unwrap(),
        handler("a", a_health),
    );
    let readmitted = time_until(Duration::from_secs(3), || healthy(&gw, "app", 0))
        .await
        .expect("the reopened port was never re-admitted");
    println!("tcp: re-admitted after {readmitted:?} (interval 100ms, healthy_threshold 1)");
    assert!(
        readmitted <= INTERVAL.mul_f64(1.1) + SLACK,
        "{readmitted:?}"
    );
    // A TCP check sends no request.
    assert!(checks(&reopened).is_empty());
}

// ---------------------------------------------------------------------------
// What the backend sees
// ---------------------------------------------------------------------------

#[tokio::test]
async fn expect_status_path_and_host_reach_the_backend_as_configured() {
    // `/healthz` answers 418 on both backends.
    let teapot = backend("teapot", status(418)).await;
    let strict = backend("strict", status(418)).await;
    let gw = TestGateway::start(&config(
        "  - name: t\n    match: { path_prefix: /t }\n    upstream: teapot\n  - name: s\n    match: { path_prefix: /s }\n    upstream: strict\n",
        &format!(
            "  - name: teapot\n    targets: [\"{}\"]\n    health_check: {{ path: \"/healthz?deep=1\", host: health.internal, expect_status: \"400-418\", interval: 100ms, unhealthy_threshold: 1 }}\n  - name: strict\n    targets: [\"{}\"]\n    health_check: {{ path: /healthz, interval: 100ms, unhealthy_threshold: 1 }}\n",
            teapot.addr, strict.addr
        ),
    ))
    .await;

    // 418 is outside the default 200-399: one failure takes `strict` out.
    assert!(
        time_until(Duration::from_secs(2), || !healthy(&gw, "strict", 0))
            .await
            .is_some(),
        "418 must fail a check expecting 200-399"
    );
    // It is inside 400-418: `teapot` stays in after several checks.
    assert!(eventually(Duration::from_secs(2), || checks(&teapot).len() >= 4).await);
    assert!(
        healthy(&gw, "teapot", 0),
        "418 must pass a check expecting 400-418"
    );
    assert_eq!(backend_of(&gw.url("web", "/t")).await, "teapot");

    let seen = checks(&teapot);
    for s in &seen {
        assert_eq!(s.method, "GET");
        assert_eq!(s.uri, "/healthz?deep=1");
        assert_eq!(s.headers.get("host").unwrap(), "health.internal");
    }
    // Without `host`, the Host header is the target's address.
    let seen = checks(&strict);
    assert!(!seen.is_empty());
    assert_eq!(
        seen[0].headers.get("host").unwrap(),
        strict.addr.to_string().as_str()
    );
    assert_eq!(seen[0].uri, "/healthz");
}

#[tokio::test]
async fn http_check_uses_the_upstreams_tls_sni_ca_and_http2() {
    let backend_ca = TestCa::new("backend CA");
    let wrong_ca = TestCa::new("unrelated CA");
    let cert = backend_ca.server("backend", &["backend.test"]);
    let tls = TlsBackend::echo(
        "h2-app",
        tls_server_config(&cert, None, &["h2", "http/1.1"]),
    )
    .await;
    let upstream = |name: &str, ca: &TestCa| {
        format!(
            "  - name: {name}\n    targets: [\"{}\"]\n    http2: true\n    tls: {{ sni: backend.test, ca: \"{}\" }}\n    health_check: {{ path: /healthz, interval: 100ms, unhealthy_threshold: 1 }}\n",
            tls.addr(),
            ca.cert_path.display()
        )
    };
    let gw = TestGateway::start(&config(
        "  - name: all\n    upstream: good\n",
        &format!(
            "{}{}",
            upstream("good", &backend_ca),
            upstream("wrong-ca", &wrong_ca)
        ),
    ))
    .await;
    // A target whose certificate the upstream's CA does not vouch for fails.
    assert!(
        time_until(Duration::from_secs(2), || !healthy(&gw, "wrong-ca", 0))
            .await
            .is_some(),
        "a check must verify the target's certificate"
    );
    assert!(
        eventually(Duration::from_secs(2), || tls.seen().len() >= 3).await,
        "no check reached the TLS backend"
    );
    assert!(healthy(&gw, "good", 0));
    let handshake = &tls.handshakes()[0];
    assert_eq!(handshake.sni.as_deref(), Some("backend.test"));
    assert_eq!(handshake.alpn.as_deref(), Some(&b"h2"[..]));
    let seen = tls.seen();
    assert!(
        seen.iter().all(|s| s.version == http::Version::HTTP_2),
        "{seen:?}"
    );
    assert!(
        seen.iter().all(|s| s
            .headers
            .get("user-agent")
            .is_some_and(|v| v == CHECK_AGENT)),
        "{seen:?}"
    );
    // Checks share the pool with traffic: one HTTP/2 connection carries them all.
    assert_eq!(
        tls.handshakes().len(),
        1,
        "checks must reuse the pooled connection"
    );
}

#[tokio::test]
async fn checks_run_on_the_interval_with_at_most_ten_percent_jitter() {
    let a = backend("a", status(200)).await;
    let _gw = TestGateway::start(&app_config(
        &[a.addr],
        "{ path: /healthz, interval: 100ms }",
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(1050)).await;
    // In 1.05 s: the first check within 10 ms, then one every 100-110 ms
    // plus the check's own time: at most 11, at least 8 on a loaded machine.
    let n = checks(&a).len();
    println!("{n} checks in 1.05 s at interval 100ms");
    assert!((8..=11).contains(&n), "{n} checks in 1.05 s");
}

// ---------------------------------------------------------------------------
// When every target is down
// ---------------------------------------------------------------------------

#[tokio::test]
async fn when_all_down_fail_answers_503_at_once_and_any_uses_every_target() {
    // Both backends fail their checks but serve traffic.
    let a = backend("a", status(503)).await;
    let b = backend("b", status(503)).await;
    let targets = format!("[\"{}\", \"{}\"]", a.addr, b.addr);
    let check = "{ path: /healthz, interval: 100ms, unhealthy_threshold: 1 }";
    let gw = TestGateway::start(&config(
        "  - name: f\n    match: { path_prefix: /fail }\n    upstream: failing\n  - name: a\n    match: { path_prefix: /any }\n    upstream: anyway\n",
        &format!(
            "  - name: failing\n    targets: {targets}\n    health_check: {check}\n    when_all_down: fail\n  - name: anyway\n    targets: {targets}\n    health_check: {check}\n    when_all_down: any\n"
        ),
    ))
    .await;
    let all_down = time_until(Duration::from_secs(2), || {
        (0..2).all(|i| !healthy(&gw, "failing", i) && !healthy(&gw, "anyway", i))
    })
    .await;
    assert!(
        all_down.is_some(),
        "the targets were never marked unhealthy"
    );

    let before = traffic(&a) + traffic(&b);
    let started = Instant::now();
    let (status, headers, text) = get(&gw.url("web", "/fail")).await;
    let took = started.elapsed();
    let problem = assert_problem(status, &headers, &text, 503);
    assert!(took < Duration::from_millis(500), "503 took {took:?}");
    for addr in [a.addr, b.addr] {
        assert!(!text.contains(&addr.to_string()), "{problem}");
    }
    assert_eq!(
        traffic(&a) + traffic(&b),
        before,
        "fail must not try a target"
    );

    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(backend_of(&gw.url("web", "/any")).await);
    }
    assert!(answers.iter().any(|n| n == "a"), "{answers:?}");
    assert!(answers.iter().any(|n| n == "b"), "{answers:?}");
}

// ---------------------------------------------------------------------------
// Visibility
// ---------------------------------------------------------------------------

#[tokio::test]
async fn admin_api_and_metric_show_each_targets_health_and_in_flight() {
    let a = backend("a", status(200)).await;
    let b = backend("b", status(500)).await;
    let gw = TestGateway::start(&app_config(
        &[a.addr, b.addr],
        "{ path: /healthz, interval: 100ms, unhealthy_threshold: 1 }",
    ))
    .await;
    assert!(
        time_until(Duration::from_secs(2), || !healthy(&gw, "app", 1))
            .await
            .is_some()
    );

    // A slow request holds a slot on `a`, the only healthy target.
    let slow_url = gw.url("web", "/slow");
    let slow = tokio::spawn(async move { get(&slow_url).await.0 });
    let deadline = Instant::now() + Duration::from_secs(1);
    let v = loop {
        let (_, _, text) = get(&gw.admin_url("/api/v1/upstreams")).await;
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        if v["upstreams"][0]["targets"][0]["in_flight"] == 1 || Instant::now() >= deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(v["upstreams"][0]["targets"][0]["in_flight"], 1, "{v}");
    let targets = &v["upstreams"][0]["targets"];
    assert_eq!(targets[0]["address"], a.addr.to_string().as_str(), "{v}");
    assert_eq!(targets[0]["weight"], 1, "{v}");
    assert_eq!(targets[0]["healthy"], true, "{v}");
    assert_eq!(targets[0]["ejected"], false, "{v}");
    assert_eq!(targets[1]["address"], b.addr.to_string().as_str(), "{v}");
    assert_eq!(targets[1]["healthy"], false, "{v}");
    assert_eq!(targets[1]["ejected"], false, "{v}");
    assert_eq!(targets[1]["in_flight"], 0, "{v}");

    let (status, _, metrics) = get(&gw.admin_url("/metrics")).await;
    assert_eq!(status, 200);
    let line = |addr: SocketAddr, value: u8| {
        format!("portcullis_upstream_target_healthy{{upstream=\"app\",target=\"{addr}\"}} {value}")
    };
    assert!(metrics.contains(&line(a.addr, 1)), "{metrics}");
    assert!(metrics.contains(&line(b.addr, 0)), "{metrics}");

    assert_eq!(slow.await.unwrap(), 200);
}

// ---------------------------------------------------------------------------
// Reload and shutdown
// ---------------------------------------------------------------------------

#[tokio::test]
async fn reload_keeps_verdicts_and_dropping_the_check_readmits_the_target() {
    let a = backend("a", status(500)).await;
    let b = backend("b", status(200)).await;
    let check = "{ path: /healthz, interval: 100ms, unhealthy_threshold: 1, healthy_threshold: 1 }";
    let gw = TestGateway::start(&app_config(&[a.addr, b.addr], check)).await;
    assert!(
        time_until(Duration::from_secs(2), || !healthy(&gw, "app", 0))
            .await
            .is_some()
    );

    // Same upstream and check: the verdict survives, no check is doubled.
    gw.gateway.reload().await.unwrap();
    assert!(
        !healthy(&gw, "app", 0),
        "a reload must not forget the verdict"
    );
    assert_eq!(gw.gateway.runtime().health_checks.checked_targets(), 2);

    // No health_check any more: nothing checks `a`, so it is back in rotation.
    gw.write_config(&config(
        "  - name: all\n    upstream: app\n",
        &format!(
            "  - name: app\n    targets: [\"{}\", \"{}\"]\n",
            a.addr, b.addr
        ),
    ));
    gw.gateway.reload().await.unwrap();
    assert!(healthy(&gw, "app", 0));
    assert_eq!(gw.gateway.runtime().health_checks.checked_targets(), 0);
    let (_, _, metrics) = get(&gw.admin_url("/metrics")).await;
    assert!(
        !metrics.contains("portcullis_upstream_target_healthy{"),
        "unchecked targets have no gauge: {metrics}"
    );
    let count = checks(&a).len();
    tokio::time::sleep(INTERVAL * 3).await;
    assert_eq!(checks(&a).len(), count, "checks must stop with the reload");
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(backend_of(&gw.url("web", "/x")).await);
    }
    assert!(answers.iter().any(|n| n == "a"), "{answers:?}");
}

#[tokio::test]
async fn shutdown_stops_health_checks() {
    let a = backend("a", status(200)).await;
    let gw = TestGateway::start(&app_config(
        &[a.addr],
        "{ path: /healthz, interval: 100ms }",
    ))
    .await;
    assert!(eventually(Duration::from_secs(1), || !checks(&a).is_empty()).await);
    assert!(gw.gateway.shutdown_within(Duration::from_secs(1)).await);
    assert_eq!(gw.gateway.runtime().health_checks.checked_targets(), 0);
    // A check already on the wire may still land; none starts after it.
    tokio::time::sleep(INTERVAL).await;
    let count = checks(&a).len();
    tokio::time::sleep(INTERVAL * 3).await;
    assert_eq!(checks(&a).len(), count);
}
