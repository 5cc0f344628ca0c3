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
    let device = input.device();
    if !B::ad_enabled(&device) || prob <= 0.0 {
        return input;
    }
    let keep = 1.0 - prob;
    let scale = (1.0 / keep) as f32;
    let shape = input.shape();
    let mut rng = StdRng::seed_from_u64(seed);
    let mask: Vec<f32> = (0..shape.num_elements())
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
}
