//! The method, header and query conditions of a route: checked only on the few
//! candidates whose host and path already match, and without allocating.

use http::{HeaderMap, HeaderName, Method};

/// What `find` knows about the request besides its host.
pub(super) struct Request<'a> {
    pub(super) method: &'a Method,
    pub(super) path: &'a str,
    pub(super) query: Option<&'a str>,
    pub(super) headers: &'a HeaderMap,
}

/// The conditions of one route beyond host and path.
#[derive(Debug)]
pub(super) struct Conditions {
    methods: Box<[Method]>,
    headers: Box<[(HeaderName, Box<str>)]>,
    query: Box<[(Box<str>, Box<str>)]>,
}

impl Conditions {
    /// Takes the conditions of a route spec.
    pub(super) fn new(
        methods: Vec<Method>,
        headers: Vec<(HeaderName, String)>,
        query: Vec<(String, String)>,
    ) -> Conditions {
        Conditions {
            methods: methods.into(),
            headers: headers.into_iter().map(|(n, v)| (n, v.into())).collect(),
            query: query
                .into_iter()
                .map(|(n, v)| (n.into(), v.into()))
                .collect(),
        }
    }

    /// The tie-breaker of the precedence rules: more conditions win.
    pub(super) fn count(&self) -> usize {
        usize::from(!self.methods.is_empty()) + self.headers.len() + self.query.len()
    }

    /// Whether the request meets every condition. A route without methods
    /// takes any method but TRACE, which a route must name: a backend
    /// echoing requests would hand a page's script the client's credentials
    /// (cross-site tracing).
    pub(super) fn matches(&self, req: &Request<'_>) -> bool {
        (if self.methods.is_empty() {
            req.method != Method::TRACE
        } else {
            self.methods.contains(req.method)
        }) && self.headers.iter().all(|(name, want)| {
            // A repeated header matches when any of its values does.
            req.headers
                .get_all(name)
                .iter()
                .any(|v| v.as_bytes() == want.as_bytes())
        }) && self
            .query
            .iter()
            .all(|(name, want)| req.query.is_some_and(|q| query_has(q, name, want)))
    }
}

/// Whether the raw query string holds `name=value` once both sides are decoded; a
/// repeated parameter matches when any of its occurrences does.
fn query_has(query: &str, name: &str, value: &str) -> bool {
    query.split('&').any(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        decoded_eq(k, name) && decoded_eq(v, value)
    })
}

/// Compares a form-encoded string with a decoded one byte by byte, decoding on the fly
/// so that no decoded copy is ever built. Malformed escapes stand for themselves.
fn decoded_eq(raw: &str, decoded: &str) -> bool {
    let raw = raw.as_bytes();
    let mut want = decoded.as_bytes().iter();
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        let escaped = match (b, raw.get(i + 1), raw.get(i + 2)) {
            (b'%', Some(&hi), Some(&lo)) => hex(hi).zip(hex(lo)).map(|(h, l)| h << 4 | l),
            _ => None,
        };
        let (byte, width) = match (b, escaped) {
            (_, Some(e)) => (e, 3),
            (b'+', None) => (b' ', 1),
            (_, None) => (b, 1),
        };
        if want.next() != Some(&byte) {
            return false;
        }
        i += width;
    }
    want.next().is_none()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded() {
        assert!(decoded_eq("a%20b", "a b"));
        assert!(decoded_eq("caf%C3%A9", "café"));
        assert!(decoded_eq("%2f%2F", "//"));
        assert!(!decoded_eq("a%20b", "a%20b"));
        assert!(!decoded_eq("ab", "abc"));
        assert!(!decoded_eq("abc", "ab"));
    }

    #[test]
    fn query_plus_is_space() {
        assert!(decoded_eq("a+b", "a b"));
        assert!(decoded_eq("a%2Bb", "a+b"));
        assert!(!decoded_eq("a+b", "a+b"));
    }

    #[test]
    fn malformed_percent_escapes_stand_for_themselves() {
        assert!(decoded_eq("100%", "100%"));
        assert!(decoded_eq("%zz", "%zz"));
        assert!(decoded_eq("%2", "%2"));
    }

    #[test]
    fn query_parameter_without_value_is_empty() {
        assert!(query_has("debug&x=1", "debug", ""));
        assert!(query_has("x=1&debug=", "debug", ""));
        assert!(!query_has("x=1", "debug", ""));
    }

    #[test]
    fn repeated_query_parameter_matches_any_occurrence() {
        assert!(query_has("v=1&v=2", "v", "2"));
        assert!(query_has("v=1&v=2", "v", "1"));
        assert!(!query_has("v=1&v=2", "v", "3"));
    }

    #[test]
    fn conditions_count_methods_once() {
        let c = Conditions::new(
            vec![Method::GET, Method::POST],
            vec![(HeaderName::from_static("x-a"), "1".into())],
            vec![("q".into(), "1".into()), ("r".into(), "2".into())],
        );
        assert_eq!(c.count(), 4);
        assert_eq!(Conditions::new(vec![], vec![], vec![]).count(), 0);
    }

    #[test]
    fn trace_matches_only_a_route_that_names_it() {
        let headers = HeaderMap::new();
        let req = |method| Request {
            method,
            path: "/",
            query: None,
            headers: &headers,
        };
        let any = Conditions::new(vec![], vec![], vec![]);
        assert!(any.matches(&req(&Method::GET)));
        assert!(!any.matches(&req(&Method::TRACE)));
        let tracing = Conditions::new(vec![Method::GET, Method::TRACE], vec![], vec![]);
        assert!(tracing.matches(&req(&Method::TRACE)));
    }

    #[test]
    fn repeated_header_matches_any_value() {
        let c = Conditions::new(
            vec![],
            vec![(HeaderName::from_static("x-client"), "mobile".into())],
            vec![],
        );
        let mut headers = HeaderMap::new();
        headers.append("x-client", "web".parse().unwrap());
        headers.append("x-client", "mobile".parse().unwrap());
        let req = Request {
            method: &Method::GET,
            path: "/",
            query: None,
            headers: &headers,
        };
        assert!(c.matches(&req));
    }
}
