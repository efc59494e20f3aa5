//! The data plane for HTTP: the snapshot it serves from, the connection a
//! request came on, the request pipeline, forwarding to upstreams, static
//! files, aggregated calls, and recording each request when its answer ends.

pub mod aggregate;
pub mod connection;
pub mod forward;
#[cfg(test)]
mod phase_tests;
pub mod pipeline;
pub mod record;
pub mod refresh;
pub mod rewrite;
pub mod snapshot;
pub mod static_files;
