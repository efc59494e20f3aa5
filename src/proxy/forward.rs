//! Forwarding a request to an upstream target and bringing the response back:
//! URI and header rewriting, the response-header timeout, HTTP/1.1 upgrade
//! tunnels (WebSocket), and mapping failures to 502/504.

use std::error::Error as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::uri::{PathAndQuery, Uri};
use http::{HeaderValue, Request, Response, StatusCode, Version, header};
use hyper_util::rt::TokioIo;

use super::body::{Body, BodyStats, from_incoming};
use super::context::RequestCtx;
use super::headers::{X_REQUEST_ID, remove_hop_by_hop, set_forwarded};
use super::pipeline::{Connection, host_of};
use super::problem::problem;
use crate::config::snapshot::RouteEntry;
use crate::upstream::Upstream;

/// An upstream's answer (or the gateway's error) and the target that was used.
pub struct Forwarded {
    /// The response for the client.
    pub response: Response<Body>,
    /// The target's address, for the access log.
    pub target: Option<Arc<str>>,
}

/// Sends `req` to a target of `upstream` and returns the response to relay.
pub async fn forward(
    ctx: &RequestCtx,
    conn: &Connection,
    route: &RouteEntry,
    upstream: &Upstream,
    mut req: Request<Body>,
    body: &BodyStats,
) -> Forwarded {
    let target = upstream.pick();
    let upgrade = is_upgrade(&req);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

    let uri = match upstream_uri(upstream, target, &req, route) {
        Some(u) => u,
        None => {
            return Forwarded {
                response: problem(
                    StatusCode::BAD_REQUEST,
                    "the request path cannot be forwarded",
                    ctx.request_id_str(),
                ),
                target: None,
            };
        }
    };
    let original_host = host_of(&req).and_then(|h| HeaderValue::from_str(h).ok());
    *req.uri_mut() = uri;
    let headers = req.headers_mut();
    let te_trailers = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    remove_hop_by_hop(headers, upgrade);
    if te_trailers {
        // gRPC needs "te: trailers", the one TE value HTTP/2 allows.
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    set_forwarded(headers, ctx.client.ip(), ctx.tls, original_host.as_ref());
    if !headers.contains_key(header::HOST)
        && let Some(h) = &original_host
    {
        headers.insert(header::HOST, h.clone());
    }
    headers.insert(X_REQUEST_ID.clone(), ctx.request_id.clone());
    if let Some(name) = &conn.subject_header {
        // Never trust a client-sent subject: only the verified one passes.
        headers.remove(name);
        if let Some(subject) = &conn.client_subject {
            headers.insert(name.clone(), subject.clone());
        }
    }
    route.request_headers.apply(headers);
    *req.version_mut() = if upstream.client_is_http2() {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };

    let sent = std::time::Instant::now();
    let result =
        tokio::time::timeout(upstream.response_header_timeout, upstream.client.send(req)).await;
    upstream.duration.observe(sent.elapsed().as_secs_f64());

    let target_name = Some(target.address.clone());
    let response = match result {
        Err(_elapsed) => {
            tracing::warn!(upstream = %upstream.name, target = %target.address, request_id = ctx.request_id_str(), "upstream response timed out");
            problem(
                StatusCode::GATEWAY_TIMEOUT,
                "the upstream did not answer in time",
                ctx.request_id_str(),
            )
        }
        Ok(Err(e)) => {
            if body.too_large.load(Ordering::Relaxed) {
                problem(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request body is larger than this listener accepts",
                    ctx.request_id_str(),
                )
            } else {
                let (status, detail) = classify(&e);
                tracing::warn!(upstream = %upstream.name, target = %target.address, request_id = ctx.request_id_str(), error = %error_chain(&e), "upstream request failed");
                problem(status, detail, ctx.request_id_str())
            }
        }
        Ok(Ok(mut resp)) => {
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                if let Some(client_side) = client_upgrade {
                    let upstream_side = hyper::upgrade::on(&mut resp);
                    tokio::spawn(tunnel(client_side, upstream_side));
                }
            } else {
                remove_hop_by_hop(resp.headers_mut(), false);
            }
            resp.map(from_incoming)
        }
    };
    Forwarded {
        response,
        target: target_name,
    }
}

/// Copies bytes both ways between the upgraded client and upstream connections.
async fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(error = %e, "upgraded connection ended with an error");
    }
}

fn is_upgrade(req: &Request<Body>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// `scheme://target/path?query` with the route's rewrite applied.
fn upstream_uri(
    upstream: &Upstream,
    target: &crate::upstream::Target,
    req: &Request<Body>,
    route: &RouteEntry,
) -> Option<Uri> {
    let path = req.uri().path();
    let query = req.uri().query();
    let path_and_query: PathAndQuery = match &route.rewrite {
        None => match req.uri().path_and_query() {
            Some(pq) => pq.clone(),
            None => PathAndQuery::from_static("/"),
        },
        Some(rw) => {
            let new_path = rw.apply(path);
            // A regex rewrite may add its own query; the client's is appended.
            let joined = match (new_path.contains('?'), query) {
                (_, None) => new_path.into_owned(),
                (true, Some(q)) => format!("{new_path}&{q}"),
                (false, Some(q)) => format!("{new_path}?{q}"),
            };
            PathAndQuery::try_from(joined).ok()?
        }
    };
    Uri::builder()
        .scheme(upstream.scheme.clone())
        .authority(target.authority.clone())
        .path_and_query(path_and_query)
        .build()
        .ok()
}

/// 504 for timeouts, 502 for everything else; details never name the target.
fn classify(e: &hyper_util::client::legacy::Error) -> (StatusCode, &'static str) {
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return (
                StatusCode::GATEWAY_TIMEOUT,
                "the upstream did not answer in time",
            );
        }
        source = s.source();
    }
    if e.is_connect() {
        (StatusCode::BAD_GATEWAY, "the upstream could not be reached")
    } else {
        (StatusCode::BAD_GATEWAY, "the upstream connection failed")
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
