//! The body of a request as a client sends it: read from an HTTP/1
//! connection by portcullis, or an HTTP/2 stream from hyper.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};

use crate::http::body::BoxError;
use crate::server::http1::RequestBody;

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
