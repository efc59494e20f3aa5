//! Checks a loaded model and compiles it into a [`Snapshot`].
//!
//! Validation and compilation are one walk: parsing a CIDR, a regex or a
//! certificate is both the check and the build step, and doing them once
//! means a file that passes `portcullis check` is exactly one that loads.
//! Every mistake is recorded with its place in the file; the walk goes on
//! after a mistake so that one run reports all of them.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::SystemTime;

use http::uri::{Authority, Scheme};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use sha2::{Digest, Sha256};

use super::diagnostics::{ConfigErrors, Diagnostics, DocPath};
use super::load::Loaded;
use super::locate;
use super::model::{self, Config, Protocol};
use super::snapshot::{
    Action, Binding, ConfigInfo, DirectResponse, Limits, ListenerPlan, RouteEntry, Snapshot, Split,
};
use crate::observe::access_log::{AccessLog, Destination};
use crate::observe::metrics::{RouteLabel, UpstreamLabel};
use crate::policy::{self, NamedPolicy};
use crate::proxy::headers::HeaderOps;
use crate::proxy::rewrite::Rewrite;
use crate::proxy::static_files::StaticDir;
use crate::route::{PathMatch, RouteSpec, RouteTable};
use crate::server::runtime::Runtime;
use crate::server::tls::{self, CertificateFiles, ClientAuth, ServerTlsSettings, TlsVersion};
use crate::upstream::client::PoolSettings;
use crate::upstream::{Target, Upstream, balance::RoundRobin};

/// Checks and compiles `loaded` (read from `path`); relative file paths in the
/// configuration resolve against the file's directory.
pub fn compile(path: &Path, loaded: &Loaded, runtime: &Runtime) -> Result<Snapshot, ConfigErrors> {
    let mut c = Compiler {
        diag: Diagnostics::new(path, loaded.source.as_ref()),
        base: path.parent().map(Path::to_path_buf).unwrap_or_default(),
        runtime,
    };
    let snapshot = c.snapshot(path, &loaded.config, &loaded.text);
    if c.diag.is_empty() {
        snapshot.ok_or_else(|| c.diag.into_errors())
    } else {
        Err(c.diag.into_errors())
    }
}

struct Compiler<'a> {
    diag: Diagnostics<'a>,
    base: std::path::PathBuf,
    runtime: &'a Runtime,
}

/// Turns a dotted sub-path from a component ("allow.1") into a document path.
fn sub_path(base: &DocPath, dotted: &str) -> DocPath {
    let mut p = base.clone();
    for seg in dotted.split('.').filter(|s| !s.is_empty()) {
        p = match seg.parse::<usize>() {
            Ok(i) => p.index(i),
            Err(_) => p.key(seg),
        };
    }
    p
}

impl Compiler<'_> {
    fn resolve(&self, p: &Path) -> std::path::PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn unique_names<'n>(&mut self, section: &str, names: impl Iterator<Item = &'n str>) {
        let mut seen = HashSet::new();
        for (i, name) in names.enumerate() {
            let at = DocPath::root().key(section).index(i).key("name");
            if name.is_empty() {
                self.diag.error(
                    &at,
                    format!("{section}[{i}] has an empty name"),
                    Some("give it a unique name".into()),
                );
            } else if !seen.insert(name) {
                self.diag.error(
                    &at,
                    format!("duplicate name `{name}` in {section}"),
                    Some("names must be unique; rename one of them".into()),
                );
            }
        }
    }

    fn missing(&mut self, at: &DocPath, kind: &str, name: &str, known: &[&str]) {
        let hint = match locate::did_you_mean(name, known.iter().copied()) {
            Some(close) => format!("did you mean `{close}`?"),
            None if known.is_empty() => {
                format!("define it in the top-level `{}` section", section_of(kind))
            }
            None => format!("known {kind}s: {}", known.join(", ")),
        };
        self.diag
            .error(at, format!("{kind} `{name}` is not defined"), Some(hint));
    }

    fn snapshot(&mut self, path: &Path, cfg: &Config, text: &str) -> Option<Snapshot> {
        self.unique_names("listeners", cfg.listeners.iter().map(|l| l.name.as_str()));
        self.unique_names("routes", cfg.routes.iter().map(|r| r.name.as_str()));
        self.unique_names("upstreams", cfg.upstreams.iter().map(|u| u.name.as_str()));

        let upstreams = self.upstreams(cfg);
        let policies = self.policies(cfg);
        let routes = self.routes(cfg, &upstreams, &policies);
        let listeners = self.listeners(cfg, &routes, &policies);

        let admin = cfg.admin.as_ref().and_then(|a| {
            self.socket_addr(&DocPath::root().key("admin").key("address"), &a.address)
        });
        let access_log = self.access_log(cfg);
        if !self.diag.is_empty() {
            return None;
        }
        let listener_index = listeners
            .iter()
            .enumerate()
            .map(|(i, l)| (l.name.clone(), i))
            .collect();
        Some(Snapshot {
            info: ConfigInfo {
                path: path.to_path_buf(),
                hash: hex::encode(Sha256::digest(text.as_bytes())),
                loaded_at: SystemTime::now(),
            },
            listeners,
            listener_index,
            routes: routes.into_iter().map(|(r, _, _)| r).collect(),
            upstreams,
            admin,
            shutdown_timeout: cfg.shutdown_timeout.0,
            access_log,
        })
    }

    fn socket_addr(&mut self, at: &DocPath, text: &str) -> Option<SocketAddr> {
        match text.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.diag.error(
                    at,
                    format!("`{text}` is not a socket address"),
                    Some(
                        "write IP:port, like 0.0.0.0:8080 or [::]:8443 (port 0 picks a free port)"
                            .into(),
                    ),
                );
                None
            }
        }
    }

    fn upstreams(&mut self, cfg: &Config) -> HashMap<Arc<str>, Arc<Upstream>> {
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
                    targets.push(Target {
                        address: Arc::from(address),
                        authority: auth,
                        weight: t.weight(),
                    })
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
        let (scheme, client) = match &u.tls {
            None => (Scheme::HTTP, self.runtime.clients.plain(settings)),
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
                    Ok(config) => (
                        Scheme::HTTPS,
                        self.runtime.clients.tls(settings, &config, sni),
                    ),
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
        if targets.is_empty() {
            return None;
        }
        let weights: Vec<u32> = targets.iter().map(|t| t.weight).collect();
        let name: Arc<str> = Arc::from(u.name.as_str());
        let duration = self
            .runtime
            .metrics
            .upstream_duration
            .get_or_create_owned(&UpstreamLabel {
                upstream: name.clone(),
            });
        Some(Upstream {
            duration,
            name,
            balancer: RoundRobin::new(&weights),
            targets,
            scheme,
            client,
            response_header_timeout: u.timeouts.response_header.0,
            http2: u.http2,
        })
    }

    fn policies(&mut self, cfg: &Config) -> HashMap<String, NamedPolicy> {
        let mut out = HashMap::new();
        for (name, def) in &cfg.policies {
            let at = DocPath::root().key("policies").key(name);
            match policy::build(def) {
                Ok(p) => {
                    out.insert(
                        name.clone(),
                        NamedPolicy {
                            name: Arc::from(name.as_str()),
                            policy: p,
                        },
                    );
                }
                Err(errors) => {
                    for (field, message) in errors {
                        self.diag.error(
                            &sub_path(&at, &field),
                            format!("policy `{name}`: {message}"),
                            None,
                        );
                    }
                }
            }
        }
        out
    }

    fn policy_list(
        &mut self,
        at: &DocPath,
        names: &[String],
        known: &HashMap<String, NamedPolicy>,
    ) -> Vec<NamedPolicy> {
        let mut out = Vec::new();
        for (i, name) in names.iter().enumerate() {
            match known.get(name) {
                Some(p) => out.push(p.clone()),
                None => {
                    let mut names: Vec<&str> = known.keys().map(String::as_str).collect();
                    names.sort_unstable();
                    self.missing(&at.index(i), "policy", name, &names);
                }
            }
        }
        out
    }

    /// Compiles routes; each comes with its match spec and its route-level policies.
    fn routes(
        &mut self,
        cfg: &Config,
        upstreams: &HashMap<Arc<str>, Arc<Upstream>>,
        policies: &HashMap<String, NamedPolicy>,
    ) -> Vec<(Arc<RouteEntry>, RouteSpec, Vec<NamedPolicy>)> {
        let mut upstream_names: Vec<&str> = cfg.upstreams.iter().map(|u| u.name.as_str()).collect();
        upstream_names.sort_unstable();
        let mut out = Vec::new();
        for (i, r) in cfg.routes.iter().enumerate() {
            let at = DocPath::root().key("routes").index(i);
            let spec = self.route_spec(&at.key("match"), &r.matches);
            let action = self.action(&at, r, upstreams, &upstream_names);
            let rewrite = r.rewrite.as_ref().and_then(|rw| match Rewrite::build(rw) {
                Ok(x) => Some(x),
                Err((field, message)) => {
                    self.diag
                        .error(&sub_path(&at.key("rewrite"), &field), message, None);
                    None
                }
            });
            let request_headers =
                self.header_ops(&at.key("request_headers"), r.request_headers.as_ref());
            let response_headers =
                self.header_ops(&at.key("response_headers"), r.response_headers.as_ref());
            let route_policies = self.policy_list(&at.key("policies"), &r.policies, policies);
            if let (Some(spec), Some(action)) = (spec, action) {
                let name: Arc<str> = Arc::from(r.name.as_str());
                let duration =
                    self.runtime
                        .metrics
                        .request_duration
                        .get_or_create_owned(&RouteLabel {
                            route: name.clone(),
                        });
                out.push((
                    Arc::new(RouteEntry {
                        name,
                        action,
                        rewrite,
                        request_headers,
                        response_headers,
                        duration,
                    }),
                    spec,
                    route_policies,
                ));
            }
        }
        out
    }

    fn header_ops(&mut self, at: &DocPath, def: Option<&model::HeaderOps>) -> HeaderOps {
        let Some(def) = def else {
            return HeaderOps::default();
        };
        match HeaderOps::build(def) {
            Ok(ops) => ops,
            Err(errors) => {
                for (field, message) in errors {
                    self.diag.error(&sub_path(at, &field), message, None);
                }
                HeaderOps::default()
            }
        }
    }

    fn route_spec(&mut self, at: &DocPath, m: &model::RouteMatch) -> Option<RouteSpec> {
        let mut ok = true;
        let paths = [&m.path, &m.path_prefix, &m.path_regex]
            .iter()
            .filter(|p| p.is_some())
            .count();
        if paths > 1 {
            self.diag.error(
                at,
                "a route matches on at most one of `path`, `path_prefix` and `path_regex`",
                Some("keep one; use separate routes for the others".to_string()),
            );
            ok = false;
        }
        for (key, value) in [("path", &m.path), ("path_prefix", &m.path_prefix)] {
            if let Some(v) = value
                && !v.starts_with('/')
            {
                self.diag
                    .error(&at.key(key), format!("`{v}` must start with `/`"), None);
                ok = false;
            }
        }
        let path = if let Some(p) = &m.path {
            PathMatch::Exact(p.clone())
        } else if let Some(p) = &m.path_prefix {
            PathMatch::Prefix(p.clone())
        } else if let Some(p) = &m.path_regex {
            if let Err(e) = regex::Regex::new(p) {
                self.diag.error(
                    &at.key("path_regex"),
                    format!(
                        "invalid regex: {}",
                        e.to_string()
                            .lines()
                            .last()
                            .unwrap_or("")
                            .trim_start_matches("error: ")
                    ),
                    Some("the syntax is Rust's regex crate (RE2-like)".to_string()),
                );
                ok = false;
            }
            PathMatch::Regex(p.clone())
        } else {
            PathMatch::Any
        };
        for (j, h) in m.hosts.iter().enumerate() {
            let bare = h.strip_prefix("*.").unwrap_or(h);
            if bare.is_empty() || bare.contains('*') || bare.contains('/') || bare.contains(' ') {
                self.diag.error(
                    &at.key("hosts").index(j),
                    format!("`{h}` is not a host name"),
                    Some(
                        "write an exact host like api.example.com or a wildcard like *.example.org"
                            .to_string(),
                    ),
                );
                ok = false;
            }
        }
        let mut methods = Vec::new();
        for (j, name) in m.methods.iter().enumerate() {
            match Method::from_bytes(name.to_ascii_uppercase().as_bytes()) {
                Ok(meth) => methods.push(meth),
                Err(_) => {
                    self.diag.error(
                        &at.key("methods").index(j),
                        format!("`{name}` is not an HTTP method"),
                        None,
                    );
                    ok = false;
                }
            }
        }
        let mut headers = Vec::new();
        for (name, value) in &m.headers {
            match HeaderName::from_bytes(name.as_bytes()) {
                Ok(n) => headers.push((n, value.clone())),
                Err(_) => {
                    self.diag.error(
                        &at.key("headers").key(name),
                        format!("`{name}` is not a header name"),
                        None,
                    );
                    ok = false;
                }
            }
        }
        let query = m
            .query
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        ok.then(|| RouteSpec {
            hosts: m.hosts.clone(),
            path,
            methods,
            headers,
            query,
        })
    }

    fn action(
        &mut self,
        at: &DocPath,
        r: &model::Route,
        upstreams: &HashMap<Arc<str>, Arc<Upstream>>,
        upstream_names: &[&str],
    ) -> Option<Action> {
        let given = [
            r.upstream.is_some(),
            r.split.is_some(),
            r.static_files.is_some(),
            r.respond.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if given != 1 {
            self.diag.error(
                at,
                format!(
                    "route `{}` needs exactly one of `upstream`, `split`, `static` or `respond` (it has {given})",
                    r.name
                ),
                Some("say what the route does with a request: forward it, split it, serve files or answer".to_string()),
            );
            return None;
        }
        if let Some(name) = &r.upstream {
            return match upstreams.get(name.as_str()) {
                Some(u) => Some(Action::Forward(u.clone())),
                None => {
                    // An upstream that failed to compile has its own error already.
                    if !upstream_names.contains(&name.as_str()) {
                        self.missing(&at.key("upstream"), "upstream", name, upstream_names);
                    }
                    None
                }
            };
        }
        if let Some(split) = &r.split {
            let mut shares = Vec::new();
            let mut total = 0u64;
            for (j, s) in split.iter().enumerate() {
                match upstreams.get(s.upstream.as_str()) {
                    Some(u) if s.weight > 0 => {
                        total += u64::from(s.weight);
                        shares.push((total, u.clone()));
                    }
                    Some(_) => {}
                    None => {
                        if !upstream_names.contains(&s.upstream.as_str()) {
                            self.missing(
                                &at.key("split").index(j).key("upstream"),
                                "upstream",
                                &s.upstream,
                                upstream_names,
                            );
                        }
                        return None;
                    }
                }
            }
            if total == 0 {
                self.diag.error(
                    &at.key("split"),
                    "a split needs at least one share with a weight above 0",
                    None,
                );
                return None;
            }
            return Some(Action::Split(Split {
                shares,
                total,
                counter: AtomicUsize::new(0),
            }));
        }
        if let Some(s) = &r.static_files {
            let root = self.resolve(&s.root);
            return match StaticDir::new(&root, s.index.as_deref()) {
                Ok(dir) => Some(Action::Static(dir)),
                Err(e) => {
                    self.diag.error(
                        &at.key("static").key("root"),
                        format!("static root {}: {e}", root.display()),
                        Some("point `root` at an existing directory (relative paths start at the config file's folder)".to_string()),
                    );
                    None
                }
            };
        }
        let respond = r.respond.as_ref()?;
        let rat = at.key("respond");
        let status = match StatusCode::from_u16(respond.status) {
            Ok(s) => s,
            Err(_) => {
                self.diag.error(
                    &rat.key("status"),
                    format!("{} is not an HTTP status code", respond.status),
                    None,
                );
                return None;
            }
        };
        let mut headers = HeaderMap::new();
        for (name, value) in &respond.headers {
            match (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                (Ok(n), Ok(v)) => {
                    headers.append(n, v);
                }
                _ => {
                    self.diag.error(
                        &rat.key("headers").key(name),
                        format!("`{name}: {value}` is not a valid header"),
                        None,
                    );
                    return None;
                }
            }
        }
        Some(Action::Respond(DirectResponse {
            status,
            body: bytes::Bytes::from(respond.body.clone()),
            headers,
        }))
    }

    fn listeners(
        &mut self,
        cfg: &Config,
        routes: &[(Arc<RouteEntry>, RouteSpec, Vec<NamedPolicy>)],
        policies: &HashMap<String, NamedPolicy>,
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
        // Route index in `routes` by file index (routes that failed to compile are absent).
        let by_name: HashMap<&str, usize> = routes
            .iter()
            .enumerate()
            .map(|(k, (r, _, _))| (&*r.name, k))
            .collect();

        let mut out = Vec::new();
        for (li, l) in cfg.listeners.iter().enumerate() {
            let at = DocPath::root().key("listeners").index(li);
            let address = self.socket_addr(&at.key("address"), &l.address);
            match l.protocol {
                Protocol::Http | Protocol::Https => {}
                other => {
                    self.diag.error(
                        &at.key("protocol"),
                        format!(
                            "`{}` listeners are not available in this version",
                            format!("{other:?}").to_lowercase()
                        ),
                        Some("use protocol: http or https".to_string()),
                    );
                    continue;
                }
            }
            if l.proxy_protocol {
                self.diag.error(
                    &at.key("proxy_protocol"),
                    "PROXY protocol on listeners is not available in this version",
                    Some("remove `proxy_protocol` or set it to false".to_string()),
                );
            }
            let tls = self.listener_tls(&at, l);
            let listener_policies = self.policy_list(&at.key("policies"), &l.policies, policies);
            let limits = Limits {
                max_header_size: l
                    .max_header_size
                    .map(|s| usize::try_from(s.0).unwrap_or(usize::MAX))
                    .unwrap_or(Limits::default().max_header_size),
                max_headers: l.max_headers.unwrap_or(Limits::default().max_headers),
                max_body: l.max_body.map(|s| s.0),
                header_read_timeout: l
                    .header_read_timeout
                    .map(|d| d.0)
                    .unwrap_or(Limits::default().header_read_timeout),
            };
            let mut specs = Vec::new();
            let mut bindings = Vec::new();
            for ri in &attached[li] {
                let Some(k) = by_name.get(cfg.routes[*ri].name.as_str()) else {
                    continue;
                };
                let (route, spec, route_policies) = &routes[*k];
                let mut all = listener_policies.clone();
                all.extend(route_policies.iter().cloned());
                specs.push(spec.clone());
                bindings.push(Binding {
                    route: route.clone(),
                    policies: policy::in_phase_order(all).into(),
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
            }));
        }
        out
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

    fn access_log(&mut self, cfg: &Config) -> Option<Arc<AccessLog>> {
        let log = cfg.observability.access_log.as_ref()?;
        let destination = match log.path.as_str() {
            "off" => return None,
            "stdout" => Destination::Stdout,
            p => Destination::File(self.resolve(Path::new(p))),
        };
        match self.runtime.access_log(destination) {
            Ok(l) => l,
            Err(e) => {
                self.diag.error(
                    &DocPath::root()
                        .key("observability")
                        .key("access_log")
                        .key("path"),
                    format!("cannot open the access log `{}`: {e}", log.path),
                    Some("use stdout, off, or a writable file path".to_string()),
                );
                None
            }
        }
    }
}

/// The top-level section that defines things of `kind`.
fn section_of(kind: &str) -> &'static str {
    match kind {
        "policy" => "policies",
        "upstream" => "upstreams",
        "listener" => "listeners",
        _ => "routes",
    }
}
