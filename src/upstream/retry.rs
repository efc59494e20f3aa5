//! Retries: which failures are retried, how long to wait between attempts,
//! and a budget that caps retries at a share of recent requests so that
//! retrying cannot multiply an outage.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// A failure of one attempt, as retry rules name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The connection could not be opened.
    ConnectError,
    /// The connection broke before a complete response head arrived.
    Reset,
    /// No response head within `response_header`.
    Timeout,
    /// The upstream answered with this status.
    Status(u16),
}

/// A compiled `retries` section.
#[derive(Debug)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub attempts: u32,
    /// Base wait before the first retry; doubled for each further one.
    pub backoff: Duration,
    /// Retry connection failures.
    pub on_connect_error: bool,
    /// Retry broken connections.
    pub on_reset: bool,
    /// Retry response-header timeouts.
    pub on_timeout: bool,
    /// Retried status codes (`5xx` expands to 500–599).
    pub statuses: Vec<u16>,
    /// Retry methods that are not idempotent too.
    pub non_idempotent: bool,
    /// Largest request body kept in memory so that it can be sent again.
    pub max_body: u64,
    /// Shared allowance of retries.
    pub budget: RetryBudget,
}

impl RetryPolicy {
    /// Parses the `on` list; errors name the bad entry.
    pub fn conditions(on: &[String]) -> Result<(bool, bool, bool, Vec<u16>), String> {
        let (mut connect, mut reset, mut timeout, mut statuses) = (false, false, false, Vec::new());
        for item in on {
            match item.as_str() {
                "connect_error" => connect = true,
                "reset" => reset = true,
                "timeout" => timeout = true,
                "5xx" => statuses.extend(500..=599),
                code => match code.parse::<u16>() {
                    Ok(c) if (100..=599).contains(&c) => statuses.push(c),
                    _ => {
                        return Err(format!(
                            "`{code}` is not a retry condition; use connect_error, reset, timeout, 5xx or a status code like \"503\""
                        ));
                    }
                },
            }
        }
        statuses.sort_unstable();
        statuses.dedup();
        Ok((connect, reset, timeout, statuses))
    }

    /// Whether this failure is one the policy retries.
    pub fn retries(&self, failure: Failure) -> bool {
        match failure {
            Failure::ConnectError => self.on_connect_error,
            Failure::Reset => self.on_reset,
            Failure::Timeout => self.on_timeout,
            Failure::Status(s) => self.statuses.binary_search(&s).is_ok(),
        }
    }

    /// Wait before retry number `retry` (1-based): backoff × 2^(retry-1),
    /// with up to 50% random jitter so that clients do not retry in lockstep.
    pub fn delay(&self, retry: u32) -> Duration {
        let base = self
            .backoff
            .saturating_mul(1 << retry.saturating_sub(1).min(10));
        base.mul_f64(0.5 + 0.5 * random_fraction())
    }
}

/// A fraction in [0, 1) from the process's random hasher keys.
pub fn random_fraction() -> f64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// A token bucket in thousandths of a retry: every first attempt earns
/// `percent` × 10, every retry costs 1000. A starting balance lets a quiet
/// gateway retry at all; after that, retries stay within `percent` of
/// requests however long an outage lasts.
#[derive(Debug)]
pub struct RetryBudget {
    earn: i64,
    balance: AtomicI64,
}

/// Retries a fresh budget allows before earning any (thousandths).
const STARTING_BALANCE: i64 = 10 * 1000;
/// Most retries a budget can bank (thousandths).
const MAX_BALANCE: i64 = 100 * 1000;

impl RetryBudget {
    /// A budget of `percent` retries per hundred requests.
    pub fn new(percent: u32) -> RetryBudget {
        RetryBudget {
            earn: i64::from(percent.min(1000)) * 10,
            balance: AtomicI64::new(STARTING_BALANCE),
        }
    }

    /// Counts a first attempt.
    pub fn deposit(&self) {
        let _ = self
            .balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some((b + self.earn).min(MAX_BALANCE))
            });
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn withdraw(&self) -> bool {
        self.balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (b >= 1000).then_some(b - 1000)
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(on: &[&str]) -> RetryPolicy {
        let on: Vec<String> = on.iter().map(|s| s.to_string()).collect();
        let (c, r, t, statuses) = RetryPolicy::conditions(&on).unwrap();
        RetryPolicy {
            attempts: 2,
            backoff: Duration::from_millis(20),
            on_connect_error: c,
            on_reset: r,
            on_timeout: t,
            statuses,
            non_idempotent: false,
            max_body: 1024,
            budget: RetryBudget::new(20),
        }
    }

    #[test]
    fn conditions_select_what_is_retried() {
        let p = policy(&["connect_error", "503"]);
        assert!(p.retries(Failure::ConnectError));
        assert!(p.retries(Failure::Status(503)));
        assert!(!p.retries(Failure::Status(500)));
        assert!(!p.retries(Failure::Reset));
        assert!(policy(&["5xx"]).retries(Failure::Status(500)));
        assert!(RetryPolicy::conditions(&["sometimes".to_string()]).is_err());
    }

    #[test]
    fn backoff_doubles_with_jitter() {
        let p = policy(&[]);
        for _ in 0..50 {
            let d1 = p.delay(1);
            let d3 = p.delay(3);
            assert!(
                d1 >= Duration::from_millis(10) && d1 <= Duration::from_millis(20),
                "{d1:?}"
            );
            assert!(
                d3 >= Duration::from_millis(40) && d3 <= Duration::from_millis(80),
                "{d3:?}"
            );
        }
    }

    #[test]
    fn budget_caps_retries_at_the_configured_share() {
        let b = RetryBudget::new(20);
        // Spend the starting balance.
        while b.withdraw() {}
        let mut allowed = 0;
        for _ in 0..1000 {
            b.deposit();
            if b.withdraw() {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 200);
    }

    #[test]
    fn fresh_budget_allows_a_few_retries_before_any_traffic() {
        let b = RetryBudget::new(20);
        let n = (0..100).take_while(|_| b.withdraw()).count();
        assert_eq!(n, 10);
    }
}
