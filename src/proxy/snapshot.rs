//! The compiled configuration: everything the data plane needs, ready to use.
//!
//! A snapshot is immutable. The data plane loads the current one once per
//! request; a reload compiles a new one and swaps it whole, so a request never
//! sees half of an old configuration and half of a new one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, Request, StatusCode};

use crate::config::model::Protocol;
use crate::http::headers::HeaderOps;
use crate::http::headers::host_of;
use crate::policy::consumer::{ConsumerHeaders, Consumers};
use crate::policy::context::RequestCtx;
use crate::policy::template::{Template, split_port};
use arc_swap::ArcSwap;

use crate::observe::access_log::AccessLog;
use crate::observe::metrics::Metrics;
use crate::policy::Chain;
use crate::proxy::rewrite::Rewrite;
use crate::proxy::static_files::StaticDir;
use crate::route::RouteTable;
use crate::upstream::Upstream;

/// Where a snapshot came from.
#[derive(Clone, Debug)]
pub struct ConfigInfo {
    /// The configuration file.
    pub path: PathBuf,
    /// SHA-256 of the file's bytes, hex.
    pub hash: String,
    /// When this snapshot was built.
    pub loaded_at: SystemTime,
}

/// Request limits of a listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest total size of request headers (names, values and separators).
    pub max_header_size: usize,
    /// Most request headers.
    pub max_headers: usize,
    /// Largest request body; None is unlimited.
    pub max_body: Option<u64>,
    /// Time a client has to send its request headers.
    pub header_read_timeout: Duration,
    /// Longest request target; past it 414.
    pub max_uri_size: usize,
    /// Idle time allowed between HTTP/1.1 requests.
    pub keepalive_timeout: Duration,
    /// Time allowed to an HTTP/2 connection without an open stream.
    pub http2_idle_timeout: Duration,
    /// Most connections open at once on the listener.
    pub max_connections: Option<u32>,
    /// Most connections open at once from one client address.
    pub max_connections_per_client: Option<u32>,
    /// Most new connections per second from one client address.
    pub max_connection_rate_per_client: Option<u32>,
    /// How fast clients must send request bodies.
    pub body_pace: crate::http::pace::BodyPace,
    /// How long an answer may wait for a client that does not read it.
    pub send_timeout: Duration,
    /// HTTP/2 frames per second a client address may send.
    pub http2_flood: crate::http::h2_guard::FloodLimits,
}

impl Limits {
    /// How long the listener's connections may stay idle.
    pub fn idle(&self) -> crate::proxy::connection::IdleLimits {
        crate::proxy::connection::IdleLimits {
            head: self.header_read_timeout,
            keepalive: self.keepalive_timeout,
            http2: self.http2_idle_timeout,
            send: self.send_timeout,
        }
    }

    /// The shortest of the idle limits, which sets how often to sweep.
    pub fn shortest_idle(&self) -> Duration {
        self.header_read_timeout
            .min(self.keepalive_timeout)
            .min(self.http2_idle_timeout)
            .min(self.send_timeout)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_size: 64 * 1024,
            max_headers: 100,
            max_body: None,
            header_read_timeout: Duration::from_secs(10),
            max_uri_size: 8 * 1024,
            keepalive_timeout: Duration::from_secs(75),
            http2_idle_timeout: Duration::from_secs(75),
            max_connections: None,
            max_connections_per_client: None,
            max_connection_rate_per_client: None,
            body_pace: crate::http::pace::BodyPace::default(),
            send_timeout: Duration::from_secs(60),
            http2_flood: crate::http::h2_guard::FloodLimits::default(),
        }
    }
}

/// A listener as the server opens it and the pipeline serves it.
pub struct ListenerPlan {
    /// The configured name.
    pub name: Arc<str>,
    /// The configured address text, which identifies the socket across reloads.
    pub address_text: String,
    /// Where to bind.
    pub address: SocketAddr,
    /// What it speaks.
    pub protocol: Protocol,
    /// TLS termination for `https`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Header that carries the verified client certificate subject.
    pub client_subject_header: Option<HeaderName>,
    /// Request limits.
    pub limits: Limits,
    /// The routes attached to this listener.
    pub routes: RouteTable,
    /// One binding per route-table index.
    pub bindings: Vec<Binding>,
    /// Whether every connection must start with a PROXY protocol header.
    pub proxy_protocol: bool,
    /// Answer every request with a 308 to the same URL over https.
    pub https_redirect: bool,
    /// What a `tcp`, `tls` or `udp` listener does; `None` for http and https.
    pub l4: Option<crate::l4::L4Plan>,
}

/// A route as attached to one listener: the route and its policies in phase
/// order (the listener's policies, then the route's).
pub struct Binding {
    /// The route.
    pub route: Arc<RouteEntry>,
    /// Its policies, ordered for the request and for the answer (shared
    /// with background refreshes, which outlive the request).
    pub chain: Arc<Chain>,
}

/// A compiled route.
pub struct RouteEntry {
    /// The configured name.
    pub name: Arc<str>,
    /// What the route does with a request.
    pub action: Action,
    /// Path rewrite, applied before forwarding or serving files.
    pub rewrite: Option<Rewrite>,
    /// Header changes toward the upstream.
    pub request_headers: HeaderOps,
    /// Header changes toward the client.
    pub response_headers: HeaderOps,
    /// The route's request counters and duration histogram, resolved once.
    pub metrics: Arc<crate::observe::metrics::RouteMetrics>,
    /// Protocol names (lower case) a client may upgrade to on this route.
    pub upgrades: Box<[Box<str>]>,
    /// The headers that carry the consumer upstream (client copies removed).
    pub consumer_headers: Arc<ConsumerHeaders>,
}

/// What a route does.
pub enum Action {
    /// Forward to one upstream.
    Forward(Arc<Upstream>),
    /// Forward to one of several upstreams by weight.
    Split(Split),
    /// Serve files.
    Static(StaticDir),
    /// Answer directly.
    Respond(DirectResponse),
    /// Answer with a redirect.
    Redirect(Redirect),
    /// Call several upstreams, answer one JSON object.
    Aggregate(super::aggregate::Aggregate),
}

/// A redirect: the request's URL with the configured parts replaced.
pub struct Redirect {
    /// 301, 302, 303, 307 or 308.
    pub status: StatusCode,
    /// `http` or `https`; None keeps the request's.
    pub scheme: Option<&'static str>,
    /// The host; None keeps the request's.
    pub host: Option<Template>,
    /// The port; None keeps the request's (dropped when the scheme changes).
    pub port: Option<u16>,
    /// The path; None keeps the request's.
    pub path: Option<Template>,
    /// Drop the query.
    pub strip_query: bool,
}

impl Redirect {
    /// The 308 to the same URL over https that `https_redirect` answers.
    pub fn to_https() -> Redirect {
        Redirect {
            status: StatusCode::PERMANENT_REDIRECT,
            scheme: Some("https"),
            host: None,
            port: None,
            path: None,
            strip_query: false,
        }
    }

    /// Where this request goes: `scheme://host[:port]path[?query]`.
    pub fn location<B>(&self, ctx: &RequestCtx, req: &Request<B>) -> String {
        let own_scheme = if ctx.tls { "https" } else { "http" };
        let scheme = self.scheme.unwrap_or(own_scheme);
        let (own_host, own_port) = split_port(host_of(req).unwrap_or(""));
        let host = match &self.host {
            Some(t) => t.render(ctx, req),
            None => own_host.to_string(),
        };
        let port = match (self.port, self.scheme) {
            (Some(p), _) => Some(p.to_string()),
            // Another scheme means another default port.
            (None, Some(s)) if s != own_scheme => None,
            (None, _) => own_port.map(str::to_string),
        };
        let port =
            port.filter(|p| !matches!((scheme, p.as_str()), ("http", "80") | ("https", "443")));
        let path = match &self.path {
            Some(t) => t.render(ctx, req),
            None => req.uri().path().to_string(),
        };
        let mut out = format!("{scheme}://{host}");
        if let Some(p) = port {
            out.push(':');
            out.push_str(&p);
        }
        if !path.starts_with('/') {
            out.push('/');
        }
        out.push_str(&path);
        if let Some(q) = req.uri().query().filter(|_| !self.strip_query) {
            out.push('?');
            out.push_str(q);
        }
        out
    }
}

/// A weighted split over upstreams.
pub struct Split {
    /// Upstreams with cumulative weights, for a binary search by a random draw.
    pub shares: Vec<(u64, Arc<Upstream>)>,
    /// Sum of the weights.
    pub total: u64,
    /// Cheap rotating counter mixed into the draw.
    pub counter: AtomicUsize,
}

impl Split {
    /// Picks an upstream with probability proportional to its weight.
    pub fn pick(&self) -> &Arc<Upstream> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed) as u64;
        let draw = spread(n, self.total);
        let i = self.shares.partition_point(|(cum, _)| *cum <= draw);
        &self.shares[i.min(self.shares.len() - 1)].1
    }
}

/// Maps the n-th request to a point in `0..total`. The golden-ratio sequence
/// `n × φ mod 2^64` is spread evenly over the ring (a low-discrepancy
/// sequence); scaling it to `0..total` by multiplying and keeping the high
/// bits preserves that evenness (a modulo would not), so every window of
/// requests gets close to the configured shares, whatever the weights.
fn spread(n: u64, total: u64) -> u64 {
    let point = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    ((u128::from(point) * u128::from(total)) >> 64) as u64
}

/// A fixed answer.
pub struct DirectResponse {
    /// Status code.
    pub status: StatusCode,
    /// Body bytes (when the body has no variables).
    pub body: bytes::Bytes,
    /// The body, when it has variables.
    pub body_template: Option<Template>,
    /// Headers (those without variables).
    pub headers: HeaderMap,
    /// Headers whose values have variables.
    pub header_templates: Vec<(HeaderName, Template)>,
}

/// The whole compiled configuration.
pub struct Snapshot {
    /// Where it came from.
    pub info: ConfigInfo,
    /// Listeners in file order.
    pub listeners: Vec<Arc<ListenerPlan>>,
    /// Listener index by name (looked up per request; FxHash, as the keys
    /// come from the configuration, not from clients).
    pub listener_index: rustc_hash::FxHashMap<Arc<str>, usize>,
    /// Routes in file order.
    pub routes: Vec<Arc<RouteEntry>>,
    /// Upstreams by name.
    pub upstreams: HashMap<Arc<str>, Arc<Upstream>>,
    /// Admin listener address.
    pub admin: Option<SocketAddr>,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_timeout: Duration,
    /// The access log, when on.
    pub access_log: Option<Arc<AccessLog>>,
    /// Exported metrics (the same families in every snapshot).
    pub metrics: Arc<Metrics>,
    /// The configured consumers.
    pub consumers: Arc<Consumers>,
}

/// The snapshot the data plane serves from: loaded once per request or
/// connection, replaced whole by a reload.
pub struct Live(ArcSwap<Snapshot>);

impl Live {
    /// Serves `snapshot` until the next [`Live::store`].
    pub fn new(snapshot: Snapshot) -> Live {
        Live(ArcSwap::from_pointee(snapshot))
    }

    /// The current snapshot, for a short look.
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.0.load()
    }

    /// The current snapshot, to keep.
    pub fn load_full(&self) -> Arc<Snapshot> {
        self.0.load_full()
    }

    /// Replaces the snapshot; requests already running keep theirs.
    pub fn store(&self, snapshot: Arc<Snapshot>) {
        self.0.store(snapshot);
    }
}

impl Snapshot {
    /// The listener called `name`.
    pub fn listener(&self, name: &str) -> Option<&Arc<ListenerPlan>> {
        self.listener_index.get(name).map(|i| &self.listeners[*i])
    }
}

impl Snapshot {
    /// A snapshot with nothing in it, used only while the first one compiles.
    pub fn empty(path: &std::path::Path, metrics: Arc<Metrics>) -> Snapshot {
        Snapshot {
            info: ConfigInfo {
                path: path.to_path_buf(),
                hash: String::new(),
                loaded_at: SystemTime::now(),
            },
            listeners: Vec::new(),
            listener_index: Default::default(),
            routes: Vec::new(),
            upstreams: HashMap::new(),
            admin: None,
            shutdown_timeout: Duration::from_secs(30),
            access_log: None,
            metrics,
            consumers: Arc::new(Consumers::empty()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_shares_hold_in_every_window_whatever_the_weights() {
        for weights in [
            vec![3u64, 2],
            vec![6, 4],
            vec![5, 3, 2],
            vec![50, 30, 20],
            vec![1, 2, 3, 4],
        ] {
            let total: u64 = weights.iter().sum();
            let cum: Vec<u64> = weights
                .iter()
                .scan(0, |acc, w| {
                    *acc += w;
                    Some(*acc)
                })
                .collect();
            for start in [0u64, 1094, 55_555] {
                let mut counts = vec![0u64; weights.len()];
                for n in start..start + 1000 {
                    counts[cum.partition_point(|c| *c <= spread(n, total))] += 1;
                }
                for (i, w) in weights.iter().enumerate() {
                    let expected = 1000 * w / total;
                    assert!(
                        counts[i].abs_diff(expected) <= 5,
                        "{weights:?} from {start}: {counts:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn split_shares_follow_weights() {
        let cum = [90u64, 100];
        let mut counts = [0u32; 2];
        for n in 0..1_000 {
            let i = cum.partition_point(|c| *c <= spread(n, 100));
            counts[i] += 1;
        }
        assert!((870..=930).contains(&counts[0]), "{counts:?}");
    }
}
