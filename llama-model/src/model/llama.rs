//! The Llama 2 model: token embeddings, a stack of `LlamaLayer`s, a final RMSNorm, and an
//! output projection tied to the embeddings.

use std::sync::Arc;

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Embedding, Linear};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::model::attention::AttentionConfig;
use crate::model::config::LlamaConfig;
use crate::model::feed_forward::FeedForwardConfig;
use crate::model::kv_cache::{KvCache, LlamaCache};
use crate::model::layer::{gather_positions, LlamaLayer, LlamaLayerConfig};
use crate::model::param_source::{ParamSource, RandomInit};
use crate::model::projection::Projection;
use crate::model::rms_norm::{RmsNorm, RmsNormConfig};
use crate::model::rope::{RopeAngles, RotaryEmbedding, RotaryEmbeddingConfig, TABLE_POSITIONS};
use crate::weights::q8_matrix::Q8Matrix;
use crate::weights::q8_product::q8_product;
use crate::weights::split_matmul::{linear_split, matmul_split};

/// Added to the attention score of a hidden key. Finite (not -inf) so that a query with
/// every key hidden (a left-padding row) gets a uniform distribution instead of NaN;
/// `exp(MASKED - max)` is exactly 0 in f32, so visible keys see no difference.
pub const MASKED: f32 = -1.0e9;

/// Logits and final hidden states of a forward pass.
#[derive(Debug, Clone)]
pub struct LlamaOutput<B: Backend> {
    /// `[batch, seq, vocab]`, or `[batch, 1, vocab]` from the last-position variants.
    pub logits: Tensor<B, 3>,
    /// Hidden states after the final norm, `[batch, seq, dim]`.
    pub hidden: Tensor<B, 3>,
}

/// Every intermediate of a forward pass, for layer-by-layer comparison with a reference.
#[derive(Debug, Clone)]
pub struct LlamaTrace<B: Backend> {
    /// Token embeddings `[batch, seq, dim]`.
    pub embeddings: Tensor<B, 3>,
    /// Per layer: `(x + attention(attention_norm(x)), layer output)`, each `[batch, seq, dim]`.
    pub layers: Vec<(Tensor<B, 3>, Tensor<B, 3>)>,
    /// Logits and final hidden states at every position.
    pub output: LlamaOutput<B>,
}

/// Llama 2; field names follow the exercise's checkpoints.
#[derive(Module, Debug)]
pub struct Llama<B: Backend> {
    /// `[vocab, dim]`; also the output projection unless `output` is set.
    pub tok_embeddings: Embedding<B>,
    pub layers: Vec<LlamaLayer<B>>,
    pub norm: RmsNorm<B>,
    /// A separate output projection, only for checkpoints whose classifier is not shared
    /// (llama2.c `.bin` with a negative vocab size, or differing `output.weight`).
    pub output: Option<Linear<B>>,
    /// The output projection in int8 `[vocab, dim]` when decoding runs on int8 weights
    /// ([`crate::weights::q8_weights`]); not a parameter.
    pub(crate) head_quantized: Option<Arc<Q8Matrix>>,
    dropout: Dropout,
    /// Rotary tables, a constant of the model.
    rope: RotaryEmbedding<B>,
    n_kv_heads: usize,
    head_dim: usize,
    /// Context length; the rotary tables cover it up to 4096 positions (`model::rope`).
    max_seq_len: usize,
}

impl LlamaConfig {
    /// A randomly initialised model (llama2.c's init: N(0, 0.02), with `compute_output`
    /// and `w3` scaled by `1/sqrt(2 n_layers)`). The config must be valid
    /// ([`LlamaConfig::validate`]).
    pub fn init<B: Backend>(&self, device: &B::Device) -> Llama<B> {
        let Ok(model) = self.build(&mut RandomInit::new(device), device);
        model
    }

    /// The model whose parameters (the exercise's state-dict names: `tok_embeddings.weight`,
    /// `layers.{i}.…`, `norm.weight`, and `output.weight` when the head is not tied) come from
    /// `source`: a checkpoint's tensors, or llama2.c's random initialisation ([`Self::init`]).
    /// The RoPE tables are computed on `device`.
    pub fn build<B: Backend, S: ParamSource<B>>(
        &self,
        source: &mut S,
        device: &B::Device,
    ) -> Result<Llama<B>, S::Error> {
        let std = 0.02;
        let scaled_std = std / ((2 * self.n_layers) as f64).sqrt();
        let layer = LlamaLayerConfig::new(
            AttentionConfig::new(self.dim, self.n_heads, self.n_kv_heads())
                .with_dropout(self.dropout)
                .with_init_std(std)
                .with_output_init_std(scaled_std),
            FeedForwardConfig::new(self.dim, self.hidden_dim())
                .with_dropout(self.dropout)
                .with_init_std(std)
                .with_w3_init_std(scaled_std),
            RmsNormConfig::new(self.dim).with_eps(self.norm_eps),
        );
        let (dim, vocab) = (self.dim, self.vocab_size);
        // Drawn in this order (head, embeddings, layers) from a random source.
        let output = if self.tie_embeddings {
            None
        } else {
            Some(source.linear("output.weight", dim, vocab, std)?)
        };
        let tok_embeddings = Embedding {
            weight: source.matrix("tok_embeddings.weight", [vocab, dim], std)?,
        };
        let layers = (0..self.n_layers)
            .map(|i| layer.build(&format!("layers.{i}"), source))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Llama {
            tok_embeddings,
            layers,
            norm: RmsNormConfig::new(dim)
                .with_eps(self.norm_eps)
                .build("norm", source)?,
            output,
            head_quantized: None,
            dropout: DropoutConfig::new(self.dropout).init(),
            rope: RotaryEmbeddingConfig::new(self.head_dim(), table_positions(self.max_seq_len))
                .with_theta(self.rope_theta)
                .with_scaling(self.rope_scaling.clone())
                .with_precision(self.rope_frequency_precision)
                .init(device),
            n_kv_heads: self.n_kv_heads(),
            head_dim: self.head_dim(),
            max_seq_len: self.max_seq_len,
        })
    }
}

/// Positions whose RoPE angles a model of context `max_seq_len` precomputes: its context, up
/// to 4096 (see `model::rope`).
fn table_positions(max_seq_len: usize) -> usize {
    max_seq_len.min(TABLE_POSITIONS)
}

/// Additive causal mask `[1, seq, start + seq]`: query `t` (absolute position `start + t`)
/// sees keys `0..=start + t`. `None` for a single query, which sees every key.
pub fn causal_mask<B: Backend>(
    seq: usize,
    start: usize,
    device: &B::Device,
) -> Option<Tensor<B, 3>> {
    if seq <= 1 {
        return None;
    }
    let keys = start + seq;
    let data: Vec<f32> = (0..seq)
        .flat_map(|t| (0..keys).map(move |k| if k > start + t { MASKED } else { 0.0 }))
        .collect();
    Some(Tensor::from_data(
        TensorData::new(data, [1, seq, keys]),
        device,
    ))
}

impl<B: Backend> Llama<B> {
    /// Context length: the most positions a pass sees (longer contexts are cropped).
    pub fn max_seq_len(&self) -> usize {
        self.max_seq_len
    }

    /// The rotary embedding (tables for the context's first positions, up to 4096; later
    /// positions are computed per call, or by a grown copy: see `model::rope`).
    pub fn rope(&self) -> &RotaryEmbedding<B> {
        &self.rope
    }

    /// The same model with the context set to `max_seq_len` positions, the rotary tables
    /// rebuilt to match (e.g. a short context, to run past it quickly).
    pub fn with_max_seq_len(mut self, max_seq_len: usize) -> Self {
        let device = self.tok_embeddings.weight.device();
        self.rope = self.rope.resized(table_positions(max_seq_len), &device);
        self.max_seq_len = max_seq_len;
        self
    }

    /// The same model with the fused attention of full-sequence passes on or off (on by
    /// default; off runs the explicit chain everywhere, to compare with it): see
    /// `model::fused_attention`.
    pub fn with_fused_attention(mut self, fused: bool) -> Self {
        self.layers = self
            .layers
            .into_iter()
            .map(|mut layer| {
                layer.attention = layer.attention.with_fused(fused);
                layer
            })
            .collect();
        self
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.tok_embeddings.weight.dims()[0]
    }

    /// Model width.
    pub fn dim(&self) -> usize {
        self.tok_embeddings.weight.dims()[1]
    }

    /// Number of layers.
    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// An empty KV cache for `batch` rows and the model's context length.
    pub fn new_cache(&self, batch: usize) -> LlamaCache<B> {
        LlamaCache::new(
            self.n_layers(),
            batch,
            self.n_kv_heads,
            self.max_seq_len,
            self.head_dim,
            &self.tok_embeddings.weight.device(),
        )
    }

    /// The model with `f` applied to the weight `[d_in, d_out]` of every linear layer: the
    /// seven of each layer and the separate output projection, if any (not the embedding
    /// table).
    pub fn map_linear_weights(mut self, f: impl Fn(Tensor<B, 2>) -> Tensor<B, 2>) -> Self {
        for (_, linear) in self.projections_mut() {
            linear.weight = linear.weight.clone().map(&f);
        }
        if let Some(output) = self.output.as_mut() {
            output.weight = output.weight.clone().map(&f);
        }
        self
    }

    /// The seven projections of every layer with their parameter-name prefixes
    /// (`layers.0.attention.compute_query`, …, `layers.0.feed_forward.w3`), in layer order.
    pub fn projections_mut(&mut self) -> impl Iterator<Item = (String, &mut Projection<B>)> {
        self.layers.iter_mut().enumerate().flat_map(|(i, layer)| {
            let attention = &mut layer.attention;
            let feed_forward = &mut layer.feed_forward;
            [
                ("attention.compute_query", &mut attention.compute_query),
                ("attention.compute_key", &mut attention.compute_key),
                ("attention.compute_value", &mut attention.compute_value),
                ("attention.compute_output", &mut attention.compute_output),
                ("feed_forward.w1", &mut feed_forward.w1),
                ("feed_forward.w2", &mut feed_forward.w2),
                ("feed_forward.w3", &mut feed_forward.w3),
            ]
            .map(|(name, linear)| (format!("layers.{i}.{name}"), linear))
        })
    }

    /// [`Self::projections_mut`], read-only.
    pub fn projections(&self) -> impl Iterator<Item = (String, &Projection<B>)> {
        self.layers.iter().enumerate().flat_map(|(i, layer)| {
            let (attention, feed_forward) = (&layer.attention, &layer.feed_forward);
            [
                ("attention.compute_query", &attention.compute_query),
                ("attention.compute_key", &attention.compute_key),
                ("attention.compute_value", &attention.compute_value),
                ("attention.compute_output", &attention.compute_output),
                ("feed_forward.w1", &feed_forward.w1),
                ("feed_forward.w2", &feed_forward.w2),
                ("feed_forward.w3", &feed_forward.w3),
            ]
            .map(|(name, linear)| (format!("layers.{i}.{name}"), linear))
        })
    }

    /// Project hidden states `[batch, seq, dim]` to logits `[batch, seq, vocab]`.
    pub fn project(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        self.project_split(hidden, 1)
    }

    /// [`Self::project`] with the product split into `parts` column blocks run in parallel
    /// (decoding; see [`crate::weights::split_matmul`]).
    pub fn project_split(&self, hidden: Tensor<B, 3>, parts: usize) -> Tensor<B, 3> {
        if let Some(head) = &self.head_quantized {
            return q8_product(hidden, head, parts);
        }
        if let Some(output) = &self.output {
            return linear_split(output, hidden, parts);
        }
        // Tied head: logits = h · Eᵀ with the embedding matrix itself (one parameter, so
        // fine-tuning updates both uses together).
        let weight = self.tok_embeddings.weight.val(); // [vocab, dim]
        matmul_split(hidden, weight.transpose(), parts)
    }

    /// Token embeddings `[batch, seq, dim]` of `tokens` `[batch, seq]`.
    fn embed(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        // With f16 weights (`half_weights`) the lookup gives f16 rows; compute in the
        // norms' dtype (a no-op cast otherwise).
        self.tok_embeddings
            .forward(tokens)
            .cast(self.norm.weight.val().dtype())
    }

    /// Run the layers on `tokens` `[batch, seq]`; returns the hidden states after the final
    /// norm `[batch, seq, dim]`. `angles`, `mask` and `cache` as in [`LlamaLayer::forward`].
    fn run(
        &self,
        tokens: Tensor<B, 2, Int>,
        angles: &RopeAngles<B>,
        mask: Option<Tensor<B, 3>>,
        mut cache: Option<&mut LlamaCache<B>>,
        mut trace: Option<&mut Vec<(Tensor<B, 3>, Tensor<B, 3>)>>,
        split: usize,
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let embeddings = self.embed(tokens);
        let mut x = self.dropout.forward(embeddings.clone());
        for (i, layer) in self.layers.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers_mut()[i]);
            let (h, out) = layer.forward_traced(x, angles, mask.clone(), layer_cache, split);
            if let Some(trace) = trace.as_deref_mut() {
                trace.push((h, out.clone()));
            }
            x = out;
        }
        (embeddings, self.norm.forward(x))
    }

    /// Full-sequence pass without a cache: hidden states `[batch, seq, dim]`.
    pub fn hidden_states(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let seq = tokens.dims()[1];
        let device = tokens.device();
        let angles = self.rope.angles(0, seq);
        let mask = causal_mask(seq, 0, &device);
        self.run(tokens, &angles, mask, None, None, 1).1
    }

    /// Hidden states after the final norm at one position per row: `positions` `[batch]`
    /// (each below `seq`) of `tokens` `[batch, seq]`; returns `[batch, dim]`, the rows of
    /// [`Self::hidden_states`] at those positions.
    ///
    /// Nothing after a row's position can reach it (the mask is causal), and the last layer's
    /// other rows feed nothing: so that layer computes its keys and values for the whole
    /// sequence but its queries, output projection and feed-forward at `positions` only,
    /// about a tenth of an 8-layer model's products (forward and backward).
    pub fn hidden_at(
        &self,
        tokens: Tensor<B, 2, Int>,
        positions: Tensor<B, 1, Int>,
    ) -> Tensor<B, 2> {
        let [batch, seq] = tokens.dims();
        let device = tokens.device();
        let angles = self.rope.angles(0, seq);
        let mut x = self.dropout.forward(self.embed(tokens));
        let out = match self.layers.split_last() {
            Some((last, body)) => {
                let mask = causal_mask(seq, 0, &device);
                for layer in body {
                    x = layer.forward(x, &angles, mask.clone(), None, 1);
                }
                // Key k is hidden from row b's query when k > positions[b].
                let keys = Tensor::<B, 1, Int>::arange(0..seq as i64, &device)
                    .reshape([1, 1, seq])
                    .expand([batch, 1, seq]);
                let hidden = keys.greater(
                    positions
                        .clone()
                        .reshape([batch, 1, 1])
                        .expand([batch, 1, seq]),
                );
                let position_mask =
                    Tensor::<B, 3>::zeros([batch, 1, seq], &device).mask_fill(hidden, MASKED);
                let position_angles = self.rope.angles_at(positions.clone().reshape([batch, 1]));
                last.forward_at(x, &angles, positions, &position_angles, position_mask)
            }
            None => gather_positions(x, positions),
        };
        let dim = out.dims()[2];
        self.norm.forward(out).reshape([batch, dim])
    }

    /// Logits at every position `[batch, seq, vocab]` and hidden states `[batch, seq, dim]`.
    pub fn forward(&self, tokens: Tensor<B, 2, Int>) -> LlamaOutput<B> {
        let hidden = self.hidden_states(tokens);
        LlamaOutput {
            logits: self.project(hidden.clone()),
            hidden,
        }
    }

    /// Like [`Self::forward`] but projects the last position only: logits `[batch, 1, vocab]`
    /// (what the exercise's `forward(tokens)` returns without targets).
    pub fn forward_last(&self, tokens: Tensor<B, 2, Int>) -> LlamaOutput<B> {
        let hidden = self.hidden_states(tokens);
        let seq = hidden.dims()[1];
        LlamaOutput {
            logits: self.project(hidden.clone().narrow(1, seq - 1, 1)),
            hidden,
        }
    }

    /// Every intermediate of a full pass.
    pub fn trace(&self, tokens: Tensor<B, 2, Int>) -> LlamaTrace<B> {
        let seq = tokens.dims()[1];
        let device = tokens.device();
        let angles = self.rope.angles(0, seq);
        let mask = causal_mask(seq, 0, &device);
        let mut layers = Vec::with_capacity(self.n_layers());
        let (embeddings, hidden) = self.run(tokens, &angles, mask, None, Some(&mut layers), 1);
        LlamaTrace {
            embeddings,
            layers,
            output: LlamaOutput {
                logits: self.project(hidden.clone()),
                hidden,
            },
        }
    }

    /// Incremental pass: `tokens` `[batch, seq]` continue what `cache` holds (positions
    /// `cache.len()..`); their keys/values are appended. Returns the last position's logits
    /// `[batch, vocab]`. The caller keeps `cache.len() + seq <= cache.capacity()`. `split`:
    /// column blocks per weight product, run on rayon's pool (1: one product per weight; see
    /// [`crate::weights::split_matmul`]).
    pub fn forward_cached(
        &self,
        tokens: Tensor<B, 2, Int>,
        cache: &mut LlamaCache<B>,
        split: usize,
    ) -> Tensor<B, 2> {
        let seq = tokens.dims()[1];
        let start = cache.len();
        let device = tokens.device();
        let angles = self.rope.angles(start, seq);
        // A single new token may see every cached key: no mask needed.
        let mask = causal_mask(seq, start, &device);
        self.forward_cached_with(tokens, &angles, mask, cache, split)
    }

    /// One decoding step of independent sequences, each with its own cache (continuous
    /// batching): `tokens` `[rows]`, row `i` at position `caches[i].len()` (the caller keeps
    /// it below the capacity), rotated by position `i` of `angles` (`[1, rows]`). The rows
    /// run as one sequence through the weight products, each row's attention over its own
    /// cache ([`crate::model::attention::Attention::forward_rows`]). Returns the logits
    /// `[rows, vocab]`.
    pub fn forward_rows(
        &self,
        tokens: Tensor<B, 1, Int>,
        angles: &RopeAngles<B>,
        caches: &mut [&mut LlamaCache<B>],
        split: usize,
    ) -> Tensor<B, 2> {
        let rows = tokens.dims()[0];
        let mut x = self.dropout.forward(self.embed(tokens.reshape([1, rows])));
        for (i, layer) in self.layers.iter().enumerate() {
            let mut layer_caches: Vec<&mut KvCache<B>> =
                caches.iter_mut().map(|c| &mut c.layers_mut()[i]).collect();
            x = layer.forward_rows(x, angles, &mut layer_caches, split);
        }
        let hidden = self.norm.forward(x);
        self.project_split(hidden, split)
            .reshape([rows, self.vocab_size()])
    }

    /// Incremental pass with explicit per-row angles and mask (batched generation of
    /// prompts of different lengths); see [`Self::forward_cached`].
    pub fn forward_cached_with(
        &self,
        tokens: Tensor<B, 2, Int>,
        angles: &RopeAngles<B>,
        mask: Option<Tensor<B, 3>>,
        cache: &mut LlamaCache<B>,
        split: usize,
    ) -> Tensor<B, 2> {
        let (_, hidden) = self.run(tokens, angles, mask, Some(cache), None, split);
        let [batch, seq, _] = hidden.dims();
        let logits = self.project_split(hidden.narrow(1, seq - 1, 1), split);
        logits.reshape([batch, self.vocab_size()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::LlamaConfig;
    use burn::backend::{Autodiff, NdArray};
    use burn::tensor::Tolerance;

    type B = NdArray;
    type AB = Autodiff<NdArray>;

    /// Grouped-query heads, so the stacked-queries path sees more than one head per group.
    fn tiny<Bk: Backend>() -> Llama<Bk> {
        LlamaConfig::new(32, 3, 4, 64)
            .with_n_kv_heads(Some(2))
            .with_hidden_dim(Some(48))
            .with_max_seq_len(16)
            .init(&Default::default())
    }

    fn int<Bk: Backend, const D: usize>(values: Vec<i64>, shape: [usize; D]) -> Tensor<Bk, D, Int> {
        Tensor::from_data(TensorData::new(values, shape), &Default::default())
    }

    const TOKENS: [i64; 18] = [1, 5, 9, 33, 2, 60, 1, 7, 11, 0, 0, 0, 1, 40, 41, 42, 43, 0];
    /// The first, the last and a middle position.
    const POSITIONS: [i64; 3] = [5, 0, 3];

    /// `hidden` `[3, 6, dim]` at [`POSITIONS`], picked on the host: `[3, dim]`.
    fn picked<Bk: Backend>(hidden: Tensor<Bk, 3>) -> Tensor<Bk, 2> {
        let rows = POSITIONS
            .iter()
            .enumerate()
            .map(|(b, &p)| hidden.clone().narrow(0, b, 1).narrow(1, p as usize, 1))
            .collect();
        let dim = hidden.dims()[2];
        Tensor::cat(rows, 0).reshape([3, dim])
    }

    #[test]
    fn hidden_at_equals_the_full_pass_at_those_positions() {
        let model = tiny::<B>();
        let tokens = int::<B, 2>(TOKENS.to_vec(), [3, 6]);
        let expected = picked(model.hidden_states(tokens.clone()));
        let actual = model.hidden_at(tokens, int(POSITIONS.to_vec(), [3]));
        // Hidden states after the norm are O(1); the two paths differ by the order of a few
        // f32 sums at most.
        actual
            .into_data()
            .assert_approx_eq::<f32>(&expected.into_data(), Tolerance::absolute(1e-5));
    }

    #[test]
    fn hidden_at_has_the_full_pass_gradients() {
        let model = tiny::<AB>();
        let tokens = int::<AB, 2>(TOKENS.to_vec(), [3, 6]);
        // A fixed, uneven weighting so that every hidden unit's gradient differs.
        let weights = Tensor::<AB, 2>::from_data(
            TensorData::new((0..96).map(|i| (i as f32 * 0.37).sin()).collect(), [3, 32]),
            &Default::default(),
        );
        let full = picked(model.hidden_states(tokens.clone()));
        let full_grads = (full * weights.clone()).sum().backward();
        let at = model.hidden_at(tokens, int(POSITIONS.to_vec(), [3]));
        let at_grads = (at * weights).sum().backward();
        // Gradients reach tens (sums over batch and positions): agree to 1e-5 relative, or
        // 1e-5 absolute near zero.
        let tolerance = Tolerance::rel_abs(1e-5, 1e-5);
        let last = &model.layers[2];
        let first = &model.layers[0];
        let params = [
            ("tok_embeddings", model.tok_embeddings.weight.clone()),
            (
                "layers.2.compute_query",
                last.attention.compute_query.weight.clone(),
            ),
            (
                "layers.2.compute_key",
                last.attention.compute_key.weight.clone(),
            ),
            ("layers.2.w2", last.feed_forward.w2.weight.clone()),
            (
                "layers.0.compute_value",
                first.attention.compute_value.weight.clone(),
            ),
        ];
        for (name, param) in params {
            let expected = param.grad(&full_grads).expect(name);
            let actual = param.grad(&at_grads).expect(name);
            assert!(
                expected.clone().abs().max().into_scalar() > 1e-4,
                "{name}: no gradient"
            );
            actual
                .into_data()
                .assert_approx_eq::<f32>(&expected.into_data(), tolerance);
        }
        let norm = |grads| model.norm.weight.grad(grads).expect("norm");
        norm(&at_grads)
            .into_data()
            .assert_approx_eq::<f32>(&norm(&full_grads).into_data(), tolerance);
    }
}
