//! Power of two choices on latency: draw two distinct eligible targets at
//! random (in proportion to weight) and send to the cheaper, where
//!
//! ```text
//! cost = (latency EWMA + 100 µs) × (1 + in-flight / weight)
//! ```
//!
//! An estimate of how long a new request would wait there: the target's
//! recent response time, stretched by the queue in front of it. Comparing
//! only two random targets (rather than all) avoids the herd that a global
//! minimum causes when many gateways, or many threads, all see the same
//! fastest target; it reacts to a slow target before its queue grows.
//!
//! Three refinements keep the operator's weights meaningful:
//! - Weight scales the queue, not the latency: an idle heavy target answers
//!   no faster than an idle light one. With equal weights this is the classic
//!   `(latency + c) × (in-flight + 1)`; with unequal weights, heavy traffic
//!   keeps in-flight requests in proportion to weight.
//! - The second target must be clearly cheaper (by more than 1/8) to beat
//!   the first. Costs closer than that are measurement noise, and the first
//!   draw, already weighted, decides: equivalent targets share by weight
//!   instead of noise handing everything to whichever looked faster last.
//! - A target's latency figure fades while the target goes unchosen (halved
//!   every 16 picks per target, counted in this balancer's picks), so one
//!   slow answer cannot exclude a target for good under light traffic: it is
//!   tried again and re-measured. A really slow target fades below the others
//!   only after many half-lives: it gets an occasional probe, no more.
//!
//! A target with no latency sample yet counts as the fastest while it is idle,
//! so new (or newly re-admitted) targets are tried at once; while its first
//! requests are still pending it counts as [`UNKNOWN_LATENCY_MICROS`], so a
//! new target is not flooded before anyone knows how fast it is.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::draw::Shares;
use super::{Balancer, PickContext, Weighted};
use crate::upstream::target::TargetState;

/// Added to every latency so that load still counts when latencies are
/// near zero (a cached answer over loopback).
const LATENCY_FLOOR_MICROS: u64 = 100;

/// Latency assumed for a target with no sample yet and requests pending.
pub const UNKNOWN_LATENCY_MICROS: u64 = 1_000_000;

/// Latencies above this (about 12 days) are clamped, which keeps the cost
/// products below 2^128.
const MAX_LATENCY_MICROS: u64 = 1 << 40;

/// The second target wins only when its cost is below (1 - 1/8) of the first's.
const SIMILAR_EIGHTHS: u128 = 7;

/// An unchosen target's latency figure halves every this many picks per target.
const HALF_LIFE_PICKS_PER_TARGET: u64 = 16;

/// Power of two choices over a latency-times-load cost.
#[derive(Debug)]
pub struct P2cEwma {
    shares: Shares,
    states: Box<[Arc<TargetState>]>,
    /// Picks made so far: the clock latency figures fade by.
    picks: AtomicU64,
    /// Value of `picks` when each target was last chosen.
    last_chosen: Box<[AtomicU64]>,
    /// Picks per halving of an unchosen target's latency figure.
    half_life: u64,
}

impl P2cEwma {
    /// A balancer over `targets`.
    pub fn new(targets: &[Weighted]) -> P2cEwma {
        P2cEwma {
            shares: Shares::new(&targets.iter().map(|t| t.weight).collect::<Vec<_>>()),
            states: targets.iter().map(|t| t.state.clone()).collect(),
            picks: AtomicU64::new(0),
            last_chosen: targets.iter().map(|_| AtomicU64::new(0)).collect(),
            half_life: HALF_LIFE_PICKS_PER_TARGET * (targets.len() as u64).max(1),
        }
    }

    /// Target `i`'s cost at pick number `now`, as an exact fraction
    /// (numerator, denominator).
    fn cost(&self, i: usize, now: u64) -> (u128, u128) {
        let (Some(state), Some(last)) = (self.states.get(i), self.last_chosen.get(i)) else {
            // Out of range cannot happen (draws come from the same list);
            // the dearest finite cost keeps the arithmetic safe if it did.
            return (u128::from(MAX_LATENCY_MICROS) << 33, 1);
        };
        let in_flight = u128::from(state.in_flight());
        let latency = match state.latency_ewma_micros() {
            0 if in_flight == 0 => 0,
            0 => UNKNOWN_LATENCY_MICROS,
            l => {
                let halvings = now.saturating_sub(last.load(Ordering::Relaxed)) / self.half_life;
                l.min(MAX_LATENCY_MICROS) >> halvings.min(63)
            }
        };
        let weight = u128::from(self.shares.weight(i).max(1));
        (
            u128::from(latency + LATENCY_FLOOR_MICROS) * (weight + in_flight),
            weight,
        )
    }

    /// Records `i` as chosen at pick `now` and returns it.
    fn choose(&self, i: usize, now: u64) -> Option<usize> {
        if let Some(last) = self.last_chosen.get(i) {
            last.store(now, Ordering::Relaxed);
        }
        Some(i)
    }
}

impl Balancer for P2cEwma {
    fn pick(&self, _ctx: &PickContext, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
        let first = self.shares.draw(eligible, None)?;
        let now = self.picks.fetch_add(1, Ordering::Relaxed);
        let Some(second) = self.shares.draw(eligible, Some(first)) else {
            return self.choose(first, now);
        };
        let (n1, d1) = self.cost(first, now);
        let (n2, d2) = self.cost(second, now);
        // n2/d2 < 7/8 · n1/d1. Each product is below 2^41 · 2^33 · 2^32 · 8
        // = 2^109: no overflow.
        if n2 * d1 * 8 < n1 * d2 * SIMILAR_EIGHTHS {
            self.choose(second, now)
        } else {
            self.choose(first, now)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testing::{assert_shares, proportional, targets};
    use super::*;
    use crate::upstream::target::InFlight;

    const CTX: PickContext = PickContext { hash: 0 };

    fn counts(p: &P2cEwma, n: usize, picks: usize) -> Vec<usize> {
        let mut counts = vec![0; n];
        for _ in 0..picks {
            counts[p.pick(&CTX, &|_| true).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn idle_targets_of_equal_latency_share_by_weight() {
        // Equal costs, so the weighted first draw decides: 100,000 picks, a
        // share's standard deviation is at most 0.16 points; tolerance 1 point.
        let t = targets(&[5, 3, 2]);
        for t in &t {
            t.state.observe_latency(Duration::from_millis(2));
        }
        let p = P2cEwma::new(&t);
        assert_shares(&counts(&p, 3, 100_000), &proportional(&[5, 3, 2]), 0.01);
    }

    #[test]
    fn the_faster_target_wins_every_comparison_it_is_in() {
        // Target 0 is faster: it is chosen whenever it is one of the two,
        // which for three equal weights is 2 pairs in 3. Tolerance 1 point.
        let t = targets(&[1, 1, 1]);
        t[0].state.observe_latency(Duration::from_millis(1));
        t[1].state.observe_latency(Duration::from_millis(50));
        t[2].state.observe_latency(Duration::from_millis(50));
        let p = P2cEwma::new(&t);
        let c = counts(&p, 3, 100_000);
        assert_shares(&c, &[2.0 / 3.0, 1.0 / 6.0, 1.0 / 6.0], 0.01);
    }

    #[test]
    fn a_slow_idle_target_loses_to_a_fast_busy_one() {
        let t = targets(&[1, 1]);
        t[0].state.observe_latency(Duration::from_millis(200));
        t[1].state.observe_latency(Duration::from_millis(1));
        let p = P2cEwma::new(&t);
        // 1.1 ms × (1 + 100) = 111 ms of cost, still below 200.1 ms idle
        // (for 30 picks: less than one half-life, 32 picks, of fading).
        let _queue: Vec<InFlight> = (0..100).map(|_| t[1].state.lease()).collect();
        for _ in 0..30 {
            assert_eq!(p.pick(&CTX, &|_| true), Some(1));
        }
    }

    #[test]
    fn an_unchosen_slow_target_is_probed_now_and_then() {
        // 200 ms against 1 ms: the slow figure must halve 8 times (8 × 32
        // picks) to look cheaper, so the slow target gets one pick in about
        // 257: of 10,000 picks, 39 expected; tolerance 20 to 60.
        let t = targets(&[1, 1]);
        t[0].state.observe_latency(Duration::from_millis(200));
        t[1].state.observe_latency(Duration::from_millis(1));
        let p = P2cEwma::new(&t);
        let c = counts(&p, 2, 10_000);
        assert!((20..=60).contains(&c[0]), "{c:?}");
    }

    #[test]
    fn latencies_within_an_eighth_leave_the_choice_to_weights() {
        // Near-equal figures count as equal: shares follow weights (100,000
        // picks, tolerance 1 point) although target 1 measured fastest.
        let t = targets(&[5, 3, 2]);
        for (t, ms) in t.iter().zip([2.0, 1.9, 1.95]) {
            t.state
                .observe_latency(Duration::from_secs_f64(ms / 1000.0));
        }
        let p = P2cEwma::new(&t);
        assert_shares(&counts(&p, 3, 100_000), &proportional(&[5, 3, 2]), 0.01);
    }

    #[test]
    fn load_counts_relative_to_weight() {
        // Same latency; target 0 has weight 4 and 2 in flight, cost 1.5×;
        // target 1 has weight 1 and 1 in flight, cost 2×: target 0 wins.
        let t = targets(&[4, 1]);
        for t in &t {
            t.state.observe_latency(Duration::from_millis(5));
        }
        let _a: Vec<InFlight> = (0..2).map(|_| t[0].state.lease()).collect();
        let _b = t[1].state.lease();
        let p = P2cEwma::new(&t);
        // Fewer picks than a half-life (32), so target 1's figure does not fade.
        for _ in 0..30 {
            assert_eq!(p.pick(&CTX, &|_| true), Some(0));
        }
    }

    #[test]
    fn a_new_target_is_tried_when_idle_but_not_flooded() {
        let t = targets(&[1, 1]);
        t[0].state.observe_latency(Duration::from_millis(5));
        let p = P2cEwma::new(&t);
        // Unknown and idle: cheapest.
        for _ in 0..100 {
            assert_eq!(p.pick(&CTX, &|_| true), Some(1));
        }
        // Unknown with a request pending: 1 s assumed, so the known one wins.
        let _pending = t[1].state.lease();
        for _ in 0..100 {
            assert_eq!(p.pick(&CTX, &|_| true), Some(0));
        }
    }

    #[test]
    fn ineligible_targets_are_skipped() {
        let t = targets(&[1, 1, 1]);
        t[2].state.observe_latency(Duration::from_secs(5));
        let p = P2cEwma::new(&t);
        for _ in 0..1000 {
            // The only eligible target is chosen however slow it is.
            assert_eq!(p.pick(&CTX, &|i| i == 2), Some(2));
            assert_ne!(p.pick(&CTX, &|i| i != 1), Some(1));
        }
        assert_eq!(p.pick(&CTX, &|_| false), None);
    }
}
