//! Causal grouped-query self-attention with rotary position embeddings.
//!
//! `n_heads` query heads share `n_kv_heads` key/value heads: query head `h` reads key/value
//! head `h / n_rep` (`n_rep = n_heads / n_kv_heads`), as `repeat_interleave` does in the
//! reference. Instead of materialising the repeated keys and values, the `n_rep` query heads
//! of one group are stacked along the sequence axis and multiplied with their shared keys in
//! one matrix product.
//!
//! Full-sequence passes without a cache (training, prompting, scoring) run the fused attention
//! ([`crate::model::fused_attention`]) where it applies; pre-fill (with a cache) keeps the
//! explicit chain of [`Attention::mix`]. A decoding step's one query row per sequence runs on
//! the host on flex ([`crate::model::decode_attention`]), elsewhere through the same chain;
//! `generate` and the server decode through the same step, so their texts agree.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::model::decode_attention;
use crate::model::fused_attention::{fused_attention, Inputs, Keys};
use crate::model::kv_cache::KvCache;
use crate::model::param_source::{join, ParamSource};
use crate::model::projection::Projection;
use crate::model::rope::RopeAngles;

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
    pub compute_query: Projection<B>,
    /// `dim -> n_kv_heads * head_dim`
    pub compute_key: Projection<B>,
    /// `dim -> n_kv_heads * head_dim`
    pub compute_value: Projection<B>,
    /// `n_heads * head_dim -> dim`
    pub compute_output: Projection<B>,
    attn_dropout: Dropout,
    resid_dropout: Dropout,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    /// Whether passes without a cache may use the fused attention (on by default; off to
    /// compare with the explicit chain). A setting, not saved in records.
    #[module(skip)]
    fused: bool,
}

impl AttentionConfig {
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
                .map(Projection::from)
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
            fused: true,
        })
    }
}

impl<B: Backend> Attention<B> {
    /// Attend over `x` `[batch, seq, dim]`, rotated by `angles` (the positions of its rows).
    ///
    /// * `mask`: additive scores bias `[batch or 1, seq, keys]` (0 = visible, a large
    ///   negative number = hidden), where `keys` is the number of positions attended to
    ///   (cached + `seq` with a cache, else `seq`); `None` lets every query see every key
    ///   (a single decoding step). Without a cache it must be causal (query `t` hides the
    ///   keys after `t`): the fused attention skips those keys.
    /// * `cache`: when given, the new keys/values are appended to it and the queries attend
    ///   over everything cached.
    /// * `split`: column blocks per weight product, run on rayon's pool (decoding on the CPU;
    ///   1: one product per weight; see [`crate::weights::split_matmul`]).
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
        let q = self.queries(x.clone(), angles, split);
        let (k, v) = self.keys_values(x, angles, split);
        let mixed = match cache {
            Some(cache) => {
                let (k, v) = cache.append(k, v);
                self.mix(q, k, v, mask)
            }
            None => self.mix_fused((q, k, v, mask, Keys::Causal)),
        };
        self.output(mixed, split)
    }

    /// This block with the fused attention on or off ([`Self::forward`] without a cache and
    /// [`Self::forward_queries`]).
    pub fn with_fused(mut self, fused: bool) -> Self {
        self.fused = fused;
        self
    }

    /// One decoding step of independent sequences, one token each, laid out as one
    /// sequence: `x` `[1, rows, dim]`, position `i` rotated by position `i` of `angles`
    /// (`[1, rows]`) and attending over its own cache `caches[i]` (to which its key and value
    /// are appended). The weight products run on all rows at once (as a pre-fill's do: one
    /// product per weight, not one per row); the attention runs per row, over that row's keys
    /// only (on flex, on the host: [`decode_attention`]). Returns `[1, rows, dim]`.
    pub fn forward_rows(
        &self,
        x: Tensor<B, 3>,
        angles: &RopeAngles<B>,
        caches: &mut [&mut KvCache<B>],
        split: usize,
    ) -> Tensor<B, 3> {
        let q = self.queries(x.clone(), angles, split); // [1, h, rows, hd]
        let (k, v) = self.keys_values(x, angles, split); // [1, kv, rows, hd]
        let mixed: Vec<Tensor<B, 3>> = caches
            .iter_mut()
            .enumerate()
            .map(|(i, cache)| {
                let (k, v) = cache.append(k.clone().narrow(2, i, 1), v.clone().narrow(2, i, 1));
                let q = q.clone().narrow(2, i, 1);
                decode_attention::one_query(&q, &k, &v).unwrap_or_else(|| self.mix(q, k, v, None))
            })
            .collect();
        self.output(Tensor::cat(mixed, 1), split)
    }

    /// Attention of a few query rows over a whole sequence: the keys and values come from
    /// `x` `[batch, seq, dim]` rotated by `angles`, the queries from `queries`
    /// `[batch, q_seq, dim]` rotated by `query_angles`. `mask` `[batch or 1, q_seq, seq]` as
    /// in [`Self::forward`]. Returns `[batch, q_seq, dim]`, the rows of [`Self::forward`]
    /// at the queries' positions.
    pub fn forward_queries(
        &self,
        x: Tensor<B, 3>,
        angles: &RopeAngles<B>,
        queries: Tensor<B, 3>,
        query_angles: &RopeAngles<B>,
        mask: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        let q = self.queries(queries, query_angles, 1);
        let (k, v) = self.keys_values(x, angles, 1);
        self.output(self.mix_fused((q, k, v, Some(mask), Keys::All)), 1)
    }

    /// Rotated queries `[batch, n_heads, seq, head_dim]` of `x` `[batch, seq, dim]`.
    fn queries(&self, x: Tensor<B, 3>, angles: &RopeAngles<B>, split: usize) -> Tensor<B, 4> {
        let [batch, seq, _] = x.dims();
        let q = self.compute_query.forward_split(x, split).reshape([
            batch,
            seq,
            self.n_heads,
            self.head_dim,
        ]);
        angles.rotate(q).swap_dims(1, 2)
    }

    /// Rotated keys and the values, each `[batch, n_kv_heads, seq, head_dim]`, of `x`
    /// `[batch, seq, dim]`.
    fn keys_values(
        &self,
        x: Tensor<B, 3>,
        angles: &RopeAngles<B>,
        split: usize,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let [batch, seq, _] = x.dims();
        let shape = [batch, seq, self.n_kv_heads, self.head_dim];
        let k = self
            .compute_key
            .forward_split(x.clone(), split)
            .reshape(shape);
        let v = self.compute_value.forward_split(x, split).reshape(shape);
        (angles.rotate(k).swap_dims(1, 2), v.swap_dims(1, 2))
    }

    /// The output projection of the heads' attention `out` `[batch, seq, n_heads * head_dim]`:
    /// `[batch, seq, dim]`.
    fn output(&self, out: Tensor<B, 3>, split: usize) -> Tensor<B, 3> {
        self.resid_dropout
            .forward(self.compute_output.forward_split(out, split))
    }

    /// [`Self::mix`] through the fused attention where it applies: on, no dropout on the
    /// probabilities while training (it cannot be fused), and a backend with the fused backward
    /// or no autodiff. `inputs` as [`crate::model::fused_attention::Inputs`].
    fn mix_fused(&self, inputs: Inputs<B>) -> Tensor<B, 3> {
        let device = inputs.0.device();
        let dropout = self.attn_dropout.prob > 0.0 && B::ad_enabled(&device);
        let inputs = if self.fused && !dropout {
            match fused_attention(inputs) {
                Ok(out) => {
                    let [batch, h, seq, hd] = out.dims();
                    return out.swap_dims(1, 2).reshape([batch, seq, h * hd]);
                }
                Err(inputs) => inputs,
            }
        } else {
            inputs
        };
        let (q, k, v, mask, _) = inputs;
        self.mix(q, k, v, mask)
    }

    /// Softmax attention of `q` `[batch, n_heads, seq, head_dim]` over `k`, `v`
    /// `[batch, n_kv_heads, keys, head_dim]` with the additive `mask` `[batch or 1, seq, keys]`,
    /// before the output projection: `[batch, seq, n_heads * head_dim]`.
    pub(crate) fn mix(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        mask: Option<Tensor<B, 3>>,
    ) -> Tensor<B, 3> {
        let [batch, h, seq, hd] = q.dims();
        let [_, kv, keys, _] = k.dims();
        let n_rep = h / kv;

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
        probs
            .matmul(v) // [b, kv, n_rep*s, hd]
            .reshape([batch, h, seq, hd])
            .swap_dims(1, 2)
            .reshape([batch, seq, h * hd])
    }
}
