//! `ip_filter`: allow and deny lists of networks (IPv4 and IPv6); deny wins.
//!
//! Runs in the filter phase on the client address (the PROXY protocol
//! address when the listener takes one). A refused client gets 403.

use std::net::IpAddr;

use http::{Request, StatusCode};
use ipnet::IpNet;

use super::{Flow, Phase, Policy};
use crate::config::model::IpFilterDef;
use crate::http::body::Body;
use crate::http::headers::canonical_ip;
use crate::http::problem::problem;
use crate::policy::context::RequestCtx;

/// Compiled allow and deny lists.
#[derive(Debug)]
pub struct IpFilter {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

impl IpFilter {
    /// Parses the CIDR lists; errors name the field and the bad entry.
    pub fn build(def: &IpFilterDef) -> Result<IpFilter, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let mut parse = |field: &str, list: &[String]| -> Vec<IpNet> {
            let mut nets = Vec::with_capacity(list.len());
            for (i, s) in list.iter().enumerate() {
                match parse_net(s) {
                    Some(n) => nets.push(n.trunc()),
                    None => errors.push((
                        format!("{field}.{i}"),
                        format!("`{s}` is not an IP address or CIDR network (like 10.0.0.0/8 or ::1/128)"),
                    )),
                }
            }
            nets
        };
        let allow = parse("allow", &def.allow);
        let deny = parse("deny", &def.deny);
        if errors.is_empty() {
            Ok(IpFilter { allow, deny })
        } else {
            Err(errors)
        }
    }

    /// Whether `ip` may pass.
    pub fn permits(&self, ip: IpAddr) -> bool {
        // An IPv4 client seen through an IPv6 socket must match IPv4 rules.
        let ip = canonical_ip(ip);
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip))
    }
}

/// An IP network or a single address (as a /32 or /128).
pub fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

impl Policy for IpFilter {
    fn phase(&self) -> Phase {
        Phase::Filter
    }

    fn on_request(&self, ctx: &mut RequestCtx, _req: &mut Request<Body>) -> Flow {
        if self.permits(ctx.client.ip()) {
            Flow::Continue
        } else {
            Flow::Respond(problem(
                StatusCode::FORBIDDEN,
                "your address is not allowed to use this service",
                ctx.request_id_str(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(allow: &[&str], deny: &[&str]) -> IpFilter {
        IpFilter::build(&IpFilterDef {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
        })
        .unwrap()
    }

    #[test]
    fn empty_allow_list_permits_everyone_not_denied() {
        let f = filter(&[], &["10.0.0.0/8"]);
        assert!(f.permits("192.168.1.1".parse().unwrap()));
        assert!(!f.permits("10.1.2.3".parse().unwrap()));
    }

    #[test]
    fn allow_list_refuses_others() {
        let f = filter(&["127.0.0.0/8", "::1"], &[]);
        assert!(f.permits("127.0.0.1".parse().unwrap()));
        assert!(f.permits("::1".parse().unwrap()));
        assert!(!f.permits("8.8.8.8".parse().unwrap()));
        assert!(!f.permits("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn deny_wins_over_allow() {
        let f = filter(&["10.0.0.0/8"], &["10.9.0.0/16"]);
        assert!(f.permits("10.1.0.1".parse().unwrap()));
        assert!(!f.permits("10.9.0.1".parse().unwrap()));
    }

    #[test]
    fn ipv4_mapped_ipv6_client_matches_ipv4_rules() {
        let f = filter(&["127.0.0.0/8"], &[]);
        assert!(f.permits("::ffff:127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn bad_cidr_is_reported_with_its_position() {
        let err = IpFilter::build(&IpFilterDef {
            allow: vec!["10.0.0.0/8".into(), "10.0.0.300/8".into()],
            deny: vec![],
        })
        .unwrap_err();
        assert_eq!(err.len(), 1);
        assert_eq!(err[0].0, "allow.1");
    }
}
