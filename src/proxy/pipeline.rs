//! The life of one HTTP request, phase by phase. Read this file to follow a
//! request from the listener to the log line:
//!
//! 1. **accept**: the server hands over the snapshot it loaded for this
//!    request (one atomic load); take or make the request id.
//! 2. **limits**: target length (414), header count and size (431),
//!    declared body size (413).
//! 3. **route**: normalize the path, find the most specific route (404 if none).
//! 4. **request policies**: in fixed phase order (filter, authenticate,
//!    authorize, rate limit, validate, cache lookup, request transform); any
//!    policy may answer and stop the chain.
//! 5. **action**: forward to an upstream (or a weighted split), serve a file,
//!    fan out to several upstreams and answer one JSON object (aggregate),
//!    or answer directly.
//! 6. **error hook**: when the upstream failed, the policies that ran hear
//!    why (the gateway's 502/503/504 stands in for the upstream's answer).
//! 7. **response policies**: every answer, whoever made it after routing,
//!    goes back through the response phases (response transform, cache
//!    store, compress) of the policies whose request phase ran; then the
//!    route's response header changes.
//! 8. **log**: metrics, the access-log line and the policies' log hooks,
//!    when the response body has been sent.
//!
//! The phases and their order are described once, in [`crate::policy`].
//!
//! Errors the gateway makes are problem+json (see [`crate::http::problem`]) and
//! never name a backend address.

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::uri::{PathAndQuery, Uri};
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;

use super::forward::{self, Forwarded};
use super::refresh;
use crate::http::body::{Body, BodyStats, BoxError, LimitedBody};
use crate::http::headers::host_of;
use crate::http::headers::{X_REQUEST_ID, new_request_id, valid_request_id};
use crate::http::pace::TooSlow;
use crate::http::problem::{GatewayAnswer, problem};
use crate::observe::metrics::{ClientTimeoutLabels, RequestLabels, empty_label};
use crate::observe::throttle::Throttled;
use crate::policy::context::RequestCtx;
use crate::policy::{Chain, Flow};
use crate::proxy::connection::{Busy, Connection};
use crate::proxy::record::{LogFields, OnLog, Record, RecordedBody};
use crate::proxy::snapshot::{Action, Binding, Limits, ListenerPlan, Redirect, Snapshot};
use crate::route::normalize_path;
use crate::upstream::Upstream;

/// Serves one request. Never fails: every error becomes a response.
pub async fn handle<B>(
    mut req: Request<B>,
    conn: Arc<Connection>,
    snapshot: Arc<Snapshot>,
) -> Result<Response<Body>, Infallible>
where
    B: hyper::body::Body<Data = bytes::Bytes, Error = BoxError> + Send + Unpin + 'static,
{
    // accept
    let started = Instant::now();
    let mut request_id = match req.headers().get(&X_REQUEST_ID) {
        Some(v) if valid_request_id(v) => v.clone(),
        _ => new_request_id(),
    };
    // HTTP/2's header compression would index every id, unique as it is,
    // and then search all the ids it holds for each response; marked
    // sensitive, the id is sent literally ("never indexed") instead.
    request_id.set_sensitive(true);
    let mut ctx = RequestCtx::new(
        request_id,
        conn.client,
        conn.listener.clone(),
        conn.tls,
        started,
    );
    let body_stats = Arc::new(BodyStats::default());
    let log = snapshot.access_log.as_ref().map(|sink| LogFields {
        sink: sink.clone(),
        request_id: ctx.request_id.clone(),
        client: conn.client,
        method: req.method().clone(),
        uri: req.uri().clone(),
        host_header: req.headers().get(header::HOST).cloned(),
        target: None,
        body: body_stats.clone(),
    });
    let mut record = Record {
        metrics: snapshot.metrics.clone(),
        labels: RequestLabels {
            listener: conn.listener.clone(),
            route: empty_label(),
            upstream: empty_label(),
            status: 0,
        },
        route: None,
        started,
        log,
        busy: Busy::new(&conn, req.version() == http::Version::HTTP_2),
        on_log: None,
        consumer: None,
    };
    let Some(listener) = snapshot.listener(&conn.listener).cloned() else {
        // The listener was removed by a reload while this connection was open.
        let resp = problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "this listener is shutting down",
            ctx.request_id_str(),
        );
        return Ok(finish(resp, &ctx.request_id, record));
    };

    // limits
    if let Some(resp) = check_limits(&listener.limits, &req, &ctx) {
        return Ok(finish(resp, &ctx.request_id, record));
    }

    // one host: routing, policies, the upstream's Host and X-Forwarded-Host
    // must all see the same name, or a route's policies could be passed by
    // naming another host in the target than in the Host header.
    if let Err(detail) = one_host(&mut req) {
        let resp = problem(StatusCode::BAD_REQUEST, detail, ctx.request_id_str());
        return Ok(finish(resp, &ctx.request_id, record));
    }

    // route: dot segments go first, and the cleaned path is also what static
    // files and the upstream see, so `/public/../admin` cannot be routed as
    // /admin and then read differently by the backend.
    if normalize_request_path(&mut req).is_err() {
        let resp = problem(
            StatusCode::BAD_REQUEST,
            "the request path is not valid",
            ctx.request_id_str(),
        );
        return Ok(finish(resp, &ctx.request_id, record));
    }
    if listener.https_redirect {
        let resp = redirect_to(&Redirect::to_https(), &ctx, &req);
        return Ok(finish(resp, &ctx.request_id, record));
    }
    let Some(binding) = find_route(&listener, &req) else {
        let resp = if req.method() == http::Method::TRACE {
            trace_refused(&ctx)
        } else {
            problem(
                StatusCode::NOT_FOUND,
                "no route matches this request",
                ctx.request_id_str(),
            )
        };
        return Ok(finish(resp, &ctx.request_id, record));
    };
    if req.method() == http::Method::TRACE {
        // A route that lists TRACE gets it, but a backend echoes what it
        // receives: credentials would reach a page's script (cross-site
        // tracing), so they are not sent.
        for name in [
            header::COOKIE,
            header::AUTHORIZATION,
            header::PROXY_AUTHORIZATION,
        ] {
            req.headers_mut().remove(name);
        }
    }
    let route = binding.route.clone();
    ctx.route = Some(route.name.clone());
    record.labels.route = route.name.clone();
    record.route = Some(route.metrics.clone());

    let (limit, pace) = (listener.limits.max_body, listener.limits.body_pace);
    let mut req = req.map(|b| LimitedBody::new(b, limit, pace, body_stats.clone()).boxed_unsync());

    // request policies, in phase order; any may answer and stop the chain
    let chain = &binding.chain;
    let mut ran = 0;
    let mut answered = None;
    for p in chain.request.iter() {
        ran += 1;
        let mut flow = p.policy.on_request(&mut ctx, &mut req);
        if let Flow::Continue = flow
            && let Some(pending) = p.policy.on_request_async(&mut ctx, &mut req)
        {
            flow = pending.await;
        }
        match flow {
            Flow::Continue => {}
            Flow::Respond(resp) => {
                answered = Some(resp);
                break;
            }
            Flow::Refresh(resp) => {
                // The client has this answer now; the rest of the line
                // runs in the background (see `refresh`).
                refresh::spawn(
                    chain.clone(),
                    route.clone(),
                    conn.clone(),
                    ran - 1,
                    &ctx,
                    &req,
                );
                answered = Some(resp);
                break;
            }
        }
    }

    // action
    let mut resp = match answered {
        Some(mut resp) => {
            // A policy's refusal is the gateway's answer, not a document
            // of the route's for response transforms to rewrite.
            resp.extensions_mut().insert(GatewayAnswer);
            resp
        }
        None => match &route.action {
            Action::Respond(direct) => {
                let body = match &direct.body_template {
                    Some(t) => bytes::Bytes::from(t.render(&ctx, &req)),
                    None => direct.body.clone(),
                };
                let mut resp = Response::new(crate::http::body::full(body));
                *resp.status_mut() = direct.status;
                *resp.headers_mut() = direct.headers.clone();
                for (name, template) in &direct.header_templates {
                    if let Ok(v) = HeaderValue::from_str(&template.render(&ctx, &req)) {
                        resp.headers_mut().append(name.clone(), v);
                    }
                }
                resp
            }
            Action::Redirect(redirect) => redirect_to(redirect, &ctx, &req),
            Action::Aggregate(aggregate) => {
                aggregate.run(&ctx, &conn, &route, req.map(|_| ())).await
            }
            Action::Static(dir) => {
                let path = req.uri().path();
                let path = match &route.rewrite {
                    Some(rw) => rw.apply(path),
                    None => path.into(),
                };
                match dir.serve(req.method(), &path, req.headers()).await {
                    Ok(resp) => resp,
                    Err(e) => e.into_response(ctx.request_id_str()),
                }
            }
            Action::Forward(upstream) => {
                let forwarded =
                    forward::forward(&ctx, &conn, &route, upstream, req, &body_stats).await;
                note_upstream(&mut record, &mut ctx, upstream, forwarded)
            }
            Action::Split(split) => {
                let upstream = split.pick();
                let forwarded =
                    forward::forward(&ctx, &conn, &route, upstream, req, &body_stats).await;
                note_upstream(&mut record, &mut ctx, upstream, forwarded)
            }
        },
    };

    if let Some(too_slow) = body_stats.too_slow.get() {
        count_slow_body(&snapshot, &ctx, *too_slow);
    }

    // error hook: the upstream failed and the gateway's answer stands in
    if let Some(error) = ctx.upstream_error {
        for p in &chain.request[..ran] {
            p.policy.on_error(&mut ctx, error);
        }
    }

    // response policies: every answer passes back through the response
    // phases of the policies whose request phase ran
    for p in chain.responders(ran) {
        p.policy.on_response(&mut ctx, &mut resp);
        if let Some(pending) = p.policy.on_response_async(&mut ctx, &mut resp) {
            pending.await;
        }
    }
    for (name, value) in ctx.response_headers.drain(..) {
        resp.headers_mut().append(name, value);
    }
    route.response_headers.apply(resp.headers_mut());
    record.consumer = ctx.identity.as_ref().and_then(|i| i.consumer.clone());

    // log: the policies that asked are called after the answer's last byte
    if chain.logs {
        let request_id = ctx.request_id.clone();
        record.on_log = Some(log_hooks(chain, ran, ctx));
        return Ok(finish(resp, &request_id, record));
    }
    Ok(finish(resp, &ctx.request_id, record))
}

/// The log hooks of the policies among the first `ran` that asked for
/// them, given the request's context to keep until then.
fn log_hooks(chain: &Chain, ran: usize, ctx: RequestCtx) -> OnLog {
    let policies = chain.request.clone();
    Box::new(move |outcome| {
        for p in policies[..ran].iter().filter(|p| p.policy.logs()) {
            p.policy.on_log(&ctx, outcome);
        }
    })
}

/// Counts (and, now and then, logs) a request whose client sent its body
/// too slowly: one line per period however many, as an attack makes many.
fn count_slow_body(snapshot: &Snapshot, ctx: &RequestCtx, too_slow: TooSlow) {
    static LOG: Throttled = Throttled::new(std::time::Duration::from_secs(10));
    let labels = ClientTimeoutLabels {
        listener: ctx.listener.clone(),
        kind: too_slow.kind(),
    };
    snapshot
        .metrics
        .client_timeouts
        .get_or_create(&labels)
        .inc();
    if let Some(times) = LOG.due() {
        tracing::info!(client = %ctx.client, kind = too_slow.kind(), times, "request bodies sent too slowly answered 408");
    }
}

/// The answer to a TRACE that no route lists: 405 (routes match TRACE only
/// by naming it, see [`crate::route`]).
fn trace_refused(ctx: &RequestCtx) -> Response<Body> {
    let mut resp = problem(
        StatusCode::METHOD_NOT_ALLOWED,
        "TRACE is not allowed here",
        ctx.request_id_str(),
    );
    resp.headers_mut().insert(
        header::ALLOW,
        HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
    );
    resp
}

/// Notes the upstream and target for the log and hands back the response.
/// (Not an async wrapper around [`forward::forward`], which would take and
/// move the request once more.)
fn note_upstream(
    record: &mut Record,
    ctx: &mut RequestCtx,
    upstream: &Upstream,
    forwarded: Forwarded,
) -> Response<Body> {
    record.labels.upstream = upstream.name.clone();
    ctx.upstream_error = forwarded.error;
    ctx.upstream_answered = forwarded.error.is_none();
    if let Some(log) = record.log.as_mut() {
        log.target = forwarded.target;
    }
    forwarded.response
}

/// Stamps the request id on the response and arranges for the request to be
/// recorded when its body has been sent.
fn finish(resp: Response<Body>, request_id: &HeaderValue, record: Record) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    parts
        .headers
        .insert(X_REQUEST_ID.clone(), request_id.clone());
    let body = RecordedBody::new(body, parts.status, record).boxed_unsync();
    Response::from_parts(parts, body)
}

/// The redirect answer for this request (an empty body; the URL in
/// `Location`).
fn redirect_to<B>(redirect: &Redirect, ctx: &RequestCtx, req: &Request<B>) -> Response<Body> {
    let mut resp = Response::new(crate::http::body::empty());
    *resp.status_mut() = redirect.status;
    match HeaderValue::from_str(&redirect.location(ctx, req)) {
        Ok(location) => {
            resp.headers_mut().insert(header::LOCATION, location);
        }
        // A variable filled with bytes a header cannot carry.
        Err(_) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "the redirect target cannot be made from this request",
                ctx.request_id_str(),
            );
        }
    }
    resp
}

/// Makes the request name one host. An HTTP/1 absolute-form target's
/// authority wins and replaces the Host header (RFC 9112 §3.2.2); an HTTP/2
/// request whose `:authority` and `host` differ is malformed (RFC 9113
/// §8.3.1). User information in the authority is refused (RFC 9110 §4.2.4).
/// Origin-form requests, the common case, cost one look at the target.
fn one_host<B>(req: &mut Request<B>) -> Result<(), &'static str> {
    let Some(authority) = req.uri().authority() else {
        return Ok(());
    };
    if authority.as_str().contains('@') {
        return Err("the request target must not carry user information");
    }
    if req.version() == http::Version::HTTP_2 {
        return match req.headers().get(header::HOST) {
            Some(host)
                if !host
                    .as_bytes()
                    .eq_ignore_ascii_case(authority.as_str().as_bytes()) =>
            {
                Err("the :authority and host of the request name different hosts")
            }
            _ => Ok(()),
        };
    }
    let host = HeaderValue::from_str(authority.as_str())
        .map_err(|_| "the request target's host is not valid")?;
    req.headers_mut().insert(header::HOST, host);
    Ok(())
}

/// Removes dot segments from the request path in place (see [`normalize_path`]),
/// keeping the query and, for absolute-form and HTTP/2 requests, the scheme
/// and authority. Clean paths, the common case, are left untouched.
fn normalize_request_path<B>(req: &mut Request<B>) -> Result<(), http::Error> {
    let normalized = match normalize_path(req.uri().path()) {
        Cow::Borrowed(_) => return Ok(()),
        Cow::Owned(path) => path,
    };
    let path_and_query = match req.uri().query() {
        Some(query) => format!("{normalized}?{query}"),
        None => normalized,
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(path_and_query)?);
    *req.uri_mut() = Uri::from_parts(parts)?;
    Ok(())
}

/// The binding for a request whose path [`normalize_request_path`] has cleaned.
fn find_route<'a, B>(listener: &'a ListenerPlan, req: &Request<B>) -> Option<&'a Binding> {
    listener
        .routes
        .find(
            host_of(req),
            req.method(),
            req.uri().path(),
            req.uri().query(),
            req.headers(),
        )
        .and_then(|i| listener.bindings.get(i))
}

fn check_limits<B>(limits: &Limits, req: &Request<B>, ctx: &RequestCtx) -> Option<Response<Body>> {
    let headers = req.headers();
    // HTTP/1 targets were measured by the parser already; HTTP/2 ones are
    // measured here.
    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target > limits.max_uri_size {
        return Some(problem(
            StatusCode::URI_TOO_LONG,
            "the request target is too long",
            ctx.request_id_str(),
        ));
    }
    // A reverse proxy has no tunnels to offer; forwarding CONNECT would let
    // a target's answer be taken for one.
    if req.method() == http::Method::CONNECT {
        return Some(problem(
            StatusCode::NOT_IMPLEMENTED,
            "CONNECT (tunneling) is not served here",
            ctx.request_id_str(),
        ));
    }
    // RFC 9112 §3.2: an HTTP/1.1 request names exactly one host. Two Host
    // headers could route by one and reach the backend with the other.
    if req.version() == http::Version::HTTP_11 || req.version() == http::Version::HTTP_10 {
        let mut hosts = headers.get_all(header::HOST).iter();
        let first = hosts.next();
        if hosts.next().is_some() {
            return Some(problem(
                StatusCode::BAD_REQUEST,
                "the request has more than one Host header",
                ctx.request_id_str(),
            ));
        }
        if first.is_none()
            && req.version() == http::Version::HTTP_11
            && req.uri().authority().is_none()
        {
            return Some(problem(
                StatusCode::BAD_REQUEST,
                "an HTTP/1.1 request needs a Host header",
                ctx.request_id_str(),
            ));
        }
    }
    if headers.len() > limits.max_headers {
        return Some(problem(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "too many request headers",
            ctx.request_id_str(),
        ));
    }
    // Count as HTTP/1.1 would put them on the wire: "name: value\r\n".
    let size: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    if size > limits.max_header_size {
        return Some(problem(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request headers are too large",
            ctx.request_id_str(),
        ));
    }
    if let Some(max) = limits.max_body {
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > max) {
            return Some(problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body is larger than this listener accepts",
                ctx.request_id_str(),
            ));
        }
    }
    None
}
