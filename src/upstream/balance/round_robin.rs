//! Smooth weighted round robin, as nginx does it: weights 5,1,1 give
//! a a b a c a a rather than a a a a a b c, so no target gets a burst.
//!
//! The sequence is computed once per configuration; one atomic counter walks
//! it, so every worker thread shares a single sequence without a lock.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Balancer, PickContext};

/// Longest precomputed sequence; larger weight sums are scaled down to fit.
const MAX_SEQUENCE: u64 = 4096;

/// A shared weighted round-robin sequence over target indices.
#[derive(Debug)]
pub struct RoundRobin {
    sequence: Vec<usize>,
    next: AtomicUsize,
}

impl RoundRobin {
    /// Builds the sequence for targets with these weights (0 means never picked
    /// unless every weight is 0).
    pub fn new(weights: &[u32]) -> RoundRobin {
        let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
        let scaled: Vec<i64> = if total == 0 {
            vec![1; weights.len()]
        } else if total > MAX_SEQUENCE {
            weights
                .iter()
                .map(|w| {
                    let s = u64::from(*w) * MAX_SEQUENCE / total;
                    i64::try_from(s.max(u64::from(*w > 0))).unwrap_or(i64::MAX)
                })
                .collect()
        } else {
            weights.iter().map(|w| i64::from(*w)).collect()
        };
        let sum: i64 = scaled.iter().sum();
        let mut current = vec![0i64; scaled.len()];
        let mut sequence = Vec::with_capacity(usize::try_from(sum).unwrap_or(0));
        for _ in 0..sum {
            let mut best = 0;
            for i in 0..scaled.len() {
                current[i] += scaled[i];
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= sum;
            sequence.push(best);
        }
        RoundRobin {
            sequence,
            next: AtomicUsize::new(0),
        }
    }

    /// Index of the next target; `None` when there are no targets.
    pub fn next(&self) -> Option<usize> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.sequence
            .get(n.checked_rem(self.sequence.len())?)
            .copied()
    }
}

impl Balancer for RoundRobin {
    fn pick(&self, _ctx: &PickContext, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
        // A skipped target's slot is consumed from the shared sequence, so the
        // remaining targets keep their relative shares (a local scan from one
        // position would hand the skipped share to whichever target follows).
        (0..self.sequence.len())
            .map_while(|_| self.next())
            .find(|&t| eligible(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_sequence_spreads_the_heavy_target() {
        let rr = RoundRobin::new(&[5, 1, 1]);
        let seq: Vec<usize> = (0..7).map(|_| rr.next().unwrap()).collect();
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn shares_follow_weights() {
        // One shared sequence: over whole cycles the shares are exact
        // (tolerance 0).
        let rr = RoundRobin::new(&[2, 1]);
        let mut counts = [0; 2];
        for _ in 0..300 {
            counts[rr.next().unwrap()] += 1;
        }
        assert_eq!(counts, [200, 100]);
    }

    #[test]
    fn huge_weights_are_scaled_and_keep_every_target() {
        let rr = RoundRobin::new(&[1_000_000, 1]);
        let mut counts = [0; 2];
        for _ in 0..4096 {
            counts[rr.next().unwrap()] += 1;
        }
        assert!(counts[1] >= 1);
        assert!(counts[0] > 4000);
    }

    #[test]
    fn ineligible_targets_are_skipped_and_the_rest_keep_their_shares() {
        let rr = RoundRobin::new(&[2, 1, 1]);
        let ctx = PickContext::default();
        let mut counts = [0; 3];
        for _ in 0..400 {
            counts[rr.pick(&ctx, &|i| i != 1).unwrap()] += 1;
        }
        assert_eq!(counts[1], 0);
        assert!((250..=285).contains(&counts[0]), "{counts:?}");
        assert!(rr.pick(&ctx, &|_| false).is_none());
    }

    #[test]
    fn zero_weights_everywhere_still_pick() {
        let rr = RoundRobin::new(&[0, 0]);
        let a = rr.next().unwrap();
        let b = rr.next().unwrap();
        assert_ne!(a, b);
    }
}
