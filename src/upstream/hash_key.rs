//! What a hashing balancer hashes: `client_ip`, `header:NAME`,
//! `cookie:NAME`, `query:NAME` or `path`, parsed once at config compile time.

use std::hash::{Hash, Hasher};
use std::net::IpAddr;

use http::{HeaderName, Request, header};

/// The part of a request that decides its target under consistent hashing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashKey {
    /// The client's IP address.
    ClientIp,
    /// A request header's value.
    Header(HeaderName),
    /// A cookie's value.
    Cookie(String),
    /// A query parameter's raw value.
    Query(String),
    /// The request path.
    Path,
}

impl HashKey {
    /// Parses `client_ip`, `header:N`, `cookie:N`, `query:N` or `path`.
    pub fn parse(text: &str) -> Result<HashKey, String> {
        let bad = || {
            format!(
                "`{text}` is not a hash key; use client_ip, header:NAME, cookie:NAME, query:NAME or path"
            )
        };
        match text.split_once(':') {
            None if text == "client_ip" => Ok(HashKey::ClientIp),
            None if text == "path" => Ok(HashKey::Path),
            Some(("header", name)) => HeaderName::from_bytes(name.as_bytes())
                .map(HashKey::Header)
                .map_err(|_| bad()),
            Some(("cookie", name)) if !name.is_empty() => Ok(HashKey::Cookie(name.to_string())),
            Some(("query", name)) if !name.is_empty() => Ok(HashKey::Query(name.to_string())),
            _ => Err(bad()),
        }
    }

    /// The hash of this key's value in `req`. A request without the value
    /// (no such header, cookie or parameter) hashes by client IP instead, so
    /// it still sticks to one target.
    pub fn hash<B>(&self, req: &Request<B>, client: IpAddr) -> u64 {
        let value: Option<&[u8]> = match self {
            HashKey::ClientIp => None,
            HashKey::Path => Some(req.uri().path().as_bytes()),
            HashKey::Header(name) => req.headers().get(name).map(|v| v.as_bytes()),
            HashKey::Cookie(name) => cookie(req, name),
            HashKey::Query(name) => req.uri().query().and_then(|q| {
                q.split('&').find_map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (k == name).then_some(v.as_bytes())
                })
            }),
        };
        match value {
            Some(v) => hash_bytes(v),
            None => hash_ip(client),
        }
    }
}

fn cookie<'a, B>(req: &'a Request<B>, name: &str) -> Option<&'a [u8]> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == name).then_some(v.as_bytes())
        })
}

/// A stable hash: SipHash-1-3 with fixed keys, pinned by this crate rather
/// than std's `DefaultHasher` (whose algorithm may change between Rust
/// releases), so every gateway instance, whatever it was built with, sends a
/// key to the same target.
fn stable_hasher() -> siphasher::sip::SipHasher13 {
    siphasher::sip::SipHasher13::new_with_keys(0x706f_7274_6375_6c6c, 0x6973_2d68_6173_6821)
}

/// Hash of raw bytes.
pub fn hash_bytes(v: &[u8]) -> u64 {
    let mut h = stable_hasher();
    v.hash(&mut h);
    h.finish()
}

/// Hash of an IP address (IPv4-mapped IPv6 hashes as its IPv4 address).
pub fn hash_ip(ip: IpAddr) -> u64 {
    let ip = crate::http::headers::canonical_ip(ip);
    let mut h = stable_hasher();
    ip.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));

    #[test]
    fn parses_every_documented_key() {
        assert_eq!(HashKey::parse("client_ip").unwrap(), HashKey::ClientIp);
        assert_eq!(HashKey::parse("path").unwrap(), HashKey::Path);
        assert_eq!(
            HashKey::parse("header:x-user-id").unwrap(),
            HashKey::Header(HeaderName::from_static("x-user-id"))
        );
        assert_eq!(
            HashKey::parse("cookie:sid").unwrap(),
            HashKey::Cookie("sid".into())
        );
        assert_eq!(
            HashKey::parse("query:user").unwrap(),
            HashKey::Query("user".into())
        );
        assert!(HashKey::parse("header:").is_err());
        assert!(HashKey::parse("body").is_err());
    }

    #[test]
    fn same_value_same_hash_different_value_different_hash() {
        let k = HashKey::parse("header:x-user").unwrap();
        let a = k.hash(&req("/", &[("x-user", "alice")]), IP);
        let a2 = k.hash(
            &req("/other", &[("x-user", "alice")]),
            "10.9.9.9".parse().unwrap(),
        );
        let b = k.hash(&req("/", &[("x-user", "bob")]), IP);
        assert_eq!(a, a2);
        assert_ne!(a, b);
    }

    #[test]
    fn cookie_and_query_values_are_found() {
        let c = HashKey::parse("cookie:sid").unwrap();
        let q = HashKey::parse("query:u").unwrap();
        assert_eq!(
            c.hash(&req("/", &[("cookie", "a=1; sid=xyz; b=2")]), IP),
            hash_bytes(b"xyz")
        );
        assert_eq!(q.hash(&req("/p?x=1&u=42", &[]), IP), hash_bytes(b"42"));
    }

    #[test]
    fn missing_value_falls_back_to_client_ip() {
        let k = HashKey::parse("cookie:sid").unwrap();
        assert_eq!(k.hash(&req("/", &[]), IP), hash_ip(IP));
    }

    #[test]
    fn hashes_are_pinned_values() {
        // Fixed values: if these change, every deployed fleet reshuffles its keys.
        assert_eq!(hash_bytes(b"alice"), PINNED_ALICE);
        assert_eq!(hash_ip("::ffff:10.0.0.1".parse().unwrap()), hash_ip(IP));
    }

    const PINNED_ALICE: u64 = 5_993_191_716_310_533_423;
}
