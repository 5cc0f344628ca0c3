//! One product on int8 weights for any backend: the input is read back from the backend,
//! quantized per group ([`crate::weights::q8_matrix::quantize_groups`]), multiplied by
//! [`crate::weights::q8_kernel`], and the result handed back to the backend. See
//! [`crate::weights::q8_weights`] for where the models use it.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use crate::weights::q8_kernel::q8_matmul;
use crate::weights::q8_matrix::{quantize_groups, Q8Matrix};

/// `x · wᵀ` for `x` `[batch, seq, k]` and an int8 `w` `[n, k]`, by `runq.c`'s scheme:
/// `[batch, seq, n]` in `x`'s dtype, on `x`'s device. `parts`: column blocks run on rayon's
/// pool.
pub fn q8_product<B: Backend>(x: Tensor<B, 3>, w: &Q8Matrix, parts: usize) -> Tensor<B, 3> {
    let [batch, seq, k] = x.dims();
    let (device, dtype) = (x.device(), x.dtype());
    let group = w.group();
    let input: Vec<f32> = x
        .into_data()
        .convert::<f32>()
        .to_vec()
        .expect("converted to f32");
    let mut xq = vec![0i8; batch * seq * k];
    let mut xs = vec![0f32; batch * seq * k / group];
    quantize_groups(&input, group, &mut xq, &mut xs);
    let out = q8_matmul(&xq, &xs, w, parts);
    Tensor::<B, 3>::from_data(TensorData::new(out, [batch, seq, w.rows()]), &device).cast(dtype)
}
