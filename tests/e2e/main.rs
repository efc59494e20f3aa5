//! End-to-end tests over real sockets: the gateway on port 0, real backends
//! (small hyper servers started by each test), real clients. One test binary
//! keeps build and link time low; each file covers one documented area.

mod access_log;
mod admin;
mod check_cli;
mod common;
mod forwarding;
mod limits;
mod policies;
mod reload;
mod routing;
mod smoke;
mod static_files;
mod tls;
