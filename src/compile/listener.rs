//! Compiling `listeners`: addresses, TLS termination, limits, PROXY protocol,
//! L4 settings, and each listener's route table with its policies.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderName;

use crate::config::diagnostics::DocPath;
use crate::config::locate;
use crate::config::model::{self, Config, Protocol};
use crate::net::tls::{self, CertificateFiles, ClientAuth, ServerTlsSettings, TlsVersion};
use crate::policy::{self, NamedPolicy};
use crate::proxy::snapshot::{Binding, Limits, ListenerPlan, RouteEntry};
use crate::route::{RouteSpec, RouteTable};
use crate::upstream::Upstream;

use super::Compiler;

impl Compiler<'_> {
    pub(super) fn listeners(
        &mut self,
        cfg: &Config,
        routes: &[(Arc<RouteEntry>, RouteSpec, Vec<NamedPolicy>)],
        policies: &HashMap<String, NamedPolicy>,
        upstreams: &HashMap<Arc<str>, Arc<Upstream>>,
    ) -> Vec<Arc<ListenerPlan>> {
        let http_listeners: Vec<&str> = cfg
            .listeners
            .iter()
            .filter(|l| matches!(l.protocol, Protocol::Http | Protocol::Https))
            .map(|l| l.name.as_str())
            .collect();
        // Which listeners each route attaches to.
        let mut attached: Vec<Vec<usize>> = vec![Vec::new(); cfg.listeners.len()];
        for (i, r) in cfg.routes.iter().enumerate() {
            let at = DocPath::root().key("routes").index(i).key("listeners");
            match &r.listeners {
                None => {
                    for (li, l) in cfg.listeners.iter().enumerate() {
                        if matches!(l.protocol, Protocol::Http | Protocol::Https) {
                            attached[li].push(i);
                        }
                    }
                }
                Some(names) => {
                    for (j, name) in names.iter().enumerate() {
                        match cfg.listeners.iter().position(|l| &l.name == name) {
                            Some(li) if http_listeners.contains(&name.as_str()) => {
                                attached[li].push(i)
                            }
                            Some(_) => self.diag.error(
                                &at.index(j),
                                format!("listener `{name}` is not an http or https listener"),
                                Some("routes attach to http and https listeners only".to_string()),
                            ),
                            None => self.missing(&at.index(j), "listener", name, &http_listeners),
                        }
                    }
                }
            }
        }
        self.redirect_loops(cfg, &attached);
        // Route index in `routes` by file index (routes that failed to compile are absent).
        let by_name: HashMap<&str, usize> = routes
            .iter()
            .enumerate()
            .map(|(k, (r, _, _))| (&*r.name, k))
            .collect();

        // Which `skip_policies` entries named a policy some listener of
        // their route attaches, by route file index.
        let mut skipped: Vec<Vec<bool>> = cfg
            .routes
            .iter()
            .map(|r| vec![false; r.skip_policies.len()])
            .collect();
        // Routes already told that two cors policies apply to them.
        let mut two_cors = vec![false; cfg.routes.len()];
        let mut out = Vec::new();
        for (li, l) in cfg.listeners.iter().enumerate() {
            let at = DocPath::root().key("listeners").index(li);
            let address = self.socket_addr(&at.key("address"), &l.address);
            if matches!(l.protocol, Protocol::Tcp | Protocol::Tls | Protocol::Udp) {
                if let Some(plan) = self.l4_listener(cfg, &at, l, address, upstreams) {
                    out.push(Arc::new(plan));
                }
                continue;
            }
            for (key, given) in [
                ("upstream", l.upstream.is_some()),
                ("sni", !l.sni.is_empty()),
                ("default_upstream", l.default_upstream.is_some()),
            ] {
                if given {
                    self.diag.error(
                        &at.key(key),
                        format!("`{key}` applies only to tcp, tls and udp listeners"),
                        Some(
                            "http and https listeners forward through routes; remove it"
                                .to_string(),
                        ),
                    );
                }
            }
            if l.https_redirect && l.protocol != Protocol::Http {
                self.diag.error(
                    &at.key("https_redirect"),
                    "`https_redirect` sends plain-HTTP clients to https; this listener is already https",
                    Some("remove it, or put it on the http listener".to_string()),
                );
            }
            let tls = self.listener_tls(&at, l);
            let listener_policies = self.policy_list(&at.key("policies"), &l.policies, policies);
            let limits = limits_of(l);
            let mut specs = Vec::new();
            let mut bindings = Vec::new();
            for ri in &attached[li] {
                let Some(k) = by_name.get(cfg.routes[*ri].name.as_str()) else {
                    continue;
                };
                let (route, spec, route_policies) = &routes[*k];
                let skip = &cfg.routes[*ri].skip_policies;
                let mut all: Vec<NamedPolicy> = Vec::with_capacity(listener_policies.len());
                for p in &listener_policies {
                    match skip.iter().position(|s| **s == *p.name) {
                        Some(i) => skipped[*ri][i] = true,
                        None => all.push(p.clone()),
                    }
                }
                all.extend(route_policies.iter().cloned());
                if !two_cors[*ri] {
                    two_cors[*ri] = self.two_cors(cfg, *ri, &all);
                }
                specs.push(spec.clone());
                bindings.push(Binding {
                    route: route.clone(),
                    chain: Arc::new(policy::Chain::new(all)),
                });
            }
            let table = match RouteTable::build(specs) {
                Ok(t) => t,
                Err(e) => {
                    self.diag
                        .error(&at, format!("cannot build the route table: {e}"), None);
                    continue;
                }
            };
            let (Some(address), Some(tls)) = (address, tls) else {
                continue;
            };
            out.push(Arc::new(ListenerPlan {
                name: Arc::from(l.name.as_str()),
                address_text: l.address.clone(),
                address,
                protocol: l.protocol,
                tls: tls.0,
                client_subject_header: tls.1,
                limits,
                routes: table,
                bindings,
                proxy_protocol: l.proxy_protocol,
                https_redirect: l.https_redirect,
                l4: None,
            }));
        }
        for (ri, used) in skipped.iter().enumerate() {
            for (i, used) in used.iter().enumerate() {
                let name = &cfg.routes[ri].skip_policies[i];
                if !used && !self.broken_policies.contains(name) {
                    self.diag.error(
                        &DocPath::root()
                            .key("routes")
                            .index(ri)
                            .key("skip_policies")
                            .index(i),
                        format!("no listener of route `{}` attaches policy `{name}`", cfg.routes[ri].name),
                        Some("skip_policies names policies from the `policies` of the route's listeners; remove it".into()),
                    );
                }
            }
        }
        out
    }

    /// Refuses a chain with two `cors` policies (the listener's and the
    /// route's, or two of the route's): each would answer or mark the
    /// request by its own lists, so together they cancel each other out.
    /// Says whether it refused.
    fn two_cors(&mut self, cfg: &Config, ri: usize, chain: &[NamedPolicy]) -> bool {
        let cors: Vec<&str> = chain
            .iter()
            .map(|p| &*p.name)
            .filter(|name| matches!(cfg.policies.get(*name), Some(model::PolicyDef::Cors(_))))
            .collect();
        if cors.len() < 2 {
            return false;
        }
        self.diag.error(
            &DocPath::root().key("routes").index(ri),
            format!(
                "route `{}` gets two cors policies (`{}` and `{}`); only one can answer for it",
                cfg.routes[ri].name, cors[0], cors[1]
            ),
            Some(
                "put one cors policy on the route or on the listener; use skip_policies to replace a listener's"
                    .into(),
            ),
        );
        true
    }

    /// Refuses a redirect that can only send clients back to the URL they
    /// asked for: it names a scheme every listener of its route already
    /// has and changes nothing else (a route on both an http and an https
    /// listener may name https: it moves the http clients).
    fn redirect_loops(&mut self, cfg: &Config, attached: &[Vec<usize>]) {
        for (ri, r) in cfg.routes.iter().enumerate() {
            let Some(def) = &r.redirect else { continue };
            let Some(scheme) = def.scheme.as_deref() else {
                continue;
            };
            let protocol = match scheme {
                "http" => Protocol::Http,
                "https" => Protocol::Https,
                // Refused where the redirect is compiled.
                _ => continue,
            };
            if def.host.is_some() || def.port.is_some() || def.path.is_some() || def.strip_query {
                continue;
            }
            let mut listeners = attached
                .iter()
                .enumerate()
                .filter(|(_, routes)| routes.contains(&ri))
                .map(|(li, _)| &cfg.listeners[li]);
            let Some(first) = listeners.next() else {
                continue;
            };
            if first.protocol == protocol && listeners.all(|l| l.protocol == protocol) {
                self.diag.error(
                    &DocPath::root().key("routes").index(ri).key("redirect").key("scheme"),
                    format!(
                        "this redirect sends clients back to the URL they asked for: every listener of route `{}` is already {scheme}",
                        r.name
                    ),
                    Some(format!(
                        "attach the route to a listener that is not {scheme}, or change the host, port, path or query as well"
                    )),
                );
            }
        }
    }

    /// Compiles a `tcp`, `tls` or `udp` listener.
    fn l4_listener(
        &mut self,
        cfg: &Config,
        at: &DocPath,
        l: &model::Listener,
        address: Option<SocketAddr>,
        upstreams: &HashMap<Arc<str>, Arc<Upstream>>,
    ) -> Option<ListenerPlan> {
        let kind = format!("{:?}", l.protocol).to_lowercase();
        let http_only = [
            (
                "tls",
                l.tls.is_some(),
                "TLS passthrough never decrypts; use protocol: https to terminate TLS",
            ),
            (
                "policies",
                !l.policies.is_empty(),
                "policies run on HTTP requests; remove them",
            ),
            ("max_header_size", l.max_header_size.is_some(), "remove it"),
            ("max_headers", l.max_headers.is_some(), "remove it"),
            ("max_body", l.max_body.is_some(), "remove it"),
        ];
        let mut ok = true;
        for (key, given, hint) in http_only {
            if given {
                self.diag.error(
                    &at.key(key),
                    format!("`{key}` does not apply to {kind} listeners"),
                    Some(hint.to_string()),
                );
                ok = false;
            }
        }
        let known: Vec<&str> = cfg.upstreams.iter().map(|u| u.name.as_str()).collect();
        let lookup = |this: &mut Self, at: &DocPath, name: &str| -> Option<Arc<Upstream>> {
            match upstreams.get(name) {
                Some(u) => Some(u.clone()),
                None => {
                    // An upstream that failed to compile has its own error already.
                    if !known.contains(&name) {
                        this.missing(at, "upstream", name, &known);
                    }
                    None
                }
            }
        };
        let plan = match l.protocol {
            Protocol::Tcp | Protocol::Udp => {
                for (key, given) in [
                    ("sni", !l.sni.is_empty()),
                    ("default_upstream", l.default_upstream.is_some()),
                ] {
                    if given {
                        self.diag.error(
                            &at.key(key),
                            format!("`{key}` applies only to tls listeners"),
                            Some(format!("{kind} listeners forward to `upstream`")),
                        );
                        ok = false;
                    }
                }
                let Some(name) = &l.upstream else {
                    self.diag.error(
                        at,
                        format!("{kind} listener `{}` has no `upstream`", l.name),
                        Some("add upstream: NAME".to_string()),
                    );
                    return None;
                };
                let upstream = lookup(self, &at.key("upstream"), name)?;
                if l.protocol == Protocol::Udp {
                    if l.proxy_protocol {
                        self.diag.error(
                            &at.key("proxy_protocol"),
                            "PROXY protocol is not available on udp listeners",
                            Some("remove `proxy_protocol`".to_string()),
                        );
                        ok = false;
                    }
                    if upstream.l4.proxy_protocol.is_some() {
                        self.diag.error(
                            &at.key("upstream"),
                            format!(
                                "upstream `{name}` sends PROXY headers, which udp listeners cannot"
                            ),
                            Some("use an upstream without `proxy_protocol`".to_string()),
                        );
                        ok = false;
                    }
                    crate::l4::L4Plan::Udp(upstream)
                } else {
                    crate::l4::L4Plan::Tcp(upstream)
                }
            }
            _ => {
                if let Some(_name) = &l.upstream {
                    self.diag.error(
                        &at.key("upstream"),
                        "tls listeners route by `sni`, not `upstream`",
                        Some("use default_upstream: NAME for every server name".to_string()),
                    );
                    ok = false;
                }
                if l.sni.is_empty() && l.default_upstream.is_none() {
                    self.diag.error(
                        at,
                        format!("tls listener `{}` has neither `sni` nor `default_upstream`", l.name),
                        Some("add sni: { \"db.example.com\": UPSTREAM } or default_upstream: UPSTREAM".to_string()),
                    );
                    return None;
                }
                let default = match &l.default_upstream {
                    Some(name) => Some(lookup(self, &at.key("default_upstream"), name)?),
                    None => None,
                };
                let mut routes = crate::l4::SniRoutes::new(default);
                for (pattern, name) in &l.sni {
                    let sat = at.key("sni").key(pattern);
                    let Some(upstream) = lookup(self, &sat, name) else {
                        ok = false;
                        continue;
                    };
                    if let Err(reason) = routes.add(pattern, upstream) {
                        self.diag.error(
                            &sat,
                            format!("`{pattern}` is not a server name: {reason}"),
                            Some("write db.example.com or *.example.com".to_string()),
                        );
                        ok = false;
                    }
                }
                crate::l4::L4Plan::Tls(routes)
            }
        };
        let routes = RouteTable::build(Vec::new()).ok()?;
        if !ok {
            return None;
        }
        Some(ListenerPlan {
            name: Arc::from(l.name.as_str()),
            address_text: l.address.clone(),
            address: address?,
            protocol: l.protocol,
            tls: None,
            client_subject_header: None,
            limits: limits_of(l),
            routes,
            bindings: Vec::new(),
            proxy_protocol: l.proxy_protocol,
            https_redirect: false,
            l4: Some(plan),
        })
    }

    /// The TLS config of a listener: `Some((None, None))` for plain HTTP, `None` on error.
    #[allow(clippy::type_complexity)]
    fn listener_tls(
        &mut self,
        at: &DocPath,
        l: &model::Listener,
    ) -> Option<(Option<Arc<rustls::ServerConfig>>, Option<HeaderName>)> {
        let tat = at.key("tls");
        match (l.protocol, &l.tls) {
            (Protocol::Http, None) => Some((None, None)),
            (Protocol::Http, Some(_)) => {
                self.diag.error(
                    &tat,
                    "`tls` is set on an http listener",
                    Some("use protocol: https".to_string()),
                );
                None
            }
            (Protocol::Https, None) => {
                self.diag.error(
                    at,
                    format!("https listener `{}` has no `tls` section", l.name),
                    Some("add tls: { certificates: [ { cert: FILE, key: FILE } ] }".to_string()),
                );
                None
            }
            (Protocol::Https, Some(t)) => {
                let min_version = match t.min_version.as_deref() {
                    None | Some("1.2") => TlsVersion::V1_2,
                    Some("1.3") => TlsVersion::V1_3,
                    Some(other) => {
                        self.diag.error(
                            &tat.key("min_version"),
                            format!("unsupported TLS version `{other}`"),
                            Some("use \"1.2\" or \"1.3\"".to_string()),
                        );
                        return None;
                    }
                };
                let client_auth = match t.client_auth.as_deref() {
                    None | Some("none") => ClientAuth::None,
                    Some("optional") => ClientAuth::Optional,
                    Some("required") => ClientAuth::Required,
                    Some(other) => {
                        let hint = locate::did_you_mean(other, ["none", "optional", "required"])
                            .map(|c| format!("did you mean `{c}`?"))
                            .unwrap_or_else(|| "use none, optional or required".to_string());
                        self.diag.error(
                            &tat.key("client_auth"),
                            format!("unknown client_auth `{other}`"),
                            Some(hint),
                        );
                        return None;
                    }
                };
                if t.certificates.is_empty() {
                    self.diag.error(
                        &tat.key("certificates"),
                        "no certificates listed",
                        Some("add { cert: FILE, key: FILE }".to_string()),
                    );
                    return None;
                }
                let certificates: Vec<CertificateFiles> = t
                    .certificates
                    .iter()
                    .map(|c| CertificateFiles {
                        cert: self.resolve(&c.cert),
                        key: self.resolve(&c.key),
                    })
                    .collect();
                let client_ca = t.client_ca.as_ref().map(|p| self.resolve(p));
                let settings = ServerTlsSettings {
                    certificates: &certificates,
                    min_version,
                    client_ca: client_ca.as_deref(),
                    client_auth,
                };
                let header_name = t
                    .client_subject_header
                    .as_deref()
                    .unwrap_or("x-client-subject");
                let header = match HeaderName::from_bytes(header_name.as_bytes()) {
                    Ok(h) => h,
                    Err(_) => {
                        self.diag.error(
                            &tat.key("client_subject_header"),
                            format!("`{header_name}` is not a header name"),
                            None,
                        );
                        return None;
                    }
                };
                match tls::server_config(&settings) {
                    Ok(config) => Some((
                        Some(config),
                        (client_auth != ClientAuth::None).then_some(header),
                    )),
                    Err(e) => {
                        self.diag.error(
                            &tat.key("certificates"),
                            e.to_string(),
                            Some("check that each file exists, is PEM, and that each key belongs to its certificate".to_string()),
                        );
                        None
                    }
                }
            }
            _ => Some((None, None)),
        }
    }
}

/// The limits a listener sets, its defaults for those it leaves out.
fn limits_of(l: &crate::config::model::Listener) -> Limits {
    let default = Limits::default();
    let size = |s: Option<crate::config::units::Size>, or: usize| {
        s.map_or(or, |s| usize::try_from(s.0).unwrap_or(usize::MAX))
    };
    Limits {
        max_header_size: size(l.max_header_size, default.max_header_size),
        max_headers: l.max_headers.unwrap_or(default.max_headers),
        max_body: l.max_body.map(|s| s.0),
        header_read_timeout: l
            .header_read_timeout
            .map_or(default.header_read_timeout, |d| d.0),
        max_uri_size: size(l.max_uri_size, default.max_uri_size),
        keepalive_timeout: l
            .keepalive_timeout
            .map_or(default.keepalive_timeout, |d| d.0),
        http2_idle_timeout: l
            .http2_idle_timeout
            .map_or(default.http2_idle_timeout, |d| d.0),
        max_connections: l.max_connections,
        max_connections_per_client: l.max_connections_per_client,
        max_connection_rate_per_client: l.max_connection_rate_per_client,
        body_pace: crate::http::pace::BodyPace {
            read_timeout: l
                .body_read_timeout
                .map_or(default.body_pace.read_timeout, |d| d.0),
            min_rate: l.min_body_rate.map_or(default.body_pace.min_rate, |s| s.0),
            grace: l
                .min_body_rate_grace
                .map_or(default.body_pace.grace, |d| d.0),
        },
        send_timeout: l.send_timeout.map_or(default.send_timeout, |d| d.0),
        http2_flood: {
            let (f, d) = (&l.http2_flood, default.http2_flood);
            crate::http::h2_guard::FloodLimits {
                resets: f.rst_stream.unwrap_or(d.resets),
                pings: f.ping.unwrap_or(d.pings),
                settings: f.settings.unwrap_or(d.settings),
                window_updates: f.window_update.unwrap_or(d.window_updates),
                empty_frames: f.empty_frames.unwrap_or(d.empty_frames),
                penalty: f.penalty.map_or(d.penalty, |p| p.0),
            }
        },
    }
}
