//! `torch.save` checkpoints: the exercise's `{model_args, model, …}` dict, in either the
//! exercise's or llama2.c's parameter naming.
//!
//! The pickle is read by burn-store's reader, which interprets only the opcodes needed for
//! dicts, lists and tensor storages and never executes code from the file.

use std::collections::HashMap;
use std::path::Path;

use burn_store::pytorch::reader::PickleValue;
use burn_store::pytorch::{PytorchError, PytorchReader};
use burn_store::TensorSnapshot;

use super::llama2c_bin::element_count;
use super::tensors::{canonical_name, parameter_shapes, RawTensor, TensorMap};
use super::torch_archive;
use super::CheckpointError;
use crate::model::config::{LlamaConfig, ModelArgs};

fn pickle_error(path: &Path, e: PytorchError) -> CheckpointError {
    match e {
        PytorchError::Io(source) => CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        },
        PytorchError::KeyNotFound(key) => CheckpointError::UnknownFormat {
            path: path.to_path_buf(),
            detail: format!(
                "a PyTorch file without `{key}`: expected the exercise's checkpoint dict \
                 with `model_args` and `model`"
            ),
        },
        other => {
            let detail = other.to_string();
            // burn-store's pickle reader interprets only the data opcodes and the tensor
            // rebuild functions; any other class a pickle names is refused, never imported.
            if let Some(class) = detail
                .split_once("Unsupported Python type '")
                .and_then(|(_, rest)| rest.split_once('\''))
                .map(|(class, _)| class)
            {
                return CheckpointError::Unsupported {
                    path: path.to_path_buf(),
                    detail: format!(
                        "its pickle asks for `{class}`, which is not a tensor or storage class: \
                         refused (pickles are read as data, never run)"
                    ),
                };
            }
            CheckpointError::Corrupt {
                path: path.to_path_buf(),
                detail,
            }
        }
    }
}

/// A pickled value as JSON, for deserialising `model_args`.
fn to_json(value: PickleValue) -> serde_json::Value {
    use serde_json::Value;
    match value {
        PickleValue::None => Value::Null,
        PickleValue::Bool(b) => Value::Bool(b),
        PickleValue::Int(i) => Value::from(i),
        PickleValue::Float(f) => Value::from(f),
        PickleValue::String(s) => Value::String(s),
        PickleValue::List(items) => Value::Array(items.into_iter().map(to_json).collect()),
        PickleValue::Dict(map) => {
            Value::Object(map.into_iter().map(|(k, v)| (k, to_json(v))).collect())
        }
        PickleValue::Bytes(_) => Value::Null,
    }
}

/// Read `model_args` and the `model` state dict.
pub(super) fn read(path: &Path) -> Result<(LlamaConfig, TensorMap), CheckpointError> {
    // The archive's entries and storages first: burn-store sizes buffers by declared lengths
    // and reads a missing or short storage as zeros.
    let storages = torch_archive::check(path)?;
    let args = PytorchReader::read_pickle_data(path, Some("model_args"))
        .map_err(|e| pickle_error(path, e))?;
    let args = to_json(args);
    if !args.is_object() {
        return Err(CheckpointError::UnknownFormat {
            path: path.to_path_buf(),
            detail: "`model_args` is not a dict".into(),
        });
    }
    let args: ModelArgs = serde_json::from_value(args).map_err(|e| CheckpointError::Config {
        path: path.to_path_buf(),
        error: crate::model::config::ConfigError::Parse {
            path: path.to_path_buf(),
            detail: format!("model_args: {e}"),
        },
    })?;
    let config = args
        .into_config()
        .map_err(|error| CheckpointError::Config {
            path: path.to_path_buf(),
            error,
        })?;

    let reader =
        PytorchReader::with_top_level_key(path, "model").map_err(|e| pickle_error(path, e))?;
    let snapshots: HashMap<_, _> = reader.into_tensors();
    check_shapes(path, &config, &snapshots)?;
    torch_archive::check_tensor_extents(path, &storages)?;
    let mut tensors = TensorMap::new();
    for (name, snapshot) in snapshots {
        let shape = snapshot.shape.to_vec();
        let data = snapshot
            .to_data()
            .map_err(|e| CheckpointError::Corrupt {
                path: path.to_path_buf(),
                detail: format!("tensor `{name}`: {e:?}"),
            })?
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| CheckpointError::Corrupt {
                path: path.to_path_buf(),
                detail: format!("tensor `{name}`: {e:?}"),
            })?;
        let tensor = RawTensor::new(shape, data).ok_or_else(|| CheckpointError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("tensor `{name}`: data does not fill its shape"),
        })?;
        tensors.insert(canonical_name(&name), tensor);
    }
    Ok((config, tensors))
}

/// Every tensor's shape against the config's, and its bytes against the file's length, before
/// any tensor is read: a pickle may name any shape, and reading one allocates it.
fn check_shapes(
    path: &Path,
    config: &LlamaConfig,
    snapshots: &HashMap<String, TensorSnapshot>,
) -> Result<(), CheckpointError> {
    let file_len = std::fs::metadata(path)
        .map_err(|source| CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    let expected = parameter_shapes(config);
    for (name, snapshot) in snapshots {
        let shape = snapshot.shape.to_vec();
        if let Some(expected) = expected.get(&canonical_name(name)) {
            if shape != *expected {
                return Err(CheckpointError::ShapeMismatch {
                    path: path.to_path_buf(),
                    name: canonical_name(name),
                    expected: expected.clone(),
                    found: shape,
                });
            }
        }
        let bytes = element_count(&shape).and_then(|n| n.checked_mul(snapshot.dtype.size()));
        if bytes.is_none_or(|bytes| bytes as u64 > file_len) {
            return Err(CheckpointError::Corrupt {
                path: path.to_path_buf(),
                detail: format!(
                    "tensor `{name}` of shape {shape:?} ({:?}) needs more bytes than the whole \
                     file ({file_len})",
                    snapshot.dtype
                ),
            });
        }
    }
    Ok(())
}
