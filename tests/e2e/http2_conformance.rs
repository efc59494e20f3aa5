//! RFC 9113 holds whatever the route does: malformed requests and frames on
//! closed streams are stream or connection errors on a route that answers
//! itself (`respond`) as on one that forwards, even when the offending frame
//! comes after the answer; the h2c preface on a shared HTTP/1.1 port is
//! checked like a pure HTTP/2 port's; a client's unsolicited PING ACKs are
//! ignored without a log line. Frames are written by hand.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;

const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;

const PROTOCOL_ERROR: u32 = 0x1;
const STREAM_CLOSED: u32 = 0x5;
const CANCEL: u32 = 0x8;

/// One frame: type, flags, stream, payload.
type Frame = (u8, u8, u32, Vec<u8>);

/// A hand-driven HTTP/2 client connection, with the frames read so far.
struct Raw {
    io: TcpStream,
    seen: Vec<Frame>,
}

impl Raw {
    /// Connects, sends the preface and empty SETTINGS.
    async fn connect(addr: std::net::SocketAddr) -> Raw {
        let mut io = TcpStream::connect(addr).await.unwrap();
        io.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let mut raw = Raw {
            io,
            seen: Vec::new(),
        };
        raw.send(SETTINGS, 0, 0, &[]).await;
        raw
    }

    async fn send(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let len = (payload.len() as u32).to_be_bytes();
        let mut out = vec![len[1], len[2], len[3], kind, flags];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        // The server may already have closed: later frames then fail to
        // send, and what it said before is what the test reads.
        let _ = self.io.write_all(&out).await;
    }

    /// HEADERS with `fields` (each a literal without indexing, new name).
    async fn headers(&mut self, stream: u32, fields: &[(&str, &str)], flags: u8) {
        let mut block = Vec::new();
        for (name, value) in fields {
            assert!(name.len() < 127 && value.len() < 127);
            block.push(0x00);
            block.push(name.len() as u8);
            block.extend_from_slice(name.as_bytes());
            block.push(value.len() as u8);
            block.extend_from_slice(value.as_bytes());
        }
        self.send(HEADERS, flags | END_HEADERS, stream, &block)
            .await;
    }

    /// A request head for `method path` (no END_STREAM unless `flags` says).
    async fn request(
        &mut self,
        stream: u32,
        method: &str,
        path: &str,
        extra: &[(&str, &str)],
        flags: u8,
    ) {
        let mut fields = vec![
            (":method", method),
            (":scheme", "http"),
            (":path", path),
            (":authority", "localhost"),
        ];
        fields.extend_from_slice(extra);
        self.headers(stream, &fields, flags).await;
    }

    async fn read(&mut self) -> Option<Frame> {
        let mut head = [0u8; 9];
        self.io.read_exact(&mut head).await.ok()?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        self.io.read_exact(&mut payload).await.ok()?;
        Some((head[3], head[4], stream, payload))
    }

    /// Reads for a moment: long enough for a route that answers at once
    /// to have answered (and the server to be done with the stream, if it
    /// does not read the body).
    async fn pause(&mut self) {
        let more = self.frames(Duration::from_millis(150)).await;
        self.seen = more;
    }

    /// Every frame the server sent so far and sends within `wait`
    /// (answering its SETTINGS and PINGs), until it closes.
    async fn frames(&mut self, wait: Duration) -> Vec<Frame> {
        let mut seen = std::mem::take(&mut self.seen);
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Some(frame)) = tokio::time::timeout_at(deadline, self.read()).await {
            match (frame.0, frame.1 & ACK) {
                (SETTINGS, 0) => self.send(SETTINGS, ACK, 0, &[]).await,
                (PING, 0) => {
                    let payload = frame.3.clone();
                    self.send(PING, ACK, 0, &payload).await;
                }
                _ => {}
            }
            seen.push(frame);
        }
        seen
    }
}

/// The error code of the first RST_STREAM on `stream` or GOAWAY in `frames`.
fn error_for(frames: &[Frame], stream: u32) -> Option<(u8, u32)> {
    frames.iter().find_map(|(kind, _, s, payload)| match *kind {
        RST_STREAM if *s == stream => Some((RST_STREAM, code(&payload[..4]))),
        GOAWAY => Some((GOAWAY, code(&payload[4..8]))),
        _ => None,
    })
}

fn code(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// A gateway on an h2c-capable listener whose `/respond` answers itself
/// and whose other paths go to a backend that reads the request body.
async fn gateway_and_backend() -> (Backend, TestGateway) {
    use http_body_util::BodyExt;
    let backend = Backend::start(|req: http::Request<hyper::body::Incoming>| async move {
        let _ = req.into_body().collect().await;
        http::Response::new(body("read"))
    })
    .await;
    let gw = TestGateway::in_front_of_with_routes(
        backend.addr,
        "",
        "  - { name: own, match: { path: /respond }, respond: { body: mine } }\n",
    )
    .await;
    (backend, gw)
}

/// Runs `case` on a route that answers itself and on one that forwards,
/// and asserts a stream or connection error on stream 1 with one of the
/// `expected` (frame type, error code) pairs.
async fn on_both_kinds_of_route<F, Fut>(case: F, expected: &[(u8, u32)])
where
    F: Fn(Raw, &'static str) -> Fut,
    Fut: std::future::Future<Output = Vec<Frame>>,
{
    let (_backend, gw) = gateway_and_backend().await;
    for path in ["/respond", "/forwarded"] {
        let raw = Raw::connect(gw.addr("web")).await;
        let frames = case(raw, path).await;
        let error = error_for(&frames, 1);
        assert!(
            error.is_some_and(|e| expected.contains(&e)),
            "{path}: expected one of {expected:x?}, got {error:?} in {:?}",
            frames.iter().map(|f| (f.0, f.1, f.2)).collect::<Vec<_>>()
        );
    }
}

#[tokio::test]
async fn a_body_longer_than_its_content_length_is_a_protocol_error_on_every_route() {
    on_both_kinds_of_route(
        |mut raw, path| async move {
            raw.request(1, "POST", path, &[("content-length", "1")], 0)
                .await;
            raw.pause().await;
            raw.send(DATA, END_STREAM, 1, b"ab").await;
            raw.frames(Duration::from_secs(1)).await
        },
        &[(RST_STREAM, PROTOCOL_ERROR), (GOAWAY, PROTOCOL_ERROR)],
    )
    .await;
}

#[tokio::test]
async fn a_body_shorter_than_its_content_length_is_a_protocol_error_on_every_route() {
    on_both_kinds_of_route(
        |mut raw, path| async move {
            raw.request(1, "POST", path, &[("content-length", "5")], 0)
                .await;
            raw.pause().await;
            raw.send(DATA, END_STREAM, 1, b"ab").await;
            raw.frames(Duration::from_secs(1)).await
        },
        &[(RST_STREAM, PROTOCOL_ERROR), (GOAWAY, PROTOCOL_ERROR)],
    )
    .await;
}

#[tokio::test]
async fn a_second_headers_frame_without_end_stream_is_a_protocol_error_on_every_route() {
    on_both_kinds_of_route(
        |mut raw, path| async move {
            raw.request(1, "POST", path, &[], 0).await;
            raw.pause().await;
            raw.send(DATA, 0, 1, b"ab").await;
            raw.headers(1, &[("x-trailer", "1")], 0).await;
            raw.frames(Duration::from_secs(1)).await
        },
        &[(RST_STREAM, PROTOCOL_ERROR), (GOAWAY, PROTOCOL_ERROR)],
    )
    .await;
}

#[tokio::test]
async fn data_after_the_client_reset_its_stream_is_a_stream_closed_error_on_every_route() {
    on_both_kinds_of_route(
        |mut raw, path| async move {
            raw.request(1, "POST", path, &[], 0).await;
            raw.pause().await;
            raw.send(DATA, 0, 1, b"ab").await;
            raw.send(RST_STREAM, 0, 1, &CANCEL.to_be_bytes()).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            raw.send(DATA, 0, 1, b"cd").await;
            raw.frames(Duration::from_secs(1)).await
        },
        &[(RST_STREAM, STREAM_CLOSED), (GOAWAY, STREAM_CLOSED)],
    )
    .await;
}

/// RFC 9113 §5.1 names STREAM_CLOSED; the h2 crate makes HEADERS on a
/// closed stream a connection error (GOAWAY, PROTOCOL_ERROR), and the
/// gateway cannot see the frame to say otherwise. Either way the frame is
/// an error, on both kinds of route alike.
#[tokio::test]
async fn headers_after_the_client_reset_its_stream_is_an_error_on_every_route() {
    on_both_kinds_of_route(
        |mut raw, path| async move {
            raw.request(1, "POST", path, &[], 0).await;
            raw.pause().await;
            raw.send(RST_STREAM, 0, 1, &CANCEL.to_be_bytes()).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            raw.headers(1, &[("x-trailer", "1")], END_STREAM).await;
            raw.frames(Duration::from_secs(1)).await
        },
        &[
            (RST_STREAM, STREAM_CLOSED),
            (GOAWAY, STREAM_CLOSED),
            (GOAWAY, PROTOCOL_ERROR),
        ],
    )
    .await;
}

#[tokio::test]
async fn a_broken_preface_on_the_shared_http1_and_h2c_port_gets_goaway_protocol_error() {
    let (_backend, gw) = gateway_and_backend().await;
    let mut io = TcpStream::connect(gw.addr("web")).await.unwrap();
    io.write_all(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Raw {
        io,
        seen: Vec::new(),
    };
    let frames = raw.frames(Duration::from_secs(2)).await;
    assert_eq!(
        error_for(&frames, 0),
        Some((GOAWAY, PROTOCOL_ERROR)),
        "{frames:?}"
    );
}

#[tokio::test]
async fn unsolicited_ping_acks_are_ignored_without_a_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("portcullis.yaml");
    std::fs::write(
        &config,
        format!(
            "listeners:\n  - {{ name: web, address: \"127.0.0.1:{port}\" }}\n\
             routes:\n  - {{ name: own, respond: {{ body: mine }} }}\n"
        ),
    )
    .unwrap();
    let gw = GatewayProcess::spawn(&config);
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_accepting(addr, Duration::from_secs(10)).await;
    for _ in 0..3 {
        let mut raw = Raw::connect(addr).await;
        for i in 0..5 {
            raw.send(PING, ACK, 0, &[i; 8]).await;
        }
        raw.request(1, "GET", "/", &[], END_STREAM).await;
        let frames = raw.frames(Duration::from_millis(300)).await;
        assert_eq!(error_for(&frames, 1), None, "{frames:?}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = gw.stderr();
    assert!(!log.to_lowercase().contains("ping"), "{log}");
}

#[tokio::test]
async fn an_unsolicited_ping_ack_is_ignored() {
    let (_backend, gw) = gateway_and_backend().await;
    let mut raw = Raw::connect(gw.addr("web")).await;
    raw.send(PING, ACK, 0, &[7; 8]).await;
    raw.request(1, "GET", "/respond", &[], END_STREAM).await;
    let frames = raw.frames(Duration::from_secs(1)).await;
    assert_eq!(error_for(&frames, 1), None, "{frames:?}");
    assert!(
        frames.iter().any(|(kind, flags, stream, _)| *kind == DATA
            && *stream == 1
            && flags & END_STREAM != 0),
        "no answer after the PING ACK: {frames:?}"
    );
}
