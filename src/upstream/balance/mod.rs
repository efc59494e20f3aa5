//! Balancing algorithms, one per file, behind one trait.
//!
//! A balancer is built once per configuration snapshot from the targets'
//! weights, addresses and live states, and shared by every worker thread:
//! picks take no lock and allocate nothing. `pick` takes an eligibility test
//! so that skipping unhealthy or ejected targets, and retrying on a target not
//! tried yet, need no special code in any algorithm.
//!
//! Adding an algorithm means one file here and one arm in [`build`].

mod consistent_hash;
mod draw;
mod least_connections;
mod p2c_ewma;
mod random;
mod round_robin;

use std::sync::Arc;

pub use consistent_hash::ConsistentHash;
pub use least_connections::LeastConnections;
pub use p2c_ewma::P2cEwma;
pub use random::Random;
pub use round_robin::RoundRobin;

use super::target::TargetState;

/// The balancing algorithms, as `balance:` names them in the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// Smooth weighted round robin.
    RoundRobin,
    /// Fewest in-flight requests relative to weight.
    LeastConnections,
    /// Weighted random.
    Random,
    /// Power of two choices on latency (EWMA) times load.
    P2cEwma,
    /// Consistent hash of the client IP.
    IpHash,
    /// Consistent hash of `hash_key`.
    ConsistentHash,
}

/// What a pick may depend on besides the targets' state.
#[derive(Clone, Copy, Debug, Default)]
pub struct PickContext {
    /// Hash of the request's key (client IP for `ip_hash`, `hash_key` for
    /// `consistent_hash`); 0 for algorithms that do not hash.
    pub hash: u64,
}

/// A balancing algorithm over a fixed list of targets.
pub trait Balancer: Send + Sync + std::fmt::Debug {
    /// Index of the chosen target among those for which `eligible` is true;
    /// `None` when no target is eligible.
    fn pick(&self, ctx: &PickContext, eligible: &dyn Fn(usize) -> bool) -> Option<usize>;
}

/// A target as balancers see it.
#[derive(Clone, Debug)]
pub struct Weighted {
    /// Relative share. A target of weight 0 is never chosen, unless every
    /// weight is 0: then all count as 1.
    pub weight: u32,
    /// The configured `host:port`: hashing balancers place a target by it,
    /// so a target keeps its keys whatever its position in the list.
    pub address: Arc<str>,
    /// Live load and latency figures.
    pub state: Arc<TargetState>,
}

/// Builds the balancer for `algorithm` over `targets`.
pub fn build(algorithm: Algorithm, targets: &[Weighted]) -> Box<dyn Balancer> {
    match algorithm {
        Algorithm::RoundRobin => Box::new(RoundRobin::new(
            &targets.iter().map(|t| t.weight).collect::<Vec<_>>(),
        )),
        Algorithm::LeastConnections => Box::new(LeastConnections::new(targets)),
        Algorithm::Random => Box::new(Random::new(
            &targets.iter().map(|t| t.weight).collect::<Vec<_>>(),
        )),
        Algorithm::P2cEwma => Box::new(P2cEwma::new(targets)),
        // The same Maglev table serves both: only the hashed key differs,
        // and the caller computes it.
        Algorithm::IpHash | Algorithm::ConsistentHash => Box::new(ConsistentHash::new(targets)),
    }
}

/// Test helpers shared by the algorithms' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// Targets `10.0.0.{i}:80` with these weights and fresh states.
    pub fn targets(weights: &[u32]) -> Vec<Weighted> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| Weighted {
                weight: *w,
                address: Arc::from(format!("10.0.0.{i}:80")),
                state: Arc::new(TargetState::default()),
            })
            .collect()
    }

    /// Asserts that each index's share of `counts` is within `tolerance`
    /// (absolute, as a fraction of all picks) of `expected` (fractions).
    pub fn assert_shares(counts: &[usize], expected: &[f64], tolerance: f64) {
        let total: usize = counts.iter().sum();
        for (i, (&c, &e)) in counts.iter().zip(expected).enumerate() {
            let share = c as f64 / total as f64;
            assert!(
                (share - e).abs() <= tolerance,
                "target {i}: share {share:.4}, expected {e:.4} ± {tolerance} (counts {counts:?})"
            );
        }
    }

    /// Shares proportional to `weights`.
    pub fn proportional(weights: &[u32]) -> Vec<f64> {
        let sum: u32 = weights.iter().sum();
        weights
            .iter()
            .map(|w| f64::from(*w) / f64::from(sum))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_algorithm_builds_and_skips_ineligible_targets() {
        let targets = testing::targets(&[1, 1, 1]);
        for algorithm in [
            Algorithm::RoundRobin,
            Algorithm::LeastConnections,
            Algorithm::Random,
            Algorithm::P2cEwma,
            Algorithm::IpHash,
            Algorithm::ConsistentHash,
        ] {
            let b = build(algorithm, &targets);
            for hash in 0..50 {
                let ctx = PickContext { hash };
                assert_eq!(b.pick(&ctx, &|i| i == 2), Some(2), "{algorithm:?}");
                assert_eq!(b.pick(&ctx, &|_| false), None, "{algorithm:?}");
            }
        }
    }

    #[test]
    fn every_algorithm_handles_no_targets() {
        for algorithm in [
            Algorithm::RoundRobin,
            Algorithm::LeastConnections,
            Algorithm::Random,
            Algorithm::P2cEwma,
            Algorithm::ConsistentHash,
        ] {
            let b = build(algorithm, &[]);
            assert_eq!(b.pick(&PickContext::default(), &|_| true), None);
        }
    }
}
