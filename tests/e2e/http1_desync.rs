//! HTTP/1 desynchronisation, case by case (RFC 9112 to the letter, on both
//! sides of the gateway). Every framing shape that two parsers could read
//! two ways is either refused (400, or 501 for a transfer coding the
//! gateway does not implement, and the connection closed) or normalised so
//! that the backend can read the request only one way.
//!
//! Client side: a raw client sends exact bytes to the gateway and a raw
//! backend records the exact bytes it receives. Upstream side: a raw
//! backend answers with a malformed response; the client gets 502 and the
//! connection the answer came on is never reused (the next request opens a
//! new one).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::*;

/// How long a client or the backend waits for the other side.
const WAIT: Duration = Duration::from_secs(5);

/// The fields the gateway adds to every forwarded request (the request id
/// masked), written where `{fwd}` stands in an expected request.
const FORWARDED: &str = "x-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\nx-forwarded-host: x\r\nx-request-id: *\r\n";

/// What the raw backend answers by default.
const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

// ---------------------------------------------------------------------------
// A raw backend and a raw client
// ---------------------------------------------------------------------------

/// One connection the backend accepted.
#[derive(Default)]
struct Recorded {
    bytes: Vec<u8>,
    /// The gateway closed it.
    closed: bool,
}

/// A backend that records the exact bytes of every connection and answers
/// each complete request with the next of its scripted answers (the last
/// one repeats). It reads requests as the gateway writes them, which is
/// always the clean form: `content-length` or `transfer-encoding: chunked`.
struct RawBackend {
    addr: SocketAddr,
    connections: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RawBackend {
    async fn start(answers: &'static [&'static [u8]]) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let answered = Arc::new(AtomicUsize::new(0));
        let record = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let index = {
                    let mut all = record.lock().unwrap();
                    all.push(Recorded::default());
                    all.len() - 1
                };
                let (record, answered) = (record.clone(), answered.clone());
                tokio::spawn(serve_raw(stream, index, record, answered, answers));
            }
        });
        RawBackend {
            addr,
            connections,
            task,
        }
    }

    /// How many connections the gateway opened.
    fn connections(&self) -> usize {
        self.connections.lock().unwrap().len()
    }

    /// Everything received, connection after connection, request ids masked.
    fn received(&self) -> String {
        let all = self.connections.lock().unwrap();
        let bytes: Vec<u8> = all.iter().flat_map(|c| c.bytes.clone()).collect();
        mask_request_ids(&String::from_utf8_lossy(&bytes))
    }

    /// Waits until the gateway has closed every connection it opened.
    async fn all_closed(&self) -> bool {
        eventually(WAIT, || {
            self.connections.lock().unwrap().iter().all(|c| c.closed)
        })
        .await
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One backend connection: record, and answer each complete request.
async fn serve_raw(
    mut stream: TcpStream,
    index: usize,
    record: Arc<Mutex<Vec<Recorded>>>,
    answered: Arc<AtomicUsize>,
    answers: &'static [&'static [u8]],
) {
    let mut pending = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            record.lock().unwrap()[index].closed = true;
            return;
        }
        record.lock().unwrap()[index]
            .bytes
            .extend_from_slice(&chunk[..n]);
        pending.extend_from_slice(&chunk[..n]);
        while let Some(used) = request_end(&pending) {
            pending.drain(..used);
            let i = answered.fetch_add(1, Ordering::Relaxed);
            let answer = answers[i.min(answers.len() - 1)];
            if stream.write_all(answer).await.is_err() {
                return;
            }
        }
    }
}

/// The length of the complete request at the front of `buf`, if there is
/// one. Only the gateway's own (clean) framing needs reading here.
fn request_end(buf: &[u8]) -> Option<usize> {
    let head = find(buf, b"\r\n\r\n")? + 4;
    let text = String::from_utf8_lossy(&buf[..head]).to_ascii_lowercase();
    if text.contains("\r\ntransfer-encoding: chunked\r\n") {
        let mut at = head;
        loop {
            let line = find(&buf[at..], b"\r\n")?;
            let size =
                usize::from_str_radix(std::str::from_utf8(&buf[at..at + line]).ok()?, 16).ok()?;
            at += line + 2;
            if size == 0 {
                let end = find(&buf[at..], b"\r\n\r\n").map(|e| e + 4);
                let end = if buf[at..].starts_with(b"\r\n") {
                    Some(2)
                } else {
                    end
                };
                return end.map(|e| at + e);
            }
            at += size + 2;
            if buf.len() < at {
                return None;
            }
        }
    }
    let length = text
        .split("\r\n")
        .find_map(|l| l.strip_prefix("content-length: "))
        .map_or(0, |v| v.parse::<usize>().unwrap_or(0));
    (buf.len() >= head + length).then_some(head + length)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Replaces every `x-request-id` value with `*`.
fn mask_request_ids(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("x-request-id: ") {
        let value = at + "x-request-id: ".len();
        out.push_str(&rest[..value]);
        out.push('*');
        rest = &rest[value..];
        rest = &rest[rest.find("\r\n").unwrap_or(rest.len())..];
    }
    out.push_str(rest);
    out
}

/// What the client read on one connection until the gateway closed it.
struct Reply {
    text: String,
    /// The gateway closed the connection (rather than the wait running out).
    closed: bool,
}

impl Reply {
    /// The status code of the first response, 0 when there was none.
    fn status(&self) -> u16 {
        self.statuses().first().copied().unwrap_or(0)
    }

    /// The body of the only response, de-chunked when it came chunked.
    fn body(&self) -> String {
        let Some((head, mut rest)) = self.text.split_once("\r\n\r\n") else {
            return String::new();
        };
        if !head.contains("\r\ntransfer-encoding: chunked\r\n") {
            return rest.to_string();
        }
        let mut body = String::new();
        while let Some((size, after)) = rest.split_once("\r\n") {
            let size = usize::from_str_radix(size, 16).unwrap_or(0);
            if size == 0 || after.len() < size {
                break;
            }
            body.push_str(&after[..size]);
            rest = after[size..].trim_start_matches("\r\n");
        }
        body
    }

    /// The status codes of every response read.
    fn statuses(&self) -> Vec<u16> {
        let mut codes = Vec::new();
        let mut rest = self.text.as_str();
        while let Some(at) = rest.find("HTTP/1.1 ") {
            rest = &rest[at + 9..];
            if let Some(code) = rest.get(..3).and_then(|c| c.parse().ok()) {
                codes.push(code);
            }
        }
        codes
    }
}

/// Sends `request` on a new connection and reads until the gateway closes it.
async fn send(addr: SocketAddr, request: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut bytes = Vec::new();
    let closed = tokio::time::timeout(WAIT, async {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .is_ok();
    Reply {
        text: String::from_utf8_lossy(&bytes).into_owned(),
        closed,
    }
}

// ---------------------------------------------------------------------------
// Client side: requests
// ---------------------------------------------------------------------------

/// What the gateway does with a request.
#[derive(Clone, Copy, Debug)]
enum OnRequest {
    /// Answers this status, closes, and forwards nothing.
    Refused(u16),
    /// Forwards it: the backend receives exactly these bytes (`{fwd}` for
    /// the fields the gateway adds) and the client gets the backend's 200s.
    Forwarded(&'static str),
    /// The body breaks its framing after the head went upstream: the
    /// client gets 400 and a closed connection; the backend receives a
    /// prefix of these bytes (the head at least, never a complete body)
    /// and then the close.
    CutShort(&'static str),
}
use OnRequest::*;

/// One request per line: the case, the bytes sent, what happens.
const REQUESTS: &[(&str, &[u8], OnRequest)] = &[
    // Content-Length and Transfer-Encoding together.
    ("content-length then transfer-encoding", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n", Refused(400)),
    ("transfer-encoding then content-length", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n", Refused(400)),
    // Content-Length repeated.
    ("two different content-lengths", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", Refused(400)),
    ("one content-length listing two values", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\nhello!", Refused(400)),
    ("two equal content-lengths", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello", Forwarded("POST / HTTP/1.1\r\nhost: x\r\n{fwd}content-length: 5\r\n\r\nhello")),
    ("one content-length listing one value twice", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\nConnection: close\r\n\r\nhello", Forwarded("POST / HTTP/1.1\r\nhost: x\r\n{fwd}content-length: 5\r\n\r\nhello")),
    ("content-length with leading zeros", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 005\r\nConnection: close\r\n\r\nhello", Forwarded("POST / HTTP/1.1\r\nhost: x\r\n{fwd}content-length: 5\r\n\r\nhello")),
    ("content-length with a sign", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello", Refused(400)),
    ("negative content-length", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", Refused(400)),
    ("content-length past 64 bits", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 18446744073709551616\r\n\r\n", Refused(400)),
    // Transfer-Encoding variants.
    ("transfer-encoding: chunked, identity", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", Refused(400)),
    ("transfer-encoding: identity, chunked", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n", Refused(501)),
    ("transfer-encoding: xchunked", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", Refused(400)),
    ("transfer-encoding: chunked twice", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", Refused(400)),
    ("transfer-encoding: chunked, chunked", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", Refused(400)),
    ("empty transfer-encoding", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: \r\n\r\n0\r\n\r\n", Refused(400)),
    ("transfer-encoding continued by obs-fold", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", Refused(400)),
    ("another field continued by obs-fold", b"POST / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", Refused(400)),
    ("transfer-encoding in upper case", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: CHUNKED\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Forwarded("POST / HTTP/1.1\r\nhost: x\r\n{fwd}transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")),
    ("transfer-encoding with leading and trailing spaces", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:    chunked   \r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Forwarded("POST / HTTP/1.1\r\nhost: x\r\n{fwd}transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")),
    ("transfer-encoding with tabs", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\tchunked\t\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Forwarded("POST / HTTP/1.1\r\nhost: x\r\n{fwd}transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")),
    ("transfer-encoding with an empty list element", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: , chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Forwarded("POST / HTTP/1.1\r\nhost: x\r\n{fwd}transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")),
    ("http/1.0 with transfer-encoding", b"POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Refused(400)),
    ("http/1.0 with transfer-encoding and content-length", b"POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\nhello", Refused(400)),
    // Line endings and bytes in the head.
    ("bare LF line ends in the head", b"POST / HTTP/1.1\nHost: x\nContent-Length: 5\nConnection: close\n\nhello", Forwarded("POST / HTTP/1.1\r\nhost: x\r\n{fwd}content-length: 5\r\n\r\nhello")),
    ("bare CR line end in the head", b"GET / HTTP/1.1\r\nHost: x\rTransfer-Encoding: chunked\r\n\r\n", Refused(400)),
    ("NUL in a header value", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n", Refused(400)),
    ("CR in a header value", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n", Refused(400)),
    ("LF in a header value", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\nb\r\n\r\n", Refused(400)),
    ("space before the colon", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\nhello", Refused(400)),
    ("tab before the colon", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length\t: 5\r\n\r\nhello", Refused(400)),
    // Chunk-size lines.
    ("chunk sizes with leading zeros", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0005\r\nhello\r\n000\r\n\r\n", Forwarded("POST / HTTP/1.1\r\nhost: x\r\n{fwd}transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")),
    ("chunk size in upper-case hex", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n", Forwarded("POST / HTTP/1.1\r\nhost: x\r\n{fwd}transfer-encoding: chunked\r\n\r\na\r\n0123456789\r\n0\r\n\r\n")),
    ("chunk extensions (token, quoted string, spaces)", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5 ; a=b;c=\"d;\\\"e\" ;f\r\nhello\r\n0;g=h\r\n\r\n", Forwarded("POST / HTTP/1.1\r\nhost: x\r\n{fwd}transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")),
    ("chunk size with a plus sign", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n", CutShort("POST / HTTP/1.1\r\nhost: x\r\n{fwd}transfer-encoding: chunked\r\n\r\n")),
    ("chunk size with a minus sign", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n", CutShort("POST / HTTP/1.1\r\nhost: x\r\n{fwd}transfer-encoding: chunked\r\n\r\n")),
    ("chunk size with 0x", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n", CutShort("POST / HTTP/1.1\r\nhost: x\r\n{fwd}transfer-encoding: chunked\r\n\r\n")),
    ("chunk size after a space", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n 5\r\nhello\r\n0\r\n\r\n", CutShort("POST / HTTP/1.1\r\nhost: x\r\n{fwd}transfer-encoding: chunked\r\n\r\n")),
    ("chunk size past 64 bits", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n0\r\n\r\n", CutShort("POST / HTTP/1.1\r\nhost: x\r\n{fwd}transfer-encoding: chunked\r\n\r\n")),
    ("bare LF after the chunk size", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n", CutShort("POST / HTTP/1.1\r\nhost: x\r\n{fwd}transfer-encoding: chunked\r\n\r\n")),
    ("bare LF after the chunk size, CRLF later", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n", CutShort("POST / HTTP/1.1\r\nhost: x\r\n{fwd}transfer-encoding: chunked\r\n\r\n")),
    ("bare CR after the chunk size", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\rhello\r\n0\r\n\r\n", CutShort("POST / HTTP/1.1\r\nhost: x\r\n{fwd}transfer-encoding: chunked\r\n\r\n")),
    ("bare LF inside a chunk extension", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;a\nb\r\nhello\r\n0\r\n\r\n", CutShort("POST / HTTP/1.1\r\nhost: x\r\n{fwd}transfer-encoding: chunked\r\n\r\n")),
    ("chunk extension without a name", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;=b\r\nhello\r\n0\r\n\r\n", CutShort("POST / HTTP/1.1\r\nhost: x\r\n{fwd}transfer-encoding: chunked\r\n\r\n")),
    ("chunk extension with an empty value", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;a=\r\nhello\r\n0\r\n\r\n", CutShort("POST / HTTP/1.1\r\nhost: x\r\n{fwd}transfer-encoding: chunked\r\n\r\n")),
    ("chunk extension value with a space", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b c\r\nhello\r\n0\r\n\r\n", CutShort("POST / HTTP/1.1\r\nhost: x\r\n{fwd}transfer-encoding: chunked\r\n\r\n")),
    ("chunk extension with an open quote", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;a=\"b\r\nhello\r\n0\r\n\r\n", CutShort("POST / HTTP/1.1\r\nhost: x\r\n{fwd}transfer-encoding: chunked\r\n\r\n")),
    // Chunk data.
    ("chunk data shorter than its size", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel\r\n0\r\n\r\n", CutShort("POST / HTTP/1.1\r\nhost: x\r\n{fwd}transfer-encoding: chunked\r\n\r\n5\r\nhel\r\n\r\n")),
    ("chunk data longer than its size", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello world\r\n0\r\n\r\n", CutShort("POST / HTTP/1.1\r\nhost: x\r\n{fwd}transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")),
    ("bare LF after chunk data", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\n0\r\n\r\n", CutShort("POST / HTTP/1.1\r\nhost: x\r\n{fwd}transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")),
    ("bare LF after the last chunk", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\n\n", CutShort("POST / HTTP/1.1\r\nhost: x\r\n{fwd}transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")),
    ("bare LF ending the trailer section", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\n", CutShort("POST / HTTP/1.1\r\nhost: x\r\n{fwd}transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")),
    // Trailers.
    ("bare LF after a trailer field", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-a: 1\n\r\n", CutShort("POST / HTTP/1.1\r\nhost: x\r\n{fwd}transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")),
    ("NUL in a trailer value", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-a: a\0b\r\n\r\n", CutShort("POST / HTTP/1.1\r\nhost: x\r\n{fwd}transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")),
    ("trailer line without a colon", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-a 1\r\n\r\n", CutShort("POST / HTTP/1.1\r\nhost: x\r\n{fwd}transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")),
    ("trailers with forbidden fields", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\nContent-Length: 5\r\nX-Sum: 42\r\nTransfer-Encoding: chunked\r\nHost: evil\r\nAuthorization: Basic eA==\r\nCookie: a=b\r\nSet-Cookie: a=b\r\nContent-Type: text/evil\r\nX-Forwarded-For: 10.0.0.1\r\nTE: trailers\r\nTrailer: x-sum\r\nCache-Control: no-cache\r\nContent-Encoding: gzip\r\nX-Other: 1\r\n\r\n", Forwarded("POST / HTTP/1.1\r\nhost: x\r\n{fwd}transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-sum: 42\r\nx-other: 1\r\n\r\n")),
    // Pipelining.
    ("a request pipelined behind a content-length body", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", Forwarded("POST / HTTP/1.1\r\nhost: x\r\n{fwd}content-length: 5\r\n\r\nhelloGET /next HTTP/1.1\r\nhost: x\r\n{fwd}\r\n")),
    ("a request pipelined behind a chunked body", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", Forwarded("POST / HTTP/1.1\r\nhost: x\r\n{fwd}transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /next HTTP/1.1\r\nhost: x\r\n{fwd}\r\n")),
    ("a request inside a body stays body", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 35\r\nConnection: close\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n", Forwarded("POST / HTTP/1.1\r\nhost: x\r\n{fwd}content-length: 35\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")),
];

/// Runs one request case; returns what went wrong, if anything.
async fn request_case(name: &str, bytes: &[u8], expect: OnRequest) -> Option<String> {
    let backend = RawBackend::start(&[OK]).await;
    let gw = TestGateway::in_front_of(backend.addr, "").await;
    let reply = send(gw.addr("web"), bytes).await;
    let fail = |what: String| {
        Some(format!(
            "{name}: {what}\n  client got {:?}\n  backend got {:?}",
            reply.text,
            backend.received()
        ))
    };
    if !reply.closed {
        return fail("the connection was not closed".into());
    }
    match expect {
        Refused(status) => {
            if reply.statuses() != [status] || !reply.text.contains("\r\nconnection: close\r\n") {
                return fail(format!("expected one {status} saying close"));
            }
            if backend.connections() != 0 {
                return fail("something was forwarded".into());
            }
        }
        Forwarded(expected) => {
            let requests = expected.matches("{fwd}").count();
            let expected = expected.replace("{fwd}", FORWARDED);
            if reply.statuses() != vec![200; requests] {
                return fail(format!("expected {requests} × 200"));
            }
            if backend.received() != expected {
                return fail(format!("expected the backend to get {expected:?}"));
            }
        }
        CutShort(most) => {
            let most = most.replace("{fwd}", FORWARDED);
            let head = &most[..most.find("\r\n\r\n").unwrap_or(0) + 4];
            if reply.statuses() != [400] {
                return fail("expected one 400".into());
            }
            if !backend.all_closed().await {
                return fail("the upstream connection stayed open".into());
            }
            let got = backend.received();
            if !(got.starts_with(head) && most.starts_with(&got)) {
                return fail(format!(
                    "expected the backend to get a prefix of {most:?} with the head"
                ));
            }
        }
    }
    None
}

#[tokio::test]
async fn every_request_desync_shape_is_refused_or_normalised() {
    let mut failures = Vec::new();
    for (name, bytes, expect) in REQUESTS {
        if let Some(failure) = request_case(name, bytes, *expect).await {
            failures.push(failure);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        REQUESTS.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------
// Upstream side: responses
// ---------------------------------------------------------------------------

/// What the client gets for an upstream's response.
#[derive(Clone, Copy, Debug)]
enum OnResponse {
    /// 502, and the connection the answer came on is not reused.
    BadGateway,
    /// Relayed with this body (normalised); `reused` says whether the
    /// connection went back to the pool.
    Relayed { body: &'static str, reused: bool },
}
use OnResponse::*;

/// One response per line: the case, the bytes the backend answers, what the client gets.
const RESPONSES: &[(&str, &[u8], OnResponse)] = &[
    ("a well-formed response (control)", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", Relayed { body: "ok", reused: true }),
    ("content-length then transfer-encoding", b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", BadGateway),
    ("transfer-encoding then content-length", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n2\r\nok\r\n0\r\n\r\n", BadGateway),
    ("two different content-lengths", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok!", BadGateway),
    ("two equal content-lengths", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nok", Relayed { body: "ok", reused: true }),
    ("content-length past 64 bits", b"HTTP/1.1 200 OK\r\ncontent-length: 18446744073709551616\r\n\r\nok", BadGateway),
    ("transfer-encoding: chunked, identity", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, identity\r\n\r\n2\r\nok\r\n0\r\n\r\n", BadGateway),
    ("transfer-encoding: identity, chunked", b"HTTP/1.1 200 OK\r\ntransfer-encoding: identity, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", BadGateway),
    ("transfer-encoding: xchunked", b"HTTP/1.1 200 OK\r\ntransfer-encoding: xchunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", BadGateway),
    ("transfer-encoding: chunked twice", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", BadGateway),
    ("transfer-encoding continued by obs-fold", b"HTTP/1.1 200 OK\r\ntransfer-encoding:\r\n chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", BadGateway),
    ("transfer-encoding in upper case", b"HTTP/1.1 200 OK\r\ntransfer-encoding: CHUNKED\r\n\r\n2\r\nok\r\n0\r\n\r\n", Relayed { body: "ok", reused: true }),
    ("transfer-encoding with spaces and tabs", b"HTTP/1.1 200 OK\r\ntransfer-encoding: \t chunked \t\r\n\r\n2\r\nok\r\n0\r\n\r\n", Relayed { body: "ok", reused: true }),
    ("http/1.0 with transfer-encoding", b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\nconnection: keep-alive\r\n\r\n2\r\nok\r\n0\r\n\r\n", BadGateway),
    ("bare LF line ends in the head", b"HTTP/1.1 200 OK\ncontent-length: 2\n\nok", Relayed { body: "ok", reused: true }),
    ("bare CR line end in the head", b"HTTP/1.1 200 OK\r\nx-a: 1\rcontent-length: 2\r\n\r\nok", BadGateway),
    ("NUL in a header value", b"HTTP/1.1 200 OK\r\nx-a: a\0b\r\ncontent-length: 2\r\n\r\nok", BadGateway),
    ("space before the colon", b"HTTP/1.1 200 OK\r\ncontent-length : 2\r\n\r\nok", BadGateway),
    ("chunk sizes with leading zeros", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n002\r\nok\r\n00\r\n\r\n", Relayed { body: "ok", reused: true }),
    ("chunk extensions", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2;a=\"b\"\r\nok\r\n0;c\r\n\r\n", Relayed { body: "ok", reused: true }),
    ("chunk size with a sign", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n+2\r\nok\r\n0\r\n\r\n", BadGateway),
    ("chunk size past 64 bits", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n10000000000000002\r\nok\r\n0\r\n\r\n", BadGateway),
    ("bare LF after the chunk size", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\nok\n0\n\n", BadGateway),
    ("bare LF inside a chunk extension", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2;a\nb\r\nok\r\n0\r\n\r\n", BadGateway),
    ("chunk extension value with a space", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2;a=b c\r\nok\r\n0\r\n\r\n", BadGateway),
    ("chunk data shorter than its size", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nok\r\n0\r\n\r\n", BadGateway),
    ("chunk data longer than its size", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nokay\r\n0\r\n\r\n", BadGateway),
    ("bare LF after the last chunk", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\n\n", BadGateway),
    ("bare LF after a trailer field", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx-a: 1\n\r\n", BadGateway),
    ("bytes after the response", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", Relayed { body: "ok", reused: false }),
];

/// The answer to every request after the first.
const FINE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nfine";

/// Runs one response case; returns what went wrong, if anything.
async fn response_case(name: &str, answer: &'static [u8], expect: OnResponse) -> Option<String> {
    let answers: &'static [&'static [u8]] = Box::leak(Box::new([answer, FINE]));
    let backend = RawBackend::start(answers).await;
    let gw = TestGateway::in_front_of(backend.addr, "").await;
    let first = send(
        gw.addr("web"),
        b"GET /first HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let fail = |what: String| Some(format!("{name}: {what}\n  client got {:?}", first.text));
    let reused = match expect {
        BadGateway => {
            if first.status() != 502 || !first.text.contains("application/problem+json") {
                return fail("expected a 502 problem".into());
            }
            false
        }
        Relayed { body, reused } => {
            if first.status() != 200 || first.body() != body {
                return fail(format!("expected 200 with body {body:?}"));
            }
            reused
        }
    };
    let second = send(
        gw.addr("web"),
        b"GET /second HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    if second.status() != 200 || !second.text.ends_with("fine") {
        return fail(format!("the next request got {:?}", second.text));
    }
    let connections = if reused { 1 } else { 2 };
    if backend.connections() != connections {
        return fail(format!(
            "expected {connections} upstream connection(s), saw {}",
            backend.connections()
        ));
    }
    None
}

#[tokio::test]
async fn every_response_desync_shape_gets_502_or_is_normalised_and_never_reused_when_malformed() {
    let mut failures = Vec::new();
    for (name, answer, expect) in RESPONSES {
        if let Some(failure) = response_case(name, answer, *expect).await {
            failures.push(failure);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        RESPONSES.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn response_trailers_lose_the_fields_forbidden_in_trailers() {
    let backend = RawBackend::start(&[b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx-sum: 42\r\ncontent-length: 9\r\nset-cookie: a=b\r\nx-forwarded-for: 10.0.0.1\r\ngrpc-status: 0\r\n\r\n"]).await;
    let gw = TestGateway::in_front_of(backend.addr, "").await;
    let reply = send(
        gw.addr("web"),
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(reply.status(), 200, "{}", reply.text);
    assert!(
        reply
            .text
            .ends_with("\r\n\r\n2\r\nok\r\n0\r\nx-sum: 42\r\ngrpc-status: 0\r\n\r\n"),
        "{:?}",
        reply.text
    );
}
