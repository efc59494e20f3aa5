//! Listener limits and malformed requests: `max_header_size` and
//! `max_headers` (431), `max_body` (413, declared or streamed), bad request
//! lines and headers (400), and `header_read_timeout` (slow clients closed).
//! Requests are written byte for byte with `raw`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

/// A backend that reads the whole request body before it answers with the
/// number of bytes it received.
async fn counting_backend() -> Backend {
    Backend::start(|req: Request<Incoming>| async move {
        match req.into_body().collect().await {
            Ok(b) => Response::new(body(b.to_bytes().len().to_string())),
            Err(_) => {
                let mut r = Response::new(body("body cut short"));
                *r.status_mut() = StatusCode::BAD_REQUEST;
                r
            }
        }
    })
    .await
}

/// Splits a raw HTTP/1.1 response into status, headers and body.
fn parse_response(raw: &str) -> (StatusCode, HeaderMap, String) {
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete response head in {raw:?}"));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or_else(|| panic!("bad status line in {raw:?}"));
    let mut headers = HeaderMap::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':')
            && let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.trim().as_bytes()),
                HeaderValue::from_str(value.trim()),
            )
        {
            headers.append(n, v);
        }
    }
    (status, headers, body.to_string())
}

/// Sends `request` on a new connection and parses the answer.
async fn exchange(addr: SocketAddr, request: &[u8]) -> (StatusCode, HeaderMap, String) {
    parse_response(&raw(addr, request, Duration::from_secs(5)).await)
}

/// A GET request head with `extra` header lines (each ending in CRLF).
fn get_with(extra: &str) -> Vec<u8> {
    format!("GET /x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{extra}\r\n").into_bytes()
}

/// `count` distinct header lines `x-h{i}: v`.
fn many_headers(count: usize) -> String {
    (0..count).map(|i| format!("x-h{i}: v\r\n")).collect()
}

/// A chunked POST of `chunks` chunks of `size` bytes each.
fn chunked_post(chunks: usize, size: usize) -> Vec<u8> {
    let mut out =
        b"POST /upload HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..chunks {
        out.extend_from_slice(format!("{size:x}\r\n").as_bytes());
        out.extend(std::iter::repeat_n(b'a', size));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[tokio::test]
async fn headers_over_max_header_size_give_431() {
    let backend = Backend::echo("app").await;
    let gw = TestGateway::in_front_of(backend.addr, "    max_header_size: 4KiB").await;
    let big = format!("x-big: {}\r\n", "b".repeat(5 * 1024));
    let (status, headers, text) = exchange(gw.addr("web"), &get_with(&big)).await;
    assert_problem(status, &headers, &text, 431);
    assert!(backend.seen().is_empty());
}

#[tokio::test]
async fn headers_within_max_header_size_pass() {
    let backend = Backend::echo("app").await;
    let gw = TestGateway::in_front_of(backend.addr, "    max_header_size: 4KiB").await;
    let fits = format!("x-big: {}\r\n", "b".repeat(3 * 1024));
    let (status, _, text) = exchange(gw.addr("web"), &get_with(&fits)).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(backend.seen().len(), 1);
}

#[tokio::test]
async fn headers_over_the_default_64kib_give_431() {
    let backend = Backend::echo("app").await;
    let gw = TestGateway::in_front_of(backend.addr, "").await;
    // Several headers that each fit, together past 64 KiB.
    let big: String = (0..5)
        .map(|i| format!("x-big{i}: {}\r\n", "b".repeat(14 * 1024)))
        .collect();
    let (status, headers, text) = exchange(gw.addr("web"), &get_with(&big)).await;
    assert_problem(status, &headers, &text, 431);
    // Just under the default passes.
    let fits: String = (0..4)
        .map(|i| format!("x-big{i}: {}\r\n", "b".repeat(14 * 1024)))
        .collect();
    let (status, _, text) = exchange(gw.addr("web"), &get_with(&fits)).await;
    assert_eq!(status, 200, "{text}");
}

#[tokio::test]
async fn headers_far_over_max_header_size_give_431() {
    // Far past the limit the HTTP parser itself refuses the head.
    let backend = Backend::echo("app").await;
    let gw = TestGateway::in_front_of(backend.addr, "    max_header_size: 8KiB").await;
    let huge = format!("x-huge: {}\r\n", "h".repeat(256 * 1024));
    let response = raw(gw.addr("web"), &get_with(&huge), Duration::from_secs(5)).await;
    assert!(response.starts_with("HTTP/1.1 431 "), "{response:?}");
    assert!(backend.seen().is_empty());
}

#[tokio::test]
async fn headers_over_max_header_size_give_431_over_http2() {
    let backend = Backend::echo("app").await;
    let gw = TestGateway::in_front_of(backend.addr, "    max_header_size: 4KiB").await;
    let h2 = h2c_client();
    let resp = h2
        .get(gw.url("web", "/x"))
        .header("x-big", "b".repeat(5 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let (status, headers) = (resp.status(), resp.headers().clone());
    assert_problem(status, &headers, &resp.text().await.unwrap(), 431);
    assert!(backend.seen().is_empty());
}

#[tokio::test]
async fn more_headers_than_max_headers_give_431() {
    let backend = Backend::echo("app").await;
    let gw = TestGateway::in_front_of(backend.addr, "    max_headers: 10").await;
    // Host and Connection count too: 2 + 9 = 11.
    let (status, headers, text) = exchange(gw.addr("web"), &get_with(&many_headers(9))).await;
    assert_problem(status, &headers, &text, 431);
    let (status, _, text) = exchange(gw.addr("web"), &get_with(&many_headers(8))).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(backend.seen().len(), 1);
}

#[tokio::test]
async fn more_headers_than_the_default_100_give_431() {
    let backend = Backend::echo("app").await;
    let gw = TestGateway::in_front_of(backend.addr, "").await;
    let (status, headers, text) = exchange(gw.addr("web"), &get_with(&many_headers(110))).await;
    assert_problem(status, &headers, &text, 431);
    let (status, _, text) = exchange(gw.addr("web"), &get_with(&many_headers(90))).await;
    assert_eq!(status, 200, "{text}");
}

#[tokio::test]
async fn body_over_max_body_with_content_length_gives_413() {
    let backend = counting_backend().await;
    let gw = TestGateway::in_front_of(backend.addr, "    max_body: 1KiB").await;
    // Only the head is sent: the declared length alone is refused, without
    // waiting for the body.
    let request = b"POST /upload HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 4096\r\n\r\n";
    let (status, headers, text) = exchange(gw.addr("web"), request).await;
    assert_problem(status, &headers, &text, 413);
    assert!(backend.seen().is_empty());
}

#[tokio::test]
async fn body_within_max_body_is_forwarded_whole() {
    let backend = counting_backend().await;
    let gw = TestGateway::in_front_of(backend.addr, "    max_body: 1KiB").await;
    let mut request =
        b"POST /upload HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 1024\r\n\r\n".to_vec();
    request.extend(std::iter::repeat_n(b'a', 1024));
    let (status, _, text) = exchange(gw.addr("web"), &request).await;
    assert_eq!((status.as_u16(), text.as_str()), (200, "1024"));
    let (status, _, text) = exchange(gw.addr("web"), &chunked_post(4, 256)).await;
    assert_eq!((status.as_u16(), text.as_str()), (200, "1024"));
}

#[tokio::test]
async fn chunked_body_growing_past_max_body_gives_413() {
    let backend = counting_backend().await;
    let gw = TestGateway::in_front_of(backend.addr, "    max_body: 1KiB").await;
    // No length is declared: the limit is found while the body streams.
    let (status, headers, text) = exchange(gw.addr("web"), &chunked_post(6, 300)).await;
    assert_problem(status, &headers, &text, 413);
}

#[tokio::test]
async fn garbage_request_line_gives_400() {
    let backend = Backend::echo("app").await;
    let gw = TestGateway::in_front_of(backend.addr, "").await;
    for request in [
        &b"THIS IS NOT HTTP\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
        b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let response = raw(gw.addr("web"), request, Duration::from_secs(5)).await;
        assert!(
            response.starts_with("HTTP/1.1 400 "),
            "{:?} got {response:?}",
            String::from_utf8_lossy(request)
        );
    }
    assert!(backend.seen().is_empty());
}

#[tokio::test]
async fn malformed_header_gives_400() {
    let backend = Backend::echo("app").await;
    let gw = TestGateway::in_front_of(backend.addr, "").await;
    for request in [
        &b"GET / HTTP/1.1\r\nHost: x\r\nthis line has no colon\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: x\r\nbad name: v\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nx-a: \x01\x02\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    ] {
        let response = raw(gw.addr("web"), request, Duration::from_secs(5)).await;
        assert!(
            response.starts_with("HTTP/1.1 400 "),
            "{:?} got {response:?}",
            String::from_utf8_lossy(request)
        );
    }
    assert!(backend.seen().is_empty());
}

#[tokio::test]
async fn two_host_headers_or_none_in_http11_give_400() {
    let backend = Backend::echo("app").await;
    let gw = TestGateway::in_front_of(backend.addr, "").await;
    for request in [
        &b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
    ] {
        let (status, headers, text) = exchange(gw.addr("web"), request).await;
        assert_problem(status, &headers, &text, 400);
    }
    assert!(backend.seen().is_empty());
    // HTTP/1.0 may leave Host out.
    let (status, _, _) = exchange(gw.addr("web"), b"GET / HTTP/1.0\r\n\r\n").await;
    assert_eq!(status, 200);
}

/// Connects, writes `first`, then drips `drip` every 100 ms until the
/// server closes the connection; returns how long that took (None if the
/// connection was still open after `give_up`).
async fn time_until_closed(
    addr: SocketAddr,
    first: &[u8],
    drip: &'static [u8],
    give_up: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let closed = tokio::spawn(async move {
        let mut buf = [0u8; 1024];
        // EOF or a reset both mean the server gave up on the client.
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    });
    let _ = write.write_all(first).await;
    let dripping = async {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if !drip.is_empty() && write.write_all(drip).await.is_err() {
                // Writing fails once the server closed; the reader reports when.
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        elapsed = closed => elapsed.ok(),
        _ = dripping => None,
        _ = tokio::time::sleep(give_up) => None,
    }
}

/// Writes `first` to a gateway with a 1s header_read_timeout, then drips a
/// header line every 100 ms; asserts the connection is closed after about
/// 1s and returns the request URIs the backend saw.
async fn slow_head_is_cut_off(first: &[u8]) -> Vec<String> {
    let backend = Backend::echo("app").await;
    let gw = TestGateway::in_front_of(backend.addr, "    header_read_timeout: 1s").await;
    let elapsed = time_until_closed(
        gw.addr("web"),
        first,
        b"x-slow: 1\r\n",
        Duration::from_secs(6),
    )
    .await
    .expect("the slow client was still connected after 6s");
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(3),
        "closed after {elapsed:?}"
    );
    backend.seen().iter().map(|s| s.uri.clone()).collect()
}

#[tokio::test]
async fn client_sending_headers_too_slowly_is_disconnected_after_header_read_timeout() {
    let seen = slow_head_is_cut_off(b"GET / HTTP/1.1\r\nHost: localhost\r\n").await;
    assert!(seen.is_empty());
}

#[tokio::test]
async fn client_sending_nothing_is_disconnected_after_header_read_timeout() {
    let backend = Backend::echo("app").await;
    let gw = TestGateway::in_front_of(backend.addr, "    header_read_timeout: 1s").await;
    let elapsed = time_until_closed(gw.addr("web"), b"", b"", Duration::from_secs(6))
        .await
        .expect("the silent client was still connected after 6s");
    assert!(elapsed < Duration::from_secs(3), "closed after {elapsed:?}");
}

#[tokio::test]
async fn a_slow_second_head_on_a_kept_alive_connection_is_cut_off_too() {
    // A whole first request, then the next head dripped after its answer.
    let seen = slow_head_is_cut_off(
        b"GET /first HTTP/1.1\r\nHost: localhost\r\n\r\nGET /second HTTP/1.1\r\nHost: localhost\r\n",
    )
    .await;
    assert_eq!(seen, ["/first"]);
}

#[tokio::test]
async fn a_request_in_flight_longer_than_header_read_timeout_is_not_cut_off() {
    let backend = Backend::start(|_req| async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        Response::new(body("late but fine"))
    })
    .await;
    let gw = TestGateway::in_front_of(backend.addr, "    header_read_timeout: 500ms").await;
    let (status, _, text) = get(&gw.url("web", "/")).await;
    assert_eq!((status.as_u16(), text.as_str()), (200, "late but fine"));
}

#[tokio::test]
async fn client_sending_headers_in_time_is_served() {
    let backend = Backend::echo("app").await;
    let gw = TestGateway::in_front_of(backend.addr, "    header_read_timeout: 2s").await;
    let stream = tokio::net::TcpStream::connect(gw.addr("web"))
        .await
        .unwrap();
    let (mut read, mut write) = stream.into_split();
    // A few pauses shorter than the timeout in total.
    for part in [
        &b"GET /slow HTTP/1.1\r\n"[..],
        b"Host: localhost\r\n",
        b"Connection: close\r\n",
        b"\r\n",
    ] {
        write.write_all(part).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), read.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let (status, _, text) = parse_response(&String::from_utf8_lossy(&out));
    assert_eq!(status, 200, "{text}");
}
