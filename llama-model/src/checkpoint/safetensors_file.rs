//! safetensors weights (exercise naming; `output.weight` may be a copy of the embeddings),
//! with the config in a JSON file beside them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use super::tensors::{canonical_name, RawTensor, TensorMap};
use super::CheckpointError;
use crate::model::config::LlamaConfig;

/// Where a config for `path` may be: `<stem>.config.json`, then `config.json` in the same
/// folder.
pub fn config_candidates(path: &Path) -> Vec<PathBuf> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut out = vec![];
    if let Some(stem) = path.file_stem() {
        out.push(dir.join(format!("{}.config.json", stem.to_string_lossy())));
    }
    out.push(dir.join("config.json"));
    out
}

/// Decode little-endian floats of a supported dtype to f32.
pub(super) fn to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    let halves = |f: fn(u16) -> f32| {
        bytes
            .chunks_exact(2)
            .map(|c| f(u16::from_le_bytes([c[0], c[1]])))
            .collect()
    };
    Some(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => halves(|b| half::f16::from_bits(b).to_f32()),
        Dtype::BF16 => halves(|b| half::bf16::from_bits(b).to_f32()),
        _ => return None,
    })
}

/// Read a safetensors file; `config` overrides the config found beside it.
pub(super) fn read(
    path: &Path,
    config: Option<&Path>,
) -> Result<(LlamaConfig, TensorMap), CheckpointError> {
    let config_path = match config {
        Some(p) => p.to_path_buf(),
        None => {
            let candidates = config_candidates(path);
            candidates
                .iter()
                .find(|p| p.is_file())
                .cloned()
                .ok_or_else(|| CheckpointError::MissingConfig {
                    path: path.to_path_buf(),
                    tried: candidates
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                })?
        }
    };
    let config =
        LlamaConfig::from_json_file(&config_path).map_err(|error| CheckpointError::Config {
            path: config_path.clone(),
            error,
        })?;

    let (_, tensors) = read_tensors(path)?;
    Ok((config, tensors))
}

/// The tensors of a safetensors file (f32, f16 or bf16, as f32, under the exercise's names)
/// and the file's metadata (its `__metadata__` strings, if any).
pub fn read_tensors(
    path: &Path,
) -> Result<(Option<HashMap<String, String>>, TensorMap), CheckpointError> {
    let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let corrupt = |e: safetensors::SafeTensorError| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        detail: e.to_string(),
    };
    let file = SafeTensors::deserialize(&bytes).map_err(corrupt)?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(corrupt)?;
    let mut tensors = TensorMap::new();
    for (name, view) in file.tensors() {
        let data =
            to_f32(view.dtype(), view.data()).ok_or_else(|| CheckpointError::Unsupported {
                path: path.to_path_buf(),
                detail: format!(
                    "tensor `{name}` has dtype {:?}; F32, F16 and BF16 are supported",
                    view.dtype()
                ),
            })?;
        let tensor = RawTensor::new(view.shape().to_vec(), data).ok_or_else(|| {
            CheckpointError::Corrupt {
                path: path.to_path_buf(),
                detail: format!("tensor `{name}`: data does not fill its shape"),
            }
        })?;
        tensors.insert(canonical_name(&name), tensor);
    }
    Ok((header.metadata().clone(), tensors))
}
