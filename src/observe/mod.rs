//! Observability: Prometheus metrics (per-consumer analytics among them) and
//! the JSON access log.

pub mod access_log;
pub mod consumer_metrics;
pub mod metrics;
