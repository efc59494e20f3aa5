//! HTTP/1.1 to upstream targets, driven by the request's own task.
//!
//! hyper's client runs every connection as a task of its own and hands each
//! request and response across channels; for a proxy, whose request task is
//! waiting for the answer anyway, that is two task hops and a second copy of
//! the connection state per request. Here, as in Pingora, the request task
//! writes the request and reads the response head itself, and the response
//! body reads from the connection when the client side asks for more. Once
//! the body has been read to its end, the connection goes back to the
//! target's pool.
//!
//! Message framing follows RFC 9112: a response to HEAD, a 1xx, 204 or 304
//! has no body; otherwise `Transfer-Encoding: chunked` or `Content-Length`
//! delimits it, or the connection's end. A response that could be read two
//! ways (both headers, differing lengths, codings other than one final
//! `chunked`, Transfer-Encoding in HTTP/1.0, a malformed chunk) is an
//! error, as nginx has it: the client gets 502 and the connection, left
//! mid-message, is closed rather than pooled.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap};
use http::uri::Authority;
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::io::poll_read_buf;

use super::pool::IdlePool;
use crate::http::body::{Body, BoxError};
use crate::http::codec::{
    self, BodyWriter, Decoded, Framing, FramingError, Outgoing, READ_MIN, Spans, WriteError,
    poll_write_from,
};

/// Longest response head accepted (status line and header fields).
const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in a response head (and in chunked trailers).
const MAX_HEADERS: usize = 128;

/// Why an exchange on an HTTP/1 connection failed.
#[derive(Debug, thiserror::Error)]
pub enum Http1Error {
    /// Reading or writing the connection failed.
    #[error("upstream connection: {0}")]
    Io(#[from] io::Error),
    /// The connection closed before a complete response head.
    #[error("the upstream closed the connection before a complete response head")]
    ClosedBeforeHead,
    /// The connection closed in the middle of the body.
    #[error("the upstream closed the connection in the middle of the response body")]
    ClosedInBody,
    /// The response head is larger than [`MAX_HEAD`] or has too many fields.
    #[error("the upstream's response head is too large")]
    HeadTooLarge,
    /// The response head is not HTTP/1.x.
    #[error("the upstream sent a malformed response head: {0}")]
    Malformed(&'static str),
    /// The response's framing breaks RFC 9112.
    #[error("the upstream's response framing: {0}")]
    Framing(#[from] FramingError),
    /// The request body could not be read from the client.
    #[error("the request body could not be read: {0}")]
    RequestBody(BoxError),
}

/// The socket under an upstream connection.
pub enum ConnIo {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for ConnIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ConnIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ConnIo::Plain(s) => Pin::new(s).poll_write(cx, data),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ConnIo::Plain(s) => Pin::new(s).poll_flush(cx),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ConnIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ConnIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An open HTTP/1.1 connection to a target, between exchanges.
pub struct Http1Conn {
    io: ConnIo,
    /// Bytes read and not yet consumed.
    buf: BytesMut,
    /// Bytes to write.
    out: Vec<u8>,
}

/// Where a connection goes back to once its response has been read.
#[derive(Clone)]
pub struct PoolReturn {
    /// The target's pool.
    pub pool: Arc<IdlePool>,
    /// The client that made the connection.
    pub client: u64,
    /// How long it may stay idle.
    pub idle_timeout: Duration,
}

/// A response head and, after `101 Switching Protocols`, the connection
/// itself for the tunnel.
pub struct Head {
    /// The response; its body reads from the connection.
    pub response: Response<ResponseBody>,
    /// The connection after a 101, with bytes already read past the head.
    pub upgraded: Option<(ConnIo, Bytes)>,
}

/// An exchange that failed; `unsent` gives the request back when it
/// certainly did not reach the target (it may then go elsewhere).
pub struct Failed {
    /// What went wrong.
    pub error: Http1Error,
    /// The request, when it was never written.
    pub unsent: Option<Box<Request<Body>>>,
}

impl Http1Conn {
    /// A connection over `io`, ready for its first request.
    pub fn new(io: ConnIo) -> Http1Conn {
        Http1Conn {
            io,
            buf: BytesMut::new(),
            out: Vec::new(),
        }
    }

    /// Whether an idle connection can take another request: the target has
    /// neither closed it nor sent anything since the last response. Costs
    /// no system call unless the socket has become readable.
    pub fn is_usable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        let mut read = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(Waker::noop());
        // Pending: nothing to read, still open and quiet. Ready: closed
        // (EOF), stray bytes, or an error.
        Pin::new(&mut self.io)
            .poll_read(&mut cx, &mut read)
            .is_pending()
    }

    /// Sends `req` (origin-form URI) and reads the response head. `reused`
    /// says the connection served an earlier request: a request that then
    /// meets a closed connection before any byte was written is handed back.
    pub async fn send(
        mut self,
        req: Request<Body>,
        authority: &Authority,
        home: Option<PoolReturn>,
        reused: bool,
    ) -> Result<Head, Failed> {
        let head_only = req.method() == Method::HEAD;
        let upgrade = req.headers().contains_key(header::UPGRADE);
        let framing = self.encode_head(&req, authority);
        // Write the head (and a small body) before anything else: a failure
        // here on a reused connection means the target closed it while idle,
        // and the request can go out again.
        let mut written = 0;
        let first =
            std::future::poll_fn(|cx| poll_write_from(&mut self.io, cx, &self.out, &mut written))
                .await;
        if let Err(e) = first {
            let unsent = (reused && written == 0).then(|| Box::new(req));
            return Err(Failed {
                error: e.into(),
                unsent,
            });
        }
        self.out.clear();
        let (_, body) = req.into_parts();
        let mut sending = BodyWriter::new(body, framing);
        // Send the body while watching for the answer: a target may answer
        // (413, 401) before it has read the whole body.
        // A target that answers early may also close its end, so a failed
        // write stops the upload but not the wait for the answer already
        // on its way; the write error is reported only if none comes.
        let mut write_failed: Option<Http1Error> = None;
        let mut sent = false;
        let result = std::future::poll_fn(|cx| {
            if !sent && write_failed.is_none() {
                match sending.poll_write(&mut self.io, &mut self.out, cx) {
                    Poll::Ready(Ok(())) => sent = true,
                    Poll::Ready(Err(WriteError::Io(e))) => write_failed = Some(e.into()),
                    Poll::Ready(Err(WriteError::Body(e))) => {
                        return Poll::Ready(Err(Http1Error::RequestBody(e)));
                    }
                    Poll::Pending => {}
                }
            }
            match ready!(self.poll_head(cx, head_only, upgrade)) {
                Ok(head) => Poll::Ready(Ok(head)),
                Err(e) => Poll::Ready(Err(write_failed.take().unwrap_or(e))),
            }
        })
        .await;
        let parsed = result.map_err(|error| Failed {
            error,
            unsent: None,
        })?;
        // A body not sent in full leaves the connection mid-message.
        let keep_alive = parsed.keep_alive && sent;
        Ok(self.into_head(parsed, keep_alive, home))
    }

    /// Writes the request line and header fields into `self.out`, with the
    /// framing header this body needs; the body follows through a [`BodyWriter`].
    fn encode_head(&mut self, req: &Request<Body>, authority: &Authority) -> Outgoing {
        let out = &mut self.out;
        out.clear();
        // Sized once for a typical head (idle connections keep no buffer).
        out.reserve(512);
        out.extend_from_slice(req.method().as_str().as_bytes());
        out.push(b' ');
        let target = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .filter(|p| !p.is_empty())
            .unwrap_or("/");
        out.extend_from_slice(target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let headers = req.headers();
        // The framing headers are the connection's business, written below.
        codec::write_fields(out, headers, |name| {
            name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING
        });
        if !headers.contains_key(header::HOST) {
            out.extend_from_slice(b"host: ");
            out.extend_from_slice(authority.as_str().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        let body = req.body();
        let framing = if body.is_end_stream() {
            // An empty POST still says so; a GET says nothing.
            if matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH) {
                codec::write_framing(out, Some(0))
            } else {
                Outgoing::None
            }
        } else {
            codec::write_framing(out, body.size_hint().exact())
        };
        out.extend_from_slice(b"\r\n");
        framing
    }

    /// Reads until a final response head has arrived (1xx other than 101
    /// are read past), and decides its body framing.
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        head_only: bool,
        upgrade: bool,
    ) -> Poll<Result<ParsedHead, Http1Error>> {
        loop {
            if !self.buf.is_empty()
                && let Some(head) = parse_head(&mut self.buf, head_only, upgrade)?
            {
                return Poll::Ready(Ok(head));
            }
            if self.buf.len() >= MAX_HEAD {
                return Poll::Ready(Err(Http1Error::HeadTooLarge));
            }
            self.buf.reserve(READ_MIN);
            let n = ready!(poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf))?;
            if n == 0 {
                return Poll::Ready(Err(Http1Error::ClosedBeforeHead));
            }
        }
    }

    fn into_head(mut self, head: ParsedHead, keep_alive: bool, home: Option<PoolReturn>) -> Head {
        let mut response = Response::new(ResponseBody::empty());
        *response.status_mut() = head.status;
        *response.version_mut() = head.version;
        *response.headers_mut() = head.headers;
        if head.status == StatusCode::SWITCHING_PROTOCOLS {
            let early = std::mem::take(&mut self.buf).freeze();
            return Head {
                response,
                upgraded: Some((self.io, early)),
            };
        }
        let mut body = ResponseBody {
            conn: Some(self),
            framing: head.framing,
            home: if keep_alive { home } else { None },
        };
        body.release_if_done();
        *response.body_mut() = body;
        Head {
            response,
            upgraded: None,
        }
    }
}

/// Parses a complete response head from `buf` (consuming it), or `None`
/// when more bytes are needed. Interim 1xx heads are consumed and skipped.
fn parse_head(
    buf: &mut BytesMut,
    head_only: bool,
    upgrade: bool,
) -> Result<Option<ParsedHead>, Http1Error> {
    loop {
        let mut fields = [std::mem::MaybeUninit::uninit(); MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let config = httparse::ParserConfig::default();
        let len = match config.parse_response_with_uninit_headers(&mut parsed, buf, &mut fields) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(Http1Error::HeadTooLarge),
            Err(e) => return Err(Http1Error::Malformed(codec::parse_error(e))),
        };
        let code = parsed.code.unwrap_or(0);
        let status =
            StatusCode::from_u16(code).map_err(|_| Http1Error::Malformed("invalid status code"))?;
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            // 100 Continue, 103 Early Hints: the final answer follows.
            buf.advance(len);
            continue;
        }
        if status == StatusCode::SWITCHING_PROTOCOLS && !upgrade {
            return Err(Http1Error::Malformed(
                "101 to a request that asked for no upgrade",
            ));
        }
        let version = if parsed.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        // Header values point into the head's bytes: share, do not copy.
        let spans = Spans::new(buf, parsed.headers);
        let head = buf.split_to(len).freeze();
        // Room for what the gateway adds (X-Request-Id, a route's
        // response headers) without growing the map.
        let headers = spans.header_map(&head, 4).map_err(Http1Error::Malformed)?;
        let (framing, mut keep_alive) = if head_only
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            (Framing::Empty, true)
        } else {
            let framing = codec::body_framing(&headers, version, false)?;
            (framing, framing != Framing::UntilClose)
        };
        keep_alive &= match version {
            Version::HTTP_10 => codec::has_token(&headers, "keep-alive"),
            _ => !codec::has_token(&headers, "close"),
        };
        return Ok(Some(ParsedHead {
            status,
            version,
            headers,
            framing,
            keep_alive,
        }));
    }
}

/// A response head, parsed.
struct ParsedHead {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    framing: Framing,
    keep_alive: bool,
}

/// A response body read from the connection as the client side asks for
/// it; the connection goes back to its pool once the body has ended.
pub struct ResponseBody {
    conn: Option<Http1Conn>,
    framing: Framing,
    /// Set when the connection may be reused.
    home: Option<PoolReturn>,
}

impl ResponseBody {
    fn empty() -> ResponseBody {
        ResponseBody {
            conn: None,
            framing: Framing::Done,
            home: None,
        }
    }

    /// Gives the connection back once the body is over (nothing is left
    /// unread and nothing extra arrived).
    fn release_if_done(&mut self) {
        if !matches!(
            self.framing,
            Framing::Empty | Framing::Done | Framing::Length(0)
        ) {
            return;
        }
        self.framing = Framing::Done;
        if let (Some(home), Some(mut conn)) = (self.home.take(), self.conn.take())
            && conn.buf.is_empty()
        {
            // An idle connection keeps no buffers (the read buffer would
            // also pin the allocation the response's bytes came in).
            conn.buf = BytesMut::new();
            conn.out = Vec::new();
            home.pool.put_http1(conn, home.client, home.idle_timeout);
        }
    }

    /// Reads more bytes into the buffer; `Ok(0)` at end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: u64) -> Poll<io::Result<usize>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        codec::poll_fill(&mut conn.io, &mut conn.buf, want, cx)
    }

    /// The next frame: decoded from the buffer, or after reading more.
    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Http1Error>>> {
        loop {
            let decoded = match self.conn.as_mut() {
                Some(conn) => self.framing.decode(&mut conn.buf)?,
                None if self.framing.is_end() => Decoded::End,
                None => return Poll::Ready(Some(Err(Http1Error::ClosedInBody))),
            };
            match decoded {
                Decoded::Frame(frame) => {
                    // The last bytes: give the connection back now, not on
                    // the next poll.
                    self.release_if_done();
                    return Poll::Ready(Some(Ok(frame)));
                }
                Decoded::End => {
                    self.release_if_done();
                    return Poll::Ready(None);
                }
                Decoded::More(want) => {
                    if ready!(self.poll_fill(cx, want))? == 0 {
                        if self.framing == Framing::UntilClose {
                            self.framing = Framing::Done;
                            self.conn = None;
                            return Poll::Ready(None);
                        }
                        return Poll::Ready(Some(Err(Http1Error::ClosedInBody)));
                    }
                }
            }
        }
    }
}

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = Http1Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Http1Error>>> {
        let polled = self.poll_next(cx);
        if let Poll::Ready(Some(Err(_))) = &polled {
            // A broken body leaves the connection mid-message: never reused.
            self.conn = None;
            self.home = None;
            self.framing = Framing::Done;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.framing.is_end()
    }

    fn size_hint(&self) -> SizeHint {
        self.framing.size_hint()
    }
}

/// Entry points for the fuzz targets in `fuzz/`, beside the parser they
/// exercise, so that they build with the crate and unit tests run them.
#[doc(hidden)]
pub mod fuzz_logic {
    use super::*;
    use crate::http::codec::fuzz_logic::decode;

    /// Reads `data` (after its first byte, whose low bits say whether the
    /// request was a HEAD and whether it asked for an upgrade) as an
    /// upstream's answer: interim heads, the final head, then its body, in
    /// one piece and byte by byte. Checks that both reads agree and that a
    /// connection is kept only when the body's end is known.
    pub fn response(data: &[u8]) {
        let Some((&flags, wire)) = data.split_first() else {
            return;
        };
        let (head_only, upgrade) = (flags & 1 == 1, flags & 2 == 2);
        let mut buf = BytesMut::from(wire);
        let Ok(Some(head)) = parse_head(&mut buf, head_only, upgrade) else {
            return;
        };
        assert!(
            !head.keep_alive || head.framing != Framing::UntilClose,
            "a connection kept with a body that runs until close"
        );
        if head.status == StatusCode::SWITCHING_PROTOCOLS {
            return;
        }
        let whole = decode(head.framing, &buf, buf.len());
        let pieces = decode(head.framing, &buf, 1);
        assert_eq!(whole, pieces, "the body read whole and byte by byte");
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::http::codec::COALESCE;
    use http::HeaderValue;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A connection to a one-shot local server; the server end is returned
    /// for the test to script (the pool's tests use it too).
    pub(crate) async fn pair() -> (Http1Conn, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (Http1Conn::new(ConnIo::Plain(client)), server)
    }

    /// A POST whose body never ends, in `chunk`-byte frames.
    fn endless_post(chunk: &'static [u8]) -> Request<Body> {
        let endless = futures_util::stream::repeat_with(move || {
            Ok::<_, BoxError>(Frame::data(Bytes::from_static(chunk)))
        });
        let mut post = get("/upload");
        *post.method_mut() = Method::POST;
        *post.body_mut() = http_body_util::StreamBody::new(endless).boxed_unsync();
        post
    }

    fn authority() -> Authority {
        Authority::from_static("127.0.0.1:9")
    }

    fn get(path: &'static str) -> Request<Body> {
        let mut req = Request::new(crate::http::body::empty());
        *req.uri_mut() = http::Uri::from_static(path);
        req.headers_mut()
            .insert(header::HOST, HeaderValue::from_static("api.test"));
        req
    }

    fn home() -> (Arc<IdlePool>, Option<PoolReturn>) {
        let pool = Arc::new(IdlePool::default());
        let home = PoolReturn {
            pool: pool.clone(),
            client: 7,
            idle_timeout: Duration::from_secs(60),
        };
        (pool, Some(home))
    }

    /// Reads from `s` until `end` has been seen; returns everything read.
    async fn read_until(s: &mut TcpStream, end: &[u8]) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.windows(end.len()).any(|w| w == end) {
            let n = s.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "closed early; got {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    /// Sends `req`, answers with `answer`, and returns what the server read
    /// and the collected response (status, body, trailers).
    async fn exchange(
        req: Request<Body>,
        answer: &'static [u8],
        close_after: bool,
    ) -> (
        String,
        Result<(StatusCode, Bytes, Option<HeaderMap>), BoxError>,
        Arc<IdlePool>,
    ) {
        let (conn, mut server) = pair().await;
        let (pool, home) = home();
        let serve = tokio::spawn(async move {
            let got = read_until(&mut server, b"\r\n\r\n").await;
            server.write_all(answer).await.unwrap();
            if close_after {
                drop(server);
            } else {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            String::from_utf8(got).unwrap()
        });
        let result = async {
            let head = conn
                .send(req, &authority(), home, false)
                .await
                .map_err(|f| Box::new(f.error) as BoxError)?;
            let status = head.response.status();
            let collected = head.response.into_body().collect().await?;
            let trailers = collected.trailers().cloned();
            Ok((status, collected.to_bytes(), trailers))
        }
        .await;
        (serve.await.unwrap(), result, pool)
    }

    #[tokio::test]
    async fn a_get_is_sent_in_origin_form_and_a_sized_answer_read_whole() {
        let (wire, got, pool) = exchange(
            get("/v1/users?id=4"),
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\n\r\nhello",
            false,
        )
        .await;
        assert_eq!(
            wire,
            "GET /v1/users?id=4 HTTP/1.1\r\nhost: api.test\r\n\r\n"
        );
        let (status, body, _) = got.unwrap();
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello"[..]));
        assert_eq!(pool.idle_http1(), 1, "the connection went back to its pool");
    }

    #[tokio::test]
    async fn chunked_answers_are_decoded_with_their_trailers() {
        let (_, got, pool) = exchange(
            get("/"),
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\ngrpc-status: 0\r\n\r\n",
            false,
        )
        .await;
        let (_, body, trailers) = got.unwrap();
        assert_eq!(&body[..], b"hello world");
        assert_eq!(trailers.unwrap()["grpc-status"], "0");
        assert_eq!(pool.idle_http1(), 1);
    }

    #[tokio::test]
    async fn an_answer_without_length_runs_until_close_and_is_not_pooled() {
        let (_, got, pool) = exchange(
            get("/"),
            b"HTTP/1.1 200 OK\r\n\r\nstreamed to the end",
            true,
        )
        .await;
        assert_eq!(&got.unwrap().1[..], b"streamed to the end");
        assert_eq!(pool.idle_http1(), 0);
    }

    #[tokio::test]
    async fn head_204_and_304_have_no_body_whatever_the_length_says() {
        let mut head = get("/");
        *head.method_mut() = Method::HEAD;
        let (_, got, pool) = exchange(
            head,
            b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n",
            false,
        )
        .await;
        assert_eq!(got.unwrap().1.len(), 0);
        assert_eq!(pool.idle_http1(), 1);
        for answer in [
            &b"HTTP/1.1 204 No Content\r\ncontent-length: 7\r\n\r\n"[..],
            &b"HTTP/1.1 304 Not Modified\r\ncontent-length: 7\r\n\r\n"[..],
        ] {
            let (_, got, _) = exchange(get("/"), answer, false).await;
            assert_eq!(got.unwrap().1.len(), 0);
        }
    }

    #[tokio::test]
    async fn interim_answers_are_skipped() {
        let (_, got, _) = exchange(
            get("/"),
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
            false,
        )
        .await;
        let (status, body, _) = got.unwrap();
        assert_eq!((status, &body[..]), (StatusCode::CREATED, &b"ok"[..]));
    }

    #[tokio::test]
    async fn smuggling_shapes_are_refused_and_not_reused() {
        // Transfer-Encoding and Content-Length together: an error, no reuse.
        let (_, got, pool) = exchange(
            get("/"),
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            false,
        )
        .await;
        assert!(got.is_err());
        assert_eq!(pool.idle_http1(), 0);
        // Two different lengths: an error.
        let (_, got, _) = exchange(
            get("/"),
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
            false,
        )
        .await;
        assert!(got.is_err());
        // A transfer coding other than chunked.
        let (_, got, _) = exchange(
            get("/"),
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            false,
        )
        .await;
        assert!(got.is_err());
        // A chunk size that is not hex.
        let (_, got, _) = exchange(
            get("/"),
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
            false,
        )
        .await;
        assert!(got.is_err());
    }

    #[tokio::test]
    async fn bytes_after_the_answer_keep_the_connection_out_of_the_pool() {
        let (_, got, pool) = exchange(
            get("/"),
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n",
            false,
        )
        .await;
        assert_eq!(&got.unwrap().1[..], b"ok");
        assert_eq!(pool.idle_http1(), 0);
    }

    #[tokio::test]
    async fn connection_close_and_http10_answers_are_not_pooled() {
        let (_, got, pool) = exchange(
            get("/"),
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
            false,
        )
        .await;
        assert!(got.is_ok());
        assert_eq!(pool.idle_http1(), 0);
        let (_, got, pool) = exchange(
            get("/"),
            b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
            false,
        )
        .await;
        assert!(got.is_ok());
        assert_eq!(pool.idle_http1(), 0);
    }

    #[tokio::test]
    async fn an_oversized_or_garbled_head_is_an_error() {
        let (conn, mut server) = pair().await;
        let serve = tokio::spawn(async move {
            read_until(&mut server, b"\r\n\r\n").await;
            let _ = server.write_all(b"HTTP/1.1 200 OK\r\n").await;
            let line = format!("x-big: {}\r\n", "a".repeat(1000));
            for _ in 0..100 {
                if server.write_all(line.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
        let failed = conn.send(get("/"), &authority(), None, false).await;
        assert!(matches!(
            failed,
            Err(Failed {
                error: Http1Error::HeadTooLarge,
                ..
            })
        ));
        serve.await.unwrap();

        let (_, got, _) = exchange(get("/"), b"SMTP ready\r\n\r\n", false).await;
        assert!(got.is_err());
    }

    #[tokio::test]
    async fn bodies_of_known_length_go_as_is_and_streams_go_chunked() {
        let mut post = get("/upload");
        *post.method_mut() = Method::POST;
        *post.body_mut() = crate::http::body::full("abc");
        let (conn, mut server) = pair().await;
        let serve = tokio::spawn(async move {
            let got = read_until(&mut server, b"abc").await;
            server
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            String::from_utf8(got).unwrap()
        });
        conn.send(post, &authority(), None, false)
            .await
            .ok()
            .unwrap();
        let wire = serve.await.unwrap();
        assert!(wire.contains("content-length: 3\r\n\r\nabc"), "{wire}");

        let chunks: Vec<Result<Frame<Bytes>, BoxError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"hello"))),
            Ok(Frame::data(Bytes::from(vec![b'x'; COALESCE + 1]))),
        ];
        let mut post = get("/stream");
        *post.method_mut() = Method::POST;
        *post.body_mut() =
            http_body_util::StreamBody::new(futures_util::stream::iter(chunks)).boxed_unsync();
        let (conn, mut server) = pair().await;
        let serve = tokio::spawn(async move {
            let got = read_until(&mut server, b"0\r\n\r\n").await;
            server
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            String::from_utf8(got).unwrap()
        });
        conn.send(post, &authority(), None, false)
            .await
            .ok()
            .unwrap();
        let wire = serve.await.unwrap();
        let big = format!(
            "{:x}\r\n{}\r\n0\r\n\r\n",
            COALESCE + 1,
            "x".repeat(COALESCE + 1)
        );
        assert!(
            wire.contains("transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
                && wire.ends_with(&big),
            "{}",
            &wire[..200]
        );
    }

    #[tokio::test]
    async fn an_early_answer_ends_the_upload_and_the_connection() {
        // The body never ends; the target answers 413 without reading it.
        let post = endless_post(&[b'x'; 1024]);
        let (conn, mut server) = pair().await;
        let (pool, home) = home();
        let serve = tokio::spawn(async move {
            read_until(&mut server, b"\r\n\r\n").await;
            server
                .write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            server
        });
        let head = tokio::time::timeout(
            Duration::from_secs(5),
            conn.send(post, &authority(), home, false),
        )
        .await
        .expect("the early answer was not noticed")
        .ok()
        .unwrap();
        assert_eq!(head.response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        drop(head);
        drop(serve.await.unwrap());
        assert_eq!(
            pool.idle_http1(),
            0,
            "a half-sent request's connection is not reused"
        );
    }

    #[tokio::test]
    async fn an_early_answer_is_relayed_even_when_the_target_closes_at_once() {
        let post = endless_post(&[b'x'; 16 * 1024]);
        let (conn, mut server) = pair().await;
        tokio::spawn(async move {
            read_until(&mut server, b"\r\n\r\n").await;
            server
                .write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await
                .unwrap();
            // Close the writing side only, as servers that answer early do:
            // the upload then fails while the answer is already here.
            server.shutdown().await.unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
        });
        let head = tokio::time::timeout(
            Duration::from_secs(5),
            conn.send(post, &authority(), None, false),
        )
        .await
        .expect("no answer")
        .ok()
        .expect("the 413 was lost");
        assert_eq!(head.response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn a_101_hands_over_the_connection_with_the_bytes_behind_it() {
        let mut req = get("/ws");
        req.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        req.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        let (conn, mut server) = pair().await;
        let serve = tokio::spawn(async move {
            read_until(&mut server, b"\r\n\r\n").await;
            server
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\nframe")
                .await
                .unwrap();
            server
        });
        let head = conn
            .send(req, &authority(), None, false)
            .await
            .ok()
            .unwrap();
        assert_eq!(head.response.status(), StatusCode::SWITCHING_PROTOCOLS);
        let (_io, early) = head.upgraded.expect("the connection");
        let _server = serve.await.unwrap();
        assert_eq!(&early[..], b"frame");
    }

    #[tokio::test]
    async fn a_101_nobody_asked_for_is_an_error() {
        let (_, got, _) = exchange(
            get("/"),
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n",
            false,
        )
        .await;
        assert!(got.is_err());
    }

    #[test]
    fn answers_read_the_same_whole_and_byte_by_byte() {
        for answer in [
            &b"\0HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"[..],
            b"\0HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx: 1\r\n\r\n",
            b"\x01HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n",
            b"\x02HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\nframe",
            b"\0HTTP/1.0 200 OK\r\n\r\nuntil close",
            b"\0HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\nok\n0\n\n",
        ] {
            fuzz_logic::response(answer);
        }
    }

    #[tokio::test]
    async fn a_reused_connection_found_closed_hands_the_request_back() {
        let (conn, server) = pair().await;
        drop(server);
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Writing may succeed once on a socket the peer closed; the answer
        // then never comes. Either way the caller learns it failed.
        match conn.send(get("/"), &authority(), None, true).await {
            Ok(_) => panic!("answered by a closed socket"),
            Err(Failed { unsent, error }) => {
                if unsent.is_none() {
                    assert!(matches!(
                        error,
                        Http1Error::ClosedBeforeHead | Http1Error::Io(_)
                    ));
                }
            }
        }
    }
}
