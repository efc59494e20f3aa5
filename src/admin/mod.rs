//! The admin API, on its own listener (loopback by default), never on a
//! traffic port: health, metrics, state and reload.

mod cache;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use futures_util::future::BoxFuture;
use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;

use crate::http::body::{Body, full};
use crate::http::problem::problem;
use crate::policy::consumer::Consumers;
use crate::proxy::snapshot::Action;
use crate::server::Control;

/// Accepts admin connections until the process exits (the gateway's
/// [`AdminService`](crate::server::AdminService)).
pub fn serve(listener: TcpListener, control: Arc<dyn Control>) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(address = %addr, "admin listening");
        }
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let control = control.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| handle(req, control.clone()));
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

fn json_response(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(full(value.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

fn text_response(content_type: &'static str, body: String) -> Response<Body> {
    let mut resp = Response::new(full(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    resp
}

/// `GET /api/v1/consumers`: every configured consumer, by name, with its
/// activity since it was first configured (kept across reloads) and its
/// own rate limits.
fn consumers(all: &Consumers) -> serde_json::Value {
    let mut list: Vec<_> = all.iter().collect();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    let list: Vec<_> = list
        .into_iter()
        .map(|c| {
            let activity = c.activity.as_deref();
            let last_seen = activity.and_then(|a| a.last_seen());
            let mut limits: Vec<_> = c.rate_limits.iter().collect();
            limits.sort_by(|a, b| a.0.cmp(b.0));
            json!({
                "name": &*c.name,
                "groups": c.groups.iter().map(|g| &**g).collect::<Vec<_>>(),
                "requests": activity.map_or(0, |a| a.requests()),
                "rate_limited": activity.map_or(0, |a| a.rate_limited()),
                "last_seen": last_seen.map(httpdate::fmt_http_date),
                "last_seen_unix": last_seen
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map(|d| d.as_secs()),
                "metrics_series": c.series.name(),
                "rate_limits": limits.into_iter().map(|(policy, o)| json!({
                    "policy": &**policy,
                    "limit": o.limit.get(),
                    "per_seconds": o.per.as_secs_f64(),
                    "burst": o.burst.get(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "consumers": list })
}

/// Answers one admin request.
pub async fn handle(
    req: Request<Incoming>,
    control: Arc<dyn Control>,
) -> Result<Response<Body>, Infallible> {
    let rt = control.runtime().clone();
    let resp = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text_response("text/plain", "ok\n".into()),
        (&Method::GET, "/metrics") => text_response(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            rt.metrics.encode(),
        ),
        (&Method::GET, "/api/v1/status") => {
            let s = rt.snapshot.load();
            let loaded_at = s
                .info
                .loaded_at
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            json_response(
                StatusCode::OK,
                json!({
                    "version": env!("CARGO_PKG_VERSION"),
                    "uptime_seconds": rt.started.elapsed().as_secs(),
                    "config_file": s.info.path.display().to_string(),
                    "config_hash": s.info.hash,
                    "loaded_at": httpdate::fmt_http_date(s.info.loaded_at),
                    "loaded_at_unix": loaded_at,
                    "listeners": s.listeners.iter().map(|l| json!({
                        "name": &*l.name,
                        "address": control.listener_addr(&l.name).map(|a| a.to_string()),
                        "protocol": format!("{:?}", l.protocol).to_lowercase(),
                    })).collect::<Vec<_>>(),
                }),
            )
        }
        (&Method::GET, "/api/v1/routes") => {
            let s = rt.snapshot.load();
            let listeners: Vec<_> = s
                .listeners
                .iter()
                .map(|l| {
                    let routes: Vec<_> = l
                        .routes
                        .match_order()
                        .into_iter()
                        .filter_map(|i| l.bindings.get(i))
                        .map(|b| {
                            let action = match &b.route.action {
                                Action::Forward(u) => json!({"upstream": &*u.name}),
                                Action::Split(sp) => json!({
                                    "split": sp.shares.iter().map(|(_, u)| &*u.name).collect::<Vec<_>>(),
                                    "weights": sp.shares.iter().scan(0, |prev, (cum, _)| {
                                        let w = cum - *prev;
                                        *prev = *cum;
                                        Some(w)
                                    }).collect::<Vec<_>>(),
                                }),
                                Action::Static(_) => json!("static"),
                                Action::Respond(r) => json!({"respond": r.status.as_u16()}),
                                Action::Redirect(r) => json!({"redirect": r.status.as_u16()}),
                                Action::Aggregate(a) => json!({
                                    "aggregate": a.calls.iter().map(|c| json!({
                                        "call": &*c.name,
                                        "upstream": &*c.upstream.name,
                                    })).collect::<Vec<_>>(),
                                }),
                            };
                            json!({
                                "name": &*b.route.name,
                                "action": action,
                                "policies": b.chain.request.iter().map(|p| &*p.name).collect::<Vec<_>>(),
                            })
                        })
                        .collect();
                    json!({"listener": &*l.name, "routes": routes})
                })
                .collect();
            json_response(StatusCode::OK, json!({ "listeners": listeners }))
        }
        (&Method::GET, "/api/v1/upstreams") => {
            let s = rt.snapshot.load();
            let mut names: Vec<_> = s.upstreams.keys().cloned().collect();
            names.sort();
            let ups: Vec<_> = names
                .iter()
                .filter_map(|n| s.upstreams.get(n))
                .map(|u| {
                    json!({
                        "name": &*u.name,
                        "targets": u.targets.iter().map(|t| json!({
                            "address": &*t.address,
                            "weight": t.weight,
                            "name": t.name.as_deref(),
                            "healthy": t.state.active_healthy(),
                            "ejected": t.state.ejected(),
                            "in_flight": t.state.in_flight(),
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            json_response(StatusCode::OK, json!({ "upstreams": ups }))
        }
        (&Method::GET, "/api/v1/consumers") => {
            let s = rt.snapshot.load();
            json_response(StatusCode::OK, consumers(&s.consumers))
        }
        (&Method::GET, "/api/v1/cache") => cache::show(&rt),
        (&Method::POST, "/api/v1/cache/purge") => cache::purge(&rt, req.into_body()).await,
        (&Method::POST, "/api/v1/reload") => match control.clone().reload().await {
            Ok(s) => json_response(
                StatusCode::OK,
                json!({"status": "reloaded", "config_hash": s.info.hash}),
            ),
            Err(errors) => json_response(
                StatusCode::BAD_REQUEST,
                json!({
                    "status": "rejected",
                    "detail": "the configuration has errors; the running configuration stays",
                    "errors": errors.0.iter().map(|e| json!({
                        "file": e.file.display().to_string(),
                        "line": e.line,
                        "column": e.column,
                        "message": e.message,
                        "hint": e.hint,
                    })).collect::<Vec<_>>(),
                }),
            ),
        },
        (
            _,
            path @ ("/healthz"
            | "/metrics"
            | "/api/v1/status"
            | "/api/v1/routes"
            | "/api/v1/upstreams"
            | "/api/v1/consumers"
            | "/api/v1/reload"
            | "/api/v1/cache"
            | "/api/v1/cache/purge"),
        ) => {
            let mut resp = problem(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this admin path",
                "-",
            );
            // RFC 9110 §15.5.6: a 405 lists the methods the resource supports.
            let allow = if path == "/api/v1/reload" || path == "/api/v1/cache/purge" {
                "POST"
            } else {
                "GET"
            };
            resp.headers_mut()
                .insert(header::ALLOW, http::HeaderValue::from_static(allow));
            resp
        }
        _ => problem(StatusCode::NOT_FOUND, "no such admin path", "-"),
    };
    Ok(resp)
}
