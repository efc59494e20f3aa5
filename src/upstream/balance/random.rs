//! Weighted random: each pick draws a target with probability proportional
//! to its weight. No shared state at all, so it scales across many gateway
//! instances that cannot coordinate a round-robin sequence, and its shares
//! converge to the weights whatever the traffic pattern.

use super::draw::Shares;
use super::{Balancer, PickContext};

/// Weighted random choice over target indices.
#[derive(Debug)]
pub struct Random {
    shares: Shares,
}

impl Random {
    /// A balancer for targets with these weights (0 means never picked
    /// unless every weight is 0).
    pub fn new(weights: &[u32]) -> Random {
        Random {
            shares: Shares::new(weights),
        }
    }
}

impl Balancer for Random {
    fn pick(&self, _ctx: &PickContext, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
        self.shares.draw(eligible, None)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_shares, proportional};
    use super::*;

    #[test]
    fn shares_follow_weights() {
        // 100,000 picks: a share's standard deviation is at most 0.16 points;
        // the 1-point tolerance is over 6 deviations.
        let r = Random::new(&[5, 3, 2]);
        let mut counts = [0; 3];
        for _ in 0..100_000 {
            counts[r.pick(&PickContext::default(), &|_| true).unwrap()] += 1;
        }
        assert_shares(&counts, &proportional(&[5, 3, 2]), 0.01);
    }

    #[test]
    fn ineligible_targets_are_skipped_and_the_rest_keep_their_ratio() {
        let r = Random::new(&[2, 1, 1]);
        let mut counts = [0; 3];
        for _ in 0..100_000 {
            counts[r.pick(&PickContext::default(), &|i| i != 1).unwrap()] += 1;
        }
        assert_eq!(counts[1], 0);
        assert_shares(&counts, &[2.0 / 3.0, 0.0, 1.0 / 3.0], 0.01);
        assert_eq!(r.pick(&PickContext::default(), &|_| false), None);
    }

    #[test]
    fn zero_weight_is_never_picked() {
        let r = Random::new(&[0, 1]);
        for _ in 0..1000 {
            assert_eq!(r.pick(&PickContext::default(), &|_| true), Some(1));
        }
    }
}
