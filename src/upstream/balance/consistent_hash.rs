//! Consistent hashing with a Maglev lookup table (Eisenbud et al., "Maglev:
//! A Fast and Reliable Software Network Load Balancer", NSDI 2016); serves
//! both `ip_hash` and `consistent_hash`, which differ only in the key the
//! caller hashes into [`PickContext::hash`].
//!
//! Every target owns a pseudo-random permutation of the table's slots,
//! derived from its address alone; targets take turns claiming their next
//! free slot until the table is full, heavier targets getting proportionally
//! more turns. A key's target is the table entry at `hash mod size`: one
//! array read per pick. Because a target's permutation does not depend on the
//! others, removing one of N targets hands its slots to the rest and moves
//! about 1/N of the keys (a little more, as Maglev trades perfect stability
//! for even shares); adding it back rebuilds the same table and restores
//! every key. The table depends on the set of addresses and weights, not on
//! their order in the file.
//!
//! When a key's target is not eligible (down, ejected, already tried), the
//! pick tries further slots derived from the key's hash, whose owners are
//! spread like the shares: the fallback is itself consistent (the same key
//! falls back to the same target) and spreads a failed target's keys over all
//! the others in proportion to weight rather than onto one neighbour.

use super::{Balancer, PickContext, Weighted};
use crate::upstream::hash_key::hash_bytes;

/// Smallest table size; prime, as Maglev requires, and large enough that
/// shares are within a fraction of a percent for up to 655 targets.
const MIN_TABLE_SIZE: u64 = 65_537;

/// Table slots per target at least (Maglev's guidance for even shares).
const SLOTS_PER_TARGET: u64 = 100;

/// A Maglev lookup table from key hashes to target indices.
pub struct ConsistentHash {
    /// Target index of each slot; empty when no target has positive weight.
    table: Box<[u32]>,
    /// Indices of the targets that own slots.
    present: Box<[u32]>,
}

impl std::fmt::Debug for ConsistentHash {
    // The table has tens of thousands of entries: print its shape only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsistentHash")
            .field("table_size", &self.table.len())
            .field("targets", &self.present)
            .finish()
    }
}

/// One target's walk along its permutation while the table fills.
struct Filler {
    index: u32,
    weight: u64,
    /// The next slot of its permutation to try.
    slot: u64,
    /// Distance between consecutive slots of its permutation.
    skip: u64,
    /// Slots claimed so far.
    turns: u64,
}

impl ConsistentHash {
    /// Builds the table for `targets` (targets of weight 0 own no slot,
    /// unless every weight is 0: then all count as 1).
    pub fn new(targets: &[Weighted]) -> ConsistentHash {
        let all_zero = targets.iter().all(|t| t.weight == 0);
        let mut members: Vec<(&str, Filler)> = Vec::with_capacity(targets.len());
        for (i, t) in targets.iter().enumerate() {
            let weight = if all_zero { 1 } else { u64::from(t.weight) };
            // A table index is a u32; four billion targets cannot occur.
            let Ok(index) = u32::try_from(i) else { break };
            if weight > 0 {
                members.push((
                    &t.address,
                    Filler {
                        index,
                        weight,
                        slot: 0,
                        skip: 0,
                        turns: 0,
                    },
                ));
            }
        }
        if members.is_empty() {
            return ConsistentHash {
                table: Box::new([]),
                present: Box::new([]),
            };
        }
        // File order must not matter: fill in address order.
        members.sort_by(|a, b| a.0.cmp(b.0));
        let size = table_size(members.len());
        for (address, f) in &mut members {
            let h = hash_bytes(address.as_bytes());
            f.slot = h % size;
            f.skip = mix(h) % (size - 1) + 1;
        }
        let present = members.iter().map(|(_, f)| f.index).collect();
        let mut fillers: Vec<Filler> = members.into_iter().map(|(_, f)| f).collect();
        let table = fill(&mut fillers, size);
        ConsistentHash { table, present }
    }

    /// Number of slots in the table.
    pub fn table_size(&self) -> usize {
        self.table.len()
    }
}

/// Fills a table of `size` slots: in round `r`, a target of weight `w` takes
/// a turn if it has had fewer than `r · w / max_weight` turns, so the
/// heaviest target claims one slot per round and the others in proportion.
fn fill(fillers: &mut [Filler], size: u64) -> Box<[u32]> {
    const EMPTY: u32 = u32::MAX;
    let slots = usize::try_from(size).unwrap_or(usize::MAX);
    let mut table = vec![EMPTY; slots];
    let max_weight = fillers.iter().map(|f| f.weight).max().unwrap_or(1);
    let mut filled = 0usize;
    let mut round = 0u64;
    while filled < slots {
        round += 1;
        for f in fillers.iter_mut() {
            if u128::from(f.turns) * u128::from(max_weight)
                >= u128::from(round) * u128::from(f.weight)
            {
                continue;
            }
            f.turns += 1;
            // `size` is prime and `skip` in 1..size, so the walk visits every
            // slot before repeating: it always finds a free one.
            loop {
                let slot = f.slot as usize;
                f.slot = (f.slot + f.skip) % size;
                if table[slot] == EMPTY {
                    table[slot] = f.index;
                    filled += 1;
                    break;
                }
            }
            if filled == slots {
                break;
            }
        }
    }
    table.into_boxed_slice()
}

/// The smallest prime at least `max(MIN_TABLE_SIZE, SLOTS_PER_TARGET · n)`.
fn table_size(n: usize) -> u64 {
    let wanted = (n as u64)
        .saturating_mul(SLOTS_PER_TARGET)
        .max(MIN_TABLE_SIZE);
    (wanted..).find(|&c| is_prime(c)).unwrap_or(MIN_TABLE_SIZE)
}

fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

/// SplitMix64's finalizer: a second hash of the address, independent of the
/// first, for the permutation's step.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Pseudo-random slots tried after the key's own, before walking the table.
const PROBES: u64 = 32;

impl Balancer for ConsistentHash {
    fn pick(&self, ctx: &PickContext, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
        let size = self.table.len() as u64;
        if size == 0 {
            return None;
        }
        let owner = |slot: u64| self.table[(slot % size) as usize] as usize;
        let first = owner(ctx.hash);
        if eligible(first) {
            return Some(first);
        }
        // Probing only ends early when something is eligible: with nothing
        // eligible it would visit every slot.
        if !self.present.iter().any(|&i| eligible(i as usize)) {
            return None;
        }
        // Further slots derived from the key alone, so the fallback is as
        // consistent as the first choice. Neighbouring slots would not do:
        // permutations are arithmetic progressions, so a neighbour's owner
        // is not independent of the slot's (measured: 56% of a failed
        // target's keys went to one of the three others).
        (1..=PROBES)
            .map(|n| owner(mix(ctx.hash ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15))))
            .find(|&i| eligible(i))
            .or_else(|| {
                // Most of the weight is ineligible: walk the table, which is
                // certain to find the eligible targets' slots.
                (1..size)
                    .map(|n| owner(ctx.hash % size + n))
                    .find(|&i| eligible(i))
            })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use super::super::testing::{assert_shares, proportional, targets};
    use super::*;
    use crate::upstream::TargetState;

    /// Key hashes as the caller makes them.
    fn keys(n: usize) -> Vec<u64> {
        (0..n)
            .map(|i| hash_bytes(format!("user-{i}").as_bytes()))
            .collect()
    }

    /// The address each key maps to.
    fn assignment(t: &[Weighted], keys: &[u64]) -> Vec<Arc<str>> {
        let ch = ConsistentHash::new(t);
        keys.iter()
            .map(|&hash| {
                let i = ch.pick(&PickContext { hash }, &|_| true).unwrap();
                t[i].address.clone()
            })
            .collect()
    }

    fn moved(a: &[Arc<str>], b: &[Arc<str>]) -> f64 {
        a.iter().zip(b).filter(|(x, y)| x != y).count() as f64 / a.len() as f64
    }

    #[test]
    fn shares_follow_weights() {
        // Slots are shared within 0.5 point of the weights, and 100,000
        // distinct keys (a share's standard deviation at most 0.16 points)
        // within 1 point.
        let t = targets(&[5, 3, 2]);
        let ch = ConsistentHash::new(&t);
        let mut slots = [0; 3];
        for &i in ch.table.iter() {
            slots[i as usize] += 1;
        }
        assert_shares(&slots, &proportional(&[5, 3, 2]), 0.005);
        let mut counts = [0; 3];
        for hash in keys(100_000) {
            counts[ch.pick(&PickContext { hash }, &|_| true).unwrap()] += 1;
        }
        assert_shares(&counts, &proportional(&[5, 3, 2]), 0.01);
    }

    #[test]
    fn equal_targets_share_evenly_at_scale() {
        // 100 targets of weight 1: every one owns 1% of the slots ± 0.1 point.
        let ch = ConsistentHash::new(&targets(&[1; 100]));
        let mut slots = vec![0; 100];
        for &i in ch.table.iter() {
            slots[i as usize] += 1;
        }
        assert_shares(&slots, &[0.01; 100], 0.001);
    }

    #[test]
    fn the_same_key_always_gets_the_same_target() {
        let ch = ConsistentHash::new(&targets(&[1, 1, 1]));
        for hash in keys(1000) {
            let ctx = PickContext { hash };
            let first = ch.pick(&ctx, &|_| true);
            assert!((0..5).all(|_| ch.pick(&ctx, &|_| true) == first));
        }
    }

    #[test]
    fn removing_one_of_ten_moves_about_a_tenth_and_adding_it_back_restores_all() {
        // The removed target's own keys (a tenth) must move; Maglev moves a
        // few more. Tolerance: between 9% and 12% of 100,000 keys move.
        let all = targets(&[1; 10]);
        let mut without = all.clone();
        without.remove(4);
        let keys = keys(100_000);
        let before = assignment(&all, &keys);
        let after = assignment(&without, &keys);
        let fraction = moved(&before, &after);
        assert!((0.09..=0.12).contains(&fraction), "moved {fraction:.4}");
        // Keys of remaining targets stay: at most 1% of them move.
        let removed = &all[4].address;
        let stayers = before.iter().filter(|a| *a != removed).count();
        let stayers_moved = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| *b != removed && b != a)
            .count();
        assert!(
            (stayers_moved as f64) <= 0.01 * stayers as f64,
            "{stayers_moved} of {stayers} keys moved between remaining targets"
        );
        assert_eq!(assignment(&all, &keys), before);
    }

    #[test]
    fn file_order_does_not_matter() {
        let t = targets(&[1, 2, 3, 4]);
        let mut reversed = t.clone();
        reversed.reverse();
        let keys = keys(10_000);
        assert_eq!(assignment(&t, &keys), assignment(&reversed, &keys));
    }

    #[test]
    fn an_ineligible_target_s_keys_fall_back_consistently_and_spread() {
        // Keys of target 0 go elsewhere, always to the same place, spread
        // over the other three evenly (each a third ± 5 points of ~2,500 keys);
        // other keys do not move.
        let ch = ConsistentHash::new(&targets(&[1, 1, 1, 1]));
        let mut spread = [0usize; 4];
        for hash in keys(10_000) {
            let ctx = PickContext { hash };
            let home = ch.pick(&ctx, &|_| true).unwrap();
            let fallback = ch.pick(&ctx, &|i| i != 0).unwrap();
            assert_eq!(ch.pick(&ctx, &|i| i != 0), Some(fallback));
            if home == 0 {
                assert_ne!(fallback, 0);
                spread[fallback] += 1;
            } else {
                assert_eq!(fallback, home);
            }
        }
        assert_eq!(spread[0], 0);
        assert_shares(&spread[1..], &[1.0 / 3.0; 3], 0.05);
        assert_eq!(ch.pick(&PickContext { hash: 7 }, &|_| false), None);
        assert_eq!(ch.pick(&PickContext { hash: 7 }, &|i| i == 3), Some(3));
    }

    #[test]
    fn zero_weight_targets_own_no_slot() {
        let t = targets(&[0, 1]);
        let ch = ConsistentHash::new(&t);
        assert!(ch.table.iter().all(|&i| i == 1));
        assert_eq!(ch.pick(&PickContext { hash: 1 }, &|i| i == 0), None);
        let all_zero = ConsistentHash::new(&targets(&[0, 0]));
        let owners: std::collections::HashSet<u32> = all_zero.table.iter().copied().collect();
        assert_eq!(owners.len(), 2);
    }

    #[test]
    fn table_sizes_are_prime_and_grow_with_targets() {
        assert_eq!(table_size(3), 65_537);
        assert_eq!(table_size(655), 65_537);
        let big = table_size(1000);
        assert!(big >= 100_000 && is_prime(big));
        assert!(!is_prime(65_535) && is_prime(65_537));
    }

    #[test]
    fn duplicate_addresses_still_fill_the_table() {
        let state = Arc::new(TargetState::default());
        let t: Vec<Weighted> = (0..2)
            .map(|_| Weighted {
                weight: 1,
                address: Arc::from("10.0.0.1:80"),
                state: state.clone(),
            })
            .collect();
        let ch = ConsistentHash::new(&t);
        let mut per: HashMap<u32, usize> = HashMap::new();
        for &i in ch.table.iter() {
            *per.entry(i).or_default() += 1;
        }
        assert_eq!(per.len(), 2);
    }
}
