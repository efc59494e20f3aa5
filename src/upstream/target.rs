//! Targets and their live state: in-flight requests, latency, health,
//! ejection and keep-alive connections. The state outlives configuration snapshots (it is kept in a
//! registry keyed by upstream and address), so a reload neither forgets that
//! a target is down nor resets its load figures.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::uri::Authority;

use super::pool::IdlePool;

/// One backend address of an upstream.
#[derive(Debug)]
pub struct Target {
    /// `IP:port` of the target (for a DNS name, one of its addresses).
    pub address: Arc<str>,
    /// The same, ready for request URIs.
    pub authority: Authority,
    /// The configured `host:port` this address was resolved from (DNS
    /// targets); its host is the TLS server name for the target.
    pub name: Option<Arc<str>>,
    /// Relative share of requests.
    pub weight: u32,
    /// Live state shared across snapshots.
    pub state: Arc<TargetState>,
}

/// Milliseconds since the process started, for cheap atomic deadlines.
fn now_ms() -> u64 {
    static START: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);
    START.elapsed().as_millis() as u64
}

/// Live state of one target.
#[derive(Debug)]
pub struct TargetState {
    in_flight: AtomicU32,
    /// Set by active health checks; true when there are none.
    active_healthy: AtomicBool,
    /// Passive (outlier) ejection deadline, in [`now_ms`] time; 0 = not ejected.
    ejected_until: AtomicU64,
    consecutive_failures: AtomicU32,
    ejections: AtomicU32,
    /// Exponentially weighted moving average of response latency, in microseconds.
    ewma_micros: AtomicU64,
    /// Keep-alive connections to the target.
    pub pool: Arc<IdlePool>,
}

/// The live state of every target by (upstream, address), kept across
/// reloads: the same object for as long as a snapshot keeps that target, so
/// health and load survive a reload.
#[derive(Default)]
pub struct TargetStates(
    std::sync::Mutex<std::collections::HashMap<(String, String), Arc<TargetState>>>,
);

impl TargetStates {
    /// The state of `address` in `upstream`, made on first use.
    pub fn get(&self, upstream: &str, address: &str) -> Arc<TargetState> {
        let mut map = crate::lock(&self.0);
        map.entry((upstream.to_string(), address.to_string()))
            .or_default()
            .clone()
    }

    /// Forgets the targets for which `keep(upstream, address)` is false.
    pub fn retain(&self, keep: impl Fn(&str, &str) -> bool) {
        crate::lock(&self.0).retain(|(upstream, address), _| keep(upstream, address));
    }
}

impl Default for TargetState {
    fn default() -> Self {
        TargetState {
            in_flight: AtomicU32::new(0),
            active_healthy: AtomicBool::new(true),
            ejected_until: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ewma_micros: AtomicU64::new(0),
            pool: Arc::default(),
        }
    }
}

/// Weight of the newest sample in the latency average.
const EWMA_ALPHA: f64 = 0.3;

impl TargetState {
    /// Requests (or L4 connections) currently using the target.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Average response latency in microseconds (0 before the first sample).
    pub fn latency_ewma_micros(&self) -> u64 {
        self.ewma_micros.load(Ordering::Relaxed)
    }

    /// Folds one latency sample into the average.
    pub fn observe_latency(&self, latency: Duration) {
        let sample = latency.as_micros().min(u128::from(u64::MAX)) as u64;
        // A lost update under contention only drops one sample: fine for an average.
        let old = self.ewma_micros.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample.max(1)
        } else {
            ((1.0 - EWMA_ALPHA) * old as f64 + EWMA_ALPHA * sample as f64).max(1.0) as u64
        };
        self.ewma_micros.store(new, Ordering::Relaxed);
    }

    /// Whether active health checks consider the target healthy.
    pub fn active_healthy(&self) -> bool {
        self.active_healthy.load(Ordering::Relaxed)
    }

    /// Records the verdict of active health checks.
    pub fn set_active_healthy(&self, healthy: bool) {
        self.active_healthy.store(healthy, Ordering::Relaxed);
    }

    /// Whether outlier detection has ejected the target right now.
    pub fn ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && now_ms() < until
    }

    /// Whether new requests may go to the target.
    pub fn available(&self) -> bool {
        self.active_healthy() && !self.ejected()
    }

    /// Times the target has been ejected so far.
    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Records a successful exchange: the failure streak ends.
    pub fn record_success(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// Records a failed exchange and returns the length of the failure streak.
    pub fn record_failure(&self) -> u32 {
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Ejects the target for `base` times the number of ejections so far
    /// (the first ejection lasts `base`), and resets the failure streak.
    pub fn eject(&self, base: Duration) -> Duration {
        let n = self.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let length = base.saturating_mul(n);
        let until = now_ms().saturating_add(length.as_millis() as u64).max(1);
        self.ejected_until.store(until, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        length
    }

    /// Takes a slot: the returned guard counts the target as in use until dropped.
    pub fn lease(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// Counts one request or connection against a target while it lives.
#[derive(Debug)]
pub struct InFlight(Arc<TargetState>);

impl InFlight {
    /// The target's state.
    pub fn state(&self) -> &Arc<TargetState> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_counts_in_flight_until_dropped() {
        let s = Arc::new(TargetState::default());
        let a = s.lease();
        let b = s.lease();
        assert_eq!(s.in_flight(), 2);
        drop(a);
        assert_eq!(s.in_flight(), 1);
        drop(b);
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn ejection_grows_with_each_ejection_and_expires() {
        let s = TargetState::default();
        assert!(s.available());
        assert_eq!(
            s.eject(Duration::from_millis(40)),
            Duration::from_millis(40)
        );
        assert!(s.ejected() && !s.available());
        std::thread::sleep(Duration::from_millis(60));
        assert!(!s.ejected());
        assert_eq!(
            s.eject(Duration::from_millis(40)),
            Duration::from_millis(80)
        );
        assert_eq!(s.ejections(), 2);
    }

    #[test]
    fn latency_average_moves_toward_new_samples() {
        let s = TargetState::default();
        s.observe_latency(Duration::from_millis(10));
        assert_eq!(s.latency_ewma_micros(), 10_000);
        for _ in 0..20 {
            s.observe_latency(Duration::from_millis(100));
        }
        assert!(s.latency_ewma_micros() > 95_000);
    }

    #[test]
    fn failure_streak_resets_on_success() {
        let s = TargetState::default();
        assert_eq!(s.record_failure(), 1);
        assert_eq!(s.record_failure(), 2);
        s.record_success();
        assert_eq!(s.record_failure(), 1);
    }
}
