//! Hardening against abusive clients: request targets past `max_uri_size`
//! (414, over HTTP/1.1 and HTTP/2), TRACE (405 unless a route names it,
//! then without the client's credentials), the idle limits
//! (`keepalive_timeout`, `http2_idle_timeout`) and the connection caps
//! (`max_connections`, `max_connections_per_client`,
//! `max_connection_rate_per_client`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

/// A GET of a target `len` bytes long (`/` and then `a`s), closing after.
fn get_of_length(len: usize) -> Vec<u8> {
    let target = format!("/{}", "a".repeat(len - 1));
    format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").into_bytes()
}

/// The status line's code of a raw HTTP/1.1 answer.
fn status_of(raw: &str) -> u16 {
    raw.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {raw:?}"))
}

#[tokio::test]
async fn a_target_over_max_uri_size_gets_414_and_one_within_passes() {
    let backend = Backend::echo("app").await;
    let gw = TestGateway::in_front_of(backend.addr, "    max_uri_size: 1KiB").await;
    let wait = Duration::from_secs(5);
    let fits = raw(gw.addr("web"), &get_of_length(1024), wait).await;
    assert_eq!(status_of(&fits), 200, "{fits}");
    let over = raw(gw.addr("web"), &get_of_length(1025), wait).await;
    assert_eq!(status_of(&over), 414, "{over}");
    assert!(over.contains("application/problem+json"), "{over}");
    assert_eq!(backend.seen().len(), 1);
}

#[tokio::test]
async fn a_64_kib_target_gets_414_by_default_even_before_its_line_ends() {
    let backend = Backend::echo("app").await;
    let gw = TestGateway::in_front_of(backend.addr, "").await;
    let wait = Duration::from_secs(5);
    let whole = raw(gw.addr("web"), &get_of_length(64 * 1024), wait).await;
    assert_eq!(status_of(&whole), 414, "{whole}");
    // A request line that never ends is answered once it is too long.
    let endless = format!("GET /{}", "a".repeat(20 * 1024));
    let cut = raw(gw.addr("web"), endless.as_bytes(), wait).await;
    assert_eq!(status_of(&cut), 414, "{cut}");
    // 8 KiB, the default, still passes.
    let fits = raw(gw.addr("web"), &get_of_length(8 * 1024), wait).await;
    assert_eq!(status_of(&fits), 200, "{fits}");
    assert_eq!(backend.seen().len(), 1);
}

#[tokio::test]
async fn a_target_over_max_uri_size_gets_414_over_http2() {
    let backend = Backend::echo("app").await;
    let gw = TestGateway::in_front_of(backend.addr, "    max_uri_size: 1KiB").await;
    let h2 = h2c_client();
    let long = format!("/{}", "a".repeat(2000));
    let resp = h2.get(gw.url("web", &long)).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let (status, headers) = (resp.status(), resp.headers().clone());
    assert_problem(status, &headers, &resp.text().await.unwrap(), 414);
    assert!(backend.seen().is_empty());
}

#[tokio::test]
async fn trace_gets_405_unless_a_route_names_it_and_then_goes_without_credentials() {
    let backend = Backend::echo("app").await;
    let routes = r#"  - name: diagnostics
    match: { path_prefix: /diag, methods: [TRACE] }
    upstream: app
"#;
    let gw = TestGateway::in_front_of_with_routes(backend.addr, "", routes).await;
    let trace = |path: &str| {
        format!(
            "TRACE {path} HTTP/1.1\r\nHost: localhost\r\nCookie: session=secret\r\n\
             Authorization: Bearer t0ken\r\nX-Kept: yes\r\nConnection: close\r\n\r\n"
        )
    };
    let wait = Duration::from_secs(5);
    // The catch-all route takes any method but TRACE.
    let refused = raw(gw.addr("web"), trace("/anything").as_bytes(), wait).await;
    assert_eq!(status_of(&refused), 405, "{refused}");
    assert!(
        refused.to_ascii_lowercase().contains("\r\nallow: "),
        "{refused}"
    );
    assert!(backend.seen().is_empty());
    // Other methods still reach it.
    let (status, _, _) = get(&gw.url("web", "/anything")).await;
    assert_eq!(status, StatusCode::OK);

    let allowed = raw(gw.addr("web"), trace("/diag/echo").as_bytes(), wait).await;
    assert_eq!(status_of(&allowed), 200, "{allowed}");
    let seen = backend.seen();
    let last = seen.last().unwrap();
    assert_eq!(last.method, "TRACE");
    assert_eq!(last.headers["x-kept"], "yes");
    assert!(last.headers.get("cookie").is_none(), "{:?}", last.headers);
    assert!(last.headers.get("authorization").is_none());
}

/// How long until the server ends `io` (EOF or reset), up to `give_up`.
async fn closed_within(io: &mut TcpStream, give_up: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(give_up, async {
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

/// A connection that has had one keep-alive exchange answered.
async fn kept_alive(addr: SocketAddr) -> TcpStream {
    let mut io = TcpStream::connect(addr).await.unwrap();
    answered_200(&mut io, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    io
}

#[tokio::test]
async fn an_idle_http1_connection_is_closed_after_keepalive_timeout() {
    let backend = Backend::echo("app").await;
    let limits = "    keepalive_timeout: 400ms\n    header_read_timeout: 5s";
    let gw = TestGateway::in_front_of(backend.addr, limits).await;
    let mut io = kept_alive(gw.addr("web")).await;
    let after = closed_within(&mut io, Duration::from_secs(4))
        .await
        .expect("the idle connection was still open after 4 s");
    assert!(
        after >= Duration::from_millis(300),
        "closed after {after:?}"
    );
    assert!(
        after < Duration::from_millis(1500),
        "closed after {after:?}"
    );
}

#[tokio::test]
async fn the_next_head_has_header_read_timeout_not_keepalive_timeout() {
    let backend = Backend::echo("app").await;
    let limits = "    keepalive_timeout: 10s\n    header_read_timeout: 500ms";
    let gw = TestGateway::in_front_of(backend.addr, limits).await;
    let mut io = kept_alive(gw.addr("web")).await;
    // Idle longer than header_read_timeout is fine between requests...
    tokio::time::sleep(Duration::from_millis(800)).await;
    answered_200(&mut io, b"GET /again HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    // ...but a head begun must be finished within it.
    io.write_all(b"GET /slow HTTP/1.1\r\n").await.unwrap();
    let after = closed_within(&mut io, Duration::from_secs(4))
        .await
        .expect("the unfinished head was still waited for after 4 s");
    assert!(
        after < Duration::from_millis(1500),
        "closed after {after:?}"
    );
    assert_eq!(backend.seen().len(), 2);
}

/// Opens an h2c connection, has GET / answered and returns it.
async fn h2_after_one_request(addr: SocketAddr) -> TcpStream {
    let mut io = TcpStream::connect(addr).await.unwrap();
    io.write_all(&h2_preface_and_get()).await.unwrap();
    loop {
        let (kind, flags, stream, _) =
            tokio::time::timeout(Duration::from_secs(5), read_h2_frame(&mut io))
                .await
                .expect("an answer within 5 s");
        // The answer's last frame: END_STREAM on stream 1.
        if stream == 1 && (kind == 0x0 || kind == 0x1) && flags & 0x1 != 0 {
            return io;
        }
    }
}

#[tokio::test]
async fn an_idle_http2_connection_gets_goaway_then_is_closed() {
    let backend = Backend::echo("app").await;
    let gw = TestGateway::in_front_of(backend.addr, "    http2_idle_timeout: 500ms").await;
    let mut io = h2_after_one_request(gw.addr("web")).await;
    let started = Instant::now();
    let goaway = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match try_read_h2_frame(&mut io).await {
                Some((0x7, _, _, payload)) => return Some(payload),
                Some(_) => {}
                None => return None,
            }
        }
    })
    .await
    .expect("the idle connection was neither told to go away nor closed in 5 s")
    .expect("closed without GOAWAY");
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(400),
        "GOAWAY after {after:?}"
    );
    // Error code NO_ERROR: an orderly close, not a protocol error.
    assert_eq!(goaway[4..8], [0, 0, 0, 0], "{goaway:02x?}");
    // The client does not answer (not even the PING): the gateway does
    // not wait for it past the grace.
    let closed = closed_within(&mut io, Duration::from_secs(6)).await;
    assert!(closed.is_some(), "still open 6 s after GOAWAY");
}

#[tokio::test]
async fn thousands_of_idle_http2_connections_are_all_closed_at_the_idle_timeout() {
    const CONNECTIONS: usize = 2000;
    let backend = Backend::echo("app").await;
    let gw = TestGateway::start(&format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
listeners:
  - name: web
    address: 127.0.0.1:0
    http2_idle_timeout: 1s
routes:
  - name: all
    upstream: app
upstreams:
  - name: app
    targets: ["{}"]
"#,
        backend.addr
    ))
    .await;
    let addr = gw.addr("web");
    let mut opened = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS / 100 {
        let batch: Vec<_> = (0..100)
            .map(|_| tokio::spawn(h2_after_one_request(addr)))
            .collect();
        for b in batch {
            opened.push(b.await.unwrap());
        }
    }
    let active = r#"portcullis_connections_active{listener="web"}"#;
    assert!(metric_value(&gw, active).await >= CONNECTIONS as u64);
    // Every one is told to go away and closed (none answers the PING).
    let mut closing: Vec<_> = opened
        .into_iter()
        .map(|mut io| {
            tokio::spawn(async move { closed_within(&mut io, Duration::from_secs(15)).await })
        })
        .collect();
    for c in closing.drain(..) {
        assert!(
            c.await.unwrap().is_some(),
            "a connection was still open after 15 s"
        );
    }
    let mut left = u64::MAX;
    for _ in 0..50 {
        left = metric_value(&gw, active).await;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "connections still counted open");
}

#[tokio::test]
async fn past_max_connections_new_connections_wait_until_one_closes() {
    let backend = Backend::echo("app").await;
    let gw = TestGateway::in_front_of(backend.addr, "    max_connections: 2").await;
    let addr = gw.addr("web");
    let first = kept_alive(addr).await;
    let _second = kept_alive(addr).await;
    // The third is in the kernel's backlog: connected, but not served.
    let mut third = TcpStream::connect(addr).await.unwrap();
    third
        .write_all(b"GET /third HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf)).await;
    assert!(early.is_err(), "served past max_connections: {early:?}");
    drop(first);
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), third.read_to_string(&mut answer))
        .await
        .expect("the waiting connection was served once another closed")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
}

/// The count of `portcullis_connections_refused_total` for `reason`.
async fn refused(gw: &TestGateway, reason: &str) -> u64 {
    let series =
        format!("portcullis_connections_refused_total{{listener=\"web\",reason=\"{reason}\"}}");
    metric_value(gw, &series).await
}

/// A gateway with an admin listener and `limits` on its `web` listener.
async fn gateway_with(backend: SocketAddr, limits: &str) -> TestGateway {
    TestGateway::start(&format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
listeners:
  - name: web
    address: 127.0.0.1:0
{limits}
routes:
  - name: all
    upstream: app
upstreams:
  - name: app
    targets: ["{backend}"]
"#
    ))
    .await
}

#[tokio::test]
async fn past_max_connections_per_client_a_clients_new_connections_are_closed() {
    let backend = Backend::echo("app").await;
    let gw = gateway_with(backend.addr, "    max_connections_per_client: 2").await;
    let addr = gw.addr("web");
    let first = kept_alive(addr).await;
    let _second = kept_alive(addr).await;
    let mut third = TcpStream::connect(addr).await.unwrap();
    let _ = third
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await;
    assert!(
        closed_within(&mut third, Duration::from_secs(3))
            .await
            .is_some(),
        "the third connection was kept"
    );
    assert_eq!(refused(&gw, "max_connections_per_client").await, 1);
    // Once one closes, the client may connect again.
    // Once one closes (and the gateway has seen it go), the client may
    // connect again.
    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _fourth = kept_alive(addr).await;
}

#[tokio::test]
async fn past_max_connection_rate_per_client_new_connections_are_closed_for_the_second() {
    let backend = Backend::echo("app").await;
    let gw = gateway_with(backend.addr, "    max_connection_rate_per_client: 5").await;
    let addr = gw.addr("web");
    let mut served = 0;
    let mut closed = 0;
    for _ in 0..8 {
        let mut io = TcpStream::connect(addr).await.unwrap();
        let _ = io
            .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), io.read_to_end(&mut answer)).await;
        if answer.starts_with(b"HTTP/1.1 200 ") {
            served += 1;
        } else {
            closed += 1;
        }
    }
    // Eight in well under a second: five served, three closed (a second
    // boundary in between would let a few more through).
    assert!((5..8).contains(&served), "served {served}, closed {closed}");
    assert_eq!(refused(&gw, "max_connection_rate_per_client").await, closed);
    // A second later the client is welcome again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let _again = kept_alive(addr).await;
}

/// A backend that reads the whole request body, then answers its length.
async fn reading_backend() -> Backend {
    use http_body_util::BodyExt;
    Backend::start(|req: http::Request<hyper::body::Incoming>| async move {
        let n = req
            .into_body()
            .collect()
            .await
            .map_or(0, |b| b.to_bytes().len());
        http::Response::new(body(n.to_string()))
    })
    .await
}

/// The count of `portcullis_client_timeouts_total` for `kind`.
async fn client_timeouts(gw: &TestGateway, kind: &str) -> u64 {
    let series = format!("portcullis_client_timeouts_total{{listener=\"web\",kind=\"{kind}\"}}");
    metric_value(gw, &series).await
}

/// Sends a POST head declaring `length` bytes, then `first` bytes of it,
/// then one more byte every `every` (never finishing); returns the answer
/// and how long it took.
async fn slow_post(
    addr: SocketAddr,
    length: usize,
    first: usize,
    every: Duration,
) -> (String, Duration) {
    let started = Instant::now();
    let io = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = io.into_split();
    let head =
        format!("POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: {length}\r\n\r\n");
    write.write_all(head.as_bytes()).await.unwrap();
    write.write_all(&vec![b'a'; first]).await.unwrap();
    let drip = tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            if write.write_all(b"a").await.is_err() {
                return;
            }
        }
    });
    let mut answer = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), read.read_to_string(&mut answer)).await;
    drip.abort();
    (answer, started.elapsed())
}

#[tokio::test]
async fn a_stalled_body_gets_408_after_body_read_timeout_while_others_are_served() {
    let backend = reading_backend().await;
    let limits = "    body_read_timeout: 600ms\n    min_body_rate: 0";
    let gw = gateway_with(backend.addr, limits).await;
    let addr = gw.addr("web");
    let stalled = tokio::spawn(slow_post(addr, 100, 10, Duration::from_secs(3600)));
    // Meanwhile an ordinary upload goes through.
    let resp = client()
        .post(gw.url("web", "/upload"))
        .body(vec![b'x'; 50_000])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), "50000");
    let (answer, took) = stalled.await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(
        took >= Duration::from_millis(500),
        "answered after {took:?}"
    );
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
    assert_eq!(client_timeouts(&gw, "body_read_timeout").await, 1);
}

#[tokio::test]
async fn a_trickled_body_gets_408_once_below_min_body_rate() {
    let backend = reading_backend().await;
    let limits = "    min_body_rate: 100B\n    min_body_rate_grace: 1s";
    let gw = gateway_with(backend.addr, limits).await;
    // One byte every 100 ms: each wait is short, the rate far too low.
    let (answer, took) = slow_post(gw.addr("web"), 1000, 1, Duration::from_millis(100)).await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
    assert_eq!(client_timeouts(&gw, "min_body_rate").await, 1);
    // A body at a decent pace (1 KiB per 100 ms) is not cut.
    let (answer, _) = {
        let chunks = futures_util::stream::unfold(0, |i| async move {
            if i == 20 {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            Some((Ok::<_, std::io::Error>(vec![b'y'; 1024]), i + 1))
        });
        let resp = client()
            .post(gw.url("web", "/upload"))
            .body(reqwest::Body::wrap_stream(chunks))
            .send()
            .await
            .unwrap();
        (resp.text().await.unwrap(), ())
    };
    assert_eq!(answer, "20480");
}

#[tokio::test]
async fn a_stalled_http2_body_gets_408_too() {
    let backend = reading_backend().await;
    let limits = "    body_read_timeout: 600ms";
    let gw = gateway_with(backend.addr, limits).await;
    let stalled = futures_util::stream::once(async { Ok::<_, std::io::Error>(vec![b'z'; 10]) })
        .chain(futures_util::stream::pending());
    let started = Instant::now();
    let resp = h2c_client()
        .post(gw.url("web", "/upload"))
        .body(reqwest::Body::wrap_stream(stalled))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::REQUEST_TIMEOUT);
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(client_timeouts(&gw, "body_read_timeout").await, 1);
}

/// A PING frame (not an acknowledgement) on stream 0.
fn h2_ping(n: u64) -> Vec<u8> {
    let mut out = vec![0, 0, 8, 0x6, 0, 0, 0, 0, 0];
    out.extend_from_slice(&n.to_be_bytes());
    out
}

/// Reads frames until GOAWAY (its error code) or the end (None).
async fn goaway_code(io: &mut TcpStream) -> Option<u32> {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match try_read_h2_frame(io).await {
                Some((0x7, _, _, payload)) => {
                    return Some(u32::from_be_bytes([
                        payload[4], payload[5], payload[6], payload[7],
                    ]));
                }
                Some(_) => {}
                None => return None,
            }
        }
    })
    .await
    .expect("neither GOAWAY nor the end within 5 s")
}

#[tokio::test]
async fn a_ping_flood_gets_goaway_enhance_your_calm_and_a_penalty() {
    let backend = Backend::echo("app").await;
    let limits = "    http2_flood: { ping: 20, penalty: 1s }";
    let gw = gateway_with(backend.addr, limits).await;
    let addr = gw.addr("web");
    // A few pings a second are fine.
    let mut calm = h2_after_one_request(addr).await;
    for n in 0..5 {
        calm.write_all(&h2_ping(n)).await.unwrap();
    }
    // One request, then a flood of pings.
    let mut io = h2_after_one_request(addr).await;
    let flood: Vec<u8> = (0..1000).flat_map(h2_ping).collect();
    let _ = io.write_all(&flood).await;
    assert_eq!(goaway_code(&mut io).await, Some(0xb), "ENHANCE_YOUR_CALM");
    assert!(
        closed_within(&mut io, Duration::from_secs(3))
            .await
            .is_some()
    );
    let text = metrics_text(&gw).await;
    assert!(
        text.contains(r#"portcullis_http2_floods_total{listener="web",frame="ping"} 1"#),
        "{text}"
    );
    // The address serves its penalty: new connections are closed at once...
    let mut refused_io = TcpStream::connect(addr).await.unwrap();
    let _ = refused_io.write_all(&h2_preface_and_get()).await;
    assert_eq!(goaway_code(&mut refused_io).await, None);
    assert!(refused(&gw, "http2_flood").await >= 1);
    // ...and welcome again once it is over.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let _again = h2_after_one_request(addr).await;
}

/// HEADERS for GET / on `stream` (not ending the stream), then RST_STREAM
/// CANCEL for it: one "rapid reset".
fn h2_rapid_reset(stream: u32) -> Vec<u8> {
    let id = stream.to_be_bytes();
    let mut block = vec![0x82, 0x86, 0x84, 0x01, 9];
    block.extend_from_slice(b"localhost");
    let mut out = vec![
        0,
        0,
        block.len() as u8,
        0x1,
        0x4,
        id[0],
        id[1],
        id[2],
        id[3],
    ];
    out.extend_from_slice(&block);
    out.extend_from_slice(&[0, 0, 4, 0x3, 0, id[0], id[1], id[2], id[3], 0, 0, 0, 0x8]);
    out
}

#[tokio::test]
async fn rapid_resets_spread_over_reconnects_are_stopped_per_address() {
    let backend = Backend::echo("app").await;
    let limits = "    http2_flood: { rst_stream: 100, penalty: 5s }";
    let gw = gateway_with(backend.addr, limits).await;
    let addr = gw.addr("web");
    // 19 resets per connection, each connection under any per-connection
    // count, 30 connections in a row: 570 resets in well under a second.
    let mut turned_away = 0;
    for _ in 0..30 {
        let Ok(mut io) = TcpStream::connect(addr).await else {
            turned_away += 1;
            continue;
        };
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
        for i in 0..19 {
            out.extend(h2_rapid_reset(1 + 2 * i));
        }
        if io.write_all(&out).await.is_err() {
            turned_away += 1;
            continue;
        }
        // The client leaves (as a reconnecting attacker does).
        let _ = io.shutdown().await;
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), io.read_to_end(&mut rest)).await;
    }
    assert!(
        refused(&gw, "http2_flood").await >= 1,
        "never penalized; turned away {turned_away}"
    );
    // An ordinary client from elsewhere would still be served; from this
    // address, nothing until the penalty ends.
    let mut io = TcpStream::connect(addr).await.unwrap();
    let _ = io.write_all(&h2_preface_and_get()).await;
    assert_eq!(goaway_code(&mut io).await, None);
}

/// A backend whose answer to anything is `mib` MiB, streamed in 64 KiB chunks.
async fn big_backend(mib: usize) -> Backend {
    Backend::start(
        move |_req: http::Request<hyper::body::Incoming>| async move {
            let chunks = futures_util::stream::iter((0..mib * 16).map(|_| {
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(hyper::body::Frame::data(
                    bytes::Bytes::from(vec![b'b'; 64 * 1024]),
                ))
            }));
            http::Response::new(http_body_util::BodyExt::boxed(
                http_body_util::StreamBody::new(chunks),
            ))
        },
    )
    .await
}

#[tokio::test]
async fn a_client_that_does_not_read_its_answer_is_cut_after_send_timeout() {
    let backend = big_backend(64).await;
    let gw = gateway_with(backend.addr, "    send_timeout: 1s").await;
    let mut io = TcpStream::connect(gw.addr("web")).await.unwrap();
    io.write_all(b"GET /big HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    // Not reading while buffers fill and the timeout runs.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let mut total = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection was still open");
    assert!(total < 64 << 20, "the whole answer came: {total}");
    assert_eq!(client_timeouts(&gw, "send_timeout").await, 1);
}

#[tokio::test]
async fn an_http2_stream_held_on_a_zero_window_is_cut_after_send_timeout() {
    let backend = big_backend(1).await;
    let gw = gateway_with(backend.addr, "    send_timeout: 1s").await;
    let mut io = TcpStream::connect(gw.addr("web")).await.unwrap();
    // SETTINGS_INITIAL_WINDOW_SIZE = 0: no DATA may be sent until the
    // client opens the window, which it never does.
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&[0, 0, 6, 0x4, 0, 0, 0, 0, 0, 0, 0x4, 0, 0, 0, 0]);
    let get = h2_preface_and_get();
    out.extend_from_slice(&get[24 + 9..]);
    io.write_all(&out).await.unwrap();
    let started = Instant::now();
    let closed = closed_within(&mut io, Duration::from_secs(6)).await;
    assert!(
        closed.is_some(),
        "the stalled connection was still open after 6 s"
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(client_timeouts(&gw, "send_timeout").await, 1);
}
