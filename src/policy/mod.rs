//! Policies: small types that act on a request in one named phase.
//!
//! The phase order is fixed here, not by the order a configuration lists
//! policies in, so that no file can run rate limiting before authentication
//! by accident. Within one phase, list order holds (listener policies first,
//! then the route's). Adding a policy means one file in this folder plus one
//! line in [`build`].

pub mod ip_filter;
pub mod jwks;
pub mod jwt;
pub mod rate_limit;
pub mod redis_store;
pub mod token_cache;

use std::path::Path;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use http::{Request, Response};

use crate::config::model::PolicyDef;
use crate::proxy::body::Body;
use crate::proxy::context::RequestCtx;
use crate::server::runtime::Runtime;

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

/// What a policy decided about a request.
pub enum Flow {
    /// Go on with the next policy.
    Continue,
    /// Answer the client with this response and stop the chain.
    Respond(Response<Body>),
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

    /// Runs on the response on its way back, in reverse phase order.
    fn on_response(&self, _ctx: &RequestCtx, _resp: &mut Response<Body>) {}
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
    /// State that outlives snapshots (counters, key sets, metrics).
    pub runtime: &'a Runtime,
    /// The configuration file's directory, for relative file paths.
    pub base: &'a Path,
    /// The file's `stores.redis` server.
    pub redis: Store<'a>,
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
    }
}

/// Orders policies by phase, keeping list order within a phase.
pub fn in_phase_order(mut policies: Vec<NamedPolicy>) -> Vec<NamedPolicy> {
    // A stable sort keeps the list order inside each phase.
    policies.sort_by_key(|p| p.policy.phase());
    policies
}

#[cfg(test)]
mod tests {
    use super::*;

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
