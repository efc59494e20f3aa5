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
    /// `portcullis_upstream_target_healthy{upstream,target}`.
    pub upstream_target_healthy: Family<TargetLabel, Gauge>,
    /// `portcullis_config_reloads_total{result}`.
    pub config_reloads: Family<ResultLabel, Counter>,
    /// `portcullis_retries_total{upstream}`.
    pub retries: Family<UpstreamLabel, Counter>,
    /// `portcullis_circuit_open_total{upstream}`.
    pub circuit_open: Family<UpstreamLabel, Counter>,
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
            "config_reloads",
            "Configuration reloads by result",
            config_reloads.clone(),
        );
        Metrics {
            registry,
            requests,
            request_duration,
            upstream_duration,
            connections_active,
            upstream_target_healthy,
            config_reloads,
            retries,
            circuit_open,
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
