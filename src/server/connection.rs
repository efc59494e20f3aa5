//! Serving one accepted client connection: the PROXY protocol header when
//! the listener requires one, then either an L4 relay (`tcp`, `tls`
//! passthrough), or the TLS handshake when the listener terminates TLS and
//! HTTP/1.1 or HTTP/2 (auto-detected, h2c included) with the listener's
//! limits, until the client leaves or a graceful shutdown asks the
//! connection to finish its in-flight requests.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::{Either, OptionFuture};
use http::HeaderValue;
use tokio::net::TcpStream;

use super::http1::{self, ClientIo, Ended};
use super::http2;
use super::ticket_hold::TicketHold;
use crate::http::h2_guard::FloodLimits;
use crate::l4::{self, L4Plan};
use crate::net::proxy_protocol::{self, Prefixed};
use crate::net::tls;
use crate::proxy::connection::{ClientCert, Connection};
use crate::proxy::snapshot::{Limits, ListenerPlan};
use crate::server::registry::Registered;
use crate::server::runtime::Runtime;

/// Longest wait for a PROXY protocol header (bounded further by the
/// listener's `header_read_timeout`): an L4 tier sends it at once, so a slow
/// header means a client that bypassed the tier.
const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `stream` from `peer` on the listener `plan` until it closes.
///
/// A plain HTTP listener needs no setting up: its service starts at once.
/// Otherwise setting the connection up (the PROXY header, and all of an L4
/// relay or a TLS connection) runs boxed. What stays in the connection's
/// task is the small state of a plain HTTP connection, which is what an
/// idle keep-alive connection costs. (Combinators, not an `async fn`:
/// awaiting the service there would keep a second copy of it in the task.)
/// Idle timeouts and the drain reach the connection through the runtime's
/// [`Registry`](crate::server::registry::Registry).
pub fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    plan: Arc<ListenerPlan>,
    rt: Arc<Runtime>,
) -> impl Future<Output = ()> + Send {
    let _ = stream.set_nodelay(true);
    if !plan.proxy_protocol && plan.l4.is_none() && plan.tls.is_none() {
        let destination = stream.local_addr().unwrap_or(plan.address);
        return Either::Left(serve_plain(Box::new(stream), peer, destination, &plan, rt));
    }
    Either::Right(
        Box::pin(set_up(stream, peer, plan, rt))
            .then(OptionFuture::from)
            .map(drop),
    )
}

/// The service of a plain HTTP connection.
fn serve_plain(
    io: ClientIo,
    client: SocketAddr,
    destination: SocketAddr,
    plan: &ListenerPlan,
    rt: Arc<Runtime>,
) -> impl Future<Output = ()> + Send + use<> {
    let conn = Connection::new(plan.name.clone(), client, destination, plan.limits.idle());
    serve_http(io, conn, plan.limits, rt, false)
}

/// Serves L4 and TLS connections whole; for a plain HTTP connection,
/// returns its service for the connection's task to run.
async fn set_up(
    mut stream: TcpStream,
    peer: SocketAddr,
    plan: Arc<ListenerPlan>,
    rt: Arc<Runtime>,
) -> Option<impl Future<Output = ()> + Send> {
    let mut client = peer;
    let mut destination = stream.local_addr().unwrap_or(plan.address);
    let mut early = Vec::new();
    if plan.proxy_protocol {
        let timeout = plan.limits.header_read_timeout.min(PROXY_HEADER_TIMEOUT);
        match proxy_protocol::read_header(&mut stream, timeout).await {
            Ok((header, rest)) => {
                // The header's addresses stand for the client everywhere:
                // X-Forwarded-For, ip_hash, rate limits and logs.
                client = header.source.unwrap_or(peer);
                destination = header.destination.unwrap_or(destination);
                early = rest;
            }
            Err(e) => {
                tracing::debug!(%peer, listener = %plan.name, error = %e, "closing the connection");
                return None;
            }
        }
    }
    // Bytes read past the PROXY header belong to the payload.
    let stream = Prefixed::new(early, stream);
    match &plan.l4 {
        None => {}
        Some(L4Plan::Tcp(upstream)) => {
            l4::tcp::serve(stream, client, destination, upstream, &plan.name).await;
            return None;
        }
        Some(L4Plan::Tls(routes)) => {
            let hello_timeout = plan.limits.header_read_timeout;
            l4::tls_passthrough::serve(
                stream,
                client,
                destination,
                routes,
                hello_timeout,
                &plan.name,
            )
            .await;
            return None;
        }
        // UDP listeners have their own socket loop and never accept streams.
        Some(L4Plan::Udp(_)) => return None,
    }
    match &plan.tls {
        None => {
            // Without a prefix left, the bare socket (48 bytes less to keep).
            let io: ClientIo = match stream.into_unprefixed() {
                Ok(tcp) => Box::new(tcp),
                Err(prefixed) => Box::new(prefixed),
            };
            Some(serve_plain(io, client, destination, &plan, rt))
        }
        Some(config) => {
            let config = config.clone();
            // Boxed: the handshake's state is large, and a connection that
            // is only waiting for its PROXY header need not carry it.
            Box::pin(serve_tls(stream, client, destination, &plan, config, rt)).await;
            None
        }
    }
}

/// The TLS handshake, then HTTP over it.
async fn serve_tls(
    stream: Prefixed<TcpStream>,
    client: SocketAddr,
    destination: SocketAddr,
    plan: &ListenerPlan,
    config: Arc<rustls::ServerConfig>,
    rt: Arc<Runtime>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let accept = acceptor.accept(TicketHold::new(stream)).into_fallible();
    let handshake = tokio::time::timeout(plan.limits.header_read_timeout, accept).await;
    let mut tls_stream = match handshake {
        Ok(Ok(s)) => s,
        Ok(Err((e, mut io))) => {
            tracing::debug!(%client, error = %e, "TLS handshake failed");
            // The alert saying why, if it was held as a ticket would be.
            io.release();
            let _ = std::future::poll_fn(|cx| {
                Poll::Ready(tokio::io::AsyncWrite::poll_flush(Pin::new(&mut io), cx))
            })
            .await;
            return;
        }
        Err(_) => {
            tracing::debug!(%client, "TLS handshake timed out");
            return;
        }
    };
    tls_stream.get_mut().0.release();
    let client_cert = plan.client_subject_header.as_ref().map(|header| {
        let subject =
            tls::client_subject(tls_stream.get_ref().1).and_then(|s| HeaderValue::try_from(s).ok());
        Box::new(ClientCert {
            header: header.clone(),
            subject,
        })
    });
    let conn = Connection {
        tls: true,
        client_cert,
        ..Connection::new(plan.name.clone(), client, destination, plan.limits.idle())
    };
    let alpn_h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = Box::new(tls_stream);
    serve_http(io, conn, plan.limits, rt, alpn_h2).await;
}

/// Serves HTTP on an accepted (and, for TLS, handshaken) connection:
/// HTTP/2 when ALPN chose it or the client opens with the HTTP/2 preface,
/// HTTP/1.1 otherwise. The connection is registered with the runtime's
/// registry, whose sweep closes it once idle past its limits.
///
/// A plain function returning the future, not an `async fn`: this future
/// is what an idle connection keeps, and an `async fn` would keep a second
/// copy of its arguments next to the futures being polled.
fn serve_http(
    io: ClientIo,
    conn: Connection,
    limits: Limits,
    rt: Arc<Runtime>,
    alpn_h2: bool,
) -> Watched<impl Future<Output = ()> + Send> {
    let registered = rt.connections.register(conn);
    let conn = registered.connection().clone();
    if alpn_h2 {
        let served = Box::pin(http2::serve(
            io,
            conn,
            h2_header_list(&limits),
            limits.http2_flood,
            rt,
        ));
        return Watched {
            served: Either::Left(served),
            registered,
        };
    }
    // HTTP/1.1, and HTTP/2 if the client opens with the preface.
    let caps = http1::Caps::new(&limits);
    let header_list = h2_header_list(&limits);
    let http1 = http1::serve(io, conn, caps, rt).then(move |ended| {
        OptionFuture::from(match ended {
            Ended::Closed => None,
            Ended::Http2 { io, read, conn, rt } => {
                let io = Prefixed::new(read.to_vec(), io);
                // Read from the listener now rather than kept in every
                // HTTP/1 connection's state for the rare upgrade.
                let flood = rt
                    .snapshot
                    .load()
                    .listener(&conn.listener)
                    .map_or_else(FloodLimits::default, |l| l.limits.http2_flood);
                Some(Box::pin(http2::serve(io, conn, header_list, flood, rt)))
            }
        })
    });
    Watched {
        served: Either::Right(http1.map(drop)),
        registered,
    }
}

/// hyper's cap on an HTTP/2 header list: the pipeline answers 431 with
/// problem+json up to the configured limit; this sits above it as a hard
/// stop.
fn h2_header_list(limits: &Limits) -> u32 {
    u32::try_from(limits.max_header_size.saturating_mul(2)).unwrap_or(u32::MAX)
}

pin_project_lite::pin_project! {
    /// A connection's service, cut short when the registry's sweep finds
    /// it idle past its limit.
    struct Watched<S> {
        #[pin]
        served: S,
        registered: Registered,
    }
}

impl<S: Future<Output = ()>> Future for Watched<S> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        // Registers the task for the sweep and the drain before the service
        // looks at the drain flag.
        let activity = &this.registered.connection().activity;
        let expired = activity.poll_expired(cx).is_ready();
        if this.served.poll(cx).is_ready() {
            return Poll::Ready(());
        }
        if expired {
            tracing::debug!("the connection stayed idle past its limit; closing it");
            return Poll::Ready(());
        }
        Poll::Pending
    }
}
