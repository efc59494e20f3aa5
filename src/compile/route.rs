//! Compiling `routes`: match specs for the route table, actions, rewrites and
//! header changes.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use regex::Regex;

use crate::config::diagnostics::DocPath;
use crate::config::model::{self, Config};
use crate::http::headers::HeaderOps;
use crate::policy::NamedPolicy;
use crate::policy::template::{Scope, Template, pointer};
use crate::proxy::aggregate::{Aggregate, Call, DEFAULT_FORWARD_HEADERS};
use crate::proxy::rewrite::Rewrite;
use crate::proxy::snapshot::{Action, DirectResponse, Redirect, RouteEntry, Split};
use crate::proxy::static_files::StaticDir;
use crate::route::{PathMatch, RouteSpec};
use crate::upstream::Upstream;

use super::{Compiler, sub_path};

impl Compiler<'_> {
    pub(super) fn routes(
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
            let upgrades = self.upgrades(&at.key("upgrades"), r.upgrades.as_deref());
            if let (Some(spec), Some(action)) = (spec, action) {
                let name: Arc<str> = Arc::from(r.name.as_str());
                let metrics =
                    Arc::new(self.env.metrics.route(name.clone(), self.consumers.slots()));
                out.push((
                    Arc::new(RouteEntry {
                        name,
                        action,
                        rewrite,
                        request_headers,
                        response_headers,
                        metrics,
                        upgrades,
                        consumer_headers: self.consumers.headers.clone(),
                    }),
                    spec,
                    route_policies,
                ));
            }
        }
        out
    }

    /// The protocols a route lets clients upgrade to: WebSocket unless the
    /// route lists its own. `h2c` is refused: an h2c tunnel would carry
    /// requests past every route and policy of the listener.
    fn upgrades(&mut self, at: &DocPath, listed: Option<&[String]>) -> Box<[Box<str>]> {
        let Some(listed) = listed else {
            return Box::new([Box::from("websocket")]);
        };
        let mut out = Vec::with_capacity(listed.len());
        for (i, name) in listed.iter().enumerate() {
            let at = at.index(i);
            if name.eq_ignore_ascii_case("h2c") {
                self.diag.error(
                    &at,
                    "`h2c` upgrades are never forwarded",
                    Some(
                        "an h2c tunnel would carry requests past this route's policies; \
                         serve HTTP/2 to clients on the listener instead"
                            .to_string(),
                    ),
                );
            } else if name.is_empty() || !name.bytes().all(is_token_byte) {
                self.diag.error(
                    &at,
                    format!("`{name}` is not a protocol name"),
                    Some(
                        "a protocol name as the Upgrade header carries it, such as websocket"
                            .to_string(),
                    ),
                );
            } else {
                out.push(Box::from(name.to_ascii_lowercase().as_str()));
            }
        }
        out.into_boxed_slice()
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
            r.redirect.is_some(),
            r.aggregate.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if given != 1 {
            self.diag.error(
                at,
                format!(
                    "route `{}` needs exactly one of `upstream`, `split`, `static`, `respond`, `redirect` or `aggregate` (it has {given})",
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
            let mut unknown = false;
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
                        // Go on, so that every unknown name is reported.
                        unknown = true;
                    }
                }
            }
            if unknown {
                return None;
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
        if let Some(redirect) = &r.redirect {
            return self.redirect(&at.key("redirect"), redirect);
        }
        if let Some(aggregate) = &r.aggregate {
            return self.aggregate(at, r, aggregate, upstreams, upstream_names);
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
        let mut header_templates = Vec::new();
        for (name, value) in &respond.headers {
            let template = match Template::parse(value) {
                Ok(t) => t,
                Err(e) => {
                    self.diag.error(&rat.key("headers").key(name), e, None);
                    return None;
                }
            };
            let literal = template.literal();
            match (
                HeaderName::from_bytes(name.as_bytes()),
                literal.as_deref().map(HeaderValue::from_str),
            ) {
                (Ok(n), None) => header_templates.push((n, template)),
                (Ok(n), Some(Ok(v))) => {
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
        let (body, body_template) = match Template::parse(&respond.body) {
            Ok(t) => match t.literal() {
                Some(literal) => (bytes::Bytes::from(literal), None),
                None => (bytes::Bytes::new(), Some(t)),
            },
            Err(e) => {
                self.diag.error(&rat.key("body"), e, None);
                return None;
            }
        };
        Some(Action::Respond(DirectResponse {
            status,
            body,
            body_template,
            headers,
            header_templates,
        }))
    }

    /// Compiles a `redirect` action.
    fn redirect(&mut self, at: &DocPath, def: &model::RedirectDef) -> Option<Action> {
        let status = match def.status.unwrap_or(302) {
            s @ (301 | 302 | 303 | 307 | 308) => StatusCode::from_u16(s).ok()?,
            other => {
                self.diag.error(
                    &at.key("status"),
                    format!("{other} is not a redirect status"),
                    Some(
                        "use 301, 302, 303, 307 or 308 (307 and 308 keep the method and body)"
                            .into(),
                    ),
                );
                return None;
            }
        };
        let scheme = match def.scheme.as_deref() {
            None => None,
            Some("http") => Some("http"),
            Some("https") => Some("https"),
            Some(other) => {
                self.diag.error(
                    &at.key("scheme"),
                    format!("`{other}` is not a scheme to redirect to"),
                    Some("use http or https".into()),
                );
                return None;
            }
        };
        let mut template = |key: &str, text: Option<&String>| -> Result<Option<Template>, ()> {
            match text.map(|t| Template::parse(t)) {
                None => Ok(None),
                Some(Ok(t)) => Ok(Some(t)),
                Some(Err(e)) => {
                    self.diag.error(&at.key(key), e, None);
                    Err(())
                }
            }
        };
        let host = template("host", def.host.as_ref());
        let path = template("path", def.path.as_ref());
        let (Ok(host), Ok(path)) = (host, path) else {
            return None;
        };
        if scheme.is_none()
            && host.is_none()
            && def.port.is_none()
            && path.is_none()
            && !def.strip_query
        {
            self.diag.error(
                at,
                "this redirect sends clients back to the URL they asked for",
                Some("give at least one of scheme, host, port, path or strip_query".into()),
            );
            return None;
        }
        Some(Action::Redirect(Redirect {
            status,
            scheme,
            host,
            port: def.port,
            path,
            strip_query: def.strip_query,
        }))
    }
}

impl Compiler<'_> {
    /// Compiles an `aggregate` action: the calls' upstreams, methods and
    /// paths, and the order their variables impose (no cycles).
    fn aggregate(
        &mut self,
        at: &DocPath,
        r: &model::Route,
        def: &model::AggregateDef,
        upstreams: &HashMap<Arc<str>, Arc<Upstream>>,
        upstream_names: &[&str],
    ) -> Option<Action> {
        let at_route = at;
        let at = at.key("aggregate");
        let before = self.diag.error_count();
        if r.rewrite.is_some() {
            self.diag.error(
                &at_route.key("rewrite"),
                "an aggregate route has no single upstream path to rewrite",
                Some("give each call its own `path`".into()),
            );
        }
        if def.calls.is_empty() {
            self.diag.error(
                &at.key("calls"),
                "an aggregate needs at least one call",
                None,
            );
        }
        let names: Vec<&str> = def.calls.keys().map(String::as_str).collect();
        let mut calls = Vec::with_capacity(def.calls.len());
        for (index, (name, c)) in def.calls.iter().enumerate() {
            let cat = at.key("calls").key(name);
            if !valid_call_name(name) {
                self.diag.error(
                    &cat,
                    format!("`{name}` cannot name a call"),
                    Some(
                        "use letters, digits, `_` and `-`, not starting with `_`, and not \
                         `header` or `jwt` (they are variable prefixes)"
                            .into(),
                    ),
                );
            }
            let upstream = upstreams.get(c.upstream.as_str()).cloned();
            if upstream.is_none() && !upstream_names.contains(&c.upstream.as_str()) {
                self.missing(
                    &cat.key("upstream"),
                    "upstream",
                    &c.upstream,
                    upstream_names,
                );
            }
            let method = match c.method.as_deref() {
                None => Some(Method::GET),
                Some(m) => match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                    Ok(m) => Some(m),
                    Err(_) => {
                        self.diag.error(
                            &cat.key("method"),
                            format!("`{m}` is not an HTTP method"),
                            None,
                        );
                        None
                    }
                },
            };
            if !c.path.starts_with('/') {
                self.diag.error(
                    &cat.key("path"),
                    format!("`{}` is not a path", c.path),
                    Some("a call's path starts with `/` (the query may follow)".into()),
                );
            }
            let scope = Scope {
                params: true,
                calls: &names,
            };
            let path = match Template::parse_in(&c.path, scope) {
                Ok(t) => Some(t),
                Err(e) => {
                    self.diag.error(&cat.key("path"), e, None);
                    None
                }
            };
            let mut after: Vec<usize> = path.iter().flat_map(|t| t.calls()).collect();
            after.sort_unstable();
            after.dedup();
            if after.contains(&index) {
                self.diag.error(
                    &cat.key("path"),
                    format!("the `{name}` call cannot use its own answer"),
                    None,
                );
            }
            let select = match c.select.as_deref() {
                Some(s) if s.is_empty() || s.split('.').any(str::is_empty) => {
                    self.diag.error(
                        &cat.key("select"),
                        format!("`{s}` is not a dotted path"),
                        Some("name the part to keep, such as data.items".into()),
                    );
                    None
                }
                s => s.map(pointer),
            };
            if let (Some(upstream), Some(method), Some(path)) = (upstream, method, path) {
                calls.push(Call {
                    name: Box::from(name.as_str()),
                    upstream,
                    method,
                    path,
                    timeout: c.timeout.map_or(def.timeout.0, |t| t.0),
                    optional: c.optional,
                    select,
                    after: after.into_boxed_slice(),
                });
            }
        }
        if self.diag.error_count() > before || calls.len() != names.len() {
            return None;
        }
        if let Some((first, cycle)) = cycle(&calls) {
            self.diag.error(
                &at.key("calls").key(&calls[first].name),
                format!("the calls {cycle} wait for each other's answers"),
                Some("a call may use the answers of calls that do not use its own".into()),
            );
            return None;
        }
        let forward_headers = match &def.forward_headers {
            None => DEFAULT_FORWARD_HEADERS
                .iter()
                .map(|n| HeaderName::from_static(n))
                .collect(),
            Some(listed) => {
                let mut out = Vec::with_capacity(listed.len());
                for (i, name) in listed.iter().enumerate() {
                    match HeaderName::from_bytes(name.as_bytes()) {
                        Ok(h) => out.push(h),
                        Err(_) => self.diag.error(
                            &at.key("forward_headers").index(i),
                            format!("`{name}` is not a header name"),
                            None,
                        ),
                    }
                }
                out
            }
        };
        // The route table has checked the pattern already; its named groups
        // are the calls' parameters.
        let path_groups = r
            .matches
            .path_regex
            .as_deref()
            .and_then(|p| Regex::new(&format!("^(?:{p})$")).ok());
        Some(Action::Aggregate(Aggregate {
            calls: calls.into_boxed_slice(),
            merge: def.merge,
            forward_headers: forward_headers.into_boxed_slice(),
            max_body: def.max_body.0,
            path_groups,
        }))
    }
}

/// Whether `name` can be a call's name: a member name that can also head a
/// `{call.field}` variable.
fn valid_call_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('_')
        && name != "header"
        && name != "jwt"
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Calls that wait for each other in a circle, if any: the first one's
/// index and all their names (depth-first search over `after`).
fn cycle(calls: &[Call]) -> Option<(usize, String)> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(i: usize, calls: &[Call], marks: &mut [Mark], stack: &mut Vec<usize>) -> bool {
        match marks[i] {
            Mark::Done => return false,
            Mark::Open => {
                stack.push(i);
                return true;
            }
            Mark::New => {}
        }
        marks[i] = Mark::Open;
        stack.push(i);
        for &a in &calls[i].after {
            if visit(a, calls, marks, stack) {
                return true;
            }
        }
        stack.pop();
        marks[i] = Mark::Done;
        false
    }
    let mut marks = vec![Mark::New; calls.len()];
    for i in 0..calls.len() {
        let mut stack = Vec::new();
        if visit(i, calls, &mut marks, &mut stack) {
            let last = stack.last().copied()?;
            let start = stack.iter().position(|&s| s == last)?;
            let names: Vec<String> = stack[start..]
                .iter()
                .map(|&s| format!("`{}`", calls[s].name))
                .collect();
            return Some((stack[start], names.join(" → ")));
        }
    }
    None
}

/// Whether `b` may appear in an HTTP token (RFC 9110 §5.6.2).
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}
