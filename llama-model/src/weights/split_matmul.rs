//! Row-times-matrix products split across threads, for decoding.
//!
//! Decoding multiplies one row per sequence by every weight matrix. Those products are too
//! small for Burn's CPU backends to spread over threads (flex threads a product from about
//! 7M multiply-adds; a layer of the 42M model has 0.3–0.7M), so one core would stream all the
//! weights while the others idle, and a decoded token is bound by how fast one core reads
//! memory. Here the weight's columns are cut into `parts` blocks — rows of PyTorch's
//! `[out, in]` storage, so each block is a contiguous view, not a copy — one product per
//! block runs on rayon's pool, and the blocks are concatenated. Every output value is the
//! same dot product over the same inputs.
//!
//! Every product here is two-dimensional (`[rows, k] · [k, n]`, the activations reshaped):
//! Burn's `Linear` reshapes its weight to the input's rank first, and for a weight held as a
//! transposed view (the models keep PyTorch's `[out, in]` storage) flex's reshape copies the
//! whole matrix, transposing, on every call.

use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use rayon::prelude::*;

/// Products with more rows than this are left to the backend, which threads them itself.
const MAX_ROWS: usize = 8;
/// Blocks narrower than this cost more in scheduling than they save.
const MIN_COLUMNS: usize = 64;

/// `x · w` for `x` `[batch, seq, k]` and `w` `[k, n]`: `[batch, seq, n]`, computed as `parts`
/// column blocks in parallel when `batch * seq` is small (decoding), else in one product.
///
/// A weight of another float dtype than `x` (f16, see [`crate::weights::half`]) gets `x` cast
/// to its dtype, and the result is cast back to `x`'s (a cast to the same dtype is a no-op).
pub fn matmul_split<B: Backend>(x: Tensor<B, 3>, w: Tensor<B, 2>, parts: usize) -> Tensor<B, 3> {
    let [batch, seq, k] = x.dims();
    let n = w.dims()[1];
    let rows = batch * seq;
    let parts = parts.min(n / MIN_COLUMNS);
    let dtype = x.dtype();
    let x = x.reshape([rows, k]).cast(w.dtype());
    let out = if parts <= 1 || rows > MAX_ROWS {
        x.matmul(w)
    } else {
        let blocks: Vec<Tensor<B, 2>> = (0..parts)
            .into_par_iter()
            .map(|p| {
                let (start, end) = (p * n / parts, (p + 1) * n / parts);
                x.clone().matmul(w.clone().slice([0..k, start..end]))
            })
            .collect();
        Tensor::cat(blocks, 1)
    };
    out.cast(dtype).reshape([batch, seq, n])
}

/// [`Linear::forward`] through [`matmul_split`] (a two-dimensional product, `parts` column
/// blocks for few rows).
pub fn linear_split<B: Backend>(linear: &Linear<B>, x: Tensor<B, 3>, parts: usize) -> Tensor<B, 3> {
    let out = matmul_split(x, linear.weight.val(), parts);
    match &linear.bias {
        Some(bias) => out + bias.val().unsqueeze(),
        None => out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::{Distribution, TensorData};

    type B = NdArray;

    #[test]
    fn split_products_equal_the_whole_product() {
        let device = Default::default();
        let x = Tensor::<B, 3>::random([1, 1, 96], Distribution::Normal(0.0, 1.0), &device);
        // A transposed view, as the models store their weights.
        let w =
            Tensor::<B, 2>::random([300, 96], Distribution::Normal(0.0, 1.0), &device).transpose();
        let whole = x.clone().matmul(w.clone().unsqueeze());
        for parts in [1, 2, 3, 4] {
            let split = matmul_split(x.clone(), w.clone(), parts);
            assert_eq!(split.dims(), [1, 1, 300]);
            let (a, b) = (whole.to_data(), split.into_data());
            a.assert_approx_eq::<f32>(&b, burn::tensor::Tolerance::absolute(1e-5));
        }
        // Many rows: one product.
        let rows = Tensor::<B, 3>::from_data(TensorData::zeros::<f32, _>([2, 8, 96]), &device);
        assert_eq!(matmul_split(rows, w, 4).dims(), [2, 8, 300]);
    }
}
