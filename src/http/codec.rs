//! HTTP/1.1 message framing (RFC 9112) shared by both sides of the proxy:
//! the server side reading requests from clients and writing responses,
//! and the upstream side writing requests to targets and reading their
//! responses. Header blocks become header maps that share the head's bytes,
//! bodies are delimited by length, chunks or the end of the connection, and
//! outgoing bodies are written with the framing their length calls for.
//!
//! Nothing here does I/O except [`BodyWriter`] and [`poll_write_from`]; the
//! decoder works on a buffer that its caller fills.

use std::io::{self, Write};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::http::body::{Body, BoxError};

/// Longest chunk-size line, extensions included.
pub const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Largest trailer block after a chunked body.
pub const MAX_TRAILERS: usize = 64 * 1024;
/// Most header fields in a trailer block.
const MAX_TRAILER_FIELDS: usize = 128;
/// Smallest read; bodies read in larger steps when they are known to be large.
pub const READ_MIN: usize = 8 * 1024;
/// Largest single read into a buffer.
pub const READ_MAX: usize = 64 * 1024;
/// Data frames up to this size are copied next to the head (one write);
/// larger ones are written from their own buffer.
pub const COALESCE: usize = 16 * 1024;

/// A message whose framing breaks RFC 9112.
#[derive(Debug, thiserror::Error)]
pub enum FramingError {
    /// Content-Length values that are not one number.
    #[error("invalid Content-Length")]
    BadContentLength,
    /// A transfer coding other than a single `chunked`.
    #[error("unsupported Transfer-Encoding")]
    UnsupportedTransferEncoding,
    /// A request with both Transfer-Encoding and Content-Length.
    #[error("both Transfer-Encoding and Content-Length")]
    Ambiguous,
    /// A chunked body that breaks the chunk syntax.
    #[error("malformed chunked body: {0}")]
    BadChunk(&'static str),
}

/// How an incoming body is delimited, and where its decoder stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// This many bytes remain.
    Length(u64),
    /// Chunked, in this state.
    Chunked(Chunk),
    /// Until the peer closes the connection (responses only).
    UntilClose,
    /// Read to its end.
    Done,
}

/// Where a chunked body's decoder stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// This many bytes of chunk data remain.
    Data(u64),
    /// Expecting the CRLF after chunk data.
    DataEnd,
    /// After the last chunk: trailer fields, then an empty line.
    Trailers,
}

/// One step of decoding.
pub enum Decoded {
    /// A data or trailers frame.
    Frame(Frame<Bytes>),
    /// The body is over.
    End,
    /// More bytes are needed; about this many would be useful.
    More(u64),
}

impl Framing {
    /// Whether the body has no more bytes to give.
    pub fn is_end(&self) -> bool {
        matches!(self, Framing::Empty | Framing::Done | Framing::Length(0))
    }

    /// The body's remaining length, when known.
    pub fn size_hint(&self) -> SizeHint {
        match self {
            Framing::Empty | Framing::Done => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(*n),
            _ => SizeHint::default(),
        }
    }

    /// Decodes the next frame from `buf`, consuming what it uses.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, FramingError> {
        loop {
            match *self {
                Framing::Empty | Framing::Done | Framing::Length(0) => {
                    *self = Framing::Done;
                    return Ok(Decoded::End);
                }
                Framing::Length(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::More(left));
                    }
                    let n = (buf.len() as u64).min(left) as usize;
                    *self = Framing::Length(left - n as u64);
                    return Ok(Decoded::Frame(Frame::data(buf.split_to(n).freeze())));
                }
                Framing::UntilClose => {
                    if buf.is_empty() {
                        return Ok(Decoded::More(READ_MAX as u64));
                    }
                    return Ok(Decoded::Frame(Frame::data(buf.split().freeze())));
                }
                Framing::Chunked(state) => {
                    if let Some(decoded) = self.decode_chunked(state, buf)? {
                        return Ok(decoded);
                    }
                }
            }
        }
    }

    /// One step of the chunked decoder: `None` when the state moved on and
    /// decoding should continue.
    fn decode_chunked(
        &mut self,
        state: Chunk,
        buf: &mut BytesMut,
    ) -> Result<Option<Decoded>, FramingError> {
        match state {
            Chunk::Size => match memchr::memmem::find(buf, b"\r\n") {
                Some(end) => {
                    let size = parse_chunk_size(&buf[..end])?;
                    buf.advance(end + 2);
                    *self = Framing::Chunked(if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    });
                    Ok(None)
                }
                None if buf.len() > MAX_CHUNK_LINE => {
                    Err(FramingError::BadChunk("chunk-size line too long"))
                }
                None => Ok(Some(Decoded::More(0))),
            },
            Chunk::Data(left) => {
                if buf.is_empty() {
                    return Ok(Some(Decoded::More(left)));
                }
                let n = (buf.len() as u64).min(left) as usize;
                let data = buf.split_to(n).freeze();
                let left = left - n as u64;
                *self = Framing::Chunked(if left == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left)
                });
                Ok(Some(Decoded::Frame(Frame::data(data))))
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    return Ok(Some(Decoded::More(0)));
                }
                if &buf[..2] != b"\r\n" {
                    return Err(FramingError::BadChunk("chunk data not followed by CRLF"));
                }
                buf.advance(2);
                *self = Framing::Chunked(Chunk::Size);
                Ok(None)
            }
            Chunk::Trailers => {
                if buf.starts_with(b"\r\n") {
                    buf.advance(2);
                    *self = Framing::Done;
                    return Ok(Some(Decoded::End));
                }
                if let Some(end) = memchr::memmem::find(buf, b"\r\n\r\n") {
                    let block = buf.split_to(end + 4).freeze();
                    let trailers = parse_trailers(&block)?;
                    *self = Framing::Done;
                    return Ok(Some(Decoded::Frame(Frame::trailers(trailers))));
                }
                if buf.len() > MAX_TRAILERS {
                    return Err(FramingError::BadChunk("trailers too large"));
                }
                Ok(Some(Decoded::More(0)))
            }
        }
    }
}

/// The size of a chunk from its size line (extensions after `;` ignored).
fn parse_chunk_size(line: &[u8]) -> Result<u64, FramingError> {
    let digits = line
        .split(|b| *b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(FramingError::BadChunk("invalid chunk size"));
    }
    let text =
        std::str::from_utf8(digits).map_err(|_| FramingError::BadChunk("invalid chunk size"))?;
    u64::from_str_radix(text, 16).map_err(|_| FramingError::BadChunk("invalid chunk size"))
}

/// Trailer fields (`name: value` lines ending with an empty line).
fn parse_trailers(block: &Bytes) -> Result<HeaderMap, FramingError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILER_FIELDS];
    match httparse::parse_headers(block, &mut fields) {
        Ok(httparse::Status::Complete((_, parsed))) => {
            let mut map = HeaderMap::with_capacity(parsed.len());
            for h in parsed {
                let name = HeaderName::from_bytes(h.name.as_bytes())
                    .map_err(|_| FramingError::BadChunk("invalid trailer name"))?;
                let value = HeaderValue::from_bytes(h.value)
                    .map_err(|_| FramingError::BadChunk("invalid trailer value"))?;
                map.append(name, value);
            }
            Ok(map)
        }
        Ok(httparse::Status::Partial) => Err(FramingError::BadChunk("incomplete trailers")),
        Err(_) => Err(FramingError::BadChunk("invalid trailers")),
    }
}

/// RFC 9112 §6.3 for a message that may have a body: `Transfer-Encoding:
/// chunked` or `Content-Length`, or neither. Only `chunked` is understood
/// (as nginx): another transfer coding would otherwise pass undeclared.
/// Returns the framing and whether Content-Length came with
/// Transfer-Encoding (a smuggling shape: a response is then read as
/// chunked and its connection not reused; a request is refused).
/// Without either header a response runs until close and a request has
/// no body.
pub fn body_framing(headers: &HeaderMap, request: bool) -> Result<(Framing, bool), FramingError> {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        let mut codings = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(|t| t.trim_ascii())
            .filter(|t| !t.is_empty());
        let chunked = codings
            .next()
            .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"));
        if !chunked || codings.next().is_some() {
            return Err(FramingError::UnsupportedTransferEncoding);
        }
        let both = headers.contains_key(header::CONTENT_LENGTH);
        if both && request {
            return Err(FramingError::Ambiguous);
        }
        return Ok((Framing::Chunked(Chunk::Size), both));
    }
    Ok(match content_length(headers)? {
        Some(0) => (Framing::Empty, false),
        Some(n) => (Framing::Length(n), false),
        None if request => (Framing::Empty, false),
        None => (Framing::UntilClose, false),
    })
}

/// The Content-Length, when there is one; repeated values must agree.
pub fn content_length(headers: &HeaderMap) -> Result<Option<u64>, FramingError> {
    let mut length: Option<u64> = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|b| *b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || !part.iter().all(u8::is_ascii_digit) || part.len() > 19 {
                return Err(FramingError::BadContentLength);
            }
            let n: u64 = std::str::from_utf8(part)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(FramingError::BadContentLength)?;
            if length.is_some_and(|l| l != n) {
                return Err(FramingError::BadContentLength);
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// Whether a Connection header lists `token`.
pub fn has_token(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// A short description of an httparse error, for logs and errors.
pub fn parse_error(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status line",
        httparse::Error::Token => "invalid token",
        httparse::Error::Version => "not HTTP/1.x",
        httparse::Error::TooManyHeaders => "too many header fields",
    }
}

/// Where one header field sits in a head: name and value as offset and length.
#[derive(Clone, Copy, Default)]
struct Span {
    name: (u32, u32),
    value: (u32, u32),
}

/// Header fields kept without a heap allocation (more go to a `Vec`).
const INLINE_SPANS: usize = 32;

/// Where each parsed field sits relative to the start of the parsed
/// buffer, so that the header map can be built after the head's bytes have
/// been split off the buffer and frozen (httparse's fields borrow the
/// buffer until then).
pub struct Spans {
    inline: [Span; INLINE_SPANS],
    spilled: Vec<Span>,
    len: usize,
}

impl Spans {
    /// Records the fields httparse found in `base`.
    pub fn new(base: &[u8], fields: &[httparse::Header<'_>]) -> Spans {
        let start = base.as_ptr() as usize;
        let span = |h: &httparse::Header<'_>| Span {
            name: (
                (h.name.as_ptr() as usize - start) as u32,
                h.name.len() as u32,
            ),
            value: (
                (h.value.as_ptr() as usize - start) as u32,
                h.value.len() as u32,
            ),
        };
        let mut spans = Spans {
            inline: [Span::default(); INLINE_SPANS],
            spilled: Vec::new(),
            len: fields.len(),
        };
        if fields.len() <= INLINE_SPANS {
            for (slot, h) in spans.inline.iter_mut().zip(fields) {
                *slot = span(h);
            }
        } else {
            spans.spilled = fields.iter().map(span).collect();
        }
        spans
    }

    fn as_slice(&self) -> &[Span] {
        if self.len <= INLINE_SPANS {
            &self.inline[..self.len]
        } else {
            &self.spilled
        }
    }

    /// The header map of `head` (the bytes the spans were taken from),
    /// values sharing its bytes; `extra` leaves room for fields the gateway
    /// adds, so that the map need not grow.
    pub fn header_map(&self, head: &Bytes, extra: usize) -> Result<HeaderMap, &'static str> {
        let spans = self.as_slice();
        let mut headers = HeaderMap::with_capacity(spans.len() + extra);
        for s in spans {
            let (n, nl) = (s.name.0 as usize, s.name.1 as usize);
            let (v, vl) = (s.value.0 as usize, s.value.1 as usize);
            let name =
                HeaderName::from_bytes(&head[n..n + nl]).map_err(|_| "invalid header name")?;
            let value = HeaderValue::from_maybe_shared(head.slice(v..v + vl))
                .map_err(|_| "invalid header value")?;
            headers.append(name, value);
        }
        Ok(headers)
    }
}

/// Writes `name: value` lines for every field of `headers` but those `skip` rejects.
pub fn write_fields(out: &mut Vec<u8>, headers: &HeaderMap, skip: impl Fn(&HeaderName) -> bool) {
    for (name, value) in headers {
        if skip(name) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Writes the framing header for a body of `length` (`None`: unknown,
/// sent chunked) and says how the body goes on the wire.
pub fn write_framing(out: &mut Vec<u8>, length: Option<u64>) -> Outgoing {
    match length {
        Some(len) => {
            // Writing into a Vec cannot fail.
            let _ = write!(out, "content-length: {len}\r\n");
            Outgoing::AsIs
        }
        None => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            Outgoing::Chunked
        }
    }
}

/// How an outgoing body goes on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outgoing {
    /// No body at all (not even an empty one is read).
    None,
    /// The bytes as they are (Content-Length, or until close).
    AsIs,
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Why writing a message failed.
#[derive(Debug)]
pub enum WriteError {
    /// The connection failed.
    Io(io::Error),
    /// The body being sent failed.
    Body(BoxError),
}

/// An outgoing message: the bytes in `out` (its head, and small frames
/// coalesced behind it), then the body's frames in the framing chosen.
pub struct BodyWriter {
    body: Body,
    framing: Outgoing,
    done: bool,
    /// A large data frame being written from its own buffer.
    pending: Option<Bytes>,
    /// Bytes of `pending` already written.
    pending_written: usize,
    /// A chunk's closing CRLF is due once `pending` is written.
    pending_crlf: bool,
    /// Bytes of `out` already written.
    written: usize,
}

impl BodyWriter {
    /// Sends `body` framed as `framing`, after what the caller put in `out`.
    pub fn new(body: Body, framing: Outgoing) -> BodyWriter {
        let done = framing == Outgoing::None || body.is_end_stream();
        BodyWriter {
            body,
            framing,
            done,
            pending: None,
            pending_written: 0,
            pending_crlf: false,
            written: 0,
        }
    }

    /// Whether the body has been read to its end (and written, once
    /// `poll_write` has returned `Ready(Ok)`).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Writes `out` and the body frames until the body ends, then flushes.
    /// Frames that are ready at once go out in the same write as what is
    /// already in `out` (a head and a small body: one system call).
    pub fn poll_write<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        out: &mut Vec<u8>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), WriteError>> {
        loop {
            // Gather what the body has ready behind what is still unwritten.
            while !self.done && self.pending.is_none() && out.len() - self.written < COALESCE {
                match Pin::new(&mut self.body).poll_frame(cx) {
                    Poll::Pending => break,
                    Poll::Ready(next) => self.take_frame(next, out)?,
                }
            }
            let unwritten = self.written < out.len();
            ready!(poll_write_from(io, cx, out, &mut self.written)).map_err(WriteError::Io)?;
            if let Some(data) = &self.pending {
                ready!(poll_write_from(io, cx, data, &mut self.pending_written))
                    .map_err(WriteError::Io)?;
                self.pending = None;
                self.pending_written = 0;
                out.clear();
                self.written = 0;
                if self.pending_crlf {
                    self.pending_crlf = false;
                    out.extend_from_slice(b"\r\n");
                }
                continue;
            }
            out.clear();
            self.written = 0;
            if self.done {
                ready!(Pin::new(&mut *io).poll_flush(cx)).map_err(WriteError::Io)?;
                return Poll::Ready(Ok(()));
            }
            if !unwritten {
                // Nothing was buffered and the body had nothing ready: its
                // poll above will wake this task.
                return Poll::Pending;
            }
        }
    }

    /// Adds one polled frame to `out` (or, when large, to `pending`).
    fn take_frame(
        &mut self,
        next: Option<Result<Frame<Bytes>, BoxError>>,
        out: &mut Vec<u8>,
    ) -> Result<(), WriteError> {
        let chunked = self.framing == Outgoing::Chunked;
        match next {
            None => {
                self.done = true;
                if chunked {
                    out.extend_from_slice(b"0\r\n\r\n");
                }
            }
            Some(Err(e)) => return Err(WriteError::Body(e)),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    if data.is_empty() {
                        return Ok(());
                    }
                    if chunked {
                        let _ = write!(out, "{:x}\r\n", data.len());
                    }
                    if data.len() <= COALESCE {
                        out.extend_from_slice(&data);
                        if chunked {
                            out.extend_from_slice(b"\r\n");
                        }
                    } else {
                        // Written from its own buffer, after what is in `out`.
                        self.pending = Some(data);
                        self.pending_crlf = chunked;
                    }
                }
                Err(frame) => {
                    // Trailers travel only in chunked bodies; elsewhere
                    // they are dropped, as HTTP/1.1 has no place for them.
                    if let (true, Ok(trailers)) = (chunked, frame.into_trailers()) {
                        out.extend_from_slice(b"0\r\n");
                        write_fields(out, &trailers, |_| false);
                        out.extend_from_slice(b"\r\n");
                        self.done = true;
                    }
                }
            },
        }
        Ok(())
    }
}

/// Reads more of a body into `buf`, in a step sized by what the decoder
/// wants (`Decoded::More`); `Ok(0)` at the end of the stream.
pub fn poll_fill<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    want: u64,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    buf.reserve(want.clamp(READ_MIN as u64, READ_MAX as u64) as usize);
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// Writes `buf[*written..]`, counting progress in `written` (so that a
/// write cut short by `Pending` resumes where it stopped).
pub fn poll_write_from<W: AsyncWrite + Unpin>(
    io: &mut W,
    cx: &mut Context<'_>,
    buf: &[u8],
    written: &mut usize,
) -> Poll<io::Result<()>> {
    while *written < buf.len() {
        let n = ready!(Pin::new(&mut *io).poll_write(cx, &buf[*written..]))?;
        if n == 0 {
            return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero)));
        }
        *written += n;
    }
    Poll::Ready(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(fields: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (n, v) in fields {
            m.append(*n, HeaderValue::from_static(v));
        }
        m
    }

    /// Decodes all of `wire` as `framing`, fed in `step`-byte pieces.
    fn decode_all(
        mut framing: Framing,
        wire: &[u8],
        step: usize,
    ) -> Result<(Vec<u8>, Option<HeaderMap>), FramingError> {
        let mut buf = BytesMut::new();
        let mut fed = 0;
        let (mut data, mut trailers) = (Vec::new(), None);
        loop {
            match framing.decode(&mut buf)? {
                Decoded::Frame(f) => match f.into_data() {
                    Ok(d) => data.extend_from_slice(&d),
                    Err(f) => trailers = f.into_trailers().ok(),
                },
                Decoded::End => return Ok((data, trailers)),
                Decoded::More(_) => {
                    assert!(fed < wire.len(), "ran out of input");
                    let end = (fed + step).min(wire.len());
                    buf.extend_from_slice(&wire[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_in_any_split_with_trailers() {
        let wire = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 42\r\n\r\n";
        for step in [1, 2, 3, 7, wire.len()] {
            let (data, trailers) = decode_all(Framing::Chunked(Chunk::Size), wire, step).unwrap();
            assert_eq!(data, b"hello world");
            assert_eq!(trailers.unwrap()["x-sum"], "42");
        }
        let (data, trailers) = decode_all(Framing::Chunked(Chunk::Size), b"0\r\n\r\n", 1).unwrap();
        assert!(data.is_empty() && trailers.is_none());
    }

    #[test]
    fn broken_chunks_are_errors() {
        for wire in [
            &b"zz\r\n"[..],
            b"5\r\nhelloXX",
            b"-1\r\n",
            b"1234567890abcdef0\r\n",
        ] {
            assert!(
                decode_all(Framing::Chunked(Chunk::Size), wire, 64).is_err(),
                "{wire:?}"
            );
        }
        let long = vec![b'1'; MAX_CHUNK_LINE + 10];
        assert!(decode_all(Framing::Chunked(Chunk::Size), &long, long.len()).is_err());
    }

    #[test]
    fn sized_bodies_stop_at_their_length() {
        let mut framing = Framing::Length(3);
        let mut buf = BytesMut::from(&b"abcdef"[..]);
        let Decoded::Frame(f) = framing.decode(&mut buf).unwrap() else {
            panic!()
        };
        assert_eq!(f.into_data().unwrap(), "abc");
        assert!(matches!(framing.decode(&mut buf).unwrap(), Decoded::End));
        assert_eq!(&buf[..], b"def", "the next message stays in the buffer");
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let chunked = Framing::Chunked(Chunk::Size);
        assert_eq!(
            body_framing(&map(&[("transfer-encoding", "chunked")]), true).unwrap(),
            (chunked, false)
        );
        assert_eq!(
            body_framing(&map(&[("content-length", "10")]), true).unwrap(),
            (Framing::Length(10), false)
        );
        assert_eq!(
            body_framing(&map(&[("content-length", "10, 10")]), true).unwrap(),
            (Framing::Length(10), false)
        );
        assert_eq!(
            body_framing(&map(&[]), true).unwrap(),
            (Framing::Empty, false)
        );
        assert_eq!(
            body_framing(&map(&[]), false).unwrap(),
            (Framing::UntilClose, false)
        );
        let both = map(&[("transfer-encoding", "chunked"), ("content-length", "3")]);
        assert!(matches!(
            body_framing(&both, true),
            Err(FramingError::Ambiguous)
        ));
        assert_eq!(body_framing(&both, false).unwrap(), (chunked, true));
        for bad in [
            map(&[("content-length", "1, 2")]),
            map(&[("content-length", "-1")]),
            map(&[("content-length", "1"), ("content-length", "2")]),
            map(&[("content-length", "+5")]),
            map(&[("transfer-encoding", "gzip, chunked")]),
            map(&[("transfer-encoding", "chunked, gzip")]),
            map(&[("transfer-encoding", "identity")]),
        ] {
            assert!(body_framing(&bad, true).is_err(), "{bad:?}");
        }
    }
}
