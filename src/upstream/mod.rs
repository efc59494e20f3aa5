//! Upstreams: named groups of targets, how one is picked, and the pooled
//! HTTP clients that carry requests to them.
//!
//! An [`Upstream`] is rebuilt with each configuration snapshot, but the
//! connection pools it uses live in [`ClientCache`], outside the snapshot, so
//! a reload keeps warm keep-alive connections.

pub mod balance;
pub mod client;

use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};

pub use client::{ClientCache, UpstreamClient};

/// One backend address of an upstream.
#[derive(Debug)]
pub struct Target {
    /// `host:port` as configured.
    pub address: Arc<str>,
    /// The same, ready for request URIs.
    pub authority: Authority,
    /// Relative share of requests.
    pub weight: u32,
}

/// A compiled upstream.
pub struct Upstream {
    /// The configured name.
    pub name: Arc<str>,
    /// The targets in file order.
    pub targets: Vec<Target>,
    /// Picks a target for each request.
    pub balancer: balance::RoundRobin,
    /// `http` or `https` to the targets.
    pub scheme: Scheme,
    /// Pooled client for this upstream's settings.
    pub client: UpstreamClient,
    /// Longest wait from sending the request to its response headers.
    pub response_header_timeout: Duration,
    /// Whether requests go out as HTTP/2.
    pub http2: bool,
    /// `portcullis_upstream_duration_seconds{upstream}`, resolved once.
    pub duration: prometheus_client::metrics::histogram::Histogram,
}

impl Upstream {
    /// The target for the next request.
    pub fn pick(&self) -> &Target {
        &self.targets[self.balancer.next()]
    }

    /// Whether requests to this upstream go out as HTTP/2.
    pub fn client_is_http2(&self) -> bool {
        self.http2
    }
}
