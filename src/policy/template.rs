//! Values that name parts of the request — `{scheme}`, `{host}`, `{path}`,
//! `{query}`, `{method}`, `{request_id}`, `{consumer}`, `{header.NAME}`,
//! `{jwt.CLAIM}` — in texts of the configuration (`respond` bodies and
//! headers, `redirect` hosts and paths), filled in per request.
//!
//! Aggregate call paths may also use `{name}` (a `path_regex` group, else a
//! query parameter) and `{call.field}` (a field of an earlier call's JSON
//! answer): see [`Scope`] and [`Template::render_url`].
//!
//! A text is parsed once, when the configuration is compiled, into literal
//! pieces and variables. Only `{name}` where `name` is made of letters,
//! digits, `_`, `-` and `.` is a variable, and it must be a known one (a
//! typo is a configuration error); any other brace is literal, so a JSON
//! body such as `{"ok": true}` needs no escaping. `{{` and `}}` are literal
//! braces.

use std::borrow::Cow;
use std::fmt::Write as _;

use http::{HeaderName, Request};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;

use crate::http::headers::host_of;
use crate::policy::context::RequestCtx;

/// One variable.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Var {
    Scheme,
    Host,
    Path,
    Query,
    Method,
    RequestId,
    Consumer,
    Header(HeaderName),
    Claim(String),
    /// A request parameter by name (aggregate call paths only).
    Param(String),
    /// A field of an earlier call's answer: the call's index and a JSON
    /// pointer into its answer (aggregate call paths only).
    Call(usize, String),
}

/// The variables a text may use beyond the request's own.
#[derive(Clone, Copy, Debug, Default)]
pub struct Scope<'a> {
    /// Bare names (`{id}`) are request parameters.
    pub params: bool,
    /// Calls whose answers `{call.field}` may name, by index.
    pub calls: &'a [&'a str],
}

/// Where the values of parameters and earlier calls come from.
pub trait Values {
    /// The decoded value of the request parameter `name`.
    fn param(&self, name: &str) -> Option<Cow<'_, str>>;
    /// The answer of call `index`, when it has one.
    fn call(&self, index: usize) -> Option<&Value>;
}

/// Why a text could not be filled in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unfilled {
    /// The request has no such parameter.
    #[error("the request has no `{0}` (neither a path group nor a query parameter)")]
    Param(String),
    /// The earlier call's answer (call `.1`) lacks the field.
    #[error("`{0}` is not in the answer it names")]
    Field(String, usize),
}

/// Bytes kept as they are in a URL path or query value: RFC 3986's
/// unreserved characters. Everything else is escaped, so that a value can
/// add neither a path segment nor a query parameter.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A piece of a text.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Var(Var),
}

/// A configuration text with variables, parsed once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
}

impl Template {
    /// Parses `text`; the error names the unknown variable and lists the
    /// known ones.
    pub fn parse(text: &str) -> Result<Template, String> {
        Template::parse_in(text, Scope::default())
    }

    /// Parses `text`, which may also use the variables `scope` allows.
    pub fn parse_in(text: &str, scope: Scope<'_>) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(i) = rest.find(['{', '}']) {
            literal.push_str(&rest[..i]);
            let tail = &rest[i..];
            if tail.starts_with("{{") || tail.starts_with("}}") {
                literal.push_str(&tail[..1]);
                rest = &tail[2..];
                continue;
            }
            if let Some(name) = tail
                .strip_prefix('{')
                .and_then(|t| t.split_once('}'))
                .map(|(name, _)| name)
                .filter(|name| is_variable_name(name))
            {
                let var = variable(name, scope)?;
                if !literal.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut literal)));
                }
                pieces.push(Piece::Var(var));
                rest = &tail[name.len() + 2..];
                continue;
            }
            literal.push_str(&tail[..1]);
            rest = &tail[1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        Ok(Template { pieces })
    }

    /// Whether the text has no variables (it can be sent as it is).
    pub fn is_constant(&self) -> bool {
        self.pieces.iter().all(|p| matches!(p, Piece::Text(_)))
    }

    /// The text of a template without variables, with `{{` and `}}`
    /// already turned into single braces; `None` when it has variables.
    /// Every place that sends a constant text as it is takes it from here,
    /// so that the escape means the same everywhere.
    pub fn literal(&self) -> Option<String> {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Var(_) => return None,
            }
        }
        Some(out)
    }

    /// The text with this request's values filled in.
    pub fn render<B>(&self, ctx: &RequestCtx, req: &Request<B>) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Var(v) => push_value(&mut out, v, ctx, req),
            }
        }
        out
    }

    /// The calls (by index) whose answers the text uses.
    pub fn calls(&self) -> impl Iterator<Item = usize> + '_ {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Var(Var::Call(i, _)) => Some(*i),
            _ => None,
        })
    }

    /// The text as a URL path and query: every value but `{path}` and
    /// `{query}` (already in URL form) percent-encoded, so that no value can
    /// add a segment (`../admin`) or a parameter (`&admin=1`).
    pub fn render_url<B>(
        &self,
        ctx: &RequestCtx,
        req: &Request<B>,
        values: &dyn Values,
    ) -> Result<String, Unfilled> {
        let mut out = String::new();
        let mut value = String::new();
        for piece in &self.pieces {
            let var = match piece {
                Piece::Text(t) => {
                    out.push_str(t);
                    continue;
                }
                Piece::Var(v @ (Var::Path | Var::Query)) => {
                    push_value(&mut out, v, ctx, req);
                    continue;
                }
                Piece::Var(v) => v,
            };
            value.clear();
            match var {
                Var::Param(name) => {
                    let v = values
                        .param(name)
                        .ok_or_else(|| Unfilled::Param(name.clone()))?;
                    value.push_str(&v);
                }
                Var::Call(i, pointer) => match values.call(*i).and_then(|v| v.pointer(pointer)) {
                    None | Some(Value::Null) => {
                        return Err(Unfilled::Field(dotted(pointer), *i));
                    }
                    Some(Value::String(s)) => value.push_str(s),
                    Some(other) => {
                        let _ = write!(value, "{other}");
                    }
                },
                other => push_value(&mut value, other, ctx, req),
            }
            out.extend(utf8_percent_encode(&value, UNRESERVED));
        }
        Ok(out)
    }
}

/// A dotted path (`data.items.0`) as a JSON pointer (`/data/items/0`).
pub fn pointer(dotted: &str) -> String {
    let mut out = String::with_capacity(dotted.len() + 1);
    for segment in dotted.split('.') {
        out.push('/');
        out.push_str(&segment.replace('~', "~0").replace('/', "~1"));
    }
    out
}

/// A JSON pointer back as the dotted path it was written as.
fn dotted(pointer: &str) -> String {
    pointer
        .split('/')
        .skip(1)
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect::<Vec<_>>()
        .join(".")
}

fn is_variable_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

fn variable(name: &str, scope: Scope<'_>) -> Result<Var, String> {
    Ok(match name {
        "scheme" => Var::Scheme,
        "host" => Var::Host,
        "path" => Var::Path,
        "query" => Var::Query,
        "method" => Var::Method,
        "request_id" => Var::RequestId,
        "consumer" => Var::Consumer,
        _ => {
            if let Some(h) = name.strip_prefix("header.")
                && let Ok(h) = HeaderName::from_bytes(h.as_bytes())
            {
                return Ok(Var::Header(h));
            }
            if let Some(claim) = name.strip_prefix("jwt.").filter(|c| !c.is_empty()) {
                return Ok(Var::Claim(claim.to_string()));
            }
            if let Some((call, field)) = name.split_once('.')
                && let Some(i) = scope.calls.iter().position(|c| *c == call)
                && !field.is_empty()
            {
                return Ok(Var::Call(i, pointer(field)));
            }
            if scope.params && !name.contains('.') {
                return Ok(Var::Param(name.to_string()));
            }
            if !scope.calls.is_empty()
                && let Some((call, _)) = name.split_once('.')
            {
                return Err(format!(
                    "`{{{name}}}` names no call: `{call}` is not one of {}",
                    scope.calls.join(", ")
                ));
            }
            return Err(format!(
                "`{{{name}}}` is not a variable; use {{scheme}}, {{host}}, {{path}}, {{query}}, \
                 {{method}}, {{request_id}}, {{consumer}}, {{header.NAME}} or {{jwt.CLAIM}} \
                 (write {{{{ for a literal brace)"
            ));
        }
    })
}

fn push_value<B>(out: &mut String, var: &Var, ctx: &RequestCtx, req: &Request<B>) {
    match var {
        // Only aggregate call paths have these, and they are rendered by
        // `render_url`, which has their values.
        Var::Param(_) | Var::Call(..) => {}
        Var::Scheme => out.push_str(if ctx.tls { "https" } else { "http" }),
        Var::Host => out.push_str(host_of(req).map_or("", |h| split_port(h).0)),
        Var::Path => out.push_str(req.uri().path()),
        Var::Query => out.push_str(req.uri().query().unwrap_or("")),
        Var::Method => out.push_str(req.method().as_str()),
        Var::RequestId => out.push_str(ctx.request_id_str()),
        Var::Consumer => {
            if let Some(name) = ctx.identity.as_deref().and_then(|i| i.consumer_name()) {
                out.push_str(name);
            }
        }
        Var::Header(name) => {
            if let Some(v) = req.headers().get(name).and_then(|v| v.to_str().ok()) {
                out.push_str(v);
            }
        }
        Var::Claim(claim) => match ctx.identity.as_deref().and_then(|i| i.claims.get(claim)) {
            Some(serde_json::Value::String(s)) => out.push_str(s),
            Some(other) => {
                let _ = write!(out, "{other}");
            }
            None => {}
        },
    }
}

/// `host[:port]` (or `[v6]:port`) split into the host and the port text.
pub fn split_port(authority: &str) -> (&str, Option<&str>) {
    if let Some(rest) = authority.strip_prefix('[') {
        // An IPv6 literal keeps its brackets.
        return match rest.split_once(']') {
            Some((_, tail)) => {
                let host_len = authority.len() - tail.len();
                (&authority[..host_len], tail.strip_prefix(':'))
            }
            None => (authority, None),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => (host, Some(port)),
        _ => (authority, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use std::sync::Arc;

    fn ctx(tls: bool) -> RequestCtx {
        RequestCtx::new(
            HeaderValue::from_static("rid-1"),
            ([10, 0, 0, 1], 5000).into(),
            Arc::from("web"),
            tls,
            std::time::Instant::now(),
        )
    }

    fn req(uri: &str, host: &str) -> Request<()> {
        Request::builder()
            .uri(uri)
            .header("host", host)
            .header("x-tenant", "acme")
            .body(())
            .unwrap()
    }

    #[test]
    fn variables_are_filled_in_and_other_braces_kept() {
        let cases: &[(&str, &str)] = &[
            (
                "{scheme}://{host}{path}?{query}",
                "https://api.example.com/a/b?x=1",
            ),
            (
                "{\"ok\": true, \"id\": \"{request_id}\"}",
                "{\"ok\": true, \"id\": \"rid-1\"}",
            ),
            ("{{host}} is {host}", "{host} is api.example.com"),
            (
                "{method} {header.x-tenant}/{header.x-missing}.",
                "GET acme/.",
            ),
            ("{} {", "{} {"),
            ("}", "}"),
            ("{consumer}{jwt.sub}", ""),
        ];
        let r = req("/a/b?x=1", "api.example.com:8443");
        for (text, want) in cases {
            let t = Template::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(t.render(&ctx(true), &r), *want, "{text}");
        }
        assert!(
            Template::parse("plain {\"json\": 1}")
                .unwrap()
                .is_constant()
        );
        assert!(!Template::parse("{path}").unwrap().is_constant());
    }

    #[test]
    fn a_constant_texts_literal_has_the_escapes_turned_into_braces() {
        let literal = |text: &str| Template::parse(text).unwrap().literal();
        assert_eq!(
            literal("{{path}} {\"a\": 1}").as_deref(),
            Some("{path} {\"a\": 1}")
        );
        assert_eq!(literal("}}{{").as_deref(), Some("}{"));
        assert_eq!(literal("").as_deref(), Some(""));
        assert_eq!(literal("/x/{path}"), None);
    }

    #[test]
    fn unknown_variables_are_refused_with_the_known_ones() {
        for bad in ["{hots}", "{jwt.}", "{header.bad name}x{pathh}"] {
            let err = Template::parse(bad).unwrap_err();
            assert!(err.contains("{scheme}"), "{bad}: {err}");
        }
    }

    struct Given {
        params: Vec<(&'static str, &'static str)>,
        answers: Vec<Option<Value>>,
    }

    impl Values for Given {
        fn param(&self, name: &str) -> Option<Cow<'_, str>> {
            self.params
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| Cow::Borrowed(*v))
        }
        fn call(&self, index: usize) -> Option<&Value> {
            self.answers.get(index)?.as_ref()
        }
    }

    #[test]
    fn url_values_are_escaped_and_earlier_answers_are_read() {
        let calls = ["user", "cart"];
        let scope = Scope {
            params: true,
            calls: &calls,
        };
        let given = Given {
            params: vec![("id", "../admin"), ("q", "a&b=c d"), ("n", "é")],
            answers: vec![
                Some(serde_json::json!({"id": 42, "name": "Ada L", "tags": ["x/y"], "none": null})),
                None,
            ],
        };
        let r = req("/in/path?x=1%202", "api.example.com");
        let render = |text: &str| {
            Template::parse_in(text, scope)
                .unwrap_or_else(|e| panic!("{text}: {e}"))
                .render_url(&ctx(false), &r, &given)
        };
        let cases: &[(&str, &str)] = &[
            ("/users/{id}", "/users/..%2Fadmin"),
            ("/s?q={q}&n={n}", "/s?q=a%26b%3Dc%20d&n=%C3%A9"),
            (
                "/o?u={user.id}&n={user.name}&t={user.tags.0}",
                "/o?u=42&n=Ada%20L&t=x%2Fy",
            ),
            (
                "/p{path}?{query}&t={header.x-tenant}",
                "/p/in/path?x=1%202&t=acme",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(render(text).as_deref(), Ok(*want), "{text}");
        }
        assert_eq!(render("/{missing}"), Err(Unfilled::Param("missing".into())));
        assert_eq!(
            render("/{user.none}"),
            Err(Unfilled::Field("none".into(), 0))
        );
        assert_eq!(
            render("/{cart.total}"),
            Err(Unfilled::Field("total".into(), 1))
        );
        let t = Template::parse_in("/{cart.a}/{user.b}/{cart.c}", scope).unwrap();
        assert_eq!(t.calls().collect::<Vec<_>>(), [1, 0, 1]);
    }

    #[test]
    fn call_variables_must_name_a_call_and_params_need_their_scope() {
        let calls = ["user"];
        let scope = Scope {
            params: true,
            calls: &calls,
        };
        let err = Template::parse_in("/{usr.id}", scope).unwrap_err();
        assert!(err.contains("`usr` is not one of user"), "{err}");
        // Outside aggregate call paths a bare name is still a typo.
        assert!(Template::parse("/{id}").is_err());
        assert!(Template::parse("/{user.id}").is_err());
        assert_eq!(pointer("a.b~c/d.0"), "/a/b~0c~1d/0");
        assert_eq!(dotted("/a/b~0c~1d/0"), "a.b~c/d.0");
    }

    #[test]
    fn ports_split_off_hosts_and_ipv6_literals() {
        assert_eq!(split_port("a.example:8080"), ("a.example", Some("8080")));
        assert_eq!(split_port("a.example"), ("a.example", None));
        assert_eq!(split_port("[::1]:443"), ("[::1]", Some("443")));
        assert_eq!(split_port("[::1]"), ("[::1]", None));
    }
}
