//! `--weight-dtype`: the precision the weight matrices are stored in while generating.

use anyhow::{bail, Result};
use burn::tensor::backend::Backend;
use clap::ValueEnum;
use llama_model::weights::f32_rows;
use llama_model::weights::q8_kernel::kernel_name;
use llama_model::Llama;

use crate::runtime::backend::BackendKind;

/// Storage precision of the weight matrices (see `llama_model::weights::half` and
/// `llama_model::weights::q8_weights`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum WeightDtype {
    /// As loaded: f32, exact.
    #[default]
    F32,
    /// IEEE half precision: half the bytes a decoded token reads, logits within ~2e-2
    /// (1.9e-2 on the stories260K forward fixture).
    F16,
    /// int8 in groups (llama2.c's Q8_0, runq.c's products): a quarter of the bytes.
    Q8,
}

impl WeightDtype {
    /// What a model decodes with: `flag` if given, else what the checkpoint holds (int8 for
    /// llama2.c's int8 export, f32 otherwise).
    pub fn resolve<B: Backend>(flag: Option<Self>, model: &Llama<B>) -> Self {
        flag.unwrap_or(if model.q8_group().is_some() {
            Self::Q8
        } else {
            Self::F32
        })
    }

    /// Bytes per weight for rows in groups of `group` (q8 keeps an f32 scale per group), for
    /// the bandwidth a decoding speed implies.
    pub fn bytes(self, group: usize) -> f64 {
        match self {
            Self::F32 => 4.0,
            Self::F16 => 2.0,
            Self::Q8 => 1.0 + 4.0 / group.max(1) as f64,
        }
    }

    /// Whether `backend` runs this precision: f32 and q8 everywhere (q8 as int8 products on
    /// the CPU backends, as its dequantized f32 weights on the GPU ones), f16 on flex
    /// (gemm's f16 kernels). ndarray has no f16 tensors, and libtorch's and wgpu's f16
    /// products were not measured on this project's machines.
    pub fn check(self, backend: BackendKind) -> Result<()> {
        match (self, backend) {
            (Self::F32 | Self::Q8, _) | (Self::F16, BackendKind::Flex) => Ok(()),
            (Self::F16, other) => bail!(
                "--weight-dtype f16 runs on the flex backend only (gemm's f16 kernels), \
                 not on {other}; use --backend flex"
            ),
        }
    }

    /// `model` with its weight matrices in this precision (after [`Self::check`]), and a
    /// description for the load line. q8 keeps an int8 checkpoint's own matrices, or
    /// quantizes in groups of 64 (fewer where a row length asks for it).
    pub fn apply<B: Backend>(
        self,
        model: Llama<B>,
        backend: BackendKind,
    ) -> Result<(Llama<B>, String)> {
        self.check(backend)?;
        Ok(match self {
            Self::F32 => {
                // The row kernel reads flex's host buffers; other backends run their own.
                let text = if backend == BackendKind::Flex && f32_rows::available() {
                    "f32 (few-row products: AVX-512 rows)"
                } else {
                    "f32"
                };
                (model.without_q8(), text.into())
            }
            Self::F16 => (model.without_q8().with_half_weights(), "f16".into()),
            Self::Q8 => {
                let (model, origin) = match model.q8_group() {
                    Some(_) => (model, "as stored"),
                    None => {
                        let group = model.q8_group_size();
                        (model.with_q8_weights(group)?, "quantized at load")
                    }
                };
                let group = model.q8_group().unwrap_or_default();
                if backend.runs_int8_products() {
                    let kernel = kernel_name(group);
                    let text =
                        format!("q8 (Q8_0, group {group}, {origin}; int8 products: {kernel})");
                    (model, text)
                } else {
                    let text = format!(
                        "q8 (Q8_0, group {group}, {origin}; {backend} has no int8 kernel: \
                         its dequantized f32 weights)"
                    );
                    (model.without_q8(), text)
                }
            }
        })
    }

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Q8 => "q8",
        }
    }
}
