//! Forwarding a request to an upstream target and bringing the response back:
//! header hygiene, the circuit breaker, retries on another target, the
//! response-header timeout, HTTP/1.1 upgrade tunnels (WebSocket), and mapping
//! failures to 502/503/504.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;

use http::uri::{PathAndQuery, Uri};
use http::{HeaderValue, Request, Response, StatusCode, Version, header};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use super::connection::Connection;
use crate::http::body::{Body, BodyStats, BoxError};
use crate::http::headers::{X_REQUEST_ID, remove_hop_by_hop, set_forwarded};
use crate::http::problem::problem;
use crate::http::upgrade::ClientUpgrade;
use crate::net::proxy_protocol::Prefixed;
use crate::policy::context::RequestCtx;
use crate::proxy::snapshot::RouteEntry;
use crate::upstream::balance::PickContext;
use crate::upstream::breaker::Admitted;
use crate::upstream::client::UpstreamBody;
use crate::upstream::client::{Peers, Sent, Upgraded};
use crate::upstream::retry::{Failure, RetryPolicy};
use crate::upstream::{InFlight, Upstream, UpstreamError};

/// An upstream's answer (or the gateway's error) and the target that was used.
pub struct Forwarded {
    /// The response for the client.
    pub response: Response<Body>,
    /// The target's address, for the access log.
    pub target: Option<Arc<str>>,
    /// Why the upstream gave no answer, when the response is the gateway's.
    pub error: Option<UpstreamError>,
}

/// Sends `req` to a target of `upstream`, retrying on another target when the
/// upstream's `retries` allow it, and returns the response to relay.
pub async fn forward(
    ctx: &RequestCtx,
    conn: &Connection,
    route: &RouteEntry,
    upstream: &Upstream,
    mut req: Request<Body>,
    body_stats: &BodyStats,
) -> Forwarded {
    let rid = ctx.request_id_str();
    let fail = |status, detail, error| Forwarded {
        response: problem(status, detail, rid),
        target: None,
        error,
    };
    let pick = PickContext {
        hash: upstream
            .hash_key
            .as_ref()
            .map(|k| k.hash(&req, ctx.client.ip()))
            .unwrap_or(0),
    };
    let peers = Peers {
        source: ctx.client,
        destination: conn.local,
    };
    // The HTTP/1 server marks a request that asks for an upgrade (and will
    // hand over the connection after a 101). Only the protocols the route
    // allows go upstream; a request offering none is forwarded as a plain
    // request (its Upgrade header removed with the other hop-by-hop ones).
    let client_upgrade = req
        .extensions_mut()
        .remove::<ClientUpgrade>()
        .and_then(|client| {
            let offered = allowed_upgrade(req.headers(), &route.upgrades)?;
            Some(UpgradeAsk { client, offered })
        });
    let upgrade = client_upgrade.is_some();
    let Some(path_and_query) = upstream_path(&req, route) else {
        return fail(
            StatusCode::BAD_REQUEST,
            "the request path cannot be forwarded",
            None,
        );
    };
    prepare_headers(ctx, conn, route, &mut req, upgrade);
    if let Some(ask) = &client_upgrade {
        req.headers_mut()
            .insert(header::UPGRADE, ask.offered.clone());
    }
    *req.version_mut() = if upstream.client_is_http2() {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };

    let admitted = match &upstream.breaker {
        None => None,
        Some(breaker) => match breaker.admit(upstream.connect_timeout).await {
            Ok(a) => Some(a),
            Err(refused) => {
                upstream.circuit_open_total.inc();
                tracing::debug!(upstream = %upstream.name, request_id = rid, reason = %refused, "circuit breaker refused a request");
                return fail(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the upstream is at capacity; try again later",
                    Some(UpstreamError::CircuitOpen),
                );
            }
        },
    };

    // Retries need the request body again, so only an empty or small body
    // (kept in memory) can be retried; anything else is sent once.
    let retry = upstream
        .retries
        .as_ref()
        .filter(|r| !upgrade && (r.non_idempotent || req.method().is_idempotent()));
    if let Some(r) = retry {
        r.budget.deposit();
    }
    let (parts, body) = req.into_parts();
    let kept = match retry {
        Some(r) => keep_body(body, r.max_body, body_stats).await,
        None => Kept::Stream(body),
    };
    let plan = match (retry, kept) {
        (Some(policy), Kept::Bytes(bytes)) => Plan::Retry(policy, bytes),
        (None, Kept::Bytes(bytes)) => Plan::Once(crate::http::body::full(bytes)),
        (_, Kept::Stream(body)) => Plan::Once(body),
        (_, Kept::TooLarge) => {
            return fail(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body is larger than this listener accepts",
                None,
            );
        }
        (_, Kept::TooSlow) => {
            return fail(
                StatusCode::REQUEST_TIMEOUT,
                crate::http::body::SLOW_BODY,
                None,
            );
        }
        (_, Kept::Unreadable) => {
            return fail(
                StatusCode::BAD_REQUEST,
                "the request body could not be read",
                None,
            );
        }
    };
    let (policy, replay) = match plan {
        Plan::Retry(policy, bytes) => (policy, bytes),
        Plan::Once(body) => {
            // One attempt, written out here rather than as an async helper,
            // which would take (and move) the request once more.
            let Some((index, lease)) = upstream.select(&pick, &[]) else {
                return fail(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no healthy upstream target is available",
                    Some(UpstreamError::NoHealthyTarget),
                );
            };
            let req = Request::from_parts(parts, body);
            let outcome = exchange(upstream, index, &path_and_query, req, peers).await;
            return relay(
                ctx,
                upstream,
                index,
                outcome,
                client_upgrade,
                Guards(lease, admitted),
                body_stats,
            );
        }
    };

    let mut tried = Tried::default();
    let mut retries_done = 0;
    loop {
        let Some((index, lease)) = upstream.select(&pick, tried.as_slice()) else {
            return fail(
                StatusCode::SERVICE_UNAVAILABLE,
                "no healthy upstream target is available",
                Some(UpstreamError::NoHealthyTarget),
            );
        };
        tried.push(index);
        let target = &upstream.targets[index];
        let mut attempt = Request::new(crate::http::body::full(replay.clone()));
        *attempt.method_mut() = parts.method.clone();
        *attempt.version_mut() = parts.version;
        *attempt.headers_mut() = parts.headers.clone();
        let outcome = exchange(upstream, index, &path_and_query, attempt, peers).await;
        let failure = match &outcome {
            Ok(sent) if sent.response.status().is_server_error() => {
                Some(Failure::Status(sent.response.status().as_u16()))
            }
            Ok(_) => None,
            Err(e) => Some(e.failure),
        };
        if let Some(failure) = failure
            && retries_done < policy.attempts
            && policy.retries(failure)
            && policy.budget.withdraw()
        {
            retries_done += 1;
            upstream.retries_total.inc();
            tracing::debug!(upstream = %upstream.name, target = %target.address, request_id = rid, ?failure, "retrying on another target");
            drop(outcome);
            drop(lease);
            tokio::time::sleep(policy.delay(retries_done)).await;
            continue;
        }
        return relay(
            ctx,
            upstream,
            index,
            outcome,
            None,
            Guards(lease, admitted),
            body_stats,
        );
    }
}

/// Sends one attempt to `targets[index]` and waits for the response head,
/// recording latency and the outcome for outlier detection.
async fn exchange(
    upstream: &Upstream,
    index: usize,
    path_and_query: &PathAndQuery,
    mut req: Request<Body>,
    peers: Peers,
) -> Result<Sent, AttemptError> {
    let target = &upstream.targets[index];
    *req.uri_mut() = Uri::from(path_and_query.clone());
    let sent = Instant::now();
    // Timed through a pinned reference: the send's future (about 1.9 KiB)
    // is not handed to the timeout by value.
    let sending = std::pin::pin!(upstream.client.send(
        &target.authority,
        &target.state.pool,
        req,
        Some(peers)
    ));
    let result = tokio::time::timeout(upstream.response_header_timeout, sending).await;
    let elapsed = sent.elapsed();
    upstream.duration.observe(elapsed.as_secs_f64());
    let outcome = match result {
        Err(_elapsed) => Err(AttemptError {
            failure: Failure::Timeout,
            detail: "no response head within response_header".to_string(),
            timed_out: true,
        }),
        Ok(Err(e)) => Err(AttemptError {
            failure: if e.connect {
                Failure::ConnectError
            } else {
                Failure::Reset
            },
            timed_out: e.timed_out,
            detail: e.detail,
        }),
        Ok(Ok(sent)) => {
            target.state.observe_latency(elapsed);
            Ok(sent)
        }
    };
    let failed = match &outcome {
        Ok(sent) => sent.response.status().is_server_error(),
        Err(_) => true,
    };
    upstream.record_outcome(index, failed);
    outcome
}

/// What the client gets for the final attempt's outcome.
fn relay(
    ctx: &RequestCtx,
    upstream: &Upstream,
    index: usize,
    outcome: Result<Sent, AttemptError>,
    client_upgrade: Option<UpgradeAsk>,
    guards: Guards,
    body_stats: &BodyStats,
) -> Forwarded {
    let target = &upstream.targets[index];
    let rid = ctx.request_id_str();
    let (response, error) = match outcome {
        Ok(Sent {
            response: mut resp,
            upgraded,
        }) => {
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                match (client_upgrade, upgraded) {
                    (Some(ask), Some(upstream_side))
                        if switched_to_offered(resp.headers(), &ask.offered) =>
                    {
                        // 101: the upstream connection becomes the tunnel.
                        tokio::spawn(tunnel(ask.client, upstream_side, guards));
                        (resp.map(|_| crate::http::body::empty()), None)
                    }
                    // Dropping the upstream side here closes the target's
                    // connection: what follows a 101 is not HTTP/1.1.
                    _ => {
                        tracing::warn!(upstream = %upstream.name, target = %target.address, request_id = rid, "the upstream switched to a protocol the request did not ask for");
                        let resp = problem(
                            StatusCode::BAD_GATEWAY,
                            "the upstream switched to a protocol the request did not ask for",
                            rid,
                        );
                        (resp, Some(UpstreamError::ProtocolSwitch))
                    }
                }
            } else {
                remove_hop_by_hop(resp.headers_mut(), false);
                // The target counts as in use until the body has been relayed.
                (resp.map(|b| from_upstream(b, guards)), None)
            }
        }
        Err(_) if body_stats.too_slow.get().is_some() => (
            problem(
                StatusCode::REQUEST_TIMEOUT,
                crate::http::body::SLOW_BODY,
                rid,
            ),
            None,
        ),
        Err(_) if body_stats.too_large.load(Ordering::Relaxed) => (
            problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body is larger than this listener accepts",
                rid,
            ),
            None,
        ),
        Err(_) if body_stats.broken.load(Ordering::Relaxed) => (
            problem(
                StatusCode::BAD_REQUEST,
                "the request body could not be read",
                rid,
            ),
            None,
        ),
        Err(e) => {
            tracing::warn!(upstream = %upstream.name, target = %target.address, request_id = rid, failure = ?e.failure, error = %e.detail, "upstream request failed");
            let (status, text, error) = match e.failure {
                Failure::ConnectError if e.timed_out => (
                    StatusCode::GATEWAY_TIMEOUT,
                    "the upstream did not answer in time",
                    UpstreamError::ConnectFailed,
                ),
                _ if e.timed_out => (
                    StatusCode::GATEWAY_TIMEOUT,
                    "the upstream did not answer in time",
                    UpstreamError::TimedOut,
                ),
                Failure::ConnectError => (
                    StatusCode::BAD_GATEWAY,
                    "the upstream could not be reached",
                    UpstreamError::ConnectFailed,
                ),
                _ => (
                    StatusCode::BAD_GATEWAY,
                    "the upstream connection failed",
                    UpstreamError::ConnectionFailed,
                ),
            };
            (problem(status, text, rid), Some(error))
        }
    };
    Forwarded {
        response,
        target: Some(target.address.clone()),
        error,
    }
}

/// What holds an upstream slot while a response streams: the target's
/// in-flight count and the circuit breaker's admission. Only dropping it
/// matters, so its fields are never read.
struct Guards(
    #[allow(dead_code)] InFlight,
    #[allow(dead_code)] Option<Admitted>,
);

/// Targets one request has used, without allocating.
#[derive(Default)]
struct Tried {
    used: [usize; 8],
    len: usize,
}

impl Tried {
    fn push(&mut self, index: usize) {
        // Past eight attempts the oldest are forgotten; a repeat is harmless.
        self.used[self.len % 8] = index;
        self.len += 1;
    }
    fn as_slice(&self) -> &[usize] {
        &self.used[..self.len.min(8)]
    }
}

/// How a request goes upstream: retryable with a kept body, or once.
enum Plan<'a> {
    /// Attempts may repeat; each sends these bytes.
    Retry(&'a RetryPolicy, Bytes),
    /// One attempt with this body.
    Once(Body),
}

/// A request body read for possible replay.
enum Kept {
    /// Small enough: here it is.
    Bytes(Bytes),
    /// Too large to keep: still streaming, send it once.
    Stream(Body),
    /// Crossed the listener's max_body while being read.
    TooLarge,
    /// The client sent it too slowly.
    TooSlow,
    /// The client's body broke while being read.
    Unreadable,
}

/// Reads the body into memory when it is empty or declares a length no
/// larger than `max`. A body of unknown length is streamed once instead:
/// reading it to find out would mean it could not be sent unread anymore.
async fn keep_body(body: Body, max: u64, stats: &BodyStats) -> Kept {
    use http_body_util::BodyExt;
    let hint = hyper::body::Body::size_hint(&body);
    if hyper::body::Body::is_end_stream(&body) {
        return Kept::Bytes(Bytes::new());
    }
    match hint.exact() {
        Some(len) if len <= max => match body.collect().await {
            Ok(c) => Kept::Bytes(c.to_bytes()),
            Err(_) if stats.too_slow.get().is_some() => Kept::TooSlow,
            Err(_) if stats.too_large.load(Ordering::Relaxed) => Kept::TooLarge,
            Err(_) => Kept::Unreadable,
        },
        _ => Kept::Stream(body),
    }
}

/// Why one attempt produced no response head.
struct AttemptError {
    /// The failure as retry rules name it.
    failure: Failure,
    /// The error chain, for the log (never for the client).
    detail: String,
    /// Whether it was a timeout (504) rather than a refusal or reset (502).
    timed_out: bool,
}

/// A client's upgrade request as it goes upstream.
struct UpgradeAsk {
    /// The client's connection, handed over after a 101.
    client: ClientUpgrade,
    /// The Upgrade header sent upstream: the offered protocols the route allows.
    offered: HeaderValue,
}

/// The protocols of the request's `Upgrade` header (RFC 9110 §7.8) that
/// `allowed` names, as the header to send upstream; `None` when none is.
fn allowed_upgrade(headers: &http::HeaderMap, allowed: &[Box<str>]) -> Option<HeaderValue> {
    let is_allowed = |protocol: &[u8]| {
        let name = protocol.split(|b| *b == b'/').next().unwrap_or_default();
        allowed
            .iter()
            .any(|a| a.as_bytes().eq_ignore_ascii_case(name))
    };
    let offered = || {
        headers
            .get_all(header::UPGRADE)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|p| !p.is_empty())
    };
    // The usual case, one header naming one allowed protocol, is passed on
    // as it is.
    let mut values = headers.get_all(header::UPGRADE).iter();
    if let (Some(only), None) = (values.next(), values.next())
        && offered().all(is_allowed)
        && offered().next().is_some()
    {
        return Some(only.clone());
    }
    let mut kept = Vec::new();
    for protocol in offered().filter(|p| is_allowed(p)) {
        if !kept.is_empty() {
            kept.extend_from_slice(b", ");
        }
        kept.extend_from_slice(protocol);
    }
    if kept.is_empty() {
        return None;
    }
    HeaderValue::from_bytes(&kept).ok()
}

/// Whether a 101's `Upgrade` header names only protocols the request offered.
fn switched_to_offered(response: &http::HeaderMap, offered: &HeaderValue) -> bool {
    let protocols = |v: &'_ [u8]| -> Vec<Vec<u8>> {
        v.split(|b| *b == b',')
            .map(<[u8]>::trim_ascii)
            .filter(|p| !p.is_empty())
            .map(<[u8]>::to_ascii_lowercase)
            .collect()
    };
    let offered = protocols(offered.as_bytes());
    let mut chosen = response
        .get_all(header::UPGRADE)
        .iter()
        .flat_map(|v| protocols(v.as_bytes()))
        .peekable();
    chosen.peek().is_some() && chosen.all(|p| offered.contains(&p))
}

/// Copies bytes both ways between the upgraded client and upstream connections.
async fn tunnel(client: ClientUpgrade, upstream: Upgraded, _guards: Guards) {
    let Some((client, client_early)) = client.connection().await else {
        tracing::debug!("the 101 did not reach the client; no tunnel");
        return;
    };
    // Bytes either side sent right behind its request or its 101 come first.
    let mut client = Prefixed::new(client_early.to_vec(), client);
    let mut upstream = Prefixed::new(upstream.early.to_vec(), upstream.io);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(error = %e, "upgraded connection ended with an error");
    }
}

/// The path and query to send upstream, with the route's rewrite applied.
fn upstream_path(req: &Request<Body>, route: &RouteEntry) -> Option<PathAndQuery> {
    match &route.rewrite {
        None => Some(
            req.uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        ),
        Some(rw) => {
            let new_path = rw.apply(req.uri().path());
            // A regex rewrite may add its own query; the client's is appended.
            let joined = match (new_path.contains('?'), req.uri().query()) {
                (_, None) => new_path.into_owned(),
                (true, Some(q)) => format!("{new_path}&{q}"),
                (false, Some(q)) => format!("{new_path}?{q}"),
            };
            PathAndQuery::try_from(joined).ok()
        }
    }
}

/// Header hygiene and the route's header changes, done once per request
/// (not per attempt).
fn prepare_headers(
    ctx: &RequestCtx,
    conn: &Connection,
    route: &RouteEntry,
    req: &mut Request<Body>,
    upgrade: bool,
) {
    // The Host header's own value is shared, not copied; only an HTTP/2 or
    // absolute-form request needs its authority turned into a header value.
    let original_host = match req.uri().authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => req.headers().get(header::HOST).cloned(),
    };
    let headers = req.headers_mut();
    // Room for the headers added below, so that the map grows at most once.
    headers.reserve(4);
    let te_trailers = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    remove_hop_by_hop(headers, upgrade);
    if te_trailers {
        // gRPC needs "te: trailers", the one TE value HTTP/2 allows.
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    set_forwarded(
        headers,
        &conn.forwarded_for,
        ctx.tls,
        original_host.as_ref(),
    );
    if !headers.contains_key(header::HOST)
        && let Some(h) = &original_host
    {
        headers.insert(header::HOST, h.clone());
    }
    headers.insert(X_REQUEST_ID.clone(), ctx.request_id.clone());
    if let Some(cert) = &conn.client_cert {
        // Never trust a client-sent subject: only the verified one passes.
        headers.remove(&cert.header);
        if let Some(subject) = &cert.subject {
            headers.insert(cert.header.clone(), subject.clone());
        }
    }
    route
        .consumer_headers
        .apply(ctx.identity.as_deref(), headers);
    route.request_headers.apply(headers);
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
fn from_upstream<G: Send + Unpin + 'static>(body: UpstreamBody, guard: G) -> Body {
    Guarded {
        inner: body,
        _guard: guard,
    }
    .boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade_headers(values: &[&str]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for v in values {
            h.append(header::UPGRADE, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn only_the_protocols_a_route_allows_are_offered_upstream() {
        let websocket: Box<[Box<str>]> = Box::new([Box::from("websocket")]);
        let two: Box<[Box<str>]> = Box::new([Box::from("websocket"), Box::from("foo")]);
        // (offered Upgrade headers, the route's list, what goes upstream)
        type Case<'a> = (&'a [&'a str], &'a [Box<str>], Option<&'a str>);
        let cases: &[Case] = &[
            (&["websocket"], &websocket, Some("websocket")),
            (&["WebSocket"], &websocket, Some("WebSocket")),
            (&["h2c"], &websocket, None),
            (&["foo"], &websocket, None),
            (&["h2c, websocket"], &websocket, Some("websocket")),
            (&["h2c", "websocket"], &websocket, Some("websocket")),
            (&["foo/2, h2c, websocket"], &two, Some("foo/2, websocket")),
            (&[" , "], &websocket, None),
            (&[], &websocket, None),
        ];
        for (offered, allowed, expected) in cases {
            let got = allowed_upgrade(&upgrade_headers(offered), allowed);
            assert_eq!(
                got.as_ref().map(|v| v.to_str().unwrap()),
                *expected,
                "{offered:?} with {allowed:?}"
            );
        }
    }

    #[test]
    fn a_switch_counts_only_to_a_protocol_the_request_offered() {
        let offered = HeaderValue::from_static("foo/2, websocket");
        let cases: &[(&[&str], bool)] = &[
            (&["websocket"], true),
            (&["WebSocket"], true),
            (&["foo/2"], true),
            (&["foo"], false),
            (&["h2c"], false),
            (&["websocket, h2c"], false),
            (&[], false),
        ];
        for (chosen, expected) in cases {
            assert_eq!(
                switched_to_offered(&upgrade_headers(chosen), &offered),
                *expected,
                "{chosen:?}"
            );
        }
    }
}
