//! The byte stream of a client connection, whatever carries it.

use tokio::io::{AsyncRead, AsyncWrite};

/// A client connection's byte stream (plain TCP or TLS).
pub trait ClientStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> ClientStream for T {}

/// A client connection, boxed so that one server loop serves TCP and TLS.
pub type ClientIo = Box<dyn ClientStream>;
