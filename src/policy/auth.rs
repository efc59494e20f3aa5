//! What the authentication policies share: how a refusal is counted and
//! answered.

use std::sync::Arc;

use http::{HeaderValue, StatusCode, header};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::Flow;
use crate::http::problem::problem;
use crate::observe::metrics::{AuthFailureLabels, Metrics};
use crate::policy::context::RequestCtx;

/// A policy's `portcullis_auth_failures_total` series and its refusals.
pub struct Refuser {
    policy: Arc<str>,
    failures: Family<AuthFailureLabels, Counter>,
}

impl Refuser {
    /// For the policy named `policy`.
    pub fn new(policy: &str, metrics: &Metrics) -> Refuser {
        Refuser {
            policy: Arc::from(policy),
            failures: metrics.auth_failures.clone(),
        }
    }

    /// The policy's name.
    pub fn policy(&self) -> &Arc<str> {
        &self.policy
    }

    /// Counts a failure for `reason` on the request's route.
    pub fn count(&self, ctx: &RequestCtx, reason: &'static str) {
        if let Some(route) = &ctx.route {
            self.failures
                .get_or_create(&AuthFailureLabels {
                    route: route.clone(),
                    policy: self.policy.clone(),
                    reason,
                })
                .inc();
        }
    }

    /// Counts the failure and answers with a problem+json of `status`,
    /// with `challenge` as `WWW-Authenticate` when given.
    pub fn refuse(
        &self,
        ctx: &RequestCtx,
        reason: &'static str,
        status: StatusCode,
        detail: &str,
        challenge: Option<&HeaderValue>,
    ) -> Flow {
        self.count(ctx, reason);
        let mut resp = problem(status, detail, ctx.request_id_str());
        if let Some(c) = challenge {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, c.clone());
        }
        Flow::Respond(resp)
    }
}
