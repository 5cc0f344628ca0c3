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
//! With 1–16 rows, an f32 weight that flex holds in host memory goes to [`f32_rows`] instead,
//! which streams each weight row once and splits the outputs over the threads itself.
//!
//! Every product here is two-dimensional (`[rows, k] · [k, n]`, the activations reshaped):
//! Burn's `Linear` reshapes its weight to the input's rank first, and for a weight held as a
//! transposed view (the models keep PyTorch's `[out, in]` storage) flex's reshape copies the
//! whole matrix, transposing, on every call.

use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
#[cfg(feature = "flex")]
use burn::tensor::TensorData;
use rayon::prelude::*;

use crate::weights::f32_rows;

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
    if let Some(out) = rows_product(&x, &w, parts) {
        return out.cast(dtype).reshape([batch, seq, n]);
    }
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

/// `x` `[rows, k]` times `w` `[k, n]` by [`f32_rows`] when the rows are few, the weight
/// is an f32 flex tensor it can read in place, and the CPU runs the kernel; else `None`.
fn rows_product<B: Backend>(
    x: &Tensor<B, 2>,
    w: &Tensor<B, 2>,
    parts: usize,
) -> Option<Tensor<B, 2>> {
    let [rows, _] = x.dims();
    let n = w.dims()[1];
    if rows > f32_rows::MAX_ROWS || !f32_rows::available() {
        return None;
    }
    #[cfg(feature = "flex")]
    {
        let out = crate::weights::flex_rows::with_weight_rows(w, |weight| {
            let input: Vec<f32> = x.to_data().convert::<f32>().to_vec().ok()?;
            f32_rows::product(&input, rows, weight, n, parts)
        })??;
        Some(Tensor::from_data(
            TensorData::new(out, [rows, n]),
            &x.device(),
        ))
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = (parts, n);
        None
    }
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

    /// On flex, few rows by an f32 weight go to the row kernel, read in place: the result
    /// is the kernel's, to the bit, and matches the backend's product.
    #[cfg(feature = "flex")]
    #[test]
    fn flex_decoding_products_run_on_the_row_kernel() {
        use burn::backend::Flex;
        if !f32_rows::available() {
            eprintln!("no AVX-512F here: the row kernel does not run");
            return;
        }
        let device = Default::default();
        let w = Tensor::<Flex, 2>::random([300, 96], Distribution::Normal(0.0, 1.0), &device);
        let host: Vec<f32> = w.to_data().to_vec().unwrap();
        for rows in [1, 3, 16] {
            let x =
                Tensor::<Flex, 3>::random([1, rows, 96], Distribution::Normal(0.0, 1.0), &device);
            let input: Vec<f32> = x.to_data().to_vec().unwrap();
            let kernel = f32_rows::product(&input, rows, &host, 300, 2).unwrap();
            let got = matmul_split(x.clone(), w.clone().transpose(), 2);
            assert_eq!(
                got.to_data().to_vec::<f32>().unwrap(),
                kernel,
                "rows {rows}"
            );
            let whole = x.matmul(w.clone().transpose().unsqueeze());
            whole
                .into_data()
                .assert_approx_eq::<f32>(&got.into_data(), burn::tensor::Tolerance::absolute(1e-4));
        }
    }
}
