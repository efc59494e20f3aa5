//! Log lines that an attack cannot multiply: one line per period for an
//! event however often it happens, with the count of those left out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::now_ms;

/// One event's log, written at most once per period.
pub struct Throttled {
    period_ms: u64,
    /// When a line was last written ([`now_ms`] + 1, so 0 means never).
    last_ms: AtomicU64,
    /// Occurrences since the last line.
    unlogged: AtomicU64,
}

impl Throttled {
    /// A log written at most once every `period`.
    pub const fn new(period: Duration) -> Throttled {
        Throttled {
            period_ms: period.as_millis() as u64,
            last_ms: AtomicU64::new(0),
            unlogged: AtomicU64::new(0),
        }
    }

    /// Counts an occurrence; when a line is due, the number of occurrences
    /// it stands for (this one included). Lock-free: racing callers agree
    /// on one of them writing the line.
    pub fn due(&self) -> Option<u64> {
        self.due_at(now_ms() + 1)
    }

    fn due_at(&self, now: u64) -> Option<u64> {
        let last = self.last_ms.load(Ordering::Relaxed);
        if last != 0 && now < last.saturating_add(self.period_ms) {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.last_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .ok()?;
        Some(self.unlogged.swap(0, Ordering::Relaxed) + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_counts_what_it_stands_for() {
        let log = Throttled::new(Duration::from_secs(10));
        assert_eq!(log.due_at(1), Some(1));
        for t in 2..100 {
            assert_eq!(log.due_at(t), None);
        }
        assert_eq!(log.due_at(10_000), None);
        assert_eq!(log.due_at(10_001), Some(100));
        assert_eq!(log.due_at(10_002), None);
    }
}
