//! The `aggregate` action (backend for frontend): one request fans out to
//! several upstream calls and the client gets one JSON object with a member
//! per call.
//!
//! Calls start together and run concurrently on the request's own task; a
//! call whose path names an earlier call's answer (`{user.id}`) starts as
//! soon as that call has answered, the others still in parallel, so the
//! whole takes about as long as the slowest chain, not the sum. Each call
//! goes through [`forward::forward`]: the upstream's balancer, health
//! checks, retries and circuit breaker apply as to any forwarded request.
//!
//! A call fails when it gets no answer within its timeout, the upstream
//! fails or answers other than 2xx, the answer is not JSON or is larger than
//! `max_body`, its `select` path is absent, or a call it depends on failed.
//! A failed `optional` call becomes `null` and an entry of `_errors`; any
//! other failure answers 502 naming the call (never a backend address).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use regex::Regex;
use serde_json::{Map, Value};

use super::connection::Connection;
use super::forward;
use super::snapshot::RouteEntry;
use crate::http::body::{Body, BodyStats, ReadError, empty, full, read_whole};
use crate::http::headers::host_of;
use crate::http::problem::problem;
use crate::policy::context::RequestCtx;
use crate::policy::template::{Template, Unfilled, Values};
use crate::upstream::{Upstream, UpstreamError};

/// A compiled `aggregate` action.
pub struct Aggregate {
    /// The calls, in name order.
    pub calls: Box<[Call]>,
    /// Members of each answer at the top level instead of under the call's name.
    pub merge: bool,
    /// Request headers copied to every call.
    pub forward_headers: Box<[HeaderName]>,
    /// The largest answer read from one call.
    pub max_body: u64,
    /// The route's `path_regex`, anchored, whose named groups are parameters.
    pub path_groups: Option<Regex>,
}

/// One upstream call of an aggregate.
pub struct Call {
    /// The member name its answer gets.
    pub name: Box<str>,
    /// Who answers it.
    pub upstream: Arc<Upstream>,
    /// Its method.
    pub method: Method,
    /// Its path and query, with variables.
    pub path: Template,
    /// Its time limit, head and body.
    pub timeout: Duration,
    /// Whether a failure is `null` rather than a 502.
    pub optional: bool,
    /// The part of the answer kept, as a JSON pointer.
    pub select: Option<String>,
    /// The calls (by index) it waits for.
    pub after: Box<[usize]>,
}

/// The headers every call gets unless the route names its own.
pub const DEFAULT_FORWARD_HEADERS: [&str; 3] = ["authorization", "traceparent", "tracestate"];

/// What became of one call: its (selected) answer, or why it failed.
type Outcome = Result<Value, Failed>;

/// Why a call failed.
#[derive(Debug, PartialEq)]
struct Failed {
    /// In words a client may read (never a backend address).
    why: String,
    /// The request lacked what the call needs (400 rather than 502).
    by_client: bool,
}

impl From<String> for Failed {
    fn from(why: String) -> Failed {
        Failed {
            why,
            by_client: false,
        }
    }
}

impl Aggregate {
    /// Makes the calls for this request (its head: calls carry no body)
    /// and answers with their results.
    pub async fn run(
        &self,
        ctx: &RequestCtx,
        conn: &Connection,
        route: &RouteEntry,
        req: Request<()>,
    ) -> Response<Body> {
        let req = &req;
        let mut outcomes: Vec<Option<Outcome>> = (0..self.calls.len()).map(|_| None).collect();
        let mut started = vec![false; self.calls.len()];
        let mut running = FuturesUnordered::new();
        let path = req.uri().path();
        let groups = self.path_groups.as_ref().and_then(|r| r.captures(path));
        loop {
            // Start every call whose predecessors are done; one that cannot
            // be made (a predecessor failed, a value is missing) is done at
            // once, which may ready others, hence the inner loop.
            let mut progress = true;
            while progress {
                progress = false;
                for (i, call) in self.calls.iter().enumerate() {
                    if started[i] || call.after.iter().any(|&a| outcomes[a].is_none()) {
                        continue;
                    }
                    started[i] = true;
                    let values = RequestValues {
                        groups: groups.as_ref(),
                        query: req.uri().query(),
                        outcomes: &outcomes,
                    };
                    match self.request(call, ctx, req, &values) {
                        Ok(call_req) => {
                            running.push(self.call(i, call_req, ctx, conn, route));
                        }
                        Err(failed) => {
                            outcomes[i] = Some(Err(failed));
                            progress = true;
                        }
                    }
                }
            }
            match running.next().await {
                Some((i, outcome)) => outcomes[i] = Some(outcome),
                None => break,
            }
        }
        self.answer(ctx, route, outcomes)
    }

    /// The request for `call`, or why it cannot be made.
    fn request<B>(
        &self,
        call: &Call,
        ctx: &RequestCtx,
        req: &Request<B>,
        values: &RequestValues<'_>,
    ) -> Result<Request<Body>, Failed> {
        if let Some(&failed) = call
            .after
            .iter()
            .find(|&&a| matches!(values.outcomes[a], Some(Err(_))))
        {
            return Err(format!(
                "it needs the answer of `{}`, which failed",
                self.calls[failed].name
            )
            .into());
        }
        let target = call
            .path
            .render_url(ctx, req, values)
            .map_err(|e| match e {
                Unfilled::Field(field, i) => Failed::from(format!(
                    "`{field}` is not in the answer of `{}`",
                    self.calls.get(i).map_or("", |c| &c.name)
                )),
                missing @ Unfilled::Param(_) => Failed {
                    why: missing.to_string(),
                    by_client: true,
                },
            })?;
        let target = PathAndQuery::try_from(target)
            .map_err(|_| Failed::from("its path is not a valid URL path".to_string()))?;
        let mut out = Request::new(empty());
        *out.method_mut() = call.method.clone();
        *out.uri_mut() = target.into();
        let headers = out.headers_mut();
        copy_headers(req, &self.forward_headers, headers);
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        Ok(out)
    }

    /// Sends one call and reads its answer, within its timeout.
    async fn call(
        &self,
        i: usize,
        req: Request<Body>,
        ctx: &RequestCtx,
        conn: &Connection,
        route: &RouteEntry,
    ) -> (usize, Outcome) {
        let call = &self.calls[i];
        let work = async {
            let stats = BodyStats::default();
            let forwarded = forward::forward(ctx, conn, route, &call.upstream, req, &stats).await;
            if let Some(error) = forwarded.error {
                return Err(why_not(error).to_string());
            }
            let resp = forwarded.response;
            let status = resp.status();
            if !status.is_success() {
                return Err(format!("the upstream answered {}", status.as_u16()));
            }
            let bytes = read_whole(resp.into_body(), self.max_body)
                .await
                .map_err(|e| match e {
                    ReadError::TooLarge(n) => format!("its answer is larger than {n} bytes"),
                    ReadError::Broken(_) | ReadError::OverListenerLimit | ReadError::TimedOut => {
                        "its answer broke off".to_string()
                    }
                })?;
            if bytes.is_empty() {
                return Ok(Value::Null);
            }
            let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
                format!(
                    "its answer is not JSON (line {} column {})",
                    e.line(),
                    e.column()
                )
            })?;
            select(value, call.select.as_deref())
        };
        let outcome = match tokio::time::timeout(call.timeout, work).await {
            Ok(outcome) => outcome.map_err(Failed::from),
            Err(_) => Err(format!("no answer within {} ms", call.timeout.as_millis()).into()),
        };
        (i, outcome)
    }

    /// The client's answer: the members, `_errors` for failed optional
    /// calls, or a 502 naming the first failed required call.
    fn answer(
        &self,
        ctx: &RequestCtx,
        route: &RouteEntry,
        outcomes: Vec<Option<Outcome>>,
    ) -> Response<Body> {
        let mut doc = Map::new();
        let mut errors = Vec::new();
        for (call, outcome) in self.calls.iter().zip(outcomes) {
            // Every call is started or failed before the loop ends.
            let outcome =
                outcome.unwrap_or_else(|| Err(Failed::from("it was never made".to_string())));
            let value = match outcome {
                Ok(value) => value,
                Err(Failed { why, by_client }) => {
                    if !by_client {
                        tracing::warn!(route = %route.name, call = %call.name, upstream = %call.upstream.name, request_id = ctx.request_id_str(), reason = %why, "aggregate call failed");
                    }
                    if !call.optional {
                        let status = if by_client {
                            StatusCode::BAD_REQUEST
                        } else {
                            StatusCode::BAD_GATEWAY
                        };
                        return problem(
                            status,
                            &format!("the `{}` call failed: {why}", call.name),
                            ctx.request_id_str(),
                        );
                    }
                    let mut entry = Map::new();
                    entry.insert("call".into(), Value::String(call.name.to_string()));
                    entry.insert("error".into(), Value::String(why));
                    errors.push(Value::Object(entry));
                    Value::Null
                }
            };
            match value {
                Value::Object(members) if self.merge => doc.extend(members),
                value => {
                    doc.insert(call.name.to_string(), value);
                }
            }
        }
        if !errors.is_empty() {
            doc.insert("_errors".into(), Value::Array(errors));
        }
        let body = serde_json::to_vec(&Value::Object(doc)).unwrap_or_default();
        let mut resp = Response::new(full(body));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp
    }
}

/// The part of an answer a call keeps.
fn select(value: Value, pointer: Option<&str>) -> Result<Value, String> {
    let Some(pointer) = pointer else {
        return Ok(value);
    };
    let mut value = value;
    match value.pointer_mut(pointer) {
        Some(part) => Ok(part.take()),
        None => Err(format!(
            "its answer has no `{}`",
            pointer.trim_start_matches('/').replace('/', ".")
        )),
    }
}

/// The client's `Host` and the named headers, as every call gets them.
fn copy_headers<B>(from: &Request<B>, names: &[HeaderName], to: &mut HeaderMap) {
    if let Some(host) = host_of(from).and_then(|h| HeaderValue::from_str(h).ok()) {
        to.insert(header::HOST, host);
    }
    for name in names {
        for value in from.headers().get_all(name) {
            to.append(name.clone(), value.clone());
        }
    }
}

/// The reason a call got no answer, in words a client may read.
fn why_not(error: UpstreamError) -> &'static str {
    match error {
        UpstreamError::NoHealthyTarget => "no healthy upstream target is available",
        UpstreamError::CircuitOpen => "the upstream's circuit breaker is open",
        UpstreamError::ConnectFailed => "the upstream could not be reached",
        UpstreamError::TimedOut => "the upstream did not answer in time",
        UpstreamError::ConnectionFailed => "the upstream connection failed",
        UpstreamError::ProtocolSwitch => "the upstream switched protocols",
    }
}

/// Parameters and earlier answers for the call paths of one request.
struct RequestValues<'a> {
    groups: Option<&'a regex::Captures<'a>>,
    query: Option<&'a str>,
    outcomes: &'a [Option<Outcome>],
}

impl Values for RequestValues<'_> {
    fn param(&self, name: &str) -> Option<Cow<'_, str>> {
        if let Some(m) = self.groups.and_then(|g| g.name(name)) {
            return Some(percent_encoding::percent_decode_str(m.as_str()).decode_utf8_lossy());
        }
        let query = self.query?;
        form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    fn call(&self, index: usize) -> Option<&Value> {
        self.outcomes.get(index)?.as_ref()?.as_ref().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn select_keeps_a_sub_tree_or_fails_naming_it() {
        let doc = json!({"data": {"items": [1, 2], "total": 2}});
        assert_eq!(select(doc.clone(), Some("/data/items")), Ok(json!([1, 2])));
        assert_eq!(select(doc.clone(), Some("/data/items/1")), Ok(json!(2)));
        assert_eq!(select(doc.clone(), None), Ok(doc.clone()));
        assert_eq!(
            select(doc, Some("/data/missing")),
            Err("its answer has no `data.missing`".to_string())
        );
    }

    #[test]
    fn parameters_come_from_path_groups_then_the_query() {
        let re = Regex::new(r"^(?:/users/(?P<id>[^/]+))$").unwrap();
        let caps = re.captures("/users/a%20b").unwrap();
        let values = RequestValues {
            groups: Some(&caps),
            query: Some("id=query&q=caf%C3%A9+au+lait&x"),
            outcomes: &[],
        };
        assert_eq!(values.param("id").as_deref(), Some("a b"));
        assert_eq!(values.param("q").as_deref(), Some("café au lait"));
        assert_eq!(values.param("x").as_deref(), Some(""));
        assert_eq!(values.param("missing"), None);
    }

    #[test]
    fn only_named_headers_and_the_host_are_copied() {
        let req = Request::builder()
            .uri("/dash")
            .header("host", "app.example")
            .header("authorization", "Bearer t")
            .header("cookie", "session=1")
            .header("traceparent", "00-abc-def-01")
            .body(())
            .unwrap();
        let mut out = HeaderMap::new();
        let names: Vec<HeaderName> = DEFAULT_FORWARD_HEADERS
            .iter()
            .map(|n| HeaderName::from_static(n))
            .collect();
        copy_headers(&req, &names, &mut out);
        assert_eq!(out["host"], "app.example");
        assert_eq!(out["authorization"], "Bearer t");
        assert_eq!(out["traceparent"], "00-abc-def-01");
        assert!(!out.contains_key("cookie"));
    }
}
