//! llama.cpp's GGUF files (versions 2 and 3), architecture `llama`.
//!
//! The container is parsed by our own small reader over a memory map (`container.rs`):
//! reading needs only the header walk and byte ranges, every field is checked against the
//! file length before use, and the dequantizers must match llama.cpp bit for bit anyway.
//! The hyper-parameters come from `llama.*` metadata (`config.rs`); tensors are F32, F16,
//! BF16, Q8_0, Q4_0, Q4_K or Q6_K, dequantized to f32 as llama.cpp does
//! (`dequantize.rs`), one at a time while the model is built. A file without
//! `output.weight` has a tied head.

mod config;
mod dequantize;
mod names;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use burn::tensor::backend::Backend;

pub use crate::gguf::{is_gguf, Value};

use super::tensors::{
    non_finite_line, validated, OnDevice, RawTensor, ReadValues, Stored, TensorMap,
};
use super::{CheckpointError, CheckpointFormat, LoadedCheckpoint};
use crate::checkpoint::half_at_load::LoadPrecision;
use crate::gguf::{GgmlType, GgufError, GgufFile};
use crate::model::config::LlamaConfig;
use crate::model::rope_scaling::RopeScaling;
use crate::weights::q8_matrix::{group_size_for, Q8Matrix};
use crate::weights::q8_weights::Q8Store;
pub(crate) use names::to_gguf;
use names::{from_gguf, EMBEDDING, HEAD};

/// The tensor carrying Llama 3's RoPE scaling as per-frequency divisors.
const ROPE_FREQS: &str = "rope_freqs.weight";

/// Open `path` and derive its model config.
fn open(path: &Path) -> Result<(GgufFile, LlamaConfig), CheckpointError> {
    let file = GgufFile::open(path).map_err(|e| match e {
        GgufError::Io(source) => CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        },
        GgufError::Corrupt(detail) => CheckpointError::Corrupt {
            path: path.to_path_buf(),
            detail,
        },
    })?;
    let unsupported = |detail: String| CheckpointError::Unsupported {
        path: path.to_path_buf(),
        detail,
    };
    let vocab_size = match file.tensors.get(EMBEDDING).map(|t| t.shape.as_slice()) {
        Some(&[rows, _]) => rows,
        Some(shape) => {
            return Err(CheckpointError::Corrupt {
                path: path.to_path_buf(),
                detail: format!("`{EMBEDDING}` has shape {shape:?}, not a matrix"),
            })
        }
        None => {
            return Err(CheckpointError::MissingTensor {
                path: path.to_path_buf(),
                name: EMBEDDING.into(),
                expected: Vec::new(),
            })
        }
    };
    let mut config = config::llama_config(&file.metadata, vocab_size).map_err(unsupported)?;
    if let Some(info) = file.tensors.get(ROPE_FREQS) {
        // One divisor per rotated pair, replacing any scaling named in the metadata (llama.cpp
        // applies the tensor).
        let factors = dequantize::dequantize(info.kind, file.bytes(info));
        config.rope_scaling = Some(RopeScaling::Factors { factors });
    }
    config.tie_embeddings = !file.tensors.contains_key(HEAD);
    let config = validated(path, config)?;
    Ok((file, config))
}

/// Reads a file's tensors under our names, remembering which it has given.
struct GgufReader<'a> {
    file: &'a GgufFile,
    used: BTreeSet<String>,
    warnings: Vec<String>,
    /// Every weight matrix in int8, under our names, when loading for int8 decoding.
    int8: Option<Q8Store>,
}

impl ReadValues for GgufReader<'_> {
    /// Parameter `ours` of PyTorch shape `expected`, dequantized to f32.
    fn values(&mut self, ours: &str, expected: &[usize]) -> Result<Vec<f32>, CheckpointError> {
        let path = &self.file.path;
        let name = to_gguf(ours).unwrap_or_else(|| ours.to_string());
        let info = self
            .file
            .tensors
            .get(&name)
            .ok_or_else(|| CheckpointError::MissingTensor {
                path: path.clone(),
                name: name.clone(),
                expected: expected.to_vec(),
            })?;
        if info.shape != expected {
            return Err(CheckpointError::ShapeMismatch {
                path: path.clone(),
                name,
                expected: expected.to_vec(),
                found: info.shape.clone(),
            });
        }
        let bytes = self.file.bytes(info);
        let corrupt = |e| CheckpointError::Corrupt {
            path: path.clone(),
            detail: format!("`{name}` in int8: {e}"),
        };
        let (data, matrix) = match (self.int8.is_some(), expected, info.kind) {
            (true, &[rows, cols], GgmlType::Q8_0) => {
                // The file's own blocks; their products `q · d` are `dequantize`'s, bit for bit.
                let (values, scales) = dequantize::q8_0_parts(bytes);
                let matrix =
                    Q8Matrix::from_parts(rows, cols, 32, values, scales).map_err(corrupt)?;
                (matrix.dequantize(), Some(matrix))
            }
            (true, &[rows, cols], kind) => {
                let data = dequantize::dequantize(kind, bytes);
                let group = group_size_for([cols]).min(32);
                let matrix = Q8Matrix::quantize(&data, rows, cols, group).map_err(corrupt)?;
                (data, Some(matrix))
            }
            (_, _, kind) => (dequantize::dequantize(kind, bytes), None),
        };
        if let (Some(store), Some(matrix)) = (self.int8.as_mut(), matrix) {
            store.insert(ours.to_string(), Arc::new(matrix));
        }
        self.file.release(info);
        self.warnings.extend(non_finite_line(path, &name, &data));
        self.used.insert(name);
        Ok(data)
    }
}

impl GgufReader<'_> {
    /// The first tensor of the file no parameter took.
    fn leftover(&self) -> Option<(&String, &Vec<usize>)> {
        self.file
            .tensors
            .iter()
            .find(|(name, _)| !self.used.contains(*name) && *name != ROPE_FREQS)
            .map(|(name, info)| (name, &info.shape))
    }
}

/// Build the model of the GGUF file `path` on `device`, tensor by tensor; with
/// [`LoadPrecision::Int8`], decoding runs on int8 matrices, the Q8_0 ones as stored.
pub fn load<B: Backend>(
    path: &Path,
    precision: LoadPrecision,
    device: &B::Device,
) -> Result<LoadedCheckpoint<B>, CheckpointError> {
    let (file, config) = open(path)?;
    let mut stored = Stored(OnDevice::<'_, _, B> {
        reader: GgufReader {
            file: &file,
            used: BTreeSet::new(),
            warnings: Vec::new(),
            int8: (precision == LoadPrecision::Int8).then(Q8Store::new),
        },
        device,
    });
    let mut model = config.build(&mut stored, device)?;
    let mut reader = stored.0.reader;
    if let Some(store) = reader.int8.take() {
        // `build` asked for every weight matrix, so the store holds them all.
        model = model.with_q8_store(store);
    }
    if let Some((name, shape)) = reader.leftover() {
        return Err(CheckpointError::UnexpectedTensor {
            path: path.to_path_buf(),
            name: name.clone(),
            shape: shape.clone(),
        });
    }
    Ok(LoadedCheckpoint {
        model,
        config,
        format: CheckpointFormat::Gguf,
        warnings: reader.warnings,
    })
}

/// Every Llama tensor of the file under our names, dequantized (for
/// [`super::read_checkpoint`]).
pub fn read(path: &Path) -> Result<(LlamaConfig, TensorMap), CheckpointError> {
    let (file, config) = open(path)?;
    let mut reader = GgufReader {
        file: &file,
        used: BTreeSet::new(),
        warnings: Vec::new(),
        int8: None,
    };
    let mut tensors = TensorMap::new();
    for (name, info) in file.tensors.iter().filter(|(n, _)| *n != ROPE_FREQS) {
        let ours = from_gguf(name).unwrap_or_else(|| name.clone());
        let data = reader.values(&ours, &info.shape)?;
        tensors.insert(
            ours,
            RawTensor {
                shape: info.shape.clone(),
                data,
            },
        );
    }
    Ok((config, tensors))
}
