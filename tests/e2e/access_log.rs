//! The access log: one JSON line per request (time, request id, client
//! address, method, host, path, status, route, upstream target, bytes in and
//! out, duration), to a file or stdout, or off.

use std::path::Path;
use std::time::Duration;

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

fn config(backend: std::net::SocketAddr, log_path: &str) -> String {
    format!(
        "\
listeners:
  - name: web
    address: 127.0.0.1:0
routes:
  - name: api
    match: {{ path_prefix: /api }}
    upstream: app
upstreams:
  - name: app
    targets: [{backend}]
observability:
  access_log: {{ path: {log_path} }}
"
    )
}

/// Waits until `path` holds at least `n` lines and returns them parsed.
async fn wait_lines(path: &Path, n: usize) -> Vec<serde_json::Value> {
    let mut text = String::new();
    let found = eventually(Duration::from_secs(5), || {
        text = std::fs::read_to_string(path).unwrap_or_default();
        text.lines().count() >= n
    })
    .await;
    assert!(
        found,
        "expected {n} access-log lines in {}, got:\n{text}",
        path.display()
    );
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect()
}

/// Sends `request` on a new connection and returns the client's own address and the answer.
async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> (std::net::SocketAddr, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let local = s.local_addr().unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("the gateway did not close the connection")
        .unwrap();
    (local, String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test]
async fn access_log_line_has_the_documented_fields() {
    let app = Backend::echo("app").await;
    let gw = TestGateway::start(&config(app.addr, "access.log")).await;
    let (client, answer) = exchange(
        gw.addr("web"),
        b"GET /api/items?x=1 HTTP/1.1\r\nHost: logs.example.com\r\nX-Request-Id: log-test-42\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let body_len = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.len())
        .unwrap_or(0);

    let lines = wait_lines(&gw.path().join("access.log"), 1).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    let l = &lines[0];
    let time = l["time"].as_str().unwrap_or_else(|| panic!("no time: {l}"));
    // RFC 3339 in UTC, as log pipelines expect.
    let rfc3339 = regex::Regex::new(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$").unwrap();
    assert!(rfc3339.is_match(time), "{l}");
    assert_eq!(l["request_id"], "log-test-42", "{l}");
    assert_eq!(l["client"], client.to_string().as_str(), "{l}");
    assert_eq!(l["method"], "GET", "{l}");
    assert_eq!(l["host"], "logs.example.com", "{l}");
    assert_eq!(l["path"], "/api/items?x=1", "{l}");
    assert_eq!(l["status"], 200, "{l}");
    assert_eq!(l["route"], "api", "{l}");
    assert_eq!(l["upstream"], "app", "{l}");
    assert_eq!(l["target"], app.addr.to_string().as_str(), "{l}");
    assert_eq!(l["bytes_in"], 0, "{l}");
    assert_eq!(l["bytes_out"], body_len, "{l}");
    assert!(
        l["duration_ms"]
            .as_f64()
            .is_some_and(|d| (0.0..5000.0).contains(&d)),
        "{l}"
    );
}

#[tokio::test]
async fn access_log_counts_request_and_response_body_bytes() {
    let app = Backend::start(|req: Request<Incoming>| async move {
        // Read the whole body so that every byte passes through the gateway.
        let _ = req.into_body().collect().await;
        Response::new(body(vec![b'x'; 2345]))
    })
    .await;
    let gw = TestGateway::start(&config(app.addr, "access.log")).await;
    let r = client()
        .post(gw.url("web", "/api/upload"))
        .body(vec![b'a'; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), 2345);

    let lines = wait_lines(&gw.path().join("access.log"), 1).await;
    let l = &lines[0];
    assert_eq!(l["method"], "POST", "{l}");
    assert_eq!(l["bytes_in"], 1000, "{l}");
    assert_eq!(l["bytes_out"], 2345, "{l}");
}

#[tokio::test]
async fn access_log_writes_one_line_per_request_including_errors() {
    let app = Backend::echo("app").await;
    let gw = TestGateway::start(&config(app.addr, "access.log")).await;
    let c = client();
    for path in ["/api/one", "/api/two", "/nowhere"] {
        c.get(gw.url("web", path))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
    }
    let lines = wait_lines(&gw.path().join("access.log"), 3).await;
    // A short pause catches a request logged twice.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lines_after = wait_lines(&gw.path().join("access.log"), 3).await;
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines_after.len(), 3, "{lines_after:?}");
    let paths: Vec<&str> = lines.iter().filter_map(|l| l["path"].as_str()).collect();
    assert_eq!(paths, ["/api/one", "/api/two", "/nowhere"]);
    let unrouted = &lines[2];
    assert_eq!(unrouted["status"], 404, "{unrouted}");
    assert_eq!(unrouted["route"], "", "{unrouted}");
    assert!(unrouted["target"].is_null(), "{unrouted}");
    let mut ids: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["request_id"].as_str())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3, "request ids must be unique: {lines:?}");
}

#[tokio::test]
async fn access_log_request_id_matches_the_response_header() {
    let app = Backend::echo("app").await;
    let gw = TestGateway::start(&config(app.addr, "access.log")).await;
    let (status, headers, _) = get(&gw.url("web", "/api/x")).await;
    assert_eq!(status, 200);
    let id = headers["x-request-id"].to_str().unwrap().to_string();
    let lines = wait_lines(&gw.path().join("access.log"), 1).await;
    assert_eq!(lines[0]["request_id"], id.as_str(), "{}", lines[0]);
}

#[tokio::test]
async fn access_log_off_writes_no_file() {
    let app = Backend::echo("app").await;
    let gw = TestGateway::start(&config(app.addr, "off")).await;
    for _ in 0..3 {
        assert_eq!(get(&gw.url("web", "/api/x")).await.0, 200);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let files: Vec<_> = std::fs::read_dir(gw.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, ["portcullis.yaml"], "`path: off` created files");
}

/// Runs the binary with `log_path`, sends one request, stops it with SIGTERM
/// and returns what it wrote to stdout.
async fn stdout_of_binary(log_path: &str) -> String {
    let app = Backend::echo("app").await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let text = config(app.addr, log_path).replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let file = dir.path().join("portcullis.yaml");
    std::fs::write(&file, text).unwrap();
    let mut p = GatewayProcess::spawn(&file);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_accepting(addr, Duration::from_secs(5)).await;
    let (status, _, _) = get(&format!("http://{addr}/api/stdout")).await;
    assert_eq!(status, 200);
    if log_path == "stdout" {
        let logged = eventually(Duration::from_secs(5), || {
            p.stdout().contains("/api/stdout")
        })
        .await;
        assert!(logged, "no line on stdout; stderr:\n{}", p.stderr());
    } else {
        // Give a would-be writer the time it needs to flush.
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    p.signal("TERM");
    let exit = p.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(
        exit.and_then(|s| s.code()),
        Some(0),
        "stderr:\n{}",
        p.stderr()
    );
    // The reader thread may still hold the last bytes for a moment.
    tokio::time::sleep(Duration::from_millis(50)).await;
    p.stdout()
}

#[tokio::test]
async fn access_log_to_stdout_writes_json_lines() {
    let out = stdout_of_binary("stdout").await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "stdout:\n{out}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(
        (v["path"].as_str(), v["status"].as_u64()),
        (Some("/api/stdout"), Some(200)),
        "{v}"
    );
}

#[tokio::test]
async fn access_log_off_writes_nothing_to_stdout() {
    let out = stdout_of_binary("off").await;
    assert_eq!(out, "", "`path: off` wrote to stdout");
}

#[tokio::test]
async fn access_log_follows_a_reload_to_a_new_file() {
    let app = Backend::echo("app").await;
    let gw = TestGateway::start(&config(app.addr, "first.log")).await;
    assert_eq!(get(&gw.url("web", "/api/before")).await.0, 200);
    wait_lines(&gw.path().join("first.log"), 1).await;

    gw.write_config(&config(app.addr, "second.log"));
    gw.gateway.reload().await.unwrap();
    assert_eq!(get(&gw.url("web", "/api/after")).await.0, 200);
    let second = wait_lines(&gw.path().join("second.log"), 1).await;
    assert_eq!(second[0]["path"], "/api/after", "{}", second[0]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let first = wait_lines(&gw.path().join("first.log"), 1).await;
    assert_eq!(
        first.len(),
        1,
        "the old file still receives lines: {first:?}"
    );
}

#[tokio::test]
async fn the_last_lines_are_written_when_the_process_stops() {
    let app = Backend::echo("app").await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let log = dir.path().join("access.log");
    let text = config(app.addr, &log.display().to_string())
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let file = dir.path().join("portcullis.yaml");
    std::fs::write(&file, text).unwrap();
    let mut p = GatewayProcess::spawn(&file);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_accepting(addr, Duration::from_secs(5)).await;
    for i in 0..50 {
        let (status, _, _) = get(&format!("http://{addr}/api/{i}")).await;
        assert_eq!(status, 200);
    }
    // At once: the writer's next timed turn has not come yet.
    p.signal("TERM");
    let exit = p.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(exit.and_then(|s| s.code()), Some(0), "{}", p.stderr());
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.lines().count(), 50, "{text}");
    assert!(text.contains("/api/49"), "{text}");
}

#[tokio::test]
async fn lines_dropped_by_a_writer_that_fell_behind_are_a_metric() {
    let app = Backend::echo("app").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let text = config(app.addr, &log.display().to_string());
    let gw = TestGateway::start(&format!("admin: {{ address: \"127.0.0.1:0\" }}\n{text}")).await;
    let (status, _, _) = get(&gw.url("web", "/api/x")).await;
    assert_eq!(status, 200);
    let (_, _, metrics) = get(&gw.admin_url("/metrics")).await;
    let line = format!(
        "portcullis_access_log_dropped_total{{destination=\"{}\"}} 0",
        log.display()
    );
    assert!(metrics.contains(&line), "{line} in\n{metrics}");
}
