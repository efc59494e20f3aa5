//! HTTP/1.1 toward clients, driven by the connection's own task.
//!
//! One loop per connection: wait for a request head without holding a
//! buffer (an idle keep-alive connection costs its socket and this task,
//! not 24 KiB of buffers), parse it with httparse into a `Request` whose
//! header values share the head's bytes, run the pipeline, and write the
//! response with the framing its body calls for. The request body reads
//! the connection itself, in the request's task, when the pipeline asks
//! for it; once the response is ready the loop takes the connection back.
//!
//! Framing is strict (RFC 9112): a request with both Transfer-Encoding and
//! Content-Length, Transfer-Encoding in HTTP/1.0 or not ending in one
//! `chunked`, a transfer coding other than `chunked` (501), Content-Length
//! values that disagree, or a chunked body that breaks the chunk grammar
//! (a bare LF included) is refused with 400 and the connection closed, so
//! that no two parsers can read one request differently; what is forwarded
//! is re-framed by the gateway. A response body that fails before its first
//! byte is written becomes a 502. `Expect:
//! 100-continue` is answered when the body is first read. A request that
//! asks for an upgrade gets the connection handed to its tunnel after the
//! 101. A connection that opens with the HTTP/2 preface is handed back to
//! the caller for HTTP/2.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::oneshot;
use tokio_util::io::poll_read_buf;

use crate::http::body::Body;
use crate::http::codec::{
    self, BodyWriter, Decoded, Framing, FramingError, Outgoing, READ_MIN, Spans, WriteError,
    poll_write_from,
};
use crate::http::headers::new_request_id;
use crate::http::problem::problem;
use crate::proxy::connection::Connection;
use crate::proxy::pipeline;
use crate::proxy::snapshot::Limits;
use crate::server::client_body::ClientBody;
use crate::server::runtime::Runtime;

pub use crate::http::upgrade::{ClientUpgrade, Handoff};
pub use crate::net::stream::{ClientIo, ClientStream};

/// The first bytes of every HTTP/2 connection (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The length of the preface's first line, `PRI * HTTP/2.0\r\n`.
const PREFACE_LINE: usize = 16;
/// Bytes read from an idle connection before a buffer is allocated.
const FIRST_READ: usize = 4 * 1024;
/// Header fields parsed without a heap allocation.
const STACK_FIELDS: usize = 256;
/// How long unread request bytes are drained before closing, so that the
/// client reads the answer instead of a reset.
const LINGER: Duration = Duration::from_secs(2);
/// The most bytes drained while lingering.
const LINGER_BYTES: usize = 1024 * 1024;
/// Room for the method, spaces and version beside the longest target on a
/// request line.
const REQUEST_LINE_EXTRA: usize = 64;
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// How a connection's HTTP/1 service ended.
pub enum Ended {
    /// Closed, by either side or because the server is draining.
    Closed,
    /// The client opened with the HTTP/2 preface: the connection, the
    /// bytes read so far, and what the HTTP/2 server needs.
    Http2 {
        /// The client connection.
        io: ClientIo,
        /// Bytes read from it, the preface included.
        read: Bytes,
        /// The connection's facts.
        conn: Arc<Connection>,
        /// The gateway.
        rt: Arc<Runtime>,
    },
}

/// The parser's hard limits, above the listener's own (which the pipeline
/// checks and answers with problem+json): past these the head is not even
/// read.
#[derive(Clone, Copy)]
pub struct Caps {
    head_bytes: u32,
    fields: u32,
    /// The listener's `max_uri_size`: a longer target is answered 414
    /// here, before the head is parsed into a request.
    uri_bytes: u32,
}

impl Caps {
    /// The caps for a listener's limits.
    pub fn new(limits: &Limits) -> Caps {
        let cap = |limit: usize, floor: usize| {
            u32::try_from(limit.saturating_mul(2).max(floor)).unwrap_or(u32::MAX)
        };
        Caps {
            head_bytes: cap(limits.max_header_size, 16 * 1024),
            fields: cap(limits.max_headers, 100),
            uri_bytes: u32::try_from(limits.max_uri_size).unwrap_or(u32::MAX),
        }
    }
}

/// Serves HTTP/1.1 requests on `io` until the client leaves, a response
/// says close, or the gateway drains (between requests).
///
/// A plain function returning the loop, not an `async fn`: the loop is what
/// an idle connection keeps, and an `async fn` would also keep its
/// arguments after they have been moved into the [`Client`]. The task must
/// poll [`Activity::poll_expired`](crate::proxy::connection::Activity::poll_expired)
/// to be woken by the drain.
pub fn serve(
    io: ClientIo,
    conn: Arc<Connection>,
    caps: Caps,
    rt: Arc<Runtime>,
) -> impl Future<Output = Ended> + Send {
    let mut client = Client {
        io,
        buf: BytesMut::new(),
        caps,
        first: true,
        conn,
        rt,
    };
    async move {
        loop {
            if client.buf.is_empty() {
                // Idle: hold no buffers while waiting for the next request.
                drop(std::mem::take(&mut client.buf));
                match first_bytes(&mut client.io, &client.conn).await {
                    Ok(Some(bytes)) => client.buf = bytes,
                    _ => return Ended::Closed,
                }
            }
            // The next head has begun (or was pipelined): from
            // keepalive_timeout to header_read_timeout.
            client.conn.activity.head_started();
            // One exchange's state is large; boxed, it is allocated while a
            // request is in flight and not kept by an idle connection.
            // Written into its box directly rather than moved there (a
            // copy of several KiB per request).
            let exchange = Box::write(Box::new_uninit(), client.exchange());
            match Box::into_pin(exchange).await {
                Next::Request => {}
                Next::Close => return Ended::Closed,
                Next::Http2 => {
                    return Ended::Http2 {
                        read: std::mem::take(&mut client.buf).freeze(),
                        io: client.io,
                        conn: client.conn,
                        rt: client.rt,
                    };
                }
            }
        }
    }
}

/// One client connection as the loop drives it.
struct Client {
    io: ClientIo,
    /// Bytes read and not yet used; empty (no allocation) while idle.
    buf: BytesMut,
    caps: Caps,
    /// No request has been read yet (the HTTP/2 preface may come).
    first: bool,
    conn: Arc<Connection>,
    rt: Arc<Runtime>,
}

/// What the connection does after an exchange.
enum Next {
    /// Read the next request.
    Request,
    /// Close.
    Close,
    /// Serve HTTP/2 (the client sent the preface).
    Http2,
}

impl Client {
    /// Reads one request, runs the pipeline and writes the response.
    async fn exchange(&mut self) -> Next {
        let head = match read_head(&mut self.io, &mut self.buf, self.caps, self.first).await {
            Ok(Some(Head::Request(head))) => head,
            Ok(Some(Head::Http2)) => return Next::Http2,
            Ok(None) => return Next::Close,
            Err(refusal) => {
                refuse(&mut self.io, refusal).await;
                return Next::Close;
            }
        };
        self.first = false;
        let Parsed {
            method,
            uri,
            version,
            headers,
        } = head;
        let framing = match codec::body_framing(&headers, version, true) {
            Ok(framing) => framing,
            Err(e) => {
                refuse(&mut self.io, Refusal::Framing(e)).await;
                return Next::Close;
            }
        };
        let mut keep_alive = match version {
            Version::HTTP_10 => codec::has_token(&headers, "keep-alive"),
            _ => !codec::has_token(&headers, "close"),
        };
        let head_only = method == Method::HEAD;
        let wants_upgrade = version == Version::HTTP_11
            && headers.contains_key(header::UPGRADE)
            && codec::has_token(&headers, "upgrade");
        let expects_continue = version == Version::HTTP_11
            && framing != Framing::Empty
            && headers
                .get(header::EXPECT)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));

        let mut req = Request::new(ClientBody::Empty);
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.version_mut() = version;
        *req.headers_mut() = headers;
        let mut upgrade_to = None;
        if wants_upgrade {
            let (tx, rx) = oneshot::channel();
            req.extensions_mut().insert(ClientUpgrade::new(rx));
            upgrade_to = Some(tx);
        }
        // With a body, the connection goes with the request until the
        // response is ready; the body reads it when asked.
        let reading = (framing != Framing::Empty).then(|| {
            let shared = Arc::new(Mutex::new(Reading {
                io: Some(std::mem::replace(&mut self.io, Box::new(Detached))),
                buf: std::mem::take(&mut self.buf),
                framing,
                continue_written: expects_continue.then_some(0),
            }));
            *req.body_mut() = ClientBody::Http1(RequestBody {
                shared: shared.clone(),
            });
            shared
        });

        let mut handling = std::pin::pin!(pipeline::handle(
            req,
            self.conn.clone(),
            self.rt.snapshot.load_full()
        ));
        // Meanwhile, a client that closes its end has gone: the request is
        // abandoned, as nginx and hyper do. (With a body, that can be seen
        // once the body has been read.)
        let mut watching = true;
        let response = std::future::poll_fn(|cx| {
            if let Poll::Ready(resp) = handling.as_mut().poll(cx) {
                return Poll::Ready(Some(resp));
            }
            if watching {
                let gone = match &reading {
                    None => poll_more(&mut self.io, &mut self.buf, cx),
                    Some(shared) => {
                        let mut r = lock(shared);
                        let r = &mut *r;
                        match (r.framing.is_end(), r.io.as_mut()) {
                            (true, Some(io)) => poll_more(io, &mut r.buf, cx),
                            _ => Poll::Pending,
                        }
                    }
                };
                match gone {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(None),
                    // Pipelined bytes: kept for the next request.
                    Poll::Ready(Ok(_)) => watching = false,
                    Poll::Pending => {}
                }
            }
            Poll::Pending
        })
        .await;
        let Some(Ok(response)) = response else {
            tracing::debug!("the client closed the connection before its response");
            return Next::Close;
        };
        let mut body_unread = false;
        if let Some(shared) = reading {
            let mut r = lock(&shared);
            match r.io.take() {
                Some(back) => self.io = back,
                None => return Next::Close,
            }
            self.buf = std::mem::take(&mut r.buf);
            body_unread = !r.framing.is_end();
            // A body left unread ends the connection: its bytes would
            // otherwise be read as the next request.
            keep_alive &= !body_unread;
        }
        if self.conn.activity.draining() {
            keep_alive = false;
        }
        self.respond(
            response,
            version,
            head_only,
            keep_alive,
            body_unread,
            upgrade_to,
        )
        .await
    }

    /// Writes the response (handing the connection over after a 101).
    async fn respond(
        &mut self,
        response: Response<Body>,
        version: Version,
        head_only: bool,
        mut keep_alive: bool,
        body_unread: bool,
        upgrade_to: Option<oneshot::Sender<Handoff>>,
    ) -> Next {
        let (parts, body) = response.into_parts();
        // Sized once for a typical head, instead of growing step by step.
        let out = &mut Vec::with_capacity(1024);
        if parts.status == StatusCode::SWITCHING_PROTOCOLS
            && let Some(tx) = upgrade_to
        {
            encode_head(
                out,
                &parts,
                ResponseFraming::Headers,
                Persistence::KeepAlive,
            );
            let mut written = 0;
            let io = &mut self.io;
            let sent = std::future::poll_fn(|cx| poll_write_from(io, cx, out, &mut written)).await;
            if sent.is_ok() && io.flush().await.is_ok() {
                drop(body);
                let io = std::mem::replace(io, Box::new(Detached));
                let _ = tx.send((io, std::mem::take(&mut self.buf).freeze()));
            }
            return Next::Close;
        }
        let framing = if parts.status.is_informational()
            || parts.status == StatusCode::NO_CONTENT
            || parts.status == StatusCode::NOT_MODIFIED
        {
            ResponseFraming::Headers
        } else if head_only {
            // The length a GET would have, when the answer knows it and
            // does not say it (a direct or a gateway-made answer).
            match body.size_hint().exact() {
                Some(len) if len > 0 && !parts.headers.contains_key(header::CONTENT_LENGTH) => {
                    ResponseFraming::HeadersAndLength(len)
                }
                _ => ResponseFraming::Headers,
            }
        } else {
            // A body that does not know its length (a file stream) may
            // still come with the Content-Length it will have.
            let declared = || codec::content_length(&parts.headers).ok().flatten();
            match body.size_hint().exact().or_else(declared) {
                Some(len) => ResponseFraming::Length(len),
                None if version == Version::HTTP_11 => ResponseFraming::Chunked,
                None => {
                    // An HTTP/1.0 client learns the end from the close.
                    keep_alive = false;
                    ResponseFraming::UntilClose
                }
            }
        };
        let persistence = match (keep_alive, version) {
            (false, _) => Persistence::Close,
            // HTTP/1.0 keeps a connection only when told so.
            (true, Version::HTTP_10) => Persistence::KeepAlive10,
            (true, _) => Persistence::KeepAlive,
        };
        let outgoing = encode_head(out, &parts, framing, persistence);
        let mut writer = BodyWriter::new(body, outgoing);
        let io = &mut self.io;
        let written = std::future::poll_fn(|cx| writer.poll_write(io, out, cx)).await;
        match written {
            Ok(()) => {}
            Err(WriteError::Io(e)) => {
                tracing::debug!(error = %e, "writing the response failed");
                return Next::Close;
            }
            Err(WriteError::Body(e)) if writer.wrote_nothing() => {
                // The body failed before a byte went out (an upstream's
                // malformed chunk is seen at once): the client can still
                // be told, with the same request id.
                tracing::debug!(error = %e, "the response body failed before it was sent");
                let id = parts
                    .headers
                    .get(&crate::http::headers::X_REQUEST_ID)
                    .cloned()
                    .unwrap_or_else(new_request_id);
                drop(writer);
                answer_and_close(
                    &mut self.io,
                    StatusCode::BAD_GATEWAY,
                    "the response body failed before it could be sent",
                    id,
                )
                .await;
                return Next::Close;
            }
            Err(WriteError::Body(e)) => {
                // Mid-body: closing is the only way left to say so.
                tracing::debug!(error = %e, "the response body failed; closing the connection");
                return Next::Close;
            }
        }
        drop(writer);
        if keep_alive {
            return Next::Request;
        }
        if body_unread {
            linger(&mut self.io).await;
        } else {
            let _ = self.io.shutdown().await;
        }
        Next::Close
    }
}

/// Waits for an idle connection's next bytes, reading them onto the stack
/// and only then into a new buffer. `None` when the client closed or the
/// gateway drains.
fn first_bytes<'a>(
    io: &'a mut ClientIo,
    conn: &'a Connection,
) -> impl Future<Output = io::Result<Option<BytesMut>>> + 'a {
    std::future::poll_fn(move |cx| {
        if conn.activity.draining() {
            return Poll::Ready(Ok(None));
        }
        let mut stack = [MaybeUninit::<u8>::uninit(); FIRST_READ];
        let mut read = ReadBuf::uninit(&mut stack);
        ready!(Pin::new(&mut **io).poll_read(cx, &mut read))?;
        let got = read.filled();
        if got.is_empty() {
            return Poll::Ready(Ok(None));
        }
        let mut buf = BytesMut::with_capacity(FIRST_READ);
        buf.extend_from_slice(got);
        Poll::Ready(Ok(Some(buf)))
    })
}

/// Reads whatever the client sends next into `buf`; `Ok(0)` at its end.
fn poll_more(
    io: &mut ClientIo,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(READ_MIN);
    }
    poll_read_buf(Pin::new(&mut **io), cx, buf)
}

/// What a complete head turned out to be.
// Returned once per request and taken apart at once: boxing the large
// variant would cost an allocation for nothing.
#[allow(clippy::large_enum_variant)]
enum Head {
    /// An HTTP/1 request.
    Request(Parsed),
    /// The HTTP/2 connection preface.
    Http2,
}

/// A request head, parsed.
struct Parsed {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

/// Why a request was refused before it reached the pipeline.
#[derive(Debug)]
enum Refusal {
    /// The head is not valid HTTP/1.x.
    Malformed(&'static str),
    /// The head is larger than the parser's cap, or has too many fields.
    TooLarge,
    /// The request target is longer than the listener's `max_uri_size`.
    UriTooLong,
    /// The body's framing is refused.
    Framing(FramingError),
    /// The connection failed while reading the head.
    Io(io::Error),
    /// The HTTP/2 preface's first line, then something else.
    BrokenPreface,
}

/// Reads until `buf` holds a complete head and parses it. `None` when the
/// client closed (between requests, or halfway through a head).
async fn read_head(
    io: &mut ClientIo,
    buf: &mut BytesMut,
    caps: Caps,
    first: bool,
) -> Result<Option<Head>, Refusal> {
    loop {
        if first && PREFACE.starts_with(&buf[..buf.len().min(PREFACE.len())]) {
            if buf.len() >= PREFACE.len() {
                return Ok(Some(Head::Http2));
            }
        } else if first && buf.starts_with(&PREFACE[..PREFACE_LINE]) {
            // HTTP/2's first line with a broken rest: an HTTP/2 client
            // whose preface is invalid (RFC 9113 §3.4), not an HTTP/1 one.
            return Err(Refusal::BrokenPreface);
        } else if let Some(head) = parse_head(buf, caps)? {
            return Ok(Some(Head::Request(head)));
        }
        if buf.len() >= caps.head_bytes as usize {
            return Err(Refusal::TooLarge);
        }
        // A request line already longer than any allowed target and its
        // method and version: 414 now, not after reading up to the cap.
        if buf.len() > caps.uri_bytes as usize + REQUEST_LINE_EXTRA && !buf.contains(&b'\n') {
            return Err(Refusal::UriTooLong);
        }
        let n = std::future::poll_fn(|cx| poll_more(io, buf, cx))
            .await
            .map_err(Refusal::Io)?;
        if n == 0 {
            return Ok(None);
        }
    }
}

/// Parses a complete request head off the front of `buf`, or `None` when
/// more bytes are needed.
fn parse_head(buf: &mut BytesMut, caps: Caps) -> Result<Option<Parsed>, Refusal> {
    let mut stack = [MaybeUninit::<httparse::Header<'_>>::uninit(); STACK_FIELDS];
    let mut heap;
    let wanted = caps.fields as usize;
    let fields: &mut [MaybeUninit<httparse::Header<'_>>] = if wanted <= STACK_FIELDS {
        &mut stack[..wanted]
    } else {
        heap = vec![MaybeUninit::uninit(); wanted];
        &mut heap
    };
    let mut parsed = httparse::Request::new(&mut []);
    let len = match parsed.parse_with_uninit_headers(buf, fields) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Refusal::TooLarge),
        Err(e) => return Err(Refusal::Malformed(codec::parse_error(e))),
    };
    let method = Method::from_bytes(parsed.method.unwrap_or_default().as_bytes())
        .map_err(|_| Refusal::Malformed("invalid method"))?;
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let path = parsed.path.unwrap_or_default();
    if path.len() > caps.uri_bytes as usize {
        return Err(Refusal::UriTooLong);
    }
    let path_at = path.as_ptr() as usize - buf.as_ptr() as usize;
    let path_span = path_at..path_at + path.len();
    let spans = Spans::new(buf, parsed.headers);
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(path_span))
        .map_err(|_| Refusal::Malformed("invalid request target"))?;
    // Room for what the pipeline adds (X-Forwarded-*, X-Request-Id)
    // without growing the map.
    let headers = spans.header_map(&head, 6).map_err(Refusal::Malformed)?;
    Ok(Some(Parsed {
        method,
        uri,
        version,
        headers,
    }))
}

/// Answers a refused request with problem+json and closes the connection.
async fn refuse(io: &mut ClientIo, refusal: Refusal) {
    let (status, detail) = match &refusal {
        Refusal::Io(e) => {
            tracing::debug!(error = %e, "reading a request head failed");
            return;
        }
        Refusal::Malformed(what) => (StatusCode::BAD_REQUEST, *what),
        Refusal::TooLarge => (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "the request head is too large",
        ),
        Refusal::UriTooLong => (StatusCode::URI_TOO_LONG, "the request target is too long"),
        Refusal::Framing(e) => framing_refusal(e),
        Refusal::BrokenPreface => {
            // As a pure HTTP/2 port answers it: the server's SETTINGS, then
            // GOAWAY (last stream 0, PROTOCOL_ERROR), then close.
            const SETTINGS: [u8; 9] = [0, 0, 0, 0x4, 0, 0, 0, 0, 0];
            const GOAWAY: [u8; 17] = [0, 0, 8, 0x7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x1];
            tracing::debug!("an invalid HTTP/2 connection preface");
            let _ = io.write_all(&[SETTINGS.as_slice(), &GOAWAY].concat()).await;
            let _ = io.shutdown().await;
            return;
        }
    };
    tracing::debug!(?refusal, "refusing a request");
    answer_and_close(io, status, detail, new_request_id()).await;
}

/// The status and detail that refuse a request whose framing is `e`.
fn framing_refusal(e: &FramingError) -> (StatusCode, &'static str) {
    let detail = match e {
        FramingError::UnsupportedTransferEncoding => {
            return (
                StatusCode::NOT_IMPLEMENTED,
                "only the chunked transfer coding is accepted",
            );
        }
        FramingError::Ambiguous => "the request has both Transfer-Encoding and Content-Length",
        FramingError::ChunkedNotFinal => {
            "the request's Transfer-Encoding does not end in a single chunked"
        }
        FramingError::TransferEncodingInHttp10 => "an HTTP/1.0 request has Transfer-Encoding",
        FramingError::BadContentLength => "the request's Content-Length is invalid",
        FramingError::BadChunk(what) => what,
    };
    (StatusCode::BAD_REQUEST, detail)
}

/// Writes a problem+json answer that closes the connection, then closes it.
async fn answer_and_close(io: &mut ClientIo, status: StatusCode, detail: &str, id: HeaderValue) {
    let mut resp = problem(status, detail, id.to_str().unwrap_or("-"));
    resp.headers_mut()
        .insert(crate::http::headers::X_REQUEST_ID.clone(), id);
    let (parts, body) = resp.into_parts();
    let out = &mut Vec::new();
    let len = body.size_hint().exact().unwrap_or(0);
    let outgoing = encode_head(
        out,
        &parts,
        ResponseFraming::Length(len),
        Persistence::Close,
    );
    let mut writer = BodyWriter::new(body, outgoing);
    if std::future::poll_fn(|cx| writer.poll_write(io, out, cx))
        .await
        .is_ok()
    {
        linger(io).await;
    }
}

/// Closes our side, then reads and drops what the client still sends (for
/// a while), so that its unread bytes do not turn the close into a reset
/// that would destroy the answer before the client has read it.
async fn linger(io: &mut ClientIo) {
    let _ = io.shutdown().await;
    let until = Instant::now() + LINGER;
    let mut drained = 0;
    let mut scratch = vec![0u8; 16 * 1024];
    while drained < LINGER_BYTES {
        match tokio::time::timeout_at(
            until.into(),
            tokio::io::AsyncReadExt::read(io, &mut scratch),
        )
        .await
        {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => return,
        }
    }
}

/// How a response's body goes on the wire.
#[derive(Clone, Copy)]
enum ResponseFraming {
    /// No body whatever the headers say (HEAD, 1xx, 204, 304): the
    /// headers, Content-Length included, pass as they are.
    Headers,
    /// No body (HEAD), and the length the answer to a GET would have.
    HeadersAndLength(u64),
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked.
    Chunked,
    /// Until the connection closes (HTTP/1.0 clients).
    UntilClose,
}

/// Writes the status line and header fields (with Date when the response
/// has none, the framing header, and the Connection header `persistence`
/// calls for).
fn encode_head(
    out: &mut Vec<u8>,
    parts: &http::response::Parts,
    framing: ResponseFraming,
    persistence: Persistence,
) -> Outgoing {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        parts
            .status
            .canonical_reason()
            .unwrap_or("Unknown")
            .as_bytes(),
    );
    out.extend_from_slice(b"\r\n");
    let outgoing = match framing {
        ResponseFraming::Headers => {
            codec::write_fields(out, &parts.headers, |_| false);
            Outgoing::None
        }
        ResponseFraming::HeadersAndLength(len) => {
            codec::write_fields(out, &parts.headers, |_| false);
            codec::write_framing(out, Some(len));
            Outgoing::None
        }
        ResponseFraming::Length(len) => {
            codec::write_fields(out, &parts.headers, is_framing);
            codec::write_framing(out, Some(len))
        }
        ResponseFraming::Chunked => {
            codec::write_fields(out, &parts.headers, is_framing);
            codec::write_framing(out, None)
        }
        ResponseFraming::UntilClose => {
            codec::write_fields(out, &parts.headers, is_framing);
            Outgoing::AsIs
        }
    };
    if !parts.headers.contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        http_date(out);
        out.extend_from_slice(b"\r\n");
    }
    match persistence {
        Persistence::KeepAlive => {}
        Persistence::KeepAlive10 => out.extend_from_slice(b"connection: keep-alive\r\n"),
        Persistence::Close => out.extend_from_slice(b"connection: close\r\n"),
    }
    out.extend_from_slice(b"\r\n");
    outgoing
}

/// What the response says about the connection after it.
#[derive(Clone, Copy)]
enum Persistence {
    /// Nothing: HTTP/1.1 keeps connections by default.
    KeepAlive,
    /// `connection: keep-alive`, which an HTTP/1.0 client needs.
    KeepAlive10,
    /// `connection: close`.
    Close,
}

fn is_framing(name: &header::HeaderName) -> bool {
    name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING
}

/// Appends the current time as an HTTP date, formatted once a second per thread.
fn http_date(out: &mut Vec<u8>) {
    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    CACHED.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != secs {
            *cached = (secs, httpdate::fmt_http_date(now));
        }
        out.extend_from_slice(cached.1.as_bytes());
    });
}

/// The connection of a request that has a body, while the request holds it.
struct Reading {
    /// Taken back by the connection loop once the response is ready.
    io: Option<ClientIo>,
    buf: BytesMut,
    framing: Framing,
    /// `100 Continue` is due before the first read: bytes of it written.
    continue_written: Option<usize>,
}

fn lock(shared: &Mutex<Reading>) -> MutexGuard<'_, Reading> {
    // A panic while reading leaves nothing half-updated that matters here.
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An HTTP/1 request body, read from the client connection as it is polled.
pub struct RequestBody {
    shared: Arc<Mutex<Reading>>,
}

/// Why reading a request body failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    /// Reading (or writing `100 Continue`) failed.
    #[error("client connection: {0}")]
    Io(#[from] io::Error),
    /// The body breaks its framing.
    #[error("request body: {0}")]
    Framing(#[from] FramingError),
    /// The client closed the connection before the body's end.
    #[error("the client closed the connection in the middle of the request body")]
    Closed,
    /// The response went out before the body was read.
    #[error("the request body was abandoned after the response")]
    Abandoned,
}

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        let mut r = lock(&self.shared);
        let r = &mut *r;
        let Some(io) = r.io.as_mut() else {
            if r.framing.is_end() {
                return Poll::Ready(None);
            }
            return Poll::Ready(Some(Err(RequestBodyError::Abandoned)));
        };
        if let Some(written) = r.continue_written.as_mut() {
            ready!(poll_write_from(io, cx, CONTINUE, written))?;
            ready!(Pin::new(&mut **io).poll_flush(cx))?;
            r.continue_written = None;
        }
        loop {
            match r.framing.decode(&mut r.buf)? {
                Decoded::Frame(frame) => return Poll::Ready(Some(Ok(frame))),
                Decoded::End => return Poll::Ready(None),
                Decoded::More(want) => {
                    if ready!(codec::poll_fill(io, &mut r.buf, want, cx))? == 0 {
                        return Poll::Ready(Some(Err(RequestBodyError::Closed)));
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        lock(&self.shared).framing.is_end()
    }

    fn size_hint(&self) -> SizeHint {
        lock(&self.shared).framing.size_hint()
    }
}

/// Stands in for the connection while a request body holds it.
struct Detached;

impl AsyncRead for Detached {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Ready(Err(io::ErrorKind::NotConnected.into()))
    }
}

impl AsyncWrite for Detached {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(io::ErrorKind::NotConnected.into()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Entry points for the fuzz targets in `fuzz/`, beside the parser they
/// exercise, so that they build with the crate and unit tests run them.
#[doc(hidden)]
pub mod fuzz_logic {
    use super::*;
    use crate::http::codec::fuzz_logic::decode;

    /// The framing fields, which the gateway always writes itself.
    fn is_framing_field(name: &header::HeaderName) -> bool {
        name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING
    }

    /// Reads `data` as a client's request (head, then body) and checks that
    /// a request the gateway accepts is forwarded as one that reads back the
    /// same: same method, target, fields and framing, nothing left over.
    pub fn request(data: &[u8]) {
        let caps = Caps {
            head_bytes: 64 * 1024,
            fields: 128,
            uri_bytes: 8 * 1024,
        };
        let mut buf = BytesMut::from(data);
        let Ok(Some(head)) = parse_head(&mut buf, caps) else {
            return;
        };
        let Ok(framing) = codec::body_framing(&head.headers, head.version, true) else {
            return;
        };
        decode(framing, &buf, buf.len());

        let target = head
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .filter(|p| !p.is_empty())
            .unwrap_or("/");
        let mut out = Vec::new();
        out.extend_from_slice(head.method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        codec::write_fields(&mut out, &head.headers, is_framing_field);
        let length = match framing {
            Framing::Length(n) => Some(n),
            Framing::Empty => Some(0),
            _ => None,
        };
        codec::write_framing(&mut out, length);
        out.extend_from_slice(b"\r\n");

        let mut again = BytesMut::from(&out[..]);
        let wide = Caps {
            head_bytes: u32::MAX,
            fields: 256,
            uri_bytes: u32::MAX,
        };
        let shown = String::from_utf8_lossy(&out).into_owned();
        let forwarded = match parse_head(&mut again, wide) {
            Ok(Some(forwarded)) => forwarded,
            Ok(None) => panic!("the forwarded head is incomplete: {shown:?}"),
            Err(e) => panic!("the forwarded head is refused ({e:?}): {shown:?}"),
        };
        assert!(again.is_empty(), "bytes past the forwarded head: {shown:?}");
        assert_eq!(forwarded.method, head.method, "{shown:?}");
        assert_eq!(
            forwarded.uri.path_and_query().map(|p| p.as_str()),
            Some(target),
            "{shown:?}"
        );
        let fields = |h: &HeaderMap| {
            let mut h = h.clone();
            h.remove(header::CONTENT_LENGTH);
            h.remove(header::TRANSFER_ENCODING);
            h
        };
        assert_eq!(
            fields(&forwarded.headers),
            fields(&head.headers),
            "{shown:?}"
        );
        let reframed = codec::body_framing(&forwarded.headers, forwarded.version, true);
        let same = match (framing, reframed) {
            (Framing::Chunked(_), Ok(Framing::Chunked(_))) => true,
            (original, Ok(again)) => original == again,
            (_, Err(_)) => false,
        };
        assert!(same, "the forwarded request is framed otherwise: {shown:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_requests_are_forwarded_as_requests_that_read_back_the_same() {
        for request in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"POST /a?b=c HTTP/1.1\r\nHost: x\r\nContent-Length: 005\r\n\r\nhello",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\nx-sum: 1\r\n\r\n",
            b"GET /lf HTTP/1.1\nHost: x\nX-A:  spaced\t \n\n",
            b"GET http://h/abs?q HTTP/1.1\r\nHost: h\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.0\r\nX-Obs: caf\xe9\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n",
        ] {
            fuzz_logic::request(request);
        }
    }
}
