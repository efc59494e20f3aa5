//! Per-consumer analytics: `portcullis_consumer_requests_total{consumer,
//! route,status_class}` and `portcullis_consumer_request_duration_seconds
//! {consumer}`, and each configured consumer's activity for the admin
//! API's consumer list (requests, last seen, rate-limit refusals).
//!
//! The request path takes no lock: each consumer's series and each
//! (consumer, route) pair's counters are atomics handed out when the
//! configuration is compiled (a route holds its pairs by the consumer's
//! slot). The map that owns them is locked only by a compile and by a
//! scrape. Cardinality is capped: the first `max_consumer_series`
//! consumers of the file have series of their own; the others, and
//! subjects of tokens that name no configured consumer, are counted as
//! `other`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;

/// The name counted for consumers past the cap and unconfigured ones.
pub const OTHER: &str = "other";

/// How many consumers get series of their own unless configured otherwise.
pub const DEFAULT_MAX_SERIES: usize = 1000;

/// Upper bounds of the duration buckets, in seconds: 0.5 ms doubling to
/// about 65 s (as `portcullis_request_duration_seconds`).
const BUCKETS: usize = 18;

fn bucket_bounds() -> [f64; BUCKETS] {
    let mut b = [0.0; BUCKETS];
    let mut v = 0.0005;
    for slot in &mut b {
        *slot = v;
        v *= 2.0;
    }
    b
}

/// One consumer's exported duration histogram (or `other`'s), kept
/// across reloads.
#[derive(Debug)]
pub struct ConsumerSeries {
    name: Arc<str>,
    count: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
    /// Sum of durations in microseconds.
    sum_micros: AtomicU64,
}

impl ConsumerSeries {
    /// A series no registry exports (for configurations only checked).
    pub fn detached(name: &str) -> Arc<ConsumerSeries> {
        Arc::new(ConsumerSeries::new(Arc::from(name)))
    }

    fn new(name: Arc<str>) -> ConsumerSeries {
        ConsumerSeries {
            name,
            count: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Notes one finished request that took `elapsed`.
    pub fn observe(&self, elapsed: Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        // Non-cumulative here; made cumulative when encoded.
        let i = bucket_bounds()
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS);
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    /// The name the series is exported under.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// What the admin API shows of one configured consumer (every one, past
/// the cap too), kept across reloads.
#[derive(Debug, Default)]
pub struct ConsumerActivity {
    requests: AtomicU64,
    rate_limited: AtomicU64,
    /// Unix milliseconds of the last request (0: never).
    last_seen_ms: AtomicU64,
}

impl ConsumerActivity {
    /// Notes one finished request.
    pub fn note_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.last_seen_ms.store(now, Ordering::Relaxed);
    }

    /// Notes a request a rate limit refused.
    pub fn note_rate_limited(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests finished so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Requests refused by a rate limit so far.
    pub fn rate_limited(&self) -> u64 {
        self.rate_limited.load(Ordering::Relaxed)
    }

    /// When the last request finished, if one has.
    pub fn last_seen(&self) -> Option<SystemTime> {
        match self.last_seen_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(UNIX_EPOCH + Duration::from_millis(ms)),
        }
    }
}

/// One (consumer, route) pair's requests by status class.
#[derive(Debug, Default)]
pub struct RouteConsumerCounts {
    by_class: [AtomicU64; 5],
}

impl RouteConsumerCounts {
    /// Counts a request answered with `status`.
    pub fn count(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
    }
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The series of every consumer, long-lived (held by `Metrics`).
#[derive(Debug, Default)]
pub struct ConsumerMetrics {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    activity: HashMap<Arc<str>, Arc<ConsumerActivity>>,
    series: HashMap<Arc<str>, Arc<ConsumerSeries>>,
    counts: HashMap<(Arc<str>, Arc<str>), Arc<RouteConsumerCounts>>,
}

impl ConsumerMetrics {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The series of `consumer` (made when new); a compile calls this once
    /// per consumer, never a request.
    pub fn series(&self, consumer: &str) -> Arc<ConsumerSeries> {
        let mut state = self.state();
        if let Some(s) = state.series.get(consumer) {
            return s.clone();
        }
        let name: Arc<str> = Arc::from(consumer);
        let s = Arc::new(ConsumerSeries::new(name.clone()));
        state.series.insert(name, s.clone());
        s
    }

    /// The activity of configured consumer `consumer` (made when new).
    pub fn activity(&self, consumer: &str) -> Arc<ConsumerActivity> {
        self.state()
            .activity
            .entry(Arc::from(consumer))
            .or_default()
            .clone()
    }

    /// The counters of `route` for each of `consumers` (by slot), made
    /// when new; a compile calls this once per route.
    pub fn route_counts(
        &self,
        route: &Arc<str>,
        consumers: &[Arc<ConsumerSeries>],
    ) -> Box<[Arc<RouteConsumerCounts>]> {
        let mut state = self.state();
        consumers
            .iter()
            .map(|c| {
                state
                    .counts
                    .entry((c.name.clone(), route.clone()))
                    .or_default()
                    .clone()
            })
            .collect()
    }

    /// Forgets series and counters no configuration holds any more (the
    /// running one still holds its own while a new one compiles).
    pub fn prune(&self) {
        let mut state = self.state();
        state.series.retain(|_, s| Arc::strong_count(s) > 1);
        state.activity.retain(|_, a| Arc::strong_count(a) > 1);
        state.counts.retain(|_, c| Arc::strong_count(c) > 1);
    }
}

impl Collector for ConsumerMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let state = self.state();
        // Sorted, so that scrapes list series in a stable order.
        let mut counts: Vec<_> = state.counts.iter().collect();
        counts.sort_by(|a, b| a.0.cmp(b.0));
        let mut family = encoder.encode_descriptor(
            "consumer_requests",
            "Requests answered, by consumer (capped; see docs), route and status class",
            None,
            MetricType::Counter,
        )?;
        for ((consumer, route), c) in counts {
            for (class, n) in CLASSES.iter().zip(&c.by_class) {
                let n = n.load(Ordering::Relaxed);
                if n == 0 {
                    continue;
                }
                let labels = [
                    ("consumer", &**consumer),
                    ("route", &**route),
                    ("status_class", *class),
                ];
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut series: Vec<_> = state.series.values().collect();
        series.sort_by(|a, b| a.name.cmp(&b.name));
        let mut family = encoder.encode_descriptor(
            "consumer_request_duration_seconds",
            "Time from request to the end of the response body, by consumer (capped; see docs)",
            None,
            MetricType::Histogram,
        )?;
        let bounds = bucket_bounds();
        for s in series {
            let count = s.count.load(Ordering::Relaxed);
            if count == 0 {
                continue;
            }
            let mut cumulative = 0;
            let mut buckets: Vec<(f64, u64)> = bounds
                .iter()
                .zip(&s.buckets)
                .map(|(bound, n)| {
                    cumulative += n.load(Ordering::Relaxed);
                    (*bound, cumulative)
                })
                .collect();
            buckets.push((f64::INFINITY, count.max(cumulative)));
            let sum = s.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
            family
                .encode_family(&[("consumer", &*s.name)])?
                .encode_histogram::<[(&str, &str); 1]>(
                    sum,
                    count.max(cumulative),
                    &buckets,
                    None,
                )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_land_in_their_class_and_bucket_and_encode() {
        let m = Arc::new(ConsumerMetrics::default());
        let acme = m.series("acme");
        let route: Arc<str> = Arc::from("api");
        let counts = m.route_counts(&route, std::slice::from_ref(&acme));
        counts[0].count(200);
        counts[0].count(204);
        counts[0].count(429);
        counts[0].count(99);
        acme.observe(Duration::from_millis(3));
        acme.observe(Duration::from_secs(100));
        let mut registry = prometheus_client::registry::Registry::with_prefix("portcullis");
        registry.register_collector(Box::new(m.clone()));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(
            out.contains(
                r#"portcullis_consumer_requests_total{consumer="acme",route="api",status_class="2xx"} 2"#
            ),
            "{out}"
        );
        assert!(out.contains(r#"status_class="4xx"} 1"#), "{out}");
        assert!(out.contains(r#"status_class="1xx"} 1"#), "{out}");
        assert!(
            !out.contains(r#"status_class="5xx""#),
            "zeros are left out: {out}"
        );
        assert!(
            out.contains(
                r#"portcullis_consumer_request_duration_seconds_bucket{le="0.004",consumer="acme"} 1"#
            ),
            "{out}"
        );
        assert!(
            out.contains(
                r#"portcullis_consumer_request_duration_seconds_count{consumer="acme"} 2"#
            ),
            "{out}"
        );
        let activity = m.activity("acme");
        assert!(activity.last_seen().is_none());
        activity.note_request();
        activity.note_rate_limited();
        assert_eq!((activity.requests(), activity.rate_limited()), (1, 1));
        assert!(activity.last_seen().is_some());
    }

    #[test]
    fn series_are_shared_by_name_and_pruned_once_unheld() {
        let m = ConsumerMetrics::default();
        let a = m.series("acme");
        assert!(Arc::ptr_eq(&a, &m.series("acme")));
        let route: Arc<str> = Arc::from("r");
        let counts = m.route_counts(&route, std::slice::from_ref(&a));
        m.prune();
        assert!(Arc::ptr_eq(&a, &m.series("acme")), "still held");
        drop((a, counts));
        m.prune();
        assert_eq!(m.state().series.len(), 0);
        assert_eq!(m.state().counts.len(), 0);
    }
}
