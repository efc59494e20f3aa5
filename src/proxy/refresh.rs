//! Background refreshes: a policy answered the client at once with
//! [`Flow::Refresh`] (a cache serving a stale answer under
//! stale-while-revalidate), and the rest of the request's line runs here,
//! after the client has its answer: the policies from the one that asked,
//! the route's upstream, and the response phases of those policies (the
//! cache stores the new answer there). The answer itself is read to its
//! end and dropped.

use std::sync::Arc;
use std::time::Instant;

use http::Request;
use http_body_util::BodyExt;

use super::connection::Connection;
use super::forward;
use super::snapshot::{Action, RouteEntry};
use crate::http::body::{Body, BodyStats, empty};
use crate::http::headers::new_request_id;
use crate::policy::context::RequestCtx;
use crate::policy::{Chain, Flow};

/// Starts the refresh of `req` from the policy at `from` in `chain`. Only
/// routes that forward (to an upstream or a split) refresh; other actions
/// make answers no cache keeps.
pub fn spawn(
    chain: Arc<Chain>,
    route: Arc<RouteEntry>,
    conn: Arc<Connection>,
    from: usize,
    ctx: &RequestCtx,
    req: &Request<Body>,
) {
    if !matches!(route.action, Action::Forward(_) | Action::Split(_)) {
        return;
    }
    let mut bg = RequestCtx::new(
        new_request_id(),
        ctx.client,
        ctx.listener.clone(),
        ctx.tls,
        Instant::now(),
    );
    bg.route = ctx.route.clone();
    bg.identity = ctx.identity.clone();
    bg.refresh = true;
    // The request as the policies before `from` left it, without a body:
    // only GET and HEAD answers are refreshed.
    let mut bg_req = Request::new(empty());
    *bg_req.method_mut() = req.method().clone();
    *bg_req.uri_mut() = req.uri().clone();
    *bg_req.version_mut() = req.version();
    *bg_req.headers_mut() = req.headers().clone();
    tokio::spawn(run(chain, route, conn, from, bg, bg_req));
}

async fn run(
    chain: Arc<Chain>,
    route: Arc<RouteEntry>,
    conn: Arc<Connection>,
    from: usize,
    mut ctx: RequestCtx,
    mut req: Request<Body>,
) {
    let mut ran = from;
    for p in chain.request.get(from..).unwrap_or_default() {
        ran += 1;
        let mut flow = p.policy.on_request(&mut ctx, &mut req);
        if let Flow::Continue = flow
            && let Some(pending) = p.policy.on_request_async(&mut ctx, &mut req)
        {
            flow = pending.await;
        }
        if !matches!(flow, Flow::Continue) {
            // Answered without the upstream (another request refreshed it
            // first): nothing left to do.
            return;
        }
    }
    let stats = BodyStats::default();
    let upstream = match &route.action {
        Action::Forward(upstream) => upstream,
        Action::Split(split) => split.pick(),
        _ => return,
    };
    let forwarded = forward::forward(&ctx, &conn, &route, upstream, req, &stats).await;
    ctx.upstream_error = forwarded.error;
    ctx.upstream_answered = forwarded.error.is_none();
    let mut resp = forwarded.response;
    if let Some(error) = ctx.upstream_error {
        for p in &chain.request[from..ran] {
            p.policy.on_error(&mut ctx, error);
        }
    }
    for p in chain.responders_between(from, ran) {
        p.policy.on_response(&mut ctx, &mut resp);
        if let Some(pending) = p.policy.on_response_async(&mut ctx, &mut resp) {
            pending.await;
        }
    }
    // Reading the body to its end is what stores it.
    let mut body = resp.into_body();
    while let Some(Ok(_)) = body.frame().await {}
}
