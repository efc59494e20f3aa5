//! Reload and shutdown: SIGHUP and `POST /api/v1/reload` swap in a new
//! configuration atomically, a bad file changes nothing, in-flight work
//! finishes on the old configuration, listeners and certificates follow the
//! file; SIGTERM and SIGINT drain within `shutdown_timeout` and exit 0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::common::*;

/// A backend whose `/slow` answers after `delay`; every other path at once.
async fn slow_backend(delay: Duration) -> Backend {
    Backend::start(move |req: Request<Incoming>| async move {
        if req.uri().path().starts_with("/slow") {
            tokio::time::sleep(delay).await;
            return Response::new(body("slow done"));
        }
        echo_response("slow-backend", req)
    })
    .await
}

/// An admin section and one http listener with `routes` and `upstreams` (YAML list items).
fn config(routes: &str, upstreams: &str) -> String {
    format!(
        "admin:\n  address: 127.0.0.1:0\nlisteners:\n  - name: web\n    address: 127.0.0.1:0\nroutes:\n{routes}upstreams:\n{upstreams}"
    )
}

fn upstream(name: &str, addr: SocketAddr) -> String {
    format!("  - name: {name}\n    targets: [{addr}]\n")
}

fn route(name: &str, prefix: &str, upstream: &str) -> String {
    format!("  - name: {name}\n    match: {{ path_prefix: {prefix} }}\n    upstream: {upstream}\n")
}

/// The `backend` field of an echo answer.
async fn backend_of(url: &str) -> String {
    let (status, _, text) = get(url).await;
    assert_eq!(status, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["backend"].as_str().unwrap_or_default().to_string()
}

/// A gateway routing /slow to a backend that answers after `delay`, and a
/// request to it in flight over HTTP/2 (version, status and body once it
/// ends), on a connection the returned client keeps open.
async fn http2_request_in_flight(
    delay: Duration,
) -> (
    Backend,
    TestGateway,
    reqwest::Client,
    tokio::task::JoinHandle<(http::Version, StatusCode, String)>,
) {
    let slow = slow_backend(delay).await;
    let gw = TestGateway::start(&config(
        &route("slow", "/slow", "s"),
        &upstream("s", slow.addr),
    ))
    .await;
    let h2 = h2c_client();
    let (c, url) = (h2.clone(), gw.url("web", "/slow"));
    let in_flight = tokio::spawn(async move {
        let r = c.get(&url).send().await.unwrap();
        (r.version(), r.status(), r.text().await.unwrap())
    });
    wait_seen(&slow, "/slow").await;
    (slow, gw, h2, in_flight)
}

/// Polls until `backend` has seen a request for `path`.
async fn wait_seen(backend: &Backend, path: &str) {
    let seen = eventually(Duration::from_secs(5), || {
        backend.seen().iter().any(|s| s.uri.starts_with(path))
    })
    .await;
    assert!(seen, "the backend never received {path}");
}

#[tokio::test]
async fn reload_via_admin_changes_routing() {
    let one = Backend::echo("one").await;
    let two = Backend::echo("two").await;
    let ups = format!("{}{}", upstream("one", one.addr), upstream("two", two.addr));
    let gw = TestGateway::start(&config(&route("api", "/api", "one"), &ups)).await;
    assert_eq!(backend_of(&gw.url("web", "/api/x")).await, "one");

    gw.write_config(&config(&route("api", "/api", "two"), &ups));
    let (status, v) = post_reload(&gw).await;
    assert_eq!(status, 200, "{v}");
    assert!(
        v["config_hash"].as_str().is_some_and(|h| !h.is_empty()),
        "{v}"
    );
    assert_eq!(backend_of(&gw.url("web", "/api/x")).await, "two");
}

#[tokio::test]
async fn reload_with_a_broken_file_answers_400_with_file_and_line_and_keeps_the_old_routes() {
    let one = Backend::echo("one").await;
    let gw = TestGateway::start(&config(
        &route("api", "/api", "one"),
        &upstream("one", one.addr),
    ))
    .await;
    // Line 8 names an upstream that does not exist; line 10 is not an address.
    let broken = "\
admin:
  address: 127.0.0.1:0
listeners:
  - name: web
    address: 127.0.0.1:0
routes:
  - name: api
    upstream: onee
  - name: other
    upstream: one
upstreams:
  - name: one
    targets: [not-an-address]
";
    gw.write_config(broken);
    let (status, v) = post_reload(&gw).await;
    assert_eq!(status, 400, "{v}");
    let errors = v["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors list: {v}"));
    assert!(errors.len() >= 2, "{v}");
    let file = gw.config_path.display().to_string();
    for e in errors {
        assert_eq!(e["file"], file.as_str(), "{v}");
    }
    let missing = errors
        .iter()
        .find(|e| e["message"].as_str().is_some_and(|m| m.contains("onee")))
        .unwrap_or_else(|| panic!("no error about `onee`: {v}"));
    assert_eq!(missing["line"], 8, "{v}");
    assert!(
        missing["hint"].as_str().is_some_and(|h| h.contains("one")),
        "{v}"
    );
    assert!(
        errors.iter().any(|e| e["line"] == 13),
        "no error at line 13: {v}"
    );

    // The old configuration still serves.
    assert_eq!(backend_of(&gw.url("web", "/api/x")).await, "one");
    let (status, _, _) = get(&gw.url("web", "/elsewhere")).await;
    assert_eq!(
        status, 404,
        "the rejected file's catch-all route must not be active"
    );
}

#[tokio::test]
async fn reload_with_a_broken_file_under_load_fails_no_request() {
    let a = Backend::echo("a").await;
    let b = Backend::echo("b").await;
    let ups = format!("{}{}", upstream("a", a.addr), upstream("b", b.addr));
    let good_a = config(&route("api", "/api", "a"), &ups);
    let good_b = config(&route("api", "/api", "b"), &ups);
    let bad = config(&route("api", "/api", "missing"), &ups);
    let gw = TestGateway::start(&good_a).await;
    let url = gw.url("web", "/api/load");

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (stop, ok, url) = (stop.clone(), ok.clone(), url.clone());
        workers.push(tokio::spawn(async move {
            let c = client();
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match c.get(&url).send().await {
                    Ok(r) if r.status() == 200 => match r.text().await {
                        Ok(_) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failures.push(format!("body: {e}")),
                    },
                    Ok(r) => failures.push(format!("status {}", r.status())),
                    Err(e) => failures.push(format!("error: {e}")),
                }
            }
            failures
        }));
    }

    let plan = [&good_b, &bad, &good_a, &bad, &good_b, &bad, &good_a, &bad];
    for (i, text) in plan.iter().enumerate() {
        replace_file(&gw.config_path, text);
        let (status, v) = post_reload(&gw).await;
        let expected = if std::ptr::eq(*text, &bad) { 400 } else { 200 };
        assert_eq!(status.as_u16(), expected, "reload {i}: {v}");
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for w in workers {
        failures.extend(w.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        ok.load(Ordering::Relaxed) >= 20,
        "too few requests ran: {}",
        ok.load(Ordering::Relaxed)
    );
    assert!(
        !a.seen().is_empty() && !b.seen().is_empty(),
        "traffic did not follow the good reloads"
    );
}

#[tokio::test]
async fn in_flight_request_completes_after_a_reload_removes_its_route() {
    let slow = slow_backend(Duration::from_millis(800)).await;
    let gw = TestGateway::start(&config(
        &route("slow", "/slow", "s"),
        &upstream("s", slow.addr),
    ))
    .await;
    let url = gw.url("web", "/slow");
    let in_flight = tokio::spawn(async move { get(&url).await });
    wait_seen(&slow, "/slow").await;

    gw.write_config(&config(
        &route("other", "/other", "s"),
        &upstream("s", slow.addr),
    ));
    let (status, v) = post_reload(&gw).await;
    assert_eq!(status, 200, "{v}");
    // New requests already see the new table...
    let (status, _, _) = get(&gw.url("web", "/slow")).await;
    assert_eq!(status, 404);
    // ...while the one started before finishes on the old one.
    let (status, _, text) = in_flight.await.unwrap();
    assert_eq!((status.as_u16(), text.as_str()), (200, "slow done"));
}

#[tokio::test]
async fn http2_stream_in_flight_finishes_on_the_old_configuration() {
    let (slow, gw, h2, in_flight) = http2_request_in_flight(Duration::from_millis(800)).await;

    gw.write_config(&config(
        &route("other", "/other", "s"),
        &upstream("s", slow.addr),
    ));
    let (status, v) = post_reload(&gw).await;
    assert_eq!(status, 200, "{v}");
    // A new stream (on the same HTTP/2 connection) sees the new routes.
    let r = h2.get(gw.url("web", "/slow")).send().await.unwrap();
    assert_eq!(
        (r.version(), r.status().as_u16()),
        (http::Version::HTTP_2, 404)
    );
    let (version, status, text) = in_flight.await.unwrap();
    assert_eq!(version, http::Version::HTTP_2);
    assert_eq!((status.as_u16(), text.as_str()), (200, "slow done"));
}

/// A backend that accepts WebSocket handshakes and echoes every message.
async fn websocket_echo_backend() -> Backend {
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;
    Backend::start(|mut req: Request<Incoming>| async move {
        let key = req
            .headers()
            .get("sec-websocket-key")
            .map(|k| derive_accept_key(k.as_bytes()))
            .unwrap_or_default();
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = upgrade.await else { return };
            let io = hyper_util::rt::TokioIo::new(upgraded);
            let ws =
                tokio_tungstenite::WebSocketStream::from_raw_socket(io, Role::Server, None).await;
            let (mut tx, mut rx) = ws.split();
            while let Some(Ok(msg)) = rx.next().await {
                if (msg.is_text() || msg.is_binary()) && tx.send(msg).await.is_err() {
                    return;
                }
            }
        });
        let mut r = Response::new(body(""));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = r.headers_mut();
        h.insert("upgrade", http::HeaderValue::from_static("websocket"));
        h.insert("connection", http::HeaderValue::from_static("upgrade"));
        h.insert(
            "sec-websocket-accept",
            http::HeaderValue::from_str(&key).unwrap(),
        );
        r
    })
    .await
}

#[tokio::test]
async fn open_websocket_keeps_working_after_a_reload_removes_its_route() {
    use tokio_tungstenite::tungstenite::Message;
    let ws_backend = websocket_echo_backend().await;
    let gw = TestGateway::start(&config(
        &route("ws", "/ws", "w"),
        &upstream("w", ws_backend.addr),
    ))
    .await;
    let ws_url = format!("ws://{}/ws", gw.addr("web"));
    let (mut ws, resp) = tokio_tungstenite::connect_async(ws_url.as_str())
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("before")).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), "before");

    gw.write_config(&config(
        &route("other", "/other", "w"),
        &upstream("w", ws_backend.addr),
    ));
    let (status, v) = post_reload(&gw).await;
    assert_eq!(status, 200, "{v}");

    ws.send(Message::text("after")).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), "after");
    // A new handshake meets the new configuration.
    assert!(
        tokio_tungstenite::connect_async(ws_url.as_str())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn listener_added_by_reload_accepts_connections() {
    let app = Backend::echo("app").await;
    let gw = TestGateway::start(&config(
        &route("all", "/", "app"),
        &upstream("app", app.addr),
    ))
    .await;
    assert!(gw.gateway.listener_addr("extra").is_none());

    let with_extra = config(&route("all", "/", "app"), &upstream("app", app.addr)).replace(
        "routes:\n",
        "  - name: extra\n    address: 127.0.0.1:0\nroutes:\n",
    );
    gw.write_config(&with_extra);
    let (status, v) = post_reload(&gw).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(backend_of(&gw.url("extra", "/x")).await, "app");
    // The listener that stayed keeps serving.
    assert_eq!(backend_of(&gw.url("web", "/x")).await, "app");
}

#[tokio::test]
async fn listener_removed_by_reload_stops_accepting() {
    let app = Backend::echo("app").await;
    let base = config(&route("all", "/", "app"), &upstream("app", app.addr));
    let with_extra = base.replace(
        "routes:\n",
        "  - name: extra\n    address: 127.0.0.1:0\nroutes:\n",
    );
    let gw = TestGateway::start(&with_extra).await;
    let extra = gw.addr("extra");
    assert_eq!(backend_of(&gw.url("extra", "/x")).await, "app");

    gw.write_config(&base);
    let (status, v) = post_reload(&gw).await;
    assert_eq!(status, 200, "{v}");
    assert!(gw.gateway.listener_addr("extra").is_none());
    assert!(
        wait_refusing(extra, Duration::from_secs(3)).await,
        "removed listener {extra} still accepts"
    );
    assert_eq!(backend_of(&gw.url("web", "/x")).await, "app");
}

#[tokio::test]
async fn listener_moved_to_a_new_address_by_reload_serves_there() {
    let app = Backend::echo("app").await;
    let base = config(&route("all", "/", "app"), &upstream("app", app.addr));
    let gw = TestGateway::start(&base).await;
    let old = gw.addr("web");
    let port = free_port();
    gw.write_config(&base.replace(
        "    address: 127.0.0.1:0\nroutes",
        &format!("    address: 127.0.0.1:{port}\nroutes"),
    ));
    let (status, v) = post_reload(&gw).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        gw.gateway.listener_addr("web").map(|a| a.port()),
        Some(port)
    );
    assert_eq!(backend_of(&gw.url("web", "/x")).await, "app");
    assert!(
        wait_refusing(old, Duration::from_secs(3)).await,
        "the old address {old} still accepts"
    );
}

/// A self-signed certificate for `name`; returns its DER and writes cert.pem and key.pem into `dir`.
fn write_cert(dir: &std::path::Path, name: &str) -> Vec<u8> {
    let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    replace_file(&dir.join("cert.pem"), &c.cert.pem());
    replace_file(&dir.join("key.pem"), &c.signing_key.serialize_pem());
    c.cert.der().to_vec()
}

/// The leaf certificate a new TLS connection to `addr` is shown.
async fn served_certificate(addr: SocketAddr) -> Vec<u8> {
    let c = reqwest::Client::builder()
        .no_proxy()
        .tls_danger_accept_invalid_certs(true)
        .tls_info(true)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let r = c.get(format!("https://{addr}/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let info = r
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .expect("no TLS info");
    info.peer_certificate()
        .expect("no peer certificate")
        .to_vec()
}

#[tokio::test]
async fn certificates_are_re_read_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    let first = write_cert(dir.path(), "first.test");
    let cfg = "\
admin:
  address: 127.0.0.1:0
listeners:
  - name: websecure
    address: 127.0.0.1:0
    protocol: https
    tls:
      certificates:
        - { cert: cert.pem, key: key.pem }
routes:
  - name: ping
    respond: { status: 200, body: pong }
upstreams: []
";
    let config_path = dir.path().join("portcullis.yaml");
    std::fs::write(&config_path, cfg).unwrap();
    let gateway = portcullis::gateway::start(config_path).await.unwrap();
    let addr = gateway.listener_addr("websecure").unwrap();
    assert_eq!(served_certificate(addr).await, first);

    let second = write_cert(dir.path(), "second.test");
    assert_ne!(first, second);
    // Without a reload the running configuration keeps the certificate it read.
    assert_eq!(served_certificate(addr).await, first);
    gateway.reload().await.unwrap();
    assert_eq!(
        gateway.listener_addr("websecure"),
        Some(addr),
        "the socket stays open across the reload"
    );
    assert_eq!(served_certificate(addr).await, second);
}

#[tokio::test]
async fn listener_switched_to_https_by_reload_keeps_its_port() {
    let dir = tempfile::tempdir().unwrap();
    let cert = write_cert(dir.path(), "switch.test");
    let port = free_port();
    let plain = format!(
        "\
listeners:
  - name: web
    address: 127.0.0.1:{port}
routes:
  - name: ping
    respond: {{ status: 200, body: pong }}
"
    );
    let secure = plain.replace(
        "routes:",
        "    protocol: https\n    tls:\n      certificates:\n        - { cert: cert.pem, key: key.pem }\nroutes:",
    );
    let config_path = dir.path().join("portcullis.yaml");
    std::fs::write(&config_path, &plain).unwrap();
    let gateway = portcullis::gateway::start(config_path.clone())
        .await
        .unwrap();
    let addr = gateway.listener_addr("web").unwrap();
    assert_eq!(get(&format!("http://{addr}/")).await.0, 200);

    std::fs::write(&config_path, &secure).unwrap();
    if let Err(e) = gateway.reload().await {
        panic!("reload to https on the same port failed:\n{e}");
    }
    assert_eq!(served_certificate(addr).await, cert);
}

#[tokio::test]
async fn shutdown_within_lets_an_in_flight_request_finish_and_stops_accepting() {
    let slow = slow_backend(Duration::from_millis(600)).await;
    let gw = TestGateway::start(&config(
        &route("slow", "/slow", "s"),
        &upstream("s", slow.addr),
    ))
    .await;
    let addr = gw.addr("web");
    let url = gw.url("web", "/slow");
    let in_flight = tokio::spawn(async move { get(&url).await });
    wait_seen(&slow, "/slow").await;

    let gateway = gw.gateway.clone();
    let shutdown =
        tokio::spawn(async move { gateway.shutdown_within(Duration::from_secs(5)).await });
    assert!(
        wait_refusing(addr, Duration::from_millis(400)).await,
        "still accepting after shutdown began"
    );
    assert!(
        !in_flight.is_finished(),
        "the slow request cannot be done yet"
    );
    let (status, _, text) = in_flight.await.unwrap();
    assert_eq!((status.as_u16(), text.as_str()), (200, "slow done"));
    assert!(
        shutdown.await.unwrap(),
        "shutdown_within reported connections left open"
    );
}

#[tokio::test]
async fn shutdown_within_closes_idle_keep_alive_connections_at_once() {
    let app = Backend::echo("app").await;
    let gw = TestGateway::start(&config(
        &route("all", "/", "app"),
        &upstream("app", app.addr),
    ))
    .await;
    // A finished request leaves the client's connection open and idle.
    let mut idle = tokio::net::TcpStream::connect(gw.addr("web"))
        .await
        .unwrap();
    answered_200(&mut idle, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let started = Instant::now();
    let drained = gw.gateway.shutdown_within(Duration::from_secs(5)).await;
    assert!(drained, "an idle connection kept shutdown waiting");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn shutdown_within_finishes_http2_streams_then_closes_the_connection() {
    let (_slow, gw, _h2, in_flight) = http2_request_in_flight(Duration::from_millis(600)).await;

    // The client keeps its HTTP/2 connection: only the drain ends it.
    let started = Instant::now();
    let drained = gw.gateway.shutdown_within(Duration::from_secs(5)).await;
    assert!(drained, "the HTTP/2 connection kept shutdown waiting");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let (version, status, text) = in_flight.await.unwrap();
    assert_eq!(version, http::Version::HTTP_2);
    assert_eq!((status.as_u16(), text.as_str()), (200, "slow done"));
}

#[tokio::test]
async fn shutdown_within_gives_up_at_the_deadline() {
    let slow = slow_backend(Duration::from_secs(30)).await;
    let gw = TestGateway::start(&config(
        &route("slow", "/slow", "s"),
        &upstream("s", slow.addr),
    ))
    .await;
    let url = gw.url("web", "/slow");
    let _in_flight = tokio::spawn(async move { client().get(&url).send().await });
    wait_seen(&slow, "/slow").await;

    let started = Instant::now();
    let drained = gw.gateway.shutdown_within(Duration::from_millis(300)).await;
    let elapsed = started.elapsed();
    assert!(!drained, "a 30s request cannot have finished");
    assert!(
        elapsed >= Duration::from_millis(250) && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );
}

// ---- the real binary ----

/// A config for the binary on fixed free ports: admin on `admin`, web on `web`.
fn process_config(
    web: u16,
    admin: u16,
    shutdown_timeout: &str,
    routes: &str,
    upstreams: &str,
) -> String {
    format!(
        "admin:\n  address: 127.0.0.1:{admin}\nshutdown_timeout: {shutdown_timeout}\nlisteners:\n  - name: web\n    address: 127.0.0.1:{web}\nroutes:\n{routes}upstreams:\n{upstreams}"
    )
}

struct Started {
    process: GatewayProcess,
    web: SocketAddr,
    dir: tempfile::TempDir,
}

impl Started {
    fn config_path(&self) -> std::path::PathBuf {
        self.dir.path().join("portcullis.yaml")
    }
}

/// Writes the config built by `make(web_port, admin_port)`, starts the binary
/// and waits until the web listener accepts.
async fn start_process(make: impl Fn(u16, u16) -> String) -> Started {
    let dir = tempfile::tempdir().unwrap();
    let (web, admin) = (free_port(), free_port());
    std::fs::write(dir.path().join("portcullis.yaml"), make(web, admin)).unwrap();
    let process = GatewayProcess::spawn(&dir.path().join("portcullis.yaml"));
    let web_addr: SocketAddr = format!("127.0.0.1:{web}").parse().unwrap();
    wait_accepting(web_addr, Duration::from_secs(5)).await;
    Started {
        process,
        web: web_addr,
        dir,
    }
}

#[tokio::test]
async fn sighup_reloads_the_running_process() {
    let one = Backend::echo("one").await;
    let two = Backend::echo("two").await;
    let ups = format!("{}{}", upstream("one", one.addr), upstream("two", two.addr));
    let make = |routes: String| {
        let ups = ups.clone();
        move |web, admin| process_config(web, admin, "5s", &routes, &ups)
    };
    let p = start_process(make(route("api", "/api", "one"))).await;
    let url = format!("http://{}/api/x", p.web);
    assert_eq!(backend_of(&url).await, "one");

    let text = std::fs::read_to_string(p.config_path())
        .unwrap()
        .replace("upstream: one", "upstream: two");
    replace_file(&p.config_path(), &text);
    p.process.signal("HUP");
    let mut switched = false;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if backend_of(&url).await == "two" {
            switched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        switched,
        "routing did not change after SIGHUP; stderr:\n{}",
        p.process.stderr()
    );
}

#[tokio::test]
async fn sighup_with_a_broken_file_logs_why_and_keeps_serving() {
    let one = Backend::echo("one").await;
    let ups = upstream("one", one.addr);
    let p = start_process(|web, admin| {
        process_config(web, admin, "5s", &route("api", "/api", "one"), &ups)
    })
    .await;
    let url = format!("http://{}/api/x", p.web);

    let text = std::fs::read_to_string(p.config_path())
        .unwrap()
        .replace("upstream: one", "upstream: onee");
    replace_file(&p.config_path(), &text);
    p.process.signal("HUP");
    assert!(
        p.process
            .wait_stderr("reload failed", Duration::from_secs(5))
            .await,
        "no log line about the failed reload; stderr:\n{}",
        p.process.stderr()
    );
    let stderr = p.process.stderr();
    // The log names the file, the line of the mistake and what is wrong.
    let at = format!("{}:", p.config_path().display());
    assert!(
        stderr.contains(&at) && stderr.contains("onee"),
        "stderr:\n{stderr}"
    );
    assert_eq!(backend_of(&url).await, "one");
}

#[tokio::test]
async fn sigterm_lets_the_in_flight_request_finish_and_exits_0() {
    let slow = slow_backend(Duration::from_millis(800)).await;
    let ups = upstream("s", slow.addr);
    let mut p = start_process(|web, admin| {
        process_config(web, admin, "5s", &route("slow", "/slow", "s"), &ups)
    })
    .await;
    let url = format!("http://{}/slow", p.web);
    let in_flight = tokio::spawn(async move { get(&url).await });
    wait_seen(&slow, "/slow").await;

    let signalled = Instant::now();
    p.process.signal("TERM");
    let (status, _, text) = in_flight.await.unwrap();
    assert_eq!((status.as_u16(), text.as_str()), (200, "slow done"));
    let exit = p.process.wait_exit(Duration::from_secs(5)).await;
    assert!(
        exit.is_some(),
        "still running 5s after SIGTERM; stderr:\n{}",
        p.process.stderr()
    );
    assert_eq!(
        exit.and_then(|s| s.code()),
        Some(0),
        "stderr:\n{}",
        p.process.stderr()
    );
    assert!(signalled.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn sigterm_stops_accepting_new_connections_while_draining() {
    let slow = slow_backend(Duration::from_millis(1500)).await;
    let ups = upstream("s", slow.addr);
    let mut p = start_process(|web, admin| {
        process_config(web, admin, "5s", &route("slow", "/slow", "s"), &ups)
    })
    .await;
    let url = format!("http://{}/slow", p.web);
    let in_flight = tokio::spawn(async move { get(&url).await });
    wait_seen(&slow, "/slow").await;

    p.process.signal("TERM");
    assert!(
        wait_refusing(p.web, Duration::from_millis(1000)).await,
        "still accepting after SIGTERM"
    );
    // The refusal came while the process was still draining, not after it exited.
    assert!(
        !in_flight.is_finished(),
        "the slow request cannot be done yet"
    );
    assert!(
        p.process
            .wait_exit(Duration::from_millis(1))
            .await
            .is_none()
    );
    let (status, _, _) = in_flight.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        p.process
            .wait_exit(Duration::from_secs(5))
            .await
            .and_then(|s| s.code()),
        Some(0)
    );
}

#[tokio::test]
async fn sigterm_exits_0_at_shutdown_timeout_when_requests_outlast_it() {
    let slow = slow_backend(Duration::from_secs(30)).await;
    let ups = upstream("s", slow.addr);
    let mut p = start_process(|web, admin| {
        process_config(web, admin, "500ms", &route("slow", "/slow", "s"), &ups)
    })
    .await;
    let url = format!("http://{}/slow", p.web);
    let _in_flight = tokio::spawn(async move { client().get(&url).send().await });
    wait_seen(&slow, "/slow").await;

    let signalled = Instant::now();
    p.process.signal("TERM");
    let exit = p.process.wait_exit(Duration::from_secs(4)).await;
    let elapsed = signalled.elapsed();
    assert_eq!(
        exit.and_then(|s| s.code()),
        Some(0),
        "stderr:\n{}",
        p.process.stderr()
    );
    assert!(
        elapsed >= Duration::from_millis(400),
        "exited before shutdown_timeout: {elapsed:?}"
    );
}

#[tokio::test]
async fn sigint_drains_and_exits_0() {
    let app = Backend::echo("app").await;
    let ups = upstream("app", app.addr);
    let mut p = start_process(|web, admin| {
        process_config(web, admin, "5s", &route("all", "/", "app"), &ups)
    })
    .await;
    assert_eq!(backend_of(&format!("http://{}/", p.web)).await, "app");
    p.process.signal("INT");
    let exit = p.process.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(
        exit.and_then(|s| s.code()),
        Some(0),
        "stderr:\n{}",
        p.process.stderr()
    );
    assert!(wait_refusing(p.web, Duration::from_secs(1)).await);
}
