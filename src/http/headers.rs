//! Header hygiene on the way to the upstream and back: the request's host,
//! the client address as rules see it, hop-by-hop removal, X-Forwarded-*,
//! X-Request-Id, and the `set`/`add`/`remove` operations that routes
//! configure (parsed once at config compile time).

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Uri};

/// Headers that describe one connection and must never be forwarded (RFC 9110 7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

/// The media type of the `Content-Type` header, without its parameters,
/// as sent (compare it case-insensitively).
pub fn media_type(headers: &HeaderMap) -> Option<&str> {
    let ctype = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(ctype.split(';').next().unwrap_or("").trim())
}

/// Whether a media type is JSON: `application/json` or a `+json` type
/// (any case).
pub fn is_json_media(media: &str) -> bool {
    media.eq_ignore_ascii_case("application/json") || has_suffix(media, "json")
}

/// Whether a media type is XML: `application/xml`, `text/xml` or a `+xml`
/// type (any case).
pub fn is_xml_media(media: &str) -> bool {
    media.eq_ignore_ascii_case("application/xml")
        || media.eq_ignore_ascii_case("text/xml")
        || has_suffix(media, "xml")
}

/// Whether `media` is a `+suffix` type (RFC 6839).
fn has_suffix(media: &str, suffix: &str) -> bool {
    media
        .rsplit_once('+')
        .is_some_and(|(_, s)| s.eq_ignore_ascii_case(suffix))
}

/// The host the client asked for: the URI authority (HTTP/2, absolute form) or the Host header.
pub fn host_of<B>(req: &Request<B>) -> Option<&str> {
    host_from(req.uri(), req.headers().get(header::HOST))
}

/// [`host_of`] from a request's target and its `Host` header.
pub fn host_from<'a>(uri: &'a Uri, host: Option<&'a HeaderValue>) -> Option<&'a str> {
    uri.authority()
        .map(|a| a.as_str())
        .or_else(|| host.and_then(|h| h.to_str().ok()))
}

/// `ip` as rules and counters must see it: an IPv4 client seen through an
/// IPv6 socket (`::ffff:10.1.2.3`) is its IPv4 address.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// `X-Forwarded-For`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `X-Request-Id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Whether `name` is hop-by-hop by itself (not only by being named in Connection).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name) || name.as_str().starts_with("proxy-")
}

/// Removes hop-by-hop headers, including every header the Connection header names.
/// When `keep_upgrade` is set (a WebSocket handshake), `Connection: upgrade`
/// and `Upgrade` survive so that the upstream sees the handshake.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none: one look at each name (no hashing) settles
    // it. A Connection header is itself hop-by-hop, so headers it names are
    // only possible when this finds something.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    // Names listed in Connection are hop-by-hop too; collect first, then remove.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        // The usual tokens name headers removed below anyway (or none):
        // skipping them keeps the common request free of allocations.
        .filter(|t| {
            !["keep-alive", "close", "upgrade", "te"]
                .iter()
                .any(|c| t.eq_ignore_ascii_case(c))
        })
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect();
    let upgrade = if keep_upgrade {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    for name in named {
        headers.remove(name);
    }
    let present: Vec<HeaderName> = headers
        .keys()
        .filter(|k| is_hop_by_hop(k))
        .cloned()
        .collect();
    for name in present {
        headers.remove(name);
    }
    if let Some(up) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, up);
    }
}

/// The client's address as an X-Forwarded-For entry; made once per
/// connection, since every request on it forwards the same value.
pub fn forwarded_for(client: IpAddr) -> HeaderValue {
    // An IP address in text is always a valid header value.
    HeaderValue::try_from(client.to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}

/// Appends the client (`client`, from [`forwarded_for`]) to X-Forwarded-For
/// and sets X-Forwarded-Proto and X-Forwarded-Host.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    client: &HeaderValue,
    tls: bool,
    host: Option<&HeaderValue>,
) {
    match headers.entry(&X_FORWARDED_FOR) {
        header::Entry::Vacant(e) => {
            e.insert(client.clone());
        }
        header::Entry::Occupied(mut e) => {
            // Several X-Forwarded-For lines are one list: join them, then add the client.
            let mut joined = Vec::with_capacity(64);
            for v in e.iter() {
                let v = v.as_bytes().trim_ascii();
                if !v.is_empty() {
                    joined.extend_from_slice(v);
                    joined.extend_from_slice(b", ");
                }
            }
            joined.extend_from_slice(client.as_bytes());
            // Made of valid header values and ", ": valid too.
            if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(joined)) {
                e.insert(v);
            }
        }
    }
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST.clone(), host.clone());
    }
}

/// A request id is kept from the client when it is short and plain ASCII
/// (letters, digits, `-`, `_`, `.`, `:`), so it cannot inject into logs.
pub fn valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'))
}

/// A fresh request id (UUID v4).
pub fn new_request_id() -> HeaderValue {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let s = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    // A hyphenated UUID is always a valid header value.
    HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static("invalid"))
}

/// Header changes compiled from a route's `request_headers` or `response_headers`.
#[derive(Clone, Debug, Default)]
pub struct HeaderOps {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl HeaderOps {
    /// Compiles the configured changes; errors name the offending header.
    pub fn build(
        def: &crate::config::model::HeaderOps,
    ) -> Result<HeaderOps, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let mut pairs = |field: &str, map: &std::collections::BTreeMap<String, String>| {
            let mut out = Vec::new();
            for (k, v) in map {
                match (
                    HeaderName::from_bytes(k.as_bytes()),
                    HeaderValue::from_str(v),
                ) {
                    (Ok(n), Ok(v)) => out.push((n, v)),
                    (Err(_), _) => errors.push((
                        format!("{field}.{k}"),
                        format!("`{k}` is not a valid header name"),
                    )),
                    (_, Err(_)) => errors.push((
                        format!("{field}.{k}"),
                        format!("the value of `{k}` is not a valid header value"),
                    )),
                }
            }
            out
        };
        let set = pairs("set", &def.set);
        let add = pairs("add", &def.add);
        let mut remove = Vec::new();
        for (i, k) in def.remove.iter().enumerate() {
            match HeaderName::from_bytes(k.as_bytes()) {
                Ok(n) => remove.push(n),
                Err(_) => errors.push((
                    format!("remove.{i}"),
                    format!("`{k}` is not a valid header name"),
                )),
            }
        }
        if errors.is_empty() {
            Ok(HeaderOps { set, add, remove })
        } else {
            Err(errors)
        }
    }

    /// Applies remove, then set, then add.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for n in &self.remove {
            headers.remove(n);
        }
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            headers.append(n.clone(), v.clone());
        }
    }

    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// A header map from `(name, value)` text pairs, for tests.
#[cfg(test)]
pub(crate) fn map_of(pairs: &[(&str, &str)]) -> HeaderMap {
    pairs
        .iter()
        .map(|(n, v)| {
            (
                HeaderName::from_bytes(n.as_bytes()).expect("a test's header name"),
                HeaderValue::from_str(v).expect("a test's header value"),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_connection_named_ones_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn upgrade_handshake_keeps_upgrade_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        remove_hop_by_hop(&mut h, true);
        assert_eq!(h[header::CONNECTION], "upgrade");
        assert_eq!(h[header::UPGRADE], "websocket");
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("1.2.3.4"));
        let host = HeaderValue::from_static("example.com");
        let client = forwarded_for("10.0.0.1".parse().unwrap());
        set_forwarded(&mut h, &client, true, Some(&host));
        assert_eq!(h[&X_FORWARDED_FOR], "1.2.3.4, 10.0.0.1");
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
        assert_eq!(h[&X_FORWARDED_HOST], "example.com");
    }

    #[test]
    fn forwarded_for_is_set_and_several_lines_are_joined() {
        let v6 = forwarded_for("2001:db8::7".parse().unwrap());
        let mut h = HeaderMap::new();
        set_forwarded(&mut h, &v6, false, None);
        assert_eq!(h[&X_FORWARDED_FOR], "2001:db8::7");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        assert!(h.get(&X_FORWARDED_HOST).is_none());

        let mut h = HeaderMap::new();
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1 "));
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static(""));
        h.append(
            &X_FORWARDED_FOR,
            HeaderValue::from_static("2.2.2.2, 3.3.3.3"),
        );
        set_forwarded(&mut h, &v6, false, None);
        assert_eq!(h.get_all(&X_FORWARDED_FOR).iter().count(), 1);
        assert_eq!(
            h[&X_FORWARDED_FOR],
            "1.1.1.1, 2.2.2.2, 3.3.3.3, 2001:db8::7"
        );
    }

    #[test]
    fn messages_without_hop_by_hop_headers_are_left_alone() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("a"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        let before = h.clone();
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h, before);
        // A Proxy-* header alone is enough to take the full path.
        h.insert("proxy-foo", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h, before);
    }

    #[test]
    fn request_id_validation() {
        assert!(valid_request_id(&HeaderValue::from_static("abc-123_x.y:z")));
        assert!(!valid_request_id(&HeaderValue::from_static("has space")));
        assert!(!valid_request_id(&HeaderValue::from_static("")));
        assert!(valid_request_id(&new_request_id()));
    }

    #[test]
    fn header_ops_remove_set_add() {
        let def = crate::config::model::HeaderOps {
            set: [("x-gateway".to_string(), "portcullis".to_string())].into(),
            add: [("x-multi".to_string(), "b".to_string())].into(),
            remove: vec!["cookie".to_string()],
        };
        let ops = HeaderOps::build(&def).unwrap();
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1"));
        h.insert("x-gateway", HeaderValue::from_static("other"));
        h.insert("x-multi", HeaderValue::from_static("a"));
        ops.apply(&mut h);
        assert!(h.get(header::COOKIE).is_none());
        assert_eq!(h["x-gateway"], "portcullis");
        assert_eq!(h.get_all("x-multi").iter().count(), 2);
    }
}
