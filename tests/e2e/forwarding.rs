//! Forwarding: bodies stream both ways, header hygiene (hop-by-hop,
//! X-Forwarded-*, X-Request-Id, Host), rewrites, route header changes,
//! upgrade tunnels, HTTP/2 upstreams with trailers, keep-alive pools,
//! upstream timeouts, and what clients see when an upstream misbehaves.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, stream};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A gateway config with one listener `web`, one route `r` to upstream `app`
/// (whose only target is `target`); `route_extra` and `upstream_extra` are
/// YAML lines added to the route and the upstream (indented four spaces).
fn config(target: SocketAddr, route_extra: &str, upstream_extra: &str) -> String {
    format!(
        r#"
listeners:
  - name: web
    address: 127.0.0.1:0
routes:
  - name: r
    upstream: app
{route_extra}
upstreams:
  - name: app
    targets: ["{target}"]
{upstream_extra}
"#
    )
}

/// Starts a gateway in front of `target` with the given route and upstream extras.
async fn gateway(target: SocketAddr, route_extra: &str, upstream_extra: &str) -> TestGateway {
    TestGateway::start(&config(target, route_extra, upstream_extra)).await
}

/// A client without the shared 20 s total timeout, for long transfers.
fn long_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap()
}

/// The single request the backend saw (panics when it saw another count).
fn only_seen(backend: &Backend) -> Seen {
    let seen = backend.seen();
    assert_eq!(seen.len(), 1, "backend saw {seen:?}");
    seen.into_iter().next().unwrap()
}

/// Every value of `name` in `headers`, as text.
fn values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

/// Status code and lower-cased header lines of a raw HTTP/1.1 response.
fn parse_head(response: &str) -> (u16, Vec<(String, String)>) {
    let head = response.split("\r\n\r\n").next().unwrap_or("");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers)
}

/// Asserts that nothing the client got names the backend's address.
fn assert_hides_backend(headers: &HeaderMap, text: &str, backend: SocketAddr) {
    let addr = backend.to_string();
    assert!(
        !text.contains(&addr),
        "body names the backend {addr}: {text}"
    );
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        assert!(
            !value.contains(&addr),
            "header {name} names the backend {addr}: {value}"
        );
    }
}

/// Polls `cond` every 10 ms until it holds or `within` passes.
async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads one request head (up to the blank line) from `s`.
async fn read_head(s: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    head
}

/// A backend that hands each accepted TCP connection to `on_conn`, for
/// byte-exact or misbehaving answers.
async fn raw_backend<F, Fut>(on_conn: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(on_conn(s));
        }
    });
    addr
}

/// An HTTP/1.1 echo backend that counts the TCP connections it accepts and
/// the ones that have been closed.
struct CountingBackend {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
}

impl CountingBackend {
    async fn start() -> CountingBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (a, c) = (accepted.clone(), closed.clone());
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let c = c.clone();
                tokio::spawn(async move {
                    let service = service_fn(|req: Request<Incoming>| async move {
                        Ok::<_, Infallible>(echo_response("counted", req))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), service)
                        .await;
                    c.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        CountingBackend {
            addr,
            accepted,
            closed,
        }
    }
}

// ---------------------------------------------------------------------------
// Streaming
// ---------------------------------------------------------------------------

const GIB: u64 = 1 << 30;
const CHUNK: usize = 64 * 1024;
/// One chunk of generated body, shared by every frame so nothing is allocated per chunk.
static CHUNK_DATA: [u8; CHUNK] = [b'x'; CHUNK];
/// Largest RSS growth allowed while 1 GiB passes through.
const RSS_BUDGET: u64 = 150 * 1024 * 1024;

/// `total` bytes (a multiple of [`CHUNK`]) generated lazily, one shared chunk at a time.
fn generated(total: u64) -> impl futures_util::Stream<Item = Bytes> + Send + Sync + 'static {
    stream::iter(0..total / CHUNK as u64).map(|_| Bytes::from_static(&CHUNK_DATA))
}

/// The process's resident set size in bytes, from /proc/self/status.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kb * 1024
}

/// Samples the RSS on its own thread (independent of the tokio scheduler)
/// and remembers the peak until dropped.
struct RssPeak {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssPeak {
    fn start() -> RssPeak {
        let peak = Arc::new(AtomicU64::new(rss_bytes()));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss_bytes(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        RssPeak {
            peak,
            stop,
            thread: Some(thread),
        }
    }

    fn peak(&self) -> u64 {
        let now = rss_bytes();
        self.peak.fetch_max(now, Ordering::Relaxed).max(now)
    }
}

impl Drop for RssPeak {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1gib_download_streams_through_with_flat_memory() {
    let backend = Backend::start(|req: Request<Incoming>| async move {
        if req.uri().path() != "/big" {
            return Response::new(body("small"));
        }
        let frames = generated(GIB)
            .map(|b| Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(b)));
        Response::new(BodyExt::boxed(StreamBody::new(frames)))
    })
    .await;
    let gw = gateway(backend.addr, "", "").await;
    // Warm up: the first request allocates pools, buffers and lazy statics.
    let (status, _, _) = get(&gw.url("web", "/warmup")).await;
    assert_eq!(status, 200);

    let before = rss_bytes();
    let watch = RssPeak::start();
    let mut resp = long_client()
        .get(gw.url("web", "/big"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut total = 0u64;
    while let Some(chunk) = resp.chunk().await.unwrap() {
        total += chunk.len() as u64;
    }
    let growth = watch.peak().saturating_sub(before);
    assert_eq!(total, GIB, "bytes received");
    assert!(
        growth < RSS_BUDGET,
        "RSS grew by {} MiB while 1 GiB streamed down",
        growth / (1024 * 1024)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1gib_upload_streams_through_with_flat_memory() {
    let backend = Backend::start(|req: Request<Incoming>| async move {
        let mut incoming = req.into_body();
        let mut n = 0u64;
        while let Some(frame) = incoming.frame().await {
            match frame {
                Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
                Err(_) => break,
            }
        }
        Response::new(body(n.to_string()))
    })
    .await;
    let gw = gateway(backend.addr, "", "").await;
    let (status, _, _) = get(&gw.url("web", "/warmup")).await;
    assert_eq!(status, 200);

    let before = rss_bytes();
    let watch = RssPeak::start();
    let upload = reqwest::Body::wrap_stream(generated(GIB).map(Ok::<_, std::io::Error>));
    let resp = long_client()
        .post(gw.url("web", "/upload"))
        .body(upload)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    let growth = watch.peak().saturating_sub(before);
    assert_eq!(status, 200, "{text}");
    assert_eq!(text, GIB.to_string(), "bytes the backend received");
    assert!(
        growth < RSS_BUDGET,
        "RSS grew by {} MiB while 1 GiB streamed up",
        growth / (1024 * 1024)
    );
}

// ---------------------------------------------------------------------------
// Header hygiene
// ---------------------------------------------------------------------------

#[tokio::test]
async fn hop_by_hop_request_headers_are_not_forwarded() {
    let backend = Backend::echo("b").await;
    let gw = gateway(backend.addr, "", "").await;
    let request = "GET /hop HTTP/1.1\r\n\
        Host: example.test\r\n\
        Connection: close, x-hop-named\r\n\
        X-Hop-Named: secret\r\n\
        Keep-Alive: timeout=5\r\n\
        TE: gzip\r\n\
        Trailer: x-checksum\r\n\
        Upgrade: example/1\r\n\
        Proxy-Authorization: Basic Zm9vOmJhcg==\r\n\
        Proxy-Connection: keep-alive\r\n\
        X-Kept: yes\r\n\r\n";
    let response = raw(gw.addr("web"), request.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(parse_head(&response).0, 200, "{response}");
    let seen = only_seen(&backend);
    for name in [
        "connection",
        "x-hop-named",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
    ] {
        assert!(
            !seen.headers.contains_key(name),
            "{name} reached the backend: {:?}",
            seen.headers
        );
    }
    assert_eq!(values(&seen.headers, "x-kept"), ["yes"]);
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_not_returned() {
    let backend = raw_backend(|mut s| async move {
        read_head(&mut s).await;
        let answer = "HTTP/1.1 200 OK\r\n\
            Connection: x-hop-named, keep-alive\r\n\
            X-Hop-Named: secret\r\n\
            Keep-Alive: timeout=5\r\n\
            Trailer: x-checksum\r\n\
            Upgrade: example/1\r\n\
            Proxy-Authenticate: Basic realm=\"inner\"\r\n\
            Proxy-Connection: keep-alive\r\n\
            X-Kept: yes\r\n\
            Content-Length: 2\r\n\r\nok";
        let _ = s.write_all(answer.as_bytes()).await;
        // Keep the connection open until the gateway is done with it.
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
    })
    .await;
    let gw = gateway(backend, "", "").await;
    let request = "GET /hop HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n";
    let response = raw(gw.addr("web"), request.as_bytes(), Duration::from_secs(5)).await;
    let (status, headers) = parse_head(&response);
    assert_eq!(status, 200, "{response}");
    assert!(response.ends_with("\r\n\r\nok"), "{response}");
    for (name, value) in &headers {
        assert!(
            !matches!(
                name.as_str(),
                "x-hop-named"
                    | "keep-alive"
                    | "trailer"
                    | "upgrade"
                    | "proxy-authenticate"
                    | "proxy-connection"
            ),
            "{name}: {value} reached the client:\n{response}"
        );
        if name == "connection" {
            // The gateway's own connection management may say `close`; the
            // backend's Connection header must not come through.
            assert_eq!(value.to_ascii_lowercase(), "close", "{response}");
        }
    }
    assert!(
        headers.iter().any(|(n, v)| n == "x-kept" && v == "yes"),
        "{response}"
    );
}

#[tokio::test]
async fn x_forwarded_for_is_appended_to_the_clients_value() {
    let backend = Backend::echo("b").await;
    let gw = gateway(backend.addr, "", "").await;
    let resp = client()
        .get(gw.url("web", "/"))
        .header("x-forwarded-for", "203.0.113.7")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = only_seen(&backend);
    assert_eq!(
        values(&seen.headers, "x-forwarded-for"),
        ["203.0.113.7, 127.0.0.1"]
    );
}

#[tokio::test]
async fn x_forwarded_for_is_set_to_the_client_when_absent() {
    let backend = Backend::echo("b").await;
    let gw = gateway(backend.addr, "", "").await;
    let (status, _, _) = get(&gw.url("web", "/")).await;
    assert_eq!(status, 200);
    assert_eq!(
        values(&only_seen(&backend).headers, "x-forwarded-for"),
        ["127.0.0.1"]
    );
}

#[tokio::test]
async fn x_forwarded_proto_and_host_describe_the_client_request() {
    let backend = Backend::echo("b").await;
    let gw = gateway(backend.addr, "", "").await;
    let request = "GET / HTTP/1.1\r\nHost: shop.example.test:8080\r\n\
        X-Forwarded-Proto: https\r\nX-Forwarded-Host: forged.example\r\nConnection: close\r\n\r\n";
    let response = raw(gw.addr("web"), request.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(parse_head(&response).0, 200, "{response}");
    let seen = only_seen(&backend);
    // A client cannot claim TLS or another host: the gateway states what it saw.
    assert_eq!(values(&seen.headers, "x-forwarded-proto"), ["http"]);
    assert_eq!(
        values(&seen.headers, "x-forwarded-host"),
        ["shop.example.test:8080"]
    );
}

#[tokio::test]
async fn host_header_is_kept() {
    let backend = Backend::echo("b").await;
    let gw = gateway(backend.addr, "", "").await;
    let request = "GET / HTTP/1.1\r\nHost: shop.example.test\r\nConnection: close\r\n\r\n";
    let response = raw(gw.addr("web"), request.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(parse_head(&response).0, 200, "{response}");
    assert_eq!(
        values(&only_seen(&backend).headers, "host"),
        ["shop.example.test"]
    );
}

#[tokio::test]
async fn valid_request_id_is_kept_and_echoed() {
    let backend = Backend::echo("b").await;
    let gw = gateway(backend.addr, "", "").await;
    let resp = client()
        .get(gw.url("web", "/"))
        .header("x-request-id", "req-42_a.b:c")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(values(resp.headers(), "x-request-id"), ["req-42_a.b:c"]);
    assert_eq!(
        values(&only_seen(&backend).headers, "x-request-id"),
        ["req-42_a.b:c"]
    );
}

#[tokio::test]
async fn invalid_request_id_is_replaced() {
    let backend = Backend::echo("b").await;
    let gw = gateway(backend.addr, "", "").await;
    let forged = "evil id\" injected=1";
    let resp = client()
        .get(gw.url("web", "/"))
        .header("x-request-id", forged)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echoed = values(resp.headers(), "x-request-id");
    let upstream = values(&only_seen(&backend).headers, "x-request-id");
    assert_eq!(echoed.len(), 1, "{echoed:?}");
    assert_ne!(echoed[0], forged);
    assert!(
        !echoed[0].is_empty()
            && echoed[0]
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-')
    );
    assert_eq!(
        upstream, echoed,
        "the backend and the client see the same id"
    );
}

#[tokio::test]
async fn missing_request_id_is_generated_and_echoed() {
    let backend = Backend::echo("b").await;
    let gw = gateway(backend.addr, "", "").await;
    let (_, h1, _) = get(&gw.url("web", "/")).await;
    let (_, h2, _) = get(&gw.url("web", "/")).await;
    let ids: Vec<String> = [&h1, &h2]
        .iter()
        .map(|h| values(h, "x-request-id").concat())
        .collect();
    assert!(!ids[0].is_empty() && !ids[1].is_empty(), "{ids:?}");
    assert_ne!(ids[0], ids[1], "each request gets its own id");
    let upstream: Vec<String> = backend
        .seen()
        .iter()
        .map(|s| values(&s.headers, "x-request-id").concat())
        .collect();
    assert_eq!(upstream, ids);
}

// ---------------------------------------------------------------------------
// Rewrites and header changes
// ---------------------------------------------------------------------------

#[tokio::test]
async fn rewrite_strip_prefix_removes_the_prefix() {
    let backend = Backend::echo("b").await;
    let gw = gateway(
        backend.addr,
        "    match: { path_prefix: /api }\n    rewrite: { strip_prefix: /api }",
        "",
    )
    .await;
    let (status, _, text) = get(&gw.url("web", "/api/users/7?x=1")).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(only_seen(&backend).uri, "/users/7?x=1");
}

#[tokio::test]
async fn rewrite_replace_prefix_swaps_the_prefix() {
    let backend = Backend::echo("b").await;
    let gw = gateway(
        backend.addr,
        "    match: { path_prefix: /old }\n    rewrite: { replace_prefix: { from: /old, to: /new/v2 } }",
        "",
    )
    .await;
    let (status, _, text) = get(&gw.url("web", "/old/items?q=2")).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(only_seen(&backend).uri, "/new/v2/items?q=2");
}

#[tokio::test]
async fn rewrite_regex_substitutes_groups_and_keeps_the_query() {
    let backend = Backend::echo("b").await;
    let gw = gateway(
        backend.addr,
        "    rewrite: { regex: { pattern: \"^/users/([0-9]+)$\", replacement: \"/u?id=$1\" } }",
        "",
    )
    .await;
    let (status, _, text) = get(&gw.url("web", "/users/42?v=1")).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(only_seen(&backend).uri, "/u?id=42&v=1");
}

#[tokio::test]
async fn request_headers_set_replaces_the_clients_value() {
    let backend = Backend::echo("b").await;
    let gw = gateway(
        backend.addr,
        "    request_headers: { set: { x-gateway: portcullis } }",
        "",
    )
    .await;
    let resp = client()
        .get(gw.url("web", "/"))
        .header("x-gateway", "forged")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        values(&only_seen(&backend).headers, "x-gateway"),
        ["portcullis"]
    );
}

#[tokio::test]
async fn request_headers_add_appends_to_the_clients_value() {
    let backend = Backend::echo("b").await;
    let gw = gateway(
        backend.addr,
        "    request_headers: { add: { x-tag: gateway } }",
        "",
    )
    .await;
    let resp = client()
        .get(gw.url("web", "/"))
        .header("x-tag", "client")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        values(&only_seen(&backend).headers, "x-tag"),
        ["client", "gateway"]
    );
}

#[tokio::test]
async fn request_headers_remove_deletes_the_header() {
    let backend = Backend::echo("b").await;
    let gw = gateway(
        backend.addr,
        "    request_headers: { remove: [cookie] }",
        "",
    )
    .await;
    let resp = client()
        .get(gw.url("web", "/"))
        .header("cookie", "session=secret")
        .header("x-other", "kept")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = only_seen(&backend);
    assert!(!seen.headers.contains_key("cookie"), "{:?}", seen.headers);
    assert_eq!(values(&seen.headers, "x-other"), ["kept"]);
}

/// A backend that answers with a Server header and a few custom ones.
async fn branded_backend() -> Backend {
    Backend::start(|_req| async {
        Response::builder()
            .header("server", "backend/1.0")
            .header("x-version", "1")
            .header("x-multi", "a")
            .body(body("ok"))
            .unwrap()
    })
    .await
}

#[tokio::test]
async fn response_headers_set_replaces_the_upstreams_value() {
    let backend = branded_backend().await;
    let gw = gateway(
        backend.addr,
        "    response_headers: { set: { x-version: \"2\", x-frame-options: DENY } }",
        "",
    )
    .await;
    let (status, headers, _) = get(&gw.url("web", "/")).await;
    assert_eq!(status, 200);
    assert_eq!(values(&headers, "x-version"), ["2"]);
    assert_eq!(values(&headers, "x-frame-options"), ["DENY"]);
}

#[tokio::test]
async fn response_headers_add_appends_to_the_upstreams_value() {
    let backend = branded_backend().await;
    let gw = gateway(
        backend.addr,
        "    response_headers: { add: { x-multi: b } }",
        "",
    )
    .await;
    let (status, headers, _) = get(&gw.url("web", "/")).await;
    assert_eq!(status, 200);
    assert_eq!(values(&headers, "x-multi"), ["a", "b"]);
}

#[tokio::test]
async fn response_headers_remove_deletes_the_header() {
    let backend = branded_backend().await;
    let gw = gateway(
        backend.addr,
        "    response_headers: { remove: [server] }",
        "",
    )
    .await;
    let (status, headers, text) = get(&gw.url("web", "/")).await;
    assert_eq!((status.as_u16(), text.as_str()), (200, "ok"));
    assert!(!headers.contains_key("server"), "{headers:?}");
    assert_eq!(values(&headers, "x-version"), ["1"]);
}

// ---------------------------------------------------------------------------
// Upgrades and HTTP/2
// ---------------------------------------------------------------------------

/// Answers a WebSocket handshake and echoes every text and binary message.
async fn websocket_echo(mut req: Request<Incoming>) -> Response<TestBody> {
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        let mut r = Response::new(body("not a websocket handshake"));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        let (mut tx, mut rx) = ws.split();
        while let Some(Ok(msg)) = rx.next().await {
            if (msg.is_text() || msg.is_binary()) && tx.send(msg).await.is_err() {
                break;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", derive_accept_key(key.as_bytes()))
        .body(body(""))
        .unwrap()
}

#[tokio::test]
async fn websocket_messages_are_relayed_both_ways() {
    let backend = Backend::start(websocket_echo).await;
    let gw = gateway(backend.addr, "", "").await;
    let url = format!("ws://{}/chat", gw.addr("web"));
    let (mut ws, resp) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .expect("handshake timed out")
    .expect("handshake failed");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    for i in 0..3 {
        let text = format!("hello {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("no echo in time")
            .expect("stream ended")
            .unwrap();
        assert_eq!(echoed.to_text().unwrap(), text);
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("no echo in time")
        .expect("stream ended")
        .unwrap();
    assert_eq!(echoed.into_data().as_ref(), &[0u8, 1, 2, 255]);
    let seen = only_seen(&backend);
    assert_eq!(
        values(&seen.headers, "upgrade"),
        ["websocket"],
        "{:?}",
        seen.headers
    );
}

/// A target that switches to whatever protocol it is asked for (and, with
/// `always`, answers every request 101 `Upgrade: h2c`), then echoes the
/// tunnel's bytes. Returns its address and the request heads it read.
async fn any_upgrade_target(always: bool) -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = heads.clone();
    let addr = raw_backend(move |mut s| {
        let seen = seen.clone();
        async move {
            let head = String::from_utf8_lossy(&read_head(&mut s).await).to_string();
            seen.lock().unwrap().push(head.clone());
            let asked = head
                .lines()
                .find_map(|l| l.strip_prefix("upgrade: ").or(l.strip_prefix("Upgrade: ")))
                .map(str::to_string);
            let answer = match (always, asked) {
                (true, _) => "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n".to_string(),
                (false, Some(p)) => format!("HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: {p}\r\n\r\n"),
                (false, None) => {
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nplain").await;
                    return;
                }
            };
            let _ = s.write_all(answer.as_bytes()).await;
            let mut buf = [0u8; 1024];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    })
    .await;
    (addr, heads)
}

/// Sends an upgrade request for `protocol`, then `after` on the same
/// connection, and returns all the client read within a second.
async fn upgrade_exchange(gw: &TestGateway, protocol: &str, after: &[u8]) -> String {
    let mut s = TcpStream::connect(gw.addr("web")).await.unwrap();
    let req = format!(
        "GET /admin HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n\
         Upgrade: {protocol}\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = s.write_all(after).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(1);
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline.into(), s.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn h2c_and_unknown_upgrades_are_not_forwarded_to_a_target_that_accepts_any() {
    let (target, heads) = any_upgrade_target(false).await;
    let gw = gateway(target, "", "").await;
    for protocol in ["h2c", "foo", "H2C"] {
        let answer = upgrade_exchange(&gw, protocol, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{protocol}: {answer}");
        assert!(
            !answer.contains("PRI"),
            "{protocol}: a tunnel was opened: {answer}"
        );
    }
    for head in heads.lock().unwrap().iter() {
        let lower = head.to_ascii_lowercase();
        assert!(
            !lower.contains("upgrade"),
            "the target was asked to upgrade: {head}"
        );
        assert!(!lower.contains("http2-settings"), "{head}");
    }
}

#[tokio::test]
async fn an_upgrade_the_route_lists_is_tunnelled_and_others_offered_with_it_are_dropped() {
    let (target, heads) = any_upgrade_target(false).await;
    let gw = gateway(target, "    upgrades: [websocket, foo]", "").await;
    let answer = upgrade_exchange(&gw, "h2c, foo/2", b"through").await;
    assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
    assert!(answer.ends_with("through"), "{answer}");
    let head = heads.lock().unwrap()[0].to_ascii_lowercase();
    assert!(head.contains("\r\nupgrade: foo/2\r\n"), "{head}");
}

#[tokio::test]
async fn a_101_to_a_protocol_the_request_did_not_ask_for_is_a_502_and_closes_the_target() {
    let (target, heads) = any_upgrade_target(true).await;
    let gw = gateway(target, "", "").await;
    // A WebSocket handshake answered with a switch to h2c.
    let answer = upgrade_exchange(&gw, "websocket", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    assert!(!answer.contains("PRI"), "{answer}");
    // A plain request answered 101 is a 502 too, and the next request
    // does not reuse that target connection (a new head arrives).
    let (status, _, _) = get(&gw.url("web", "/plain")).await;
    assert_eq!(status, 502);
    let (status, _, _) = get(&gw.url("web", "/plain")).await;
    assert_eq!(status, 502);
    assert_eq!(
        heads.lock().unwrap().len(),
        3,
        "a switched connection was reused"
    );
}

#[tokio::test]
async fn http2_upstream_receives_http2_and_trailers_reach_the_client() {
    let backend = Backend::start(|_req| async {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        trailers.insert("grpc-message", "fine".parse().unwrap());
        let frames: Vec<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>> = vec![
            Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x05hello"))),
            Ok(Frame::trailers(trailers)),
        ];
        Response::builder()
            .header("content-type", "application/grpc")
            .body(BodyExt::boxed(StreamBody::new(stream::iter(frames))))
            .unwrap()
    })
    .await;
    let gw = gateway(backend.addr, "", "    http2: true").await;

    let tcp = TcpStream::connect(gw.addr("web")).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::post(format!("http://{}/pkg.Greeter/SayHello", gw.addr("web")))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req))
        .await
        .expect("no answer in time")
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected
        .trailers()
        .cloned()
        .expect("trailers reached the client");
    assert_eq!(collected.to_bytes().as_ref(), b"\0\0\0\0\x05hello");
    assert_eq!(values(&trailers, "grpc-status"), ["0"]);
    assert_eq!(values(&trailers, "grpc-message"), ["fine"]);

    let seen = only_seen(&backend);
    assert_eq!(seen.version, http::Version::HTTP_2);
    assert_eq!(
        values(&seen.headers, "te"),
        ["trailers"],
        "gRPC needs `te: trailers` upstream"
    );
}

// ---------------------------------------------------------------------------
// Connection pooling and timeouts
// ---------------------------------------------------------------------------

#[tokio::test]
async fn upstream_connections_are_reused_across_requests() {
    let backend = CountingBackend::start().await;
    let gw = gateway(backend.addr, "", "").await;
    const N: usize = 10;
    for i in 0..N {
        // A new client connection each time: only the gateway's pool can reuse.
        let (status, _, text) = get(&gw.url("web", &format!("/{i}"))).await;
        assert_eq!(status, 200, "{text}");
    }
    let accepted = backend.accepted.load(Ordering::SeqCst);
    assert!(
        accepted <= 2,
        "{N} sequential requests opened {accepted} upstream connections"
    );
}

#[tokio::test]
async fn idle_pooled_connections_are_closed_after_the_idle_timeout() {
    let backend = CountingBackend::start().await;
    let gw = gateway(backend.addr, "", "    timeouts: { idle: 300ms }").await;
    let (status, _, _) = get(&gw.url("web", "/")).await;
    assert_eq!(status, 200);
    assert_eq!(backend.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(
        backend.closed.load(Ordering::SeqCst),
        0,
        "the connection is pooled, not closed after the response"
    );
    let closed = eventually(Duration::from_secs(3), || {
        backend.closed.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(
        closed,
        "the idle pooled connection was not closed within 3 s of a 300ms idle timeout"
    );
}

/// A raw HTTP/1.1 backend: answers every request on a connection with
/// `answer` (a full response), counts connections, and after each answer
/// closes the connection when `close_after` says so.
async fn scripted_backend(
    answer: &'static [u8],
    close_after: Option<Duration>,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let addr = raw_backend(move |mut s| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            loop {
                if read_head(&mut s).await.is_empty() {
                    return;
                }
                if s.write_all(answer).await.is_err() {
                    return;
                }
                if let Some(after) = close_after {
                    tokio::time::sleep(after).await;
                    return;
                }
            }
        }
    })
    .await;
    (addr, accepted)
}

#[tokio::test]
async fn a_target_that_closes_every_connection_is_followed_without_errors() {
    let (addr, accepted) = scripted_backend(
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
        Some(Duration::ZERO),
    )
    .await;
    let gw = gateway(addr, "", "").await;
    for i in 0..5 {
        let (status, _, text) = get(&gw.url("web", &format!("/{i}"))).await;
        assert_eq!((status.as_u16(), text.as_str()), (200, "ok"), "request {i}");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        5,
        "one connection per request"
    );
}

#[tokio::test]
async fn a_pooled_connection_the_target_closed_while_idle_is_not_used() {
    // The target keeps each connection for 50 ms after answering, then closes
    // it: the gateway's pooled connection goes stale between the requests.
    let (addr, accepted) = scripted_backend(
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        Some(Duration::from_millis(50)),
    )
    .await;
    let gw = gateway(addr, "", "").await;
    for i in 0..3 {
        let (status, _, text) = get(&gw.url("web", &format!("/{i}"))).await;
        assert_eq!((status.as_u16(), text.as_str()), (200, "ok"), "request {i}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_response_the_client_left_half_read_does_not_reach_the_next_request() {
    const BIG: usize = 4 << 20;
    let backend = Backend::start(|req| async move {
        if req.uri().path() == "/big" {
            Response::new(body(vec![b'x'; BIG]))
        } else {
            Response::new(body("small"))
        }
    })
    .await;
    let gw = gateway(backend.addr, "", "").await;
    // Read the head and a little of the 4 MiB body, then hang up.
    let mut s = TcpStream::connect(gw.addr("web")).await.unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    drop(s);
    // Every later request gets its own answer, never the rest of /big.
    for i in 0..5 {
        let (status, _, text) = get(&gw.url("web", "/small")).await;
        assert_eq!(
            (status.as_u16(), text.as_str()),
            (200, "small"),
            "request {i}"
        );
    }
}

#[tokio::test]
async fn http2_upstream_requests_share_one_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = service_fn(|req: Request<Incoming>| async move {
                    Ok::<_, Infallible>(echo_response("h2", req))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), service)
                    .await;
            });
        }
    });
    let gw = gateway(addr, "", "    http2: true").await;
    let requests = (0..20).map(|i| {
        let url = gw.url("web", &format!("/{i}"));
        async move { get(&url).await.0 }
    });
    let statuses = futures_util::future::join_all(requests).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let opened = accepted.load(Ordering::SeqCst);
    assert!(
        opened <= 2,
        "20 concurrent requests opened {opened} HTTP/2 connections"
    );
}

#[tokio::test]
async fn response_header_timeout_gives_504_in_time() {
    let backend = Backend::start(|_req| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Response::new(body("too late"))
    })
    .await;
    let gw = gateway(backend.addr, "", "    timeouts: { response_header: 500ms }").await;
    let started = Instant::now();
    let (status, headers, text) = get(&gw.url("web", "/slow")).await;
    let took = started.elapsed();
    assert_problem(status, &headers, &text, 504);
    assert_hides_backend(&headers, &text, backend.addr);
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "answered after {took:?} with a 500ms response_header timeout"
    );
}

#[tokio::test]
async fn connect_timeout_gives_504_in_time() {
    // A listener whose accept queue is full and that never accepts: the
    // kernel drops further SYNs, so connecting hangs until the timeout.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let target = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(target)).await {
            Ok(Ok(s)) => fillers.push(s),
            Ok(Err(e)) => panic!("filling the accept queue failed: {e}"),
            Err(_) => break,
        }
        assert!(fillers.len() < 64, "the accept queue never filled");
    }
    let gw = gateway(target, "", "    timeouts: { connect: 300ms }").await;
    let started = Instant::now();
    let (status, headers, text) = get(&gw.url("web", "/")).await;
    let took = started.elapsed();
    assert_problem(status, &headers, &text, 504);
    assert_hides_backend(&headers, &text, target);
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "answered after {took:?} with a 300ms connect timeout"
    );
    drop(listener);
}

// ---------------------------------------------------------------------------
// Upstream failures and client disconnects
// ---------------------------------------------------------------------------

/// GETs `/` through a fresh gateway in front of `target` and checks for a
/// quick problem+json `expected` that does not name the target.
async fn expect_upstream_error(target: SocketAddr, expected: u16) -> serde_json::Value {
    let gw = gateway(target, "", "").await;
    let started = Instant::now();
    let (status, headers, text) = get(&gw.url("web", "/")).await;
    let took = started.elapsed();
    let v = assert_problem(status, &headers, &text, expected);
    assert_hides_backend(&headers, &text, target);
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
    v
}

#[tokio::test]
async fn refused_connection_gives_502_without_the_backend_address() {
    expect_upstream_error(dead_addr().await, 502).await;
}

#[tokio::test]
async fn upstream_closing_before_answering_gives_502() {
    let target = raw_backend(|mut s| async move {
        read_head(&mut s).await;
        drop(s);
    })
    .await;
    expect_upstream_error(target, 502).await;
}

#[tokio::test]
async fn upstream_reset_before_answering_gives_502() {
    let target = raw_backend(|mut s| async move {
        read_head(&mut s).await;
        // SO_LINGER 0: close with a TCP RST instead of a FIN.
        let _ = s.set_zero_linger();
        drop(s);
    })
    .await;
    expect_upstream_error(target, 502).await;
}

#[tokio::test]
async fn upstream_closing_mid_response_head_gives_502() {
    let target = raw_backend(|mut s| async move {
        read_head(&mut s).await;
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Ty").await;
        drop(s);
    })
    .await;
    expect_upstream_error(target, 502).await;
}

#[tokio::test]
async fn upstream_closing_mid_body_aborts_the_client_response() {
    let target = raw_backend(|mut s| async move {
        read_head(&mut s).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly-a-bit")
            .await;
        drop(s);
    })
    .await;
    let gw = gateway(target, "", "").await;
    // The head may or may not reach the client before the truncation is
    // noticed (the gateway writes it with the first body bytes): when it
    // has not, the client gets a 502 instead (RFC 9112: a malformed
    // response is the gateway's 502); when it has, the body must break.
    // Either way the client sees a failure, not a complete-looking body,
    // and soon.
    let outcome = tokio::time::timeout(Duration::from_secs(5), async {
        let resp = client().get(gw.url("web", "/")).send().await?;
        if resp.status() == 502 {
            return Ok(Err(resp.text().await?));
        }
        assert_eq!(resp.status(), 200);
        resp.bytes().await.map(Ok)
    })
    .await
    .expect("the client was left waiting");
    assert!(
        !matches!(outcome, Ok(Ok(_))),
        "client got a complete-looking body: {outcome:?}"
    );
}

/// A backend that counts what it reads of each request body and records
/// when a body ended (completely or with an error).
fn counting_upload_backend(
    ended: Arc<AtomicUsize>,
) -> impl Fn(
    Request<Incoming>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<TestBody>> + Send>>
+ Clone
+ Send
+ Sync
+ 'static {
    move |req: Request<Incoming>| {
        let ended = ended.clone();
        Box::pin(async move {
            let mut incoming = req.into_body();
            let mut n = 0u64;
            while let Some(frame) = incoming.frame().await {
                match frame {
                    Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
                    Err(_) => break,
                }
            }
            ended.fetch_add(1, Ordering::SeqCst);
            Response::new(body(n.to_string()))
        })
    }
}

#[tokio::test]
async fn client_disconnecting_mid_upload_does_not_hurt_later_requests() {
    let ended = Arc::new(AtomicUsize::new(0));
    let backend = Backend::start(counting_upload_backend(ended.clone())).await;
    let gw = gateway(backend.addr, "", "").await;

    let mut s = TcpStream::connect(gw.addr("web")).await.unwrap();
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: example.test\r\nContent-Length: 104857600\r\n\r\n",
    )
    .await
    .unwrap();
    s.write_all(&CHUNK_DATA).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || backend.seen().len() == 1).await,
        "the upload never reached the backend"
    );
    drop(s);
    // The gateway gives up the upstream request too rather than leaving it hanging.
    assert!(
        eventually(Duration::from_secs(5), || ended.load(Ordering::SeqCst) == 1).await,
        "the backend's request body never ended after the client left"
    );

    for i in 0..5 {
        let resp = client()
            .post(gw.url("web", &format!("/after/{i}")))
            .body("12345")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "5");
    }
}

#[tokio::test]
async fn client_disconnecting_mid_download_stops_the_upstream_transfer() {
    /// Set when the backend's response body is dropped (the transfer stopped).
    struct DropFlag(Arc<AtomicBool>);
    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let stopped = Arc::new(AtomicBool::new(false));
    let flag = stopped.clone();
    let backend = Backend::start(move |req: Request<Incoming>| {
        let flag = flag.clone();
        async move {
            if req.uri().path() != "/big" {
                return Response::new(body("small"));
            }
            let guard = DropFlag(flag);
            let frames = generated(64 * GIB).map(move |b| {
                let _ = &guard;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(b))
            });
            Response::new(BodyExt::boxed(StreamBody::new(frames)))
        }
    })
    .await;
    let gw = gateway(backend.addr, "", "").await;

    let mut resp = long_client()
        .get(gw.url("web", "/big"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut got = 0usize;
    while got < 1024 * 1024 {
        got += resp.chunk().await.unwrap().expect("body ended early").len();
    }
    drop(resp);
    assert!(
        eventually(Duration::from_secs(5), || stopped.load(Ordering::SeqCst)).await,
        "the gateway kept pulling the upstream body after the client left"
    );
    for _ in 0..3 {
        let (status, _, text) = get(&gw.url("web", "/small")).await;
        assert_eq!((status.as_u16(), text.as_str()), (200, "small"));
    }
}
