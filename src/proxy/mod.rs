//! The data plane for HTTP: the request pipeline, forwarding to upstreams,
//! header hygiene, direct responses, static files and gateway-made errors.

pub mod body;
pub mod context;
pub mod forward;
pub mod headers;
#[cfg(test)]
mod phase_tests;
pub mod pipeline;
pub mod problem;
pub mod rewrite;
pub mod static_files;
