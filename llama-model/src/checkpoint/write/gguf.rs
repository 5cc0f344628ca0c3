//! Writing a model as llama.cpp's GGUF (v3, architecture `llama`), as llama.cpp's
//! `convert_hf_to_gguf.py` writes one: the `llama.*` hyper-parameters, the vocabulary and
//! chat template as `tokenizer.*` metadata, llama.cpp's tensor names.
//!
//! - q/k rows stay in our (Meta's interleaved) order: llama.cpp's converter undoes HF's
//!   permutation, and our GGUF reader moves no row, so nothing moves here either.
//! - Storage (`--outtype`): matrices in F32, F16, BF16 or Q8_0; 1-D tensors (norms,
//!   `rope_freqs`) stay F32; a Q8_0 matrix whose rows are not whole blocks of 32 falls back
//!   to F16, as the converter does.
//! - A tied head has no `output.weight`.
//! - RoPE scaling: linear as `llama.rope.scaling.*`; Llama 3's as the `rope_freqs.weight`
//!   tensor (one divisor per rotated pair, computed as the converter computes it); a GGUF's
//!   own divisors are written back as they were.
//!
//! The file is written tensor by tensor (one tensor's f32 copy and encoding at a time)
//! through the atomic writer: a failure leaves no file.

use std::path::Path;

use burn::tensor::backend::Backend;

use super::safetensors::lazy_model_tensors;
use crate::checkpoint::gguf::to_gguf;
use crate::checkpoint::CheckpointError;
use crate::gguf::{encode, write_gguf, GgmlType, GgufWriteError, MetaValue, TensorEntry};
use crate::model::config::LlamaConfig;
use crate::model::rope_scaling::RopeScaling;
use crate::{Llama, Tokenizer};

/// The storage of exported GGUF weights (the converter's `--outtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GgufDtype {
    #[default]
    F32,
    F16,
    Bf16,
    Q8_0,
}

impl GgufDtype {
    /// The name `--dtype` gives it.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
            Self::Q8_0 => "q8_0",
        }
    }

    /// `general.file_type` (llama.cpp's `llama_ftype`).
    fn file_type(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q8_0 => 7,
            Self::Bf16 => 32,
        }
    }

    /// The ggml type of a tensor of PyTorch shape `shape`.
    pub fn tensor_type(self, shape: &[usize]) -> GgmlType {
        if shape.len() < 2 {
            return GgmlType::F32;
        }
        match self {
            Self::F32 => GgmlType::F32,
            Self::F16 => GgmlType::F16,
            Self::Bf16 => GgmlType::BF16,
            Self::Q8_0 if shape.last().is_some_and(|c| c % 32 == 0) => GgmlType::Q8_0,
            Self::Q8_0 => GgmlType::F16,
        }
    }
}

/// The name of the tensor holding Llama 3's RoPE divisors.
const ROPE_FREQS: &str = "rope_freqs.weight";

/// What a GGUF file is made of besides the weights.
pub struct GgufExport<'a> {
    pub config: &'a LlamaConfig,
    pub tokenizer: &'a Tokenizer,
    pub dtype: GgufDtype,
    /// `general.name`.
    pub name: String,
    /// `tokenizer.chat_template`, if the model has one.
    pub chat_template: Option<String>,
}

impl GgufExport<'_> {
    /// Write `model` to `out` (a file, replaced if it exists), atomically.
    pub fn save<B: Backend>(&self, model: &Llama<B>, out: &Path) -> Result<(), CheckpointError> {
        let unsupported = |detail: String| CheckpointError::Unsupported {
            path: out.to_path_buf(),
            detail,
        };
        let mut metadata = self.hyper_parameters();
        metadata.extend(
            self.tokenizer
                .gguf_metadata(self.config.vocab_size)
                .map_err(unsupported)?,
        );
        if let Some(template) = &self.chat_template {
            metadata.push((
                "tokenizer.chat_template".into(),
                MetaValue::Str(template.clone()),
            ));
        }
        let rope_freqs = rope_divisors(self.config);
        let mut params = lazy_model_tensors(model);
        if self.config.tie_embeddings {
            params.retain(|t| t.name != "output.weight");
        }
        params.sort_by_key(|t| gguf_order(&t.name));
        let mut entries = Vec::new();
        if let Some(factors) = &rope_freqs {
            entries.push(TensorEntry {
                name: ROPE_FREQS.into(),
                shape: vec![factors.len()],
                kind: GgmlType::F32,
            });
        }
        for t in &params {
            entries.push(TensorEntry {
                name: to_gguf(&t.name).unwrap_or_else(|| t.name.clone()),
                shape: t.shape.clone(),
                kind: self.dtype.tensor_type(&t.shape),
            });
        }
        let offset = usize::from(rope_freqs.is_some());
        let written = write_gguf(out, &metadata, &entries, |i| {
            let values = match i.checked_sub(offset) {
                None => rope_freqs.clone().unwrap_or_default(),
                Some(p) => params[p].read().data,
            };
            encode(entries[i].kind, &values)
                .ok_or_else(|| format!("tensor `{}`: cannot encode", entries[i].name))
        });
        written.map_err(|e| match e {
            GgufWriteError::Io(source) => CheckpointError::Io {
                path: out.to_path_buf(),
                source,
            },
            other => unsupported(other.to_string()),
        })
    }

    /// `general.*` and the `llama.*` hyper-parameters.
    fn hyper_parameters(&self) -> Vec<(String, MetaValue)> {
        let c = self.config;
        let u32_of = |v: usize| MetaValue::U32(u32::try_from(v).unwrap_or(u32::MAX));
        let mut meta = vec![
            (
                "general.architecture".into(),
                MetaValue::Str("llama".into()),
            ),
            ("general.name".into(), MetaValue::Str(self.name.clone())),
        ];
        let llama = [
            ("context_length", u32_of(c.max_seq_len)),
            ("embedding_length", u32_of(c.dim)),
            ("block_count", u32_of(c.n_layers)),
            ("feed_forward_length", u32_of(c.hidden_dim())),
            ("attention.head_count", u32_of(c.n_heads)),
            ("attention.head_count_kv", u32_of(c.n_kv_heads())),
            ("rope.dimension_count", u32_of(c.head_dim())),
            (
                "attention.layer_norm_rms_epsilon",
                MetaValue::F32(c.norm_eps as f32),
            ),
            ("rope.freq_base", MetaValue::F32(c.rope_theta as f32)),
            ("vocab_size", u32_of(c.vocab_size)),
        ];
        meta.extend(llama.into_iter().map(|(k, v)| (format!("llama.{k}"), v)));
        if let Some(RopeScaling::Linear { factor }) = c.rope_scaling {
            meta.push((
                "llama.rope.scaling.type".into(),
                MetaValue::Str("linear".into()),
            ));
            meta.push((
                "llama.rope.scaling.factor".into(),
                MetaValue::F32(factor as f32),
            ));
        }
        meta.push((
            "general.file_type".into(),
            MetaValue::U32(self.dtype.file_type()),
        ));
        meta
    }
}

/// The position of our parameter `name` in a converted file: the embedding, the final
/// norm, each layer's q, k, v, output, gate, down, up and norms, then the head.
fn gguf_order(name: &str) -> (usize, usize, usize) {
    const LAYER: [&str; 9] = [
        "attention.compute_query",
        "attention.compute_key",
        "attention.compute_value",
        "attention.compute_output",
        "feed_forward.w1",
        "feed_forward.w2",
        "feed_forward.w3",
        "attention_norm",
        "ffn_norm",
    ];
    match name {
        "tok_embeddings.weight" => (0, 0, 0),
        "norm.weight" => (1, 0, 0),
        "output.weight" => (3, 0, 0),
        _ => {
            let rest = name.strip_prefix("layers.").unwrap_or(name);
            let (layer, param) = rest.split_once('.').unwrap_or((rest, ""));
            let param = param.strip_suffix(".weight").unwrap_or(param);
            let slot = LAYER
                .iter()
                .position(|p| *p == param)
                .unwrap_or(LAYER.len());
            (2, layer.parse().unwrap_or(usize::MAX), slot)
        }
    }
}

/// `rope_freqs.weight` for the config's RoPE scaling: a GGUF's own divisors, or Llama 3's
/// computed as llama.cpp's converter computes them (in f64, stored as f32).
fn rope_divisors(config: &LlamaConfig) -> Option<Vec<f32>> {
    match config.rope_scaling.as_ref()? {
        RopeScaling::Factors { factors } => Some(factors.clone()),
        RopeScaling::Linear { .. } => None,
        &RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            let head_dim = config.head_dim();
            let old = original_max_position_embeddings as f64;
            let (low_wavelen, high_wavelen) = (old / low_freq_factor, old / high_freq_factor);
            Some(
                (0..head_dim)
                    .step_by(2)
                    .map(|i| {
                        let freq = 1.0 / config.rope_theta.powf(i as f64 / head_dim as f64);
                        let wavelen = 2.0 * std::f64::consts::PI / freq;
                        let divisor = if wavelen < high_wavelen {
                            1.0
                        } else if wavelen > low_wavelen {
                            factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            1.0 / ((1.0 - smooth) / factor + smooth)
                        };
                        divisor as f32
                    })
                    .collect(),
            )
        }
    }
}
