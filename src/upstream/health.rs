//! Active health checks: each target of an upstream with a `health_check` is
//! probed on an interval (HTTP request or TCP connect); `unhealthy_threshold`
//! failures in a row mark it unhealthy, `healthy_threshold` passes in a row
//! bring it back. The verdict lives in the target's [`TargetState`], which
//! balancers consult through `Upstream::select`.
//!
//! The checks themselves run in [`HealthChecks`], a registry kept by the
//! runtime outside snapshots: one tokio task per checked target, brought in
//! line with each installed snapshot by [`HealthChecks::sync`]. A reload that
//! keeps a target and its `health_check` keeps its task (and its streak and
//! schedule); the task only picks up the new client, so rotated TLS settings
//! apply to the next check.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::Authority;
use http::{HeaderValue, Method, Request, Uri, Version, header};
use http_body_util::BodyExt;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::client::UpstreamBody;
use super::pool::IdlePool;
use super::{TargetState, UpstreamClient};
use crate::lock;
use crate::observe::metrics::TargetLabel;

/// What a check does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckKind {
    /// GET `path` through the upstream's own client (same TLS and HTTP
    /// version as traffic); passes when the status is in `expect`.
    Http {
        /// Path and query to request.
        path: http::uri::PathAndQuery,
        /// Host header (default: the target's address).
        host: Option<HeaderValue>,
        /// Status codes that pass.
        expect: RangeInclusive<u16>,
    },
    /// Passes when a TCP connection opens.
    Tcp,
}

/// A compiled `health_check`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// What to probe.
    pub kind: CheckKind,
    /// Time between checks (before jitter).
    pub interval: Duration,
    /// Time one check may take.
    pub timeout: Duration,
    /// Passes in a row that make an unhealthy target healthy.
    pub healthy_threshold: u32,
    /// Failures in a row that make a healthy target unhealthy.
    pub unhealthy_threshold: u32,
}

/// Parses `"200-399"` or `"204"` into a status range.
pub fn parse_status_range(text: &str) -> Result<RangeInclusive<u16>, String> {
    let bad = || format!("`{text}` is not a status range; write it like \"200-399\" or \"200\"");
    let (lo, hi) = match text.split_once('-') {
        Some((a, b)) => (a.trim(), b.trim()),
        None => (text.trim(), text.trim()),
    };
    let lo: u16 = lo.parse().map_err(|_| bad())?;
    let hi: u16 = hi.parse().map_err(|_| bad())?;
    if !(100..=599).contains(&lo) || !(100..=599).contains(&hi) || lo > hi {
        return Err(bad());
    }
    Ok(lo..=hi)
}

/// The `User-Agent` of HTTP checks, so backends and their logs can tell
/// checks from traffic.
pub const USER_AGENT: &str = "portcullis-health-check";

/// Most body bytes an HTTP check reads. Reading the body to its end lets the
/// connection go back to the pool; past this much it is dropped instead, so
/// a huge health page costs one connection rather than a long read.
const MAX_DRAIN: usize = 64 * 1024;

/// Consecutive check results and the verdict they lead to: results that
/// agree with the verdict reset the count, and `unhealthy_threshold` failures
/// (or `healthy_threshold` passes) in a row flip it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Streak {
    healthy: bool,
    /// Results in a row that contradict the verdict.
    against: u32,
}

impl Streak {
    /// A streak with no results yet, starting from `healthy`.
    pub fn new(healthy: bool) -> Streak {
        Streak {
            healthy,
            against: 0,
        }
    }

    /// The current verdict.
    pub fn healthy(&self) -> bool {
        self.healthy
    }

    /// Records one result; returns the new verdict when this result flipped it.
    pub fn record(&mut self, passed: bool, check: &HealthCheck) -> Option<bool> {
        if passed == self.healthy {
            self.against = 0;
            return None;
        }
        self.against = self.against.saturating_add(1);
        let needed = if self.healthy {
            check.unhealthy_threshold
        } else {
            check.healthy_threshold
        };
        if self.against < needed {
            return None;
        }
        self.healthy = passed;
        self.against = 0;
        Some(passed)
    }
}

/// Why one check failed, for the log.
#[derive(Debug)]
enum Failure {
    /// No verdict within `timeout`.
    TimedOut,
    /// The connection could not be opened.
    Connect(String),
    /// The connection opened but the exchange failed.
    Request(String),
    /// The answer's status is outside `expect_status`.
    Status(u16),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::TimedOut => f.write_str("timed out"),
            Failure::Connect(e) => write!(f, "connect failed: {e}"),
            Failure::Request(e) => write!(f, "request failed: {e}"),
            Failure::Status(s) => write!(f, "status {s} is outside expect_status"),
        }
    }
}

/// What a check of one target needs from its upstream. Replaced in place on
/// reload, so a running check uses the newest client (TLS clients are rebuilt
/// on each reload to read rotated certificates).
#[derive(Clone)]
struct Probe {
    authority: Authority,
    client: UpstreamClient,
    /// The target's keep-alive connections, which checks share with traffic.
    pool: Arc<IdlePool>,
    http2: bool,
}

/// Runs `kind` once against the probe's target within `timeout`.
async fn check_once(kind: &CheckKind, timeout: Duration, probe: &Probe) -> Result<(), Failure> {
    let attempt = async {
        match kind {
            CheckKind::Http { path, host, expect } => {
                http_check(path, host.as_ref(), expect, probe).await
            }
            CheckKind::Tcp => tcp_check(&probe.authority).await,
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(Err(Failure::TimedOut))
}

/// `GET path` through the upstream's own client, so TLS, SNI and the HTTP
/// version are those of real traffic.
async fn http_check(
    path: &http::uri::PathAndQuery,
    host: Option<&HeaderValue>,
    expect: &RangeInclusive<u16>,
    probe: &Probe,
) -> Result<(), Failure> {
    let mut req = Request::new(crate::http::body::empty());
    *req.method_mut() = Method::GET;
    *req.uri_mut() = Uri::from(path.clone());
    *req.version_mut() = if probe.http2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    let host = match host {
        Some(h) => Some(h.clone()),
        None => HeaderValue::from_str(probe.authority.as_str()).ok(),
    };
    let headers = req.headers_mut();
    if let Some(host) = host {
        headers.insert(header::HOST, host);
    }
    headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
    // `None`: the check is the gateway's own connection, not a client's.
    let sent = probe
        .client
        .send(&probe.authority, &probe.pool, req, None)
        .await
        .map_err(|e| {
            if e.connect {
                Failure::Connect(e.detail)
            } else {
                Failure::Request(e.detail)
            }
        })?;
    let status = sent.response.status().as_u16();
    // A body read to its end gives its connection back to the pool.
    drain(sent.response.into_body()).await;
    if expect.contains(&status) {
        Ok(())
    } else {
        Err(Failure::Status(status))
    }
}

/// Reads and discards up to [`MAX_DRAIN`] bytes; a body error does not
/// change the verdict, which the status already gave.
async fn drain(mut body: UpstreamBody) {
    let mut read = 0;
    while read <= MAX_DRAIN {
        match body.frame().await {
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len()),
            _ => return,
        }
    }
}

/// Opens (and closes) a TCP connection to `host:port`, resolving names.
async fn tcp_check(authority: &Authority) -> Result<(), Failure> {
    tokio::net::TcpStream::connect(authority.as_str())
        .await
        .map(drop)
        .map_err(|e| Failure::Connect(e.to_string()))
}

/// A fraction in [0, 1), different on each call, from std's randomly keyed
/// hasher: jitter needs spread, not cryptographic quality.
fn random_fraction() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Up to 10% of `interval`, so that checks of many targets spread out
/// instead of all firing at the same instant.
fn jitter(interval: Duration) -> Duration {
    interval.mul_f64(0.1 * random_fraction())
}

/// The loop that checks one target.
struct Checker {
    upstream: Arc<str>,
    target: Arc<str>,
    check: HealthCheck,
    state: Arc<TargetState>,
    gauge: Gauge,
    /// Cleared (under the lock) when the registry retires this checker, so
    /// that a check finishing after that cannot overwrite a newer verdict.
    live: Arc<Mutex<bool>>,
}

impl Checker {
    /// Checks forever: the first check after a jitter of up to 10% of the
    /// interval, then one every `interval` plus jitter after the previous
    /// check ended.
    async fn run(self, mut probe: watch::Receiver<Probe>, initial: bool) {
        let mut streak = Streak::new(initial);
        let mut wait = jitter(self.check.interval);
        loop {
            tokio::time::sleep(wait).await;
            let current = probe.borrow_and_update().clone();
            let outcome = check_once(&self.check.kind, self.check.timeout, &current).await;
            if !self.apply(&mut streak, outcome.err()) {
                return;
            }
            wait = self.check.interval + jitter(self.check.interval);
        }
    }

    /// Folds one result into the streak and publishes a flipped verdict.
    /// Returns false once the checker was retired.
    fn apply(&self, streak: &mut Streak, failure: Option<Failure>) -> bool {
        let live = lock(&self.live);
        if !*live {
            return false;
        }
        match (streak.record(failure.is_none(), &self.check), failure) {
            (Some(true), _) => {
                self.state.set_active_healthy(true);
                self.gauge.set(1);
                tracing::info!(
                    upstream = %self.upstream,
                    target = %self.target,
                    passes = self.check.healthy_threshold,
                    "target passed its health checks; back in rotation"
                );
            }
            (Some(false), failure) => {
                self.state.set_active_healthy(false);
                self.gauge.set(0);
                tracing::warn!(
                    upstream = %self.upstream,
                    target = %self.target,
                    failures = self.check.unhealthy_threshold,
                    reason = %failure.map(|f| f.to_string()).unwrap_or_default(),
                    "target failed its health checks; no new requests go to it"
                );
            }
            (None, Some(failure)) => tracing::debug!(
                upstream = %self.upstream,
                target = %self.target,
                reason = %failure,
                "health check failed"
            ),
            (None, None) => {}
        }
        true
    }
}

/// The registry's handle on one running checker.
struct Running {
    check: HealthCheck,
    state: Arc<TargetState>,
    probe: watch::Sender<Probe>,
    live: Arc<Mutex<bool>>,
    task: JoinHandle<()>,
}

impl Running {
    /// Stops the checker for good: once this returns it changes no verdict,
    /// even if a check of it is finishing on another thread right now.
    fn retire(&self) {
        *lock(&self.live) = false;
        self.task.abort();
    }
}

/// Checked targets by (upstream, address).
type Key = (Arc<str>, Arc<str>);

#[derive(Default)]
struct Tasks {
    running: HashMap<Key, Running>,
    /// Set by [`HealthChecks::stop`]: no check starts again.
    stopped: bool,
}

/// Active health checks of every upstream in the installed snapshot: one
/// task per checked target, kept outside snapshots so that reloads neither
/// reset streaks nor double the checks.
pub struct HealthChecks {
    /// `portcullis_upstream_target_healthy{upstream,target}`.
    gauges: Family<TargetLabel, Gauge>,
    tasks: Mutex<Tasks>,
}

impl HealthChecks {
    /// An empty registry that reports verdicts in `gauges`.
    pub fn new(gauges: Family<TargetLabel, Gauge>) -> HealthChecks {
        HealthChecks {
            gauges,
            tasks: Mutex::new(Tasks::default()),
        }
    }

    /// Brings the checks in line with `upstreams`, those of the snapshot
    /// just installed: starts a task for each target of an upstream with a
    /// `health_check`, keeps (and hands the new client to) tasks whose target
    /// and `health_check` are unchanged, restarts those whose `health_check`
    /// changed (from the current verdict), and stops the rest, marking their
    /// targets healthy again since nothing checks them any more. Must run
    /// inside a tokio runtime; without one it starts nothing.
    pub fn sync<'a>(&self, upstreams: impl IntoIterator<Item = &'a Arc<super::Upstream>>) {
        let mut tasks = lock(&self.tasks);
        if tasks.stopped {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!("health checks need a tokio runtime; none were started");
            return;
        };
        let mut wanted = HashSet::new();
        for upstream in upstreams {
            let Some(check) = &upstream.health_check else {
                continue;
            };
            for target in &upstream.targets {
                let key: Key = (upstream.name.clone(), target.address.clone());
                let probe = Probe {
                    authority: target.authority.clone(),
                    client: upstream.client.clone(),
                    pool: target.state.pool.clone(),
                    http2: upstream.http2,
                };
                wanted.insert(key.clone());
                if let Some(r) = tasks.running.get(&key)
                    && r.check == *check
                    && Arc::ptr_eq(&r.state, &target.state)
                    && !r.task.is_finished()
                {
                    r.probe.send_replace(probe);
                    continue;
                }
                if let Some(old) = tasks.running.remove(&key) {
                    old.retire();
                }
                let initial = target.state.active_healthy();
                let gauge = self.gauges.get_or_create_owned(&TargetLabel {
                    upstream: key.0.clone(),
                    target: key.1.clone(),
                });
                gauge.set(i64::from(initial));
                let live = Arc::new(Mutex::new(true));
                let (probe_tx, probe_rx) = watch::channel(probe);
                let checker = Checker {
                    upstream: key.0.clone(),
                    target: key.1.clone(),
                    check: check.clone(),
                    state: target.state.clone(),
                    gauge,
                    live: live.clone(),
                };
                let task = runtime.spawn(checker.run(probe_rx, initial));
                tracing::debug!(upstream = %key.0, target = %key.1, "health checks started");
                tasks.running.insert(
                    key,
                    Running {
                        check: check.clone(),
                        state: target.state.clone(),
                        probe: probe_tx,
                        live,
                        task,
                    },
                );
            }
        }
        tasks.running.retain(|key, r| {
            if wanted.contains(key) {
                return true;
            }
            r.retire();
            r.state.set_active_healthy(true);
            self.gauges.remove(&TargetLabel {
                upstream: key.0.clone(),
                target: key.1.clone(),
            });
            tracing::debug!(upstream = %key.0, target = %key.1, "health checks stopped");
            false
        });
    }

    /// Stops every check for good (shutdown); verdicts stay as they are and
    /// later [`HealthChecks::sync`] calls start nothing.
    pub fn stop(&self) {
        let mut tasks = lock(&self.tasks);
        tasks.stopped = true;
        for (_, r) in tasks.running.drain() {
            r.retire();
        }
    }

    /// How many targets are being checked.
    pub fn checked_targets(&self) -> usize {
        lock(&self.tasks).running.len()
    }
}

impl Drop for HealthChecks {
    fn drop(&mut self) {
        // Tasks hold no reference to the registry, so without this they
        // would outlive it and keep probing.
        for r in lock(&self.tasks).running.values() {
            r.task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_ranges_parse() {
        assert_eq!(parse_status_range("200-399").unwrap(), 200..=399);
        assert_eq!(parse_status_range("204").unwrap(), 204..=204);
        assert!(parse_status_range("399-200").is_err());
        assert!(parse_status_range("abc").is_err());
        assert!(parse_status_range("700").is_err());
    }

    fn check(healthy_threshold: u32, unhealthy_threshold: u32) -> HealthCheck {
        HealthCheck {
            kind: CheckKind::Tcp,
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(50),
            healthy_threshold,
            unhealthy_threshold,
        }
    }

    /// Feeds `results` (true = pass) and returns the verdict after each one.
    fn verdicts(start: bool, c: &HealthCheck, results: &[bool]) -> Vec<bool> {
        let mut s = Streak::new(start);
        results
            .iter()
            .map(|&r| {
                s.record(r, c);
                s.healthy()
            })
            .collect()
    }

    #[test]
    fn unhealthy_after_unhealthy_threshold_failures_in_a_row() {
        let c = check(2, 3);
        let mut s = Streak::new(true);
        assert_eq!(s.record(false, &c), None);
        assert_eq!(s.record(false, &c), None);
        assert_eq!(s.record(false, &c), Some(false));
        assert!(!s.healthy());
        // Further failures confirm the verdict without flipping it again.
        assert_eq!(s.record(false, &c), None);
    }

    #[test]
    fn healthy_again_after_healthy_threshold_passes_in_a_row() {
        let c = check(2, 3);
        let mut s = Streak::new(false);
        assert_eq!(s.record(true, &c), None);
        assert_eq!(s.record(true, &c), Some(true));
        assert!(s.healthy());
        assert_eq!(s.record(true, &c), None);
    }

    #[test]
    fn a_contrary_result_restarts_the_count() {
        let c = check(2, 3);
        // Two failures, a pass, two failures: never three in a row.
        assert_eq!(
            verdicts(true, &c, &[false, false, true, false, false]),
            [true; 5]
        );
        assert_eq!(
            verdicts(true, &c, &[false, false, true, false, false, false]),
            [true, true, true, true, true, false]
        );
        // Recovering needs the passes in a row too.
        assert_eq!(
            verdicts(false, &c, &[true, false, true, true]),
            [false, false, false, true]
        );
    }

    #[test]
    fn thresholds_of_one_flip_on_each_contrary_result() {
        let c = check(1, 1);
        assert_eq!(
            verdicts(true, &c, &[false, true, false, false, true]),
            [false, true, false, false, true]
        );
    }

    #[test]
    fn jitter_stays_within_ten_percent_and_varies() {
        let interval = Duration::from_secs(10);
        let samples: Vec<Duration> = (0..200).map(|_| jitter(interval)).collect();
        assert!(samples.iter().all(|j| *j < Duration::from_secs(1)));
        let distinct: HashSet<_> = samples.iter().collect();
        assert!(distinct.len() > 100, "jitter barely varies: {distinct:?}");
    }
}
