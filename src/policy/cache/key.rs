//! Cache keys: the primary key of a request (scheme, host, path and query,
//! as the policy's `key` settings shape them, plus any headers or the
//! consumer it adds) and the secondary key a stored answer's `Vary` names
//! (RFC 9111 §4.1).
//!
//! A primary key reads as the URL it stands for (`https://shop.example/a?b=1`),
//! with additions after a space (` x-tenant=acme`, ` consumer=ada`), so the
//! admin API can show keys and purge by them.

use http::{HeaderMap, HeaderName, Method};

use crate::config::model::{CacheKeyDef, CacheQuery};
use crate::policy::context::RequestCtx;

/// How a policy builds primary keys, compiled from its `key` section.
#[derive(Clone, Debug, Default)]
pub struct KeySpec {
    /// What happens to the query string.
    query: CacheQuery,
    /// Query parameters dropped before keying (`utm_source`, ...).
    ignore_params: Box<[String]>,
    /// Request headers whose values join the key.
    headers: Box<[HeaderName]>,
    /// Whether the consumer's name joins the key.
    consumer: bool,
}

impl KeySpec {
    /// Compiles a `key` section; errors are (field, message) pairs.
    pub fn build(def: &CacheKeyDef) -> Result<KeySpec, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let mut headers = Vec::new();
        for (i, name) in def.headers.iter().enumerate() {
            match HeaderName::from_bytes(name.as_bytes()) {
                Ok(h) => headers.push(h),
                Err(_) => errors.push((
                    format!("key.headers.{i}"),
                    format!("`{name}` is not a header name"),
                )),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(KeySpec {
            query: def.query,
            ignore_params: def.ignore_params.clone().into_boxed_slice(),
            headers: headers.into_boxed_slice(),
            consumer: def.consumer,
        })
    }

    /// Whether keys have parts besides the URL (headers, the consumer).
    pub fn has_additions(&self) -> bool {
        !self.headers.is_empty() || self.consumer
    }

    /// The primary key of a request; `None` when the request has no host
    /// (HTTP/1.0 without Host: nothing safe to key on).
    pub fn key(
        &self,
        ctx: &RequestCtx,
        method: &Method,
        uri: &http::Uri,
        headers: &HeaderMap,
        host: Option<&str>,
    ) -> Option<String> {
        let scheme = if ctx.tls { "https" } else { "http" };
        let mut key = self.url(scheme, host?, uri.path(), uri.query());
        // A POST key is the same URL's with the method in front: its
        // answers never stand in for a GET's.
        if method == Method::POST {
            key.insert_str(0, "POST ");
        }
        for name in self.headers.iter() {
            key.push(' ');
            key.push_str(name.as_str());
            key.push('=');
            let mut first = true;
            for v in headers.get_all(name) {
                if !first {
                    key.push(',');
                }
                first = false;
                key.push_str(&String::from_utf8_lossy(v.as_bytes()));
            }
        }
        if self.consumer {
            key.push_str(" consumer=");
            if let Some(name) = ctx.identity.as_ref().and_then(|i| i.consumer_name()) {
                key.push_str(name);
            }
        }
        Some(key)
    }

    /// The URL part of a key: scheme, host (lowercase), path and the query
    /// as the `key` settings shape it.
    pub fn url(&self, scheme: &str, host: &str, path: &str, query: Option<&str>) -> String {
        let mut key = String::with_capacity(scheme.len() + host.len() + path.len() + 32);
        key.push_str(scheme);
        key.push_str("://");
        for c in host.chars() {
            key.push(c.to_ascii_lowercase());
        }
        key.push_str(path);
        if let Some(query) = query {
            self.push_query(&mut key, query);
        }
        key
    }

    fn push_query(&self, key: &mut String, query: &str) {
        match self.query {
            CacheQuery::Ignore => {}
            CacheQuery::Keep if self.ignore_params.is_empty() => {
                key.push('?');
                key.push_str(query);
            }
            CacheQuery::Keep | CacheQuery::Sort => {
                let mut params: Vec<&str> = query
                    .split('&')
                    .filter(|p| !p.is_empty())
                    .filter(|p| {
                        let name = p.split_once('=').map_or(*p, |(n, _)| n);
                        !self.ignore_params.iter().any(|i| i == name)
                    })
                    .collect();
                if self.query == CacheQuery::Sort {
                    params.sort_unstable();
                }
                if !params.is_empty() {
                    key.push('?');
                    key.push_str(&params.join("&"));
                }
            }
        }
    }
}

/// Where a primary key points: its host (lowercase) and its path (without
/// query), for purges by host and by path prefix.
pub fn host_and_path(key: &str) -> Option<(&str, &str)> {
    let url = key.strip_prefix("POST ").unwrap_or(key);
    let url = url.split(' ').next().unwrap_or(url);
    let rest = url.split_once("://")?.1;
    let slash = rest.find('/').unwrap_or(rest.len());
    let (host, path) = rest.split_at(slash);
    let path = path.split('?').next().unwrap_or(path);
    Some((host, path))
}

/// A request's value for one header a stored answer varies on: its field
/// lines joined, whitespace around commas taken out, and lowercased for the
/// fields whose values are case-insensitive (RFC 9111 §4.1 lets a cache
/// normalise so by the field's semantics). `None` when the request lacks it.
pub fn vary_value(headers: &HeaderMap, name: &HeaderName) -> Option<Box<str>> {
    let mut values = headers.get_all(name).iter().peekable();
    values.peek()?;
    let fold = matches!(
        name.as_str(),
        "accept" | "accept-encoding" | "accept-language" | "accept-charset" | "origin"
    );
    let mut out = String::new();
    for v in values {
        for item in String::from_utf8_lossy(v.as_bytes()).split(',') {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            if !out.is_empty() {
                out.push(',');
            }
            if fold {
                out.extend(item.chars().map(|c| c.to_ascii_lowercase()));
            } else {
                out.push_str(item);
            }
        }
    }
    Some(out.into_boxed_str())
}

/// The secondary key of an answer: each header its `Vary` names with the
/// request's normalised value.
pub fn secondary_key(
    vary: impl Iterator<Item = String>,
    req: &HeaderMap,
) -> Box<[(HeaderName, Option<Box<str>>)]> {
    let mut out: Vec<(HeaderName, Option<Box<str>>)> = Vec::new();
    for name in vary {
        if let Ok(name) = HeaderName::from_bytes(name.as_bytes())
            && !out.iter().any(|(n, _)| *n == name)
        {
            let value = vary_value(req, &name);
            out.push((name, value));
        }
    }
    out.into_boxed_slice()
}

/// Whether a request matches a stored answer's secondary key.
pub fn matches(secondary: &[(HeaderName, Option<Box<str>>)], req: &HeaderMap) -> bool {
    secondary
        .iter()
        .all(|(name, value)| vary_value(req, name) == *value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use std::sync::Arc;

    fn ctx(tls: bool) -> RequestCtx {
        RequestCtx::new(
            HeaderValue::from_static("id"),
            ([127, 0, 0, 1], 1).into(),
            Arc::from("l"),
            tls,
            std::time::Instant::now(),
        )
    }

    fn spec(query: CacheQuery, ignore: &[&str], headers: &[&str], consumer: bool) -> KeySpec {
        KeySpec::build(&CacheKeyDef {
            query,
            ignore_params: ignore.iter().map(|s| s.to_string()).collect(),
            headers: headers.iter().map(|s| s.to_string()).collect(),
            consumer,
        })
        .unwrap()
    }

    fn key(spec: &KeySpec, tls: bool, method: Method, uri: &str, h: &[(&str, &str)]) -> String {
        let uri: http::Uri = uri.parse().unwrap();
        let headers = crate::http::headers::map_of(h);
        spec.key(&ctx(tls), &method, &uri, &headers, Some("Shop.Example"))
            .unwrap()
    }

    #[test]
    fn primary_keys_table() {
        let keep = KeySpec::default();
        assert_eq!(
            key(&keep, true, Method::GET, "/a/b?y=2&x=1", &[]),
            "https://shop.example/a/b?y=2&x=1"
        );
        assert_eq!(
            key(&keep, false, Method::HEAD, "/a", &[]),
            "http://shop.example/a"
        );
        assert_eq!(
            key(&keep, false, Method::POST, "/a", &[]),
            "POST http://shop.example/a"
        );
        let sort = spec(CacheQuery::Sort, &["utm_source"], &[], false);
        assert_eq!(
            key(&sort, false, Method::GET, "/?y=2&utm_source=x&x=1&", &[]),
            "http://shop.example/?x=1&y=2"
        );
        let ignore = spec(CacheQuery::Ignore, &[], &[], false);
        assert_eq!(
            key(&ignore, false, Method::GET, "/p?x=1", &[]),
            "http://shop.example/p"
        );
        let drop_only = spec(CacheQuery::Keep, &["fbclid"], &[], false);
        assert_eq!(
            key(&drop_only, false, Method::GET, "/p?fbclid=9", &[]),
            "http://shop.example/p"
        );
        let tenant = spec(CacheQuery::Keep, &[], &["x-tenant"], true);
        assert_eq!(
            key(&tenant, false, Method::GET, "/p", &[("x-tenant", "acme")]),
            "http://shop.example/p x-tenant=acme consumer="
        );
    }

    #[test]
    fn keys_give_back_host_and_path() {
        assert_eq!(
            host_and_path("https://shop.example/a/b?x=1 x-tenant=a b"),
            Some(("shop.example", "/a/b"))
        );
        assert_eq!(host_and_path("POST http://h:8080/"), Some(("h:8080", "/")));
        assert_eq!(host_and_path("junk"), None);
    }

    #[test]
    fn vary_values_are_normalised() {
        let h = crate::http::headers::map_of;
        let ae = HeaderName::from_static("accept-encoding");
        let stored = secondary_key(
            ["accept-encoding".to_string(), "Accept-Encoding".to_string()].into_iter(),
            &h(&[("accept-encoding", "GZIP,  br")]),
        );
        assert_eq!(stored.len(), 1);
        assert!(matches(&stored, &h(&[("accept-encoding", "gzip, br")])));
        assert!(matches(
            &stored,
            &h(&[("accept-encoding", "gzip"), ("accept-encoding", "br")])
        ));
        assert!(!matches(&stored, &h(&[("accept-encoding", "br, gzip")])));
        assert!(!matches(&stored, &h(&[])));
        // Absent on both sides matches; case matters for other fields.
        let cookie = secondary_key(["cookie".to_string()].into_iter(), &h(&[]));
        assert!(matches(&cookie, &h(&[])));
        let cookie = secondary_key(["cookie".to_string()].into_iter(), &h(&[("cookie", "s=A")]));
        assert!(!matches(&cookie, &h(&[("cookie", "s=a")])));
        assert_eq!(vary_value(&h(&[]), &ae), None);
    }
}
