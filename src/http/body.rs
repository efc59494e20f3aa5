//! The one body type every response and forwarded request uses, so that
//! streamed upstream bodies, files and gateway-made answers mix freely; and
//! the limit on a request body on its way upstream; a body that keeps a
//! copy of itself.

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

/// The detail of a 408 for a request body sent too slowly.
pub const SLOW_BODY: &str = "the request body did not arrive in time";

/// Why a body could not be read whole.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// It is longer than the reader's limit.
    #[error("the body is larger than {0} bytes")]
    TooLarge(u64),
    /// The client sent more than its listener's `max_body` (the
    /// [`LimitedBody`] under the reader stopped it).
    #[error("the body is larger than the listener accepts")]
    OverListenerLimit,
    /// It broke off (the peer left).
    #[error("the body broke off: {0}")]
    Broken(BoxError),
    /// The client sent it too slowly (`body_read_timeout`, `min_body_rate`).
    #[error("the client sent the body too slowly")]
    TimedOut,
}

/// Reads `body` whole, up to `limit` bytes, for the policies that must see
/// a whole body (transforms, validation); nothing else buffers.
pub async fn read_whole(mut body: Body, limit: u64) -> Result<Bytes, ReadError> {
    if body.size_hint().lower() > limit {
        return Err(ReadError::TooLarge(limit));
    }
    let mut kept = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            // A listener's limit is the client's doing (413), not a break.
            if e.is::<BodyTooLarge>() {
                ReadError::OverListenerLimit
            } else if e.is::<BodyTooSlow>() {
                ReadError::TimedOut
            } else {
                ReadError::Broken(e)
            }
        })?;
        if let Ok(data) = frame.into_data() {
            if kept.len() as u64 + data.len() as u64 > limit {
                return Err(ReadError::TooLarge(limit));
            }
            if kept.is_empty() && body.is_end_stream() {
                // One frame holds it all: no copy.
                return Ok(data);
            }
            kept.extend_from_slice(&data);
        }
    }
    Ok(kept.freeze())
}

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use hyper::body::{Body as HttpBody, Frame, SizeHint};

use crate::http::pace::{BodyPace, PaceClock, TooSlow};

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
    /// Set when the client sent its body too slowly, so that the request
    /// is answered 408 (and counted by what it failed).
    pub too_slow: std::sync::OnceLock<TooSlow>,
}

/// A request body on its way upstream: counts the bytes (for the access log)
/// and stops the stream once it exceeds the listener's `max_body`, or once
/// the client is too slow sending it (see [`crate::http::pace`]).
pub struct LimitedBody<B> {
    inner: B,
    limit: Option<u64>,
    seen: u64,
    stats: Arc<BodyStats>,
    /// None until the body first has to wait (most never do).
    clock: Option<Box<PaceClock>>,
    pace: BodyPace,
}

/// Error a [`LimitedBody`] yields once its client was too slow.
#[derive(Debug, thiserror::Error)]
#[error("the client sent the request body too slowly ({})", .0.kind())]
pub struct BodyTooSlow(pub TooSlow);

/// Error a [`LimitedBody`] yields once the client sent more than `max_body`.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than the listener's max_body")]
pub struct BodyTooLarge;

impl<B> LimitedBody<B> {
    /// Wraps a client body held to `pace`; `stats` reports back to the
    /// pipeline.
    pub fn new(inner: B, limit: Option<u64>, pace: BodyPace, stats: Arc<BodyStats>) -> Self {
        LimitedBody {
            inner,
            limit,
            seen: 0,
            stats,
            clock: None,
            pace,
        }
    }
}

impl<B> HttpBody for LimitedBody<B>
where
    B: HttpBody<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if polled.is_ready()
            && let Some(clock) = &mut this.clock
        {
            clock.arrived();
        }
        match polled {
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
            Poll::Pending => {
                let pace = this.pace;
                let clock = this
                    .clock
                    .get_or_insert_with(|| Box::new(PaceClock::new(pace)));
                match clock.poll_waiting(this.seen, cx) {
                    Poll::Ready(too_slow) => {
                        let _ = this.stats.too_slow.set(too_slow);
                        Poll::Ready(Some(Err(Box::new(BodyTooSlow(too_slow)))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What a [`TeeBody`] does with its copy once the body has ended whole.
pub type OnCopied = Box<dyn FnOnce(Bytes) + Send>;

/// A body that streams on unchanged while it keeps a copy of itself, and
/// hands the copy to a callback when the last chunk has passed (never
/// when the body broke, or outgrew the copy's limit: that ends the
/// copying, not the body). The cache stores answers so, and keeps their
/// encoded forms.
pub struct TeeBody {
    inner: Body,
    copy: bytes::BytesMut,
    limit: usize,
    on_end: Option<OnCopied>,
}

impl TeeBody {
    /// Wraps `inner`, copying at most `limit` bytes.
    pub fn new(inner: Body, limit: usize, on_end: OnCopied) -> TeeBody {
        let expected = inner
            .size_hint()
            .exact()
            .map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX).min(limit));
        let mut body = TeeBody {
            inner,
            copy: bytes::BytesMut::with_capacity(expected),
            limit,
            on_end: Some(on_end),
        };
        if body.inner.is_end_stream() {
            body.finish();
        }
        body
    }

    fn finish(&mut self) {
        if let Some(on_end) = self.on_end.take() {
            on_end(std::mem::take(&mut self.copy).freeze());
        }
    }
}

impl HttpBody for TeeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if this.on_end.is_some()
                    && let Some(data) = frame.data_ref()
                {
                    if this.copy.len() + data.len() > this.limit {
                        this.on_end = None;
                        this.copy = bytes::BytesMut::new();
                    } else {
                        this.copy.extend_from_slice(data);
                    }
                }
                // A server that stops polling once the body says it ended
                // would never show us the end otherwise.
                if this.inner.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Err(_))) => this.on_end = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
