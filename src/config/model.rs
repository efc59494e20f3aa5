//! The configuration file as typed data, exactly as users write it.
//!
//! Nothing here is checked beyond its shape: cross references, addresses,
//! regexes and files are checked by [`super::validate`] and turned into ready
//! structures by [`crate::compile`]. Every struct denies unknown fields so that
//! a typo is an error with a did-you-mean, not a silently ignored option.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::units::{Dur, Size};

/// The whole configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The admin listener; none when absent.
    #[serde(default)]
    pub admin: Option<Admin>,
    /// How long SIGTERM/SIGINT wait for in-flight requests.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: Dur,
    /// Sockets that accept traffic.
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// HTTP routes, matched by precedence (see docs/configuration.md).
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Named groups of targets that routes forward to.
    #[serde(default)]
    pub upstreams: Vec<Upstream>,
    /// Named policies that routes and listeners attach.
    #[serde(default)]
    pub policies: BTreeMap<String, PolicyDef>,
    /// Logs, metrics and traces.
    #[serde(default)]
    pub observability: Observability,
    /// Shared stores (Redis, for rate limits shared by every instance).
    #[serde(default)]
    pub stores: Stores,
    /// Who calls the APIs: names, groups and credentials that every
    /// authentication policy resolves requests to.
    #[serde(default)]
    pub consumers: Vec<ConsumerDef>,
    /// The request headers that tell the upstream who the consumer is.
    #[serde(default)]
    pub consumer_headers: ConsumerHeadersDef,
}

/// One entry of `consumers`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerDef {
    /// Unique; also the basic-auth user name and the JWT subject it matches.
    pub name: String,
    /// Groups, for `allow` policies and the upstream's `X-Consumer-Groups`.
    #[serde(default)]
    pub groups: Vec<String>,
    /// SHA-256 digests (hex) of this consumer's API keys.
    #[serde(default)]
    pub api_keys: Vec<String>,
    /// An argon2id or bcrypt hash of the basic-auth password.
    #[serde(default)]
    pub password_hash: Option<String>,
    /// Overrides of rate-limit policies' settings for this consumer, by
    /// policy name.
    #[serde(default)]
    pub rate_limits: BTreeMap<String, RateLimitOverride>,
}

/// A consumer's own `limit`/`per`/`burst` for one rate-limit policy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitOverride {
    /// Requests allowed per `per`.
    pub limit: u32,
    /// The period `limit` is counted over.
    pub per: Dur,
    /// Requests allowed at once (default: `limit`).
    #[serde(default)]
    pub burst: Option<u32>,
}

/// `consumer_headers`: where the upstream learns who the consumer is.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerHeadersDef {
    /// The consumer's name.
    #[serde(default = "default_consumer_header")]
    pub consumer: String,
    /// The consumer's groups, comma-separated.
    #[serde(default = "default_groups_header")]
    pub groups: String,
}

impl Default for ConsumerHeadersDef {
    fn default() -> Self {
        ConsumerHeadersDef {
            consumer: default_consumer_header(),
            groups: default_groups_header(),
        }
    }
}

fn default_consumer_header() -> String {
    "x-consumer".to_string()
}

fn default_groups_header() -> String {
    "x-consumer-groups".to_string()
}

fn default_shutdown_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}

/// The admin listener (health, metrics, state, reload).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Socket address, loopback by convention (`127.0.0.1:9901`).
    pub address: String,
}

/// What a listener speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 and HTTP/2 with prior knowledge (h2c).
    #[default]
    Http,
    /// HTTP/1.1 and HTTP/2 over TLS (ALPN).
    Https,
    /// Layer 4 TCP balancing.
    Tcp,
    /// TLS passthrough routed by SNI.
    Tls,
    /// Layer 4 UDP balancing.
    Udp,
}

/// A socket that accepts traffic.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Unique name, used by routes, metrics and logs.
    pub name: String,
    /// `IP:port` to bind (`0.0.0.0:8080`, `[::]:8443`, `127.0.0.1:0` for an ephemeral port).
    pub address: String,
    /// `http` (default), `https`, `tcp`, `tls` or `udp`.
    #[serde(default)]
    pub protocol: Protocol,
    /// Require a PROXY protocol header from an L4 tier in front.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Answer every request with a 308 to the same URL over https
    /// (http listeners only).
    #[serde(default)]
    pub https_redirect: bool,
    /// Policies that run on every route of this listener.
    #[serde(default)]
    pub policies: Vec<String>,
    /// TLS settings for `https` listeners.
    #[serde(default)]
    pub tls: Option<ListenerTls>,
    /// Upstream for `tcp` and `udp` listeners.
    #[serde(default)]
    pub upstream: Option<String>,
    /// SNI name to upstream, for `tls` listeners.
    #[serde(default)]
    pub sni: BTreeMap<String, String>,
    /// Upstream for `tls` listeners when no SNI entry matches.
    #[serde(default)]
    pub default_upstream: Option<String>,
    /// Largest total size of request headers; past it 431 (default 64KiB).
    #[serde(default)]
    pub max_header_size: Option<Size>,
    /// Most request headers; past it 431 (default 100).
    #[serde(default)]
    pub max_headers: Option<usize>,
    /// Largest request body; past it 413 (default unlimited).
    #[serde(default)]
    pub max_body: Option<Size>,
    /// Time a client has to send its request headers (default 10s).
    #[serde(default)]
    pub header_read_timeout: Option<Dur>,
    /// Longest request target (path and query); past it 414 (default 8KiB).
    #[serde(default)]
    pub max_uri_size: Option<Size>,
    /// How long an HTTP/1.1 connection may wait for its next request
    /// (default 75s, as nginx).
    #[serde(default)]
    pub keepalive_timeout: Option<Dur>,
    /// How long an HTTP/2 connection may stay without an open stream before
    /// GOAWAY and close (default 75s).
    #[serde(default)]
    pub http2_idle_timeout: Option<Dur>,
    /// Most connections open at once; past it new ones wait in the kernel's
    /// backlog (default unlimited, bounded by the open-files limit).
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// Most connections open at once from one client address; past it new
    /// ones are closed at once (default unlimited).
    #[serde(default)]
    pub max_connections_per_client: Option<u32>,
    /// Most new connections per second from one client address; past it
    /// they are closed at once (default unlimited).
    #[serde(default)]
    pub max_connection_rate_per_client: Option<u32>,
    /// Longest wait for the next bytes of a request body; past it 408
    /// (default 60s, as nginx's `client_body_timeout`).
    #[serde(default)]
    pub body_read_timeout: Option<Dur>,
    /// Bytes per second of waiting a client must keep up sending a request
    /// body, after `min_body_rate_grace`; past it 408 (default 240B, as
    /// Kestrel; 0 turns it off).
    #[serde(default)]
    pub min_body_rate: Option<Size>,
    /// Waiting time before `min_body_rate` applies (default 5s).
    #[serde(default)]
    pub min_body_rate_grace: Option<Dur>,
    /// How long an answer may wait for a client that does not take it
    /// (socket full, or HTTP/2 window closed) before the connection is
    /// cut (default 60s, as nginx's `send_timeout`).
    #[serde(default)]
    pub send_timeout: Option<Dur>,
    /// HTTP/2 frames per second a client address may send, by type.
    #[serde(default)]
    pub http2_flood: Http2Flood,
}

/// `http2_flood` on a listener: frames per second one client address may
/// send over all its connections; past one, GOAWAY ENHANCE_YOUR_CALM and
/// the address refused for `penalty`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http2Flood {
    /// RST_STREAM frames (default 200).
    #[serde(default)]
    pub rst_stream: Option<u32>,
    /// PING frames (default 50).
    #[serde(default)]
    pub ping: Option<u32>,
    /// SETTINGS frames (default 50).
    #[serde(default)]
    pub settings: Option<u32>,
    /// WINDOW_UPDATE frames (default 2000).
    #[serde(default)]
    pub window_update: Option<u32>,
    /// Empty DATA, HEADERS and CONTINUATION frames (default 200).
    #[serde(default)]
    pub empty_frames: Option<u32>,
    /// How long an address past a limit is refused (default 10s).
    #[serde(default)]
    pub penalty: Option<Dur>,
}

/// TLS termination settings of an `https` listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// Certificate and key pairs; chosen by SNI from each certificate's names, the first is the default.
    pub certificates: Vec<CertificatePair>,
    /// `"1.2"` (default) or `"1.3"`.
    #[serde(default)]
    pub min_version: Option<String>,
    /// PEM bundle of CAs that sign client certificates.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// `none` (default), `optional` or `required`.
    #[serde(default)]
    pub client_auth: Option<String>,
    /// Header that carries the verified client certificate's subject to upstreams.
    #[serde(default)]
    pub client_subject_header: Option<String>,
}

/// A PEM certificate chain and its private key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificatePair {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// An HTTP route: a match and one action (upstream, split, static, respond).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Unique name, used by metrics, logs and the admin API.
    pub name: String,
    /// Listeners this route attaches to (default: every http/https listener).
    #[serde(default)]
    pub listeners: Option<Vec<String>>,
    /// Conditions a request must meet.
    #[serde(default, rename = "match")]
    pub matches: RouteMatch,
    /// Path rewrite before forwarding or serving files.
    #[serde(default)]
    pub rewrite: Option<Rewrite>,
    /// Header changes on the way to the upstream.
    #[serde(default)]
    pub request_headers: Option<HeaderOps>,
    /// Header changes on the way back to the client.
    #[serde(default)]
    pub response_headers: Option<HeaderOps>,
    /// Policies for this route, run in phase order.
    #[serde(default)]
    pub policies: Vec<String>,
    /// Policies of the route's listeners that do not run on this route.
    #[serde(default)]
    pub skip_policies: Vec<String>,
    /// Forward to this upstream.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Forward to several upstreams by weight.
    #[serde(default)]
    pub split: Option<Vec<SplitTarget>>,
    /// Serve files from a directory.
    #[serde(default, rename = "static")]
    pub static_files: Option<StaticFiles>,
    /// Answer directly.
    #[serde(default)]
    pub respond: Option<Respond>,
    /// Answer with a redirect to a URL made from the request's.
    #[serde(default)]
    pub redirect: Option<RedirectDef>,
    /// Call several upstreams and answer one JSON object made of their answers.
    #[serde(default)]
    pub aggregate: Option<AggregateDef>,
    /// Protocols a client may upgrade to through this route (default
    /// `[websocket]`); `h2c` is never allowed.
    #[serde(default)]
    pub upgrades: Option<Vec<String>>,
}

/// Conditions of a route; all given ones must hold.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// Exact (`api.example.com`) or wildcard (`*.example.org`) hosts.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Exact path.
    #[serde(default)]
    pub path: Option<String>,
    /// Segment-aware path prefix.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Regular expression that must match the whole path.
    #[serde(default)]
    pub path_regex: Option<String>,
    /// Allowed methods.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Headers that must be present with exactly these values.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Query parameters that must be present with exactly these values.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
}

/// One path rewrite (exactly one of the fields).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    /// Remove this prefix (segment-aware); an emptied path becomes `/`.
    #[serde(default)]
    pub strip_prefix: Option<String>,
    /// Replace one prefix with another.
    #[serde(default)]
    pub replace_prefix: Option<ReplacePrefix>,
    /// Regex substitution on the path (`$1` refers to groups).
    #[serde(default)]
    pub regex: Option<RegexRewrite>,
}

/// `replace_prefix: { from, to }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplacePrefix {
    /// Prefix to remove.
    pub from: String,
    /// Prefix to put in its place.
    pub to: String,
}

/// `regex: { pattern, replacement }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegexRewrite {
    /// Regular expression applied to the path.
    pub pattern: String,
    /// Replacement, with `$1`, `${name}` for groups.
    pub replacement: String,
}

/// Header changes: `set` replaces or adds, `add` appends, `remove` deletes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOps {
    /// Headers to set, replacing existing values.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Headers to append, keeping existing values.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Headers to remove.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// One share of a weighted split.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitTarget {
    /// Upstream name.
    pub upstream: String,
    /// Relative weight (default 1).
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// `static: { root, index }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticFiles {
    /// Directory the request path resolves under (as nginx's `root`).
    pub root: PathBuf,
    /// File served for a directory (for example `index.html`).
    #[serde(default)]
    pub index: Option<String>,
}

/// `respond: { status, body, headers }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Respond {
    /// Status code (default 200).
    #[serde(default = "default_status")]
    pub status: u16,
    /// Body text (default empty).
    #[serde(default)]
    pub body: String,
    /// Response headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn default_status() -> u16 {
    200
}

/// A `redirect` action: the request's URL with the parts given replaced.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectDef {
    /// 301, 302 (the default), 303, 307 or 308.
    #[serde(default)]
    pub status: Option<u16>,
    /// `http` or `https`.
    #[serde(default)]
    pub scheme: Option<String>,
    /// The host (variables allowed).
    #[serde(default)]
    pub host: Option<String>,
    /// The port (default: the request's, unless the scheme changes).
    #[serde(default)]
    pub port: Option<u16>,
    /// The path (variables allowed: `/new{path}`).
    #[serde(default)]
    pub path: Option<String>,
    /// Drop the query instead of keeping it.
    #[serde(default)]
    pub strip_query: bool,
}

/// An `aggregate` action: calls to several upstreams, in parallel where
/// they do not depend on each other, answered as one JSON object.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateDef {
    /// How long each call may take, head and body (a call's own `timeout` wins).
    #[serde(default = "default_aggregate_timeout")]
    pub timeout: Dur,
    /// The calls, by the member name their answer gets.
    pub calls: BTreeMap<String, CallDef>,
    /// Put the members of each call's answer at the top level instead of
    /// under the call's name.
    #[serde(default)]
    pub merge: bool,
    /// Request headers copied to every call (default: authorization,
    /// traceparent, tracestate; the request id always goes).
    #[serde(default)]
    pub forward_headers: Option<Vec<String>>,
    /// The largest answer read from one call (past it the call fails).
    #[serde(default = "default_aggregate_max_body")]
    pub max_body: Size,
}

fn default_aggregate_timeout() -> Dur {
    Dur(Duration::from_secs(5))
}

fn default_aggregate_max_body() -> Size {
    Size(1 << 20)
}

/// One call of an `aggregate` action.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallDef {
    /// The upstream that answers it.
    pub upstream: String,
    /// The method (default GET).
    #[serde(default)]
    pub method: Option<String>,
    /// Path and query, with variables: `{id}` (a `path_regex` group, else a
    /// query parameter), `{user.id}` (a field of the `user` call's answer),
    /// `{header.NAME}`, `{jwt.CLAIM}`, `{consumer}`, `{request_id}`.
    pub path: String,
    /// This call's own time limit.
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// A failure gives `null` and an `_errors` entry instead of a 502.
    #[serde(default)]
    pub optional: bool,
    /// The part of the answer to keep, by dotted path (`data.items`).
    #[serde(default)]
    pub select: Option<String>,
}

/// A named group of targets.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// Unique name.
    pub name: String,
    /// Balancing algorithm.
    #[serde(default)]
    pub balance: Balance,
    /// What `consistent_hash` hashes: `client_ip` (default), `header:N`, `cookie:N`, `query:N`, `path`.
    #[serde(default)]
    pub hash_key: Option<String>,
    /// `fail` (503 at once, default) or `any` (use every target anyway) when no target is available.
    #[serde(default)]
    pub when_all_down: WhenAllDown,
    /// Active health checks.
    #[serde(default)]
    pub health_check: Option<HealthCheckDef>,
    /// Passive health: eject targets that keep failing.
    #[serde(default)]
    pub outlier_detection: Option<OutlierDef>,
    /// Retrying failed requests on another target.
    #[serde(default)]
    pub retries: Option<RetriesDef>,
    /// Caps that fail requests fast instead of piling them on a struggling upstream.
    #[serde(default)]
    pub circuit_breaker: Option<CircuitBreakerDef>,
    /// Targets: `host:port` or `{ address, weight }`.
    pub targets: Vec<Target>,
    /// How often target names are resolved again (default 30s).
    #[serde(default)]
    pub dns_refresh: Option<Dur>,
    /// Connect, response-header and idle timeouts.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// TLS to the targets.
    #[serde(default)]
    pub tls: Option<UpstreamTls>,
    /// Speak HTTP/2 to the targets (gRPC needs it).
    #[serde(default)]
    pub http2: bool,
    /// Send a PROXY protocol header (`v1` or `v2`) to the targets (L4 listeners only for now).
    #[serde(default)]
    pub proxy_protocol: Option<ProxyProtocolVersion>,
}

/// Which PROXY protocol header an upstream sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocolVersion {
    /// The text header.
    V1,
    /// The binary header.
    V2,
}

/// Balancing algorithm of an upstream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Smooth weighted round robin.
    #[default]
    RoundRobin,
    /// Fewest in-flight requests relative to weight.
    LeastConnections,
    /// Weighted random.
    Random,
    /// Power of two choices on latency (EWMA) times load.
    P2cEwma,
    /// Consistent hash of the client IP.
    IpHash,
    /// Consistent hash of `hash_key`.
    ConsistentHash,
}

/// `health_check: { type, path, ... }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckDef {
    /// `http` (default) or `tcp`.
    #[serde(default, rename = "type")]
    pub kind: HealthCheckKind,
    /// Path requested by `http` checks (default `/`).
    #[serde(default)]
    pub path: Option<String>,
    /// Host header of `http` checks (default: the target's address).
    #[serde(default)]
    pub host: Option<String>,
    /// Status codes that pass, like `"200-399"` or `"200"` (default `"200-399"`).
    #[serde(default)]
    pub expect_status: Option<String>,
    /// Time between checks (default 5s); a random jitter of up to 10% is added.
    #[serde(default)]
    pub interval: Option<Dur>,
    /// Time one check may take (default 2s).
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// Consecutive passes that make an unhealthy target healthy (default 2).
    #[serde(default)]
    pub healthy_threshold: Option<u32>,
    /// Consecutive failures that make a healthy target unhealthy (default 3).
    #[serde(default)]
    pub unhealthy_threshold: Option<u32>,
}

/// Kind of active health check.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheckKind {
    /// An HTTP request whose status must fall in `expect_status`.
    #[default]
    Http,
    /// A TCP connect.
    Tcp,
}

/// `outlier_detection: { consecutive_failures, base_ejection, max_ejected_percent }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierDef {
    /// Consecutive connect errors, resets or 5xx that eject a target (default 5).
    #[serde(default)]
    pub consecutive_failures: Option<u32>,
    /// First ejection length; the n-th ejection lasts n times this (default 30s).
    #[serde(default)]
    pub base_ejection: Option<Dur>,
    /// Most of the upstream's targets ejected at once, in percent (default 50).
    #[serde(default)]
    pub max_ejected_percent: Option<u32>,
}

/// `retries: { attempts, backoff, on, budget_percent, ... }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetriesDef {
    /// Retries after the first try (default 1).
    #[serde(default)]
    pub attempts: Option<u32>,
    /// Base wait before a retry, doubled each time, with jitter (default 25ms).
    #[serde(default)]
    pub backoff: Option<Dur>,
    /// What is retried: `connect_error`, `reset`, `timeout`, and status codes like `"503"` (default connect_error, reset).
    #[serde(default)]
    pub on: Option<Vec<String>>,
    /// Retries may add at most this share of recent requests (default 20).
    #[serde(default)]
    pub budget_percent: Option<u32>,
    /// Retry POST, PATCH and other non-idempotent methods too (default false).
    #[serde(default)]
    pub non_idempotent: bool,
    /// Largest request body kept for a retry (default 64KiB); larger bodies are sent once.
    #[serde(default)]
    pub max_body: Option<Size>,
}

/// `circuit_breaker: { max_connections, max_pending, max_requests }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerDef {
    /// Most connections (L4) or in-flight exchanges held open to the upstream.
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// Most requests waiting for a connection.
    #[serde(default)]
    pub max_pending: Option<u32>,
    /// Most requests in flight to the upstream.
    #[serde(default)]
    pub max_requests: Option<u32>,
}

/// What to do when every target is unhealthy or ejected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenAllDown {
    /// Answer 503 at once.
    #[default]
    Fail,
    /// Send to every target anyway.
    Any,
}

/// A target as written: a bare address or an address with a weight.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Target {
    /// `host:port`, weight 1.
    Address(String),
    /// `{ address, weight }`.
    Weighted {
        /// `host:port`.
        address: String,
        /// Relative weight (default 1).
        #[serde(default = "one")]
        weight: u32,
    },
}

impl Target {
    /// The `host:port` of the target.
    pub fn address(&self) -> &str {
        match self {
            Target::Address(a) | Target::Weighted { address: a, .. } => a,
        }
    }
    /// The weight of the target.
    pub fn weight(&self) -> u32 {
        match self {
            Target::Address(_) => 1,
            Target::Weighted { weight, .. } => *weight,
        }
    }
}

/// Upstream timeouts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// Time to open a connection to a target (default 5s).
    #[serde(default = "default_connect")]
    pub connect: Dur,
    /// Time from sending the request to receiving the response headers (default 60s).
    #[serde(default = "default_response_header")]
    pub response_header: Dur,
    /// How long an unused pooled connection stays open (default 60s).
    #[serde(default = "default_idle")]
    pub idle: Dur,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: default_connect(),
            response_header: default_response_header(),
            idle: default_idle(),
        }
    }
}

fn default_connect() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_response_header() -> Dur {
    Dur(Duration::from_secs(60))
}
fn default_idle() -> Dur {
    Dur(Duration::from_secs(60))
}

/// TLS to upstream targets.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// Server name to send and verify (default: the target's host).
    #[serde(default)]
    pub sni: Option<String>,
    /// PEM bundle of CAs to trust (default: the Mozilla roots).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Client certificate for mTLS (with `key`).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Client private key for mTLS (with `cert`).
    #[serde(default)]
    pub key: Option<PathBuf>,
}

/// A named policy; `type` picks the kind.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PolicyDef {
    /// Allow and deny lists of CIDRs.
    IpFilter(IpFilterDef),
    /// Requests per key per period.
    RateLimit(RateLimitDef),
    /// Bearer tokens (JWT) verified against a secret or a key set.
    Jwt(JwtDef),
    /// API keys of `consumers`, from a header or a query parameter.
    ApiKey(ApiKeyDef),
    /// User names and passwords of `consumers` (RFC 7617).
    BasicAuth(BasicAuthDef),
    /// Who may use the route: consumers, groups, claims, client networks.
    Allow(AllowDef),
    /// Changes to JSON bodies on their way in and out.
    Transform(TransformDef),
    /// Requests (and optionally answers) checked against an OpenAPI 3.0/3.1 document.
    Openapi(OpenApiDef),
    /// An auth service asked about every request (Traefik's ForwardAuth,
    /// nginx's auth_request).
    ForwardAuth(ForwardAuthDef),
    /// Bearer tokens checked at an OAuth 2.0 introspection endpoint (RFC 7662).
    Introspection(IntrospectionDef),
    /// Cross-origin resource sharing: answers preflights, adds
    /// `Access-Control-*` headers to answers for allowed origins.
    Cors(CorsDef),
    /// Response bodies encoded with gzip, brotli or zstd for the clients
    /// that accept them; request bodies decoded.
    Compress(CompressDef),
    /// An RFC 9111 shared cache of upstream answers.
    Cache(CacheDef),
    /// A policy that records what the pipeline asks of it (unit tests of
    /// the phases only; never in a build users run).
    #[cfg(test)]
    Probe(ProbeDef),
}

/// A `probe` policy (unit tests only): what it records and does.
#[cfg(test)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeDef {
    /// The bucket its events go to (one per test).
    pub tag: String,
    /// Its request phase, as the `Phase` variant is named (`Filter`, ...).
    pub phase: String,
    /// Its response phase (`ResponseTransform`, `CacheStore`, `Compress`).
    #[serde(default)]
    pub response_phase: Option<String>,
    /// Answer the request with this status in the request phase.
    #[serde(default)]
    pub answer: Option<u16>,
    /// Read the whole request body, up to this many bytes (413 past it).
    #[serde(default)]
    pub buffer_request: Option<u64>,
    /// Wrap the response body: record each data frame, pass it upper-cased.
    #[serde(default)]
    pub wrap: bool,
    /// Replace the response body with its length, after reading it whole.
    #[serde(default)]
    pub buffer_response: bool,
    /// Ask for the log hook.
    #[serde(default)]
    pub logs: bool,
}

/// The `stores` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stores {
    /// The Redis server `store: redis` rate limits count in.
    #[serde(default)]
    pub redis: Option<RedisStoreDef>,
}

/// `stores.redis`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisStoreDef {
    /// `redis://[USER:PASSWORD@]HOST:PORT[/DB]` or `unix:///PATH`.
    pub url: String,
    /// How long a request waits for Redis before `on_store_error` applies.
    #[serde(default = "default_redis_timeout")]
    pub timeout: Dur,
    /// Prepended to every key portcullis writes.
    #[serde(default = "default_redis_prefix")]
    pub key_prefix: String,
}

fn default_redis_timeout() -> Dur {
    Dur(Duration::from_millis(100))
}

fn default_redis_prefix() -> String {
    "portcullis:".to_string()
}

/// `type: rate_limit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitDef {
    /// What requests are counted by: `client_ip`, `consumer`, `header:NAME`
    /// or `jwt:CLAIM`.
    #[serde(default = "default_rate_limit_key")]
    pub key: String,
    /// Requests allowed per `per` (the rate form).
    #[serde(default)]
    pub limit: Option<u32>,
    /// The period `limit` is counted over.
    #[serde(default)]
    pub per: Option<Dur>,
    /// Requests allowed at once (default: `limit`).
    #[serde(default)]
    pub burst: Option<u32>,
    /// A fixed budget per long window (per day, per month), instead of a rate.
    #[serde(default)]
    pub quota: Option<QuotaDef>,
    /// Where counters live.
    #[serde(default)]
    pub store: RateLimitStore,
    /// What to do when the store cannot answer.
    #[serde(default)]
    pub on_store_error: OnStoreError,
    /// Whether answers carry `RateLimit-Policy` and `RateLimit`.
    #[serde(default = "yes")]
    pub headers: bool,
}

/// `quota: { limit, per }`: `limit` requests per window.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaDef {
    /// Requests allowed per window.
    pub limit: u64,
    /// The window: a duration (`1d`: UTC days) or `month` (UTC calendar months).
    pub per: String,
}

fn default_rate_limit_key() -> String {
    "client_ip".to_string()
}

/// Where a rate limit keeps its counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitStore {
    /// In this process.
    #[default]
    Local,
    /// In Redis, shared by every instance.
    Redis,
}

/// Whether requests pass when a shared store fails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    /// Let the request through (availability first).
    #[default]
    Allow,
    /// Refuse it with 503.
    Deny,
}

/// `type: jwt`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtDef {
    /// Shared secret for HS256/384/512 tokens.
    #[serde(default)]
    pub secret: Option<String>,
    /// A JSON Web Key Set file (read at each configuration load).
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// A JSON Web Key Set fetched over HTTP(S) and refreshed.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// How often `jwks_url` is fetched again.
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh: Dur,
    /// PEM bundle of CAs for an https `jwks_url` (default: the Mozilla roots).
    #[serde(default)]
    pub jwks_ca: Option<PathBuf>,
    /// Accepted `iss` values; empty accepts any.
    #[serde(default, deserialize_with = "one_or_many")]
    pub issuer: Vec<String>,
    /// Accepted `aud` values; empty accepts any.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Claims the token must carry, with their values.
    #[serde(default)]
    pub required_claims: BTreeMap<String, String>,
    /// Claims copied into request headers for the upstream.
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
    /// Whether a token without `exp` is refused.
    #[serde(default = "yes")]
    pub require_expiry: bool,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "default_jwt_leeway")]
    pub leeway: Dur,
    /// Whether the Authorization header goes on to the upstream.
    #[serde(default = "yes")]
    pub forward_token: bool,
    /// How many verified tokens are remembered (0: verify every request).
    #[serde(default = "default_token_cache_size")]
    pub token_cache_size: usize,
    /// The claim that names the consumer.
    #[serde(default = "default_consumer_claim")]
    pub consumer_claim: String,
}

fn default_consumer_claim() -> String {
    "sub".to_string()
}

fn default_token_cache_size() -> usize {
    4096
}

fn default_jwks_refresh() -> Dur {
    Dur(Duration::from_secs(300))
}

fn default_jwt_leeway() -> Dur {
    Dur(Duration::from_secs(30))
}

fn yes() -> bool {
    true
}

/// Accepts `x` or `[x, y]`.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// `type: transform`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformDef {
    /// What happens to the request body on its way upstream.
    #[serde(default)]
    pub request: Option<TransformStepDef>,
    /// What happens to the upstream's body on its way back.
    #[serde(default)]
    pub response: Option<TransformStepDef>,
    /// The largest body transformed (past it: 413 for a request, 502 for an answer).
    #[serde(default = "default_transform_max_body")]
    pub max_body: Size,
}

fn default_transform_max_body() -> Size {
    Size(1 << 20)
}

/// `type: openapi`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenApiDef {
    /// The OpenAPI 3.0 or 3.1 document (YAML or JSON), relative to this file's directory.
    pub spec: PathBuf,
    /// Answer undocumented paths with 404 and undocumented methods with 405.
    #[serde(default)]
    pub strict: bool,
    /// Whether upstream answers are checked too: `off`, `log` or `enforce` (502).
    #[serde(default)]
    pub validate_responses: ResponseValidation,
    /// The largest body read to validate (past it: 413 for a request).
    #[serde(default = "default_transform_max_body")]
    pub max_body: Size,
}

/// What `openapi` does with upstream answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseValidation {
    /// Answers pass unchecked.
    #[default]
    Off,
    /// Answers are checked; a mismatch is logged and the answer passes.
    Log,
    /// Answers are checked; a mismatch becomes a 502.
    Enforce,
}

/// One direction of a transform: a conversion, or field changes.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum TransformStepDef {
    /// `xml_to_json` or `json_to_xml`.
    Convert(String),
    /// `{ remove, rename, set }`.
    Fields(FieldOpsDef),
}

/// Field changes of a JSON body, by dotted path.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldOpsDef {
    /// Fields removed.
    #[serde(default)]
    pub remove: Vec<String>,
    /// Fields moved: `from: to`.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// Fields set (made when missing); string values may use variables.
    #[serde(default)]
    pub set: BTreeMap<String, serde_json::Value>,
}

/// `type: api_key`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyDef {
    /// The request header that carries the key (default `x-api-key`
    /// unless `query` is set).
    #[serde(default)]
    pub header: Option<String>,
    /// The query parameter that carries the key.
    #[serde(default)]
    pub query: Option<String>,
}

/// `type: forward_auth`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardAuthDef {
    /// The auth service's URL (http or https), asked with a GET per request.
    pub url: String,
    /// PEM bundle of CAs for an https `url` (default: the Mozilla roots).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// The longest the whole exchange with the auth service may take.
    #[serde(default = "default_auth_timeout")]
    pub timeout: Dur,
    /// The client's request headers sent on to the auth service.
    #[serde(default = "default_credential_headers")]
    pub request_headers: Vec<String>,
    /// Headers of a 2xx answer copied onto the upstream request.
    #[serde(default)]
    pub copy_headers: Vec<String>,
    /// The answer header whose value names the consumer.
    #[serde(default)]
    pub consumer_header: Option<String>,
    /// How long a 2xx answer is reused for the same `cache_key` values (0: never).
    #[serde(default = "zero_duration")]
    pub cache_ttl: Dur,
    /// The request headers whose values key the cache.
    #[serde(default = "default_credential_headers")]
    pub cache_key: Vec<String>,
    /// How many answers the cache holds at most.
    #[serde(default = "default_auth_cache_size")]
    pub cache_size: usize,
}

/// `type: introspection`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionDef {
    /// The introspection endpoint's URL (http or https).
    pub url: String,
    /// The gateway's client id at the authorization server.
    pub client_id: String,
    /// The gateway's client secret, sent with `client_id` as HTTP Basic.
    pub client_secret: String,
    /// PEM bundle of CAs for an https `url` (default: the Mozilla roots).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// The longest the whole exchange with the endpoint may take.
    #[serde(default = "default_auth_timeout")]
    pub timeout: Dur,
    /// Accepted `aud` values; empty accepts any.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Scopes the token's `scope` must all hold.
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// Members of the answer the token must carry, with their values.
    #[serde(default)]
    pub required_claims: BTreeMap<String, String>,
    /// What a request gets when the endpoint cannot answer.
    #[serde(default)]
    pub on_unavailable: OnUnavailable,
    /// Whether the Authorization header goes on to the upstream.
    #[serde(default = "yes")]
    pub forward_token: bool,
    /// How long an active answer is reused (never past its `exp`; 0: never).
    #[serde(default = "zero_duration")]
    pub cache_ttl: Dur,
    /// How many answers the cache holds at most.
    #[serde(default = "default_auth_cache_size")]
    pub cache_size: usize,
}

/// What an introspection policy answers when its endpoint cannot be asked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnUnavailable {
    /// 503: the gateway cannot tell.
    #[default]
    Deny,
    /// 401: the client is told to authenticate again.
    Unauthorized,
}

fn default_auth_timeout() -> Dur {
    Dur(Duration::from_secs(5))
}

fn default_credential_headers() -> Vec<String> {
    vec!["authorization".into(), "cookie".into()]
}

fn default_auth_cache_size() -> usize {
    10_000
}

fn zero_duration() -> Dur {
    Dur(Duration::ZERO)
}

/// `type: basic_auth`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthDef {
    /// The realm the challenge names (default: the policy's name).
    #[serde(default)]
    pub realm: Option<String>,
    /// How many verified credentials are remembered (0: verify every request).
    #[serde(default = "default_token_cache_size")]
    pub cache_size: usize,
    /// How long a verified credential is remembered.
    #[serde(default = "default_basic_cache_ttl")]
    pub cache_ttl: Dur,
    /// Failed checks a client address may make per `failure_window`
    /// before it is refused (429) without a check.
    #[serde(default = "default_max_failures")]
    pub max_failures: u32,
    /// The period `max_failures` is counted over.
    #[serde(default = "default_failure_window")]
    pub failure_window: Dur,
    /// Whether the Authorization header goes on to the upstream.
    #[serde(default)]
    pub forward_credentials: bool,
}

fn default_basic_cache_ttl() -> Dur {
    Dur(Duration::from_secs(300))
}

fn default_max_failures() -> u32 {
    10
}

fn default_failure_window() -> Dur {
    Dur(Duration::from_secs(60))
}

/// `type: allow`: every listed kind of condition must hold, any value
/// within a kind.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowDef {
    /// Consumer names.
    #[serde(default)]
    pub consumers: Vec<String>,
    /// Consumer groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// JWT claims and the values any of which the claim must hold.
    #[serde(default)]
    pub claims: BTreeMap<String, OneOrMany>,
    /// Client networks.
    #[serde(default)]
    pub cidrs: Vec<String>,
}

/// `type: cors`: which origins may call the route from a browser, with
/// which methods and headers.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsDef {
    /// Exact origins, `https://*.example.com` subdomain patterns,
    /// `regex:` patterns, or `*` for any origin.
    #[serde(default)]
    pub allow_origins: Vec<String>,
    /// Methods a preflight may ask for (default GET, HEAD, POST).
    #[serde(default)]
    pub allow_methods: Option<Vec<String>>,
    /// Request headers a preflight may ask for, or `*` for any.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Response headers the browser lets the page read, or `*`.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// How long a browser may keep a preflight's answer (default: header omitted).
    #[serde(default)]
    pub max_age: Option<Dur>,
    /// Whether the page may send cookies and credentials (default false).
    #[serde(default)]
    pub allow_credentials: bool,
}

/// `type: compress`: which answers are encoded, how, and whether
/// encoded request bodies are decoded for the upstream.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressDef {
    /// Encodings in order of preference, for ties in the client's q-values
    /// (`zstd`, `br` or `brotli`, `gzip`; default zstd, br, gzip).
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
    /// Compression level per algorithm (default gzip 6, br 4, zstd 3).
    #[serde(default)]
    pub levels: CompressLevelsDef,
    /// Bodies of a known length below this are sent as they are (default 1KiB).
    #[serde(default)]
    pub min_size: Option<Size>,
    /// Media types to encode: `type/subtype`, `type/*`, `+suffix` or `*/*`
    /// (default text/*, JSON, JavaScript, XML, SVG, wasm).
    #[serde(default)]
    pub content_types: Option<Vec<String>>,
    /// Decoding of `Content-Encoding: gzip|br|zstd` request bodies (default off).
    #[serde(default)]
    pub request: CompressRequestDef,
    /// Decode an upstream's encoded answer for a client that does not
    /// accept its encoding, as nginx's gunzip does (default false).
    #[serde(default)]
    pub decompress_for_clients: bool,
}

/// `type: cache`: an RFC 9111 shared cache in memory, its keys and its
/// stale-serving settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheDef {
    /// Memory for stored answers, bodies and headers (default 256MiB).
    #[serde(default)]
    pub max_size: Option<Size>,
    /// Answers bigger than this stream through without being stored
    /// (default 8MiB).
    #[serde(default)]
    pub max_entry_size: Option<Size>,
    /// How requests become keys.
    #[serde(default)]
    pub key: CacheKeyDef,
    /// Methods whose answers are stored: GET and HEAD always; POST only
    /// when listed (its key then holds a digest of the body).
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    /// Store answers that set cookies, without their Set-Cookie (default
    /// false: such answers are not stored).
    #[serde(default)]
    pub store_set_cookie: bool,
    /// Cap on heuristic freshness, 10% of the time since Last-Modified
    /// (default 1d; 0s turns heuristics off).
    #[serde(default)]
    pub heuristic_max: Option<Dur>,
    /// Freshness for heuristically cacheable answers that carry no
    /// freshness information at all (default 0s: none).
    #[serde(default)]
    pub default_ttl: Option<Dur>,
    /// Serve an answer this long past its freshness while it is refreshed
    /// in the background, when the answer itself says nothing (default 0s).
    #[serde(default)]
    pub stale_while_revalidate: Option<Dur>,
    /// Serve an answer this long past its freshness when the origin fails,
    /// when the answer itself says nothing (default 0s).
    #[serde(default)]
    pub stale_if_error: Option<Dur>,
    /// How long a request waits for an identical request's answer before
    /// going upstream itself (default 5s).
    #[serde(default)]
    pub lock_timeout: Option<Dur>,
    /// A second tier in a local directory, kept across restarts.
    #[serde(default)]
    pub disk: Option<CacheDiskDef>,
    /// A tier in `stores.redis` that every instance shares.
    #[serde(default)]
    pub redis: Option<CacheRedisDef>,
}

/// `disk` of a `cache` policy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheDiskDef {
    /// The directory (made if missing; relative to the configuration file).
    pub path: std::path::PathBuf,
    /// Bytes of records it may hold; the least recently used go first.
    pub max_size: Size,
}

/// `redis` of a `cache` policy.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheRedisDef {
    /// Records (every variant of a key) bigger than this stay out of Redis
    /// (default 1MiB).
    #[serde(default)]
    pub max_entry_size: Option<Size>,
}

/// `key` of a `cache` policy.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheKeyDef {
    /// The query string: `keep` (default), `sort` (parameter order does
    /// not matter) or `ignore`.
    #[serde(default)]
    pub query: CacheQuery,
    /// Query parameters left out of the key (`utm_source`, ...).
    #[serde(default)]
    pub ignore_params: Vec<String>,
    /// Request headers whose values are part of the key.
    #[serde(default)]
    pub headers: Vec<String>,
    /// Whether the consumer is part of the key (answers per consumer).
    #[serde(default)]
    pub consumer: bool,
}

/// What a cache key does with the query string.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheQuery {
    /// As sent.
    #[default]
    Keep,
    /// Parameters sorted.
    Sort,
    /// Left out.
    Ignore,
}

/// `levels` of a `compress` policy: one per algorithm.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressLevelsDef {
    /// gzip, 1 (fastest) to 9 (smallest); default 6.
    #[serde(default)]
    pub gzip: Option<i64>,
    /// brotli, 0 to 11; default 4 (11 is far too slow on the fly).
    #[serde(default, alias = "brotli")]
    pub br: Option<i64>,
    /// zstd, 1 to 22; default 3.
    #[serde(default)]
    pub zstd: Option<i64>,
}

/// `request` of a `compress` policy: decoding request bodies.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressRequestDef {
    /// Whether encoded request bodies are decoded before the upstream (default false).
    #[serde(default)]
    pub decompress: bool,
    /// Decoded bytes allowed per encoded byte, against decompression bombs (default 100).
    #[serde(default)]
    pub max_ratio: Option<u64>,
    /// The largest decoded body (default 10MiB).
    #[serde(default)]
    pub max_size: Option<Size>,
}

/// `x` or `[x, y]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// A single value.
    One(String),
    /// A list.
    Many(Vec<String>),
}

impl OneOrMany {
    /// The values, as a list.
    pub fn values(&self) -> &[String] {
        match self {
            OneOrMany::One(s) => std::slice::from_ref(s),
            OneOrMany::Many(v) => v,
        }
    }
}

/// `type: ip_filter`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpFilterDef {
    /// When non-empty, only these networks may pass.
    #[serde(default)]
    pub allow: Vec<String>,
    /// These networks never pass (deny wins over allow).
    #[serde(default)]
    pub deny: Vec<String>,
}

/// Logs, metrics and traces.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Observability {
    /// One JSON line per request.
    #[serde(default)]
    pub access_log: Option<AccessLog>,
    /// How many consumers (in file order) have analytics series of their
    /// own; the others count as `other`.
    #[serde(default)]
    pub max_consumer_series: Option<usize>,
}

/// Access log settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLog {
    /// `stdout`, `off`, or a file path (appended to).
    #[serde(default = "default_log_path")]
    pub path: String,
    /// Only `json` for now.
    #[serde(default)]
    pub format: LogFormat,
}

fn default_log_path() -> String {
    "stdout".to_string()
}

/// Access log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    #[default]
    Json,
}
