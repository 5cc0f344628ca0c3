//! Rotary position embeddings (Su et al., 2021) in Llama's interleaved form.
//!
//! Each head vector is split into consecutive pairs `(x[2j], x[2j+1])`; the pair at position
//! `pos` is rotated by the angle `pos * theta^(-2j / head_dim)`:
//!
//! ```text
//! out[2j]   = x[2j] cos - x[2j+1] sin
//! out[2j+1] = x[2j] sin + x[2j+1] cos
//! ```
//!
//! The cosine and sine tables are computed once for the first positions (a model's context,
//! up to [`TABLE_POSITIONS`]), not for a context length a file's header names: a header may
//! say 2^21 positions for a model that is never run past a few hundred. Positions past the
//! tables get their angles computed for the call (a full pass, e.g. a long sentence the
//! exercise does not truncate), and decoding grows its own copy of the tables in doubling
//! steps as positions come into use ([`RotaryEmbedding::grown_to`]), so a decoded token never
//! computes angles.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};

use super::rope_scaling::{FrequencyPrecision, RopeScaling};

/// Most positions a model precomputes when it is built (Llama 2's context); see the module
/// documentation.
#[cfg(not(test))]
pub const TABLE_POSITIONS: usize = 4096;
/// This crate's unit tests precompute few positions, so that the paths past the tables run
/// on short sequences.
#[cfg(test)]
pub const TABLE_POSITIONS: usize = 64;

/// Configuration of a [`RotaryEmbedding`].
#[derive(Config, Debug)]
pub struct RotaryEmbeddingConfig {
    /// Width of one attention head (must be even).
    pub head_dim: usize,
    /// Number of positions whose angles are precomputed.
    pub max_seq_len: usize,
    /// Base of the geometric frequency progression.
    #[config(default = 10000.0)]
    pub theta: f64,
    /// Frequency scaling (`rope_scaling` of a Hugging Face config); `None` for none.
    #[config(default = "None")]
    pub scaling: Option<RopeScaling>,
    /// Precision the inverse frequencies are rounded to; `None` keeps f32.
    #[config(default = "None")]
    pub precision: Option<FrequencyPrecision>,
}

/// Precomputed cosine/sine tables; constants of the model, not parameters.
///
/// The tables are stored at full head width so that a rotation is two elementwise products
/// and a pair swap (see [`RopeAngles::rotate`]): `cos` holds `[c0, c0, c1, c1, …]` and `sin`
/// holds `[-s0, s0, -s1, s1, …]` per position.
#[derive(Module, Debug)]
pub struct RotaryEmbedding<B: Backend> {
    /// `[max_seq_len, head_dim]`
    cos: Tensor<B, 2>,
    /// `[max_seq_len, head_dim]`
    sin: Tensor<B, 2>,
    /// Pair-swap permutation `[head_dim, head_dim]`: `(x · P)[2j] = x[2j+1]`,
    /// `(x · P)[2j+1] = x[2j]`.
    swap: Tensor<B, 2>,
    head_dim: usize,
    theta: f64,
    #[module(skip)]
    scaling: Option<RopeScaling>,
    #[module(skip)]
    precision: Option<FrequencyPrecision>,
}

impl RotaryEmbeddingConfig {
    /// Build the tables on `device`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> RotaryEmbedding<B> {
        let freqs = frequencies(
            self.head_dim,
            self.theta,
            self.scaling.as_ref(),
            self.precision,
        );
        let (cos, sin) = angle_tables::<B>(self.head_dim, &freqs, 0, self.max_seq_len, device);
        let d = self.head_dim;
        let mut swap = vec![0.0f32; d * d];
        for j in 0..d / 2 {
            swap[(2 * j + 1) * d + 2 * j] = 1.0;
            swap[2 * j * d + 2 * j + 1] = 1.0;
        }
        RotaryEmbedding {
            cos,
            sin,
            swap: Tensor::from_data(TensorData::new(swap, [d, d]), device),
            head_dim: self.head_dim,
            theta: self.theta,
            scaling: self.scaling.clone(),
            precision: self.precision,
        }
    }
}

/// The inverse frequency of each rotated pair, `theta^(-2j/head_dim)` for `j` in
/// `0..head_dim/2`, then scaled by `scaling` and rounded to `precision` if given.
fn frequencies(
    head_dim: usize,
    theta: f64,
    scaling: Option<&RopeScaling>,
    precision: Option<FrequencyPrecision>,
) -> Vec<f32> {
    let mut freqs: Vec<f32> = (0..head_dim / 2)
        .map(|j| (theta as f32).powf(-((2 * j) as f32) / head_dim as f32))
        .collect();
    if let Some(scaling) = scaling {
        scaling.apply(&mut freqs);
    }
    if let Some(precision) = precision {
        precision.round(&mut freqs);
    }
    freqs
}

/// Cosine and signed sine of `pos * freqs[j]` for `pos` in `start..start+len`,
/// each `[len, head_dim]` in the interleaved layout of [`RotaryEmbedding`].
///
/// The angles are formed in f32 exactly as the PyTorch reference does (f32 frequencies,
/// f32 product), then the cosine/sine of that f32 angle is rounded once, so tables agree
/// with the reference bit for bit or within one ulp.
fn angle_tables<B: Backend>(
    head_dim: usize,
    freqs: &[f32],
    start: usize,
    len: usize,
    device: &B::Device,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let mut cos = Vec::with_capacity(len * head_dim);
    let mut sin = Vec::with_capacity(len * head_dim);
    for pos in start..start + len {
        for &f in freqs {
            let angle = (pos as f32 * f) as f64;
            let (c, s) = (angle.cos() as f32, angle.sin() as f32);
            cos.extend([c, c]);
            sin.extend([-s, s]);
        }
    }
    (
        Tensor::from_data(TensorData::new(cos, [len, head_dim]), device),
        Tensor::from_data(TensorData::new(sin, [len, head_dim]), device),
    )
}

/// The rotation angles of one forward pass, computed once and shared by every layer.
#[derive(Debug, Clone)]
pub struct RopeAngles<B: Backend> {
    /// `[1 or batch, seq, 1, head_dim]`
    cos: Tensor<B, 4>,
    /// `[1 or batch, seq, 1, head_dim]`
    sin: Tensor<B, 4>,
    /// `[head_dim, head_dim]`
    swap: Tensor<B, 2>,
}

impl<B: Backend> RotaryEmbedding<B> {
    /// Number of precomputed positions.
    pub fn max_seq_len(&self) -> usize {
        self.cos.dims()[0]
    }

    /// The same rotation with tables for `max_seq_len` positions, on `device`.
    pub fn resized(&self, max_seq_len: usize, device: &B::Device) -> Self {
        RotaryEmbeddingConfig::new(self.head_dim, max_seq_len)
            .with_theta(self.theta)
            .with_scaling(self.scaling.clone())
            .with_precision(self.precision)
            .init(device)
    }

    /// These tables if they cover `positions` positions, else tables for at least
    /// `positions` and at least twice the current ones, capped at `limit` (the context): a
    /// decoder that grows them as it goes computes each position's angles about twice in
    /// all, never per token. `None` when no growth is needed.
    pub fn grown_to(&self, positions: usize, limit: usize) -> Option<Self> {
        let current = self.max_seq_len();
        (positions > current).then(|| {
            let target = positions
                .max(current.saturating_mul(2))
                .min(limit.max(positions));
            self.resized(target, &self.cos.device())
        })
    }

    /// Tables for positions `start..start+len`, from the cache when they fit.
    fn tables(&self, start: usize, len: usize) -> (Tensor<B, 2>, Tensor<B, 2>) {
        if start + len <= self.max_seq_len() {
            let range = start..start + len;
            (
                self.cos.clone().slice([range.clone()]),
                self.sin.clone().slice([range]),
            )
        } else {
            let freqs = frequencies(
                self.head_dim,
                self.theta,
                self.scaling.as_ref(),
                self.precision,
            );
            angle_tables(self.head_dim, &freqs, start, len, &self.cos.device())
        }
    }

    /// Angles for positions `start..start+len`, the same for every batch row.
    pub fn angles(&self, start: usize, len: usize) -> RopeAngles<B> {
        let (cos, sin) = self.tables(start, len);
        let shape = [1, len, 1, self.head_dim];
        RopeAngles {
            cos: cos.reshape(shape),
            sin: sin.reshape(shape),
            swap: self.swap.clone(),
        }
    }

    /// Angles for a position per row and step, `positions` `[batch, seq]` (batches whose
    /// rows start at different offsets).
    pub fn angles_at(&self, positions: Tensor<B, 2, Int>) -> RopeAngles<B> {
        let [batch, seq] = positions.dims();
        let needed = positions.clone().max().into_scalar().elem::<i64>().max(0) as usize + 1;
        let (cos, sin) = self.tables(0, needed.max(self.max_seq_len()));
        let flat = positions.reshape([batch * seq]);
        let shape = [batch, seq, 1, self.head_dim];
        RopeAngles {
            cos: cos.select(0, flat.clone()).reshape(shape),
            sin: sin.select(0, flat).reshape(shape),
            swap: self.swap.clone(),
        }
    }

    /// Rotate `x` `[batch, seq, heads, head_dim]` whose rows sit at positions
    /// `start..start+seq`.
    pub fn apply(&self, x: Tensor<B, 4>, start: usize) -> Tensor<B, 4> {
        let seq = x.dims()[1];
        self.angles(start, seq).rotate(x)
    }
}

impl<B: Backend> RopeAngles<B> {
    /// Rotate the interleaved pairs of `x` `[batch, seq, heads, head_dim]`:
    /// `out = x ⊙ [c0, c0, c1, c1, …] + swap(x) ⊙ [-s0, s0, -s1, s1, …]`, i.e.
    /// `out[2j] = x[2j] c - x[2j+1] s` and `out[2j+1] = x[2j+1] c + x[2j] s`.
    ///
    /// The pair swap is a product with a permutation matrix (exact: one term per output),
    /// which keeps every operation contiguous; slicing even/odd lanes and concatenating them
    /// back was the slowest part of attention on the CPU backends.
    ///
    /// The products run on `[batch, seq·heads·head_dim]` rows against tables repeated across
    /// heads, `[1 or batch, seq·heads·head_dim]`: one row shared by the whole batch (or equal
    /// shapes) is what flex multiplies with SIMD, whereas broadcasting `[1, seq, 1, head_dim]`
    /// over heads walked every element through its strided iterator (6% of a 42M-shape
    /// training step, forward and backward).
    pub fn rotate(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, s, h, d] = x.dims();
        let rows = self.cos.dims()[0];
        let table = |t: &Tensor<B, 4>| t.clone().expand([rows, s, h, d]).reshape([rows, s * h * d]);
        let swapped = x.clone().reshape([b * s * h, d]).matmul(self.swap.clone());
        let out = x.reshape([b, s * h * d]) * table(&self.cos)
            + swapped.reshape([b, s * h * d]) * table(&self.sin);
        out.reshape([b, s, h, d])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exercise::compare::compare;
    use burn::backend::NdArray;

    type B = NdArray;

    #[test]
    fn offsets_and_per_row_positions_agree_with_a_full_pass() {
        let device = Default::default();
        let rope = RotaryEmbeddingConfig::new(8, 4).init::<B>(&device);
        let x = Tensor::<B, 4>::random(
            [2, 6, 3, 8],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        // Positions past the table (6 > 4) are computed on the fly.
        let full = rope.apply(x.clone(), 0);
        let tail = rope.apply(x.clone().narrow(1, 2, 4), 2);
        let a = full
            .clone()
            .narrow(1, 2, 4)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let c = compare(&tail.into_data().to_vec::<f32>().unwrap(), &a, 1e-6, 1e-6);
        assert!(c.passed(), "{c:?}");

        let positions = Tensor::<B, 1, Int>::arange(0..6, &device)
            .unsqueeze::<2>()
            .repeat_dim(0, 2);
        let at = rope.angles_at(positions).rotate(x);
        let c = compare(
            &at.into_data().to_vec::<f32>().unwrap(),
            &full.into_data().to_vec::<f32>().unwrap(),
            1e-6,
            1e-6,
        );
        assert!(c.passed(), "{c:?}");
    }

    #[test]
    fn tables_grow_by_doubling_up_to_the_context_and_keep_their_values() {
        let device = Default::default();
        let rope = RotaryEmbeddingConfig::new(8, 4).init::<B>(&device);
        assert!(rope.grown_to(4, 100).is_none());
        let grown = rope.grown_to(5, 100).expect("grows");
        assert_eq!(grown.max_seq_len(), 8, "at least double");
        assert_eq!(grown.grown_to(9, 12).unwrap().max_seq_len(), 12, "capped");
        assert_eq!(grown.grown_to(40, 100).unwrap().max_seq_len(), 40);
        let x = Tensor::<B, 4>::random(
            [1, 3, 2, 8],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        // Positions 5..8: computed on the fly by the small tables, cached by the grown ones.
        let a = rope
            .apply(x.clone(), 5)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let b = grown.apply(x, 5).into_data().to_vec::<f32>().unwrap();
        assert_eq!(a, b);
    }
}
