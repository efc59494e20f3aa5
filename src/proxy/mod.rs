//! The data plane for HTTP: the request pipeline, forwarding to upstreams,
//! header hygiene, direct responses, static files and gateway-made errors.

pub mod connection;
pub mod forward;
#[cfg(test)]
mod phase_tests;
pub mod pipeline;
pub mod record;
pub mod rewrite;
pub mod snapshot;
pub mod static_files;
