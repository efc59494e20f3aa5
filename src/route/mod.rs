//! Route table: picks the route for a request from the configured `match` blocks.
//!
//! This runs on every request and a table can hold 10,000 routes, so the precedence
//! rules of DESIGN.md §4 (the Kubernetes Gateway API order) are compiled once, when a
//! configuration is loaded, into hash maps and regex sets whose candidate lists are
//! already sorted. [`RouteTable::find`] then costs a handful of hash lookups, never a
//! scan over the routes, and allocates nothing in the common case.
//!
//! The table only answers "which route index"; what a route does lives with the
//! configuration snapshot that owns the table, so this module stays independent of it.
//!
//! Callers normalise the request path with [`normalize_path`] before calling
//! [`RouteTable::find`] and forward that same path upstream, so `/public/../admin` is
//! routed, and seen by the backend, as `/admin`.

mod conditions;
mod host;
mod keyed;
mod path;
mod table;

pub use path::normalize_path;
pub use table::RouteTable;

/// How a route matches the request path.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PathMatch {
    /// Every path (the same as `Prefix("/")`).
    #[default]
    Any,
    /// The whole path equals this string (`path` in the configuration).
    Exact(String),
    /// Segment-aware prefix: `/api` matches `/api`, `/api/` and `/api/x`, never `/apix` (`path_prefix`).
    Prefix(String),
    /// A regular expression that must match the whole path (`path_regex`).
    Regex(String),
}

/// The `match` block of one route, as the table builder consumes it.
#[derive(Debug, Clone, Default)]
pub struct RouteSpec {
    /// Empty means any host; `api.example.com` matches exactly, `*.example.org` any subdomain.
    pub hosts: Vec<String>,
    /// How the request path must match.
    pub path: PathMatch,
    /// Empty means any method.
    pub methods: Vec<http::Method>,
    /// Every header must be present with exactly this value.
    pub headers: Vec<(http::HeaderName, String)>,
    /// Every parameter must be present with this (percent-decoded, `+` as space) value.
    pub query: Vec<(String, String)>,
}

/// Why a set of routes could not be compiled into a table.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// A `path_regex` does not compile.
    #[error("route {index}: invalid path_regex {pattern:?}: {source}")]
    BadRegex {
        /// Position of the route in the configuration.
        index: usize,
        /// The pattern as written.
        pattern: String,
        /// What the regex compiler reported.
        #[source]
        source: regex::Error,
    },
    /// A host is empty or uses `*` anywhere but as a whole leading label.
    #[error("route {index}: invalid host {host:?}: {reason}")]
    BadHost {
        /// Position of the route in the configuration.
        index: usize,
        /// The host as written.
        host: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An exact path or path prefix does not start with `/`, so no request could match it.
    #[error("route {index}: invalid path {path:?}: must start with '/'")]
    BadPath {
        /// Position of the route in the configuration.
        index: usize,
        /// The path as written.
        path: String,
    },
    /// The regexes sharing one host are together too large for one regex set.
    #[error("path_regex patterns for host {host:?} are too large to compile together: {source}")]
    RegexSetTooLarge {
        /// The host the routes share ("" for routes without a host).
        host: String,
        /// What the regex compiler reported.
        #[source]
        source: regex::Error,
    },
}
