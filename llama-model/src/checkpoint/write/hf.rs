//! Writing a model as a Hugging Face Llama folder: `config.json`, `generation_config.json`,
//! `model.safetensors` (HF names, f32, f16 or bf16, q/k rows in HF's half-split RoPE
//! order) and the tokenizer.
//!
//! The folder is written under a temporary name beside `out` and renamed into place when
//! every file is written, so a failure leaves no partial folder. `model.safetensors` is
//! streamed: its header is made from the shapes, then each tensor is read from the model,
//! permuted, encoded and written in turn (peak memory: the model and about one tensor's
//! copies).
//!
//! The tokenizer: a `tokenizer.json` is copied; a sentencepiece `.model` is copied as
//! `tokenizer.model` with a `tokenizer_config.json` naming `LlamaTokenizer`; a llama2.c
//! `.bin` (a vocabulary without the sentencepiece model's normaliser) is not written, and
//! [`HfFolder::save`] says so in its result.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use safetensors::tensor::View;
use safetensors::{Dtype, SafeTensorError};

use super::hf_config::{config_json, generation_config_json, sentencepiece_tokenizer_config};
use super::safetensors::{lazy_model_tensors, LazyTensor};
use super::write_folder;
use crate::atomic_file::write_atomic;
use crate::checkpoint::hf::names::{permute_rows, rope_rows, to_hf};
use crate::checkpoint::hf::SpecialIds;
use crate::checkpoint::CheckpointError;
use crate::model::config::LlamaConfig;
use crate::model::rope_scaling::RopeScaling;
use crate::tokenizer::TokenizerFormat;
use crate::{Llama, Tokenizer};

/// The storage dtype of exported weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExportDtype {
    #[default]
    F32,
    F16,
    Bf16,
}

impl ExportDtype {
    /// The name `transformers` gives it in `config.json` (`torch_dtype` / `dtype`).
    pub fn torch_name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::F16 => "float16",
            Self::Bf16 => "bfloat16",
        }
    }

    /// The safetensors dtype.
    fn safetensors(self) -> Dtype {
        match self {
            Self::F32 => Dtype::F32,
            Self::F16 => Dtype::F16,
            Self::Bf16 => Dtype::BF16,
        }
    }

    /// `values` rounded to this dtype (to nearest, ties to even), little-endian.
    pub fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            Self::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Self::F16 => values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
            Self::Bf16 => values
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
        }
    }
}

/// The files copied with a `tokenizer.json` from beside it.
const JSON_COMPANIONS: [&str; 3] = [
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
];

/// What a Hugging Face folder is made of besides the weights.
pub struct HfFolder<'a> {
    pub config: &'a LlamaConfig,
    /// BOS and EOS ids for `config.json` and `generation_config.json`.
    pub special: SpecialIds,
    /// The tokenizer to put in the folder (see the module docs), if any.
    pub tokenizer: Option<&'a Tokenizer>,
    pub dtype: ExportDtype,
}

/// What [`HfFolder::save`] wrote of the tokenizer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenizerWritten {
    /// `tokenizer.json`, copied.
    Json,
    /// `tokenizer.model` (copied) and `tokenizer_config.json`.
    SentencePiece,
    /// None: the source (named) cannot be written in a form `transformers` reads.
    NotWritten(PathBuf),
}

/// One weight of the model as `model.safetensors` stores it: HF's name, q/k rows in HF's
/// order, in the export dtype. Its bytes are made when the writer asks for them
/// (safetensors' [`View`]), so the file is written one tensor at a time.
struct HfTensor<'m> {
    param: LazyTensor<'m>,
    /// The heads whose q/k rows are permuted into HF's order, if it is q or k.
    rope_heads: Option<usize>,
    dtype: ExportDtype,
}

impl View for HfTensor<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype.safetensors()
    }

    fn shape(&self) -> &[usize] {
        &self.param.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        let tensor = self.param.read();
        let cols = tensor.shape.last().copied().unwrap_or(1);
        let data = match self.rope_heads {
            Some(heads) => permute_rows(&tensor.data, heads, cols),
            None => tensor.data,
        };
        Cow::Owned(self.dtype.encode(&data))
    }

    fn data_len(&self) -> usize {
        self.param.shape.iter().product::<usize>() * self.dtype.safetensors().bitsize() / 8
    }
}

/// The weights of `model` under HF's names in `dtype`, q/k rows in HF's order, read when
/// written; a tied head is not stored (HF ties `lm_head` to the embeddings).
fn hf_tensors<'m, B: Backend>(
    model: &'m Llama<B>,
    config: &LlamaConfig,
    dtype: ExportDtype,
) -> Vec<(String, HfTensor<'m>)> {
    lazy_model_tensors(model)
        .into_iter()
        .filter(|t| !(config.tie_embeddings && t.name == "output.weight"))
        .map(|param| {
            let rope_heads = match rope_rows(&param.name) {
                Some(true) => Some(config.n_heads),
                Some(false) => Some(config.n_kv_heads()),
                None => None,
            };
            let name = to_hf(&param.name).unwrap_or_else(|| param.name.clone());
            let tensor = HfTensor {
                param,
                rope_heads,
                dtype,
            };
            (name, tensor)
        })
        .collect()
}

/// Write `model`'s weights to `path` as safetensors, one tensor at a time: the header from
/// the shapes, then each tensor read, permuted and encoded in turn, then flushed to disk.
fn write_weights<B: Backend>(
    model: &Llama<B>,
    config: &LlamaConfig,
    dtype: ExportDtype,
    path: &Path,
) -> Result<(), CheckpointError> {
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let tensors = hf_tensors(model, config, dtype);
    safetensors::serialize_to_file(tensors, Some(metadata), path).map_err(|e| match e {
        SafeTensorError::IoError(source) => CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        },
        other => CheckpointError::Corrupt {
            path: path.to_path_buf(),
            detail: other.to_string(),
        },
    })?;
    // Flushed before the folder is renamed into place.
    std::fs::File::open(path)
        .and_then(|file| file.sync_all())
        .map_err(|source| CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        })
}

impl HfFolder<'_> {
    /// Write `model` as the folder `out` (which must not exist), atomically.
    pub fn save<B: Backend>(
        &self,
        model: &Llama<B>,
        out: &Path,
    ) -> Result<Option<TokenizerWritten>, CheckpointError> {
        if let Some(RopeScaling::Factors { .. }) = &self.config.rope_scaling {
            // A GGUF's `rope_freqs` divisors: transformers' configs name a scheme (llama3,
            // linear…), not a table, so the folder would load with other frequencies.
            return Err(CheckpointError::Unsupported {
                path: out.to_path_buf(),
                detail: "RoPE scaling given as per-frequency factors (a GGUF file's \
                         rope_freqs) has no Hugging Face config field"
                    .into(),
            });
        }
        write_folder(out, |dir| self.write_files(model, dir))
    }

    /// Every file of the folder, into `dir`.
    fn write_files<B: Backend>(
        &self,
        model: &Llama<B>,
        dir: &Path,
    ) -> Result<Option<TokenizerWritten>, CheckpointError> {
        let json_file = |name: &str, value: serde_json::Value| {
            let path = dir.join(name);
            let text = serde_json::to_vec_pretty(&value).unwrap_or_default();
            write_atomic(&path, &text).map_err(|source| CheckpointError::Io { path, source })
        };
        json_file(
            "config.json",
            config_json(self.config, &self.special, self.dtype),
        )?;
        json_file(
            "generation_config.json",
            generation_config_json(&self.special),
        )?;
        write_weights(
            model,
            self.config,
            self.dtype,
            &dir.join("model.safetensors"),
        )?;
        let Some(tokenizer) = self.tokenizer else {
            return Ok(None);
        };
        let source = tokenizer.source();
        let copy = |name: &str| copy_file(source, &dir.join(name));
        Ok(Some(match tokenizer.format() {
            TokenizerFormat::HuggingFaceJson => {
                copy("tokenizer.json")?;
                // Its companions (BOS rule, special tokens, chat template), where it has them.
                for name in JSON_COMPANIONS {
                    let beside = source.with_file_name(name);
                    if beside.is_file() {
                        copy_file(&beside, &dir.join(name))?;
                    }
                }
                TokenizerWritten::Json
            }
            TokenizerFormat::SentencePiece => {
                copy("tokenizer.model")?;
                json_file(
                    "tokenizer_config.json",
                    sentencepiece_tokenizer_config(tokenizer, self.config.max_seq_len),
                )?;
                TokenizerWritten::SentencePiece
            }
            TokenizerFormat::Llama2c | TokenizerFormat::Gguf | TokenizerFormat::GgufByteLevel => {
                TokenizerWritten::NotWritten(source.to_path_buf())
            }
        }))
    }
}

/// Copy `from` to `to` (a small file), atomically.
fn copy_file(from: &Path, to: &Path) -> Result<(), CheckpointError> {
    std::fs::read(from)
        .and_then(|bytes| write_atomic(to, &bytes))
        .map_err(|source| CheckpointError::Io {
            path: from.to_path_buf(),
            source,
        })
}
