//! Per-request state that policies and phases share.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderName, HeaderValue};

use crate::policy::cache::CacheMark;
use crate::policy::compress::CompressMark;
use crate::policy::consumer::Consumer;
use crate::policy::cors::CorsMark;

/// What the pipeline knows about one request besides the request itself.
pub struct RequestCtx {
    /// The X-Request-Id sent upstream and logged (kept from the client when valid).
    pub request_id: HeaderValue,
    /// The client's address (from PROXY protocol when the listener takes it).
    pub client: SocketAddr,
    /// When the request arrived.
    pub started: Instant,
    /// The listener's name.
    pub listener: Arc<str>,
    /// The matched route's name, once routing has run.
    pub route: Option<Arc<str>>,
    /// Whether the client connection is TLS.
    pub tls: bool,
    /// Who the client is, once an authentication policy has said so
    /// (shared: a consumer's or a cached token's identity is built once).
    pub identity: Option<Arc<Identity>>,
    /// Why the upstream gave no answer, when it did not (the gateway's
    /// 502/503/504 then stands in for it).
    pub upstream_error: Option<crate::upstream::UpstreamError>,
    /// Whether the answer is the upstream's own (not a policy's refusal,
    /// a direct answer, a file or the gateway's error), for policies that
    /// check what upstreams send.
    pub upstream_answered: bool,
    /// What policies pass from their request phase to their response or
    /// log phase (allocated only when one inserts something).
    pub extensions: http::Extensions,
    /// Headers policies add to whatever answer the client gets (the
    /// rate-limit state), after the response phases: a cached answer never
    /// keeps them, and a refusal carries them as an upstream answer does.
    pub response_headers: Vec<(HeaderName, HeaderValue)>,
    /// What a `cors` policy decided in its request phase, for its response
    /// phase (a field, not an extension: no allocation per request).
    pub cors: CorsMark,
    /// What a `compress` policy learnt of the client in its request phase
    /// (the encoding it accepts), for its response phase.
    pub compress: CompressMark,
    /// What a `cache` policy did in its request phase, for its response
    /// phase and for `compress` (the stored entry a hit came from).
    pub cache: CacheMark,
    /// Set on the background request that refreshes a stale cached answer
    /// (see [`crate::policy::Flow::Refresh`]).
    pub refresh: bool,
}

/// An authenticated client.
#[derive(Debug, Default)]
pub struct Identity {
    /// The consumer: an entry of `consumers`, or a verified token's
    /// subject that names none (`Consumer::configured` tells them apart).
    pub consumer: Option<Arc<Consumer>>,
    /// The verified token's claims, when a token authenticated the request.
    pub claims: Arc<serde_json::Map<String, serde_json::Value>>,
}

impl Identity {
    /// The consumer's name, if there is a consumer.
    pub fn consumer_name(&self) -> Option<&str> {
        self.consumer.as_deref().map(|c| &*c.name)
    }
}

impl RequestCtx {
    /// The context of a request that arrived `started` on `listener` from
    /// `client`, before routing and policies have added to it.
    pub fn new(
        request_id: HeaderValue,
        client: SocketAddr,
        listener: Arc<str>,
        tls: bool,
        started: Instant,
    ) -> RequestCtx {
        RequestCtx {
            request_id,
            client,
            started,
            listener,
            route: None,
            tls,
            identity: None,
            upstream_error: None,
            upstream_answered: false,
            extensions: http::Extensions::new(),
            response_headers: Vec::new(),
            cors: CorsMark::default(),
            compress: CompressMark::default(),
            cache: CacheMark::Untouched,
            refresh: false,
        }
    }

    /// The request id as text, for logs and error bodies.
    pub fn request_id_str(&self) -> &str {
        // Ids are ASCII by construction (validated or generated).
        self.request_id.to_str().unwrap_or("-")
    }
}
