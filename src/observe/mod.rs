//! Observability: Prometheus metrics (per-consumer analytics among them),
//! the JSON access log, and log lines throttled against floods.

pub mod access_log;
pub mod consumer_metrics;
pub mod metrics;
pub mod throttle;
