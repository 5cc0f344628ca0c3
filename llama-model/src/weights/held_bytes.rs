//! The bytes of weights a model holds in memory, whatever their precision: the figure a
//! loading peak is measured against.

use std::collections::HashSet;
use std::sync::Arc;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::Llama;

/// Sums the bytes of every float parameter at its own dtype.
struct FloatBytes(usize);

impl<B: Backend> ModuleVisitor<B> for FloatBytes {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let tensor = param.val();
        self.0 += tensor.shape().num_elements() * tensor.dtype().size();
    }
}

impl<B: Backend> Llama<B> {
    /// Bytes of the weights held: every parameter at its dtype's size (f32, f16), plus each
    /// int8 matrix's values and scales once (a tied head shares the embeddings' matrix).
    pub fn weight_bytes_held(&self) -> usize {
        let mut floats = FloatBytes(0);
        self.visit(&mut floats);
        let mut seen = HashSet::new();
        let int8: usize = self
            .projections()
            .filter_map(|(_, p)| p.quantized.as_ref())
            .chain(self.head_quantized.as_ref())
            .filter(|m| seen.insert(Arc::as_ptr(m)))
            .map(|m| {
                let values = m.rows() * m.cols();
                values + values / m.group().max(1) * size_of::<f32>()
            })
            .sum();
        floats.0 + int8
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::NdArray;

    use crate::LlamaConfig;

    #[test]
    fn held_bytes_count_f32_and_int8_weights() {
        let device = Default::default();
        let config = LlamaConfig::new(64, 2, 4, 96)
            .with_hidden_dim(Some(172))
            .with_max_seq_len(16);
        let model = config.init::<NdArray>(&device);
        let params = burn::module::Module::num_params(&model);
        assert_eq!(model.weight_bytes_held(), 4 * params);
        // int8: one byte per weight-matrix value and an f32 scale per group of 4, beside the
        // dequantized f32 weights.
        let q8 = model.with_q8_weights(4).unwrap();
        let matrices: usize = q8
            .projections()
            .map(|(_, p)| p.d_in() * p.d_out())
            .sum::<usize>()
            + 96 * 64;
        assert_eq!(q8.weight_bytes_held(), 4 * params + matrices + matrices);
    }
}
