//! Opt-in half-precision (f16) weight matrices, for decoding faster than f32 allows.
//!
//! A decoded token reads every weight matrix once and does two flops per weight, so on a CPU
//! decoding is bound by how fast memory streams the weights: the 42M model's 168 MB of f32
//! weights at ~20–40 GB/s caps it near 120–240 tokens/s whatever the arithmetic. The only way
//! past that wall is fewer bytes per weight. Here the weight matrices (the seven products of
//! every layer and the embedding table, which is also the tied output projection) are stored
//! as IEEE f16, half the bytes; norms stay f32.
//!
//! Each product casts its activations to the weight's dtype and its result back
//! ([`crate::weights::split_matmul`]), so everything between the products (norms, RoPE, attention
//! over the f32 KV cache, softmax, residuals) still runs in f32. The cost is precision: the
//! weights and each product's inputs and outputs are rounded to f16's 11 significant bits
//! (relative error ≤ 2⁻¹¹ ≈ 4.9e-4), so logits move by up to ~2e-2 (1.9e-2 on the
//! stories260K forward fixture) and greedy decoding follows the f32 run until two candidate
//! tokens are that close. It is an inference mode: training
//! needs the f32 weights.
//!
//! Backends differ in what they do with f16 products: burn-flex hands them to gemm's f16
//! kernels, which read f16 and accumulate in f32 on the CPU's SIMD units.

use burn::tensor::backend::Backend;
use burn::tensor::{FloatDType, Tensor};

use crate::Llama;

impl<B: Backend> Llama<B> {
    /// The model with its weight matrices (every linear layer, the embedding table and the
    /// output projection) stored in f16; see [`crate::weights::half`]. Outputs keep the model's
    /// float dtype.
    pub fn with_half_weights(mut self) -> Self {
        self.tok_embeddings.weight = self
            .tok_embeddings
            .weight
            .map(|e: Tensor<B, 2>| e.cast(FloatDType::F16));
        self.map_linear_weights(half_linear_weight)
    }
}

/// A linear weight `[d_in, d_out]` in f16. It is a transposed view of PyTorch's `[d_out,
/// d_in]` storage, and casting copies into contiguous storage of the tensor's logical order,
/// so the `[d_out, d_in]` view is cast: each output's weights stay one contiguous row, the
/// order single-row products read fastest.
pub(crate) fn half_linear_weight<B: Backend>(w: Tensor<B, 2>) -> Tensor<B, 2> {
    w.transpose().cast(FloatDType::F16).transpose()
}
