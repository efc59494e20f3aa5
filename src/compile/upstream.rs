//! Compiling `upstreams`: targets, balancer, health checks, outlier detection,
//! retries, circuit breaker, TLS and connection pools.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use http::uri::Authority;

use crate::config::diagnostics::DocPath;
use crate::config::model::{self, Balance, Config};
use crate::net::proxy_protocol;
use crate::net::tls::{self, CertificateFiles};
use crate::observe::metrics::UpstreamLabel;
use crate::upstream::balance::{self, Weighted};
use crate::upstream::breaker::CircuitBreaker;
use crate::upstream::client::{PoolSettings, ServerNames, UpstreamClient};
use crate::upstream::dns;
use crate::upstream::health::{CheckKind, HealthCheck, parse_status_range};
use crate::upstream::outlier::OutlierDetection;
use crate::upstream::retry::{RetryBudget, RetryPolicy};
use crate::upstream::{HashKey, Target, Upstream, WhenAllDown};

use super::Compiler;

impl Compiler<'_> {
    pub(super) fn upstreams(&mut self, cfg: &Config) -> HashMap<Arc<str>, Arc<Upstream>> {
        let mut out = HashMap::new();
        for (i, u) in cfg.upstreams.iter().enumerate() {
            let at = DocPath::root().key("upstreams").index(i);
            if let Some(up) = self.upstream(&at, u) {
                out.insert(up.name.clone(), Arc::new(up));
            }
        }
        out
    }

    fn upstream(&mut self, at: &DocPath, u: &model::Upstream) -> Option<Upstream> {
        if u.targets.is_empty() {
            self.diag.error(
                &at.key("targets"),
                format!("upstream `{}` has no targets", u.name),
                Some("list at least one target, like `- 127.0.0.1:8080`".into()),
            );
        }
        let mut targets = Vec::new();
        for (j, t) in u.targets.iter().enumerate() {
            let tat = at.key("targets").index(j);
            let address = t.address();
            match address.parse::<Authority>() {
                Ok(auth) if auth.port_u16().is_some() && !address.contains('@') => {
                    if !dns::is_name(address) {
                        targets.push(Target {
                            address: Arc::from(address),
                            authority: auth,
                            name: None,
                            weight: t.weight(),
                            state: self.env.targets.get(&u.name, address),
                        });
                        continue;
                    }
                    // A name becomes one target per address it resolves to.
                    let Some(resolved) = self.env.dns.cached(address) else {
                        self.diag.error(
                            &tat,
                            format!("cannot resolve `{address}`"),
                            Some("check the name (the system resolver is used), or give an IP address".into()),
                        );
                        continue;
                    };
                    let name: Arc<str> = Arc::from(address);
                    for addr in resolved {
                        let text = addr.to_string();
                        let Ok(authority) = text.parse::<Authority>() else {
                            continue;
                        };
                        targets.push(Target {
                            state: self.env.targets.get(&u.name, &text),
                            address: Arc::from(text),
                            authority,
                            name: Some(name.clone()),
                            weight: t.weight(),
                        });
                    }
                }
                _ => self.diag.error(
                    &tat,
                    format!("`{address}` is not a target address"),
                    Some("write host:port, like 10.0.0.11:8080 or users.internal:8080".into()),
                ),
            }
        }
        let settings = PoolSettings {
            http2: u.http2,
            connect_timeout: u.timeouts.connect.0,
            idle_timeout: u.timeouts.idle.0,
        };
        let tls_setup = match &u.tls {
            None => None,
            Some(t) => {
                let tat = at.key("tls");
                let client_cert = match (&t.cert, &t.key) {
                    (Some(c), Some(k)) => Some(CertificateFiles {
                        cert: self.resolve(c),
                        key: self.resolve(k),
                    }),
                    (None, None) => None,
                    _ => {
                        self.diag.error(
                            &tat,
                            "upstream tls needs both `cert` and `key` for a client certificate",
                            Some("give both, or neither".to_string()),
                        );
                        None
                    }
                };
                let ca = t.ca.as_ref().map(|p| self.resolve(p));
                let sni = match &t.sni {
                    Some(name) => match rustls_pki_types::ServerName::try_from(name.clone()) {
                        Ok(n) => Some(n),
                        Err(_) => {
                            self.diag.error(
                                &tat.key("sni"),
                                format!("`{name}` is not a valid server name"),
                                Some("use a DNS name like users.internal".to_string()),
                            );
                            None
                        }
                    },
                    None => None,
                };
                match tls::upstream_client_config(ca.as_deref(), client_cert.as_ref()) {
                    Ok(config) => Some((config, sni)),
                    Err(e) => {
                        self.diag.error(
                            &tat,
                            e.to_string(),
                            Some("check the certificate and key files".to_string()),
                        );
                        return None;
                    }
                }
            }
        };
        let proxy_version = u.proxy_protocol.map(|v| match v {
            model::ProxyProtocolVersion::V1 => proxy_protocol::Version::V1,
            model::ProxyProtocolVersion::V2 => proxy_protocol::Version::V2,
        });
        let by_address: HashMap<String, rustls_pki_types::ServerName<'static>> = targets
            .iter()
            .filter_map(|t| {
                let name = t.name.as_deref()?;
                let host = name.rsplit_once(':').map(|(h, _)| h).unwrap_or(name);
                let server_name = rustls_pki_types::ServerName::try_from(host.to_string()).ok()?;
                Some((t.address.to_string(), server_name))
            })
            .collect();
        let client = match (proxy_version, tls_setup) {
            (None, None) => self.env.clients.plain(settings),
            // TLS clients are new on every reload (certificates are read again);
            // a PROXY header names one client, so those connections are never reused.
            (proxy, tls) => UpstreamClient::new(
                settings,
                tls.as_ref().map(|(config, fixed)| {
                    let names = ServerNames {
                        fixed: fixed.clone(),
                        by_address,
                    };
                    (&**config, names)
                }),
                proxy,
            ),
        };
        if targets.is_empty() {
            return None;
        }
        let hash_key = match (&u.hash_key, u.balance) {
            (Some(text), Balance::ConsistentHash) => match HashKey::parse(text) {
                Ok(k) => Some(k),
                Err(message) => {
                    self.diag.error(&at.key("hash_key"), message, None);
                    return None;
                }
            },
            (None, Balance::ConsistentHash) => Some(HashKey::ClientIp),
            (None, Balance::IpHash) => Some(HashKey::ClientIp),
            (Some(_), _) => {
                self.diag.error(
                    &at.key("hash_key"),
                    "`hash_key` applies only to `balance: consistent_hash`",
                    Some("remove it, or set balance: consistent_hash".to_string()),
                );
                return None;
            }
            (None, _) => None,
        };
        let weighted: Vec<Weighted> = targets
            .iter()
            .map(|t| Weighted {
                weight: t.weight,
                address: t.address.clone(),
                state: t.state.clone(),
            })
            .collect();
        let outlier = u.outlier_detection.as_ref().and_then(|o| {
            let oat = at.key("outlier_detection");
            let detection = OutlierDetection {
                consecutive_failures: o.consecutive_failures.unwrap_or(5),
                base_ejection: o
                    .base_ejection
                    .map(|d| d.0)
                    .unwrap_or(Duration::from_secs(30)),
                max_ejected_percent: o.max_ejected_percent.unwrap_or(50),
            };
            if detection.consecutive_failures == 0 {
                self.diag.error(
                    &oat.key("consecutive_failures"),
                    "consecutive_failures must be at least 1",
                    None,
                );
                return None;
            }
            if detection.max_ejected_percent > 100 {
                self.diag.error(
                    &oat.key("max_ejected_percent"),
                    "max_ejected_percent is a percentage (0 to 100)",
                    None,
                );
                return None;
            }
            Some(detection)
        });
        let retries = match &u.retries {
            Some(r) => {
                let rat = at.key("retries");
                let on =
                    r.on.clone()
                        .unwrap_or_else(|| vec!["connect_error".to_string(), "reset".to_string()]);
                match RetryPolicy::conditions(&on) {
                    Ok((on_connect_error, on_reset, on_timeout, statuses)) => Some(RetryPolicy {
                        attempts: r.attempts.unwrap_or(1),
                        backoff: r.backoff.map(|d| d.0).unwrap_or(Duration::from_millis(25)),
                        on_connect_error,
                        on_reset,
                        on_timeout,
                        statuses,
                        non_idempotent: r.non_idempotent,
                        max_body: r.max_body.map(|s| s.0).unwrap_or(64 * 1024),
                        budget: RetryBudget::new(r.budget_percent.unwrap_or(20)),
                    }),
                    Err(message) => {
                        // Recorded; the walk goes on so later mistakes are reported too.
                        self.diag.error(&rat.key("on"), message, None);
                        None
                    }
                }
            }
            None => None,
        };
        let breaker = u.circuit_breaker.as_ref().and_then(|cb| {
            let cat = at.key("circuit_breaker");
            let mut ok = true;
            for (key, v) in [
                ("max_requests", cb.max_requests),
                ("max_connections", cb.max_connections),
            ] {
                if v == Some(0) {
                    self.diag
                        .error(&cat.key(key), format!("{key} must be at least 1"), None);
                    ok = false;
                }
            }
            ok.then(|| CircuitBreaker::new(cb.max_requests, cb.max_connections, cb.max_pending))
        });
        let health_check = match &u.health_check {
            Some(h) => Some(self.health_check(&at.key("health_check"), h)?),
            None => None,
        };
        let balancer = balance::build(algorithm(u.balance), &weighted);
        let name: Arc<str> = Arc::from(u.name.as_str());
        let duration = self
            .env
            .metrics
            .upstream_duration
            .get_or_create_owned(&UpstreamLabel {
                upstream: name.clone(),
            });
        let upstream_label = UpstreamLabel {
            upstream: name.clone(),
        };
        let metrics = &self.env.metrics;
        Some(Upstream {
            retries_total: metrics.retries.get_or_create_owned(&upstream_label),
            circuit_open_total: metrics.circuit_open.get_or_create_owned(&upstream_label),
            outlier,
            retries,
            breaker,
            duration,
            name,
            balancer,
            health_check,
            hash_key,
            when_all_down: match u.when_all_down {
                model::WhenAllDown::Fail => WhenAllDown::Fail,
                model::WhenAllDown::Any => WhenAllDown::Any,
            },
            targets,
            client,
            response_header_timeout: u.timeouts.response_header.0,
            connect_timeout: u.timeouts.connect.0,
            http2: u.http2,
            l4: crate::upstream::L4Settings {
                connect_timeout: u.timeouts.connect.0,
                idle_timeout: u.timeouts.idle.0,
                proxy_protocol: proxy_version,
            },
        })
    }

    fn health_check(&mut self, at: &DocPath, h: &model::HealthCheckDef) -> Option<HealthCheck> {
        let interval = h.interval.map(|d| d.0).unwrap_or(Duration::from_secs(5));
        let timeout = h.timeout.map(|d| d.0).unwrap_or(Duration::from_secs(2));
        let mut ok = true;
        if interval.is_zero() {
            self.diag
                .error(&at.key("interval"), "interval must be above 0", None);
            ok = false;
        }
        if timeout.is_zero() {
            self.diag
                .error(&at.key("timeout"), "timeout must be above 0", None);
            ok = false;
        }
        let healthy_threshold = h.healthy_threshold.unwrap_or(2);
        let unhealthy_threshold = h.unhealthy_threshold.unwrap_or(3);
        for (key, v) in [
            ("healthy_threshold", healthy_threshold),
            ("unhealthy_threshold", unhealthy_threshold),
        ] {
            if v == 0 {
                self.diag
                    .error(&at.key(key), format!("{key} must be at least 1"), None);
                ok = false;
            }
        }
        let kind = match h.kind {
            model::HealthCheckKind::Tcp => {
                for (key, given) in [
                    ("path", h.path.is_some()),
                    ("host", h.host.is_some()),
                    ("expect_status", h.expect_status.is_some()),
                ] {
                    if given {
                        self.diag.error(
                            &at.key(key),
                            format!("`{key}` applies only to http checks"),
                            Some("remove it, or use type: http".to_string()),
                        );
                        ok = false;
                    }
                }
                CheckKind::Tcp
            }
            model::HealthCheckKind::Http => {
                let path = h.path.as_deref().unwrap_or("/");
                let path = match http::uri::PathAndQuery::try_from(path) {
                    Ok(p) if path.starts_with('/') => Some(p),
                    _ => {
                        self.diag.error(
                            &at.key("path"),
                            format!("`{path}` is not a request path"),
                            Some("start it with /".to_string()),
                        );
                        None
                    }
                };
                let host = match &h.host {
                    Some(v) => match HeaderValue::from_str(v) {
                        Ok(v) => Some(v),
                        Err(_) => {
                            self.diag.error(
                                &at.key("host"),
                                format!("`{v}` is not a valid Host header"),
                                None,
                            );
                            ok = false;
                            None
                        }
                    },
                    None => None,
                };
                let expect =
                    match parse_status_range(h.expect_status.as_deref().unwrap_or("200-399")) {
                        Ok(r) => Some(r),
                        Err(message) => {
                            self.diag.error(&at.key("expect_status"), message, None);
                            None
                        }
                    };
                match (path, expect) {
                    (Some(path), Some(expect)) => CheckKind::Http { path, host, expect },
                    _ => return None,
                }
            }
        };
        ok.then_some(HealthCheck {
            kind,
            interval,
            timeout,
            healthy_threshold,
            unhealthy_threshold,
        })
    }
}

/// The upstream layer's name for a configured `balance`.
fn algorithm(balance: model::Balance) -> balance::Algorithm {
    use balance::Algorithm;
    match balance {
        model::Balance::RoundRobin => Algorithm::RoundRobin,
        model::Balance::LeastConnections => Algorithm::LeastConnections,
        model::Balance::Random => Algorithm::Random,
        model::Balance::P2cEwma => Algorithm::P2cEwma,
        model::Balance::IpHash => Algorithm::IpHash,
        model::Balance::ConsistentHash => Algorithm::ConsistentHash,
    }
}
