//! Causal grouped-query self-attention with rotary position embeddings.
//!
//! `n_heads` query heads share `n_kv_heads` key/value heads: query head `h` reads key/value
//! head `h / n_rep` (`n_rep = n_heads / n_kv_heads`), as `repeat_interleave` does in the
//! reference. Instead of materialising the repeated keys and values, the `n_rep` query heads
//! of one group are stacked along the sequence axis and multiplied with their shared keys in
//! one matrix product.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::kv_cache::KvCache;
use crate::lora_linear::LoraLinear;
use crate::param_source::{join, ParamSource, RandomInit};
use crate::rope::RopeAngles;

/// Configuration of an [`Attention`] block.
#[derive(Config, Debug)]
pub struct AttentionConfig {
    /// Model width.
    pub dim: usize,
    /// Number of query heads.
    pub n_heads: usize,
    /// Number of key/value heads (divides `n_heads`).
    pub n_kv_heads: usize,
    /// Dropout on the attention probabilities and on the block's output.
    #[config(default = 0.0)]
    pub dropout: f64,
    /// Standard deviation of the normal initialisation of the projections.
    #[config(default = 0.02)]
    pub init_std: f64,
    /// Standard deviation for `compute_output` (llama2.c scales it by `1/sqrt(2 n_layers)`).
    #[config(default = 0.02)]
    pub output_init_std: f64,
}

/// The attention block of a Llama layer; field names follow the exercise's checkpoints.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// `dim -> n_heads * head_dim`
    pub compute_query: LoraLinear<B>,
    /// `dim -> n_kv_heads * head_dim`
    pub compute_key: LoraLinear<B>,
    /// `dim -> n_kv_heads * head_dim`
    pub compute_value: LoraLinear<B>,
    /// `n_heads * head_dim -> dim`
    pub compute_output: LoraLinear<B>,
    attn_dropout: Dropout,
    resid_dropout: Dropout,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
}

impl AttentionConfig {
    /// Randomly initialised block.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Attention<B> {
        let Ok(block) = self.build("attention", &mut RandomInit::new(device));
        block
    }

    /// The block whose weights `prefix.compute_query.weight` … come from `source` (a
    /// checkpoint, or random draws).
    pub fn build<B: Backend, S: ParamSource<B>>(
        &self,
        prefix: &str,
        source: &mut S,
    ) -> Result<Attention<B>, S::Error> {
        let head_dim = self.dim / self.n_heads;
        let (dim, kv_dim) = (self.dim, self.n_kv_heads * head_dim);
        let (std, output_std) = (self.init_std, self.output_init_std);
        let mut linear = |name: &str, d_in: usize, d_out: usize, std: f64| {
            source
                .linear(&join(prefix, name), d_in, d_out, std)
                .map(LoraLinear::from)
        };
        Ok(Attention {
            compute_query: linear("compute_query.weight", dim, dim, std)?,
            compute_key: linear("compute_key.weight", dim, kv_dim, std)?,
            compute_value: linear("compute_value.weight", dim, kv_dim, std)?,
            compute_output: linear("compute_output.weight", dim, dim, output_std)?,
            attn_dropout: DropoutConfig::new(self.dropout).init(),
            resid_dropout: DropoutConfig::new(self.dropout).init(),
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim,
        })
    }
}

impl<B: Backend> Attention<B> {
    /// Attend over `x` `[batch, seq, dim]`, rotated by `angles` (the positions of its rows).
    ///
    /// * `mask`: additive scores bias `[batch or 1, seq, keys]` (0 = visible, a large
    ///   negative number = hidden), where `keys` is the number of positions attended to
    ///   (cached + `seq` with a cache, else `seq`); `None` lets every query see every key
    ///   (a single decoding step).
    /// * `cache`: when given, the new keys/values are appended to it and the queries attend
    ///   over everything cached.
    /// * `split`: column blocks per weight product, run on rayon's pool (decoding on the CPU;
    ///   1: one product per weight; see [`crate::split_matmul`]).
    ///
    /// Returns `[batch, seq, dim]`.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        angles: &RopeAngles<B>,
        mask: Option<Tensor<B, 3>>,
        cache: Option<&mut KvCache<B>>,
        split: usize,
    ) -> Tensor<B, 3> {
        let [batch, seq, dim] = x.dims();
        let (h, kv, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let n_rep = h / kv;

        let q = self
            .compute_query
            .forward_split(x.clone(), split)
            .reshape([batch, seq, h, hd]);
        let k = self
            .compute_key
            .forward_split(x.clone(), split)
            .reshape([batch, seq, kv, hd]);
        let v = self
            .compute_value
            .forward_split(x, split)
            .reshape([batch, seq, kv, hd]);

        // Rotate queries and keys by their absolute positions, then go head-major.
        let q = angles.rotate(q).swap_dims(1, 2); // [b, h, s, hd]
        let k = angles.rotate(k).swap_dims(1, 2); // [b, kv, s, hd]
        let v = v.swap_dims(1, 2);

        let (k, v) = match cache {
            Some(cache) => cache.append(k, v),
            None => (k, v),
        };
        let keys = k.dims()[2];

        // Query head g*n_rep + r belongs to group g: stack a group's heads along the rows,
        // row index r*seq + t, so one product per group computes all of its scores.
        let q = q.reshape([batch, kv, n_rep * seq, hd]);
        let scale = (hd as f64).sqrt().recip();
        let mut scores = q.matmul(k.swap_dims(2, 3)) * scale; // [b, kv, n_rep*s, keys]
        if let Some(mask) = mask {
            let mask_batch = mask.dims()[0];
            let mask = mask
                .reshape([mask_batch, 1, seq, keys])
                .repeat_dim(2, n_rep); // rows r*seq + t, matching the stacked queries
            scores = scores + mask;
        }
        let probs = self.attn_dropout.forward(softmax(scores, 3));
        let out = probs
            .matmul(v) // [b, kv, n_rep*s, hd]
            .reshape([batch, h, seq, hd])
            .swap_dims(1, 2)
            .reshape([batch, seq, dim]);
        self.resid_dropout
            .forward(self.compute_output.forward_split(out, split))
    }
}
