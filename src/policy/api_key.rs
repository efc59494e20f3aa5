//! `api_key`: the request carries a key, in a header (`x-api-key` by
//! default) or a query parameter, that belongs to an entry of `consumers`;
//! that consumer becomes the request's. Keys are stored only as SHA-256
//! digests, so the file never holds a usable key, and a lookup costs one
//! hash and one map probe, whatever the number of consumers.
//!
//! The key never reaches the upstream: the header, or the query parameter
//! (the others kept, in order), is removed whether the key was good or not.
//! A missing or unknown key is 401 problem+json with
//! `WWW-Authenticate: ApiKey` naming where the key goes.

use std::borrow::Cow;
use std::sync::Arc;

use http::uri::{PathAndQuery, Uri};
use http::{HeaderName, HeaderValue, Request, StatusCode};

use super::auth::Refuser;
use super::consumer::Consumers;
use super::{BuildEnv, Flow, Phase, Policy};
use crate::config::model::ApiKeyDef;
use crate::http::body::Body;
use crate::policy::context::RequestCtx;

/// A compiled `api_key` policy.
pub struct ApiKey {
    header: Option<HeaderName>,
    query: Option<Box<str>>,
    consumers: Arc<Consumers>,
    challenge: HeaderValue,
    refuser: Refuser,
}

impl ApiKey {
    /// Checks where the key is read from.
    pub fn build(def: &ApiKeyDef, env: &BuildEnv) -> Result<ApiKey, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let header = match (&def.header, &def.query) {
            (Some(h), _) => match HeaderName::from_bytes(h.as_bytes()) {
                Ok(h) => Some(h),
                Err(_) => {
                    errors.push(("header".into(), format!("`{h}` is not a valid header name")));
                    None
                }
            },
            (None, Some(_)) => None,
            (None, None) => Some(HeaderName::from_static("x-api-key")),
        };
        if let Some(q) = &def.query
            && (q.is_empty() || q.contains(['&', '=', '#', ' ']))
        {
            errors.push((
                "query".into(),
                format!("`{q}` is not a query parameter name"),
            ));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        // RFC 9110 §11.6.1: a challenge names a scheme and its parameters;
        // API keys have no registered scheme, so this one says where the
        // key goes.
        let mut challenge = format!("ApiKey realm=\"{}\"", env.name.replace('"', ""));
        if let Some(h) = &header {
            challenge.push_str(&format!(", header=\"{h}\""));
        }
        if let Some(q) = &def.query {
            challenge.push_str(&format!(", query=\"{q}\""));
        }
        Ok(ApiKey {
            header,
            query: def.query.as_deref().map(Box::from),
            consumers: env.consumers.clone(),
            challenge: HeaderValue::from_str(&challenge)
                .unwrap_or_else(|_| HeaderValue::from_static("ApiKey")),
            refuser: Refuser::new(env.name, env.metrics),
        })
    }

    /// Takes the key out of the request: the header's value, else the
    /// query parameter's (percent-decoded).
    fn take_key(&self, req: &mut Request<Body>) -> Option<Key> {
        let from_header = self
            .header
            .as_ref()
            .and_then(|h| req.headers_mut().remove(h));
        let from_query = self.query.as_deref().and_then(|q| take_query(req, q));
        from_header.map(Key::Header).or(from_query.map(Key::Query))
    }
}

/// A key as the request carried it.
enum Key {
    Header(HeaderValue),
    Query(Vec<u8>),
}

impl Key {
    fn bytes(&self) -> &[u8] {
        match self {
            Key::Header(v) => v.as_bytes(),
            Key::Query(v) => v,
        }
    }
}

impl Policy for ApiKey {
    fn phase(&self) -> Phase {
        Phase::Authenticate
    }

    fn on_request(&self, ctx: &mut RequestCtx, req: &mut Request<Body>) -> Flow {
        let (reason, detail) = match self.take_key(req) {
            Some(key) if !key.bytes().is_empty() => {
                if let Some(identity) = self.consumers.by_key(key.bytes()) {
                    ctx.identity = Some(identity.clone());
                    return Flow::Continue;
                }
                ("unknown_key", "the API key is not valid")
            }
            _ => ("missing", "this service needs an API key"),
        };
        self.refuser.refuse(
            ctx,
            reason,
            StatusCode::UNAUTHORIZED,
            detail,
            Some(&self.challenge),
        )
    }
}

/// Removes every `name=value` pair from the request's query, keeping the
/// other pairs in order, and returns the first value (percent-decoded).
fn take_query(req: &mut Request<Body>, name: &str) -> Option<Vec<u8>> {
    let query = req.uri().query()?;
    let is_it = |pair: &&str| pair.split('=').next() == Some(name);
    if !query.split('&').any(|p| is_it(&p)) {
        return None;
    }
    let value = query
        .split('&')
        .find(is_it)
        .map(|pair| percent_decode(pair.split_once('=').map_or("", |(_, v)| v)).into_owned());
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| !is_it(p) && !p.is_empty())
        .collect();
    let path = req.uri().path();
    let path_and_query = if kept.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = PathAndQuery::try_from(path_and_query).ok();
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
    value
}

/// `%XX` escapes and `+` (a space in a form-encoded query) decoded;
/// a malformed escape is kept as it is.
fn percent_decode(text: &str) -> Cow<'_, [u8]> {
    if !text.contains(['%', '+']) {
        return Cow::Borrowed(text.as_bytes());
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match (hex_digit(bytes[i + 1]), hex_digit(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push(h << 4 | l);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(out)
}

fn hex_digit(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(uri: &str, name: &str) -> (Option<String>, String) {
        let mut req = Request::builder().uri(uri).body(Body::default()).unwrap();
        let value = take_query(&mut req, name).map(|v| String::from_utf8(v).unwrap());
        (value, req.uri().to_string())
    }

    #[test]
    fn the_key_parameter_leaves_and_the_others_stay_in_order() {
        let cases: &[(&str, Option<&str>, &str)] = &[
            ("/a?api_key=k1&b=2", Some("k1"), "/a?b=2"),
            ("/a?b=2&api_key=k1&c=3", Some("k1"), "/a?b=2&c=3"),
            ("/a?api_key=k1", Some("k1"), "/a"),
            ("/a?api_key=k1&api_key=k2&z", Some("k1"), "/a?z"),
            ("/a?api_key", Some(""), "/a"),
            ("/a?api_key=a%2Bb+c", Some("a+b c"), "/a"),
            ("/a?api_key=%zz%4", Some("%zz%4"), "/a"),
            (
                "/a?api_keys=k&x_api_key=k",
                None,
                "/a?api_keys=k&x_api_key=k",
            ),
            ("/a", None, "/a"),
            (
                "http://h.example/a?api_key=k&b",
                Some("k"),
                "http://h.example/a?b",
            ),
        ];
        for (uri, value, after) in cases {
            assert_eq!(
                take(uri, "api_key"),
                (value.map(str::to_string), after.to_string()),
                "{uri}"
            );
        }
    }
}
