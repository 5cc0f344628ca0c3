//! Writing new positions into a KV-cache buffer.
//!
//! Burn's `slice_assign` is the generic way. On flex it copies the whole destination on
//! every call (its write path keeps a second reference to the buffer, so the copy-on-write
//! never finds it unshared): a decoded token of the 42M shape copied every layer's cached
//! keys and values, 3% of a token's time at 1 thread. A flex buffer that this cache owns
//! alone is written in place here instead; every other case takes `slice_assign`.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// `buffer` `[batch, heads, positions, head_dim]` with positions `at..at + seq` replaced by
/// `value` `[batch, heads, seq, head_dim]`.
pub fn write_positions<B: Backend>(
    buffer: Tensor<B, 4>,
    at: usize,
    value: Tensor<B, 4>,
) -> Tensor<B, 4> {
    #[cfg(feature = "flex")]
    let (buffer, value) = match flex::write_in_place(buffer, at, value) {
        Ok(written) => return written,
        Err(unchanged) => unchanged,
    };
    let [batch, heads, seq, dim] = value.dims();
    buffer.slice_assign([0..batch, 0..heads, at..at + seq, 0..dim], value)
}

#[cfg(feature = "flex")]
mod flex {
    use std::any::Any;

    use burn::backend::flex::FlexTensor;
    use burn::tensor::backend::Backend;
    use burn::tensor::{DType, Tensor, TensorPrimitive};

    type Pair<B> = (Tensor<B, 4>, Tensor<B, 4>);

    /// The write done in place when `buffer` is an f32 flex tensor, contiguous from its
    /// start, that nothing else shares; else both tensors back, untouched.
    pub(super) fn write_in_place<B: Backend>(
        buffer: Tensor<B, 4>,
        at: usize,
        value: Tensor<B, 4>,
    ) -> Result<Tensor<B, 4>, Pair<B>> {
        let [batch, heads, positions, dim] = buffer.dims();
        let [v_batch, v_heads, seq, v_dim] = value.dims();
        if (v_batch, v_heads, v_dim) != (batch, heads, dim) || at + seq > positions {
            return Err((buffer, value));
        }
        let TensorPrimitive::Float(mut primitive) = buffer.into_primitive() else {
            unreachable!("a float tensor holds a float primitive")
        };
        let rows = {
            let Some(tensor) = (&mut primitive as &mut dyn Any).downcast_mut::<FlexTensor>() else {
                return Err((rebuild(primitive), value));
            };
            let whole = tensor.is_contiguous()
                && tensor.layout().start_offset() == 0
                && tensor.bytes().len() == batch * heads * positions * dim * 4;
            if tensor.dtype() != DType::F32 || !whole {
                None
            } else {
                tensor.try_storage_mut::<f32>()
            }
        };
        let Some(rows) = rows else {
            return Err((rebuild(primitive), value));
        };
        let Ok(new) = value.to_data().convert::<f32>().into_vec::<f32>() else {
            return Err((rebuild(primitive), value));
        };
        // One run of `seq · dim` values per (batch, head): its positions are adjacent.
        let run = seq * dim;
        for (bh, source) in new.chunks_exact(run).enumerate() {
            let start = (bh * positions + at) * dim;
            rows[start..start + run].copy_from_slice(source);
        }
        Ok(rebuild(primitive))
    }

    fn rebuild<B: Backend>(primitive: B::FloatTensorPrimitive) -> Tensor<B, 4> {
        Tensor::from_primitive(TensorPrimitive::Float(primitive))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Flex, NdArray};
    use burn::tensor::{Distribution, TensorData};

    /// The in-place write and `slice_assign` give the same tensor, for a fresh buffer, one
    /// shared with another tensor (which must keep its old values) and a narrowed view.
    fn agrees_with_slice_assign<B: Backend>() {
        let device = Default::default();
        let buffer = Tensor::<B, 4>::random([2, 3, 7, 4], Distribution::Default, &device);
        let value = Tensor::<B, 4>::random([2, 3, 2, 4], Distribution::Default, &device);
        let want = buffer
            .clone()
            .slice_assign([0..2, 0..3, 4..6, 0..4], value.clone());
        let before = buffer.to_data();
        let copy = Tensor::<B, 4>::from_data(before.clone(), &device);
        let got = write_positions(copy, 4, value.clone());
        assert_eq!(got.to_data(), want.to_data());
        // Shared: the other holder keeps its values.
        let shared = Tensor::<B, 4>::from_data(before.clone(), &device);
        let other = shared.clone();
        let got = write_positions(shared, 4, value.clone());
        assert_eq!(got.to_data(), want.to_data());
        assert_eq!(other.to_data(), before);
        // A view of a larger buffer (not whole): written through slice_assign.
        let larger = Tensor::cat(
            vec![
                Tensor::<B, 4>::from_data(before, &device),
                Tensor::zeros([2, 3, 2, 4], &device),
            ],
            2,
        );
        let view = larger.narrow(2, 0, 7);
        assert_eq!(write_positions(view, 4, value).to_data(), want.to_data());
        // A transposed value is written in its logical order.
        let flat: Vec<f32> = (0..2 * 3 * 4).map(|v| v as f32).collect();
        let value =
            Tensor::<B, 4>::from_data(TensorData::new(flat, [2, 1, 3, 4]), &device).swap_dims(1, 2);
        let buffer = Tensor::<B, 4>::zeros([2, 3, 5, 4], &device);
        let want = buffer
            .clone()
            .slice_assign([0..2, 0..3, 1..2, 0..4], value.clone());
        assert_eq!(write_positions(buffer, 1, value).to_data(), want.to_data());
    }

    #[test]
    fn writes_agree_with_slice_assign_on_flex() {
        agrees_with_slice_assign::<Flex>();
    }

    /// On flex an unshared buffer keeps its memory: the write went in place.
    #[cfg(feature = "flex")]
    #[test]
    fn an_unshared_flex_buffer_is_written_in_place() {
        use burn::backend::flex::FlexTensor;
        use burn::tensor::TensorPrimitive;
        let address = |t: &Tensor<Flex, 4>| match t.clone().into_primitive() {
            TensorPrimitive::Float(p) => <FlexTensor>::bytes(&p).as_ptr() as usize,
            TensorPrimitive::QFloat(_) => unreachable!(),
        };
        let device = Default::default();
        let buffer = Tensor::<Flex, 4>::zeros([1, 2, 8, 4], &device);
        let value = Tensor::<Flex, 4>::ones([1, 2, 1, 4], &device);
        let before = address(&buffer);
        let written = write_positions(buffer, 3, value);
        assert_eq!(address(&written), before);
        let sums: Vec<f32> = written.sum_dim(3).into_data().to_vec().unwrap();
        let want: Vec<f32> = (0..16)
            .map(|i| if i % 8 == 3 { 4.0 } else { 0.0 })
            .collect();
        assert_eq!(sums, want);
    }

    #[test]
    fn writes_agree_with_slice_assign_on_ndarray() {
        agrees_with_slice_assign::<NdArray>();
    }
}
