//! The compiled route table: hash maps per host group, candidate lists sorted at build
//! time, so a lookup walks only the candidates that can match, best first.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::fmt;

use http::{HeaderMap, Method};
use regex::{Regex, RegexSet};

use super::conditions::{Conditions, Request};
use super::host::{self, HostPattern};
use super::keyed::KeyedMap;
use super::path::{prefix_candidates, prefix_key};
use super::{PathMatch, RouteError, RouteSpec};

/// Routes compiled for matching; immutable once built, shared by all request tasks.
pub struct RouteTable {
    conditions: Box<[Conditions]>,
    exact_hosts: KeyedMap<HostGroup>,
    /// Keyed by the suffix after `*` (".example.org"; "" for a bare `*`).
    wildcard_hosts: KeyedMap<HostGroup>,
    any_host: HostGroup,
    order: Box<[usize]>,
}

/// The routes that share one host pattern, indexed by path.
/// Every candidate list is already in precedence order.
#[derive(Debug)]
struct HostGroup {
    exact: KeyedMap<Box<[usize]>>,
    /// Keyed by [`prefix_key`].
    prefix: KeyedMap<Box<[usize]>>,
    regex: Option<RegexIndex>,
}

/// The regex routes of a group; pattern `n` of the set belongs to `routes[n]`, and
/// patterns are in precedence order so the set's ascending matches are best first.
#[derive(Debug)]
struct RegexIndex {
    set: RegexSet,
    routes: Box<[usize]>,
}

/// A route's path condition in the form the index stores it.
enum CompiledPath {
    Exact(String),
    Prefix(String),
    /// The pattern anchored at both ends.
    Regex(String),
}

impl RouteTable {
    /// Compiles routes; a route's index is its position in `routes`, which is file order.
    pub fn build(routes: Vec<RouteSpec>) -> Result<RouteTable, RouteError> {
        let mut paths = Vec::with_capacity(routes.len());
        let mut hosts = Vec::with_capacity(routes.len());
        let mut conditions = Vec::with_capacity(routes.len());
        for (index, spec) in routes.into_iter().enumerate() {
            paths.push(compile_path(index, spec.path)?);
            hosts.push(parse_hosts(index, &spec.hosts)?);
            conditions.push(Conditions::new(spec.methods, spec.headers, spec.query));
        }
        let weights: Vec<usize> = conditions.iter().map(Conditions::count).collect();

        let mut exact_hosts: HashMap<String, GroupBuilder> = HashMap::new();
        let mut wildcard_hosts: HashMap<String, GroupBuilder> = HashMap::new();
        let mut any_host = GroupBuilder::default();
        for (index, (route_hosts, path)) in hosts.iter().zip(&paths).enumerate() {
            if route_hosts.is_empty() {
                any_host.add(index, path);
            }
            for pattern in route_hosts {
                let group = match pattern {
                    HostPattern::Exact(h) => exact_hosts.entry(h.clone()),
                    HostPattern::Wildcard(s) => wildcard_hosts.entry(s.clone()),
                };
                group.or_default().add(index, path);
            }
        }

        let finish = |groups: HashMap<String, GroupBuilder>, wildcard: bool| {
            let mut built = Vec::with_capacity(groups.len());
            for (key, group) in groups {
                let host = if wildcard {
                    format!("*{key}")
                } else {
                    key.clone()
                };
                built.push((key, group.finish(&weights, &paths, host)?));
            }
            Ok::<_, RouteError>(KeyedMap::new(built))
        };
        let exact_hosts = finish(exact_hosts, false)?;
        let wildcard_hosts = finish(wildcard_hosts, true)?;
        let any_host = any_host.finish(&weights, &paths, String::new())?;

        let mut order: Vec<usize> = (0..paths.len()).collect();
        order.sort_by_key(|&i| precedence(&hosts[i], &paths[i], weights[i], i));

        Ok(RouteTable {
            conditions: conditions.into(),
            exact_hosts,
            wildcard_hosts,
            any_host,
            order: order.into(),
        })
    }

    /// The index of the best route for a request, or `None` when no route matches.
    ///
    /// `path` is the path only (no query) and should already have been through
    /// [`normalize_path`](super::normalize_path): the table matches it as given.
    pub fn find(
        &self,
        host: Option<&str>,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Option<usize> {
        let req = Request {
            method,
            path,
            query,
            headers,
        };
        let has_host_routes = !self.exact_hosts.is_empty() || !self.wildcard_hosts.is_empty();
        if has_host_routes
            && let Some(host) = host.map(host::canonical).filter(|h| !h.is_empty())
            && let Some(found) = host::with_lowercase(host, |h| self.find_by_host(h, &req))
        {
            return Some(found);
        }
        self.any_host.find(&req, &self.conditions)
    }

    /// Every route index in precedence order, for the admin API listing.
    ///
    /// A route with several hosts is listed once, at the place of its most specific host.
    pub fn match_order(&self) -> Vec<usize> {
        self.order.to_vec()
    }

    /// The number of routes.
    pub fn len(&self) -> usize {
        self.conditions.len()
    }

    /// Whether the table has no routes at all.
    pub fn is_empty(&self) -> bool {
        self.conditions.is_empty()
    }

    /// Tries the exact host, then wildcards from the longest suffix; `host` is canonical
    /// and lower case.
    fn find_by_host(&self, host: &str, req: &Request<'_>) -> Option<usize> {
        if let Some(group) = self.exact_hosts.get(host)
            && let Some(found) = group.find(req, &self.conditions)
        {
            return Some(found);
        }
        if self.wildcard_hosts.is_empty() {
            return None;
        }
        host::wildcard_suffixes(host)
            .filter_map(|suffix| self.wildcard_hosts.get(suffix))
            .find_map(|group| group.find(req, &self.conditions))
    }
}

impl fmt::Debug for RouteTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The indexes are large and say little; the counts are what a log reader needs.
        f.debug_struct("RouteTable")
            .field("routes", &self.len())
            .field("exact_hosts", &self.exact_hosts.len())
            .field("wildcard_hosts", &self.wildcard_hosts.len())
            .finish_non_exhaustive()
    }
}

impl RegexIndex {
    /// The best regex route whose pattern and conditions match.
    fn find(&self, req: &Request<'_>, conditions: &[Conditions]) -> Option<usize> {
        // `is_match` does not allocate and `matches` does (a bitset of patterns), so the
        // latter runs only on a hit, and not at all for the common single-regex group.
        if !self.set.is_match(req.path) {
            return None;
        }
        if let [only] = *self.routes {
            return conditions[only].matches(req).then_some(only);
        }
        self.set
            .matches(req.path)
            .iter()
            .map(|pattern| self.routes[pattern])
            .find(|&i| conditions[i].matches(req))
    }
}

impl HostGroup {
    /// Exact paths, then regexes, then prefixes from the longest: the first candidate
    /// whose other conditions hold wins, the others are fallen through.
    fn find(&self, req: &Request<'_>, conditions: &[Conditions]) -> Option<usize> {
        let first = |list: &[usize]| list.iter().copied().find(|&i| conditions[i].matches(req));
        if let Some(list) = self.exact.get(req.path)
            && let Some(found) = first(list)
        {
            return Some(found);
        }
        if let Some(regex) = &self.regex
            && let Some(found) = regex.find(req, conditions)
        {
            return Some(found);
        }
        prefix_candidates(req.path)
            .filter_map(|key| self.prefix.get(key))
            .find_map(|list| first(list))
    }
}

/// A host group while the table is being built; lists are in file order until `finish`.
#[derive(Default)]
struct GroupBuilder {
    exact: HashMap<String, Vec<usize>>,
    prefix: HashMap<String, Vec<usize>>,
    regex: Vec<usize>,
}

impl GroupBuilder {
    fn add(&mut self, index: usize, path: &CompiledPath) {
        match path {
            CompiledPath::Exact(p) => self.exact.entry(p.clone()).or_default().push(index),
            CompiledPath::Prefix(k) => self.prefix.entry(k.clone()).or_default().push(index),
            CompiledPath::Regex(_) => self.regex.push(index),
        }
    }

    /// Sorts every candidate list into precedence order and compiles the regex set.
    fn finish(
        self,
        weights: &[usize],
        paths: &[CompiledPath],
        host: String,
    ) -> Result<HostGroup, RouteError> {
        let ranked = |mut list: Vec<usize>| -> Box<[usize]> {
            list.sort_by_key(|&i| (Reverse(weights[i]), i));
            list.into()
        };
        let regex = if self.regex.is_empty() {
            None
        } else {
            let routes = ranked(self.regex);
            let patterns = routes.iter().filter_map(|&i| match &paths[i] {
                CompiledPath::Regex(p) => Some(p.as_str()),
                _ => None,
            });
            let set = RegexSet::new(patterns)
                .map_err(|source| RouteError::RegexSetTooLarge { host, source })?;
            Some(RegexIndex { set, routes })
        };
        let index = |map: HashMap<String, Vec<usize>>| {
            KeyedMap::new(map.into_iter().map(|(key, list)| (key, ranked(list))))
        };
        Ok(HostGroup {
            exact: index(self.exact),
            prefix: index(self.prefix),
            regex,
        })
    }
}

fn compile_path(index: usize, path: PathMatch) -> Result<CompiledPath, RouteError> {
    let absolute = |p: String| {
        if p.starts_with('/') {
            Ok(p)
        } else {
            Err(RouteError::BadPath { index, path: p })
        }
    };
    match path {
        PathMatch::Any => Ok(CompiledPath::Prefix(String::new())),
        PathMatch::Exact(p) => Ok(CompiledPath::Exact(absolute(p)?)),
        PathMatch::Prefix(p) => Ok(CompiledPath::Prefix(prefix_key(&absolute(p)?).to_owned())),
        PathMatch::Regex(pattern) => {
            // Checked on its own so the error points into the pattern the user wrote,
            // not into the anchored copy.
            if let Err(source) = Regex::new(&pattern) {
                return Err(RouteError::BadRegex {
                    index,
                    pattern,
                    source,
                });
            }
            Ok(CompiledPath::Regex(format!(r"\A(?:{pattern})\z")))
        }
    }
}

/// Parses and de-duplicates a route's hosts, so a route is listed once per group.
fn parse_hosts(index: usize, hosts: &[String]) -> Result<Vec<HostPattern>, RouteError> {
    let mut parsed: Vec<HostPattern> = Vec::with_capacity(hosts.len());
    for raw in hosts {
        let pattern = HostPattern::parse(raw).map_err(|reason| RouteError::BadHost {
            index,
            host: raw.clone(),
            reason,
        })?;
        if !parsed.contains(&pattern) {
            parsed.push(pattern);
        }
    }
    Ok(parsed)
}

/// The sort key of the admin listing: the same order `find` applies, per route.
fn precedence(
    hosts: &[HostPattern],
    path: &CompiledPath,
    weight: usize,
    index: usize,
) -> impl Ord + use<> {
    let longest_wildcard = hosts
        .iter()
        .filter_map(|h| match h {
            HostPattern::Wildcard(s) => Some(s.len()),
            HostPattern::Exact(_) => None,
        })
        .max();
    let host_rank = if hosts.iter().any(|h| matches!(h, HostPattern::Exact(_))) {
        (0, Reverse(0))
    } else if let Some(len) = longest_wildcard {
        (1, Reverse(len))
    } else {
        (2, Reverse(0))
    };
    let path_rank = match path {
        CompiledPath::Exact(_) => (0, Reverse(0)),
        CompiledPath::Regex(_) => (1, Reverse(0)),
        CompiledPath::Prefix(k) => (2, Reverse(k.len())),
    };
    (host_rank, path_rank, Reverse(weight), index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderName, HeaderValue};

    fn route(hosts: &[&str], path: PathMatch) -> RouteSpec {
        RouteSpec {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            path,
            ..RouteSpec::default()
        }
    }

    fn prefix(p: &str) -> PathMatch {
        PathMatch::Prefix(p.to_owned())
    }

    fn exact(p: &str) -> PathMatch {
        PathMatch::Exact(p.to_owned())
    }

    fn regex(p: &str) -> PathMatch {
        PathMatch::Regex(p.to_owned())
    }

    fn table(routes: Vec<RouteSpec>) -> RouteTable {
        RouteTable::build(routes).unwrap()
    }

    /// `find` with GET, no query and no headers.
    fn get(t: &RouteTable, host: Option<&str>, path: &str) -> Option<usize> {
        t.find(host, &Method::GET, path, None, &HeaderMap::new())
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|&(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn prefix_is_segment_aware() {
        let t = table(vec![route(&[], prefix("/api"))]);
        assert_eq!(get(&t, None, "/api"), Some(0));
        assert_eq!(get(&t, None, "/api/"), Some(0));
        assert_eq!(get(&t, None, "/api/x/y"), Some(0));
        assert_eq!(get(&t, None, "/apix"), None);
        assert_eq!(get(&t, None, "/ap"), None);
        assert_eq!(get(&t, None, "/"), None);
    }

    #[test]
    fn prefix_with_trailing_slash_behaves_like_without() {
        let t = table(vec![route(&[], prefix("/api/"))]);
        assert_eq!(get(&t, None, "/api"), Some(0));
        assert_eq!(get(&t, None, "/api/"), Some(0));
        assert_eq!(get(&t, None, "/api/x"), Some(0));
        assert_eq!(get(&t, None, "/apix"), None);
    }

    #[test]
    fn root_prefix_matches_everything() {
        let t = table(vec![route(&[], prefix("/"))]);
        for p in ["/", "/a", "/a/b/", "*", ""] {
            assert_eq!(get(&t, None, p), Some(0), "{p}");
        }
    }

    #[test]
    fn any_path_behaves_like_root_prefix() {
        let t = table(vec![route(&[], PathMatch::Any), route(&[], prefix("/a"))]);
        assert_eq!(get(&t, None, "/"), Some(0));
        assert_eq!(get(&t, None, "*"), Some(0));
        assert_eq!(get(&t, None, "/a"), Some(1));
        assert_eq!(get(&t, None, "/b/c"), Some(0));
    }

    #[test]
    fn exact_path_matches_whole_path_only() {
        let t = table(vec![route(&[], exact("/ping"))]);
        assert_eq!(get(&t, None, "/ping"), Some(0));
        assert_eq!(get(&t, None, "/ping/"), None);
        assert_eq!(get(&t, None, "/ping/x"), None);
        assert_eq!(get(&t, None, "/pin"), None);
    }

    #[test]
    fn regex_must_match_whole_path() {
        let t = table(vec![route(&[], regex("/v[0-9]+"))]);
        assert_eq!(get(&t, None, "/v12"), Some(0));
        assert_eq!(get(&t, None, "/v12/x"), None);
        assert_eq!(get(&t, None, "/x/v12"), None);
        let t = table(vec![route(&[], regex("a|/b"))]);
        assert_eq!(get(&t, None, "/b"), Some(0));
        assert_eq!(get(&t, None, "/ba"), None);
    }

    #[test]
    fn bad_regex_names_route_index() {
        let err = RouteTable::build(vec![
            route(&[], regex("/ok")),
            route(&[], regex("/(unclosed")),
        ])
        .err()
        .unwrap();
        assert!(
            matches!(err, RouteError::BadRegex { index: 1, .. }),
            "{err}"
        );
        let message = err.to_string();
        assert!(
            message.starts_with("route 1: invalid path_regex \"/(unclosed\""),
            "{message}"
        );
    }

    #[test]
    fn bad_host_is_rejected() {
        let err = RouteTable::build(vec![route(&["a.*.org"], PathMatch::Any)])
            .err()
            .unwrap();
        assert!(matches!(err, RouteError::BadHost { index: 0, .. }), "{err}");
    }

    #[test]
    fn relative_path_is_rejected() {
        let err = RouteTable::build(vec![route(&[], PathMatch::Any), route(&[], prefix("api"))])
            .err()
            .unwrap();
        assert!(matches!(err, RouteError::BadPath { index: 1, .. }), "{err}");
        assert!(RouteTable::build(vec![route(&[], exact(""))]).is_err());
    }

    #[test]
    fn host_is_case_insensitive() {
        let t = table(vec![
            route(&["API.example.com"], PathMatch::Any),
            route(&["*.Example.ORG"], PathMatch::Any),
        ]);
        assert_eq!(get(&t, Some("api.example.com"), "/"), Some(0));
        assert_eq!(get(&t, Some("Api.EXAMPLE.com"), "/"), Some(0));
        assert_eq!(get(&t, Some("WWW.example.org"), "/"), Some(1));
    }

    #[test]
    fn port_is_ignored_in_host() {
        let t = table(vec![route(&["api.example.com"], PathMatch::Any)]);
        assert_eq!(get(&t, Some("api.example.com:8443"), "/"), Some(0));
        assert_eq!(get(&t, Some("API.example.com:80"), "/"), Some(0));
    }

    #[test]
    fn ipv6_host_with_port_matches() {
        let t = table(vec![
            route(&["[::1]"], PathMatch::Any),
            route(&["::2"], PathMatch::Any),
        ]);
        assert_eq!(get(&t, Some("[::1]:8080"), "/"), Some(0));
        assert_eq!(get(&t, Some("[::1]"), "/"), Some(0));
        assert_eq!(get(&t, Some("[::2]:80"), "/"), Some(1));
        assert_eq!(get(&t, Some("[::3]:80"), "/"), None);
    }

    #[test]
    fn trailing_dot_is_ignored_in_host() {
        let t = table(vec![
            route(&["api.example.com"], PathMatch::Any),
            route(&["*.example.org."], PathMatch::Any),
        ]);
        assert_eq!(get(&t, Some("api.example.com."), "/"), Some(0));
        assert_eq!(get(&t, Some("a.example.org"), "/"), Some(1));
        assert_eq!(get(&t, Some("a.example.org."), "/"), Some(1));
    }

    #[test]
    fn wildcard_matches_subdomains_not_apex() {
        let t = table(vec![route(&["*.example.org"], PathMatch::Any)]);
        assert_eq!(get(&t, Some("a.example.org"), "/"), Some(0));
        assert_eq!(get(&t, Some("a.b.example.org"), "/"), Some(0));
        assert_eq!(get(&t, Some("example.org"), "/"), None);
        assert_eq!(get(&t, Some(".example.org"), "/"), None);
        assert_eq!(get(&t, Some("aexample.org"), "/"), None);
    }

    #[test]
    fn bare_star_host_matches_any_named_host() {
        let t = table(vec![
            route(&["*"], PathMatch::Any),
            route(&[], PathMatch::Any),
        ]);
        assert_eq!(get(&t, Some("localhost"), "/"), Some(0));
        assert_eq!(get(&t, Some("a.b.c"), "/"), Some(0));
        assert_eq!(get(&t, None, "/"), Some(1));
    }

    #[test]
    fn exact_host_beats_wildcard() {
        let t = table(vec![
            route(&["*.example.org"], exact("/x")),
            route(&["api.example.org"], PathMatch::Any),
        ]);
        assert_eq!(get(&t, Some("api.example.org"), "/x"), Some(1));
        assert_eq!(get(&t, Some("www.example.org"), "/x"), Some(0));
    }

    #[test]
    fn longer_wildcard_beats_shorter() {
        let t = table(vec![
            route(&["*.org"], exact("/x")),
            route(&["*.example.org"], PathMatch::Any),
            route(&["*.b.example.org"], prefix("/y")),
        ]);
        assert_eq!(get(&t, Some("a.example.org"), "/x"), Some(1));
        assert_eq!(get(&t, Some("a.b.example.org"), "/y/z"), Some(2));
        assert_eq!(get(&t, Some("a.b.example.org"), "/x"), Some(1));
        assert_eq!(get(&t, Some("a.other.org"), "/x"), Some(0));
    }

    #[test]
    fn wildcard_beats_no_host() {
        let t = table(vec![
            route(&[], exact("/x")),
            route(&["*.example.org"], PathMatch::Any),
        ]);
        assert_eq!(get(&t, Some("a.example.org"), "/x"), Some(1));
        assert_eq!(get(&t, Some("other.net"), "/x"), Some(0));
    }

    #[test]
    fn missing_host_matches_only_hostless_routes() {
        let t = table(vec![route(&["*"], PathMatch::Any), route(&[], exact("/x"))]);
        assert_eq!(get(&t, None, "/x"), Some(1));
        assert_eq!(get(&t, None, "/y"), None);
        assert_eq!(get(&t, Some(""), "/y"), None);
    }

    #[test]
    fn route_with_several_hosts_matches_each() {
        let t = table(vec![route(&["a.com", "*.b.com", "A.com:80"], exact("/x"))]);
        assert_eq!(get(&t, Some("a.com"), "/x"), Some(0));
        assert_eq!(get(&t, Some("x.b.com"), "/x"), Some(0));
        assert_eq!(get(&t, Some("c.com"), "/x"), None);
    }

    #[test]
    fn exact_path_beats_regex() {
        let t = table(vec![route(&[], regex("/a.*")), route(&[], exact("/abc"))]);
        assert_eq!(get(&t, None, "/abc"), Some(1));
        assert_eq!(get(&t, None, "/abd"), Some(0));
    }

    #[test]
    fn regex_beats_prefix() {
        let t = table(vec![
            route(&[], prefix("/a/b/c")),
            route(&[], regex("/a/.*")),
        ]);
        assert_eq!(get(&t, None, "/a/b/c/d"), Some(1));
        assert_eq!(get(&t, None, "/a"), None);
    }

    #[test]
    fn longer_prefix_beats_shorter() {
        let t = table(vec![
            route(&[], prefix("/")),
            route(&[], prefix("/a")),
            route(&[], prefix("/a/b")),
        ]);
        assert_eq!(get(&t, None, "/a/b/c"), Some(2));
        assert_eq!(get(&t, None, "/a/bc"), Some(1));
        assert_eq!(get(&t, None, "/b"), Some(0));
    }

    #[test]
    fn more_conditions_win() {
        let mut with_header = route(&[], prefix("/a"));
        with_header.headers = vec![(HeaderName::from_static("x-v"), "2".into())];
        let mut with_method_and_query = route(&[], prefix("/a"));
        with_method_and_query.methods = vec![Method::GET, Method::HEAD];
        with_method_and_query.query = vec![("debug".into(), "1".into())];
        let t = table(vec![
            route(&[], prefix("/a")),
            with_header,
            with_method_and_query,
        ]);
        let h = headers(&[("x-v", "2")]);
        assert_eq!(
            t.find(None, &Method::GET, "/a", Some("debug=1"), &h),
            Some(2)
        );
        assert_eq!(
            t.find(None, &Method::POST, "/a", Some("debug=1"), &h),
            Some(1)
        );
        assert_eq!(
            t.find(None, &Method::POST, "/a", None, &HeaderMap::new()),
            Some(0)
        );
    }

    #[test]
    fn ties_go_to_file_order() {
        let t = table(vec![
            route(&[], regex("/a.*")),
            route(&[], regex("/.*")),
            route(&[], prefix("/a")),
            route(&[], prefix("/a/")),
        ]);
        assert_eq!(get(&t, None, "/a"), Some(0));
        assert_eq!(get(&t, None, "/b"), Some(1));
        let t = table(vec![route(&[], prefix("/a")), route(&[], prefix("/a/"))]);
        assert_eq!(get(&t, None, "/a/x"), Some(0));
    }

    #[test]
    fn method_mismatch_falls_through() {
        let mut post_only = route(&["api.example.com"], exact("/users"));
        post_only.methods = vec![Method::POST];
        let t = table(vec![
            post_only,
            route(&["api.example.com"], prefix("/users")),
        ]);
        let none = HeaderMap::new();
        assert_eq!(
            t.find(
                Some("api.example.com"),
                &Method::POST,
                "/users",
                None,
                &none
            ),
            Some(0)
        );
        assert_eq!(
            t.find(Some("api.example.com"), &Method::GET, "/users", None, &none),
            Some(1)
        );
    }

    #[test]
    fn header_mismatch_falls_through() {
        let mut mobile = route(&[], prefix("/app"));
        mobile.headers = vec![(HeaderName::from_static("x-client"), "mobile".into())];
        let t = table(vec![mobile, route(&[], prefix("/"))]);
        let m = headers(&[("x-client", "mobile")]);
        let w = headers(&[("x-client", "Mobile")]);
        assert_eq!(t.find(None, &Method::GET, "/app", None, &m), Some(0));
        assert_eq!(t.find(None, &Method::GET, "/app", None, &w), Some(1));
        assert_eq!(
            t.find(None, &Method::GET, "/app", None, &HeaderMap::new()),
            Some(1)
        );
    }

    #[test]
    fn query_mismatch_falls_through() {
        let mut debug = route(&[], regex("/app/.*"));
        debug.query = vec![("debug".into(), "on now".into())];
        let t = table(vec![debug, route(&[], prefix("/app"))]);
        let none = HeaderMap::new();
        let find = |q| t.find(None, &Method::GET, "/app/x", q, &none);
        assert_eq!(find(Some("a=1&debug=on+now")), Some(0));
        assert_eq!(find(Some("debug=on%20now")), Some(0));
        assert_eq!(find(Some("debug=on")), Some(1));
        assert_eq!(find(None), Some(1));
    }

    #[test]
    fn mismatch_falls_through_to_less_specific_host_group() {
        let mut exact_post = route(&["api.example.org"], PathMatch::Any);
        exact_post.methods = vec![Method::POST];
        let mut wildcard_put = route(&["*.example.org"], PathMatch::Any);
        wildcard_put.methods = vec![Method::PUT];
        let t = table(vec![exact_post, wildcard_put, route(&[], PathMatch::Any)]);
        let none = HeaderMap::new();
        let find = |m: &Method| t.find(Some("api.example.org"), m, "/", None, &none);
        assert_eq!(find(&Method::POST), Some(0));
        assert_eq!(find(&Method::PUT), Some(1));
        assert_eq!(find(&Method::GET), Some(2));
    }

    #[test]
    fn no_match_returns_none() {
        let t = table(vec![route(&["a.com"], prefix("/a"))]);
        assert_eq!(get(&t, Some("a.com"), "/b"), None);
        assert_eq!(get(&t, Some("b.com"), "/a"), None);
        assert_eq!(get(&table(vec![]), Some("a.com"), "/"), None);
    }

    #[test]
    fn match_order_lists_routes_in_precedence_order() {
        let mut with_method = route(&[], prefix("/a"));
        with_method.methods = vec![Method::GET];
        let t = table(vec![
            route(&[], PathMatch::Any),             // 0
            route(&["*.org"], PathMatch::Any),      // 1
            route(&["a.example.org"], prefix("/")), // 2
            route(&["*.example.org"], exact("/x")), // 3
            route(&[], prefix("/a")),               // 4
            with_method,                            // 5
            route(&[], regex("/r")),                // 6
            route(&["a.example.org"], exact("/x")), // 7
            route(&["*.org", "b.org"], regex("/")), // 8
        ]);
        assert_eq!(t.match_order(), [7, 8, 2, 3, 1, 6, 5, 4, 0]);
    }

    #[test]
    fn len_and_is_empty() {
        let t = table(vec![
            route(&[], PathMatch::Any),
            route(&["a.com"], exact("/")),
        ]);
        assert_eq!(t.len(), 2);
        assert!(!t.is_empty());
        assert!(table(vec![]).is_empty());
    }

    #[test]
    fn table_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<RouteTable>();
    }

    /// The specification spelled out as a scan over every route: the index must agree.
    struct Reference(Vec<ReferenceRoute>);

    struct ReferenceRoute {
        hosts: Vec<HostPattern>,
        path: PathMatch,
        regex: Option<Regex>,
        conditions: Conditions,
    }

    impl Reference {
        fn new(specs: &[RouteSpec]) -> Reference {
            let routes = specs.iter().map(|spec| ReferenceRoute {
                hosts: spec
                    .hosts
                    .iter()
                    .map(|h| HostPattern::parse(h).unwrap())
                    .collect(),
                path: spec.path.clone(),
                regex: match &spec.path {
                    PathMatch::Regex(r) => Some(Regex::new(&format!("^(?:{r})$")).unwrap()),
                    _ => None,
                },
                conditions: Conditions::new(
                    spec.methods.clone(),
                    spec.headers.clone(),
                    spec.query.clone(),
                ),
            });
            Reference(routes.collect())
        }

        fn find(
            &self,
            host: Option<&str>,
            method: &Method,
            path: &str,
            query: Option<&str>,
            headers: &HeaderMap,
        ) -> Option<usize> {
            let host = host
                .map(|h| host::canonical(h).to_ascii_lowercase())
                .filter(|h| !h.is_empty());
            let req = Request {
                method,
                path,
                query,
                headers,
            };
            let rank = |(i, route): (usize, &ReferenceRoute)| {
                let host_rank = if route.hosts.is_empty() {
                    (2, Reverse(0))
                } else {
                    let h = host.as_deref()?;
                    route
                        .hosts
                        .iter()
                        .filter_map(|pattern| match pattern {
                            HostPattern::Exact(e) => (e == h).then_some((0, Reverse(0))),
                            HostPattern::Wildcard(s) => (h.len() > s.len() && h.ends_with(s))
                                .then_some((1, Reverse(s.len()))),
                        })
                        .min()?
                };
                let path_rank = match (&route.path, &route.regex) {
                    (PathMatch::Exact(e), _) => (e == path).then_some((0, Reverse(0)))?,
                    (_, Some(r)) => r.is_match(path).then_some((1, Reverse(0)))?,
                    (PathMatch::Prefix(p), _) => {
                        let k = p.strip_suffix('/').unwrap_or(p);
                        let hit = k.is_empty()
                            || path == k
                            || path
                                .strip_prefix(k)
                                .is_some_and(|rest| rest.starts_with('/'));
                        hit.then_some((2, Reverse(k.len())))?
                    }
                    _ => (2, Reverse(0)),
                };
                let weight = Reverse(route.conditions.count());
                route
                    .conditions
                    .matches(&req)
                    .then_some((host_rank, path_rank, weight, i))
            };
            self.0
                .iter()
                .enumerate()
                .filter_map(rank)
                .min()
                .map(|(.., i)| i)
        }
    }

    /// A tiny deterministic generator, so the randomised tests need no extra crate.
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 33) as usize) % n
        }

        fn pick<T: Clone>(&mut self, items: &[T]) -> T {
            items[self.below(items.len())].clone()
        }
    }

    #[test]
    fn ten_thousand_routes_match_correctly() {
        // Route i: host svc{i % 100}.example.com, prefix /p{i / 100}; then a few extras.
        let mut routes: Vec<RouteSpec> = (0..10_000)
            .map(|i| {
                let host = format!("svc{}.example.com", i % 100);
                route(&[&host], prefix(&format!("/p{}", i / 100)))
            })
            .collect();
        routes.push(route(&["*.example.com"], exact("/health"))); // 10000
        routes.push(route(&[], PathMatch::Any)); // 10001
        routes.push(route(&["svc7.example.com"], regex("/p5/item/[0-9]+"))); // 10002
        let t = table(routes.clone());
        assert_eq!(t.len(), 10_003);

        let mut rng = Lcg(42);
        for _ in 0..500 {
            let (h, p) = (rng.below(100), rng.below(100));
            let host = format!("SVC{h}.example.com:443");
            let path = format!("/p{p}/items/{}", rng.below(1000));
            assert_eq!(
                get(&t, Some(&host), &path),
                Some(p * 100 + h),
                "{host} {path}"
            );
        }
        assert_eq!(get(&t, Some("svc3.example.com"), "/p42"), Some(4203));
        assert_eq!(get(&t, Some("svc3.example.com"), "/p42x"), Some(10_001));
        assert_eq!(get(&t, Some("svc3.example.com"), "/p100"), Some(10_001));
        assert_eq!(get(&t, Some("svc100.example.com"), "/p1"), Some(10_001));
        assert_eq!(get(&t, Some("svc100.example.com"), "/health"), Some(10_000));
        assert_eq!(get(&t, Some("svc1.example.com"), "/health"), Some(10_000));
        assert_eq!(
            get(&t, Some("svc7.example.com"), "/p5/item/12"),
            Some(10_002)
        );
        assert_eq!(get(&t, Some("svc7.example.com"), "/p5/item/x"), Some(507));
        assert_eq!(get(&t, None, "/p1"), Some(10_001));

        let order = t.match_order();
        assert_eq!(order.len(), 10_003);
        assert_eq!(order.last(), Some(&10_001));

        let reference = Reference::new(&routes);
        for _ in 0..200 {
            let host = format!("svc{}.example.com", rng.below(110));
            let path = format!("/p{}/item/{}", rng.below(110), rng.below(20));
            let none = HeaderMap::new();
            assert_eq!(
                get(&t, Some(&host), &path),
                reference.find(Some(&host), &Method::GET, &path, None, &none),
                "{host} {path}"
            );
        }
    }

    #[test]
    fn index_agrees_with_linear_reference() {
        let hosts = [
            "a.example.com",
            "b.example.com",
            "*.example.com",
            "*.x.example.com",
            "*",
        ];
        let exacts = ["/", "/api", "/api/v1", "/api/v1/users", "/static/app.js"];
        let prefixes = ["/", "/api", "/api/", "/api/v1", "/static", "/api/v1/users"];
        let regexes = ["/api/v[0-9]+/.*", r"/static/.*\.js", "/api/.*", "/[a-z]+"];
        let methods = [Method::GET, Method::POST];
        let req_hosts = [
            Some("a.example.com"),
            Some("A.Example.com:80"),
            Some("c.x.example.com"),
            Some("x.example.com"),
            Some("example.com"),
            Some("other.org"),
            None,
        ];
        let req_paths = [
            "/",
            "/api",
            "/api/",
            "/api/v1",
            "/api/v1/users",
            "/api/v1/users/7",
            "/apix",
            "/static/app.js",
            "/static/x.css",
            "/other",
        ];
        let queries = [None, Some("q=1"), Some("q=2&r=1"), Some("q=1&q=2")];
        let mut rng = Lcg(7);
        for _ in 0..60 {
            let routes: Vec<RouteSpec> = (0..40)
                .map(|_| {
                    let path = match rng.below(4) {
                        0 => PathMatch::Any,
                        1 => exact(rng.pick(&exacts)),
                        2 => prefix(rng.pick(&prefixes)),
                        _ => regex(rng.pick(&regexes)),
                    };
                    let route_hosts: Vec<&str> =
                        (0..rng.below(3)).map(|_| rng.pick(&hosts)).collect();
                    let mut spec = route(&route_hosts, path);
                    spec.methods = (0..rng.below(3)).map(|_| rng.pick(&methods)).collect();
                    if rng.below(3) == 0 {
                        spec.headers = vec![(HeaderName::from_static("x-a"), "1".into())];
                    }
                    if rng.below(3) == 0 {
                        spec.query = vec![("q".into(), rng.pick(&["1", "2"]).to_string())];
                    }
                    spec
                })
                .collect();
            let t = table(routes.clone());
            let reference = Reference::new(&routes);
            for _ in 0..200 {
                let host = rng.pick(&req_hosts);
                let method = &rng.pick(&methods);
                let path = rng.pick(&req_paths);
                let query = rng.pick(&queries);
                let h = if rng.below(2) == 0 {
                    headers(&[("x-a", "1")])
                } else {
                    HeaderMap::new()
                };
                assert_eq!(
                    t.find(host, method, path, query, &h),
                    reference.find(host, method, path, query, &h),
                    "{host:?} {method} {path} {query:?} {h:?}\n{routes:#?}"
                );
            }
        }
    }
}
