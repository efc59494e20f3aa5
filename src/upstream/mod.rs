//! Upstreams: named groups of targets, how one is picked, and the pooled
//! HTTP clients that carry requests to them.
//!
//! An [`Upstream`] is rebuilt with each configuration snapshot, but what must
//! outlive a snapshot lives elsewhere: each target's health, load and
//! keep-alive connections in a [`TargetState`] kept by the runtime's
//! registry, and plain-HTTP clients in [`ClientCache`], so a reload keeps
//! warm connections and health verdicts.

pub mod balance;
pub mod breaker;
pub mod client;
pub mod dns;
pub mod hash_key;
pub mod health;
pub mod http1;
pub mod outlier;
pub mod pool;
pub mod retry;
pub mod target;

use std::time::Duration;

use balance::{Balancer, PickContext};
pub use client::{ClientCache, UpstreamClient};
pub use hash_key::HashKey;
pub use target::{InFlight, Target, TargetState, TargetStates};

/// How an upstream treats raw (L4) connections to its targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L4Settings {
    /// Longest wait for a target to accept a connection.
    pub connect_timeout: Duration,
    /// A connection (or UDP session) with no bytes either way for this long is closed.
    pub idle_timeout: Duration,
    /// PROXY protocol header sent to the target before any payload byte.
    pub proxy_protocol: Option<crate::net::proxy_protocol::Version>,
}

impl Default for L4Settings {
    fn default() -> Self {
        L4Settings {
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            proxy_protocol: None,
        }
    }
}

/// Why the gateway made the answer instead of relaying an upstream's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamError {
    /// Every target was unhealthy or ejected (503).
    NoHealthyTarget,
    /// The circuit breaker refused the request (503).
    CircuitOpen,
    /// No connection could be opened (502, or 504 on a connect timeout).
    ConnectFailed,
    /// No response head within `response_header` (504).
    TimedOut,
    /// The connection broke before a complete response head (502).
    ConnectionFailed,
    /// The target switched to a protocol the request did not offer (502).
    ProtocolSwitch,
}

impl UpstreamError {
    /// The reason as logs and metrics name it.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamError::NoHealthyTarget => "no_healthy_target",
            UpstreamError::CircuitOpen => "circuit_open",
            UpstreamError::ConnectFailed => "connect_failed",
            UpstreamError::TimedOut => "timed_out",
            UpstreamError::ConnectionFailed => "connection_failed",
            UpstreamError::ProtocolSwitch => "protocol_switch",
        }
    }
}

/// What to do when no target is available (every one unhealthy or ejected).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WhenAllDown {
    /// Answer 503 at once.
    #[default]
    Fail,
    /// Use every target anyway, as if all were healthy.
    Any,
}

/// A compiled upstream.
pub struct Upstream {
    /// The configured name.
    pub name: std::sync::Arc<str>,
    /// The targets in file order.
    pub targets: Vec<Target>,
    /// Picks a target for each request.
    pub balancer: Box<dyn Balancer>,
    /// What a hashing balancer hashes.
    pub hash_key: Option<HashKey>,
    /// Policy when no target is available.
    pub when_all_down: WhenAllDown,
    /// Pooled client for this upstream's settings.
    pub client: UpstreamClient,
    /// Longest wait for a connection (also the longest wait for a circuit-breaker slot).
    pub connect_timeout: Duration,
    /// Longest wait from sending the request to its response headers.
    pub response_header_timeout: Duration,
    /// Whether requests go out as HTTP/2.
    pub http2: bool,
    /// Passive ejection of failing targets, when configured.
    pub outlier: Option<outlier::OutlierDetection>,
    /// Retry rules, when configured.
    pub retries: Option<retry::RetryPolicy>,
    /// Caps on requests in flight, when configured.
    pub breaker: Option<breaker::CircuitBreaker>,
    /// `portcullis_retries_total{upstream}`, resolved once.
    pub retries_total: prometheus_client::metrics::counter::Counter,
    /// `portcullis_circuit_open_total{upstream}`, resolved once.
    pub circuit_open_total: prometheus_client::metrics::counter::Counter,
    /// Active health checks, when configured.
    pub health_check: Option<health::HealthCheck>,
    /// `portcullis_upstream_duration_seconds{upstream}`, resolved once.
    pub duration: prometheus_client::metrics::histogram::Histogram,
    /// Connect and idle timeouts and the PROXY header for raw (L4) connections.
    pub l4: L4Settings,
}

impl Upstream {
    /// Chooses a target and counts the request against it. `tried` lists
    /// targets already used by this request: another one is preferred, the
    /// same one only when nothing else is available. `None` means no target
    /// may be used (all down and `when_all_down: fail`).
    pub fn select(&self, ctx: &PickContext, tried: &[usize]) -> Option<(usize, InFlight)> {
        let available = |i: usize| self.targets[i].state.available();
        let chosen = self
            .balancer
            .pick(ctx, &|i| available(i) && !tried.contains(&i))
            .or_else(|| self.balancer.pick(ctx, &available))
            .or_else(|| match self.when_all_down {
                WhenAllDown::Any => self.balancer.pick(ctx, &|_| true),
                WhenAllDown::Fail => None,
            })?;
        Some((chosen, self.targets[chosen].state.lease()))
    }

    /// Records the outcome of one exchange with `targets[index]` for outlier
    /// detection, logging an ejection.
    pub fn record_outcome(&self, index: usize, failed: bool) {
        let Some(outlier) = &self.outlier else {
            return;
        };
        if let Some(length) = outlier.record(&self.targets, index, failed) {
            tracing::warn!(
                upstream = %self.name,
                target = %self.targets[index].address,
                seconds = length.as_secs_f64(),
                "target ejected after consecutive failures"
            );
        }
    }

    /// Whether requests to this upstream go out as HTTP/2.
    pub fn client_is_http2(&self) -> bool {
        self.http2
    }
}
