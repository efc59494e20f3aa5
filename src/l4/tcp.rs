//! `protocol: tcp` listeners: each client connection is balanced over one
//! upstream and its bytes are copied both ways untouched.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};

use super::{connect, relay};
use crate::upstream::Upstream;

/// Serves one client connection from `client` (which connected to
/// `destination`) by relaying it to a target of `upstream`. Returns when both
/// sides have closed, the connection was idle for the upstream's
/// `timeouts.idle`, or no target could be reached (the client is then closed).
pub async fn serve<S>(
    stream: S,
    client: SocketAddr,
    destination: SocketAddr,
    upstream: &Upstream,
    listener: &str,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (target, _lease) = match connect(upstream, client, destination).await {
        Ok(pair) => pair,
        Err(e) => {
            tracing::warn!(%listener, upstream = %upstream.name, %client, error = %e, "closing an L4 connection");
            return;
        }
    };
    // `_lease` lives until the relay ends: least_connections counts connections.
    match relay(stream, target, upstream.l4.idle_timeout).await {
        Ok((up, down)) => {
            tracing::debug!(%listener, %client, bytes_up = up, bytes_down = down, "L4 connection closed")
        }
        Err(e) => tracing::debug!(%listener, %client, error = %e, "L4 connection ended"),
    }
}
