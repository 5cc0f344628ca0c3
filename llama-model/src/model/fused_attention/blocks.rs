//! The row-block forward and backward of causal grouped-query attention, in plain tensor ops
//! of any backend (flash attention's recomputation: only the log-sum-exp of each query row is
//! kept between the two).
//!
//! Shapes: `q` `[batch, n_heads, seq, head_dim]`, `k`, `v` `[batch, n_kv_heads, keys,
//! head_dim]`, the additive `mask` `[batch or 1, seq, keys]`. Query head `g * n_rep + r` reads
//! key/value head `g`; a block's `n_rep` heads of one group are stacked along the rows (row
//! `r * n + t` of a block of `n` query rows), so that one product per group serves all of
//! them and the backward's products over rows sum the group's heads for `dK` and `dV`.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// Query rows per block: the scores of one block, `[batch, n_heads, 64, keys]`, stay small.
pub(crate) const BLOCK_ROWS: usize = 64;

/// Which keys a block of query rows may skip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keys {
    /// The mask hides every key after a query's position (`keys - seq + t` for query row
    /// `t`): a block reads the keys up to its last row's position only.
    Causal,
    /// Every block reads every key.
    All,
}

/// The geometry of one call.
#[derive(Debug, Clone, Copy)]
struct Dims {
    batch: usize,
    heads: usize,
    kv: usize,
    seq: usize,
    keys: usize,
    scale: f64,
}

impl Dims {
    fn of<B: Backend>(q: &Tensor<B, 4>, k: &Tensor<B, 4>) -> Self {
        let [batch, heads, seq, head_dim] = q.dims();
        let [_, kv, keys, _] = k.dims();
        Self {
            batch,
            heads,
            kv,
            seq,
            keys,
            scale: (head_dim as f64).sqrt().recip(),
        }
    }

    fn rep(&self) -> usize {
        self.heads / self.kv
    }

    /// The blocks `(first row, rows, keys read)`.
    fn blocks(&self, keys: Keys) -> impl Iterator<Item = (usize, usize, usize)> {
        let d = *self;
        (0..d.seq).step_by(BLOCK_ROWS).map(move |t0| {
            let n = BLOCK_ROWS.min(d.seq - t0);
            let end = match keys {
                Keys::Causal => (d.keys + t0 + n).saturating_sub(d.seq).clamp(1, d.keys),
                Keys::All => d.keys,
            };
            (t0, n, end)
        })
    }

    /// Rows `t0..t0 + n` of `x` `[batch, n_heads, seq, width]`, a group's heads stacked:
    /// `[batch, n_kv_heads, n_rep * n, width]`.
    fn grouped<B: Backend>(&self, x: &Tensor<B, 4>, t0: usize, n: usize) -> Tensor<B, 4> {
        let width = x.dims()[3];
        x.clone()
            .narrow(2, t0, n)
            .reshape([self.batch, self.kv, self.rep() * n, width])
    }

    /// The inverse of [`Self::grouped`]: `[batch, n_heads, n, width]`.
    fn ungrouped<B: Backend>(&self, x: Tensor<B, 4>, n: usize) -> Tensor<B, 4> {
        let width = x.dims()[3];
        x.reshape([self.batch, self.heads, n, width])
    }

    /// Masked scores of the grouped queries `qb` of rows `t0..t0 + n`, already scaled by
    /// `1/√head_dim` (once on `q`, smaller than the scores when `keys > head_dim`), over the
    /// first `end` keys: `[batch, n_kv_heads, n_rep * n, end]`.
    fn scores<B: Backend>(
        &self,
        qb: Tensor<B, 4>,
        k: &Tensor<B, 4>,
        mask: Option<&Tensor<B, 3>>,
        (t0, n, end): (usize, usize, usize),
    ) -> Tensor<B, 4> {
        let kb = k.clone().narrow(2, 0, end);
        let scores = qb.matmul(kb.swap_dims(2, 3));
        let Some(mask) = mask else {
            return scores;
        };
        let mask_batch = mask.dims()[0];
        let mask = mask.clone().narrow(1, t0, n).narrow(2, 0, end);
        let (b, kv, rep) = (self.batch, self.kv, self.rep());
        // The block's `[n, end]` mask flattened to one row that every head shares: flex adds
        // a shared contiguous row with SIMD in place, and walks any other broadcast element by
        // element.
        let masked = if mask_batch == 1 {
            scores.reshape([b * kv * rep, n * end]) + mask.reshape([1, n * end])
        } else {
            (scores.reshape([b, kv * rep, n * end]) + mask.reshape([mask_batch, 1, n * end]))
                .reshape([b * kv * rep, n * end])
        };
        masked.reshape([b, kv, rep * n, end])
    }
}

/// Each block's row statistics, `[batch, n_kv_heads, n_rep * n, 1]` each (a group's heads
/// stacked as in [`Dims::grouped`]): the largest score of each row and the log of the sum of
/// its exponentials relative to it, whose sum is the row's log-sum-exp.
///
/// The two are kept apart: the mask is finite (`MASKED`, -1e9), and a row with every key hidden
/// has scores near -1e9, where f32 steps by 64, so their one-number sum would lose the log of
/// the row's length (and the recomputed probabilities be off by that factor). Per block and
/// contiguous, so that subtracting them from a block's scores is one SIMD pass on flex.
pub(crate) type RowStats<B> = Vec<(Tensor<B, 4>, Tensor<B, 4>)>;

/// `softmax(q kᵀ / √head_dim + mask) v` `[batch, n_heads, seq, head_dim]` and its
/// [`RowStats`], block by block of query rows.
pub(crate) fn forward<B: Backend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    mask: Option<&Tensor<B, 3>>,
    keys: Keys,
) -> (Tensor<B, 4>, RowStats<B>) {
    let d = Dims::of(q, k);
    let q = q.clone() * d.scale;
    let (outs, stats): (Vec<_>, Vec<_>) = d
        .blocks(keys)
        .map(|(t0, n, end)| {
            let scores = d.scores(d.grouped(&q, t0, n), k, mask, (t0, n, end));
            let max = scores.clone().max_dim(3);
            let exp = (scores - max.clone()).exp();
            let sum = exp.clone().sum_dim(3);
            let out = exp.matmul(v.clone().narrow(2, 0, end)) / sum.clone();
            (d.ungrouped(out, n), (max, sum.log()))
        })
        .unzip();
    (Tensor::cat(outs, 2), stats)
}

/// The gradients `(dq, dk, dv)` of [`forward`]'s output given its gradient `grad`, its output
/// `out` and row statistics `stats`: the probabilities of each block are recomputed as
/// `exp(scores - max - log_sum)`. The mask gets no gradient (it is a constant).
#[allow(clippy::too_many_arguments)]
#[cfg(any(test, feature = "flex", feature = "ndarray"))]
pub(crate) fn backward<B: Backend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    mask: Option<&Tensor<B, 3>>,
    keys: Keys,
    out: &Tensor<B, 4>,
    stats: &RowStats<B>,
    grad: &Tensor<B, 4>,
) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
    let d = Dims::of(q, k);
    let q = q.clone() * d.scale;
    let mut dk = Tensor::<B, 4>::zeros(k.dims(), &k.device());
    let mut dv = Tensor::<B, 4>::zeros(v.dims(), &v.device());
    let mut dqs = Vec::new();
    for ((t0, n, end), (max, log_sum)) in d.blocks(keys).zip(stats) {
        let qb = d.grouped(&q, t0, n);
        let grad_b = d.grouped(grad, t0, n);
        let scores = d.scores(qb.clone(), k, mask, (t0, n, end));
        let (max, log_sum) = (max.clone(), log_sum.clone());
        let probs = (scores - max - log_sum).exp(); // [b, kv, rep*n, end]
        let (kb, vb) = (k.clone().narrow(2, 0, end), v.clone().narrow(2, 0, end));
        let dv_b = probs.clone().swap_dims(2, 3).matmul(grad_b.clone());
        let dp = grad_b.clone().matmul(vb.swap_dims(2, 3));
        let delta = (grad_b * d.grouped(out, t0, n)).sum_dim(3);
        let ds = probs * (dp - delta);
        dqs.push(d.ungrouped(ds.clone().matmul(kb) * d.scale, n));
        let dk_b = ds.swap_dims(2, 3).matmul(qb); // qb carries the scale
        dk = accumulate(dk, dk_b);
        dv = accumulate(dv, dv_b);
    }
    (Tensor::cat(dqs, 2), dk, dv)
}

/// `total` `[batch, n_kv_heads, keys, head_dim]` with `part` `[.., end, ..]` added to its
/// first `end` keys.
#[cfg(any(test, feature = "flex", feature = "ndarray"))]
fn accumulate<B: Backend>(total: Tensor<B, 4>, part: Tensor<B, 4>) -> Tensor<B, 4> {
    let [batch, kv, end, head_dim] = part.dims();
    let keys = total.dims()[2];
    if end == keys {
        return total + part;
    }
    // Padded with zeros to the whole keys: adding two contiguous tensors of one shape is a SIMD
    // pass on flex, where adding into a slice of `total` walked it element by element (7% of
    // a long-sequence step).
    let zeros = Tensor::zeros([batch, kv, keys - end, head_dim], &part.device());
    total + Tensor::cat(vec![part, zeros], 2)
}
