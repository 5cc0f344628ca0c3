//! Hugging Face Llama folders: `config.json` (+ `generation_config.json`), and weights in
//! `model.safetensors` or shards listed by `model.safetensors.index.json`, stored as f32,
//! f16 or bf16 under HF's names.
//!
//! A checkpoint path is such a folder, or its `config.json` (a JSON file naming
//! `architectures` or `model_type`; our own config beside a `.safetensors` has neither).
//! The model is built parameter by parameter straight from the memory-mapped shards
//! (`source::HfSource`), so no whole-model tensor map is made first; q/k rows are put back
//! in interleaved-pair order (`names.rs`).

mod config;
pub(crate) mod names;
mod shards;
mod source;

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;

pub use config::{SpecialIds, LLAMA_ARCHITECTURE};

use super::tensors::{RawTensor, ReadValues, Stored, TensorMap};
use super::{CheckpointError, CheckpointFormat, LoadedCheckpoint};
use crate::checkpoint::half_at_load::{HalfAtLoad, LoadPrecision};
use crate::model::config::LlamaConfig;
use names::{from_hf, is_ignored_buffer};
use shards::Shards;
use source::{HfReader, HfSource};

/// The HF head, absent from tied folders.
const HEAD: &str = "lm_head.weight";

/// The `config.json` of the Hugging Face folder `path` names (the folder, its config, or a
/// `.safetensors` file in it), `None` if `path` is not one. A folder without `config.json`
/// is an error: no other checkpoint is a folder.
pub fn locate(path: &Path) -> Result<Option<PathBuf>, CheckpointError> {
    if path.is_dir() {
        let config = path.join("config.json");
        return if config.is_file() {
            Ok(Some(config))
        } else {
            Err(CheckpointError::UnknownFormat {
                path: path.to_path_buf(),
                detail: "a folder without config.json (a Hugging Face model folder has one)".into(),
            })
        };
    }
    // A weight file of such a folder (with no `<name>.config.json` of its own) is the folder.
    if path.extension().is_some_and(|e| e == "safetensors")
        && !path.with_extension("config.json").is_file()
    {
        let config = path.with_file_name("config.json");
        if looks_like_hf_config(&config) {
            return Ok(Some(config));
        }
    }
    Ok(looks_like_hf_config(path).then(|| path.to_path_buf()))
}

/// Whether `path` is a JSON file holding a Hugging Face model config.
fn looks_like_hf_config(path: &Path) -> bool {
    // A config is a few KiB; anything large is a weight file, not worth parsing.
    const MAX_CONFIG_BYTES: u64 = 1 << 20;
    let small = std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() <= MAX_CONFIG_BYTES);
    if !small {
        return false;
    }
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    serde_json::from_str::<serde_json::Value>(&text).is_ok_and(|v| config::is_hf_config(&v))
}

/// The folder's config, with the head tied when the folder has no `lm_head.weight`.
fn config_and_weights(
    config_path: &Path,
) -> Result<(LlamaConfig, SpecialIds, Shards), CheckpointError> {
    let (mut config, special) = config::read(config_path)?;
    let folder = config_path.parent().unwrap_or(Path::new("."));
    let shards = Shards::open(folder)?;
    config.tie_embeddings = config.tie_embeddings || !shards.contains(HEAD);
    Ok((config, special, shards))
}

/// The BOS and EOS ids of the Hugging Face folder `path` names, `None` if it is not one.
pub fn special_ids(path: &Path) -> Result<Option<SpecialIds>, CheckpointError> {
    match locate(path)? {
        Some(config_path) => Ok(Some(config::read(&config_path)?.1)),
        None => Ok(None),
    }
}

/// Build the model of the folder whose `config.json` is `config_path` on `device`.
/// The weight matrices are cast to `precision` one by one as they are read.
pub fn load<B: Backend>(
    config_path: &Path,
    precision: LoadPrecision,
    device: &B::Device,
) -> Result<LoadedCheckpoint<B>, CheckpointError> {
    let (config, _, shards) = config_and_weights(config_path)?;
    let mut stored = Stored(HfSource::<B> {
        reader: HfReader::new(&shards, &config),
        device,
    });
    let model = match precision {
        LoadPrecision::AsStored | LoadPrecision::Int8 => config.build(&mut stored, device)?,
        LoadPrecision::F16 => config.build(&mut HalfAtLoad(&mut stored), device)?,
    };
    let source = stored.0;
    let tied = config.tie_embeddings;
    let ignore = |name: &str| is_ignored_buffer(name) || (tied && name == HEAD);
    if let Some((name, file)) = source.reader.leftover(ignore) {
        let shape = shards.shape(&name).map(|(s, _)| s).unwrap_or_default();
        return Err(CheckpointError::UnexpectedTensor {
            path: file.to_path_buf(),
            name,
            shape,
        });
    }
    let warnings = source.reader.warnings;
    Ok(LoadedCheckpoint {
        model,
        config,
        format: CheckpointFormat::HuggingFace,
        warnings,
    })
}

/// Every Llama tensor of the folder under our names and in our q/k row order (for
/// [`super::read_checkpoint`]); the HF head of a tied folder is left out.
pub fn read(config_path: &Path) -> Result<(LlamaConfig, TensorMap), CheckpointError> {
    let (config, _, shards) = config_and_weights(config_path)?;
    let mut reader = HfReader::new(&shards, &config);
    let mut tensors = TensorMap::new();
    let names: Vec<(String, Vec<usize>)> = shards
        .names()
        .filter(|(name, _)| !(is_ignored_buffer(name) || config.tie_embeddings && *name == HEAD))
        .map(|(name, _)| {
            (
                name.to_string(),
                shards.shape(name).map(|s| s.0).unwrap_or_default(),
            )
        })
        .collect();
    for (hf, shape) in names {
        let ours = from_hf(&hf).unwrap_or_else(|| hf.clone());
        let data = reader.values(&ours, &shape)?;
        tensors.insert(ours, RawTensor { shape, data });
    }
    Ok((config, tensors))
}
