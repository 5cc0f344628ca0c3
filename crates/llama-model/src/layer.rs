//! One pre-norm transformer block of Llama:
//! `h = x + attention(attention_norm(x))`, `out = h + feed_forward(ffn_norm(h))`.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::attention::{Attention, AttentionConfig};
use crate::feed_forward::{FeedForward, FeedForwardConfig};
use crate::kv_cache::KvCache;
use crate::rms_norm::{RmsNorm, RmsNormConfig};
use crate::rope::RopeAngles;

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
    /// Randomly initialised block.
    pub fn init<B: Backend>(&self, device: &B::Device) -> LlamaLayer<B> {
        LlamaLayer {
            attention: self.attention.init(device),
            feed_forward: self.feed_forward.init(device),
            attention_norm: self.norm.init(device),
            ffn_norm: self.norm.init(device),
        }
    }
}

impl<B: Backend> LlamaLayer<B> {
    /// `[batch, seq, dim] -> [batch, seq, dim]`; see [`Attention::forward`] for the
    /// angles, mask and cache.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        angles: &RopeAngles<B>,
        mask: Option<Tensor<B, 3>>,
        cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        self.forward_traced(x, angles, mask, cache).1
    }

    /// Like [`Self::forward`], also returning the intermediate `h` (after the attention
    /// residual) for layer-by-layer comparisons: `(h, out)`.
    pub fn forward_traced(
        &self,
        x: Tensor<B, 3>,
        angles: &RopeAngles<B>,
        mask: Option<Tensor<B, 3>>,
        cache: Option<&mut KvCache<B>>,
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let split = cache.as_ref().map_or(1, |c| c.split());
        let attended =
            self.attention
                .forward(self.attention_norm.forward(x.clone()), angles, mask, cache);
        let h = x + attended;
        let out = h.clone()
            + self
                .feed_forward
                .forward_split(self.ffn_norm.forward(h.clone()), split);
        (h, out)
    }
}
