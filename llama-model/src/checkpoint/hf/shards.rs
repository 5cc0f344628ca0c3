//! The weight files of a Hugging Face folder: one `model.safetensors`, or the shards that
//! `model.safetensors.index.json` lists, each read through a memory map.
//!
//! A tensor is converted to f32 when it is asked for, and its pages are then released
//! (`MADV_DONTNEED`: the mapping is read-only and backed by the file, so this only drops
//! them from memory), so loading holds the model plus about one tensor, not a second copy
//! of every weight.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, UncheckedAdvice};
use safetensors::tensor::Metadata;
use safetensors::SafeTensors;
use serde::Deserialize;

use super::super::safetensors_file::to_f32;
use super::super::CheckpointError;

/// The single-file weights of a folder.
pub const SINGLE_FILE: &str = "model.safetensors";
/// The index of a sharded folder.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// `model.safetensors.index.json`: which shard holds each tensor.
#[derive(Deserialize)]
struct Index {
    weight_map: BTreeMap<String, String>,
}

/// One mapped safetensors file and its parsed header.
struct Shard {
    path: PathBuf,
    map: Mmap,
    /// Offset of the data section in the file (after the 8-byte length and the header).
    data_start: usize,
    meta: Metadata,
}

/// Every weight file of a folder, and which one holds each tensor.
pub struct Shards {
    shards: Vec<Shard>,
    /// HF tensor name -> index in `shards`.
    by_name: BTreeMap<String, usize>,
    /// The index file, when the weights are sharded (named in errors about the map).
    index: Option<PathBuf>,
}

impl Shards {
    /// Open the weights of `folder`: the index's shards, else `model.safetensors`.
    pub fn open(folder: &Path) -> Result<Self, CheckpointError> {
        let index_path = folder.join(INDEX_FILE);
        if index_path.is_file() {
            return Self::open_index(folder, &index_path);
        }
        let single = folder.join(SINGLE_FILE);
        if !single.is_file() {
            return Err(CheckpointError::UnknownFormat {
                path: folder.to_path_buf(),
                detail: format!(
                    "no {SINGLE_FILE} or {INDEX_FILE} in this Hugging Face folder (only \
                     safetensors weights are read)"
                ),
            });
        }
        let shard = Shard::open(&single)?;
        let by_name = shard.meta.tensors().into_keys().map(|n| (n, 0)).collect();
        Ok(Self {
            shards: vec![shard],
            by_name,
            index: None,
        })
    }

    fn open_index(folder: &Path, index_path: &Path) -> Result<Self, CheckpointError> {
        let text = std::fs::read_to_string(index_path).map_err(|source| CheckpointError::Io {
            path: index_path.to_path_buf(),
            source,
        })?;
        let index: Index = serde_json::from_str(&text).map_err(|e| CheckpointError::Corrupt {
            path: index_path.to_path_buf(),
            detail: format!("not a safetensors index: {e}"),
        })?;
        let mut shards = Vec::new();
        let mut opened: HashMap<&str, usize> = HashMap::new();
        let mut by_name = BTreeMap::new();
        for (tensor, file) in &index.weight_map {
            let slot = match opened.get(file.as_str()) {
                Some(&slot) => slot,
                None => {
                    let path = shard_path(folder, index_path, file, tensor)?;
                    if !path.is_file() {
                        return Err(CheckpointError::MissingShard {
                            path: path.clone(),
                            index: index_path.to_path_buf(),
                            tensor: tensor.clone(),
                        });
                    }
                    shards.push(Shard::open(&path)?);
                    opened.insert(file, shards.len() - 1);
                    shards.len() - 1
                }
            };
            by_name.insert(tensor.clone(), slot);
        }
        Ok(Self {
            shards,
            by_name,
            index: Some(index_path.to_path_buf()),
        })
    }

    /// Whether the folder has tensor `name` (HF naming).
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// Every tensor name (HF naming) with the file that holds it.
    pub fn names(&self) -> impl Iterator<Item = (&str, &Path)> {
        self.by_name
            .iter()
            .map(|(name, &slot)| (name.as_str(), self.shards[slot].path.as_path()))
    }

    /// The shape of tensor `name` as stored, and its file.
    pub fn shape(&self, name: &str) -> Option<(Vec<usize>, &Path)> {
        let shard = &self.shards[*self.by_name.get(name)?];
        let info = shard.meta.info(name)?;
        Some((info.shape.clone(), &shard.path))
    }

    /// Tensor `name` (HF naming) as f32 values, checked to have shape `expected`.
    pub fn read(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>, CheckpointError> {
        let slot = *self
            .by_name
            .get(name)
            .ok_or_else(|| CheckpointError::MissingTensor {
                path: self
                    .index
                    .clone()
                    .unwrap_or_else(|| self.shards[0].path.clone()),
                name: name.to_string(),
                expected: expected.to_vec(),
            })?;
        let shard = &self.shards[slot];
        let info = shard
            .meta
            .info(name)
            .ok_or_else(|| CheckpointError::MissingTensor {
                path: shard.path.clone(),
                name: name.to_string(),
                expected: expected.to_vec(),
            })?;
        if info.shape != expected {
            return Err(CheckpointError::ShapeMismatch {
                path: shard.path.clone(),
                name: name.to_string(),
                expected: expected.to_vec(),
                found: info.shape.clone(),
            });
        }
        let (begin, end) = info.data_offsets;
        let (begin, end) = (shard.data_start + begin, shard.data_start + end);
        // `read_metadata` checked that the offsets lie inside the file.
        let bytes = shard.map.get(begin..end).unwrap_or_default();
        let values = to_f32(info.dtype, bytes).ok_or_else(|| CheckpointError::Unsupported {
            path: shard.path.clone(),
            detail: format!(
                "tensor `{name}` has dtype {:?}; F32, F16 and BF16 are supported",
                info.dtype
            ),
        })?;
        // SAFETY: the mapping is private and read-only, backed by the file: dropping its
        // pages only makes a later access read them from the file again. No reference into
        // these bytes outlives this call (`values` is a copy).
        let _ = unsafe {
            shard
                .map
                .unchecked_advise_range(UncheckedAdvice::DontNeed, begin, end - begin)
        };
        if values.len() != expected.iter().product::<usize>() {
            return Err(CheckpointError::Corrupt {
                path: shard.path.clone(),
                detail: format!("tensor `{name}`: data does not fill its shape"),
            });
        }
        Ok(values)
    }
}

/// The path of shard `file` named in the index: a plain file name inside the folder.
fn shard_path(
    folder: &Path,
    index: &Path,
    file: &str,
    tensor: &str,
) -> Result<PathBuf, CheckpointError> {
    let name = Path::new(file);
    if name.components().count() != 1 || name.file_name().is_none() {
        return Err(CheckpointError::Corrupt {
            path: index.to_path_buf(),
            detail: format!("tensor `{tensor}` is mapped to `{file}`, not a file in the folder"),
        });
    }
    Ok(folder.join(name))
}

impl Shard {
    fn open(path: &Path) -> Result<Self, CheckpointError> {
        let io = |source| CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the file is only read; like every reader of a mapped file we rely on it
        // not being truncated or rewritten while the model loads.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let (header_len, meta) =
            SafeTensors::read_metadata(&map).map_err(|e| CheckpointError::Corrupt {
                path: path.to_path_buf(),
                detail: e.to_string(),
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            map,
            data_start: 8 + header_len,
            meta,
        })
    }
}
