//! Values that name parts of the request — `{scheme}`, `{host}`, `{path}`,
//! `{query}`, `{method}`, `{request_id}`, `{consumer}`, `{header.NAME}`,
//! `{jwt.CLAIM}` — in texts of the configuration (`respond` bodies and
//! headers, `redirect` hosts and paths), filled in per request.
//!
//! A text is parsed once, when the configuration is compiled, into literal
//! pieces and variables. Only `{name}` where `name` is made of letters,
//! digits, `_`, `-` and `.` is a variable, and it must be a known one (a
//! typo is a configuration error); any other brace is literal, so a JSON
//! body such as `{"ok": true}` needs no escaping. `{{` and `}}` are literal
//! braces.

use std::fmt::Write as _;

use http::{HeaderName, Request};

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
}

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
                let var = variable(name)?;
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
}

fn is_variable_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

fn variable(name: &str) -> Result<Var, String> {
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
    fn unknown_variables_are_refused_with_the_known_ones() {
        for bad in ["{hots}", "{jwt.}", "{header.bad name}x{pathh}"] {
            let err = Template::parse(bad).unwrap_err();
            assert!(err.contains("{scheme}"), "{bad}: {err}");
        }
    }

    #[test]
    fn ports_split_off_hosts_and_ipv6_literals() {
        assert_eq!(split_port("a.example:8080"), ("a.example", Some("8080")));
        assert_eq!(split_port("a.example"), ("a.example", None));
        assert_eq!(split_port("[::1]:443"), ("[::1]", Some("443")));
        assert_eq!(split_port("[::1]"), ("[::1]", None));
    }
}
