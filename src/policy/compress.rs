//! `compress`: response bodies encoded with zstd, brotli or gzip for the
//! clients that accept them, and (when asked) encoded request bodies
//! decoded before the upstream sees them.
//!
//! Request phase filter: it only notes which encoding the client's
//! `Accept-Encoding` picks ([`negotiate`]), so that its response phase
//! (compress, the last) sees every answer the route gives: the upstream's,
//! a file, a direct answer, a refusal. An answer is encoded only when it
//! is not a 1xx, 204, 206 or 304, not an answer to HEAD, carries no
//! `Content-Encoding` or `Content-Range` yet, has no `Cache-Control:
//! no-transform`, is of a listed media type, and its length is unknown or
//! at least `min_size`. Encoding streams: each chunk goes through the
//! encoder as it comes, and the encoder flushes whenever the upstream
//! pauses, so nothing is buffered whole. An encoded answer loses
//! `Content-Length` and `Accept-Ranges`, and its strong `ETag` becomes
//! weak (the bytes differ; the meaning does not). Every answer of a listed
//! type gets `Vary: Accept-Encoding`, encoded or not, so that a cache keeps
//! the two apart.
//!
//! With `decompress_for_clients`, an answer the upstream encoded with an
//! encoding the client does not accept (or a client that sent no
//! `Accept-Encoding`) is decoded as it streams, as nginx's gunzip does,
//! and then encoded again if the client accepts one of the offered ones.
//!
//! With `request.decompress`, a request body with `Content-Encoding: gzip`,
//! `br` or `zstd` is decoded (whole, up to `max_size`, and never more than
//! `max_ratio` decoded bytes per encoded byte read so far: a decompression
//! bomb gets 413) and forwarded without `Content-Encoding`; any other
//! coding gets 415 with `Accept-Encoding` naming the three; broken data 400.

pub mod negotiate;

use std::sync::atomic::{AtomicU64, Ordering};

use async_compression::Level;
use async_compression::tokio::bufread::{
    BrotliDecoder, BrotliEncoder, GzipDecoder, GzipEncoder, ZstdDecoder, ZstdEncoder,
};
use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use futures_util::{StreamExt, TryStreamExt};
use http::header::{
    ACCEPT_ENCODING, ACCEPT_RANGES, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE,
    ETAG, TRANSFER_ENCODING, VARY,
};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyDataStream, BodyExt, StreamBody};
use hyper::body::{Body as HttpBody, Frame};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::io::{ReaderStream, StreamReader};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::{BuildEnv, Flow, Phase, Policy, ResponsePhase};
use crate::config::model::CompressDef;
use crate::http::body::{Body, BoxError, TeeBody, full};
use crate::http::headers::media_type;
use crate::http::problem::problem;
use crate::observe::metrics::CompressedLabels;
use crate::policy::context::RequestCtx;

/// A content coding the policy encodes and decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// RFC 1952.
    Gzip,
    /// RFC 7932.
    Br,
    /// RFC 8878.
    Zstd,
}

impl Encoding {
    /// The content-coding token.
    pub fn token(self) -> &'static str {
        match self {
            Encoding::Gzip => "gzip",
            Encoding::Br => "br",
            Encoding::Zstd => "zstd",
        }
    }

    /// Whether `coding` (from a header, any case) names this encoding;
    /// `x-gzip` is gzip (RFC 9110 §8.4.1.3).
    fn is_named(self, coding: &[u8]) -> bool {
        coding.eq_ignore_ascii_case(self.token().as_bytes())
            || (self == Encoding::Gzip && coding.eq_ignore_ascii_case(b"x-gzip"))
    }

    /// The encoding a `Content-Encoding` value names, if it is one of ours.
    fn from_coding(coding: &[u8]) -> Option<Encoding> {
        [Encoding::Gzip, Encoding::Br, Encoding::Zstd]
            .into_iter()
            .find(|e| e.is_named(coding))
    }

    /// The encoding an `algorithms` entry names (`brotli` is `br`).
    fn from_config(name: &str) -> Option<Encoding> {
        match name.trim().to_ascii_lowercase().as_str() {
            "gzip" => Some(Encoding::Gzip),
            "br" | "brotli" => Some(Encoding::Br),
            "zstd" => Some(Encoding::Zstd),
            _ => None,
        }
    }

    /// The levels `levels` accepts for this encoding, and its default.
    fn levels(self) -> (std::ops::RangeInclusive<i64>, i64) {
        match self {
            Encoding::Gzip => (1..=9, 6),
            // Brotli's own default, 11, costs tens of times more CPU per
            // byte than 4 for a few percent: fine for files compressed
            // once, not for every answer.
            Encoding::Br => (0..=11, 4),
            Encoding::Zstd => (1..=22, 3),
        }
    }

    fn header(self) -> HeaderValue {
        HeaderValue::from_static(self.token())
    }
}

/// What a `compress` policy's request phase leaves for its response phase.
#[derive(Clone, Copy, Debug, Default)]
pub struct CompressMark {
    /// A HEAD request: its answer has no body to encode.
    head: bool,
    /// The encoding to answer with; `None`: the client accepts none of
    /// the offered ones (or sent no `Accept-Encoding`).
    encode: Option<Encoding>,
    /// A bit per [`Encoding`] the client accepts, offered or not (noted
    /// only with `decompress_for_clients`).
    accepts: u8,
}

/// One `content_types` entry, lowercase.
#[derive(Debug, PartialEq)]
enum TypeRule {
    /// `type/subtype`.
    Exact(Box<str>),
    /// `type/*`, stored as `type`.
    AnySubtype(Box<str>),
    /// `+json`: any subtype with that suffix.
    Suffix(Box<str>),
    /// `*/*`.
    Any,
}

/// The media types encoded when `content_types` is not given.
const DEFAULT_TYPES: [&str; 10] = [
    "text/*",
    "application/json",
    "+json",
    "application/javascript",
    "application/xml",
    "+xml",
    "image/svg+xml",
    "application/wasm",
    "application/x-javascript",
    "application/ecmascript",
];

/// The order of preference when `algorithms` is not given: zstd gives
/// brotli's ratio at a fraction of the CPU at these levels, and brotli
/// beats gzip; clients that accept none of the newer ones get gzip.
const DEFAULT_ORDER: [Encoding; 3] = [Encoding::Zstd, Encoding::Br, Encoding::Gzip];

const VARY_ACCEPT_ENCODING: HeaderValue = HeaderValue::from_static("Accept-Encoding");
const ALL_CODINGS: HeaderValue = HeaderValue::from_static("zstd, br, gzip");

/// Request-body decoding limits.
#[derive(Clone, Copy, Debug)]
struct RequestLimits {
    max_ratio: u64,
    max_size: u64,
}

/// A compiled `compress` policy.
#[derive(Debug)]
pub struct Compress {
    algorithms: Box<[Encoding]>,
    /// Levels by `Encoding as usize`.
    levels: [i32; 3],
    min_size: u64,
    types: Box<[TypeRule]>,
    request: Option<RequestLimits>,
    for_clients: bool,
    compressed: Family<CompressedLabels, Counter>,
}

impl Compress {
    /// Checks and compiles the definition; errors name the field and entry.
    pub fn build(def: &CompressDef, env: &BuildEnv) -> Result<Compress, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let mut algorithms = Vec::new();
        match &def.algorithms {
            None => algorithms.extend(DEFAULT_ORDER),
            Some(list) => {
                if list.is_empty() {
                    errors.push((
                        "algorithms".into(),
                        "list at least one of zstd, br, gzip, or leave the key out".into(),
                    ));
                }
                for (i, name) in list.iter().enumerate() {
                    match Encoding::from_config(name) {
                        Some(e) if algorithms.contains(&e) => errors.push((
                            format!("algorithms.{i}"),
                            format!("`{name}` is listed twice"),
                        )),
                        Some(e) => algorithms.push(e),
                        None => errors.push((
                            format!("algorithms.{i}"),
                            format!("`{name}` is not an algorithm: use zstd, br (or brotli), gzip"),
                        )),
                    }
                }
            }
        }

        let mut levels = [0; 3];
        for (encoding, set) in [
            (Encoding::Gzip, def.levels.gzip),
            (Encoding::Br, def.levels.br),
            (Encoding::Zstd, def.levels.zstd),
        ] {
            let (range, default) = encoding.levels();
            let level = set.unwrap_or(default);
            if !range.contains(&level) {
                errors.push((
                    format!("levels.{}", encoding.token()),
                    format!(
                        "{} levels go from {} to {}, not {level}",
                        encoding.token(),
                        range.start(),
                        range.end()
                    ),
                ));
            }
            // In range, so it fits.
            levels[encoding as usize] = i32::try_from(level).unwrap_or(default as i32);
        }

        let mut types = Vec::new();
        match &def.content_types {
            None => types.extend(DEFAULT_TYPES.iter().filter_map(|t| type_rule(t).ok())),
            Some(list) => {
                if list.is_empty() {
                    errors.push((
                        "content_types".into(),
                        "list at least one media type, or leave the key out for the defaults"
                            .into(),
                    ));
                }
                for (i, t) in list.iter().enumerate() {
                    match type_rule(t) {
                        Ok(rule) => types.push(rule),
                        Err(m) => errors.push((format!("content_types.{i}"), m)),
                    }
                }
            }
        }

        let request = def.request.decompress.then(|| RequestLimits {
            max_ratio: def.request.max_ratio.unwrap_or(100),
            max_size: def.request.max_size.map_or(10 << 20, |s| s.0),
        });
        if def.request.max_ratio == Some(0) {
            errors.push((
                "request.max_ratio".into(),
                "a ratio of 0 refuses every body; use 1 or more".into(),
            ));
        }

        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Compress {
            algorithms: algorithms.into(),
            levels,
            min_size: def.min_size.map_or(1024, |s| s.0),
            types: types.into(),
            request,
            for_clients: def.decompress_for_clients,
            compressed: env.metrics.compressed.clone(),
        })
    }

    /// Whether an answer with these headers is of a type to encode.
    fn listed(&self, headers: &HeaderMap) -> bool {
        let Some(media) = media_type(headers) else {
            return false;
        };
        let Some((ty, sub)) = media.split_once('/') else {
            return false;
        };
        // An event stream must reach the client event by event; only an
        // entry that names it exactly encodes it.
        let stream = media.eq_ignore_ascii_case("text/event-stream");
        self.types.iter().any(|rule| match rule {
            TypeRule::Exact(t) => media.eq_ignore_ascii_case(t),
            TypeRule::AnySubtype(t) => !stream && ty.eq_ignore_ascii_case(t),
            TypeRule::Suffix(s) => {
                sub.len() > s.len()
                    && sub.is_char_boundary(sub.len() - s.len())
                    && sub[sub.len() - s.len()..].eq_ignore_ascii_case(s)
            }
            TypeRule::Any => !stream,
        })
    }

    /// Why this answer goes as it is even to a client that accepts an
    /// encoding, before its type is looked at; `true` to leave it.
    fn untouchable(resp: &Response<Body>) -> bool {
        let status = resp.status();
        let headers = resp.headers();
        status.is_informational()
            || matches!(
                status,
                StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED | StatusCode::PARTIAL_CONTENT
            )
            || headers.contains_key(CONTENT_ENCODING)
            || headers.contains_key(CONTENT_RANGE)
            || no_transform(headers)
    }

    /// Whether the body is known to be shorter than `min_size`.
    fn too_small(&self, resp: &Response<Body>) -> bool {
        let known = match resp.headers().get(CONTENT_LENGTH) {
            Some(v) => v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()),
            None => resp.body().size_hint().exact(),
        };
        known.is_some_and(|n| n < self.min_size) || resp.body().is_end_stream()
    }
}

impl Compress {
    /// Decodes an answer the upstream encoded with an encoding this client
    /// does not accept (then, with its `Content-Encoding` gone, the answer
    /// may be encoded again with one it does).
    fn decode_for_client(&self, mark: CompressMark, resp: &mut Response<Body>) {
        let Some(encoding) = resp
            .headers()
            .get(CONTENT_ENCODING)
            .and_then(|v| Encoding::from_coding(v.as_bytes().trim_ascii()))
        else {
            return;
        };
        let status = resp.status();
        if mark.accepts & (1 << encoding as u8) != 0
            || status.is_informational()
            || matches!(
                status,
                StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED | StatusCode::PARTIAL_CONTENT
            )
            || resp.headers().contains_key(CONTENT_RANGE)
            || no_transform(resp.headers())
        {
            return;
        }
        let headers = resp.headers_mut();
        headers.remove(CONTENT_ENCODING);
        headers.remove(CONTENT_LENGTH);
        headers.remove(ACCEPT_RANGES);
        if let Some(weak) = headers.get(ETAG).and_then(weaken) {
            headers.insert(ETAG, weak);
        }
        vary_accept_encoding(headers);
        let body = std::mem::replace(resp.body_mut(), crate::http::body::empty());
        let input = reader(body);
        *resp.body_mut() = match encoding {
            Encoding::Gzip => {
                let mut d = GzipDecoder::new(input);
                d.multiple_members(true);
                stream(d)
            }
            Encoding::Br => stream(BrotliDecoder::new(input)),
            Encoding::Zstd => stream(ZstdDecoder::new(input)),
        };
    }
}

/// Compiles one `content_types` entry.
fn type_rule(text: &str) -> Result<TypeRule, String> {
    let t = text.trim().to_ascii_lowercase();
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    if t == "*/*" || t == "*" {
        return Ok(TypeRule::Any);
    }
    if let Some(suffix) = t.strip_prefix('+')
        && token(suffix)
    {
        return Ok(TypeRule::Suffix(t.into()));
    }
    match t.split_once('/') {
        Some((ty, "*")) if token(ty) => Ok(TypeRule::AnySubtype(ty.into())),
        Some((ty, sub)) if token(ty) && token(sub) => Ok(TypeRule::Exact(t.as_str().into())),
        _ => Err(format!(
            "`{text}` is not a media type: write type/subtype (application/json), \
             type/* (text/*) or +suffix (+json)"
        )),
    }
}

/// Whether `Cache-Control` forbids changing the body (RFC 9111 §5.2.2.6).
fn no_transform(headers: &HeaderMap) -> bool {
    headers.get_all(CACHE_CONTROL).iter().any(|line| {
        line.as_bytes()
            .split(|b| *b == b',')
            .any(|d| d.trim_ascii().eq_ignore_ascii_case(b"no-transform"))
    })
}

/// Adds `Accept-Encoding` to `Vary` unless it or `*` is there.
fn vary_accept_encoding(headers: &mut HeaderMap) {
    let present = headers.get_all(VARY).iter().any(|line| {
        line.as_bytes().split(|b| *b == b',').any(|v| {
            let v = v.trim_ascii();
            v == b"*" || v.eq_ignore_ascii_case(b"accept-encoding")
        })
    });
    if !present {
        headers.append(VARY, VARY_ACCEPT_ENCODING);
    }
}

/// `W/"x"` for a strong `"x"`; a weak one stays as it is.
fn weaken(etag: &HeaderValue) -> Option<HeaderValue> {
    let bytes = etag.as_bytes();
    if bytes.starts_with(b"W/") {
        return None;
    }
    let mut weak = Vec::with_capacity(bytes.len() + 2);
    weak.extend_from_slice(b"W/");
    weak.extend_from_slice(bytes);
    HeaderValue::from_bytes(&weak).ok()
}

/// The body, as a byte reader (trailers are dropped: an encoded body's
/// trailers would describe the bytes before encoding).
fn reader(body: Body) -> impl tokio::io::AsyncBufRead + Send + Unpin + 'static {
    StreamReader::new(BodyDataStream::new(body).map_err(std::io::Error::other))
}

/// A reader's bytes as a body.
fn stream<R: AsyncRead + Send + 'static>(r: R) -> Body {
    let chunks = ReaderStream::with_capacity(r, 16 * 1024)
        .map_ok(Frame::data)
        .map_err(|e| Box::new(e) as BoxError);
    StreamBody::new(chunks).boxed_unsync()
}

/// `body` encoded with `encoding` at `level`, as it streams.
fn encode(body: Body, encoding: Encoding, level: i32) -> Body {
    let level = Level::Precise(level);
    let input = reader(body);
    match encoding {
        Encoding::Gzip => stream(GzipEncoder::with_quality(input, level)),
        Encoding::Br => stream(BrotliEncoder::with_quality(input, level)),
        Encoding::Zstd => stream(ZstdEncoder::with_quality(input, level)),
    }
}

/// Why a request body could not be decoded.
#[derive(Debug, thiserror::Error)]
enum DecodeError {
    /// Past `max_size` or `max_ratio`.
    #[error("the decoded request body is larger than this route accepts")]
    TooLarge,
    /// Not valid data for its coding, or the body broke off.
    #[error("the request body could not be decoded: {0}")]
    Broken(std::io::Error),
}

/// Reads `body` decoded with `encoding`, whole, within `limits`.
async fn decode(
    body: Body,
    encoding: Encoding,
    limits: RequestLimits,
) -> Result<Bytes, DecodeError> {
    let read = AtomicU64::new(0);
    let counted = BodyDataStream::new(body)
        .inspect(|chunk| {
            if let Ok(b) = chunk {
                read.fetch_add(b.len() as u64, Ordering::Relaxed);
            }
        })
        .map_err(std::io::Error::other);
    let input = StreamReader::new(counted);
    let mut decoder: std::pin::Pin<Box<dyn AsyncRead + Send + '_>> = match encoding {
        Encoding::Gzip => Box::pin(GzipDecoder::new(input)),
        Encoding::Br => Box::pin(BrotliDecoder::new(input)),
        Encoding::Zstd => Box::pin(ZstdDecoder::new(input)),
    };
    let mut out = BytesMut::new();
    loop {
        out.reserve(16 * 1024);
        let n = decoder.read_buf(&mut out).await.map_err(|e| {
            // The listener's max_body stopped the encoded body: that is
            // a body too large too, not a broken one.
            let limit = e
                .get_ref()
                .is_some_and(|inner| inner.is::<crate::http::body::BodyTooLarge>());
            if limit {
                DecodeError::TooLarge
            } else {
                DecodeError::Broken(e)
            }
        })?;
        if n == 0 {
            return Ok(out.freeze());
        }
        let allowed = read
            .load(Ordering::Relaxed)
            .max(1)
            .saturating_mul(limits.max_ratio);
        let len = out.len() as u64;
        if len > limits.max_size || len > allowed {
            return Err(DecodeError::TooLarge);
        }
    }
}

impl Policy for Compress {
    fn phase(&self) -> Phase {
        Phase::Filter
    }

    fn on_request(&self, ctx: &mut RequestCtx, req: &mut Request<Body>) -> Flow {
        ctx.compress = if req.method() == Method::HEAD {
            CompressMark {
                head: true,
                ..CompressMark::default()
            }
        } else {
            let lines = req.headers().get_all(ACCEPT_ENCODING);
            let lines = || lines.iter().map(HeaderValue::as_bytes);
            let mut accepts = 0;
            if self.for_clients {
                for e in [Encoding::Gzip, Encoding::Br, Encoding::Zstd] {
                    if negotiate::accepts(lines(), e) {
                        accepts |= 1 << e as u8;
                    }
                }
            }
            CompressMark {
                head: false,
                encode: negotiate::choose(lines, &self.algorithms),
                accepts,
            }
        };
        if self.request.is_some()
            && let Some(coding) = req.headers().get(CONTENT_ENCODING)
        {
            let coding = coding.as_bytes().trim_ascii();
            if coding.eq_ignore_ascii_case(b"identity") {
                req.headers_mut().remove(CONTENT_ENCODING);
            } else if Encoding::from_coding(coding).is_none() {
                let mut resp = problem(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "this route decodes request bodies encoded with zstd, br or gzip (one of them)",
                    ctx.request_id_str(),
                );
                resp.headers_mut().insert(ACCEPT_ENCODING, ALL_CODINGS);
                return Flow::Respond(resp);
            }
        }
        Flow::Continue
    }

    fn on_request_async<'a>(
        &'a self,
        ctx: &'a mut RequestCtx,
        req: &'a mut Request<Body>,
    ) -> Option<BoxFuture<'a, Flow>> {
        let limits = self.request?;
        let coding = req.headers().get(CONTENT_ENCODING)?;
        let encoding = Encoding::from_coding(coding.as_bytes().trim_ascii())?;
        Some(Box::pin(async move {
            let body = std::mem::replace(req.body_mut(), crate::http::body::empty());
            match decode(body, encoding, limits).await {
                Ok(bytes) => {
                    let headers = req.headers_mut();
                    headers.remove(CONTENT_ENCODING);
                    headers.remove(TRANSFER_ENCODING);
                    headers.insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
                    *req.body_mut() = full(bytes);
                    Flow::Continue
                }
                Err(e) => {
                    let status = match e {
                        DecodeError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                        DecodeError::Broken(_) => StatusCode::BAD_REQUEST,
                    };
                    tracing::debug!(request_id = ctx.request_id_str(), "compress: {e}");
                    let detail = match status {
                        StatusCode::PAYLOAD_TOO_LARGE => {
                            "the decoded request body is larger than this route accepts"
                        }
                        _ => "the request body is not valid data for its Content-Encoding",
                    };
                    Flow::Respond(problem(status, detail, ctx.request_id_str()))
                }
            }
        }))
    }

    fn response_phase(&self) -> Option<ResponsePhase> {
        Some(ResponsePhase::Compress)
    }

    fn on_response(&self, ctx: &mut RequestCtx, resp: &mut Response<Body>) {
        let mark = std::mem::take(&mut ctx.compress);
        if self.for_clients && !mark.head {
            self.decode_for_client(mark, resp);
        }
        if Self::untouchable(resp) || !self.listed(resp.headers()) {
            return;
        }
        // Whether this client got it encoded or not, the answer at this
        // URL depends on Accept-Encoding.
        vary_accept_encoding(resp.headers_mut());
        if mark.head {
            return;
        }
        let Some(encoding) = mark.encode else {
            return;
        };
        if self.too_small(resp) {
            return;
        }
        let headers = resp.headers_mut();
        headers.insert(CONTENT_ENCODING, encoding.header());
        headers.remove(CONTENT_LENGTH);
        headers.remove(ACCEPT_RANGES);
        if let Some(weak) = headers.get(ETAG).and_then(weaken) {
            headers.insert(ETAG, weak);
        }
        let level = self.levels[encoding as usize];
        let body = std::mem::replace(resp.body_mut(), crate::http::body::empty());
        *resp.body_mut() = match ctx.cache.hit() {
            // A whole stored answer: encoded once, kept beside it, and
            // sent as kept from then on.
            Some(hit) if resp.status() == StatusCode::OK && hit.entry.status == StatusCode::OK => {
                match hit.entry.encoded(encoding.token(), level) {
                    Some(kept) => {
                        resp.headers_mut()
                            .insert(CONTENT_LENGTH, HeaderValue::from(kept.len()));
                        full(kept)
                    }
                    None => {
                        let (store, entry) = (hit.store.clone(), hit.entry.clone());
                        let limit = entry.body.len();
                        let keep = move |encoded| {
                            store.add_encoded(&entry, encoding.token(), level, encoded);
                        };
                        TeeBody::new(encode(body, encoding, level), limit, Box::new(keep))
                            .boxed_unsync()
                    }
                }
            }
            _ => encode(body, encoding, level),
        };
        if let Some(route) = &ctx.route {
            self.compressed
                .get_or_create(&CompressedLabels {
                    route: route.clone(),
                    encoding: encoding.token(),
                })
                .inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::CompressLevelsDef;

    fn build(def: &CompressDef) -> Result<Compress, Vec<(String, String)>> {
        let metrics = Box::leak(Box::new(crate::observe::metrics::Metrics::new()));
        let consumers = Box::leak(Box::new(std::sync::Arc::new(
            crate::policy::consumer::Consumers::empty(),
        )));
        Compress::build(
            def,
            &crate::policy::tests::env("squeeze", metrics, consumers),
        )
    }

    fn policy(types: Option<&[&str]>) -> Compress {
        let def = CompressDef {
            content_types: types.map(|t| t.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        };
        build(&def).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn listed(p: &Compress, ctype: &str) -> bool {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_str(ctype).unwrap(),
        );
        p.listed(&h)
    }

    #[test]
    fn default_types() {
        let p = policy(None);
        for yes in [
            "text/html",
            "text/plain; charset=utf-8",
            "TEXT/CSS",
            "application/json",
            "Application/JSON;charset=UTF-8",
            "application/problem+json",
            "application/vnd.api+json",
            "application/javascript",
            "text/javascript",
            "application/xml",
            "application/atom+xml",
            "image/svg+xml",
            "application/wasm",
        ] {
            assert!(listed(&p, yes), "{yes}");
        }
        for no in [
            "image/png",
            "application/octet-stream",
            "video/mp4",
            "text/event-stream",
            "application/zip",
            "json",
            "",
            "application/jsonx",
            "application/+json",
        ] {
            assert!(!listed(&p, no), "{no}");
        }
        assert!(!p.listed(&HeaderMap::new()));
    }

    #[test]
    fn configured_types() {
        let p = policy(Some(&["image/*", "application/x-thing", "+yaml"]));
        assert!(listed(&p, "image/png"));
        assert!(listed(&p, "application/X-Thing; a=b"));
        assert!(listed(&p, "application/foo+yaml"));
        assert!(!listed(&p, "text/html"));
        let stream = policy(Some(&["text/event-stream"]));
        assert!(listed(&stream, "text/event-stream"));
        let any = policy(Some(&["*/*"]));
        assert!(listed(&any, "application/octet-stream"));
        assert!(!listed(&any, "text/event-stream"));
    }

    #[test]
    fn config_errors_name_the_entry() {
        let def = CompressDef {
            algorithms: Some(vec![
                "gzip".into(),
                "deflate".into(),
                "brotli".into(),
                "br".into(),
            ]),
            levels: CompressLevelsDef {
                gzip: Some(0),
                br: Some(12),
                zstd: Some(22),
            },
            content_types: Some(vec!["text".into(), "text/*".into()]),
            ..Default::default()
        };
        let errors = build(&def).err().unwrap_or_default();
        let fields: Vec<&str> = errors.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "algorithms.1",
                "algorithms.3",
                "levels.gzip",
                "levels.br",
                "content_types.0"
            ]
        );
    }

    #[test]
    fn etags_become_weak() {
        let strong = HeaderValue::from_static("\"abc\"");
        assert_eq!(weaken(&strong).unwrap(), "W/\"abc\"");
        assert!(weaken(&HeaderValue::from_static("W/\"abc\"")).is_none());
    }

    #[test]
    fn no_transform_and_vary() {
        let mut h = HeaderMap::new();
        h.insert(
            CACHE_CONTROL,
            HeaderValue::from_static("public, No-Transform"),
        );
        assert!(no_transform(&h));
        h.insert(VARY, HeaderValue::from_static("origin, accept-encoding"));
        vary_accept_encoding(&mut h);
        assert_eq!(h.get_all(VARY).iter().count(), 1);
        let mut h = HeaderMap::new();
        h.insert(VARY, HeaderValue::from_static("Origin"));
        vary_accept_encoding(&mut h);
        assert_eq!(h.get_all(VARY).iter().count(), 2);
    }

    fn gzip_of(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    }

    #[tokio::test]
    async fn a_bomb_is_refused() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&vec![0u8; 1 << 20]).unwrap();
        let packed = gz.finish().unwrap();
        let limits = RequestLimits {
            max_ratio: 100,
            max_size: 10 << 20,
        };
        let got = decode(full(packed.clone()), Encoding::Gzip, limits).await;
        assert!(matches!(got, Err(DecodeError::TooLarge)), "{got:?}");
        let roomy = RequestLimits {
            max_ratio: 10_000,
            max_size: 10 << 20,
        };
        let got = decode(full(packed), Encoding::Gzip, roomy).await.unwrap();
        assert_eq!(got.len(), 1 << 20);
        let small = RequestLimits {
            max_ratio: 10_000,
            max_size: 1000,
        };
        let got = decode(full(Bytes::from(vec![1u8; 10])), Encoding::Gzip, small).await;
        assert!(matches!(got, Err(DecodeError::Broken(_))), "{got:?}");
        // Past the listener's max_body (on the encoded bytes): too large.
        let stats = std::sync::Arc::new(crate::http::body::BodyStats::default());
        let limited = crate::http::body::LimitedBody::new(
            full(gzip_of(b"hello")),
            Some(5),
            crate::http::pace::BodyPace::default(),
            stats,
        );
        let got = decode(limited.boxed_unsync(), Encoding::Gzip, roomy).await;
        assert!(matches!(got, Err(DecodeError::TooLarge)), "{got:?}");
    }
}
