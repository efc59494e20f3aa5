//! End-to-end tests over real sockets: the gateway on port 0, real backends
//! (small hyper servers started by each test), real clients. One test binary
//! keeps build and link time low; each file covers one documented area.

mod access_log;
mod admin;
mod aggregate;
mod balancing;
mod basic_auth;
mod cache;
mod cache_rules;
mod cache_tiers;
mod check_cli;
mod common;
mod compress;
mod consumers;
mod cors;
mod dns;
mod docs_examples;
mod examples;
mod external_auth;
mod forwarding;
mod health;
mod http1_desync;
mod http1_wire;
mod http2;
mod http2_conformance;
mod jwt;
mod l4;
mod limits;
mod openapi;
mod policies;
mod proxy_protocol;
mod rate_limit;
mod redirects;
mod reload;
mod resilience;
mod routing;
mod security;
mod shared_rate_limit;
mod smoke;
mod splits;
mod static_files;
mod tls;
mod transforms;
