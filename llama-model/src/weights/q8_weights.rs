//! Decoding with int8 weights, as llama2.c's `runq.c` does.
//!
//! Every weight matrix (the seven products of each layer and the output projection) is held
//! in Q8_0 ([`crate::weights::q8_matrix`]) beside its dequantized f32 values. On the CPU backends each
//! product then runs `runq.c`'s scheme through [`crate::weights::q8_kernel`]: the input activations
//! are quantized per group with their own scales, dot products are taken in integers per
//! group, and the scaled group sums are added in f32. Everything between the products
//! (norms, RoPE, attention over the f32 KV cache, softmax, residuals) stays the generic
//! f32 Burn code. The embedding lookup reads the dequantized table, as `runq.c` does.
//!
//! A decoded token then streams a quarter of the f32 bytes (one byte per weight plus a
//! scale per group). The product reads its input back from the backend and hands its
//! output to it, so it suits the CPU backends, whose tensors are host memory already;
//! on the others [`Llama::without_q8`] keeps the dequantized f32 weights (the same weight
//! values, f32 activations, the backend's own products).
//!
//! Burn 0.21's quantized tensors are no route here: on its CPU backends a quantized
//! product dequantizes the whole weight first, so it cannot beat f32.
//!
//! Inference only: the products are not differentiated.

use std::collections::HashMap;
use std::sync::Arc;

use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use crate::weights::q8_matrix::{group_size_for, Q8Error, Q8Matrix};
use crate::Llama;

/// int8 matrices by parameter name (`layers.0.attention.compute_query.weight`, …,
/// `tok_embeddings.weight`, `output.weight`), each `[d_out, d_in]` as PyTorch stores them.
pub type Q8Store = HashMap<String, Arc<Q8Matrix>>;

/// A `[d_out, d_in]` matrix as the `[d_in, d_out]` transposed view the models keep.
fn linear_weight<B: Backend>(m: &Q8Matrix, device: &B::Device) -> Tensor<B, 2> {
    Tensor::<B, 2>::from_data(
        TensorData::new(m.dequantize(), [m.rows(), m.cols()]),
        device,
    )
    .transpose()
}

/// `[rows, cols]` values of a tensor, row-major, as f32.
fn host_values<B: Backend>(t: Tensor<B, 2>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .to_vec()
        .expect("converted to f32")
}

impl<B: Backend> Llama<B> {
    /// The group size [`Self::with_q8_weights`] picks for this model: 64, or the largest
    /// power of two dividing every row length (`dim`, the hidden width) when smaller.
    pub fn q8_group_size(&self) -> usize {
        group_size_for(
            self.projections()
                .map(|(_, linear)| linear.d_in())
                .chain([self.dim()]),
        )
    }

    /// The group size of the int8 weights in use, if any.
    pub fn q8_group(&self) -> Option<usize> {
        self.head_quantized.as_ref().map(|m| m.group())
    }

    /// The model with every weight matrix quantized to Q8_0 in groups of `group` (see
    /// [`crate::weights::q8_weights`]); the f32 weights become their dequantized values.
    pub fn with_q8_weights(self, group: usize) -> Result<Self, Q8Error> {
        let mut store = Q8Store::new();
        let quantize = |t: Tensor<B, 2>| -> Result<Arc<Q8Matrix>, Q8Error> {
            let [rows, cols] = t.dims();
            Q8Matrix::quantize(&host_values(t), rows, cols, group).map(Arc::new)
        };
        store.insert(
            "tok_embeddings.weight".into(),
            quantize(self.tok_embeddings.weight.val())?,
        );
        if let Some(output) = &self.output {
            store.insert(
                "output.weight".into(),
                quantize(output.weight.val().transpose())?,
            );
        }
        for (name, linear) in self.projections() {
            store.insert(
                format!("{name}.weight"),
                quantize(linear.weight.val().transpose())?,
            );
        }
        Ok(self.with_q8_store(store))
    }

    /// The model running on the int8 matrices of `store`, which holds one for every weight
    /// matrix under its parameter name (from a Q8_0 file, or [`Self::with_q8_weights`]); the
    /// f32 weights become their dequantized values.
    ///
    /// Panics if `store` lacks a matrix or a shape differs: the checkpoint reader checks
    /// both against the config before building the model.
    pub fn with_q8_store(mut self, mut store: Q8Store) -> Self {
        let device = self.tok_embeddings.weight.device();
        let mut take = |name: &str| {
            store
                .remove(name)
                .unwrap_or_else(|| panic!("no int8 matrix for {name}"))
        };
        let embeddings = take("tok_embeddings.weight");
        self.tok_embeddings.weight = Param::from_tensor(Tensor::from_data(
            TensorData::new(
                embeddings.dequantize(),
                [embeddings.rows(), embeddings.cols()],
            ),
            &device,
        ));
        self.head_quantized = Some(match self.output.as_mut() {
            Some(output) => {
                let m = take("output.weight");
                output.weight = Param::from_tensor(linear_weight(&m, &device));
                m
            }
            None => embeddings,
        });
        for (name, linear) in self.projections_mut() {
            let m = take(&format!("{name}.weight"));
            assert_eq!(
                [m.cols(), m.rows()],
                linear.weight.dims(),
                "int8 matrix {name}"
            );
            linear.weight = Param::from_tensor(linear_weight(&m, &device));
            linear.quantized = Some(m);
        }
        self
    }

    /// The model without its int8 matrices: the dequantized f32 weights, run by the
    /// backend's own products (the route for the GPU backends, and for training).
    pub fn without_q8(mut self) -> Self {
        self.head_quantized = None;
        for (_, linear) in self.projections_mut() {
            linear.quantized = None;
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::q8_product::q8_product;
    use crate::LlamaConfig;
    use burn::backend::NdArray;
    use burn::tensor::{Distribution, Int};

    type B = NdArray;

    #[test]
    fn the_product_matches_dequantized_weights_within_the_activation_rounding() {
        let device = Default::default();
        let x = Tensor::<B, 3>::random([2, 3, 64], Distribution::Normal(0.0, 1.0), &device);
        let w = Tensor::<B, 2>::random([40, 64], Distribution::Normal(0.0, 1.0), &device);
        let m = Q8Matrix::quantize(&host_values(w), 40, 64, 32).unwrap();
        let exact = x
            .clone()
            .matmul(linear_weight::<B>(&m, &device).unsqueeze());
        let got = q8_product(x.clone(), &m, 2);
        // Each activation moves by at most half its group's step (max|x| / 127 / 2), so an
        // output moves by at most Σ_j |w_j| · step_j / 2 (plus f32 rounding).
        let (xv, wv) = (host_values(x.reshape([6, 64])), m.dequantize());
        let mut bound = 0.0f32;
        for r in 0..6 {
            let steps: Vec<f32> = xv[r * 64..(r + 1) * 64]
                .chunks(32)
                .map(|g| g.iter().fold(0.0f32, |a, v| a.max(v.abs())) / 127.0)
                .collect();
            for o in 0..40 {
                let b: f32 = (0..64)
                    .map(|j| wv[o * 64 + j].abs() * steps[j / 32] / 2.0)
                    .sum();
                bound = bound.max(b);
            }
        }
        let diff: f32 = (got - exact).abs().max().into_scalar();
        assert!(diff > 0.0 && diff <= bound * 1.001, "{diff} > {bound}");
    }

    #[test]
    fn quantized_models_keep_shapes_and_fall_back_to_their_dequantized_weights() {
        let device = Default::default();
        let config = LlamaConfig::new(64, 2, 4, 96)
            .with_hidden_dim(Some(172))
            .with_max_seq_len(16);
        let model: Llama<B> = config.init(&device);
        assert_eq!(model.q8_group_size(), 4);
        let q8 = model.clone().with_q8_weights(4).unwrap();
        assert_eq!(q8.q8_group(), Some(4));
        let tokens = Tensor::<B, 2, Int>::from_data([[1, 5, 9, 2]], &device);
        let (f32_logits, q8_logits) = (
            model.forward(tokens.clone()).logits,
            q8.forward(tokens.clone()).logits,
        );
        let fallback = q8.clone().without_q8();
        assert_eq!(fallback.q8_group(), None);
        let fallback_logits = fallback.forward(tokens).logits;
        // The int8 route, the dequantized route and f32 all differ a little.
        let spread =
            |a: Tensor<B, 3>, b: Tensor<B, 3>| -> f32 { (a - b).abs().max().into_scalar() };
        let (d1, d2) = (
            spread(q8_logits.clone(), f32_logits.clone()),
            spread(q8_logits, fallback_logits.clone()),
        );
        assert!(d1 > 0.0 && d1 < 0.05, "{d1}");
        assert!(d2 > 0.0 && d2 < 0.05, "{d2}");
        assert!(spread(fallback_logits, f32_logits) < 0.05);
    }
}
