//! Storage order of the weight matrices, chosen for the products that will read them.
//!
//! Checkpoints store each linear weight PyTorch's way, `[d_out, d_in]`, and the model uses it
//! as a transposed view `[d_in, d_out]` (no copy at load). Single-row products (decoding) read
//! that order fastest on flex: each output is one dot product over a contiguous row
//! (`--config` presets are laid out the same way for that reason, see
//! [`crate::model::feed_forward`]). Products over many rows (prompting and evaluating batches of
//! sentences) ran faster with the weights copied into `[d_in, d_out]` order: gemm packs its
//! blocks from it with fewer strided reads (42M prompting at batch 10 on flex: 37.5 → 42.5
//! sentences/s). Training showed no difference, so it keeps the loaded order.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::Llama;

impl<B: Backend> Llama<B> {
    /// The model with every linear layer's weight stored in `[d_in, d_out]` order, the
    /// faster one for products over many rows (batched inference); see
    /// `model::weight_layout`. The same numbers; the embedding table is left as it is.
    pub fn with_batch_layout(self) -> Self {
        // Tensor data is read out in logical order whatever the storage, so a round trip
        // through it lays each weight out as `[d_in, d_out]` on every backend.
        self.map_linear_weights(|w| {
            let device = w.device();
            Tensor::from_data(w.into_data(), &device)
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::model::config::LlamaConfig;
    use burn::backend::NdArray;
    use burn::tensor::{Int, Tensor, TensorData, Tolerance};

    type B = NdArray;

    #[test]
    fn batch_layout_keeps_every_weight_and_output() {
        let model = LlamaConfig::new(16, 2, 4, 40)
            .with_n_kv_heads(Some(2))
            .with_max_seq_len(8)
            .init::<B>(&Default::default());
        let tokens = Tensor::<B, 2, Int>::from_data(
            TensorData::new(vec![1i64, 5, 9, 3, 1, 7, 2, 8], [2, 4]),
            &Default::default(),
        );
        let before = model.forward(tokens.clone()).logits.into_data();
        let query_before = model.layers[1].attention.compute_query.weight.val();
        let model = model.with_batch_layout();
        let query_after = model.layers[1].attention.compute_query.weight.val();
        assert_eq!(query_after.dims(), query_before.dims());
        query_after
            .into_data()
            .assert_eq(&query_before.into_data(), true);
        // Only the products' summation order can differ.
        let after = model.forward(tokens).logits.into_data();
        after.assert_approx_eq::<f32>(&before, Tolerance::absolute(1e-5));
    }
}
