//! SwiGLU feed-forward block (Shazeer, 2020): `w2(silu(w1 x) * w3 x)`.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::model::param_source::{join, ParamSource};
use crate::model::projection::Projection;

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
    pub w1: Projection<B>,
    /// Down projection `hidden_dim -> dim`.
    pub w2: Projection<B>,
    /// Up projection `dim -> hidden_dim`.
    pub w3: Projection<B>,
    pub dropout: Dropout,
}

impl FeedForwardConfig {
    /// The block whose weights `prefix.w1.weight` … come from `source` (a checkpoint, or
    /// random draws).
    pub fn build<B: Backend, S: ParamSource<B>>(
        &self,
        prefix: &str,
        source: &mut S,
    ) -> Result<FeedForward<B>, S::Error> {
        let (dim, hidden) = (self.dim, self.hidden_dim);
        Ok(FeedForward {
            w1: source
                .linear(&join(prefix, "w1.weight"), dim, hidden, self.init_std)?
                .into(),
            w2: source
                .linear(&join(prefix, "w2.weight"), hidden, dim, self.init_std)?
                .into(),
            w3: source
                .linear(&join(prefix, "w3.weight"), dim, hidden, self.w3_init_std)?
                .into(),
            dropout: DropoutConfig::new(self.dropout).init(),
        })
    }
}

impl<B: Backend> FeedForward<B> {
    /// `[batch, seq, dim] -> [batch, seq, dim]`.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.forward_split(x, 1)
    }

    /// [`Self::forward`] with each weight product split into `parts` column blocks run in
    /// parallel (decoding; see [`crate::weights::split_matmul`]).
    pub fn forward_split(&self, x: Tensor<B, 3>, parts: usize) -> Tensor<B, 3> {
        let gate = silu(self.w1.forward_split(x.clone(), parts));
        let up = self.w3.forward_split(x, parts);
        self.dropout
            .forward(self.w2.forward_split(gate * up, parts))
    }
}
