//! Loading Llama weights from the formats users have:
//!
//! 1. the exercise's `stories42M.pt` (a `torch.save` dict with `model_args` and `model`);
//! 2. llama2.c training checkpoints (`attention.wq…` names, `_orig_mod.` prefixes);
//! 3. llama2.c `.bin` exports (legacy v0 header, the v1 `ak42` header, and the v2 int8
//!    export `runq.c` reads);
//! 4. safetensors, with the config beside it;
//! 5. Hugging Face Llama folders (`config.json` and safetensors shards; [`hf`]);
//! 6. llama.cpp's GGUF files ([`gguf`]).
//!
//! The format is found from the file's first bytes, not its extension. Every reader produces
//! a [`TensorMap`] under the exercise's parameter names, and one function
//! ([`tensors::build_model`]) checks names and shapes and assembles the [`Llama`]: a missing,
//! unexpected or wrong-shaped tensor is an error naming it (the exercise loads with
//! `strict=False`; we do not).

pub mod gguf;
mod half_at_load;
pub mod hf;
mod llama2c_bin;
mod llama2c_q80;
mod name_map;
mod pickle_scan;
mod pytorch;
mod safetensors_file;
pub mod tensors;
mod torch_archive;
mod write;

use std::io::Read;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;

use crate::model::config::{ConfigError, LlamaConfig};
use crate::model::llama::Llama;
use crate::weights::q8_weights::Q8Store;
pub use half_at_load::LoadPrecision;
pub use safetensors_file::read_tensors;
pub use tensors::{RawTensor, TensorMap};
pub use write::gguf::{GgufDtype, GgufExport};
pub use write::hf::{ExportDtype, HfFolder, TokenizerWritten};
pub use write::llama2c::{llama2c_refusal, save_llama2c_bin};
pub use write::safetensors::{
    lazy_model_tensors, model_tensors, raw_tensor, save_model, write_safetensors, LazyTensor,
};
pub use write::write_folder;

/// Why a checkpoint could not be loaded. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read checkpoint {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a Llama checkpoint: {detail}")]
    UnknownFormat { path: PathBuf, detail: String },
    #[error("{path} is truncated or corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("{path}: unsupported checkpoint: {detail}")]
    Unsupported { path: PathBuf, detail: String },
    /// The configuration's error is part of the message, not a source: the CLI prints an
    /// error's chain, which would repeat it.
    #[error("{path}: bad model configuration: {error}")]
    Config { path: PathBuf, error: ConfigError },
    #[error(
        "{path}: no config found for this safetensors file (tried {tried}); pass one with --config"
    )]
    MissingConfig { path: PathBuf, tried: String },
    #[error("{path}: tensor `{name}` is missing (expected shape {expected:?})")]
    MissingTensor {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
    },
    #[error(
        "{path}: unexpected tensor `{name}` with shape {shape:?} (not a parameter of this model)"
    )]
    UnexpectedTensor {
        path: PathBuf,
        name: String,
        shape: Vec<usize>,
    },
    #[error("{path}: missing shard (the index {index} puts tensor `{tensor}` in it)")]
    MissingShard {
        path: PathBuf,
        index: PathBuf,
        tensor: String,
    },
    #[error("{path}: tensor `{name}` has shape {found:?}, the config expects {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
}

impl CheckpointError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            Self::Io { path, .. }
            | Self::UnknownFormat { path, .. }
            | Self::Corrupt { path, .. }
            | Self::Unsupported { path, .. }
            | Self::Config { path, .. }
            | Self::MissingConfig { path, .. }
            | Self::MissingTensor { path, .. }
            | Self::UnexpectedTensor { path, .. }
            | Self::MissingShard { path, .. }
            | Self::ShapeMismatch { path, .. } => path,
        }
    }
}

/// The container formats we read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointFormat {
    /// A `torch.save` zip archive (the exercise's and llama2.c's `.pt`).
    Pytorch,
    /// A llama2.c `.bin` export, legacy (v0) header.
    Llama2cV0,
    /// A llama2.c `.bin` export with the `ak42` magic, version 1 (f32).
    Llama2cV1,
    /// A llama2.c `.bin` export, version 2: int8 weights in groups (Q8_0).
    Llama2cQ80,
    /// A safetensors file.
    Safetensors,
    /// A Hugging Face model folder (`config.json` and safetensors weights).
    HuggingFace,
    /// A llama.cpp GGUF file (v2/v3).
    Gguf,
}

impl std::fmt::Display for CheckpointFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Pytorch => "PyTorch checkpoint",
            Self::Llama2cV0 => "llama2.c .bin (v0)",
            Self::Llama2cV1 => "llama2.c .bin (v1)",
            Self::Llama2cQ80 => "llama2.c .bin (v2, int8 Q8_0)",
            Self::Safetensors => "safetensors",
            Self::HuggingFace => "Hugging Face folder",
            Self::Gguf => "GGUF",
        })
    }
}

/// Options of [`load_checkpoint`].
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// A JSON config to use instead of the one found beside a safetensors file.
    pub config: Option<PathBuf>,
}

/// A loaded model with what was learned about its file.
#[derive(Debug)]
pub struct LoadedCheckpoint<B: Backend> {
    pub model: Llama<B>,
    pub config: LlamaConfig,
    pub format: CheckpointFormat,
    /// Problems that do not stop loading (NaN or infinite weights), one line each.
    pub warnings: Vec<String>,
}

/// Detect the container format from the first bytes of `path` (a folder, or a JSON file,
/// is a Hugging Face model).
pub fn detect_format(path: &Path) -> Result<CheckpointFormat, CheckpointError> {
    if hf::locate(path)?.is_some() {
        return Ok(CheckpointFormat::HuggingFace);
    }
    let io = |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut head = [0u8; 16];
    let mut file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let n = read_up_to(&mut file, &mut head).map_err(io)?;
    let head = &head[..n];
    if n == 0 {
        return Err(CheckpointError::UnknownFormat {
            path: path.to_path_buf(),
            detail: "the file is empty".into(),
        });
    }
    if gguf::is_gguf(head) {
        return Ok(CheckpointFormat::Gguf);
    }
    if head.starts_with(b"PK\x03\x04") {
        return Ok(CheckpointFormat::Pytorch);
    }
    if head.first() == Some(&0x80) {
        return Err(CheckpointError::Unsupported {
            path: path.to_path_buf(),
            detail: "a raw pickle (legacy torch.save format); re-save it with a current \
                     PyTorch (torch.save writes a zip archive) or export safetensors"
                .into(),
        });
    }
    if n >= 8 && head.get(8) == Some(&b'{') {
        let header_len = u64::from_le_bytes(head[..8].try_into().unwrap_or_default());
        if header_len.saturating_add(8) <= len {
            return Ok(CheckpointFormat::Safetensors);
        }
    }
    if n >= 8 && head[..4] == llama2c_bin::MAGIC.to_le_bytes() {
        return Ok(if head[4..8] == 2i32.to_le_bytes() {
            CheckpointFormat::Llama2cQ80
        } else {
            CheckpointFormat::Llama2cV1
        });
    }
    if n >= 16 && llama2c_bin::plausible_v0_header(head) {
        return Ok(CheckpointFormat::Llama2cV0);
    }
    Err(CheckpointError::UnknownFormat {
        path: path.to_path_buf(),
        detail: "not a PyTorch zip, safetensors, GGUF or llama2.c .bin file".into(),
    })
}

/// The `config.json` of the Hugging Face model at `path` (the folder or the file).
fn hf_config(path: &Path) -> Result<PathBuf, CheckpointError> {
    hf::locate(path)?.ok_or_else(|| CheckpointError::UnknownFormat {
        path: path.to_path_buf(),
        detail: "not a Hugging Face model folder".into(),
    })
}

/// Read as many bytes as fit in `buf` (fewer at end of file).
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Read the config and every tensor of a checkpoint, without building a model. An int8
/// export's tensors are its dequantized values.
pub fn read_checkpoint(
    path: &Path,
    options: &LoadOptions,
) -> Result<(LlamaConfig, TensorMap, CheckpointFormat), CheckpointError> {
    let (config, tensors, format, _) = read_with_int8(path, options)?;
    Ok((config, tensors, format))
}

/// [`read_checkpoint`], with an int8 export's matrices as stored.
fn read_with_int8(
    path: &Path,
    options: &LoadOptions,
) -> Result<(LlamaConfig, TensorMap, CheckpointFormat, Option<Q8Store>), CheckpointError> {
    let format = detect_format(path)?;
    let (config, tensors, int8) = match format {
        CheckpointFormat::Pytorch => pytorch::read(path).map(|(c, t)| (c, t, None))?,
        CheckpointFormat::Llama2cV0 | CheckpointFormat::Llama2cV1 => {
            llama2c_bin::read(path).map(|(c, t)| (c, t, None))?
        }
        CheckpointFormat::Llama2cQ80 => llama2c_q80::read(path).map(|(c, t, q)| (c, t, Some(q)))?,
        CheckpointFormat::Safetensors => {
            safetensors_file::read(path, options.config.as_deref()).map(|(c, t)| (c, t, None))?
        }
        CheckpointFormat::HuggingFace => hf::read(&hf_config(path)?).map(|(c, t)| (c, t, None))?,
        CheckpointFormat::Gguf => gguf::read(path).map(|(c, t)| (c, t, None))?,
    };
    Ok((config, tensors, format, int8))
}

/// Load a Llama checkpoint of any supported format onto `device`. A model from an int8
/// export decodes on its stored int8 matrices ([`crate::weights::q8_weights`]; see
/// [`Llama::without_q8`] for its f32 form).
pub fn load_checkpoint<B: Backend>(
    path: &Path,
    options: &LoadOptions,
    device: &B::Device,
) -> Result<LoadedCheckpoint<B>, CheckpointError> {
    load_checkpoint_as(path, options, LoadPrecision::AsStored, device)
}

/// [`load_checkpoint`] with the weight matrices in `precision`. A Hugging Face folder is cast
/// tensor by tensor as it loads, so its peak memory is the cast model plus one tensor; the
/// other formats are cast once loaded.
pub fn load_checkpoint_as<B: Backend>(
    path: &Path,
    options: &LoadOptions,
    precision: LoadPrecision,
    device: &B::Device,
) -> Result<LoadedCheckpoint<B>, CheckpointError> {
    let mut loaded = load_stored(path, options, precision, device)?;
    if precision == LoadPrecision::F16 {
        // A no-op for matrices already in f16.
        loaded.model = loaded.model.without_q8().with_half_weights();
    }
    Ok(loaded)
}

/// The model of `path`, its weights as stored (a Hugging Face folder's already in `precision`).
fn load_stored<B: Backend>(
    path: &Path,
    options: &LoadOptions,
    precision: LoadPrecision,
    device: &B::Device,
) -> Result<LoadedCheckpoint<B>, CheckpointError> {
    // A Hugging Face folder is built tensor by tensor from its memory-mapped shards.
    match detect_format(path)? {
        CheckpointFormat::HuggingFace => return hf::load(&hf_config(path)?, precision, device),
        CheckpointFormat::Gguf => return gguf::load(path, precision, device),
        _ => {}
    }
    let (config, tensors, format, int8) = read_with_int8(path, options)?;
    let warnings = tensors::non_finite_report(path, &tensors);
    // `build_model` has checked every name and shape, so the matrices fit.
    let (model, config) = tensors::build_model(path, config, tensors, device)?;
    let model = match int8 {
        Some(store) => model.with_q8_store(store),
        None => model,
    };
    Ok(LoadedCheckpoint {
        model,
        config,
        format,
        warnings,
    })
}
