//! portcullis: a reverse proxy, load balancer and API gateway in one binary.
//!
//! Data flows one way: a configuration file is loaded into a typed model
//! ([`config::model`]), validated, and compiled into an immutable
//! [`config::Snapshot`]. The data plane ([`proxy::pipeline`]) reads the current
//! snapshot once per request; a reload builds a new snapshot and swaps it whole.

pub mod admin;
pub mod compile;
pub mod config;
pub mod demo;
pub mod gateway;
pub mod http;
pub mod kept;
pub mod l4;
pub mod net;
pub mod observe;
pub mod policy;
pub mod proxy;
pub mod route;
pub mod server;
pub mod upstream;

/// Locks `m`, recovering from a poisoned lock: every mutex in portcullis
/// guards a map, a list or a buffer that a panic cannot leave half-written.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Read-locks `l`, recovering from a poisoned lock (as [`lock`]).
pub(crate) fn read<T>(l: &std::sync::RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

/// Milliseconds on the process's one coarse clock (from its first use),
/// which idle sweeps, flood counts and throttled logs share.
pub fn now_ms() -> u64 {
    static EPOCH: std::sync::LazyLock<std::time::Instant> =
        std::sync::LazyLock::new(std::time::Instant::now);
    EPOCH.elapsed().as_millis() as u64
}

/// Write-locks `l`, recovering from a poisoned lock (as [`lock`]).
pub(crate) fn write<T>(l: &std::sync::RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}
