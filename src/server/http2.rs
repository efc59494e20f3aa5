//! HTTP/2 toward clients: hyper's server (the h2 crate) for the framing,
//! with every stream of a connection run inside the connection's own task.
//!
//! hyper hands each stream's future to an executor; the usual one spawns a
//! tokio task per stream. Here the executor queues the futures and the
//! connection's task polls them beside the connection: no task to create,
//! register and free per request, and a stream whose response is ready has
//! it written by the same poll instead of waking another task. (As in
//! nginx and HAProxy, a connection's streams then share one core.)

use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use http::{Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Incoming};
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::http::body::Body;
use crate::http::h2_guard::{Flood, FloodLimits, FrameGuard};
use crate::observe::metrics::Http2FloodLabels;
use crate::observe::throttle::Throttled;
use crate::proxy::connection::Connection;
use crate::proxy::pipeline;
use crate::server::client_body::ClientBody;
use crate::server::runtime::Runtime;

/// A stream's future (or an upgraded stream's pipe), boxed to be queued.
type StreamTask = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The executor hyper is given: queues what it would spawn, for the
/// connection's task to poll.
#[derive(Clone, Default)]
struct Streams(Arc<Mutex<Vec<StreamTask>>>);

impl Streams {
    /// Moves what hyper has handed over since the last call into `into`
    /// (both vectors keep their capacity: no allocation per stream).
    fn take_into(&self, into: &mut Vec<StreamTask>) {
        into.append(&mut crate::lock(&self.0));
    }
}

impl<F: Future<Output = ()> + Send + 'static> hyper::rt::Executor<F> for Streams {
    fn execute(&self, fut: F) {
        // A panic ends its own stream (reset when its future is dropped),
        // not the connection's other streams, as it would in a task of its
        // own.
        let isolated = AssertUnwindSafe(fut).catch_unwind().map(|done| {
            if done.is_err() {
                tracing::error!("serving an HTTP/2 stream panicked; the stream was reset");
            }
        });
        // hyper calls this while the connection is being polled, so the
        // connection's task picks the stream up in the same poll.
        crate::lock(&self.0).push(Box::pin(isolated));
    }
}

/// Serves HTTP/2 on `io` until the client leaves, or finishes the streams in
/// flight once the gateway drains. `max_header_list` is hyper's hard cap on
/// a header list (above the limit the pipeline answers 431 for). The task
/// must poll [`Activity::poll_expired`](crate::proxy::connection::Activity::poll_expired)
/// to be woken by the drain.
pub async fn serve<I>(
    io: I,
    conn: Arc<Connection>,
    max_header_list: u32,
    flood: FloodLimits,
    rt: Arc<Runtime>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = FrameGuard::new(
        io,
        conn.client.ip(),
        flood,
        rt.floods.clone(),
        on_flood(&conn, &rt),
    );
    let queued = Streams::default();
    let mut builder = http2::Builder::new(queued.clone());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(max_header_list);
    let watched = conn.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        // hyper moves each stream's future on its way to the executor;
        // boxed, a move is a pointer instead of the pipeline's several KiB.
        Box::into_pin(Box::write(
            Box::new_uninit(),
            handling(req.map(ClientBody::http2), conn.clone(), rt.clone()),
        ))
    });
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let mut streams = FuturesUnordered::new();
    let mut opened = Vec::new();
    let (mut closed, mut draining) = (false, false);
    std::future::poll_fn(|cx| {
        // Draining, or idle past `http2_idle_timeout`: GOAWAY, finish the
        // open streams, close.
        if !draining && watched.activity.winding_down() {
            draining = true;
            connection.as_mut().graceful_shutdown();
        }
        loop {
            // Streams first: what they answer is written by the
            // connection's poll right after.
            while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {}
            if !closed && let Poll::Ready(ended) = connection.as_mut().poll(cx) {
                closed = true;
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            }
            queued.take_into(&mut opened);
            if opened.is_empty() {
                break;
            }
            streams.extend(opened.drain(..));
        }
        // Streams still running when the connection has closed end on their
        // own (their sends fail); they are polled to the end like tasks.
        if closed && streams.is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
}

/// What a connection does when its client crosses a flood limit: count it,
/// and now and then say so.
fn on_flood(conn: &Connection, rt: &Runtime) -> Box<dyn FnOnce(Flood) + Send> {
    static LOG: Throttled = Throttled::new(std::time::Duration::from_secs(10));
    let metrics = rt.metrics.clone();
    let (listener, client) = (conn.listener.clone(), conn.client);
    Box::new(move |flood| {
        let labels = Http2FloodLabels {
            listener,
            frame: flood.name(),
        };
        metrics.http2_floods.get_or_create(&labels).inc();
        if let Some(times) = LOG.due() {
            tracing::info!(%client, frame = flood.name(), times, "HTTP/2 clients past a flood limit sent GOAWAY ENHANCE_YOUR_CALM and penalized");
        }
    })
}

/// The pipeline's future for one stream, made by a call of its own: with
/// the call kept out of line, the compiler builds the future straight into
/// the box the caller writes it to, instead of building it on the stack and
/// copying its several KiB there (once per request, measured).
#[inline(never)]
fn handling(
    req: Request<ClientBody>,
    conn: Arc<Connection>,
    rt: Arc<Runtime>,
) -> impl Future<Output = Result<Response<Body>, Infallible>> + Send {
    let head = req.method() == Method::HEAD;
    let handled = pipeline::handle(req, conn, rt.snapshot.load_full());
    async move {
        let resp = handled.await?;
        // A response to HEAD is its head only (RFC 9110 §9.3.2): a DATA
        // frame after it is a protocol error the client resets the stream
        // for. Upstream answers to HEAD have no body already; answers the
        // gateway makes (problem+json, `respond`) do.
        Ok(if head { resp.map(headless) } else { resp })
    }
}

/// `body` as the body of a response to HEAD: ended from the start, and
/// dropped (so recorded) when the response is.
fn headless(body: Body) -> Body {
    if HttpBody::is_end_stream(&body) {
        return body;
    }
    Headless(body).boxed_unsync()
}

/// A body that sends nothing and keeps what it wraps until it is dropped.
struct Headless(#[allow(dead_code)] Body);

impl HttpBody for Headless {
    type Data = bytes::Bytes;
    type Error = crate::http::body::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        true
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor;

    #[test]
    fn a_panicking_stream_ends_alone() {
        let queued = Streams::default();
        let polled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = polled.clone();
        queued.execute(async { panic!("a stream's bug") });
        queued.execute(async move { seen.store(true, std::sync::atomic::Ordering::SeqCst) });
        let mut opened = Vec::new();
        queued.take_into(&mut opened);
        assert_eq!(opened.len(), 2);
        let mut streams: FuturesUnordered<StreamTask> = opened.drain(..).collect();
        let waker = futures_util::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        // Both run to their end; the panic does not reach the connection.
        let mut ended = 0;
        while let Poll::Ready(Some(())) = streams.poll_next_unpin(&mut cx) {
            ended += 1;
        }
        assert_eq!(ended, 2);
        assert!(polled.load(std::sync::atomic::Ordering::SeqCst));
    }
}
