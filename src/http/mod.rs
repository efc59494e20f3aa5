//! HTTP pieces every layer above shares: the body type, the HTTP/1 codec,
//! header helpers, problem+json answers and upgraded connections.

pub mod body;
pub mod codec;
pub mod conditional;
pub mod h2_guard;
pub mod headers;
pub mod pace;
pub mod problem;
pub mod upgrade;
