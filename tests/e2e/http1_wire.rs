//! The HTTP/1.1 server side on the wire: pipelining, keep-alive and
//! HTTP/1.0, request smuggling shapes, chunked request bodies, `Expect:
//! 100-continue`, HEAD, response framing (Content-Length, chunked, until
//! close) and `date`, early answers to large uploads, malformed heads, and
//! clients that leave. A raw TCP client writes exact bytes and reads the
//! answers byte for byte, so that what is tested is the wire format.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::*;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// How long any single read waits before the test fails.
const READ_WAIT: Duration = Duration::from_secs(5);

/// A gateway with one listener `web` (plus the YAML lines `listener`, for
/// limits), a route `/direct` that answers `direct answer` itself, and a
/// catch-all route to `backend`.
async fn gateway(listener: &str, backend: SocketAddr) -> TestGateway {
    let direct =
        "  - name: direct\n    match: { path: /direct }\n    respond: { body: direct answer }\n";
    TestGateway::in_front_of_with_routes(backend, listener, direct).await
}

/// A backend that reads the whole request body and answers with it; the
/// trailers it received come back as `x-trailers: name=value;...`.
async fn body_echo_backend() -> Backend {
    Backend::start(|req: Request<Incoming>| async move {
        match req.into_body().collect().await {
            Ok(collected) => {
                let trailers = collected
                    .trailers()
                    .map(|t| {
                        t.iter()
                            .map(|(k, v)| format!("{k}={}", v.to_str().unwrap_or("?")))
                            .collect::<Vec<_>>()
                            .join(";")
                    })
                    .unwrap_or_default();
                let mut r = Response::new(body(collected.to_bytes()));
                r.headers_mut()
                    .insert("x-trailers", HeaderValue::from_str(&trailers).unwrap());
                r
            }
            Err(_) => {
                let mut r = Response::new(body("body cut short"));
                *r.status_mut() = StatusCode::BAD_REQUEST;
                r
            }
        }
    })
    .await
}

/// The body [`streaming_backend`] sends, in three frames.
const STREAMED: &str = "streamed body";

/// A backend that answers with a body of unknown length (three frames, no
/// Content-Length: hyper sends it chunked).
async fn streaming_backend() -> Backend {
    Backend::start(|_req| async {
        let frames = futures_util::stream::iter(["stream", "ed ", "body"]).map(|s| {
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(Bytes::from_static(
                s.as_bytes(),
            )))
        });
        Response::new(BodyExt::boxed(StreamBody::new(frames)))
    })
    .await
}

/// How a response's body was delimited on the wire.
#[derive(Debug, PartialEq, Eq)]
enum Delimited {
    /// No body at all (HEAD, 1xx, 204, 304).
    NoBody,
    /// `content-length: N`.
    Length(usize),
    /// `transfer-encoding: chunked`.
    Chunked,
    /// Neither: the body ran until the connection closed.
    Close,
}

/// One response as it came off the wire.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// Header fields in order, names lower-cased.
    headers: Vec<(String, String)>,
    /// The body, de-chunked.
    body: Vec<u8>,
    delimited: Delimited,
}

impl Answer {
    /// The only value of `name` (panics when there are several).
    fn header(&self, name: &str) -> Option<&str> {
        let all = self.all(name);
        assert!(all.len() <= 1, "several {name} headers: {:?}", self.headers);
        all.first().copied()
    }

    /// Every value of `name`.
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The echo backend's JSON.
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }

    /// Whether the server said it closes the connection after this answer.
    fn says_close(&self) -> bool {
        self.all("connection")
            .iter()
            .any(|v| v.eq_ignore_ascii_case("close"))
    }

    /// Asserts a problem+json answer with `status` (see [`assert_problem`]).
    fn assert_problem(&self, status: u16) -> serde_json::Value {
        let mut headers = HeaderMap::new();
        for (n, v) in &self.headers {
            headers.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let code = StatusCode::from_u16(self.status).unwrap();
        assert_problem(code, &headers, &self.text(), status)
    }
}

/// A raw client connection: writes exact bytes, reads responses one by one
/// (bytes past a response stay buffered for the next).
struct Wire {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Wire {
    async fn connect(addr: SocketAddr) -> Wire {
        Wire {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads more into the buffer; false at the end of the stream (or a reset).
    async fn fill(&mut self) -> bool {
        let mut chunk = vec![0u8; 64 * 1024];
        match tokio::time::timeout(READ_WAIT, self.stream.read(&mut chunk)).await {
            Err(_) => panic!(
                "nothing more within {READ_WAIT:?}; buffered so far: {:?}",
                String::from_utf8_lossy(&self.buf)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// Exactly `n` bytes.
    async fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(
                self.fill().await,
                "the connection ended after {:?}, {n} bytes wanted",
                String::from_utf8_lossy(&self.buf)
            );
        }
        self.buf.drain(..n).collect()
    }

    /// Bytes up to `end` (included).
    async fn take_through(&mut self, end: &[u8]) -> Vec<u8> {
        loop {
            if let Some(at) = self.buf.windows(end.len()).position(|w| w == end) {
                return self.buf.drain(..at + end.len()).collect();
            }
            assert!(
                self.fill().await,
                "the connection ended before {:?} in {:?}",
                String::from_utf8_lossy(end),
                String::from_utf8_lossy(&self.buf)
            );
        }
    }

    /// Everything until the server closes.
    async fn rest(&mut self) -> Vec<u8> {
        while self.fill().await {}
        std::mem::take(&mut self.buf)
    }

    /// A status line and header fields.
    async fn head(&mut self) -> (u16, Vec<(String, String)>) {
        let head = self.take_through(b"\r\n\r\n").await;
        let head = String::from_utf8(head).expect("a head in ASCII");
        let mut lines = head.trim_end_matches("\r\n").split("\r\n");
        let status_line = lines.next().unwrap();
        let mut parts = status_line.splitn(3, ' ');
        assert_eq!(
            parts.next(),
            Some("HTTP/1.1"),
            "status line {status_line:?}"
        );
        let status = parts
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers = lines
            .map(|l| {
                let (n, v) = l
                    .split_once(':')
                    .unwrap_or_else(|| panic!("bad header line {l:?} in {head:?}"));
                assert_eq!(n, n.trim(), "space around the name in {l:?}");
                (n.to_ascii_lowercase(), v.trim().to_string())
            })
            .collect();
        (status, headers)
    }

    /// One whole response to a request other than HEAD.
    async fn response(&mut self) -> Answer {
        self.read_response(false).await
    }

    /// One whole response to a HEAD request (never a body).
    async fn head_response(&mut self) -> Answer {
        self.read_response(true).await
    }

    async fn read_response(&mut self, to_head: bool) -> Answer {
        let (status, headers) = self.head().await;
        let mut answer = Answer {
            status,
            headers,
            body: Vec::new(),
            delimited: Delimited::NoBody,
        };
        if to_head || (100..200).contains(&status) || status == 204 || status == 304 {
            return answer;
        }
        let chunked = answer
            .header("transfer-encoding")
            .map(|te| te.eq_ignore_ascii_case("chunked"));
        let length = answer.all("content-length").first().map(|v| {
            v.parse::<usize>()
                .unwrap_or_else(|_| panic!("content-length {v:?}"))
        });
        match (chunked, length) {
            (Some(true), None) => {
                answer.delimited = Delimited::Chunked;
                loop {
                    let line = self.take_through(b"\r\n").await;
                    let line = String::from_utf8(line).unwrap();
                    let size = usize::from_str_radix(line.trim_end(), 16)
                        .unwrap_or_else(|_| panic!("chunk size line {line:?}"));
                    if size == 0 {
                        // No trailers are expected: the last chunk, then an empty line.
                        assert_eq!(self.take(2).await, b"\r\n", "after the last chunk");
                        break;
                    }
                    let data = self.take(size).await;
                    answer.body.extend_from_slice(&data);
                    assert_eq!(self.take(2).await, b"\r\n", "after chunk data");
                }
            }
            (None, Some(n)) => {
                answer.delimited = Delimited::Length(n);
                answer.body = self.take(n).await;
            }
            (None, None) => {
                answer.delimited = Delimited::Close;
                answer.body = self.rest().await;
            }
            _ => panic!("ambiguous framing: {:?}", answer.headers),
        }
        answer
    }

    /// Asserts that the server closes the connection with nothing more to say.
    async fn assert_closed(&mut self) {
        assert!(
            !self.fill().await,
            "the connection stayed open and sent {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        assert!(
            self.buf.is_empty(),
            "bytes after the last response: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
    }

    /// Asserts that nothing arrives within `wait` (and the connection stays open).
    async fn assert_silent(&mut self, wait: Duration) {
        let mut chunk = [0u8; 1024];
        match tokio::time::timeout(wait, self.stream.read(&mut chunk)).await {
            Err(_) => {}
            Ok(Ok(0)) => panic!("the connection was closed"),
            Ok(Ok(n)) => panic!(
                "unexpected bytes: {:?}",
                String::from_utf8_lossy(&chunk[..n])
            ),
            Ok(Err(e)) => panic!("the connection failed: {e}"),
        }
    }
}

/// Sends `request` on a fresh connection, reads one response and asserts
/// that the connection is closed after it.
async fn one_shot(addr: SocketAddr, request: &[u8]) -> Answer {
    let mut wire = Wire::connect(addr).await;
    wire.send(request).await;
    let answer = wire.response().await;
    wire.assert_closed().await;
    answer
}

/// A GET for `path` (HTTP/1.1, Host: x) with `extra` header lines.
fn get(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n").into_bytes()
}

/// Asserts that an HTTP date is within a few seconds of now.
fn assert_recent_date(answer: &Answer) {
    let date = answer
        .header("date")
        .unwrap_or_else(|| panic!("no date header in {:?}", answer.headers));
    let when = httpdate::parse_http_date(date).unwrap_or_else(|e| panic!("date {date:?}: {e}"));
    let now = SystemTime::now();
    let skew = now.duration_since(when).unwrap_or_else(|e| e.duration());
    assert!(
        skew < Duration::from_secs(5),
        "date {date:?} is off by {skew:?}"
    );
}

// ---------------------------------------------------------------------------
// Pipelining and keep-alive
// ---------------------------------------------------------------------------

#[tokio::test]
async fn two_gets_written_at_once_are_answered_in_order_on_the_same_connection() {
    let backend = Backend::echo("app").await;
    let gw = gateway("", backend.addr).await;
    let mut wire = Wire::connect(gw.addr("web")).await;
    wire.send(&[get("/one", ""), get("/two", "")].concat())
        .await;
    for path in ["/one", "/two"] {
        let answer = wire.response().await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.json()["path"], path);
        assert!(!answer.says_close(), "{answer:?}");
    }
    // Still open: a third request is served on the same connection.
    wire.send(&get("/three", "")).await;
    assert_eq!(wire.response().await.json()["path"], "/three");
    assert_eq!(backend.seen().len(), 3);
}

#[tokio::test]
async fn three_gets_written_at_once_are_answered_in_order_and_the_last_one_closes() {
    let backend = Backend::echo("app").await;
    let gw = gateway("", backend.addr).await;
    let mut wire = Wire::connect(gw.addr("web")).await;
    wire.send(
        &[
            get("/a", ""),
            get("/b?q=1", "X-Tag: b\r\n"),
            get("/c", "Connection: close\r\n"),
        ]
        .concat(),
    )
    .await;
    for path in ["/a", "/b?q=1", "/c"] {
        let answer = wire.response().await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert!(matches!(answer.delimited, Delimited::Length(_)));
        let json = answer.json();
        assert_eq!(json["path"], path);
        assert_eq!(
            json["headers"]["x-tag"].as_str().is_some(),
            path == "/b?q=1",
            "headers stay with their own request: {json}"
        );
        assert_eq!(answer.says_close(), path == "/c", "{answer:?}");
    }
    wire.assert_closed().await;
}

#[tokio::test]
async fn pipelined_request_bodies_do_not_bleed_into_the_next_request() {
    let backend = body_echo_backend().await;
    let gw = gateway("", backend.addr).await;
    let mut wire = Wire::connect(gw.addr("web")).await;
    wire.send(
        &[
            &b"POST /sized HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world"[..],
            b"POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            &get("/last", "Connection: close\r\n"),
        ]
        .concat(),
    )
    .await;
    for expected in ["hello world", "abc", ""] {
        let answer = wire.response().await;
        assert_eq!((answer.status, answer.text().as_str()), (200, expected));
    }
    wire.assert_closed().await;
    let uris: Vec<String> = backend.seen().into_iter().map(|s| s.uri).collect();
    assert_eq!(uris, ["/sized", "/chunked", "/last"]);
}

#[tokio::test]
async fn an_empty_line_before_a_pipelined_request_line_is_ignored() {
    // RFC 9112 §2.2: old clients send a CRLF after a POST body.
    let backend = body_echo_backend().await;
    let gw = gateway("", backend.addr).await;
    let mut wire = Wire::connect(gw.addr("web")).await;
    wire.send(
        &[
            &b"POST /first HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc\r\n"[..],
            &get("/next", "Connection: close\r\n"),
        ]
        .concat(),
    )
    .await;
    let first = wire.response().await;
    assert_eq!((first.status, first.text().as_str()), (200, "abc"));
    let next = wire.response().await;
    assert_eq!(next.status, 200, "{next:?}");
    wire.assert_closed().await;
    let uris: Vec<String> = backend.seen().into_iter().map(|s| s.uri).collect();
    assert_eq!(uris, ["/first", "/next"]);
}

#[tokio::test]
async fn sequential_requests_share_one_connection_until_the_client_says_close() {
    let backend = Backend::echo("app").await;
    let gw = gateway("", backend.addr).await;
    let mut wire = Wire::connect(gw.addr("web")).await;
    for i in 0..4 {
        let path = format!("/seq/{i}");
        wire.send(&get(&path, "")).await;
        let answer = wire.response().await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.json()["path"], path.as_str());
        assert!(!answer.says_close(), "request {i}: {answer:?}");
    }
    wire.send(&get("/bye", "Connection: close\r\n")).await;
    let answer = wire.response().await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("connection"), Some("close"));
    wire.assert_closed().await;
    assert_eq!(backend.seen().len(), 5);
}

#[tokio::test]
async fn an_http10_request_without_keep_alive_is_answered_and_the_connection_closed() {
    let backend = Backend::echo("app").await;
    let gw = gateway("", backend.addr).await;
    // HTTP/1.0 may leave Host out.
    let answer = one_shot(gw.addr("web"), b"GET /ten HTTP/1.0\r\n\r\n").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json()["path"], "/ten");
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(matches!(answer.delimited, Delimited::Length(_)));
}

#[tokio::test]
async fn an_http10_request_with_keep_alive_keeps_the_connection_for_a_second_request() {
    let backend = Backend::echo("app").await;
    let gw = gateway("", backend.addr).await;
    let mut wire = Wire::connect(gw.addr("web")).await;
    wire.send(b"GET /first HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await;
    let answer = wire.response().await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json()["path"], "/first");
    assert_eq!(answer.header("connection"), Some("keep-alive"));
    assert!(matches!(answer.delimited, Delimited::Length(_)));
    // A second request, this time without keep-alive: answered, then closed.
    wire.send(b"GET /second HTTP/1.0\r\n\r\n").await;
    let answer = wire.response().await;
    assert_eq!(answer.json()["path"], "/second");
    assert_eq!(answer.header("connection"), Some("close"));
    wire.assert_closed().await;
}

// ---------------------------------------------------------------------------
// Request smuggling shapes
// ---------------------------------------------------------------------------

/// Sends each request on its own connection and asserts a problem+json
/// `status`, the connection closed after it, and nothing forwarded.
async fn assert_refused(requests: &[&[u8]], status: u16) {
    let backend = Backend::echo("app").await;
    let gw = gateway("", backend.addr).await;
    for request in requests {
        let answer = one_shot(gw.addr("web"), request).await;
        assert_eq!(
            answer.status,
            status,
            "{:?} got {answer:?}",
            String::from_utf8_lossy(request)
        );
        answer.assert_problem(status);
        assert!(answer.says_close(), "{answer:?}");
    }
    assert!(backend.seen().is_empty(), "forwarded: {:?}", backend.seen());
}

#[tokio::test]
async fn transfer_encoding_with_content_length_is_refused_with_400_and_closed() {
    assert_refused(
        &[
            // Read as chunked, the body ends at `0`, and the GET would be a
            // second request; read by length it is part of the body.
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        ],
        400,
    )
    .await;
}

#[tokio::test]
async fn a_transfer_coding_other_than_chunked_is_refused_with_501_and_closed() {
    assert_refused(
        &[
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ],
        501,
    )
    .await;
}

#[tokio::test]
async fn transfer_encoding_not_ending_in_chunked_is_refused_with_400_and_closed() {
    // RFC 9112 §6.3: the body's end cannot be found; 400 and close.
    assert_refused(
        &[
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nxxxx",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n",
        ],
        400,
    )
    .await;
}

#[tokio::test]
async fn differing_content_length_values_are_refused_with_400_and_closed() {
    assert_refused(
        &[
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\nhello!",
        ],
        400,
    )
    .await;
}

#[tokio::test]
async fn a_non_numeric_content_length_is_refused_with_400_and_closed() {
    assert_refused(
        &[
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x10\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5 5\r\n\r\nhello",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: \r\n\r\n",
        ],
        400,
    )
    .await;
}

#[tokio::test]
async fn repeated_equal_content_length_values_are_one_length_forwarded_once() {
    let backend = body_echo_backend().await;
    let gw = gateway("", backend.addr).await;
    let answer = one_shot(
        gw.addr("web"),
        b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "hello"));
    let seen = backend.seen();
    let lengths: Vec<_> = seen[0].headers.get_all("content-length").iter().collect();
    assert_eq!(lengths, ["5"], "the backend got {:?}", seen[0].headers);
}

// ---------------------------------------------------------------------------
// Request bodies and Expect: 100-continue
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_chunked_body_with_extensions_and_trailers_reaches_the_backend_intact() {
    let backend = body_echo_backend().await;
    let gw = gateway("", backend.addr).await;
    let mut wire = Wire::connect(gw.addr("web")).await;
    wire.send(
        b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n\
          5;name=value\r\nhello\r\n\
          1\r\n \r\n\
          10\r\n0123456789abcdef\r\n\
          A ; ext\r\n\r\nline\r\nXY\r\n\
          0\r\nx-sum: 42\r\n\r\n",
    )
    .await;
    let answer = wire.response().await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.text(), "hello 0123456789abcdef\r\nline\r\nXY");
    assert_eq!(answer.header("x-trailers"), Some("x-sum=42"));
    // The connection is reusable after the body's last byte.
    wire.send(&get("/after", "Connection: close\r\n")).await;
    assert_eq!(wire.response().await.status, 200);
    wire.assert_closed().await;
}

#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let backend = body_echo_backend().await;
    let gw = gateway("", backend.addr).await;
    let mut wire = Wire::connect(gw.addr("web")).await;
    wire.send(
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n",
    )
    .await;
    let interim = wire.take(b"HTTP/1.1 100 Continue\r\n\r\n".len()).await;
    assert_eq!(
        String::from_utf8_lossy(&interim),
        "HTTP/1.1 100 Continue\r\n\r\n"
    );
    wire.send(b"hello world").await;
    let answer = wire.response().await;
    assert_eq!(
        (answer.status, answer.text().as_str()),
        (200, "hello world")
    );
    assert!(!answer.says_close());
    // A chunked body with the expectation, on the same connection.
    wire.send(b"POST /again HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nExpect: 100-Continue\r\nConnection: close\r\n\r\n").await;
    assert_eq!(wire.take(25).await, b"HTTP/1.1 100 Continue\r\n\r\n");
    wire.send(b"3\r\nabc\r\n0\r\n\r\n").await;
    let answer = wire.response().await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "abc"));
    wire.assert_closed().await;
    assert_eq!(backend.seen().len(), 2);
}

#[tokio::test]
async fn expect_100_continue_from_an_http10_client_is_ignored() {
    // RFC 9110 §10.1.1: an HTTP/1.0 client cannot read a 100 (Continue).
    let backend = body_echo_backend().await;
    let gw = gateway("", backend.addr).await;
    let mut wire = Wire::connect(gw.addr("web")).await;
    wire.send(b"POST /upload HTTP/1.0\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await;
    wire.assert_silent(Duration::from_millis(100)).await;
    wire.send(b"hello").await;
    let answer = wire.response().await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "hello"));
    wire.assert_closed().await;
}

#[tokio::test]
async fn expect_100_continue_on_a_route_that_answers_directly_gets_no_interim_answer() {
    let backend = Backend::echo("app").await;
    let gw = gateway("", backend.addr).await;
    let mut wire = Wire::connect(gw.addr("web")).await;
    wire.send(
        b"POST /direct HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await;
    // The final answer comes first; the body nobody read ends the connection.
    let answer = wire.response().await;
    assert_eq!(
        (answer.status, answer.text().as_str()),
        (200, "direct answer")
    );
    assert!(answer.says_close(), "{answer:?}");
    wire.assert_closed().await;
    assert!(backend.seen().is_empty());
}

#[tokio::test]
async fn expect_100_continue_with_a_declared_body_over_max_body_gets_413_and_no_interim_answer() {
    let backend = body_echo_backend().await;
    let gw = gateway("    max_body: 1KiB", backend.addr).await;
    let mut wire = Wire::connect(gw.addr("web")).await;
    wire.send(
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 4096\r\nExpect: 100-continue\r\n\r\n",
    )
    .await;
    let answer = wire.response().await;
    answer.assert_problem(413);
    assert!(answer.says_close(), "{answer:?}");
    wire.assert_closed().await;
    assert!(backend.seen().is_empty());
}

#[tokio::test]
async fn a_large_upload_over_max_body_reads_a_complete_413_and_then_the_close() {
    const UPLOAD: usize = 4 << 20;
    let backend = body_echo_backend().await;
    let gw = gateway("    max_body: 1KiB", backend.addr).await;
    let stream = TcpStream::connect(gw.addr("web")).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    // The upload goes on in its own task; it may fail once the server has
    // answered and closed.
    let writer = tokio::spawn(async move {
        let head = format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {UPLOAD}\r\n\r\n");
        write.write_all(head.as_bytes()).await?;
        let chunk = vec![b'u'; 64 * 1024];
        for _ in 0..UPLOAD / chunk.len() {
            write.write_all(&chunk).await?;
        }
        Ok::<_, std::io::Error>(())
    });
    // Read everything until the connection ends, whichever way it ends.
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let ended = loop {
        match tokio::time::timeout(READ_WAIT, read.read(&mut chunk)).await {
            Err(_) => panic!(
                "the connection was still open after {READ_WAIT:?}; got {:?}",
                String::from_utf8_lossy(&got)
            ),
            Ok(Ok(0)) => break "eof".to_string(),
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => break format!("error: {e}"),
        }
    };
    let _ = writer.await;
    let text = String::from_utf8_lossy(&got).into_owned();
    let (head, problem) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete head before the {ended}: {text:?}"));
    assert!(head.starts_with("HTTP/1.1 413 "), "{head}");
    assert!(head.contains("\r\nconnection: close"), "{head}");
    let length: usize = head
        .split("\r\n")
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no content-length in {head}"));
    assert_eq!(problem.len(), length, "the whole problem, then the {ended}");
    let v: serde_json::Value = serde_json::from_str(problem).unwrap();
    assert_eq!(v["status"], 413);
    assert!(head.contains("content-type: application/problem+json"));
    assert!(backend.seen().is_empty());
}

// ---------------------------------------------------------------------------
// HEAD, date and response framing
// ---------------------------------------------------------------------------

#[tokio::test]
async fn head_gets_the_content_length_of_get_and_no_body_bytes() {
    let backend = Backend::fixed(200, "hello world").await;
    let gw = gateway("", backend.addr).await;
    let mut wire = Wire::connect(gw.addr("web")).await;
    // If the HEAD answer carried body bytes, they would be read as the start
    // of the GET's answer.
    wire.send(
        &[
            &b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            &get("/g", "Connection: close\r\n"),
        ]
        .concat(),
    )
    .await;
    let head = wire.head_response().await;
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(head.header("content-length"), Some("11"));
    assert_eq!(head.header("transfer-encoding"), None);
    let get = wire.response().await;
    assert_eq!((get.status, get.text().as_str()), (200, "hello world"));
    assert_eq!(get.delimited, Delimited::Length(11));
    wire.assert_closed().await;
}

#[tokio::test]
async fn head_on_a_direct_response_route_gets_the_content_length_of_get() {
    let backend = Backend::echo("app").await;
    let gw = gateway("", backend.addr).await;
    let mut wire = Wire::connect(gw.addr("web")).await;
    wire.send(
        &[
            &b"HEAD /direct HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            &get("/direct", "Connection: close\r\n"),
        ]
        .concat(),
    )
    .await;
    let head = wire.head_response().await;
    let get = wire.response().await;
    assert_eq!((get.status, get.text().as_str()), (200, "direct answer"));
    wire.assert_closed().await;
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(
        head.header("content-length"),
        Some("13"),
        "HEAD {:?} vs GET {:?}",
        head.headers,
        get.headers
    );
}

#[tokio::test]
async fn every_response_has_a_date_header() {
    let backend = Backend::fixed(200, "from the backend").await;
    let gw = gateway("", backend.addr).await;
    let addr = gw.addr("web");
    // Forwarded, answered by the gateway, and refused by the parser.
    for request in [
        get("/", "Connection: close\r\n"),
        get("/direct", "Connection: close\r\n"),
        b"GET / HTTP/1.1\r\nHost x\r\n\r\n".to_vec(),
    ] {
        let answer = one_shot(addr, &request).await;
        assert_recent_date(&answer);
    }
}

#[tokio::test]
async fn a_response_of_unknown_length_is_chunked_to_an_http11_client() {
    let backend = streaming_backend().await;
    let gw = gateway("", backend.addr).await;
    let mut wire = Wire::connect(gw.addr("web")).await;
    wire.send(&get("/stream", "")).await;
    let answer = wire.response().await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.delimited, Delimited::Chunked);
    assert_eq!(answer.text(), STREAMED);
    assert_eq!(answer.header("content-length"), None);
    assert!(!answer.says_close());
    assert_recent_date(&answer);
    // The chunked end is exact: the connection carries on.
    wire.send(&get("/stream", "Connection: close\r\n")).await;
    let answer = wire.response().await;
    assert_eq!(answer.text(), STREAMED);
    wire.assert_closed().await;
}

#[tokio::test]
async fn a_response_of_unknown_length_is_close_delimited_to_an_http10_client() {
    let backend = streaming_backend().await;
    let gw = gateway("", backend.addr).await;
    // With or without keep-alive: an HTTP/1.0 client cannot read chunks,
    // so the end of the body is the end of the connection.
    for request in [
        &b"GET /stream HTTP/1.0\r\n\r\n"[..],
        b"GET /stream HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    ] {
        let mut wire = Wire::connect(gw.addr("web")).await;
        wire.send(request).await;
        let answer = wire.response().await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.delimited, Delimited::Close, "{answer:?}");
        assert_eq!(answer.text(), STREAMED);
        assert_eq!(answer.header("connection"), Some("close"), "{answer:?}");
        assert_recent_date(&answer);
    }
}

// ---------------------------------------------------------------------------
// Malformed heads and HTTP/2
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_header_line_without_a_colon_gets_400_problem_json() {
    let backend = Backend::echo("app").await;
    let gw = gateway("", backend.addr).await;
    let answer = one_shot(gw.addr("web"), b"GET / HTTP/1.1\r\nHost x\r\n\r\n").await;
    answer.assert_problem(400);
    assert!(answer.says_close());
    assert!(backend.seen().is_empty());
}

#[tokio::test]
async fn a_bare_cr_in_the_head_gets_400_problem_json() {
    let backend = Backend::echo("app").await;
    let gw = gateway("", backend.addr).await;
    for request in [
        &b"GET / HTTP/1.1\rHost: x\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: x\rX-Evil: 1\r\n\r\n",
    ] {
        let answer = one_shot(gw.addr("web"), request).await;
        answer.assert_problem(400);
    }
    assert!(backend.seen().is_empty());
}

#[tokio::test]
async fn a_bare_lf_line_end_is_read_as_crlf_and_forwarded_as_one_clean_request() {
    // RFC 9112 §2.2 lets a recipient take a lone LF as a line end (httparse
    // does); what matters is that the request is read once, one way, and
    // forwarded as a clean head: every LF-ended line is its own field.
    let backend = Backend::echo("app").await;
    let gw = gateway("", backend.addr).await;
    let answer = one_shot(
        gw.addr("web"),
        b"GET /lf HTTP/1.1\nHost: x\nX-Next: 1\nConnection: close\n\n",
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let json = answer.json();
    assert_eq!(json["path"], "/lf");
    assert_eq!(json["headers"]["x-next"], "1");
    assert_eq!(json["headers"]["host"], "x");
    assert_eq!(backend.seen().len(), 1);
}

#[tokio::test]
async fn a_head_far_over_the_cap_gets_431_without_waiting_for_its_end() {
    let backend = Backend::echo("app").await;
    let gw = gateway("    max_header_size: 8KiB", backend.addr).await;
    let mut wire = Wire::connect(gw.addr("web")).await;
    // 64 KiB of one header value and no end of the head: the parser's cap
    // (16 KiB here) is crossed long before.
    let mut request = b"GET / HTTP/1.1\r\nHost: x\r\nx-huge: ".to_vec();
    request.extend(std::iter::repeat_n(b'h', 64 * 1024));
    wire.send(&request).await;
    let answer = wire.response().await;
    answer.assert_problem(431);
    assert!(answer.says_close());
    wire.assert_closed().await;
    assert!(backend.seen().is_empty());
}

#[tokio::test]
async fn the_http2_preface_split_across_writes_is_still_served_http2() {
    // (reqwest with http2_prior_knowledge on the plain port is covered in
    // limits.rs; here the preface arrives in two pieces.)
    let backend = Backend::echo("app").await;
    let gw = gateway("", backend.addr).await;
    let mut wire = Wire::connect(gw.addr("web")).await;
    wire.send(b"PRI * HTTP/2.0\r\n").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The rest of the preface, then an empty SETTINGS frame.
    wire.send(b"\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await;
    // The server's first frame is its SETTINGS (type 4, stream 0).
    let frame = wire.take(9).await;
    assert_eq!(frame[3], 0x04, "not a SETTINGS frame: {frame:?}");
    assert_eq!(&frame[5..9], &[0, 0, 0, 0], "{frame:?}");
}

// ---------------------------------------------------------------------------
// Clients that leave
// ---------------------------------------------------------------------------

/// A raw HTTP/1.1 backend: a request for `/slow…` is never answered; it
/// counts those that arrived and the connections of those that the gateway
/// then closed. Every other request gets `200 ok`.
struct SlowBackend {
    addr: SocketAddr,
    arrived: Arc<AtomicUsize>,
    abandoned: Arc<AtomicUsize>,
}

impl SlowBackend {
    async fn start() -> SlowBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let arrived = Arc::new(AtomicUsize::new(0));
        let abandoned = Arc::new(AtomicUsize::new(0));
        let (a, b) = (arrived.clone(), abandoned.clone());
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let (arrived, abandoned) = (a.clone(), b.clone());
                tokio::spawn(async move {
                    let mut wire = Wire {
                        stream: s,
                        buf: Vec::new(),
                    };
                    loop {
                        let mut head = Vec::new();
                        while !head.ends_with(b"\r\n\r\n") {
                            if wire.buf.is_empty() && !wire.fill().await {
                                return;
                            }
                            head.push(wire.buf.remove(0));
                        }
                        if head.starts_with(b"GET /slow") || head.starts_with(b"POST /slow") {
                            arrived.fetch_add(1, Ordering::SeqCst);
                            // Never answer; note when the gateway gives up.
                            let mut sink = [0u8; 1024];
                            while let Ok(n) = wire.stream.read(&mut sink).await {
                                if n == 0 {
                                    break;
                                }
                            }
                            abandoned.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if wire.stream.write_all(ok).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        SlowBackend {
            addr,
            arrived,
            abandoned,
        }
    }
}

/// Sends `request` (for `/slow…`), waits until the backend has it, closes
/// the client connection, and asserts that the gateway gives up the
/// upstream request and still serves a new connection.
async fn client_leaves_while_waiting(request: &[u8]) {
    let backend = SlowBackend::start().await;
    let gw = gateway("", backend.addr).await;
    let mut wire = Wire::connect(gw.addr("web")).await;
    wire.send(request).await;
    assert!(
        eventually(Duration::from_secs(3), || backend
            .arrived
            .load(Ordering::SeqCst)
            == 1)
        .await,
        "the request never reached the backend"
    );
    wire.assert_silent(Duration::from_millis(50)).await;
    drop(wire);
    assert!(
        eventually(Duration::from_secs(1), || backend
            .abandoned
            .load(Ordering::SeqCst)
            == 1)
        .await,
        "the gateway kept waiting on the backend after its client left"
    );
    let answer = one_shot(gw.addr("web"), &get("/fast", "Connection: close\r\n")).await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "ok"));
}

#[tokio::test]
async fn a_client_that_leaves_while_its_get_waits_on_a_slow_backend_is_dropped() {
    client_leaves_while_waiting(&get("/slow", "")).await;
}

#[tokio::test]
async fn a_client_that_leaves_after_its_whole_post_body_is_dropped_too() {
    client_leaves_while_waiting(
        b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
}

// ---------------------------------------------------------------------------
// Request targets
// ---------------------------------------------------------------------------

#[tokio::test]
async fn absolute_asterisk_and_authority_form_targets_are_served_or_refused_cleanly() {
    let backend = Backend::echo("app").await;
    let gw = gateway("", backend.addr).await;
    // Absolute form: routed by the URI's authority and path.
    let answer = one_shot(
        gw.addr("web"),
        b"GET http://x/direct HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    // The asterisk form reaches the route like any other target.
    let answer = one_shot(
        gw.addr("web"),
        b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    // CONNECT (authority form) never opens a tunnel and is not forwarded.
    let seen_before = backend.seen().len();
    let answer = one_shot(
        gw.addr("web"),
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nConnection: close\r\n\r\n",
    )
    .await;
    answer.assert_problem(501);
    assert_eq!(backend.seen().len(), seen_before, "CONNECT was forwarded");
    // The gateway still serves.
    let answer = one_shot(gw.addr("web"), &get("/direct", "Connection: close\r\n")).await;
    assert_eq!(answer.status, 200, "{answer:?}");
}

#[tokio::test]
async fn a_malformed_chunked_request_body_is_the_clients_fault_400_not_502() {
    let backend = body_echo_backend().await;
    let gw = gateway("", backend.addr).await;
    let answer = one_shot(
        gw.addr("web"),
        b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
    )
    .await;
    answer.assert_problem(400);
}
