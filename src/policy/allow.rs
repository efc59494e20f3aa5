//! `allow`: who may use the route, decided after authentication. The
//! conditions are consumer names, consumer groups, token claim values and
//! client networks; every kind the policy lists must hold, and within a
//! kind any listed value will do (`groups: [a, b]` is "in a or in b").
//! A request that fails gets 403 problem+json.

use std::net::IpAddr;

use http::{Request, StatusCode};
use ipnet::IpNet;

use super::auth::Refuser;
use super::ip_filter::parse_net;
use super::jwt::has_member;
use super::{BuildEnv, Flow, Phase, Policy};
use crate::config::model::AllowDef;
use crate::http::body::Body;
use crate::http::headers::canonical_ip;
use crate::policy::context::{Identity, RequestCtx};

/// A claim and the values any of which it must hold.
type ClaimCondition = (Box<str>, Box<[Box<str>]>);

/// A compiled `allow` policy.
pub struct Allow {
    consumers: Box<[Box<str>]>,
    groups: Box<[Box<str>]>,
    claims: Box<[ClaimCondition]>,
    cidrs: Box<[IpNet]>,
    refuser: Refuser,
}

impl Allow {
    /// Checks that the policy names at least one condition, and its networks.
    pub fn build(def: &AllowDef, env: &BuildEnv) -> Result<Allow, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let mut cidrs = Vec::with_capacity(def.cidrs.len());
        for (i, s) in def.cidrs.iter().enumerate() {
            match parse_net(s) {
                Some(n) => cidrs.push(n.trunc()),
                None => errors.push((
                    format!("cidrs.{i}"),
                    format!(
                        "`{s}` is not an IP address or CIDR network (like 10.0.0.0/8 or ::1/128)"
                    ),
                )),
            }
        }
        for (claim, values) in &def.claims {
            if values.values().is_empty() {
                errors.push((
                    format!("claims.{claim}"),
                    "list at least one value the claim may hold".into(),
                ));
            }
        }
        if def.consumers.is_empty()
            && def.groups.is_empty()
            && def.claims.is_empty()
            && def.cidrs.is_empty()
        {
            errors.push((
                String::new(),
                "an allow policy needs a condition: consumers, groups, claims or cidrs".into(),
            ));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let boxed = |v: &[String]| v.iter().map(|s| Box::from(s.as_str())).collect();
        Ok(Allow {
            consumers: boxed(&def.consumers),
            groups: boxed(&def.groups),
            claims: def
                .claims
                .iter()
                .map(|(k, v)| (Box::from(k.as_str()), boxed(v.values())))
                .collect(),
            cidrs: cidrs.into(),
            refuser: Refuser::new(env.name, env.metrics),
        })
    }

    /// The first condition kind the request fails, as the metric's reason.
    fn failed(&self, identity: Option<&Identity>, client: IpAddr) -> Option<&'static str> {
        let consumer = identity.and_then(|i| i.consumer.as_deref());
        if !self.consumers.is_empty()
            && !consumer.is_some_and(|c| self.consumers.iter().any(|n| **n == *c.name))
        {
            return Some("consumer");
        }
        if !self.groups.is_empty()
            && !consumer.is_some_and(|c| self.groups.iter().any(|g| c.in_group(g)))
        {
            return Some("group");
        }
        let claims = identity.map(|i| &i.claims);
        for (claim, values) in &*self.claims {
            let have = claims.and_then(|c| c.get(&**claim));
            if !have.is_some_and(|h| values.iter().any(|v| has_member(h, v))) {
                return Some("claim");
            }
        }
        if !self.cidrs.is_empty() {
            let ip = canonical_ip(client);
            if !self.cidrs.iter().any(|n| n.contains(&ip)) {
                return Some("cidr");
            }
        }
        None
    }
}

impl Policy for Allow {
    fn phase(&self) -> Phase {
        Phase::Authorize
    }

    fn on_request(&self, ctx: &mut RequestCtx, _req: &mut Request<Body>) -> Flow {
        let identity = ctx.identity.clone();
        match self.failed(identity.as_deref(), ctx.client.ip()) {
            None => Flow::Continue,
            Some(reason) => self.refuser.refuse(
                ctx,
                reason,
                StatusCode::FORBIDDEN,
                "you are not allowed to use this route",
                None,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::OneOrMany;
    use crate::policy::consumer::Consumers;
    use serde_json::json;
    use std::sync::Arc;

    fn allow(def: AllowDef) -> Allow {
        let metrics = crate::observe::metrics::Metrics::new();
        let consumers = Arc::new(Consumers::empty());
        let env = crate::policy::tests::env("a", &metrics, &consumers);
        Allow::build(&def, &env).unwrap_or_else(|e| panic!("{e:?}"))
    }

    /// An identity with these groups and claims.
    fn identity(name: &str, groups: &[&str], claims: serde_json::Value) -> Identity {
        let mut c = Consumers::empty().anonymous(name);
        c.groups = groups.iter().map(|g| Arc::from(*g)).collect();
        Identity {
            consumer: Some(Arc::new(c)),
            claims: Arc::new(claims.as_object().cloned().unwrap_or_default()),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn every_listed_kind_must_hold_and_any_value_within_one() {
        let mut claims = std::collections::BTreeMap::new();
        claims.insert(
            "roles".to_string(),
            OneOrMany::Many(vec!["admin".into(), "ops".into()]),
        );
        let p = allow(AllowDef {
            groups: vec!["partners".into(), "staff".into()],
            claims,
            cidrs: vec!["10.0.0.0/8".into()],
            ..AllowDef::default()
        });
        let good = identity("acme", &["staff"], json!({"roles": "reader ops"}));
        assert_eq!(p.failed(Some(&good), ip("10.1.2.3")), None);
        assert_eq!(p.failed(Some(&good), ip("::ffff:10.1.2.3")), None);
        assert_eq!(p.failed(Some(&good), ip("192.0.2.1")), Some("cidr"));
        let no_group = identity("acme", &["beta"], json!({"roles": ["admin"]}));
        assert_eq!(p.failed(Some(&no_group), ip("10.0.0.1")), Some("group"));
        let no_claim = identity("acme", &["partners"], json!({"roles": "reader"}));
        assert_eq!(p.failed(Some(&no_claim), ip("10.0.0.1")), Some("claim"));
        assert_eq!(p.failed(None, ip("10.0.0.1")), Some("group"));
    }

    #[test]
    fn consumers_by_name_and_networks_alone() {
        let p = allow(AllowDef {
            consumers: vec!["acme".into()],
            ..AllowDef::default()
        });
        assert_eq!(
            p.failed(Some(&identity("acme", &[], json!({}))), ip("1.1.1.1")),
            None
        );
        assert_eq!(
            p.failed(Some(&identity("other", &[], json!({}))), ip("1.1.1.1")),
            Some("consumer")
        );
        assert_eq!(p.failed(None, ip("1.1.1.1")), Some("consumer"));
        let net = allow(AllowDef {
            cidrs: vec!["::1".into(), "127.0.0.0/8".into()],
            ..AllowDef::default()
        });
        assert_eq!(net.failed(None, ip("127.0.0.1")), None);
        assert_eq!(net.failed(None, ip("::1")), None);
        assert_eq!(net.failed(None, ip("::2")), Some("cidr"));
    }

    #[test]
    fn a_policy_without_conditions_or_with_a_bad_network_is_refused() {
        let metrics = crate::observe::metrics::Metrics::new();
        let consumers = Arc::new(Consumers::empty());
        let env = crate::policy::tests::env("a", &metrics, &consumers);
        let err = Allow::build(&AllowDef::default(), &env).err().unwrap();
        assert!(err[0].1.contains("needs a condition"), "{err:?}");
        let err = Allow::build(
            &AllowDef {
                cidrs: vec!["10.0.0.0/33".into()],
                ..AllowDef::default()
            },
            &env,
        )
        .err()
        .unwrap();
        assert_eq!(err[0].0, "cidrs.0");
    }
}
