//! SwiGLU feed-forward block (Shazeer, 2020): `w2(silu(w1 x) * w3 x)`.

use burn::config::Config;
use burn::module::Module;
use burn::module::Param;
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};

use crate::split_matmul::linear_split;

/// Configuration of a [`FeedForward`] block.
#[derive(Config, Debug)]
pub struct FeedForwardConfig {
    /// Model width.
    pub dim: usize,
    /// Inner width.
    pub hidden_dim: usize,
    /// Dropout on the block's output.
    #[config(default = 0.0)]
    pub dropout: f64,
    /// Standard deviation of the normal initialisation of w1/w3 (llama2.c: 0.02).
    #[config(default = 0.02)]
    pub init_std: f64,
    /// Standard deviation for w3 (llama2.c scales it by `1/sqrt(2 n_layers)`).
    #[config(default = 0.02)]
    pub w3_init_std: f64,
}

/// The gated feed-forward block of a Llama layer.
#[derive(Module, Debug)]
pub struct FeedForward<B: Backend> {
    /// Gate projection `dim -> hidden_dim`.
    pub w1: Linear<B>,
    /// Down projection `hidden_dim -> dim`.
    pub w2: Linear<B>,
    /// Up projection `dim -> hidden_dim`.
    pub w3: Linear<B>,
    pub dropout: Dropout,
}

/// A bias-free linear layer with N(0, std²) weights, as llama2.c initialises them.
///
/// The weight is stored as PyTorch stores it, `[d_out, d_in]`, and held as its transposed
/// view `[d_in, d_out]`, exactly as a loaded checkpoint's weights are: a randomly initialised
/// model (the benchmark's presets, training from scratch) then runs the same products, at
/// the same speed, as a loaded one. Burn's own `[d_in, d_out]` layout made flex's decoding
/// of the 42M shape a third slower than with the checkpoint layout.
pub(crate) fn linear<B: Backend>(
    d_in: usize,
    d_out: usize,
    std: f64,
    device: &B::Device,
) -> Linear<B> {
    let weight = Tensor::<B, 2>::random([d_out, d_in], Distribution::Normal(0.0, std), device);
    Linear {
        weight: Param::from_tensor(weight.transpose()),
        bias: None,
    }
}

impl FeedForwardConfig {
    /// Randomly initialised block.
    pub fn init<B: Backend>(&self, device: &B::Device) -> FeedForward<B> {
        FeedForward {
            w1: linear(self.dim, self.hidden_dim, self.init_std, device),
            w2: linear(self.hidden_dim, self.dim, self.init_std, device),
            w3: linear(self.dim, self.hidden_dim, self.w3_init_std, device),
            dropout: DropoutConfig::new(self.dropout).init(),
        }
    }
}

impl<B: Backend> FeedForward<B> {
    /// `[batch, seq, dim] -> [batch, seq, dim]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.forward_split(x, 1)
    }

    /// [`Self::forward`] with each weight product split into `parts` column blocks run in
    /// parallel (decoding; see [`crate::split_matmul`]).
    pub fn forward_split(&self, x: Tensor<B, 3>, parts: usize) -> Tensor<B, 3> {
        let gate = silu(linear_split(&self.w1, x.clone(), parts));
        let up = linear_split(&self.w3, x, parts);
        self.dropout
            .forward(linear_split(&self.w2, gate * up, parts))
    }
}
