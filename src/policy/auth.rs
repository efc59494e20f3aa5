//! What the authentication policies share: how a refusal is counted and
//! answered, and where a bearer token is found.

use std::sync::Arc;

use http::{HeaderValue, Request, StatusCode, header};
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

/// The bearer token of `Authorization`, if the request has one.
pub fn bearer<B>(req: &Request<B>) -> Option<&str> {
    // On bytes: `HeaderValue::to_str` would check every byte of a token
    // that can be a kilobyte long, on every request; UTF-8 validation of
    // the token alone is several times cheaper, and a JWT decoder or
    // an introspection endpoint judges the token's bytes itself.
    let value = req.headers().get(header::AUTHORIZATION)?.as_bytes();
    let value = value.trim_ascii();
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || rest.first() != Some(&b' ') {
        return None;
    }
    let token = std::str::from_utf8(rest.trim_ascii()).ok()?;
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_found_whatever_the_scheme_case() {
        let req = |v: &str| {
            Request::builder()
                .header("authorization", v)
                .body(())
                .unwrap()
        };
        assert_eq!(bearer(&req("Bearer abc.def.ghi")), Some("abc.def.ghi"));
        assert_eq!(bearer(&req("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(&req("Basic dXNlcjpwYXNz")), None);
        assert_eq!(bearer(&req("Bearer ")), None);
        assert_eq!(bearer(&req("Bearerabc")), None);
        assert_eq!(bearer(&req("Bear")), None);
        assert_eq!(
            bearer(&req("BEARER\tabc")),
            None,
            "the scheme ends with a space"
        );
        assert_eq!(bearer(&Request::new(())), None);
    }
}
