//! Balancing algorithms, one per file.

mod round_robin;

pub use round_robin::RoundRobin;
