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

use crate::upstream::client::Reusable;

/// What the pipeline learns from a request body while it streams upstream.
#[derive(Debug, Default)]
pub struct BodyStats {
    /// Bytes read so far (for the access log).
    pub bytes: AtomicU64,
    /// Set when the body crossed `max_body`, so the pipeline answers 413.
    pub too_large: AtomicBool,
}

/// A request body on its way upstream: counts the bytes (for the access log)
/// and stops the stream once it exceeds the listener's `max_body`.
pub struct LimitedBody {
    inner: Incoming,
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
    pub fn new(inner: Incoming, limit: Option<u64>, stats: Arc<BodyStats>) -> Self {
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
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
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

/// Boxes an upstream response body into the common [`Body`].
pub fn from_incoming(body: Incoming) -> Body {
    body.map_err(|e| Box::new(e) as BoxError).boxed_unsync()
}

/// An upstream response body on its way to the client. It keeps `guard`
/// (the upstream slot) alive until the body is dropped, and gives the
/// connection back to the target's pool as soon as the body has been read to
/// its end; a body dropped early takes its connection down with it, since
/// the unread rest would be in the way of the next response.
struct UpstreamBody<G> {
    inner: Incoming,
    reuse: Option<Reusable>,
    _guard: G,
}

impl<G> UpstreamBody<G> {
    fn release_at_end(&mut self) {
        if self.inner.is_end_stream()
            && let Some(conn) = self.reuse.take()
        {
            conn.release();
        }
    }
}

impl<G: Send + Unpin + 'static> HttpBody for UpstreamBody<G> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(Err(e))) => {
                this.reuse = None;
                return Poll::Ready(Some(Err(Box::new(e))));
            }
            Poll::Ready(frame) => frame,
        };
        match frame {
            None => {
                if let Some(conn) = this.reuse.take() {
                    conn.release();
                }
            }
            Some(_) => this.release_at_end(),
        }
        Poll::Ready(frame.map(|f| f.map_err(|e| Box::new(e) as BoxError)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Wraps an upstream response body: `guard` lives as long as the body, and
/// `reuse` returns the connection to its pool once the body has ended.
pub fn from_upstream<G: Send + Unpin + 'static>(
    body: Incoming,
    guard: G,
    reuse: Option<Reusable>,
) -> Body {
    let mut body = UpstreamBody {
        inner: body,
        reuse,
        _guard: guard,
    };
    // A response without a body (204, 304, HEAD, length 0) is over already.
    body.release_at_end();
    body.boxed_unsync()
}
