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
use http::{HeaderValue, Request};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::http1::{self, ClientIo, Ended};
use super::proxy_protocol::{self, Prefixed};
use super::tls;
use crate::config::snapshot::{Limits, ListenerPlan};
use crate::l4::{self, L4Plan};
use crate::proxy::body::ClientBody;
use crate::proxy::context::{Activity, IdleCheck};
use crate::proxy::pipeline::{self, Connection};
use crate::server::runtime::Runtime;

/// Longest wait for a PROXY protocol header (bounded further by the
/// listener's `header_read_timeout`): an L4 tier sends it at once, so a slow
/// header means a client that bypassed the tier.
const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `stream` from `peer` on the listener `plan` until it closes.
///
/// Setting the connection up (the PROXY header, and all of an L4 relay or
/// a TLS connection) runs boxed; what stays in the connection's task is the
/// small state of a plain HTTP connection, which is what an idle keep-alive
/// connection costs. (Combinators, not an `async fn`: awaiting the service
/// there would keep a second copy of it in the task.)
pub fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    plan: Arc<ListenerPlan>,
    rt: Arc<Runtime>,
    shutdown: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send {
    Box::pin(set_up(stream, peer, plan, rt, shutdown))
        .then(OptionFuture::from)
        .map(drop)
}

/// Serves L4 and TLS connections whole; for a plain HTTP connection,
/// returns its service for the connection's task to run.
async fn set_up(
    mut stream: TcpStream,
    peer: SocketAddr,
    plan: Arc<ListenerPlan>,
    rt: Arc<Runtime>,
    shutdown: watch::Receiver<bool>,
) -> Option<impl Future<Output = ()> + Send> {
    let _ = stream.set_nodelay(true);
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
            let conn = Connection::new(plan.name.clone(), client, destination);
            let io = Box::new(stream);
            Some(serve_http(
                io,
                Arc::new(conn),
                plan.limits,
                rt,
                shutdown,
                false,
            ))
        }
        Some(config) => {
            let config = config.clone();
            serve_tls(stream, client, destination, &plan, config, rt, shutdown).await;
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
    shutdown: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let handshake =
        tokio::time::timeout(plan.limits.header_read_timeout, acceptor.accept(stream)).await;
    let tls_stream = match handshake {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%client, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%client, "TLS handshake timed out");
            return;
        }
    };
    let client_subject =
        tls::client_subject(tls_stream.get_ref().1).and_then(|s| HeaderValue::try_from(s).ok());
    let conn = Connection {
        tls: true,
        client_subject,
        subject_header: plan.client_subject_header.clone(),
        ..Connection::new(plan.name.clone(), client, destination)
    };
    let alpn_h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = Box::new(tls_stream);
    serve_http(io, Arc::new(conn), plan.limits, rt, shutdown, alpn_h2).await;
}

/// Serves HTTP on an accepted (and, for TLS, handshaken) connection:
/// HTTP/2 when ALPN chose it or the client opens with the HTTP/2 preface,
/// HTTP/1.1 otherwise. A watchdog closes connections that stay idle for
/// `header_read_timeout` between requests.
///
/// A plain function returning the future, not an `async fn` with
/// `select!`: this future is what an idle connection keeps, and either
/// would keep a second copy of both futures next to the ones being polled.
fn serve_http(
    io: ClientIo,
    conn: Arc<Connection>,
    limits: Limits,
    rt: Arc<Runtime>,
    shutdown: watch::Receiver<bool>,
    alpn_h2: bool,
) -> Watched<impl Future<Output = ()> + Send, impl Future<Output = ()> + Send> {
    let watchdog = idle_watchdog(conn.activity.clone(), limits.header_read_timeout);
    if alpn_h2 {
        let served = Box::pin(serve_h2(io, conn, limits, rt, shutdown));
        return Watched {
            served: Either::Left(served),
            watchdog,
        };
    }
    // HTTP/1.1, and HTTP/2 if the client opens with the preface.
    let caps = http1::Caps::new(&limits);
    let h2 = (conn.clone(), rt.clone(), shutdown.clone());
    let http1 = http1::serve(io, conn, caps, rt, shutdown).then(move |ended| {
        OptionFuture::from(match ended {
            Ended::Closed => None,
            Ended::Http2(io, read) => {
                let (conn, rt, shutdown) = h2;
                let io = Prefixed::new(read.to_vec(), io);
                Some(Box::pin(serve_h2(io, conn, limits, rt, shutdown)))
            }
        })
    });
    Watched {
        served: Either::Right(http1.map(drop)),
        watchdog,
    }
}

pin_project_lite::pin_project! {
    /// A connection's service, cut short when its idle watchdog fires.
    struct Watched<S, W> {
        #[pin]
        served: S,
        #[pin]
        watchdog: W,
    }
}

impl<S: Future<Output = ()>, W: Future<Output = ()>> Future for Watched<S, W> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.served.poll(cx).is_ready() {
            return Poll::Ready(());
        }
        if this.watchdog.poll(cx).is_ready() {
            tracing::debug!("no request head within header_read_timeout; closing the connection");
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

/// Ends when `activity` has been idle for `limit`: from connecting, and
/// from the end of each response, an HTTP/1 client has header_read_timeout
/// to send a complete request head (also an HTTP/2 client that sends a
/// preface and no request). HTTP/2 connections are left alone once their
/// first request has come.
async fn idle_watchdog(activity: Arc<Activity>, limit: Duration) {
    loop {
        match activity.check(limit) {
            IdleCheck::Expired => return,
            IdleCheck::Never => std::future::pending::<()>().await,
            IdleCheck::At(when) => tokio::time::sleep_until(when.into()).await,
        }
    }
}

/// Serves HTTP/2 with hyper until the client leaves, or finishes the
/// streams in flight once `shutdown` turns true.
async fn serve_h2<I>(
    io: I,
    conn: Arc<Connection>,
    limits: Limits,
    rt: Arc<Runtime>,
    mut shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        // The pipeline answers 431 with problem+json up to the configured
        // limit; hyper's own cap sits above it as a hard stop.
        .max_header_list_size(
            u32::try_from(limits.max_header_size.saturating_mul(2)).unwrap_or(u32::MAX),
        );
    let service = service_fn(move |req: Request<Incoming>| {
        pipeline::handle(req.map(ClientBody::Http2), conn.clone(), rt.clone())
    });
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    // The watch guard must not live across the await below (it is not Send),
    // so the drain signal is reduced to a plain value first.
    let draining = async move { shutdown.wait_for(|stop| *stop).await.is_ok() };
    tokio::select! {
        res = connection.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            return;
        }
        _ = draining => {}
    }
    connection.as_mut().graceful_shutdown();
    if let Err(e) = connection.await {
        tracing::debug!(error = %e, "connection ended with an error while draining");
    }
}
