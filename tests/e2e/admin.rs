//! The admin listener: `/healthz`, `/metrics`, `/api/v1/status`,
//! `/api/v1/routes`, `/api/v1/upstreams` and `/api/v1/reload`, on its own
//! port; 404 for unknown paths and 405 for a wrong method.

use std::time::Duration;

use sha2::Digest;

use crate::common::*;

fn config_with(backend: std::net::SocketAddr) -> String {
    format!(
        "\
admin:
  address: 127.0.0.1:0
listeners:
  - name: web
    address: 127.0.0.1:0
routes:
  - name: api
    match: {{ path_prefix: /api }}
    upstream: app
  - name: ping
    match: {{ path: /ping }}
    respond: {{ status: 200, body: pong }}
upstreams:
  - name: app
    targets: [{backend}]
"
    )
}

/// The value of the sample `name{labels}` in a Prometheus text exposition,
/// whatever the label order.
fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
            if metric != name {
                return None;
            }
            let set = rest.strip_suffix('}')?;
            let all = labels
                .iter()
                .all(|(k, v)| set.split(',').any(|pair| pair == format!("{k}=\"{v}\"")));
            all.then(|| value.parse().ok()).flatten()
        })
}

async fn metrics(gw: &TestGateway) -> String {
    let (status, _, text) = get(&gw.admin_url("/metrics")).await;
    assert_eq!(status, 200);
    text
}

#[tokio::test]
async fn healthz_answers_ok_while_serving() {
    let app = Backend::echo("app").await;
    let gw = TestGateway::start(&config_with(app.addr)).await;
    let (status, _, text) = get(&gw.admin_url("/healthz")).await;
    assert_eq!((status.as_u16(), text.trim()), (200, "ok"));
}

#[tokio::test]
async fn admin_api_is_not_served_on_traffic_listeners() {
    let app = Backend::echo("app").await;
    let gw = TestGateway::start(&config_with(app.addr)).await;
    let (status, headers, text) = get(&gw.url("web", "/metrics")).await;
    assert_problem(status, &headers, &text, 404);
    assert_ne!(gw.addr("web"), gw.gateway.admin_addr().unwrap());
}

#[tokio::test]
async fn metrics_count_requests_by_listener_route_upstream_and_status() {
    let app = Backend::echo("app").await;
    let gw = TestGateway::start(&config_with(app.addr)).await;
    for _ in 0..3 {
        assert_eq!(get(&gw.url("web", "/api/a")).await.0, 200);
    }
    assert_eq!(get(&gw.url("web", "/ping")).await.0, 200);
    assert_eq!(get(&gw.url("web", "/nowhere")).await.0, 404);

    let m = metrics(&gw).await;
    let forwarded = [
        ("listener", "web"),
        ("route", "api"),
        ("upstream", "app"),
        ("status", "200"),
    ];
    assert_eq!(
        sample(&m, "portcullis_requests_total", &forwarded),
        Some(3.0),
        "{m}"
    );
    let answered = [
        ("listener", "web"),
        ("route", "ping"),
        ("upstream", ""),
        ("status", "200"),
    ];
    assert_eq!(
        sample(&m, "portcullis_requests_total", &answered),
        Some(1.0),
        "{m}"
    );
    let unrouted = [("listener", "web"), ("route", ""), ("status", "404")];
    assert_eq!(
        sample(&m, "portcullis_requests_total", &unrouted),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test]
async fn metrics_have_a_request_duration_histogram_by_route() {
    let app = Backend::echo("app").await;
    let gw = TestGateway::start(&config_with(app.addr)).await;
    for _ in 0..2 {
        assert_eq!(get(&gw.url("web", "/api/a")).await.0, 200);
    }
    let m = metrics(&gw).await;
    assert!(
        m.contains("# TYPE portcullis_request_duration_seconds histogram"),
        "{m}"
    );
    let route = [("route", "api")];
    assert_eq!(
        sample(&m, "portcullis_request_duration_seconds_count", &route),
        Some(2.0),
        "{m}"
    );
    let sum = sample(&m, "portcullis_request_duration_seconds_sum", &route).unwrap_or(-1.0);
    assert!(sum > 0.0 && sum < 10.0, "{m}");
    let inf = [("route", "api"), ("le", "+Inf")];
    assert_eq!(
        sample(&m, "portcullis_request_duration_seconds_bucket", &inf),
        Some(2.0),
        "{m}"
    );
}

#[tokio::test]
async fn metrics_show_active_connections_by_listener_once_their_client_speaks() {
    let app = Backend::echo("app").await;
    let gw = TestGateway::start(&config_with(app.addr)).await;
    let label = [("listener", "web")];
    let mut open = tokio::net::TcpStream::connect(gw.addr("web"))
        .await
        .unwrap();
    // Until its client speaks, the kernel keeps the connection (for up to a
    // second) and the gateway has nothing to count.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let silent = sample(&metrics(&gw).await, "portcullis_connections_active", &label);
    assert_eq!(silent.unwrap_or(0.0), 0.0, "a silent connection is counted");
    tokio::io::AsyncWriteExt::write_all(&mut open, b"GET / HTTP/1.1\r\n")
        .await
        .unwrap();
    let mut value = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline {
        value = sample(&metrics(&gw).await, "portcullis_connections_active", &label);
        if value == Some(1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(value, Some(1.0), "an open connection is not counted");

    drop(open);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline {
        value = sample(&metrics(&gw).await, "portcullis_connections_active", &label);
        if value == Some(0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(value, Some(0.0), "a closed connection is still counted");
}

#[tokio::test]
async fn metrics_count_config_reloads_by_result() {
    let app = Backend::echo("app").await;
    let gw = TestGateway::start(&config_with(app.addr)).await;
    let c = client();
    let r = c.post(gw.admin_url("/api/v1/reload")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    gw.write_config("listeners: [");
    let r = c.post(gw.admin_url("/api/v1/reload")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let r = c.post(gw.admin_url("/api/v1/reload")).send().await.unwrap();
    assert_eq!(r.status(), 400);

    let m = metrics(&gw).await;
    assert_eq!(
        sample(
            &m,
            "portcullis_config_reloads_total",
            &[("result", "success")]
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "portcullis_config_reloads_total",
            &[("result", "failure")]
        ),
        Some(2.0),
        "{m}"
    );
}

#[tokio::test]
async fn status_reports_version_uptime_config_file_hash_and_loaded_at() {
    let app = Backend::echo("app").await;
    let gw = TestGateway::start(&config_with(app.addr)).await;
    let (status, headers, text) = get(&gw.admin_url("/api/v1/status")).await;
    assert_eq!(status, 200);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"), "{v}");
    assert!(v["uptime_seconds"].as_u64().is_some_and(|u| u < 60), "{v}");
    assert_eq!(
        v["config_file"],
        gw.config_path.display().to_string().as_str(),
        "{v}"
    );
    let file = std::fs::read(&gw.config_path).unwrap();
    assert_eq!(
        v["config_hash"],
        hex::encode(sha2::Sha256::digest(&file)).as_str(),
        "{v}"
    );
    let loaded_at = v["loaded_at"]
        .as_str()
        .unwrap_or_else(|| panic!("no loaded_at: {v}"));
    let loaded_at = httpdate::parse_http_date(loaded_at).unwrap();
    let age = std::time::SystemTime::now()
        .duration_since(loaded_at)
        .unwrap_or_default();
    assert!(age < Duration::from_secs(60), "{v}");
}

#[tokio::test]
async fn status_config_hash_follows_a_reload() {
    let app = Backend::echo("app").await;
    let gw = TestGateway::start(&config_with(app.addr)).await;
    let before = get(&gw.admin_url("/api/v1/status")).await.2;
    let before: serde_json::Value = serde_json::from_str(&before).unwrap();

    gw.write_config(&format!(
        "{}# a comment changes the hash\n",
        config_with(app.addr)
    ));
    let r = client()
        .post(gw.admin_url("/api/v1/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let reloaded: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();

    let after = get(&gw.admin_url("/api/v1/status")).await.2;
    let after: serde_json::Value = serde_json::from_str(&after).unwrap();
    assert_ne!(before["config_hash"], after["config_hash"]);
    assert_eq!(after["config_hash"], reloaded["config_hash"]);
}

#[tokio::test]
async fn routes_are_listed_in_match_order() {
    let app = Backend::echo("app").await;
    // File order differs from match order: exact host first, then exact
    // path, then the longest prefix, then the catch-all.
    let gw = TestGateway::start(&format!(
        "\
admin:
  address: 127.0.0.1:0
listeners:
  - name: web
    address: 127.0.0.1:0
routes:
  - name: catch-all
    upstream: app
  - name: short-prefix
    match: {{ path_prefix: /api }}
    upstream: app
  - name: long-prefix
    match: {{ path_prefix: /api/users }}
    upstream: app
  - name: exact
    match: {{ path: /api/users/me }}
    respond: {{ status: 204 }}
  - name: host
    match: {{ hosts: [admin.example.com] }}
    upstream: app
upstreams:
  - name: app
    targets: [{}]
",
        app.addr
    ))
    .await;
    let (status, _, text) = get(&gw.admin_url("/api/v1/routes")).await;
    assert_eq!(status, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let listener = &v["listeners"][0];
    assert_eq!(listener["listener"], "web", "{v}");
    let names: Vec<&str> = listener["routes"]
        .as_array()
        .unwrap_or_else(|| panic!("no routes: {v}"))
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["host", "exact", "long-prefix", "short-prefix", "catch-all"],
        "{v}"
    );
    let exact = &listener["routes"][1];
    assert_eq!(exact["action"]["respond"], 204, "{v}");
    let long = &listener["routes"][2];
    assert_eq!(long["action"]["upstream"], "app", "{v}");
}

#[tokio::test]
async fn upstreams_lists_each_target_with_its_weight() {
    let a = Backend::echo("a").await;
    let b = Backend::echo("b").await;
    let gw = TestGateway::start(&format!(
        "\
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
    targets:
      - {{ address: {}, weight: 3 }}
      - {}
",
        a.addr, b.addr
    ))
    .await;
    let (status, _, text) = get(&gw.admin_url("/api/v1/upstreams")).await;
    assert_eq!(status, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let app = &v["upstreams"][0];
    assert_eq!(app["name"], "app", "{v}");
    assert_eq!(
        app["targets"][0]["address"],
        a.addr.to_string().as_str(),
        "{v}"
    );
    assert_eq!(app["targets"][0]["weight"], 3, "{v}");
    assert_eq!(
        app["targets"][1]["address"],
        b.addr.to_string().as_str(),
        "{v}"
    );
    assert_eq!(app["targets"][1]["weight"], 1, "{v}");
}

#[tokio::test]
async fn unknown_admin_path_answers_404() {
    let app = Backend::echo("app").await;
    let gw = TestGateway::start(&config_with(app.addr)).await;
    for path in ["/nope", "/api/v1/nope", "/api/v2/status"] {
        let (status, headers, text) = get(&gw.admin_url(path)).await;
        assert_problem(status, &headers, &text, 404);
    }
}

#[tokio::test]
async fn wrong_method_on_an_admin_path_answers_405() {
    let app = Backend::echo("app").await;
    let gw = TestGateway::start(&config_with(app.addr)).await;
    let c = client();
    let cases = [
        (reqwest::Method::POST, "/healthz", "GET"),
        (reqwest::Method::DELETE, "/metrics", "GET"),
        (reqwest::Method::PUT, "/api/v1/status", "GET"),
        (reqwest::Method::POST, "/api/v1/routes", "GET"),
        (reqwest::Method::GET, "/api/v1/reload", "POST"),
    ];
    for (method, path, allowed) in cases {
        let r = c
            .request(method.clone(), gw.admin_url(path))
            .send()
            .await
            .unwrap();
        let (status, headers) = (r.status(), r.headers().clone());
        let text = r.text().await.unwrap();
        assert_eq!(status, 405, "{method} {path}: {text}");
        assert_problem(status, &headers, &text, 405);
        // RFC 9110: a 405 says which methods the resource supports.
        let allow = headers.get("allow").map(|v| v.to_str().unwrap_or_default());
        assert!(
            allow.is_some_and(|a| a.contains(allowed)),
            "{method} {path}: allow = {allow:?}"
        );
    }
    // A GET of the reload path must not have reloaded anything.
    let m = metrics(&gw).await;
    assert_eq!(
        sample(
            &m,
            "portcullis_config_reloads_total",
            &[("result", "success")]
        ),
        None,
        "{m}"
    );
}
