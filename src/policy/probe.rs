//! `probe` (unit tests only): a policy that records every phase, hook and
//! body frame the pipeline hands it, and can answer early, buffer a request
//! body, wrap a response body or replace it after reading it whole. The
//! pipeline's phase tests (`proxy::phase_tests`) drive it through real
//! requests.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use super::{Flow, Outcome, Phase, Policy, ResponsePhase};
use crate::config::model::ProbeDef;
use crate::http::body::{Body, BoxError, full};
use crate::http::problem::problem;
use crate::policy::context::RequestCtx;
use crate::upstream::UpstreamError;

/// Events by tag, in the order they happened.
fn journal() -> &'static Mutex<HashMap<String, Vec<String>>> {
    static EVENTS: OnceLock<Mutex<HashMap<String, Vec<String>>>> = OnceLock::new();
    EVENTS.get_or_init(Default::default)
}

/// The events recorded under `tag` so far.
pub fn events(tag: &str) -> Vec<String> {
    crate::lock(journal()).get(tag).cloned().unwrap_or_default()
}

/// Records `event` under `tag`.
fn note(tag: &str, event: String) {
    crate::lock(journal())
        .entry(tag.to_string())
        .or_default()
        .push(event);
}

/// A compiled probe.
pub struct Probe {
    name: Arc<str>,
    def: ProbeDef,
    phase: Phase,
    response_phase: Option<ResponsePhase>,
}

impl Probe {
    /// Builds the probe `name` from its definition (a test's own config:
    /// an unknown phase name is the test's bug).
    pub fn build(def: &ProbeDef, name: &str) -> Probe {
        let phase = match def.phase.as_str() {
            "Filter" => Phase::Filter,
            "Authenticate" => Phase::Authenticate,
            "Authorize" => Phase::Authorize,
            "RateLimit" => Phase::RateLimit,
            "Validate" => Phase::Validate,
            "CacheLookup" => Phase::CacheLookup,
            "RequestTransform" => Phase::RequestTransform,
            other => panic!("probe: no request phase {other}"),
        };
        let response_phase = def.response_phase.as_deref().map(|p| match p {
            "ResponseTransform" => ResponsePhase::ResponseTransform,
            "CacheStore" => ResponsePhase::CacheStore,
            "Compress" => ResponsePhase::Compress,
            other => panic!("probe: no response phase {other}"),
        });
        Probe {
            name: Arc::from(name),
            def: ProbeDef {
                tag: def.tag.clone(),
                phase: def.phase.clone(),
                response_phase: def.response_phase.clone(),
                ..*def
            },
            phase,
            response_phase,
        }
    }

    fn note(&self, what: impl std::fmt::Display) {
        note(&self.def.tag, format!("{}:{what}", self.name));
    }
}

impl Policy for Probe {
    fn phase(&self) -> Phase {
        self.phase
    }

    fn on_request(&self, ctx: &mut RequestCtx, _req: &mut Request<Body>) -> Flow {
        self.note("request");
        match self.def.answer.and_then(|s| StatusCode::from_u16(s).ok()) {
            Some(status) => {
                Flow::Respond(problem(status, "the probe answers", ctx.request_id_str()))
            }
            None => Flow::Continue,
        }
    }

    fn on_request_async<'a>(
        &'a self,
        ctx: &'a mut RequestCtx,
        req: &'a mut Request<Body>,
    ) -> Option<BoxFuture<'a, Flow>> {
        let limit = self.def.buffer_request?;
        Some(Box::pin(async move {
            let mut body = std::mem::replace(req.body_mut(), crate::http::body::empty());
            let mut kept = Vec::new();
            while let Some(frame) = body.frame().await {
                let Ok(data) = frame.map(|f| f.into_data().unwrap_or_default()) else {
                    break;
                };
                kept.extend_from_slice(&data);
                if kept.len() as u64 > limit {
                    return Flow::Respond(problem(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "the request body is larger than the probe reads",
                        ctx.request_id_str(),
                    ));
                }
            }
            self.note(format!("buffered {}", kept.len()));
            *req.body_mut() = full(kept);
            Flow::Continue
        }))
    }

    fn response_phase(&self) -> Option<ResponsePhase> {
        self.response_phase
    }

    fn on_response(&self, _ctx: &mut RequestCtx, resp: &mut Response<Body>) {
        self.note(format!("response {}", resp.status().as_u16()));
        if self.def.wrap {
            let inner = std::mem::replace(resp.body_mut(), crate::http::body::empty());
            resp.headers_mut().remove(http::header::CONTENT_LENGTH);
            *resp.body_mut() = Upper {
                inner,
                tag: self.def.tag.clone(),
                name: self.name.clone(),
            }
            .boxed_unsync();
        }
    }

    fn on_response_async<'a>(
        &'a self,
        _ctx: &'a mut RequestCtx,
        resp: &'a mut Response<Body>,
    ) -> Option<BoxFuture<'a, ()>> {
        if !self.def.buffer_response {
            return None;
        }
        Some(Box::pin(async move {
            let body = std::mem::replace(resp.body_mut(), crate::http::body::empty());
            let text = match body.collect().await {
                Ok(c) => format!("{} bytes", c.to_bytes().len()),
                Err(_) => "broken".to_string(),
            };
            resp.headers_mut().remove(http::header::CONTENT_LENGTH);
            *resp.body_mut() = full(text);
        }))
    }

    fn on_error(&self, _ctx: &mut RequestCtx, error: UpstreamError) {
        self.note(format!("error {}", error.as_str()));
    }

    fn logs(&self) -> bool {
        self.def.logs
    }

    fn on_log(&self, _ctx: &RequestCtx, outcome: &Outcome) {
        self.note(format!(
            "log {} {} {}",
            outcome.status.as_u16(),
            outcome.bytes_sent,
            if outcome.complete {
                "complete"
            } else {
                "incomplete"
            }
        ));
    }
}

/// A body wrapper that records each data frame and passes it upper-cased.
struct Upper {
    inner: Body,
    tag: String,
    name: Arc<str>,
}

impl HttpBody for Upper {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    note(
                        &this.tag,
                        format!("{}:chunk {}", this.name, String::from_utf8_lossy(&data)),
                    );
                    Poll::Ready(Some(Ok(Frame::data(Bytes::from(
                        data.to_ascii_uppercase(),
                    )))))
                }
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
