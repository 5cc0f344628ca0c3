//! Dropout whose mask comes from a seed instead of the backend's random generator.
//!
//! Burn's [`Dropout`](burn::nn::Dropout) draws its mask from the backend's generator, which
//! is global to the process on ndarray and flex: any other code that seeds or draws from it
//! between our seeding and our draw (another training run on another thread, a test running
//! beside ours) changes the mask. A mask drawn from its own seed depends on nothing else, so
//! a training step is reproducible from `(seed, epoch, batch)` alone (the classifier's head
//! dropout, LoRA's input dropout).
//!
//! The mask is drawn on the host and uploaded: `[batch, dim]` for the classifier, `[tokens,
//! d_in]` for a LoRA adapter.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Inverted dropout of `input` (any shape) with drop probability `prob` and a mask drawn
/// from `seed`: each element is kept with probability `1 - prob` and scaled by
/// `1 / (1 - prob)`, or zeroed, so that the expected value is unchanged.
///
/// As Burn's `Dropout`, it is active only on an autodiff backend (training); elsewhere, or
/// with `prob == 0`, `input` is returned as it is. `prob` must be in `[0, 1)`
/// (the callers' configs check it).
pub fn seeded_dropout<B: Backend, const D: usize>(
    input: Tensor<B, D>,
    prob: f64,
    seed: u64,
) -> Tensor<B, D> {
    seeded_dropout_rows(input, prob, seed, 0)
}

/// [`seeded_dropout`] of rows `first_row..first_row + rows` (along dimension 0) of a larger
/// tensor: the mask is that part of the mask [`seeded_dropout`] draws for the whole.
///
/// Data-parallel training cuts a global batch into row blocks, one per process; each draws
/// its block's part of the global batch's mask, so a run on several processes drops the
/// same elements as a run on one.
pub fn seeded_dropout_rows<B: Backend, const D: usize>(
    input: Tensor<B, D>,
    prob: f64,
    seed: u64,
    first_row: usize,
) -> Tensor<B, D> {
    let device = input.device();
    if !B::ad_enabled(&device) || prob <= 0.0 {
        return input;
    }
    let keep = 1.0 - prob;
    let scale = (1.0 / keep) as f32;
    let rows = input.dims()[0];
    let shape = input.shape();
    let numel = shape.num_elements();
    let per_row = numel.checked_div(rows).unwrap_or(0);
    let mut rng = StdRng::seed_from_u64(seed);
    // The draws of the rows before ours, in the order the whole mask draws them.
    for _ in 0..first_row * per_row {
        rng.random::<f64>();
    }
    let mask: Vec<f32> = (0..numel)
        .map(|_| {
            if rng.random::<f64>() < keep {
                scale
            } else {
                0.0
            }
        })
        .collect();
    let mask = Tensor::<B, D>::from_data(TensorData::new(mask, shape), &device);
    input * mask
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};

    type TB = Autodiff<NdArray>;

    fn ones<B: Backend>() -> Tensor<B, 2> {
        Tensor::ones([40, 50], &Default::default())
    }

    fn values<B: Backend>(t: Tensor<B, 2>) -> Vec<f32> {
        t.into_data().to_vec().expect("f32")
    }

    #[test]
    fn the_mask_is_fixed_by_the_seed_alone() {
        let a = values(seeded_dropout(ones::<TB>(), 0.3, 11));
        // Whatever the backend's generator does in between does not change the mask.
        TB::seed(&Default::default(), 99);
        let _ = Tensor::<TB, 1>::random(
            [1000],
            burn::tensor::Distribution::Default,
            &Default::default(),
        );
        let b = values(seeded_dropout(ones::<TB>(), 0.3, 11));
        assert_eq!(a, b);
        let c = values(seeded_dropout(ones::<TB>(), 0.3, 12));
        assert_ne!(a, c);
    }

    #[test]
    fn drops_about_prob_and_scales_the_rest() {
        let out = values(seeded_dropout(ones::<TB>(), 0.3, 5));
        let dropped = out.iter().filter(|&&v| v == 0.0).count();
        // 2000 Bernoulli(0.3) draws: mean 600, standard deviation 20.5; allow 5 of them.
        assert!((498..=702).contains(&dropped), "{dropped} of 2000 dropped");
        let scale = 1.0 / 0.7f32;
        assert!(out.iter().all(|&v| v == 0.0 || (v - scale).abs() < 1e-6));
    }

    #[test]
    fn inactive_without_autodiff_or_probability() {
        let plain = values(seeded_dropout(ones::<NdArray>(), 0.3, 5));
        assert!(plain.iter().all(|&v| v == 1.0));
        let zero = values(seeded_dropout(ones::<TB>(), 0.0, 5));
        assert!(zero.iter().all(|&v| v == 1.0));
    }

    #[test]
    fn row_blocks_draw_their_part_of_the_whole_mask() {
        let whole = values(seeded_dropout(ones::<TB>(), 0.3, 21));
        // Rows 0..15 and 15..40 of the [40, 50] tensor, drawn apart.
        let top = Tensor::<TB, 2>::ones([15, 50], &Default::default());
        let bottom = Tensor::<TB, 2>::ones([25, 50], &Default::default());
        let mut parts = values(seeded_dropout_rows(top, 0.3, 21, 0));
        parts.extend(values(seeded_dropout_rows(bottom, 0.3, 21, 15)));
        assert_eq!(parts, whole);
    }
}
