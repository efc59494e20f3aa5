//! Below HTTP: the byte streams connections are, the PROXY protocol, and
//! building TLS configurations.

pub mod proxy_protocol;
pub mod stream;
pub mod tls;
