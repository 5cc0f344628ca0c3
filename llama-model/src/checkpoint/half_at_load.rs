//! Loading straight into f16 weight matrices ([`crate::weights::half`]), one tensor at a time.
//!
//! Converting a loaded f32 model to f16 holds the whole f32 model while the f16 copy is
//! made: a peak of twice the f16 model's bytes and more (1.1B parameters: 4.4 GB of f32 for
//! 2.2 GB of f16). Cast as each parameter is read, the peak is the f16 model plus one f32
//! tensor.

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::{FloatDType, Tensor};

use crate::model::param_source::ParamSource;
use crate::weights::half::half_linear_weight;

/// How the weight matrices are stored as a checkpoint loads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LoadPrecision {
    /// As the loader builds them: f32 (an int8 export keeps its int8 matrices too).
    #[default]
    AsStored,
    /// Every weight matrix in f16, as [`crate::Llama::with_half_weights`] stores them; norms
    /// stay f32. Int8 matrices are dropped.
    F16,
    /// Int8 decoding from the file's own blocks where it has them: a GGUF file's Q8_0
    /// matrices are kept as stored (block 32, f16 scales), its other matrices quantized as
    /// they load (groups of [`crate::weights::q8_matrix::group_size_for`] their rows, at
    /// most 32). Other formats
    /// load as [`Self::AsStored`].
    Int8,
}

/// A [`ParamSource`] handing out `inner`'s parameters with the weight matrices cast to f16
/// as they arrive.
pub struct HalfAtLoad<'s, S>(pub &'s mut S);

impl<B: Backend, S: ParamSource<B>> ParamSource<B> for HalfAtLoad<'_, S> {
    type Error = S::Error;

    /// The weight cast in its `[d_out, d_in]` storage order, then viewed as `[d_in, d_out]`
    /// again, as [`crate::Llama::with_half_weights`] does.
    fn linear(
        &mut self,
        name: &str,
        d_in: usize,
        d_out: usize,
        init_std: f64,
    ) -> Result<Linear<B>, S::Error> {
        let mut linear = self.0.linear(name, d_in, d_out, init_std)?;
        linear.weight = linear.weight.map(half_linear_weight);
        Ok(linear)
    }

    fn matrix(
        &mut self,
        name: &str,
        shape: [usize; 2],
        init_std: f64,
    ) -> Result<Param<Tensor<B, 2>>, S::Error> {
        Ok(self
            .0
            .matrix(name, shape, init_std)?
            .map(|m: Tensor<B, 2>| m.cast(FloatDType::F16)))
    }

    fn gain(&mut self, name: &str, dim: usize) -> Result<Param<Tensor<B, 1>>, S::Error> {
        self.0.gain(name, dim)
    }
}
