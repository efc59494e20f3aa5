//! Prometheus metrics with the names of DESIGN.md (`portcullis_*`).
//!
//! Label values are `Arc<str>` taken from the compiled snapshot, so counting
//! a request clones reference counts instead of allocating strings.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::consumer_metrics::{ConsumerMetrics, ConsumerSeries, RouteConsumerCounts};

/// The empty label value (no route, no upstream), shared so that using it
/// allocates nothing.
pub fn empty_label() -> Arc<str> {
    static EMPTY: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from(""));
    EMPTY.clone()
}

/// Labels of `portcullis_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Listener name.
    pub listener: Arc<str>,
    /// Route name (empty when no route matched).
    pub route: Arc<str>,
    /// Upstream name (empty when none was used).
    pub upstream: Arc<str>,
    /// Response status code.
    pub status: u16,
}

/// A single `route` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    /// Route name.
    pub route: Arc<str>,
}

/// A single `upstream` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabel {
    /// Upstream name.
    pub upstream: Arc<str>,
}

/// Labels of `portcullis_upstream_target_healthy`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabel {
    /// Upstream name.
    pub upstream: Arc<str>,
    /// Target address as configured.
    pub target: Arc<str>,
}

/// A single `listener` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    /// Listener name.
    pub listener: Arc<str>,
}

/// A single `result` label (`success` or `failure`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `success` or `failure`.
    pub result: &'static str,
}

/// Labels of `portcullis_rate_limited_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    /// Route name.
    pub route: Arc<str>,
    /// Policy name.
    pub policy: Arc<str>,
}

/// A single `destination` label (`stdout` or the file's path).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestinationLabel {
    /// `stdout` or a file path.
    pub destination: String,
}

/// A single `policy` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabel {
    /// Policy name.
    pub policy: Arc<str>,
}

/// Labels of `portcullis_auth_failures_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthFailureLabels {
    /// Route name.
    pub route: Arc<str>,
    /// Policy name.
    pub policy: Arc<str>,
    /// Why the credential was refused (`missing`, `expired`, ...).
    pub reason: &'static str,
}

/// Labels of `portcullis_connections_refused_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// Listener name.
    pub listener: Arc<str>,
    /// The cap that refused it (`max_connections_per_client`, ...).
    pub reason: &'static str,
}

/// Labels of `portcullis_client_timeouts_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClientTimeoutLabels {
    /// Listener name.
    pub listener: Arc<str>,
    /// The limit the client failed (`body_read_timeout`, `min_body_rate`).
    pub kind: &'static str,
}

/// Labels of `portcullis_http2_floods_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Http2FloodLabels {
    /// Listener name.
    pub listener: Arc<str>,
    /// The frame type whose limit was crossed (`ping`, `rst_stream`, ...).
    pub frame: &'static str,
}

/// Labels of `portcullis_compressed_responses_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CompressedLabels {
    /// Route name.
    pub route: Arc<str>,
    /// The content coding (`gzip`, `br`, `zstd`).
    pub encoding: &'static str,
}

/// Labels of `portcullis_cache_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheRequestLabels {
    /// Route name.
    pub route: Arc<str>,
    /// What the cache did: hit, miss, stale, revalidated, collapsed, bypass.
    pub result: &'static str,
}

/// Labels of the per-tier cache gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheTierLabels {
    /// The cache policy's name.
    pub cache: Arc<str>,
    /// `memory` (later also `disk`, `redis`).
    pub tier: &'static str,
}

/// A histogram family whose histograms share the latency buckets.
pub type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    /// `portcullis_requests_total{listener,route,upstream,status}`.
    pub requests: Family<RequestLabels, Counter>,
    /// `portcullis_request_duration_seconds{route}`.
    pub request_duration: HistogramFamily<RouteLabel>,
    /// `portcullis_upstream_duration_seconds{upstream}`.
    pub upstream_duration: HistogramFamily<UpstreamLabel>,
    /// `portcullis_connections_active{listener}`.
    pub connections_active: Family<ListenerLabel, Gauge>,
    /// `portcullis_connections_refused_total{listener,reason}`.
    pub connections_refused: Family<RefusedLabels, Counter>,
    /// `portcullis_client_timeouts_total{listener,kind}`.
    pub client_timeouts: Family<ClientTimeoutLabels, Counter>,
    /// `portcullis_http2_floods_total{listener,frame}`.
    pub http2_floods: Family<Http2FloodLabels, Counter>,
    /// `portcullis_upstream_target_healthy{upstream,target}`.
    pub upstream_target_healthy: Family<TargetLabel, Gauge>,
    /// `portcullis_config_reloads_total{result}`.
    pub config_reloads: Family<ResultLabel, Counter>,
    /// `portcullis_retries_total{upstream}`.
    pub retries: Family<UpstreamLabel, Counter>,
    /// `portcullis_circuit_open_total{upstream}`.
    pub circuit_open: Family<UpstreamLabel, Counter>,
    /// `portcullis_rate_limited_total{route,policy}`.
    pub rate_limited: Family<PolicyLabels, Counter>,
    /// `portcullis_auth_failures_total{route,policy,reason}`.
    pub auth_failures: Family<AuthFailureLabels, Counter>,
    /// `portcullis_compressed_responses_total{route,encoding}`.
    pub compressed: Family<CompressedLabels, Counter>,
    /// `portcullis_cache_requests_total{route,result}`.
    pub cache_requests: Family<CacheRequestLabels, Counter>,
    /// `portcullis_cache_entries{cache,tier}`.
    pub cache_entries: Family<CacheTierLabels, Gauge>,
    /// `portcullis_cache_bytes{cache,tier}`.
    pub cache_bytes: Family<CacheTierLabels, Gauge>,
    /// `portcullis_cache_evictions_total{cache,tier}`.
    pub cache_evictions: Family<CacheTierLabels, Counter>,
    /// `portcullis_rate_limit_store_errors_total{policy}`.
    pub rate_limit_store_errors: Family<PolicyLabel, Counter>,
    /// `portcullis_access_log_dropped_total{destination}`.
    pub access_log_dropped: Family<DestinationLabel, Counter>,
    /// `portcullis_consumer_requests_total` and
    /// `portcullis_consumer_request_duration_seconds`.
    pub consumers: Arc<ConsumerMetrics>,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to about 65 s: proxy overhead and slow backends both land in a bucket.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0005, 2.0, 18,
    ))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("portcullis");
        let requests = Family::<RequestLabels, Counter>::default();
        let request_duration =
            HistogramFamily::<RouteLabel>::new_with_constructor(latency_histogram);
        let upstream_duration =
            HistogramFamily::<UpstreamLabel>::new_with_constructor(latency_histogram);
        let connections_active = Family::<ListenerLabel, Gauge>::default();
        let connections_refused = Family::<RefusedLabels, Counter>::default();
        let client_timeouts = Family::<ClientTimeoutLabels, Counter>::default();
        let http2_floods = Family::<Http2FloodLabels, Counter>::default();
        let upstream_target_healthy = Family::<TargetLabel, Gauge>::default();
        registry.register(
            "upstream_target_healthy",
            "Active health-check verdict per checked target (1 healthy, 0 not)",
            upstream_target_healthy.clone(),
        );
        let config_reloads = Family::<ResultLabel, Counter>::default();
        let retries = Family::<UpstreamLabel, Counter>::default();
        let circuit_open = Family::<UpstreamLabel, Counter>::default();
        registry.register("retries", "Retried upstream attempts", retries.clone());
        registry.register(
            "circuit_open",
            "Requests refused by an upstream's circuit breaker",
            circuit_open.clone(),
        );
        let rate_limited = Family::<PolicyLabels, Counter>::default();
        let auth_failures = Family::<AuthFailureLabels, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests refused by a rate_limit policy",
            rate_limited.clone(),
        );
        registry.register(
            "auth_failures",
            "Requests refused by an authentication policy, by reason",
            auth_failures.clone(),
        );
        let rate_limit_store_errors = Family::<PolicyLabel, Counter>::default();
        registry.register(
            "rate_limit_store_errors",
            "Rate-limit checks the shared store could not answer (on_store_error applied)",
            rate_limit_store_errors.clone(),
        );
        let compressed = Family::<CompressedLabels, Counter>::default();
        registry.register(
            "compressed_responses",
            "Answers a compress policy encoded, by encoding",
            compressed.clone(),
        );
        let cache_requests = Family::<CacheRequestLabels, Counter>::default();
        registry.register(
            "cache_requests",
            "Requests a cache policy saw, by what it did",
            cache_requests.clone(),
        );
        let cache_entries = Family::<CacheTierLabels, Gauge>::default();
        registry.register(
            "cache_entries",
            "Keys stored, by cache and tier",
            cache_entries.clone(),
        );
        let cache_bytes = Family::<CacheTierLabels, Gauge>::default();
        registry.register(
            "cache_bytes",
            "Bytes stored (bodies, headers and overhead), by cache and tier",
            cache_bytes.clone(),
        );
        let cache_evictions = Family::<CacheTierLabels, Counter>::default();
        registry.register(
            "cache_evictions",
            "Entries pushed out for room, by cache and tier",
            cache_evictions.clone(),
        );
        let access_log_dropped = Family::<DestinationLabel, Counter>::default();
        registry.register(
            "access_log_dropped",
            "Access-log lines dropped because the writer fell behind",
            access_log_dropped.clone(),
        );
        registry.register("requests", "Requests answered", requests.clone());
        registry.register(
            "request_duration_seconds",
            "Time from request to the end of the response body, by route",
            request_duration.clone(),
        );
        registry.register(
            "upstream_duration_seconds",
            "Time from sending to an upstream to its response headers",
            upstream_duration.clone(),
        );
        registry.register(
            "connections_active",
            "Open client connections",
            connections_active.clone(),
        );
        registry.register(
            "connections_refused",
            "Client connections closed on accepting, by the per-client cap that refused them",
            connections_refused.clone(),
        );
        registry.register(
            "client_timeouts",
            "Requests answered 408 because the client sent its body too slowly, by the limit it failed",
            client_timeouts.clone(),
        );
        registry.register(
            "http2_floods",
            "HTTP/2 connections sent GOAWAY ENHANCE_YOUR_CALM for crossing a flood limit, by frame type",
            http2_floods.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads by result",
            config_reloads.clone(),
        );
        let consumers = Arc::new(ConsumerMetrics::default());
        registry.register_collector(Box::new(consumers.clone()));
        Metrics {
            consumers,
            registry,
            requests,
            request_duration,
            upstream_duration,
            connections_active,
            connections_refused,
            client_timeouts,
            http2_floods,
            upstream_target_healthy,
            config_reloads,
            retries,
            circuit_open,
            rate_limited,
            auth_failures,
            rate_limit_store_errors,
            compressed,
            cache_requests,
            cache_entries,
            cache_bytes,
            cache_evictions,
            access_log_dropped,
        }
    }

    /// The handles one route's requests record into, resolved once per
    /// route and snapshot.
    pub fn route(&self, route: Arc<str>, consumers: &[Arc<ConsumerSeries>]) -> RouteMetrics {
        RouteMetrics {
            consumers: self.consumers.route_counts(&route, consumers),
            duration: self.request_duration.get_or_create_owned(&RouteLabel {
                route: route.clone(),
            }),
            route,
            requests: std::sync::RwLock::new(Vec::new()),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// One route's metrics: its duration histogram and the
/// `portcullis_requests_total` counters its requests have used so far.
///
/// A route sees few label combinations (its listeners × its upstreams × the
/// statuses it answers), so they sit in a short list compared by pointer:
/// a request finds its counter without hashing the labels, under a read
/// lock that writers take only for a combination never seen before.
pub struct RouteMetrics {
    /// The route's name (its label value).
    route: Arc<str>,
    /// `portcullis_request_duration_seconds{route}`.
    pub duration: Histogram,
    requests: std::sync::RwLock<Vec<KnownCounter>>,
    /// Its requests by consumer slot (the last is `other`).
    consumers: Box<[Arc<RouteConsumerCounts>]>,
}

/// A `requests_total` counter and its listener, upstream and status.
type KnownCounter = (Arc<str>, Arc<str>, u16, Counter);

impl RouteMetrics {
    /// The per-consumer counters of consumer slot `slot` (`other` for a
    /// slot past the configured ones).
    pub fn consumer(&self, slot: usize) -> Option<&RouteConsumerCounts> {
        self.consumers
            .get(slot)
            .or_else(|| self.consumers.last())
            .map(|c| &**c)
    }

    /// The `requests_total` counter for a request on `listener` to
    /// `upstream` answered with `status`.
    pub fn requests(
        &self,
        metrics: &Metrics,
        listener: &Arc<str>,
        upstream: &Arc<str>,
        status: u16,
    ) -> Counter {
        let same = |(l, u, s, _): &&KnownCounter| {
            *s == status && Arc::ptr_eq(l, listener) && Arc::ptr_eq(u, upstream)
        };
        {
            let known = match self.requests.read() {
                Ok(k) => k,
                Err(p) => p.into_inner(),
            };
            if let Some((.., counter)) = known.iter().find(same) {
                return counter.clone();
            }
        }
        let counter = metrics.requests.get_or_create_owned(&RequestLabels {
            listener: listener.clone(),
            route: self.route.clone(),
            upstream: upstream.clone(),
            status,
        });
        let mut known = match self.requests.write() {
            Ok(k) => k,
            Err(p) => p.into_inner(),
        };
        // Label values that are equal but not the same allocation (another
        // snapshot's names) would otherwise pile up: the list stays bounded
        // by the combinations that exist.
        if known.len() < 256 && !known.iter().any(|e| same(&e)) {
            known.push((listener.clone(), upstream.clone(), status, counter.clone()));
        }
        counter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_counters_are_the_families_counters() {
        let metrics = Metrics::new();
        let route = metrics.route(Arc::from("r"), &[]);
        let (web, app) = (Arc::from("web"), Arc::from("app"));
        route.requests(&metrics, &web, &app, 200).inc();
        route.requests(&metrics, &web, &app, 200).inc();
        route.requests(&metrics, &web, &app, 502).inc();
        route.requests(&metrics, &web, &empty_label(), 404).inc();
        let text = metrics.encode();
        for line in [
            r#"portcullis_requests_total{listener="web",route="r",upstream="app",status="200"} 2"#,
            r#"portcullis_requests_total{listener="web",route="r",upstream="app",status="502"} 1"#,
            r#"portcullis_requests_total{listener="web",route="r",upstream="",status="404"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        // A reload's route object counts on in the same series.
        let again = metrics.route(Arc::from("r"), &[]);
        again.requests(&metrics, &web, &app, 200).inc();
        assert!(metrics.encode().contains(
            r#"portcullis_requests_total{listener="web",route="r",upstream="app",status="200"} 3"#
        ));
    }
}
