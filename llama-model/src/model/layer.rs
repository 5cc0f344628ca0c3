//! One pre-norm transformer block of Llama:
//! `h = x + attention(attention_norm(x))`, `out = h + feed_forward(ffn_norm(h))`.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

use crate::model::attention::{Attention, AttentionConfig};
use crate::model::feed_forward::{FeedForward, FeedForwardConfig};
use crate::model::kv_cache::KvCache;
use crate::model::param_source::{join, ParamSource};
use crate::model::rms_norm::{RmsNorm, RmsNormConfig};
use crate::model::rope::RopeAngles;

/// Configuration of a [`LlamaLayer`].
#[derive(Config, Debug)]
pub struct LlamaLayerConfig {
    pub attention: AttentionConfig,
    pub feed_forward: FeedForwardConfig,
    pub norm: RmsNormConfig,
}

/// A transformer block; field names follow the exercise's checkpoints.
#[derive(Module, Debug)]
pub struct LlamaLayer<B: Backend> {
    pub attention: Attention<B>,
    pub feed_forward: FeedForward<B>,
    pub attention_norm: RmsNorm<B>,
    pub ffn_norm: RmsNorm<B>,
}

impl LlamaLayerConfig {
    /// The block whose parameters `prefix.attention.…`, `prefix.feed_forward.…`,
    /// `prefix.attention_norm.weight` and `prefix.ffn_norm.weight` come from `source`.
    pub fn build<B: Backend, S: ParamSource<B>>(
        &self,
        prefix: &str,
        source: &mut S,
    ) -> Result<LlamaLayer<B>, S::Error> {
        Ok(LlamaLayer {
            attention: self.attention.build(&join(prefix, "attention"), source)?,
            feed_forward: self
                .feed_forward
                .build(&join(prefix, "feed_forward"), source)?,
            attention_norm: self.norm.build(&join(prefix, "attention_norm"), source)?,
            ffn_norm: self.norm.build(&join(prefix, "ffn_norm"), source)?,
        })
    }
}

impl<B: Backend> LlamaLayer<B> {
    /// `[batch, seq, dim] -> [batch, seq, dim]`; see [`Attention::forward`] for the
    /// angles, mask, cache and split.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        angles: &RopeAngles<B>,
        mask: Option<Tensor<B, 3>>,
        cache: Option<&mut KvCache<B>>,
        split: usize,
    ) -> Tensor<B, 3> {
        self.forward_traced(x, angles, mask, cache, split).1
    }

    /// Like [`Self::forward`], also returning the intermediate `h` (after the attention
    /// residual) for layer-by-layer comparisons: `(h, out)`.
    pub fn forward_traced(
        &self,
        x: Tensor<B, 3>,
        angles: &RopeAngles<B>,
        mask: Option<Tensor<B, 3>>,
        cache: Option<&mut KvCache<B>>,
        split: usize,
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let attended = self.attention.forward(
            self.attention_norm.forward(x.clone()),
            angles,
            mask,
            cache,
            split,
        );
        let h = x + attended;
        let out = h.clone()
            + self
                .feed_forward
                .forward_split(self.ffn_norm.forward(h.clone()), split);
        (h, out)
    }

    /// One decoding step of independent sequences, `x` `[1, rows, dim]`, each row with its
    /// own cache; see [`Attention::forward_rows`]. Returns `[1, rows, dim]`.
    pub fn forward_rows(
        &self,
        x: Tensor<B, 3>,
        angles: &RopeAngles<B>,
        caches: &mut [&mut KvCache<B>],
        split: usize,
    ) -> Tensor<B, 3> {
        let attended = self.attention.forward_rows(
            self.attention_norm.forward(x.clone()),
            angles,
            caches,
            split,
        );
        let h = x + attended;
        h.clone()
            + self
                .feed_forward
                .forward_split(self.ffn_norm.forward(h), split)
    }

    /// The layer's output at one position per row: `x` `[batch, seq, dim]` rotated by
    /// `angles`; `positions` `[batch]` (each below `seq`), rotated by `position_angles`
    /// `[batch, 1]`, with `mask` `[batch, 1, seq]` hiding the keys after each position.
    /// Returns `[batch, 1, dim]`, the rows of [`Self::forward`] at `positions`: only the
    /// keys and values are computed for the whole sequence.
    pub fn forward_at(
        &self,
        x: Tensor<B, 3>,
        angles: &RopeAngles<B>,
        positions: Tensor<B, 1, Int>,
        position_angles: &RopeAngles<B>,
        mask: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        let normed = self.attention_norm.forward(x.clone());
        let x_at = gather_positions(x, positions.clone());
        let normed_at = gather_positions(normed.clone(), positions);
        let attended =
            self.attention
                .forward_queries(normed, angles, normed_at, position_angles, mask);
        let h = x_at + attended;
        h.clone() + self.feed_forward.forward_split(self.ffn_norm.forward(h), 1)
    }
}

/// Row `positions[b]` of each batch row `b` of `x` `[batch, seq, dim]`: `[batch, 1, dim]`.
/// Positions must be below `seq` (not every backend checks gather indices).
pub fn gather_positions<B: Backend>(x: Tensor<B, 3>, positions: Tensor<B, 1, Int>) -> Tensor<B, 3> {
    let [batch, _, dim] = x.dims();
    let index = positions.reshape([batch, 1, 1]).repeat_dim(2, dim);
    x.gather(1, index)
}
