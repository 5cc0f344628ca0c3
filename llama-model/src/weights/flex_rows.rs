//! Flex tensors read in place: flex keeps its tensors in host memory, so the decoding
//! products of [`crate::weights::f32_rows`] can stream a weight's rows straight from the
//! backend's buffer, and decoding's attention can read the KV cache's, without a copy.

use std::any::Any;

use burn::backend::flex::FlexTensor;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorPrimitive};

/// `f` applied to `t` as flex holds it (its buffer and layout), when `t` is an f32 flex
/// tensor; `None` otherwise. The borrow costs a reference count, not a copy.
pub fn with_f32_flex<B: Backend, const D: usize, R>(
    t: &Tensor<B, D>,
    f: impl FnOnce(&FlexTensor) -> R,
) -> Option<R> {
    let TensorPrimitive::Float(primitive) = t.clone().into_primitive() else {
        return None;
    };
    let tensor = (&primitive as &dyn Any).downcast_ref::<FlexTensor>()?;
    (tensor.dtype() == DType::F32).then(|| f(tensor))
}

/// `f` applied to the rows of `w` `[k, n]` as PyTorch's `[n, k]` storage, borrowed from the
/// backend: `Some` when `w` is an f32 flex tensor held as the transposed view of a contiguous
/// `[n, k]` matrix (how the models keep their weights for decoding), `None` otherwise.
pub fn with_weight_rows<B: Backend, R>(w: &Tensor<B, 2>, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    with_f32_flex(w, |tensor| {
        let (k, n, stride_k, stride_n) = tensor.layout().as_2d_strides()?;
        if stride_k != 1 || stride_n != k as isize || k < 2 {
            return None;
        }
        let start = tensor.layout().start_offset();
        tensor.storage::<f32>().get(start..start + n * k).map(f)
    })
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::TensorData;

    #[test]
    fn a_transposed_f32_weight_is_read_in_place_and_other_layouts_are_not() {
        let device = Default::default();
        let values: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let stored = Tensor::<Flex, 2>::from_data(TensorData::new(values.clone(), [3, 4]), &device);
        // [n = 3, k = 4] storage seen as [k, n].
        let rows = with_weight_rows(&stored.clone().transpose(), <[f32]>::to_vec);
        assert_eq!(rows, Some(values));
        // A narrowed view of the rows starts at its offset.
        let tail = stored.clone().slice([1..3, 0..4]).transpose();
        assert_eq!(
            with_weight_rows(&tail, <[f32]>::to_vec),
            Some((4..12).map(|v| v as f32).collect())
        );
        // Row-major [k, n] (the batch layout) and f16 are left to the backend.
        assert_eq!(with_weight_rows(&stored.clone(), <[f32]>::len), None);
        assert_eq!(
            with_weight_rows(&stored.cast(DType::F16).transpose(), <[f32]>::len),
            None
        );
    }
}
