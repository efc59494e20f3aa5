//! The one body type every response and forwarded request uses, so that
//! streamed upstream bodies, files and gateway-made answers mix freely.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, combinators::UnsyncBoxBody};

/// Error type carried by streaming bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streaming HTTP body (request or response).
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A body holding `data` in full.
pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A body with no bytes.
pub fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};

use crate::server::http1::RequestBody;
use crate::upstream::client::UpstreamBody;

/// A request body as the client sends it: none, or read from an HTTP/1
/// connection by portcullis, or an HTTP/2 stream from hyper.
pub enum ClientBody {
    /// No body.
    Empty,
    /// Read from an HTTP/1 connection.
    Http1(RequestBody),
    /// An HTTP/2 stream's data.
    Http2(Incoming),
}

impl HttpBody for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ClientBody::Empty => Poll::Ready(None),
            ClientBody::Http1(body) => Pin::new(body).poll_frame(cx).map_err(BoxError::from),
            ClientBody::Http2(body) => Pin::new(body).poll_frame(cx).map_err(BoxError::from),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Empty => true,
            ClientBody::Http1(body) => body.is_end_stream(),
            ClientBody::Http2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Empty => SizeHint::with_exact(0),
            ClientBody::Http1(body) => body.size_hint(),
            ClientBody::Http2(body) => body.size_hint(),
        }
    }
}

/// What the pipeline learns from a request body while it streams upstream.
#[derive(Debug, Default)]
pub struct BodyStats {
    /// Bytes read so far (for the access log).
    pub bytes: AtomicU64,
    /// Set when the body crossed `max_body`, so the pipeline answers 413.
    pub too_large: AtomicBool,
    /// Set when the client's body broke (bad framing, connection lost), so
    /// that a failed upstream request is answered 400, not 502.
    pub broken: AtomicBool,
}

/// A request body on its way upstream: counts the bytes (for the access log)
/// and stops the stream once it exceeds the listener's `max_body`.
pub struct LimitedBody {
    inner: ClientBody,
    limit: Option<u64>,
    seen: u64,
    stats: Arc<BodyStats>,
}

/// Error a [`LimitedBody`] yields once the client sent more than `max_body`.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than the listener's max_body")]
pub struct BodyTooLarge;

impl LimitedBody {
    /// Wraps a client body; `stats` reports back to the pipeline.
    pub fn new(inner: ClientBody, limit: Option<u64>, stats: Arc<BodyStats>) -> Self {
        LimitedBody {
            inner,
            limit,
            seen: 0,
            stats,
        }
    }
}

impl HttpBody for LimitedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    this.stats.bytes.store(this.seen, Ordering::Relaxed);
                    if this.limit.is_some_and(|l| this.seen > l) {
                        this.stats.too_large.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.stats.broken.store(true, Ordering::Relaxed);
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An upstream response body on its way to the client, keeping `guard`
/// (the upstream slot) alive until the body is dropped.
struct Guarded<G> {
    inner: UpstreamBody,
    _guard: G,
}

impl<G: Send + Unpin + 'static> HttpBody for Guarded<G> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Wraps an upstream response body so that `guard` lives as long as it.
pub fn from_upstream<G: Send + Unpin + 'static>(body: UpstreamBody, guard: G) -> Body {
    Guarded {
        inner: body,
        _guard: guard,
    }
    .boxed_unsync()
}
