//! [`Projection`]: every weight product of the model (the attention's and the feed-forward's
//! projections) goes through one: a bias-free linear map, stored in f32, f16 or int8, with an
//! optional LoRA adapter (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language
//! Models").
//!
//! LoRA keeps a pre-trained weight `W` `[d_in, d_out]` frozen and learns a low-rank update:
//!
//! ```text
//! y = x W + (alpha / r) · (x A) B          A: [d_in, r], B: [r, d_out], r ≪ d_in, d_out
//! ```
//!
//! `B` starts at zero, so a fresh adapter leaves the layer's output exactly as it was, and
//! training moves only `r (d_in + d_out)` numbers per layer instead of `d_in d_out`. `A`
//! starts as PEFT initialises `lora_A` (`kaiming_uniform_(a = √5)`), which for a fan-in of
//! `d_in` is the uniform distribution on `±1/√d_in`. The update can be merged into the weight
//! afterwards (`W + (alpha / r) A B`), giving a plain layer of the same speed.
//!
//! The fields `weight` and `bias` are named as in Burn's `Linear`, so a model's record paths
//! (`layers.0.attention.compute_query.weight`) do not depend on whether LoRA is in use; the
//! adapter adds `….lora.lora_a` and `….lora.lora_b`.

use std::sync::Arc;

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::train::seeded_dropout::seeded_dropout_rows;
use crate::weights::q8_matrix::Q8Matrix;
use crate::weights::q8_product::q8_product;
use crate::weights::split_matmul::matmul_split;

/// The trainable low-rank pair of a [`Projection`].
#[derive(Module, Debug)]
pub struct LoraAdapter<B: Backend> {
    /// `A` `[d_in, rank]`.
    pub lora_a: Param<Tensor<B, 2>>,
    /// `B` `[rank, d_out]`.
    pub lora_b: Param<Tensor<B, 2>>,
    /// `alpha / rank` (a setting, not saved in records).
    pub scale: f64,
    /// Dropout probability on the adapter's input in training (a setting).
    pub dropout: f64,
    /// Seed of the next training dropout mask ([`crate::Llama::with_lora_dropout_seed`]).
    pub dropout_seed: u64,
    /// Global index of the batch's first row (data-parallel training: each process draws
    /// its rows' part of the global batch's mask; 0 on one process).
    pub dropout_first_row: usize,
}

impl<B: Backend> LoraAdapter<B> {
    /// A fresh adapter for a `d_in -> d_out` layer: `A` uniform on `±1/√d_in` drawn from
    /// `seed` (not from the backend's generator, so a run is reproducible from its seed), `B`
    /// zero.
    pub fn new(
        d_in: usize,
        d_out: usize,
        rank: usize,
        scale: f64,
        seed: u64,
        device: &B::Device,
    ) -> Self {
        let bound = (d_in as f64).sqrt().recip();
        let mut rng = StdRng::seed_from_u64(seed);
        let a: Vec<f32> = (0..d_in * rank)
            .map(|_| rng.random_range(-bound..bound) as f32)
            .collect();
        Self {
            lora_a: Param::from_tensor(Tensor::from_data(TensorData::new(a, [d_in, rank]), device)),
            lora_b: Param::from_tensor(Tensor::zeros([rank, d_out], device)),
            scale,
            dropout: 0.0,
            dropout_seed: 0,
            dropout_first_row: 0,
        }
    }

    /// The adapter with dropout probability `p` on its input in training.
    pub fn with_dropout(self, p: f64) -> Self {
        Self { dropout: p, ..self }
    }

    /// The adapter from given factors `a` `[d_in, rank]` and `b` `[rank, d_out]`.
    pub fn from_factors(a: Tensor<B, 2>, b: Tensor<B, 2>, scale: f64) -> Self {
        Self {
            lora_a: Param::from_tensor(a),
            lora_b: Param::from_tensor(b),
            scale,
            dropout: 0.0,
            dropout_seed: 0,
            dropout_first_row: 0,
        }
    }

    /// `(alpha / r) · (dropout(x) A) B` for `x` `[rows, d_in]`: `[rows, d_out]`. Dropout
    /// acts in training only (an autodiff backend), its mask drawn from `dropout_seed`.
    pub fn delta(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.delta_rows(x, 0)
    }

    /// [`Self::delta`] of rows `first_row..` of a larger input (the dropout mask is that
    /// part of the larger input's mask; see [`seeded_dropout_rows`]).
    fn delta_rows(&self, x: Tensor<B, 2>, first_row: usize) -> Tensor<B, 2> {
        seeded_dropout_rows(x, self.dropout, self.dropout_seed, first_row)
            .matmul(self.lora_a.val())
            .matmul(self.lora_b.val())
            * self.scale
    }

    /// The update to the weight, `(alpha / r) A B` `[d_in, d_out]`.
    pub fn weight_delta(&self) -> Tensor<B, 2> {
        self.lora_a.val().matmul(self.lora_b.val()) * self.scale
    }
}

/// A bias-free (or biased) linear layer `d_in -> d_out` with an optional [`LoraAdapter`].
#[derive(Module, Debug)]
pub struct Projection<B: Backend> {
    /// `[d_in, d_out]` (Burn's layout: a transposed view of PyTorch's `[d_out, d_in]`).
    pub weight: Param<Tensor<B, 2>>,
    /// `[d_out]`, if any.
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// The low-rank update, if LoRA is on for this layer.
    pub lora: Option<LoraAdapter<B>>,
    /// The weight in int8 (`[d_out, d_in]`), when decoding runs on it ([`crate::weights::q8_weights`]);
    /// `weight` then holds its dequantized values. Not a parameter: not saved in records.
    pub quantized: Option<Arc<Q8Matrix>>,
}

impl<B: Backend> From<Linear<B>> for Projection<B> {
    fn from(linear: Linear<B>) -> Self {
        Self {
            weight: linear.weight,
            bias: linear.bias,
            lora: None,
            quantized: None,
        }
    }
}

impl<B: Backend> Projection<B> {
    /// `d_in`.
    pub fn d_in(&self) -> usize {
        self.weight.dims()[0]
    }

    /// `d_out`.
    pub fn d_out(&self) -> usize {
        self.weight.dims()[1]
    }

    /// `[batch, seq, d_in] -> [batch, seq, d_out]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.forward_split(x, 1)
    }

    /// [`Self::forward`] with the base product split into `parts` column blocks run in
    /// parallel (decoding; see [`crate::weights::split_matmul`]). The adapter's two thin products
    /// are not split.
    pub fn forward_split(&self, x: Tensor<B, 3>, parts: usize) -> Tensor<B, 3> {
        let [batch, seq, d_in] = x.dims();
        let base = |x: Tensor<B, 3>| match &self.quantized {
            Some(w) => q8_product(x, w, parts),
            None => matmul_split(x, self.weight.val(), parts),
        };
        let mut out = match &self.lora {
            Some(lora) => {
                // Token rows: batch row `r` is rows `r·seq..(r+1)·seq`.
                let delta = lora.delta_rows(
                    x.clone().reshape([batch * seq, d_in]),
                    lora.dropout_first_row * seq,
                );
                base(x) + delta.reshape([batch, seq, self.d_out()])
            }
            None => base(x),
        };
        if let Some(bias) = &self.bias {
            out = out + bias.val().unsqueeze();
        }
        out
    }

    /// Merge the adapter, if any, into the weight (`W + (alpha / r) A B`) and remove it.
    pub fn merge(&mut self) {
        if let Some(lora) = self.lora.take() {
            self.quantized = None; // the int8 copy no longer matches
            let delta = lora.weight_delta();
            self.weight = self.weight.clone().map(|w| w + delta);
        }
    }

    /// The layer with its weight and bias requiring no gradient (the adapter, if any, keeps
    /// training).
    pub fn frozen(self) -> Self {
        Self {
            weight: self.weight.set_require_grad(false),
            bias: self.bias.map(|b| b.set_require_grad(false)),
            lora: self.lora,
            quantized: self.quantized,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};
    use burn::tensor::{Distribution, Tolerance};

    type B = NdArray;

    fn layer(d_in: usize, d_out: usize) -> Projection<B> {
        let device = Default::default();
        let w = Tensor::<B, 2>::random([d_out, d_in], Distribution::Normal(0.0, 1.0), &device);
        Projection {
            weight: Param::from_tensor(w.transpose()),
            bias: None,
            lora: None,
            quantized: None,
        }
    }

    #[test]
    fn a_fresh_adapter_changes_nothing_and_its_a_is_bounded() {
        let device = Default::default();
        let base = layer(32, 48);
        let x = Tensor::<B, 3>::random([2, 3, 32], Distribution::Normal(0.0, 1.0), &device);
        let before = base.forward(x.clone()).into_data();
        let adapter = LoraAdapter::new(32, 48, 4, 2.0, 7, &device);
        let a: Vec<f32> = adapter.lora_a.val().into_data().to_vec().unwrap();
        let bound = 1.0 / (32f32).sqrt();
        assert!(a.iter().all(|v| v.abs() <= bound) && a.iter().any(|v| v.abs() > bound / 2.0));
        let with = Projection {
            lora: Some(adapter),
            ..base
        };
        assert_eq!(with.forward(x).into_data(), before);
    }

    #[test]
    fn forward_is_base_plus_scaled_low_rank_product_and_merging_keeps_it() {
        let device = Default::default();
        let base = layer(16, 24);
        let a = Tensor::<B, 2>::random([16, 3], Distribution::Normal(0.0, 1.0), &device);
        let b = Tensor::<B, 2>::random([3, 24], Distribution::Normal(0.0, 1.0), &device);
        let x = Tensor::<B, 3>::random([1, 5, 16], Distribution::Normal(0.0, 1.0), &device);
        // The update written out element by element, independent of `delta`'s two products.
        let (xv, av, bv): (Vec<f32>, Vec<f32>, Vec<f32>) = (
            x.to_data().to_vec().unwrap(),
            a.to_data().to_vec().unwrap(),
            b.to_data().to_vec().unwrap(),
        );
        let mut expected: Vec<f32> = base.forward(x.clone()).into_data().to_vec().unwrap();
        for row in 0..5 {
            for o in 0..24 {
                let mut sum = 0.0;
                for k in 0..3 {
                    let xa: f32 = (0..16).map(|i| xv[row * 16 + i] * av[i * 3 + k]).sum();
                    sum += xa * bv[k * 24 + o];
                }
                expected[row * 24 + o] += 0.5 * sum;
            }
        }
        let adapted = Projection {
            lora: Some(LoraAdapter::from_factors(a, b, 0.5)),
            ..base
        };
        let out = adapted.forward(x.clone()).into_data();
        out.assert_approx_eq::<f32>(
            &TensorData::new(expected, [1, 5, 24]),
            Tolerance::absolute(1e-4),
        );
        let mut merged = adapted;
        merged.merge();
        assert!(merged.lora.is_none());
        merged
            .forward(x)
            .into_data()
            .assert_approx_eq::<f32>(&out, Tolerance::absolute(1e-5));
    }

    #[test]
    fn frozen_layers_train_only_their_adapter() {
        let device = Default::default();
        let w = Tensor::<Autodiff<B>, 2>::random([8, 6], Distribution::Normal(0.0, 1.0), &device);
        let layer = Projection {
            weight: Param::from_tensor(w),
            bias: None,
            lora: Some(LoraAdapter::new(8, 6, 2, 1.0, 3, &device)),
            quantized: None,
        }
        .frozen();
        let x = Tensor::<Autodiff<B>, 3>::ones([1, 2, 8], &device);
        let grads = layer.forward(x).sum().backward();
        assert!(layer.weight.grad(&grads).is_none());
        let lora = layer.lora.as_ref().unwrap();
        assert!(lora.lora_b.grad(&grads).is_some());
        assert!(lora.lora_a.grad(&grads).is_some());
    }

    #[test]
    fn adapter_dropout_acts_in_training_only_with_masks_from_its_seed() {
        type TB = Autodiff<NdArray>;
        let device = Default::default();
        let x = Tensor::<TB, 2>::ones([6, 16], &device);
        let a = Tensor::<TB, 2>::ones([16, 2], &device);
        let b = Tensor::<TB, 2>::ones([2, 3], &device);
        let adapter = LoraAdapter::from_factors(a, b, 1.0).with_dropout(0.5);
        let values = |t: Tensor<TB, 2>| t.into_data().to_vec::<f32>().unwrap();
        let seeded = |seed| {
            let mut adapter = adapter.clone();
            adapter.dropout_seed = seed;
            values(adapter.delta(x.clone()))
        };
        // Without dropout every output is 16 · 2 = 32. With it, a row keeping k of its 16
        // inputs (each scaled by 2) gives 2 · 2k = 4k: a multiple of 4 from 0 to 64.
        let (first, again, other) = (seeded(1), seeded(1), seeded(2));
        assert_eq!(first, again);
        assert_ne!(first, other);
        assert!(first
            .iter()
            .all(|v| v % 4.0 == 0.0 && (0.0..=64.0).contains(v)));
        assert!(first.iter().any(|&v| v != 32.0));
        // On the inference backend (and so for `valid()` models) nothing is dropped.
        let plain = LoraAdapter::<B>::from_factors(
            Tensor::ones([16, 2], &device),
            Tensor::ones([2, 3], &device),
            1.0,
        )
        .with_dropout(0.5);
        let out: Vec<f32> = plain
            .delta(Tensor::ones([6, 16], &device))
            .into_data()
            .to_vec()
            .unwrap();
        assert!(out.iter().all(|&v| v == 32.0));
    }
}
