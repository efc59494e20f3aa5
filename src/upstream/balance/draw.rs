//! Weighted random draws shared by `random`, `p2c_ewma` and the tie-break of
//! `least_connections`.
//!
//! The generator is per thread (wyrand, seeded from the OS through
//! `RandomState`), so concurrent picks share no cache line and take no lock;
//! balancing needs speed and independence between threads, not secrecy.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

/// A per-thread seed: `RandomState` keys come from the OS.
fn seed() -> u64 {
    let mut h = std::hash::RandomState::new().build_hasher();
    h.write_u64(0x5eed);
    h.finish()
}

/// A uniformly distributed 64-bit number (wyrand).
pub(super) fn next_u64() -> u64 {
    STATE.with(|s| {
        let x = s.get().wrapping_add(0xa076_1d64_78bd_642f);
        s.set(x);
        let t = u128::from(x) * u128::from(x ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    })
}

/// A number in `0..n` (`n > 0`), by multiply-shift: no division, and a bias
/// of at most n / 2^64, far below anything a balancer could notice.
pub(super) fn below(n: u64) -> u64 {
    ((u128::from(next_u64()) * u128::from(n)) >> 64) as u64
}

/// Random draws before [`Shares::draw`] falls back to an exact scan: enough
/// that the scan runs only when most of the weight is ineligible.
const REJECTION_TRIES: usize = 4;

/// Targets' weights, ready for weighted draws.
#[derive(Debug)]
pub(super) struct Shares {
    /// Effective weight of each target (all 1 when every configured weight is 0).
    weights: Box<[u32]>,
    /// Running sums of `weights`, for a binary search by a random draw.
    cumulative: Box<[u64]>,
}

impl Shares {
    /// Shares for targets with these weights.
    pub(super) fn new(weights: &[u32]) -> Shares {
        let all_zero = weights.iter().all(|w| *w == 0);
        let weights: Box<[u32]> = weights
            .iter()
            .map(|w| if all_zero { 1 } else { *w })
            .collect();
        let cumulative = weights
            .iter()
            .scan(0u64, |sum, w| {
                *sum += u64::from(*w);
                Some(*sum)
            })
            .collect();
        Shares {
            weights,
            cumulative,
        }
    }

    /// Number of targets.
    pub(super) fn len(&self) -> usize {
        self.weights.len()
    }

    /// Effective weight of target `i` (0 when out of range).
    pub(super) fn weight(&self, i: usize) -> u32 {
        self.weights.get(i).copied().unwrap_or(0)
    }

    /// A target drawn with probability proportional to its weight among
    /// those that are `eligible` and not `exclude`; `None` when there is none
    /// of positive weight.
    pub(super) fn draw(
        &self,
        eligible: &dyn Fn(usize) -> bool,
        exclude: Option<usize>,
    ) -> Option<usize> {
        let total = self.cumulative.last().copied().unwrap_or(0);
        if total == 0 {
            return None;
        }
        // Rejection sampling keeps the exact weighted distribution over the
        // accepted targets and usually succeeds on the first draw.
        for _ in 0..REJECTION_TRIES {
            let r = below(total);
            let i = self.cumulative.partition_point(|&c| c <= r);
            if Some(i) != exclude && eligible(i) {
                return Some(i);
            }
        }
        let candidate = |i: usize| Some(i) != exclude && self.weights[i] > 0 && eligible(i);
        let sum: u64 = (0..self.len())
            .filter(|&i| candidate(i))
            .map(|i| u64::from(self.weights[i]))
            .sum();
        if sum == 0 {
            return None;
        }
        let mut r = below(sum);
        let mut last = None;
        for i in (0..self.len()).filter(|&i| candidate(i)) {
            let w = u64::from(self.weights[i]);
            if r < w {
                return Some(i);
            }
            r -= w;
            last = Some(i);
        }
        // Eligibility changed between the two scans (a health verdict
        // flipped): any target still eligible beats answering 503.
        last
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_shares, proportional};
    use super::*;

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut seen = [false; 7];
        for _ in 0..1000 {
            let r = below(7);
            assert!(r < 7);
            seen[r as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }

    #[test]
    fn draws_follow_weights_among_eligible_targets() {
        // 100,000 draws: one standard deviation of a share is at most 0.16
        // points, so 1 point of tolerance is over 6 deviations.
        let shares = Shares::new(&[5, 3, 2, 90]);
        let mut counts = [0; 4];
        for _ in 0..100_000 {
            counts[shares.draw(&|i| i != 3, None).unwrap()] += 1;
        }
        assert_eq!(counts[3], 0);
        assert_shares(&counts[..3], &proportional(&[5, 3, 2]), 0.01);
    }

    #[test]
    fn exclusion_and_zero_weights_are_honoured() {
        let shares = Shares::new(&[0, 1, 1]);
        for _ in 0..1000 {
            assert_eq!(shares.draw(&|_| true, Some(1)), Some(2));
        }
        assert_eq!(shares.draw(&|i| i == 0, None), None);
        let all_zero = Shares::new(&[0, 0]);
        assert_eq!(all_zero.weight(0), 1);
        assert!(all_zero.draw(&|_| true, None).is_some());
        assert_eq!(Shares::new(&[]).draw(&|_| true, None), None);
    }
}
