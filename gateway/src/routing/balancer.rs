//! Choosing one target among the available ones of a priority group.
//!
//! - [`SmoothWeighted`] — nginx's smooth weighted round-robin: each pick adds every candidate's weight to its
//!   running score, takes the highest, and subtracts the total from the winner. Over any cycle of `Σweights`
//!   picks the split is exact (80/20 → exactly 4 and 1 in every 5), and picks are interleaved, not bunched.
//! - [`HashRing`] — consistent hashing with virtual nodes in proportion to weight: a key keeps its target while
//!   that target is available, and only the keys of a removed target move.

use std::sync::{Mutex, PoisonError};

/// Smooth weighted round-robin over a fixed member list; shared by every worker.
#[derive(Debug)]
pub struct SmoothWeighted {
    weights: Vec<i64>,
    current: Mutex<Vec<i64>>,
}

impl SmoothWeighted {
    pub fn new(weights: &[u32]) -> Self {
        Self {
            weights: weights.iter().map(|&w| i64::from(w)).collect(),
            current: Mutex::new(vec![0; weights.len()]),
        }
    }

    /// Picks among the members for which `eligible(index)` holds (and whose weight is above 0).
    pub fn pick(&self, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let mut total = 0;
        let mut best: Option<usize> = None;
        for (i, &weight) in self.weights.iter().enumerate() {
            if weight == 0 || !eligible(i) {
                continue;
            }
            current[i] += weight;
            total += weight;
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        let chosen = best?;
        current[chosen] -= total;
        Some(chosen)
    }
}

/// Virtual nodes per unit of weight.
const VNODES_PER_WEIGHT: u32 = 160;

/// A consistent-hash ring over a fixed member list.
#[derive(Debug)]
pub struct HashRing {
    points: Vec<(u64, usize)>,
}

impl HashRing {
    /// `members`: (name, weight); names place the virtual nodes, so the ring is the same on every replica.
    pub fn new(members: &[(&str, u32)]) -> Self {
        let mut points: Vec<(u64, usize)> = members
            .iter()
            .enumerate()
            .flat_map(|(i, (name, weight))| {
                (0..weight.saturating_mul(VNODES_PER_WEIGHT))
                    .map(move |v| (hash(format!("{name}#{v}").as_bytes()), i))
            })
            .collect();
        points.sort_unstable();
        Self { points }
    }

    /// The first eligible member clockwise from `key`'s point.
    pub fn pick(&self, key: &[u8], eligible: impl Fn(usize) -> bool) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let h = hash(key);
        let start = self.points.partition_point(|&(p, _)| p < h);
        (0..self.points.len())
            .map(|k| self.points[(start + k) % self.points.len()].1)
            .find(|&member| eligible(member))
    }
}

/// FNV-1a followed by a 64-bit finalizer (splitmix64): stable across processes, versions and machines.
fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn counts(balancer: &SmoothWeighted, n: usize, members: usize) -> Vec<usize> {
        let mut counts = vec![0; members];
        for _ in 0..n {
            counts[balancer.pick(|_| true).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn an_80_20_split_is_exact_in_every_cycle_and_interleaved() {
        let b = SmoothWeighted::new(&[4, 1]);
        for _ in 0..200 {
            assert_eq!(counts(&b, 5, 2), [4, 1]);
        }
        let b = SmoothWeighted::new(&[1, 1]);
        let picks: Vec<_> = (0..6).map(|_| b.pick(|_| true).unwrap()).collect();
        assert_eq!(picks, [0, 1, 0, 1, 0, 1]);
    }

    #[test]
    fn unavailable_and_zero_weight_members_are_skipped() {
        let b = SmoothWeighted::new(&[1, 0, 1]);
        assert_eq!(counts(&b, 10, 3), [5, 0, 5]);
        assert_eq!(b.pick(|i| i == 2), Some(2));
        assert_eq!(b.pick(|i| i == 1), None, "a drained member is never picked");
        assert_eq!(b.pick(|_| false), None);
    }

    proptest! {
        #[test]
        fn every_cycle_is_exact_for_any_weights(weights in proptest::collection::vec(0u32..20, 1..6), cycles in 1usize..5) {
            prop_assume!(weights.iter().any(|&w| w > 0));
            let b = SmoothWeighted::new(&weights);
            let total: u32 = weights.iter().sum();
            for _ in 0..cycles {
                let got = counts(&b, total as usize, weights.len());
                let want: Vec<usize> = weights.iter().map(|&w| w as usize).collect();
                prop_assert_eq!(got, want);
            }
        }
    }

    #[test]
    fn a_key_keeps_its_member_and_only_a_removed_members_keys_move() {
        let ring = HashRing::new(&[("a", 1), ("b", 1), ("c", 1)]);
        let keys: Vec<String> = (0..3000).map(|i| format!("consumer-{i}")).collect();
        let before: Vec<usize> = keys
            .iter()
            .map(|k| ring.pick(k.as_bytes(), |_| true).unwrap())
            .collect();
        let again: Vec<usize> = keys
            .iter()
            .map(|k| ring.pick(k.as_bytes(), |_| true).unwrap())
            .collect();
        assert_eq!(before, again);
        let mut share = [0usize; 3];
        before.iter().for_each(|&m| share[m] += 1);
        assert!(
            share.iter().all(|&n| (700..1300).contains(&n)),
            "roughly even: {share:?}"
        );

        let without_b: Vec<usize> = keys
            .iter()
            .map(|k| ring.pick(k.as_bytes(), |m| m != 1).unwrap())
            .collect();
        for (was, now) in before.iter().zip(&without_b) {
            if *was != 1 {
                assert_eq!(was, now, "keys of available members stay put");
            } else {
                assert_ne!(*now, 1);
            }
        }
    }
}
