//! Length-grouped training order, with the semantics of Hugging Face's `group_by_length`
//! (`LengthGroupedSampler`): batches of sentences of similar length, so that a batch pads
//! (and attends over) little, while the order stays random from epoch to epoch.
//!
//! From an epoch's random permutation ([`crate::run::order::epoch_order`]):
//! 1. cut it into *megabatches* of `mult * batch_size` consecutive indices, where `mult` is
//!    `min(n / (4 * batch_size), 50)`, at least 1 (50 batches, or fewer so that there are
//!    about four megabatches);
//! 2. sort each megabatch by length, longest first (a stable sort: equal lengths keep the
//!    permutation's order);
//! 3. swap the longest sentence of all into the first position, so that the run meets its
//!    largest batch (and any out-of-memory failure) at once rather than hours in.
//!
//! Batches are then consecutive `batch_size` slices of the result, as for the plain order.
//! The result depends only on the permutation and the lengths, so a run resumed mid-epoch
//! sees the same batches as an uninterrupted one.

/// The largest megabatch, in batches (Hugging Face's cap).
const MAX_MEGABATCH_BATCHES: usize = 50;

/// Batches per megabatch for `n` sentences: 50, or fewer to leave about four megabatches,
/// at least 1.
pub fn megabatch_batches(n: usize, batch_size: usize) -> usize {
    (n / (batch_size.max(1) * 4)).clamp(1, MAX_MEGABATCH_BATCHES)
}

/// `order` (a permutation of the sentence indices) regrouped by length as described in the
/// [module docs](self); `lengths[i]` is sentence `i`'s length in tokens.
///
/// # Panics
/// If an index of `order` is out of range of `lengths` (an internal invariant: both come
/// from the same dataset).
pub fn length_grouped_order(order: &[usize], lengths: &[usize], batch_size: usize) -> Vec<usize> {
    let megabatch = megabatch_batches(order.len(), batch_size) * batch_size.max(1);
    let mut megabatches: Vec<Vec<usize>> = order
        .chunks(megabatch)
        .map(|chunk| {
            let mut chunk = chunk.to_vec();
            chunk.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]));
            chunk
        })
        .collect();
    // Each megabatch starts with its longest sentence; the first of the longest moves to the
    // front (the first maximum, as `torch.argmax` picks).
    let mut longest = 0;
    for (m, megabatch) in megabatches.iter().enumerate().skip(1) {
        if lengths[megabatch[0]] > lengths[megabatches[longest][0]] {
            longest = m;
        }
    }
    if longest > 0 {
        let head = megabatches[longest][0];
        megabatches[longest][0] = std::mem::replace(&mut megabatches[0][0], head);
    }
    megabatches.concat()
}

/// The share of padding among the token positions of the batches that `order` makes: each
/// batch (`batch_size` consecutive indices) pads every row to its longest. In `[0, 1)`;
/// 0 for an empty order.
pub fn padding_share(order: &[usize], lengths: &[usize], batch_size: usize) -> f64 {
    let (real, positions) =
        order
            .chunks(batch_size.max(1))
            .fold((0usize, 0usize), |(real, positions), batch| {
                let longest = batch.iter().map(|&i| lengths[i]).max().unwrap_or(0);
                let sum: usize = batch.iter().map(|&i| lengths[i]).sum();
                (real + sum, positions + longest * batch.len())
            });
    if positions == 0 {
        0.0
    } else {
        1.0 - real as f64 / positions as f64
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn megabatch_size_follows_the_dataset_size() {
        assert_eq!(megabatch_batches(10, 8), 1); // tiny: one batch per megabatch
        assert_eq!(megabatch_batches(8544, 8), 50); // SST train at the exercise's batch
        assert_eq!(megabatch_batches(8544, 80), 26); // 8544 / 320
        assert_eq!(megabatch_batches(1707, 10), 42); // CFIMDB train at batch 10
    }

    /// Worked by hand from the sampler's definition: n = 10, batch 2, so megabatches of
    /// 1 * 2 (10 / 8 = 1).
    #[test]
    fn small_example_worked_by_hand() {
        let lengths = [5, 9, 2, 7, 7, 1, 3, 9, 4, 6];
        let order = [3, 0, 6, 1, 9, 4, 2, 8, 7, 5];
        // Megabatches [3,0] [6,1] [9,4] [2,8] [7,5], each sorted longest first:
        // [3,0] [1,6] [4,9] [8,2] [7,5]; the first longest (9) heads megabatch 1 (index 1),
        // which swaps with index 3 at the front.
        let got = length_grouped_order(&order, &lengths, 2);
        assert_eq!(got, vec![1, 0, 3, 6, 4, 9, 8, 2, 7, 5]);
    }

    /// A tie keeps the permutation's order (Python's `sorted` is stable, also reversed).
    #[test]
    fn ties_keep_the_permutation_order() {
        let lengths = [4, 4, 4, 4];
        let order = [2, 0, 3, 1];
        assert_eq!(length_grouped_order(&order, &lengths, 1), order.to_vec());
        assert!(length_grouped_order(&[], &[], 8).is_empty());
    }

    #[test]
    fn result_is_a_permutation_with_short_batches_inside_megabatches() {
        let n = 1000;
        let lengths: Vec<usize> = (0..n).map(|i| 1 + (i * 37 + 11) % 61).collect();
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut StdRng::seed_from_u64(5));
        let batch = 8;
        let got = length_grouped_order(&order, &lengths, batch);
        let mut sorted = got.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..n).collect::<Vec<_>>());
        assert_eq!(lengths[got[0]], *lengths.iter().max().unwrap());
        // Within each megabatch (past the swapped head) lengths never grow.
        let mb = megabatch_batches(n, batch) * batch;
        for chunk in got.chunks(mb) {
            for pair in chunk[1..].windows(2) {
                assert!(lengths[pair[0]] >= lengths[pair[1]]);
            }
        }
        // The point of it: far less padding than the plain order.
        let (grouped, plain) = (
            padding_share(&got, &lengths, batch),
            padding_share(&order, &lengths, batch),
        );
        assert!(grouped * 5.0 < plain, "{grouped} vs {plain}");
    }

    #[test]
    fn padding_share_counts_pad_positions() {
        // Batches [3, 1] and [2]: positions 3 * 2 + 2 = 8, real 6, so 2 pads of 8.
        assert!((padding_share(&[0, 1, 2], &[3, 1, 2], 2) - 0.25).abs() < 1e-12);
        assert_eq!(padding_share(&[], &[], 4), 0.0);
        assert_eq!(padding_share(&[0, 1], &[5, 5], 2), 0.0);
    }
}
