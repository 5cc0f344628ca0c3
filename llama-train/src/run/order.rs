//! A run's randomness as a function of where it stands: each epoch's order is drawn from
//! `(seed, epoch)` and each step's dropout seed from `(seed, epoch, step)`, so that a resumed
//! run repeats an uninterrupted one exactly, and every rank of a data-parallel run agrees.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// splitmix64's finaliser: a well-mixed 64-bit value from any input.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn mix(seed: u64, a: u64, b: u64) -> u64 {
    splitmix64(splitmix64(splitmix64(seed) ^ a) ^ b)
}

/// Training order of epoch `epoch` (1-based): a permutation of `0..n` drawn from
/// `(seed, epoch)` alone.
pub fn epoch_order(seed: u64, epoch: usize, n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut StdRng::seed_from_u64(mix(
        seed,
        epoch as u64,
        u64::MAX,
    )));
    order
}

/// Seed of the dropout mask of step `batch` (0-based) of `epoch`.
pub fn step_seed(seed: u64, epoch: usize, batch: usize) -> u64 {
    mix(seed, epoch as u64, batch as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_orders_are_permutations_fixed_by_seed_and_epoch() {
        let a = epoch_order(7, 1, 100);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(a, epoch_order(7, 1, 100));
        assert_ne!(a, epoch_order(7, 2, 100));
        assert_ne!(a, epoch_order(8, 1, 100));
    }

    #[test]
    fn step_seeds_differ_by_epoch_and_batch() {
        let seeds: std::collections::HashSet<u64> = (1..4)
            .flat_map(|e| (0..100).map(move |b| step_seed(1337, e, b)))
            .collect();
        assert_eq!(seeds.len(), 300);
    }
}
