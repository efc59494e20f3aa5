//! Policies: small types that act on a request in named phases, on its way
//! in and on its answer's way back.
//!
//! The phase order is fixed here, not by the order a configuration lists
//! policies in, so that no file can run rate limiting before authentication
//! by accident. The whole line, as a request and its answer travel it:
//!
//! ```text
//! filter → authenticate → authorize → rate limit → validate → cache lookup
//!   → request transform → [upstream, file or direct answer]
//!   → response transform → cache store → compress → client
//! ```
//!
//! Each policy has one request [`Phase`] (where [`Policy::on_request`]
//! runs; within a phase, list order: the listener's policies, then the
//! route's) and may have one [`ResponsePhase`] (where
//! [`Policy::on_response`] runs; within a phase, reverse list order, so the
//! policy nearest the upstream on the way in sees the answer first).
//!
//! Every answer goes back through the response phases of the policies whose
//! request phase ran, the policy that answered included: an upstream's
//! answer, a file, a direct answer, a refusal a policy made (401, 403, 429)
//! and an error the gateway made after routing (413, 502, 503, 504). So a
//! CORS policy (request phase filter) adds its headers to a 401, and a
//! compress policy (request phase filter: it only notes what the client
//! accepts) sees every body. An answer the gateway or a policy made
//! carries [`crate::http::problem::GatewayAnswer`] in its extensions, so a
//! policy that rewrites the upstream's documents (`transform`) can leave
//! it as it is. Two hooks observe the rest: [`Policy::on_error`]
//! when the upstream failed (before the response phases, with the reason),
//! and [`Policy::on_log`] after the answer's last byte (with the outcome).
//!
//! Adding a policy means one file in this folder plus one line in [`build`].

pub mod allow;
pub mod answer_cache;
pub mod api_key;
pub mod auth;
pub mod basic_auth;
pub mod cache;
pub mod compress;
pub mod consumer;
pub mod context;
pub mod cors;
pub mod forward_auth;
pub mod introspection;
pub mod ip_filter;
pub mod jwks;
pub mod jwt;
pub mod openapi;
#[cfg(test)]
pub mod probe;
pub mod rate_limit;
pub mod redis_store;
pub mod service;
pub mod template;
pub mod token_cache;
pub mod transform;
pub mod xml;

use std::path::Path;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use http::{Request, Response};

use crate::config::model::PolicyDef;
use crate::http::body::Body;
use crate::observe::metrics::Metrics;
use crate::policy::context::RequestCtx;
use crate::upstream::UpstreamError;

/// The request phases, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// Drop unwanted traffic early (IP lists, WAF, limits).
    Filter,
    /// Establish who the client is (JWT, API keys, forward auth).
    Authenticate,
    /// Decide whether that client may use the route.
    Authorize,
    /// Count and cap requests.
    RateLimit,
    /// Check the request against a schema.
    Validate,
    /// Answer from the cache.
    CacheLookup,
    /// Change the request before it goes upstream.
    RequestTransform,
}

/// The response phases, in the order they run (after the request phases
/// and the upstream).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResponsePhase {
    /// Change the answer (status, headers, body) as the route wants it.
    ResponseTransform,
    /// Keep the answer for later requests.
    CacheStore,
    /// Encode the body for the client.
    Compress,
}

/// What a policy decided about a request.
pub enum Flow {
    /// Go on with the next policy.
    Continue,
    /// Answer the client with this response and stop the chain.
    Respond(Response<Body>),
    /// Answer the client with this response now, and run the rest of the
    /// chain (this policy again, with [`RequestCtx::refresh`] set) and the
    /// route's upstream in the background, dropping that answer once the
    /// response phases have seen it: a cache's stale-while-revalidate.
    Refresh(Response<Body>),
}

/// A policy attached to routes or listeners. Every method but `phase` has a
/// default that does nothing, so a policy implements only what it cares about.
pub trait Policy: Send + Sync + 'static {
    /// The phase this policy runs in.
    fn phase(&self) -> Phase;

    /// Runs before the upstream is chosen; synchronous policies answer here
    /// without allocating.
    fn on_request(&self, _ctx: &mut RequestCtx, _req: &mut Request<Body>) -> Flow {
        Flow::Continue
    }

    /// For policies that must wait (a remote store, an auth service): runs
    /// after `on_request` returned `Continue`. `None` means nothing to wait for.
    fn on_request_async<'a>(
        &'a self,
        _ctx: &'a mut RequestCtx,
        _req: &'a mut Request<Body>,
    ) -> Option<BoxFuture<'a, Flow>> {
        None
    }

    /// The response phase [`Policy::on_response`] runs in; `None` (the
    /// default) for a policy that leaves answers alone.
    fn response_phase(&self) -> Option<ResponsePhase> {
        None
    }

    /// Runs on the answer on its way back, in its response phase. May
    /// rewrite the status and headers, and replace or wrap the body as a
    /// stream (`std::mem::replace` the body and box the wrapper).
    fn on_response(&self, _ctx: &mut RequestCtx, _resp: &mut Response<Body>) {}

    /// For response work that must wait (reading the whole body to
    /// transform it): runs after `on_response`. `None` means nothing to wait for.
    fn on_response_async<'a>(
        &'a self,
        _ctx: &'a mut RequestCtx,
        _resp: &'a mut Response<Body>,
    ) -> Option<BoxFuture<'a, ()>> {
        None
    }

    /// Runs when the upstream failed and the gateway made the answer
    /// (which the response phases then see), with the reason.
    fn on_error(&self, _ctx: &mut RequestCtx, _error: UpstreamError) {}

    /// Whether [`Policy::on_log`] should be called: keeping the request's
    /// context until its answer's last byte costs a little, so only
    /// policies that ask get it.
    fn logs(&self) -> bool {
        false
    }

    /// Runs after the answer's last byte was sent (or the client left),
    /// with the outcome; only when [`Policy::logs`] says so.
    fn on_log(&self, _ctx: &RequestCtx, _outcome: &Outcome) {}
}

/// How an answer went, for policies' log hooks.
#[derive(Clone, Copy, Debug)]
pub struct Outcome {
    /// The status sent.
    pub status: http::StatusCode,
    /// Body bytes sent.
    pub bytes_sent: u64,
    /// From the request's arrival to the last byte (or the client leaving).
    pub duration: std::time::Duration,
    /// Whether the whole body was sent (false: the client left, or the
    /// upstream's body broke, mid-way).
    pub complete: bool,
}

/// The policies of one route on one listener, ordered for each direction
/// once, when the configuration is compiled.
pub struct Chain {
    /// Every policy, in request phase order (shared with the log hooks of
    /// requests in flight).
    pub request: Arc<[NamedPolicy]>,
    /// The policies with a response phase, in response order, each with its
    /// position in `request` (it runs when its request phase has run).
    pub response: Box<[(usize, NamedPolicy)]>,
    /// Whether any policy wants the log hook.
    pub logs: bool,
}

impl Chain {
    /// Orders `policies` (the listener's, then the route's) for both directions.
    pub fn new(policies: Vec<NamedPolicy>) -> Chain {
        let request = in_phase_order(policies);
        let mut response: Vec<(usize, NamedPolicy)> = request
            .iter()
            .enumerate()
            .filter(|(_, p)| p.policy.response_phase().is_some())
            .map(|(i, p)| (i, p.clone()))
            .collect();
        // By response phase; within one, the later policy of the request
        // line (nearer the upstream) first.
        response.sort_by_key(|(i, p)| (p.policy.response_phase(), std::cmp::Reverse(*i)));
        Chain {
            logs: request.iter().any(|p| p.policy.logs()),
            request: request.into(),
            response: response.into_boxed_slice(),
        }
    }

    /// The policies whose response phases run after `ran` request phases ran.
    pub fn responders(&self, ran: usize) -> impl Iterator<Item = &NamedPolicy> {
        self.responders_between(0, ran)
    }

    /// The policies whose response phases run after the request phases
    /// from `from` up to `ran` ran (a background refresh's).
    pub fn responders_between(
        &self,
        from: usize,
        ran: usize,
    ) -> impl Iterator<Item = &NamedPolicy> {
        self.response
            .iter()
            .filter(move |(i, _)| (from..ran).contains(i))
            .map(|(_, p)| p)
    }
}

/// A policy with its configured name.
#[derive(Clone)]
pub struct NamedPolicy {
    /// The name from the top-level `policies` map.
    pub name: Arc<str>,
    /// The compiled policy.
    pub policy: Arc<dyn Policy>,
}

/// What building a policy may need besides its definition.
pub struct BuildEnv<'a> {
    /// The policy's name in the `policies` map.
    pub name: &'a str,
    /// Exported metrics.
    pub metrics: &'a Metrics,
    /// Rate-limit counters, kept across reloads.
    pub rate_limits: &'a rate_limit::CounterRegistry,
    /// Basic-auth failure counters, kept across reloads.
    pub basic_auth_failures: &'a basic_auth::FailureRegistry,
    /// Key sets fetched by URL, shared by the policies that name them.
    pub key_sets: &'a jwks::RemoteKeySets,
    /// `portcullis check`: build without opening or fetching anything.
    pub check_only: bool,
    /// The configuration file's directory, for relative file paths.
    pub base: &'a Path,
    /// The file's `stores.redis` server.
    pub redis: Store<'a>,
    /// The configured consumers.
    pub consumers: &'a Arc<consumer::Consumers>,
    /// Cache stores, kept across reloads.
    pub caches: &'a cache::store::CacheRegistry,
}

/// A shared store section of the configuration, as policies find it.
#[derive(Clone, Copy)]
pub enum Store<'a> {
    /// The file has none.
    Absent,
    /// The file has one, in error (reported at its own line).
    InError,
    /// Ready to use.
    Ready(&'a SharedStore),
}

impl BuildEnv<'_> {
    /// A path from the policy's definition, relative to the file's directory.
    pub fn resolve(&self, p: &Path) -> std::path::PathBuf {
        crate::config::resolve_path(self.base, p)
    }
}

/// A shared store as policies use it.
pub struct SharedStore {
    /// The connection.
    pub store: Arc<redis_store::RedisStore>,
    /// Prepended to every key.
    pub key_prefix: String,
}

/// Compiles one policy definition; errors are (field, message) pairs for
/// the config file, the field relative to the policy.
pub fn build(def: &PolicyDef, env: &BuildEnv) -> Result<Arc<dyn Policy>, Vec<(String, String)>> {
    match def {
        PolicyDef::IpFilter(d) => Ok(Arc::new(ip_filter::IpFilter::build(d)?)),
        PolicyDef::RateLimit(d) => Ok(Arc::new(rate_limit::RateLimit::build(d, env)?)),
        PolicyDef::Jwt(d) => Ok(Arc::new(jwt::Jwt::build(d, env)?)),
        PolicyDef::ApiKey(d) => Ok(Arc::new(api_key::ApiKey::build(d, env)?)),
        PolicyDef::BasicAuth(d) => Ok(Arc::new(basic_auth::BasicAuth::build(d, env)?)),
        PolicyDef::Allow(d) => Ok(Arc::new(allow::Allow::build(d, env)?)),
        PolicyDef::Transform(d) => Ok(Arc::new(transform::Transform::build(d, env)?)),
        PolicyDef::Openapi(d) => Ok(Arc::new(openapi::OpenApi::build(d, env)?)),
        PolicyDef::ForwardAuth(d) => Ok(Arc::new(forward_auth::ForwardAuth::build(d, env)?)),
        PolicyDef::Introspection(d) => Ok(Arc::new(introspection::Introspection::build(d, env)?)),
        PolicyDef::Cors(d) => Ok(Arc::new(cors::Cors::build(d)?)),
        PolicyDef::Compress(d) => Ok(Arc::new(compress::Compress::build(d, env)?)),
        PolicyDef::Cache(d) => Ok(Arc::new(cache::Cache::build(d, env)?)),
        #[cfg(test)]
        PolicyDef::Probe(d) => Ok(Arc::new(probe::Probe::build(d, env.name))),
    }
}

/// Orders policies by phase, keeping list order within a phase.
pub fn in_phase_order(mut policies: Vec<NamedPolicy>) -> Vec<NamedPolicy> {
    // A stable sort keeps the list order inside each phase.
    policies.sort_by_key(|p| p.policy.phase());
    policies
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A build environment for unit tests of one policy: no stores, no
    /// remote key sets, the current directory as the file's.
    pub(crate) fn env<'a>(
        name: &'a str,
        metrics: &'a Metrics,
        consumers: &'a Arc<consumer::Consumers>,
    ) -> BuildEnv<'a> {
        BuildEnv {
            name,
            metrics,
            rate_limits: Box::leak(Box::default()),
            basic_auth_failures: Box::leak(Box::default()),
            key_sets: Box::leak(Box::default()),
            check_only: false,
            base: Path::new("."),
            redis: Store::Absent,
            consumers,
            caches: Box::leak(Box::default()),
        }
    }

    struct InPhase(Phase);
    impl Policy for InPhase {
        fn phase(&self) -> Phase {
            self.0
        }
    }

    fn named(name: &str, phase: Phase) -> NamedPolicy {
        NamedPolicy {
            name: Arc::from(name),
            policy: Arc::new(InPhase(phase)),
        }
    }

    #[test]
    fn policies_run_in_phase_order_whatever_the_list_order() {
        let listed = vec![
            named("limit", Phase::RateLimit),
            named("auth", Phase::Authenticate),
            named("transform", Phase::RequestTransform),
            named("firewall", Phase::Filter),
            named("groups", Phase::Authorize),
        ];
        let order: Vec<String> = in_phase_order(listed)
            .iter()
            .map(|p| p.name.to_string())
            .collect();
        assert_eq!(order, ["firewall", "auth", "groups", "limit", "transform"]);
    }

    #[test]
    fn list_order_holds_within_a_phase() {
        let listed = vec![
            named("listener-filter", Phase::Filter),
            named("route-auth", Phase::Authenticate),
            named("route-filter", Phase::Filter),
        ];
        let order: Vec<String> = in_phase_order(listed)
            .iter()
            .map(|p| p.name.to_string())
            .collect();
        assert_eq!(order, ["listener-filter", "route-filter", "route-auth"]);
    }
}
