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
use http::Version;
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
    /// Transfer-Encoding whose final coding is not one `chunked` (RFC 9112
    /// §6.3: the body's end cannot be found).
    #[error("Transfer-Encoding does not end in a single chunked")]
    ChunkedNotFinal,
    /// A transfer coding before `chunked` that the gateway does not implement.
    #[error("unsupported Transfer-Encoding")]
    UnsupportedTransferEncoding,
    /// Both Transfer-Encoding and Content-Length.
    #[error("both Transfer-Encoding and Content-Length")]
    Ambiguous,
    /// Transfer-Encoding in an HTTP/1.0 message (RFC 9112 §6.1: its
    /// framing is faulty).
    #[error("Transfer-Encoding in an HTTP/1.0 message")]
    TransferEncodingInHttp10,
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
    /// After the last chunk: trailer fields, then an empty line; this many
    /// bytes of the buffer are whole trailer lines already checked.
    Trailers(usize),
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
    /// decoding should continue. Every line of a chunked body ends with
    /// CRLF; a bare LF is an error at once rather than a wait for a CRLF
    /// that may never come.
    fn decode_chunked(
        &mut self,
        state: Chunk,
        buf: &mut BytesMut,
    ) -> Result<Option<Decoded>, FramingError> {
        match state {
            Chunk::Size => {
                let window = &buf[..buf.len().min(MAX_CHUNK_LINE)];
                let Some(lf) = memchr::memchr(b'\n', window) else {
                    if buf.len() > MAX_CHUNK_LINE {
                        return Err(FramingError::BadChunk("chunk-size line too long"));
                    }
                    return Ok(Some(Decoded::More(0)));
                };
                let size = parse_chunk_line(line_before(buf, lf)?)?;
                buf.advance(lf + 1);
                *self = Framing::Chunked(if size == 0 {
                    Chunk::Trailers(0)
                } else {
                    Chunk::Data(size)
                });
                Ok(None)
            }
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
                // Judged byte by byte: data longer than its size, or ending
                // in a bare LF, fails on its first wrong byte.
                match buf.get(..2.min(buf.len())) {
                    Some(b"\r\n") => {}
                    Some(b"" | b"\r") => return Ok(Some(Decoded::More(0))),
                    _ => return Err(FramingError::BadChunk("chunk data not followed by CRLF")),
                }
                buf.advance(2);
                *self = Framing::Chunked(Chunk::Size);
                Ok(None)
            }
            Chunk::Trailers(checked) => {
                // Line by line from where the last call stopped, so that a
                // section arriving byte by byte is not scanned again each time.
                let mut at = checked;
                loop {
                    let lf = memchr::memchr(b'\n', &buf[at..]).map(|i| at + i);
                    if lf.unwrap_or(buf.len()) >= MAX_TRAILERS {
                        // The same verdict whether the section came whole or in pieces.
                        return Err(FramingError::BadChunk("trailers too large"));
                    }
                    let Some(lf) = lf else {
                        *self = Framing::Chunked(Chunk::Trailers(at));
                        return Ok(Some(Decoded::More(0)));
                    };
                    let line = line_before(&buf[at..], lf - at)?;
                    if !line.is_empty() {
                        at = lf + 1;
                        continue;
                    }
                    let block = buf.split_to(lf + 1).freeze();
                    // Done only once the section is known good: a body that
                    // failed must not look finished (its connection would
                    // be kept for a next request).
                    let trailers = if at == 0 {
                        HeaderMap::new()
                    } else {
                        parse_trailers(&block)?
                    };
                    *self = Framing::Done;
                    if trailers.is_empty() {
                        return Ok(Some(Decoded::End));
                    }
                    return Ok(Some(Decoded::Frame(Frame::trailers(trailers))));
                }
            }
        }
    }
}

/// The line that ends with the LF at `lf`, without its CRLF; an error when
/// the LF comes alone.
fn line_before(buf: &[u8], lf: usize) -> Result<&[u8], FramingError> {
    match lf.checked_sub(1).map(|cr| (cr, buf[cr])) {
        Some((cr, b'\r')) => Ok(&buf[..cr]),
        _ => Err(FramingError::BadChunk("line ends with a bare LF")),
    }
}

/// The size of a chunk from its size line (CRLF excluded), held to RFC 9112
/// §7.1: `1*HEXDIG [ chunk-ext ]`, where each extension is `BWS ";" BWS
/// token [ BWS "=" BWS ( token / quoted-string ) ]`. Whitespace after the
/// size is allowed; signs, `0x`, leading whitespace, sizes past 64 bits and
/// any byte outside that grammar (a bare CR among them) are errors.
/// Extensions are checked, then dropped: the gateway writes its own chunks.
fn parse_chunk_line(line: &[u8]) -> Result<u64, FramingError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(FramingError::BadChunk("invalid chunk size"));
    }
    let mut size: u64 = 0;
    for &b in &line[..digits] {
        // A hex digit always converts; the fallback is never taken.
        let digit = u64::from((b as char).to_digit(16).unwrap_or(0));
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(digit))
            .ok_or(FramingError::BadChunk("chunk size past 64 bits"))?;
    }
    check_chunk_ext(&line[digits..])?;
    Ok(size)
}

/// Checks the extensions after a chunk size (see [`parse_chunk_line`]).
fn check_chunk_ext(mut rest: &[u8]) -> Result<(), FramingError> {
    let bad = || FramingError::BadChunk("invalid chunk extension");
    loop {
        rest = skip_ws(rest);
        let Some(after) = rest.strip_prefix(b";") else {
            return if rest.is_empty() { Ok(()) } else { Err(bad()) };
        };
        rest = skip_token(skip_ws(after)).ok_or_else(bad)?;
        let after_name = skip_ws(rest);
        if let Some(value) = after_name.strip_prefix(b"=") {
            let value = skip_ws(value);
            rest = match value.first() {
                Some(b'"') => skip_quoted(value).ok_or_else(bad)?,
                _ => skip_token(value).ok_or_else(bad)?,
            };
        }
    }
}

fn skip_ws(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|b| matches!(b, b' ' | b'\t')).count();
    &s[n..]
}

/// What follows a token (`1*tchar`, RFC 9110 §5.6.2) at the start of `s`.
fn skip_token(s: &[u8]) -> Option<&[u8]> {
    let n = s.iter().take_while(|b| is_tchar(**b)).count();
    (n > 0).then(|| &s[n..])
}

/// What follows a quoted-string (RFC 9110 §5.6.4) at the start of `s`.
fn skip_quoted(s: &[u8]) -> Option<&[u8]> {
    let mut i = 1;
    loop {
        match *s.get(i)? {
            b'"' => return Some(&s[i + 1..]),
            b'\\' => {
                let escaped = *s.get(i + 1)?;
                if !(escaped == b'\t'
                    || escaped == b' '
                    || escaped.is_ascii_graphic()
                    || escaped >= 0x80)
                {
                    return None;
                }
                i += 2;
            }
            b'\t' | b' ' | 0x21..=0x7e | 0x80..=0xff => i += 1,
            _ => return None,
        }
    }
}

/// A token character (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Trailer fields (`name: value` lines ending with an empty line), less
/// those that may not be trailers.
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
                if !is_forbidden_trailer(&name) {
                    map.append(name, value);
                }
            }
            Ok(map)
        }
        Ok(httparse::Status::Partial) => Err(FramingError::BadChunk("incomplete trailers")),
        Err(_) => Err(FramingError::BadChunk("invalid trailers")),
    }
}

/// Fields that may not travel as trailers (RFC 9110 §6.5.1): framing,
/// routing, authentication, cookies, content metadata, caching, and the
/// fields the gateway itself vouches for. A receiver could otherwise merge
/// them into the header section after the gateway has checked it. The one
/// list, for both directions; fields the configuration names (identity
/// headers) join it when those policies come.
const FORBIDDEN_TRAILERS: [HeaderName; 13] = [
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::HOST,
    header::TE,
    header::TRAILER,
    header::AUTHORIZATION,
    header::PROXY_AUTHORIZATION,
    header::COOKIE,
    header::SET_COOKIE,
    header::CONTENT_TYPE,
    header::CONTENT_ENCODING,
    header::CACHE_CONTROL,
    HeaderName::from_static("x-request-id"),
];

/// Whether `name` is dropped from trailers ([`FORBIDDEN_TRAILERS`] and every
/// `X-Forwarded-*`).
pub fn is_forbidden_trailer(name: &HeaderName) -> bool {
    FORBIDDEN_TRAILERS.contains(name) || name.as_str().starts_with("x-forwarded-")
}

/// RFC 9112 §6.1 and §6.3 for a message that may have a body:
/// `Transfer-Encoding` ending in one `chunked`, or `Content-Length`, or
/// neither. Refused: Transfer-Encoding with Content-Length, Transfer-Encoding
/// in HTTP/1.0, `chunked` missing, repeated or not last (400), and any other
/// transfer coding (501; nginx does the same), as it would otherwise pass
/// undeclared. A response is held to the same rules: the gateway would
/// rather answer 502 than read one two ways. Without either header a
/// response runs until close and a request has no body.
pub fn body_framing(
    headers: &HeaderMap,
    version: Version,
    request: bool,
) -> Result<Framing, FramingError> {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        if version == Version::HTTP_10 {
            return Err(FramingError::TransferEncodingInHttp10);
        }
        if headers.contains_key(header::CONTENT_LENGTH) {
            return Err(FramingError::Ambiguous);
        }
        return transfer_codings(headers).map(|()| Framing::Chunked(Chunk::Size));
    }
    Ok(match content_length(headers)? {
        Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
        None if request => Framing::Empty,
        None => Framing::UntilClose,
    })
}

/// Checks that the transfer codings (every Transfer-Encoding field, in
/// order, empty list elements skipped) end in one `chunked` and hold
/// nothing else.
fn transfer_codings(headers: &HeaderMap) -> Result<(), FramingError> {
    let mut codings = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
        .peekable();
    let mut found = false;
    let mut other = false;
    while let Some(coding) = codings.next() {
        let chunked = coding.eq_ignore_ascii_case(b"chunked");
        let last = codings.peek().is_none();
        if (chunked && (found || !last)) || (!chunked && last) {
            return Err(FramingError::ChunkedNotFinal);
        }
        found |= chunked;
        other |= !chunked;
    }
    match (found, other) {
        (false, _) => Err(FramingError::ChunkedNotFinal),
        (true, true) => Err(FramingError::UnsupportedTransferEncoding),
        (true, false) => Ok(()),
    }
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
    /// Some of the message has gone out.
    started: bool,
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
            started: false,
        }
    }

    /// Whether not one byte of the message has been written yet (so that
    /// a failure can still be answered with a whole other message).
    pub fn wrote_nothing(&self) -> bool {
        !self.started && self.written == 0
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
            self.started |= unwritten;
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
                        write_fields(out, &trailers, is_forbidden_trailer);
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

/// Entry points for the fuzz targets in `fuzz/`, beside the decoder they
/// exercise, so that they build with the crate and unit tests run them.
#[doc(hidden)]
pub mod fuzz_logic {
    use super::*;

    /// What decoding a body gave.
    #[derive(Debug, PartialEq, Eq)]
    pub struct Read {
        /// The data frames, joined.
        pub data: Vec<u8>,
        /// The trailer fields, in order.
        pub trailers: Vec<(HeaderName, HeaderValue)>,
        /// Bytes the body took from the wire, or the error.
        pub verdict: Result<usize, String>,
    }

    /// Decodes `wire` as `framing`, fed `step` bytes at a time, until the
    /// body ends, fails, or wants more than there is. Checks what holds
    /// for every body: no data past a length, and a failed body never
    /// looks finished.
    pub fn decode(mut framing: Framing, wire: &[u8], step: usize) -> Read {
        let limit = match framing {
            Framing::Length(n) => n,
            Framing::Empty | Framing::Done => 0,
            _ => u64::MAX,
        };
        let mut buf = BytesMut::new();
        let (mut fed, mut data, mut trailers) = (0, Vec::new(), Vec::new());
        let verdict = loop {
            match framing.decode(&mut buf) {
                Err(e) => {
                    assert!(!framing.is_end(), "a failed body looks finished");
                    break Err(e.to_string());
                }
                Ok(Decoded::Frame(frame)) => match frame.into_data() {
                    Ok(d) => data.extend_from_slice(&d),
                    Err(frame) => {
                        let fields = frame.into_trailers().unwrap_or_default();
                        assert!(fields.keys().all(|n| !is_forbidden_trailer(n)));
                        let mut name = None;
                        for (n, v) in fields {
                            name = n.or(name);
                            if let Some(n) = &name {
                                trailers.push((n.clone(), v));
                            }
                        }
                    }
                },
                Ok(Decoded::End) => break Ok(fed - buf.len()),
                Ok(Decoded::More(_)) if fed == wire.len() => {
                    break Err("more input wanted".to_string());
                }
                Ok(Decoded::More(_)) => {
                    let end = (fed + step.max(1)).min(wire.len());
                    buf.extend_from_slice(&wire[fed..end]);
                    fed = end;
                }
            }
        };
        assert!(data.len() as u64 <= limit, "data past the body's length");
        Read {
            data,
            trailers,
            verdict,
        }
    }

    /// Decodes `data` (after its first byte) as a chunked body whole and in
    /// pieces of a size that first byte picks: both must read it the same
    /// way, or a message could mean one thing in one read and another in
    /// two.
    pub fn chunked(data: &[u8]) {
        let Some((&step, wire)) = data.split_first() else {
            return;
        };
        let chunked = Framing::Chunked(Chunk::Size);
        let whole = decode(chunked, wire, wire.len());
        let pieces = decode(chunked, wire, usize::from(step % 32) + 1);
        assert_eq!(
            whole,
            pieces,
            "read whole and in pieces of {}",
            step % 32 + 1
        );
    }
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

    /// What decoding a whole wire gave: the data and the trailers as
    /// `name: value` lines, or the error (`None`: it wanted more input).
    type Outcome = Result<(Vec<u8>, String), Option<FramingError>>;

    /// Decodes all of `wire` as `framing`, fed in `step`-byte pieces.
    fn decode_all(mut framing: Framing, wire: &[u8], step: usize) -> Outcome {
        let mut buf = BytesMut::new();
        let mut fed = 0;
        let (mut data, mut trailers) = (Vec::new(), String::new());
        loop {
            let decoded = framing.decode(&mut buf);
            if decoded.is_err() {
                // Its connection would otherwise be kept for a next message.
                assert!(!framing.is_end(), "a failed body looks finished");
            }
            match decoded.map_err(Some)? {
                Decoded::Frame(f) => match f.into_data() {
                    Ok(d) => data.extend_from_slice(&d),
                    Err(f) => {
                        for (name, value) in f.into_trailers().iter().flatten() {
                            let value = value.to_str().unwrap_or("?");
                            trailers.push_str(&format!("{name}: {value}\n"));
                        }
                    }
                },
                Decoded::End => return Ok((data, trailers)),
                Decoded::More(_) if fed == wire.len() => return Err(None),
                Decoded::More(_) => {
                    let end = (fed + step).min(wire.len());
                    buf.extend_from_slice(&wire[fed..end]);
                    fed = end;
                }
            }
        }
    }

    /// What a chunked wire decodes to.
    #[derive(Debug)]
    enum Expect {
        /// This data.
        Data(&'static [u8]),
        /// An error, as soon as the wire shows it (never a wait for input).
        Error,
        /// Nothing wrong so far; more input is needed.
        More,
    }
    use Expect::*;

    /// The chunked decoder's edge cases, one per line: the wire, and what
    /// it decodes to.
    #[rustfmt::skip]
    const CHUNKED: &[(&[u8], Expect)] = &[
        (b"0\r\n\r\n", Data(b"")),
        (b"5\r\nhello\r\n0\r\n\r\n", Data(b"hello")),
        (b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", Data(b"hello world")),
        (b"A\r\n0123456789\r\n0\r\n\r\n", Data(b"0123456789")),
        (b"a\r\n0123456789\r\n0\r\n\r\n", Data(b"0123456789")),
        (b"0005\r\nhello\r\n000\r\n\r\n", Data(b"hello")),
        (b"5 \r\nhello\r\n0\t\r\n\r\n", Data(b"hello")),
        (b"5;a\r\nhello\r\n0\r\n\r\n", Data(b"hello")),
        (b"5;a=b\r\nhello\r\n0;c=d\r\n\r\n", Data(b"hello")),
        (b"5 ; a = b ; c\r\nhello\r\n0\r\n\r\n", Data(b"hello")),
        (b"5;a=\"b c;d\"\r\nhello\r\n0\r\n\r\n", Data(b"hello")),
        (b"5;a=\"q\\\"uote\"\r\nhello\r\n0\r\n\r\n", Data(b"hello")),
        (b"5;a=\"\"\r\nhello\r\n0\r\n\r\n", Data(b"hello")),
        (b"5\r\nhe\r\nl\r\n0\r\n\r\n", Data(b"he\r\nl")),
        (b"ffffffffffffffff\r\n", More),
        (b"", More),
        (b"\r\n", Error),
        (b"zz\r\n", Error),
        (b"+5\r\nhello\r\n0\r\n\r\n", Error),
        (b"-5\r\nhello\r\n0\r\n\r\n", Error),
        (b"0x5\r\nhello\r\n0\r\n\r\n", Error),
        (b" 5\r\nhello\r\n0\r\n\r\n", Error),
        (b"10000000000000000\r\n", Error),
        (b"00000000000000000000000000001\r\nx\r\n0\r\n\r\n", Data(b"x")),
        (b"5\nhello\n0\n\n", Error),
        (b"5\nhello\r\n0\r\n\r\n", Error),
        (b"5\rhello\r\n0\r\n\r\n", Error),
        (b"5\r\r\nhello\r\n0\r\n\r\n", Error),
        (b"5;\r\nhello\r\n0\r\n\r\n", Error),
        (b"5;=b\r\nhello\r\n0\r\n\r\n", Error),
        (b"5;a=\r\nhello\r\n0\r\n\r\n", Error),
        (b"5;a=b c\r\nhello\r\n0\r\n\r\n", Error),
        (b"5;a=\"b\r\nhello\r\n0\r\n\r\n", Error),
        (b"5;a=\"b\"c\r\nhello\r\n0\r\n\r\n", Error),
        (b"5;a\nb\r\nhello\r\n0\r\n\r\n", Error),
        (b"5;a\0\r\nhello\r\n0\r\n\r\n", Error),
        (b"5;a=\"\x01\"\r\nhello\r\n0\r\n\r\n", Error),
        (b"5 5\r\nhello\r\n0\r\n\r\n", Error),
        (b"5\r\nhel\r\n0\r\n\r\n", Error),
        (b"5\r\nhello world\r\n0\r\n\r\n", Error),
        (b"5\r\nhello\n0\r\n\r\n", Error),
        (b"5\r\nhelloX", Error),
        (b"5\r\nhello\r\n0\n\n", Error),
        (b"5\r\nhello\r\n0\r\n\n", Error),
        (b"5\r\nhello\r\n0\r\nx: 1\n\r\n", Error),
        (b"5\r\nhello\r\n0\r\nx: 1\r\n\n", Error),
        (b"5\r\nhello\r\n0\r\nx 1\r\n\r\n", Error),
        (b"5\r\nhello\r\n0\r\nx: a\0b\r\n\r\n", Error),
        (b"5\r\nhello\r\n0\r\nx: a\rb\r\n\r\n", Error),
        (b"5\r\nhello\r\n0\r\nx: 1\r\n y\r\n\r\n", Error),
        (b"5\r\nhello\r\n0\r\nx : 1\r\n\r\n", Error),
    ];

    #[test]
    fn chunked_edge_cases_decode_or_fail_in_any_split() {
        for (wire, expected) in CHUNKED {
            for step in [1, 2, 3, 7, wire.len().max(1)] {
                let got = decode_all(Framing::Chunked(Chunk::Size), wire, step);
                let shown = String::from_utf8_lossy(wire);
                let ok = match (expected, &got) {
                    (Data(data), Ok((got, _))) => got == data,
                    (Error, Err(Some(_))) | (More, Err(None)) => true,
                    _ => false,
                };
                assert!(
                    ok,
                    "{shown:?} in steps of {step}: {got:?}, not {expected:?}"
                );
            }
        }
    }

    /// Trailer sections, one per line: the wire after the last chunk and
    /// the fields kept (`None`: an error).
    #[rustfmt::skip]
    const TRAILERS: &[(&[u8], Option<&str>)] = &[
        (b"\r\n", Some("")),
        (b"x-sum: 42\r\n\r\n", Some("x-sum: 42\n")),
        (b"x-sum: 42\r\ngrpc-status: 0\r\n\r\n", Some("x-sum: 42\ngrpc-status: 0\n")),
        (b"content-length: 5\r\ntransfer-encoding: chunked\r\nhost: h\r\nte: trailers\r\ntrailer: x\r\n\r\n", Some("")),
        (b"authorization: a\r\ncookie: c\r\nset-cookie: s\r\nproxy-authorization: p\r\n\r\n", Some("")),
        (b"content-type: t\r\ncontent-encoding: gzip\r\ncache-control: no-cache\r\n\r\n", Some("")),
        (b"x-forwarded-for: 1.2.3.4\r\nX-Forwarded-Proto: https\r\nx-request-id: r\r\nx-ok: 1\r\n\r\n", Some("x-ok: 1\n")),
        (b"x-sum: 42\n\r\n", None),
        (b"x-sum: 42\r\n\n", None),
        (b"\n", None),
    ];

    #[test]
    fn trailers_keep_only_the_fields_allowed_there() {
        for (section, expected) in TRAILERS {
            let wire = [&b"0\r\n"[..], section].concat();
            for step in [1, 4, wire.len()] {
                let got = decode_all(Framing::Chunked(Chunk::Size), &wire, step);
                let shown = String::from_utf8_lossy(section);
                match expected {
                    Some(fields) => {
                        assert_eq!(got.ok().map(|g| g.1).as_deref(), Some(*fields), "{shown:?}")
                    }
                    None => assert!(matches!(got, Err(Some(_))), "{shown:?}: {got:?}"),
                }
            }
        }
    }

    #[test]
    fn every_edge_case_reads_the_same_whole_and_in_pieces() {
        for (wire, _) in CHUNKED {
            for step in 0..32u8 {
                fuzz_logic::chunked(&[&[step][..], wire].concat());
            }
        }
        for (section, _) in TRAILERS {
            fuzz_logic::chunked(&[&b"\x05"[..], b"0\r\n", section].concat());
        }
    }

    #[test]
    fn a_long_trailer_section_is_an_error_whole_or_in_pieces() {
        let mut wire = b"0\r\n".to_vec();
        while wire.len() < MAX_TRAILERS + 100 {
            wire.extend_from_slice(
                b"x-long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
            );
        }
        wire.extend_from_slice(b"\r\n");
        for step in [7, wire.len()] {
            let read = fuzz_logic::decode(Framing::Chunked(Chunk::Size), &wire, step);
            assert!(read.verdict.is_err(), "in steps of {step}");
        }
    }

    #[test]
    fn a_long_chunk_size_line_is_an_error_without_its_end() {
        let long = [&b"1;a="[..], &[b'b'; MAX_CHUNK_LINE + 10]].concat();
        assert!(matches!(
            decode_all(Framing::Chunked(Chunk::Size), &long, long.len()),
            Err(Some(_))
        ));
    }

    #[test]
    fn trailers_are_not_written_with_forbidden_fields() {
        let trailers = map(&[
            ("x-sum", "42"),
            ("content-length", "5"),
            ("x-forwarded-for", "1"),
        ]);
        let mut out = Vec::new();
        write_fields(&mut out, &trailers, is_forbidden_trailer);
        assert_eq!(out, b"x-sum: 42\r\n");
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

    /// Header fields as a test writes them.
    type Fields = &'static [(&'static str, &'static str)];

    /// Framing headers, one case per line: the fields, whether it is a
    /// request, and the framing or the error.
    #[test]
    #[rustfmt::skip]
    fn framing_follows_rfc_9112() {
        use FramingError as E;
        let chunked = Framing::Chunked(Chunk::Size);
        let cases: &[(Fields, bool, Result<Framing, FramingError>)] = &[
            (&[("transfer-encoding", "chunked")], true, Ok(chunked)),
            (&[("transfer-encoding", "CHUNKED")], true, Ok(chunked)),
            (&[("transfer-encoding", ", chunked ,")], true, Ok(chunked)),
            (&[("content-length", "10")], true, Ok(Framing::Length(10))),
            (&[("content-length", "10, 10")], true, Ok(Framing::Length(10))),
            (&[("content-length", "10"), ("content-length", "10")], true, Ok(Framing::Length(10))),
            (&[("content-length", "007")], true, Ok(Framing::Length(7))),
            (&[("content-length", "0")], true, Ok(Framing::Empty)),
            (&[], true, Ok(Framing::Empty)),
            (&[], false, Ok(Framing::UntilClose)),
            (&[("transfer-encoding", "chunked"), ("content-length", "3")], true, Err(E::Ambiguous)),
            (&[("transfer-encoding", "chunked"), ("content-length", "3")], false, Err(E::Ambiguous)),
            (&[("content-length", "1, 2")], true, Err(E::BadContentLength)),
            (&[("content-length", "-1")], true, Err(E::BadContentLength)),
            (&[("content-length", "1"), ("content-length", "2")], false, Err(E::BadContentLength)),
            (&[("content-length", "+5")], true, Err(E::BadContentLength)),
            (&[("content-length", "18446744073709551616")], true, Err(E::BadContentLength)),
            (&[("transfer-encoding", "gzip, chunked")], true, Err(E::UnsupportedTransferEncoding)),
            (&[("transfer-encoding", "identity, chunked")], false, Err(E::UnsupportedTransferEncoding)),
            (&[("transfer-encoding", "chunked, gzip")], true, Err(E::ChunkedNotFinal)),
            (&[("transfer-encoding", "chunked, identity")], true, Err(E::ChunkedNotFinal)),
            (&[("transfer-encoding", "chunked"), ("transfer-encoding", "chunked")], true, Err(E::ChunkedNotFinal)),
            (&[("transfer-encoding", "identity")], true, Err(E::ChunkedNotFinal)),
            (&[("transfer-encoding", "xchunked")], false, Err(E::ChunkedNotFinal)),
            (&[("transfer-encoding", "chunked;q=1")], true, Err(E::ChunkedNotFinal)),
            (&[("transfer-encoding", "")], true, Err(E::ChunkedNotFinal)),
        ];
        for (fields, request, expected) in cases {
            let got = body_framing(&map(fields), Version::HTTP_11, *request);
            assert_eq!(format!("{got:?}"), format!("{expected:?}"), "{fields:?}");
        }
        let te = map(&[("transfer-encoding", "chunked")]);
        for request in [true, false] {
            assert!(matches!(
                body_framing(&te, Version::HTTP_10, request),
                Err(E::TransferEncodingInHttp10)
            ));
        }
    }
}
