//! The body of a request as a client sends it: read from an HTTP/1
//! connection by portcullis, or an HTTP/2 stream from hyper.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};

use crate::http::body::BoxError;
use crate::server::http1::RequestBody;

/// Most bytes of an HTTP/2 request body read after its answer, so that its
/// framing is still checked (see [`Http2Body`]).
const DRAIN_BYTES: u64 = 1024 * 1024;
/// Longest wait for the rest of such a body.
const DRAIN_TIME: Duration = Duration::from_secs(10);

/// A request body as the client sends it: none, or read from an HTTP/1
/// connection by portcullis, or an HTTP/2 stream from hyper.
pub enum ClientBody {
    /// No body.
    Empty,
    /// Read from an HTTP/1 connection.
    Http1(RequestBody),
    /// An HTTP/2 stream's data.
    Http2(Http2Body),
}

impl ClientBody {
    /// The body of an HTTP/2 request.
    pub fn http2(body: Incoming) -> ClientBody {
        ClientBody::Http2(Http2Body(Some(body)))
    }
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
            ClientBody::Http2(Http2Body(Some(body))) => {
                Pin::new(body).poll_frame(cx).map_err(BoxError::from)
            }
            ClientBody::Http2(Http2Body(None)) => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Empty => true,
            ClientBody::Http1(body) => body.is_end_stream(),
            ClientBody::Http2(Http2Body(body)) => body.as_ref().is_none_or(|b| b.is_end_stream()),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Empty => SizeHint::with_exact(0),
            ClientBody::Http1(body) => body.size_hint(),
            ClientBody::Http2(Http2Body(Some(body))) => body.size_hint(),
            ClientBody::Http2(Http2Body(None)) => SizeHint::with_exact(0),
        }
    }
}

/// An HTTP/2 request body. Dropped before its end (the route answered
/// without reading it: `respond`, a file, a policy's refusal), the rest is
/// read and discarded in the background, up to [`DRAIN_BYTES`] within
/// [`DRAIN_TIME`]: the stream stays open, so a `content-length` that
/// disagrees with the DATA frames, a second HEADERS without END_STREAM,
/// pseudo-headers in trailers and frames after the client's RST_STREAM are
/// still the stream errors RFC 9113 makes them, as on a route that reads
/// the body. (Dropped unread, hyper would close the stream at once and
/// ignore whatever came later.)
pub struct Http2Body(Option<Incoming>);

impl Drop for Http2Body {
    fn drop(&mut self) {
        let Some(mut body) = self.0.take() else {
            return;
        };
        if body.is_end_stream() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let mut left = DRAIN_BYTES;
            let drained = async {
                while let Some(Ok(frame)) = body.frame().await {
                    let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                    match left.checked_sub(len) {
                        Some(l) => left = l,
                        None => return,
                    }
                }
            };
            let _ = tokio::time::timeout(DRAIN_TIME, drained).await;
        });
    }
}
