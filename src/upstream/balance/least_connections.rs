//! Least connections: the target with the fewest in-flight requests (or L4
//! connections) relative to its weight. It adapts to targets that slow down,
//! since their requests pile up, and suits long or uneven requests.
//!
//! Ties, which are the rule when traffic is light and every target is idle,
//! are broken at random in proportion to weight, so equal targets share the
//! load and light traffic still follows the weights rather than always going
//! to the first target.

use std::sync::Arc;

use super::draw::{Shares, below};
use super::{Balancer, PickContext, Weighted};
use crate::upstream::target::TargetState;

/// Fewest in-flight requests per unit of weight.
#[derive(Debug)]
pub struct LeastConnections {
    shares: Shares,
    states: Box<[Arc<TargetState>]>,
}

impl LeastConnections {
    /// A balancer over `targets`.
    pub fn new(targets: &[Weighted]) -> LeastConnections {
        LeastConnections {
            shares: Shares::new(&targets.iter().map(|t| t.weight).collect::<Vec<_>>()),
            states: targets.iter().map(|t| t.state.clone()).collect(),
        }
    }
}

impl Balancer for LeastConnections {
    fn pick(&self, _ctx: &PickContext, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
        // (index, in-flight, weight) of the best so far, and the total weight
        // of the targets tied with it.
        let mut best: Option<(usize, u64, u64)> = None;
        let mut tied_weight = 0u64;
        for (i, state) in self.states.iter().enumerate() {
            let weight = u64::from(self.shares.weight(i));
            if weight == 0 || !eligible(i) {
                continue;
            }
            let load = u64::from(state.in_flight());
            let Some((_, best_load, best_weight)) = best else {
                best = Some((i, load, weight));
                tied_weight = weight;
                continue;
            };
            // load / weight < best_load / best_weight, without division.
            let (mine, theirs) = (load * best_weight, best_load * weight);
            if mine < theirs {
                best = Some((i, load, weight));
                tied_weight = weight;
            } else if mine == theirs {
                // Weighted reservoir sampling: after the scan, each tied
                // target has won with probability weight / tied weight.
                tied_weight += weight;
                if below(tied_weight) < weight {
                    best = Some((i, load, weight));
                }
            }
        }
        best.map(|(i, _, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_shares, proportional, targets};
    use super::*;
    use crate::upstream::target::InFlight;

    const CTX: PickContext = PickContext { hash: 0 };

    #[test]
    fn idle_targets_share_by_weight() {
        // Every target idle, so every pick is a tie: 100,000 picks, a share's
        // standard deviation is at most 0.16 points; tolerance 1 point.
        let lc = LeastConnections::new(&targets(&[5, 3, 2]));
        let mut counts = [0; 3];
        for _ in 0..100_000 {
            counts[lc.pick(&CTX, &|_| true).unwrap()] += 1;
        }
        assert_shares(&counts, &proportional(&[5, 3, 2]), 0.01);
    }

    #[test]
    fn load_settles_in_proportion_to_weight() {
        // Requests that never finish: each pick goes where in-flight / weight
        // is lowest, so after 600 picks the loads are exactly 300/200/100.
        let t = targets(&[3, 2, 1]);
        let lc = LeastConnections::new(&t);
        let mut held: Vec<InFlight> = Vec::new();
        for _ in 0..600 {
            let i = lc.pick(&CTX, &|_| true).unwrap();
            held.push(t[i].state.lease());
        }
        let loads: Vec<u32> = t.iter().map(|t| t.state.in_flight()).collect();
        assert_eq!(loads, vec![300, 200, 100]);
    }

    #[test]
    fn the_least_loaded_target_wins() {
        let t = targets(&[1, 1, 1]);
        let lc = LeastConnections::new(&t);
        let _a = [t[0].state.lease(), t[0].state.lease()];
        let _b = t[1].state.lease();
        for _ in 0..100 {
            assert_eq!(lc.pick(&CTX, &|_| true), Some(2));
        }
        // Among the two loaded ones, the lighter.
        assert_eq!(lc.pick(&CTX, &|i| i != 2), Some(1));
    }

    #[test]
    fn ineligible_and_zero_weight_targets_are_skipped() {
        let t = targets(&[1, 0, 1]);
        let lc = LeastConnections::new(&t);
        let _busy = t[2].state.lease();
        for _ in 0..100 {
            assert_eq!(lc.pick(&CTX, &|i| i != 0), Some(2));
        }
        assert_eq!(lc.pick(&CTX, &|i| i == 1), None);
        assert_eq!(lc.pick(&CTX, &|_| false), None);
    }
}
