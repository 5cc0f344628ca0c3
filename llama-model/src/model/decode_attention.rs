//! The attention of one decoded position over its cache, on the host, for flex.
//!
//! A decoding step's attention is small (one query row per head against the cached keys),
//! and through Burn it is a dozen tensor operations per layer and token (reshapes, two
//! batched products, the softmax's passes), each allocating its result: in a profile of 2-thread
//! decoding, Burn's per-operation work was about a fifth of the command thread's time, during
//! which the pool's other worker waits. Here the keys and values are read in place from the
//! cache's flex buffers and the heads are spread over rayon's pool. Every other backend, and
//! every pass with more than one query row, keeps [`crate::model::attention::Attention`]'s
//! chain.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// Softmax attention of `q` `[1, n_heads, 1, head_dim]` over `k`, `v`
/// `[1, n_kv_heads, len, head_dim]` (query head `h` reads key/value head
/// `h / (n_heads / n_kv_heads)`), scaled by `1/√head_dim`: `[1, 1, n_heads · head_dim]`. `None`
/// unless all three are f32 flex tensors this reads in place.
pub fn one_query<B: Backend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
) -> Option<Tensor<B, 3>> {
    #[cfg(feature = "flex")]
    {
        flex::one_query(q, k, v)
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = (q, k, v);
        None
    }
}

/// Work (`n_heads · len · head_dim`) below which the heads run on the calling thread.
const PARALLEL_WORK: usize = 1 << 15;

/// Cached keys or values on the host: head `g`, position `t` at
/// `data[g·head_stride + t·head_dim..]` (a cache buffer holds room after its used positions).
#[derive(Clone, Copy)]
struct Cached<'a> {
    data: &'a [f32],
    head_stride: usize,
}

impl Cached<'_> {
    /// The first `len` positions of head `g`: `[len, head_dim]`.
    fn head(&self, g: usize, len: usize, head_dim: usize) -> &[f32] {
        &self.data[g * self.head_stride..g * self.head_stride + len * head_dim]
    }
}

/// The attention of one query row per head, on host slices: `q` `[n_heads, head_dim]` over
/// the first `len` positions of `keys` and `values`. Returns `[n_heads, head_dim]`.
fn attend(
    q: &[f32],
    head_dim: usize,
    n_kv_heads: usize,
    len: usize,
    keys: Cached<'_>,
    values: Cached<'_>,
) -> Vec<f32> {
    use rayon::prelude::*;
    let n_heads = q.len() / head_dim;
    let n_rep = n_heads / n_kv_heads;
    let scale = (head_dim as f32).sqrt().recip();
    let mut out = vec![0f32; q.len()];
    let head = |(h, out): (usize, &mut [f32])| {
        let g = h / n_rep;
        let query = &q[h * head_dim..(h + 1) * head_dim];
        let keys = keys.head(g, len, head_dim);
        let values = values.head(g, len, head_dim);
        let mut scores: Vec<f32> = keys
            .chunks_exact(head_dim)
            .map(|key| dot(query, key) * scale)
            .collect();
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for s in &mut scores {
            *s = (*s - max).exp();
            sum += *s;
        }
        for (p, value) in scores.iter().zip(values.chunks_exact(head_dim)) {
            let w = p / sum;
            for (o, x) in out.iter_mut().zip(value) {
                *o += w * x;
            }
        }
    };
    if n_heads * len * head_dim >= PARALLEL_WORK {
        out.par_chunks_mut(head_dim).enumerate().for_each(head);
    } else {
        out.chunks_mut(head_dim).enumerate().for_each(head);
    }
    out
}

/// `Σ a·b` in 16 independent lanes (so that the compiler vectorises it), added at the end.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let (a_body, a_tail) = a.split_at(a.len() / LANES * LANES);
    let (b_body, b_tail) = b.split_at(a_body.len());
    for (x, y) in a_body.chunks_exact(LANES).zip(b_body.chunks_exact(LANES)) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 = a_tail.iter().zip(b_tail).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

#[cfg(feature = "flex")]
mod flex {
    use burn::tensor::backend::Backend;
    use burn::tensor::{DType, Tensor, TensorData};

    use super::Cached;
    use crate::weights::flex_rows::with_f32_flex;

    pub(super) fn one_query<B: Backend>(
        q: &Tensor<B, 4>,
        k: &Tensor<B, 4>,
        v: &Tensor<B, 4>,
    ) -> Option<Tensor<B, 3>> {
        let [q_batch, n_heads, q_rows, head_dim] = q.dims();
        let [batch, n_kv_heads, len, k_dim] = k.dims();
        if (q_batch, q_rows, batch, k_dim) != (1, 1, 1, head_dim)
            || v.dims() != k.dims()
            || n_kv_heads == 0
            || n_heads % n_kv_heads != 0
            || len == 0
            || q.dtype() != DType::F32
        {
            return None;
        }
        let out = with_heads(k, |keys| {
            with_heads(v, |values| {
                let query: Vec<f32> = q.to_data().into_vec().ok()?;
                Some(super::attend(
                    &query, head_dim, n_kv_heads, len, keys, values,
                ))
            })
        })???;
        Some(Tensor::from_data(
            TensorData::new(out, [1, 1, n_heads * head_dim]),
            &q.device(),
        ))
    }

    /// `f` applied to `t` `[1, heads, len, head_dim]` read in place, when `t` is an f32 flex
    /// tensor whose positions are adjacent rows of `head_dim` values within each head (a cache
    /// buffer or a view of its first positions); else `None`.
    fn with_heads<B: Backend, R>(t: &Tensor<B, 4>, f: impl FnOnce(Cached<'_>) -> R) -> Option<R> {
        let [_, heads, len, head_dim] = t.dims();
        with_f32_flex(t, |tensor| {
            let strides = tensor.layout().strides();
            let head_stride = usize::try_from(strides[1]).ok()?;
            let adjacent = strides[3] == 1 && strides[2] == head_dim as isize;
            if !adjacent || (heads > 1 && head_stride < len * head_dim) {
                return None;
            }
            let start = tensor.layout().start_offset();
            let end = start + (heads - 1) * head_stride + len * head_dim;
            tensor
                .storage::<f32>()
                .get(start..end)
                .map(|data| f(Cached { data, head_stride }))
        })
        .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An f64 reference of the attention of one query row per head.
    fn reference(
        q: &[f32],
        head_dim: usize,
        kv: usize,
        keys: &[Vec<f32>],
        values: &[Vec<f32>],
    ) -> Vec<f64> {
        let h = q.len() / head_dim;
        let mut out = vec![0f64; q.len()];
        for head in 0..h {
            let g = head / (h / kv);
            let qh = &q[head * head_dim..(head + 1) * head_dim];
            let scores: Vec<f64> = keys[g]
                .chunks_exact(head_dim)
                .map(|key| {
                    qh.iter()
                        .zip(key)
                        .map(|(&a, &b)| f64::from(a) * f64::from(b))
                        .sum::<f64>()
                        / (head_dim as f64).sqrt()
                })
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = scores.iter().map(|s| (s - max).exp()).sum();
            for (s, value) in scores.iter().zip(values[g].chunks_exact(head_dim)) {
                for d in 0..head_dim {
                    out[head * head_dim + d] += (s - max).exp() / sum * f64::from(value[d]);
                }
            }
        }
        out
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        // A deterministic spread of values in about ±2.
        (0..n)
            .map(|i| {
                ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32
                    / (1 << 24) as f32
                    * 4.0
                    - 2.0
            })
            .collect()
    }

    /// Heads of 8 and 64 values (tails of the 16-lane dot product included), grouped-query
    /// sharing, one position and enough to run the heads on the pool: within 1e-5 of f64.
    #[test]
    fn host_attention_agrees_with_an_f64_reference() {
        for (h, kv, head_dim, len) in [(4, 2, 8, 1), (4, 4, 12, 5), (8, 2, 64, 70), (8, 8, 64, 300)]
        {
            let stride = (len + 3) * head_dim; // room after the used positions, as in a cache
            let q = values(h * head_dim, 1);
            let keys: Vec<Vec<f32>> = (0..kv)
                .map(|g| values(len * head_dim, 10 + g as u32))
                .collect();
            let vals: Vec<Vec<f32>> = (0..kv)
                .map(|g| values(len * head_dim, 50 + g as u32))
                .collect();
            let mut key_buffer = vec![9f32; kv * stride];
            let mut value_buffer = vec![9f32; kv * stride];
            for g in 0..kv {
                key_buffer[g * stride..g * stride + len * head_dim].copy_from_slice(&keys[g]);
                value_buffer[g * stride..g * stride + len * head_dim].copy_from_slice(&vals[g]);
            }
            let cached = |data| Cached {
                data,
                head_stride: stride,
            };
            let got = attend(
                &q,
                head_dim,
                kv,
                len,
                cached(&key_buffer),
                cached(&value_buffer),
            );
            let want = reference(&q, head_dim, kv, &keys, &vals);
            for (i, (&a, &b)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (f64::from(a) - b).abs() <= 1e-5,
                    "{h} heads, {len} positions, value {i}: {a} against {b}"
                );
            }
        }
    }

    /// On flex, views of a cache buffer are read in place and give the chain's result
    /// (`softmax(q kᵀ / √d) v` through Burn's operations) within 1e-5; other backends decline.
    #[cfg(feature = "flex")]
    #[test]
    fn flex_cache_views_agree_with_the_tensor_chain() {
        use burn::backend::{Flex, NdArray};
        use burn::tensor::activation::softmax;
        use burn::tensor::Distribution;
        let device = Default::default();
        let (h, kv, head_dim, len) = (8, 4, 16, 37);
        let buffer = || {
            Tensor::<Flex, 4>::random(
                [1, kv, 64, head_dim],
                Distribution::Normal(0.0, 1.0),
                &device,
            )
        };
        let (keys, vals) = (buffer(), buffer());
        let k = keys.slice([0..1, 0..kv, 0..len, 0..head_dim]);
        let v = vals.slice([0..1, 0..kv, 0..len, 0..head_dim]);
        let q =
            Tensor::<Flex, 4>::random([1, 1, h, head_dim], Distribution::Normal(0.0, 1.0), &device)
                .swap_dims(1, 2);
        let got = one_query(&q, &k, &v).expect("flex f32 views are read in place");
        // The chain, with the key/value heads repeated for their query heads.
        let n_rep = h / kv;
        let expand = |t: Tensor<Flex, 4>| {
            t.reshape([1, kv, 1, len, head_dim])
                .repeat_dim(2, n_rep)
                .reshape([1, h, len, head_dim])
        };
        let scores = q.clone().matmul(expand(k.clone()).swap_dims(2, 3)) / (head_dim as f32).sqrt();
        let want = softmax(scores, 3)
            .matmul(expand(v.clone()))
            .reshape([1, 1, h * head_dim]);
        got.into_data()
            .assert_approx_eq::<f32>(&want.into_data(), burn::tensor::Tolerance::absolute(1e-5));
        let to_nd =
            |t: &Tensor<Flex, 4>| Tensor::<NdArray, 4>::from_data(t.to_data(), &Default::default());
        assert!(one_query(&to_nd(&q), &to_nd(&k), &to_nd(&v)).is_none());
    }
}
