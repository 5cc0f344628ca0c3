//! `--weight-dtype`: the precision the weight matrices are stored in while generating.

use anyhow::{bail, Result};
use burn::tensor::backend::Backend;
use clap::ValueEnum;
use llama_model::Llama;

use crate::backend::BackendKind;

/// Storage precision of the weight matrices (see `llama_model::half_weights`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum WeightDtype {
    /// As loaded: f32, exact.
    #[default]
    F32,
    /// IEEE half precision: half the bytes a decoded token reads, logits within ~2e-2
    /// (1.9e-2 on the stories260K forward fixture).
    F16,
}

impl WeightDtype {
    /// Bytes per weight, for the bandwidth a decoding speed implies.
    pub fn bytes(self) -> f64 {
        match self {
            Self::F32 => 4.0,
            Self::F16 => 2.0,
        }
    }

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
        }
    }

    /// Whether `backend` runs this precision: f32 everywhere, f16 on flex (gemm's f16
    /// kernels). ndarray has no f16 tensors, and libtorch's and wgpu's f16 products were not
    /// measured on this project's machines.
    pub fn check(self, backend: BackendKind) -> Result<()> {
        match (self, backend) {
            (Self::F32, _) | (Self::F16, BackendKind::Flex) => Ok(()),
            (Self::F16, other) => bail!(
                "--weight-dtype f16 runs on the flex backend only (gemm's f16 kernels), \
                 not on {other}; use --backend flex"
            ),
        }
    }

    /// `model` with its weight matrices in this precision (after [`Self::check`]).
    pub fn apply<B: Backend>(self, model: Llama<B>, backend: BackendKind) -> Result<Llama<B>> {
        self.check(backend)?;
        Ok(match self {
            Self::F32 => model,
            Self::F16 => model.with_half_weights(),
        })
    }
}
