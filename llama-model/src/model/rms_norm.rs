//! Root-mean-square layer normalisation (Zhang & Sennrich, 2019), as Llama uses it:
//! no mean subtraction and no bias, only a learned per-feature gain.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::model::param_source::{join, ParamSource};

/// Configuration of an [`RmsNorm`].
#[derive(Config, Debug)]
pub struct RmsNormConfig {
    /// Size of the normalised (last) dimension.
    pub dim: usize,
    /// Added to the mean square before the square root, for numerical stability.
    #[config(default = 1e-5)]
    pub eps: f64,
}

/// `y = x / sqrt(mean(x², last dim) + eps) * weight`.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    /// Per-feature gain `[dim]`, initialised to ones.
    pub weight: Param<Tensor<B, 1>>,
    /// Numerical-stability constant.
    pub eps: f64,
}

impl RmsNormConfig {
    /// The norm whose gain `prefix.weight` comes from `source` (ones for random sources).
    pub fn build<B: Backend, S: ParamSource<B>>(
        &self,
        prefix: &str,
        source: &mut S,
    ) -> Result<RmsNorm<B>, S::Error> {
        Ok(RmsNorm {
            weight: source.gain(&join(prefix, "weight"), self.dim)?,
            eps: self.eps,
        })
    }
}

impl<B: Backend> RmsNorm<B> {
    /// A norm with the given gain `[dim]`.
    pub fn from_weight(weight: Tensor<B, 1>, eps: f64) -> Self {
        Self {
            weight: Param::from_tensor(weight),
            eps,
        }
    }

    /// Normalise over the last dimension: `[..., dim] -> [..., dim]`.
    ///
    /// The tensors of this project are f32, so the statistics are computed in f32 as the
    /// reference does (`x.float()`).
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let mean_square = x.clone().square().mean_dim(D - 1);
        let inv_rms = (mean_square + self.eps).sqrt().recip();
        x * inv_rms * self.weight.val().unsqueeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::{TensorData, Tolerance};

    #[test]
    fn normalises_each_row_by_its_rms() {
        let device = Default::default();
        let norm =
            RmsNorm::<NdArray>::from_weight(Tensor::from_floats([1.0, 2.0, 0.5], &device), 1e-5);
        let rows = [[1.0f32, -2.0, 3.0], [0.5, 0.0, -0.25]];
        let x = Tensor::<NdArray, 2>::from_floats(rows, &device);
        let expected: Vec<f32> = rows
            .iter()
            .flat_map(|row| {
                let ms = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / 3.0;
                let inv = 1.0 / (ms + 1e-5).sqrt();
                row.iter()
                    .zip([1.0, 2.0, 0.5])
                    .map(move |(v, w)| (*v as f64 * inv * w) as f32)
            })
            .collect();
        norm.forward(x).into_data().assert_approx_eq::<f32>(
            &TensorData::new(expected, [2, 3]),
            Tolerance::absolute(1e-6),
        );
    }
}
