//! Format-independent checkpoint contents, and the one place where they become a model.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::CheckpointError;
use crate::model::config::LlamaConfig;
use crate::model::llama::Llama;
use crate::model::param_source::ParamSource;

/// A tensor as read from a file: f32 values, row-major, PyTorch layout
/// (`nn.Linear` weights are `[out_features, in_features]`).
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl RawTensor {
    /// A tensor, checking that `data` fills `shape`.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Option<Self> {
        (shape.iter().product::<usize>() == data.len()).then_some(Self { shape, data })
    }
}

/// Tensors by their name in the exercise's naming (`layers.0.attention.compute_query.weight`).
pub type TensorMap = BTreeMap<String, RawTensor>;

/// Rename a llama2.c / torch.compile parameter name to the exercise's naming:
/// strips `_orig_mod.` and maps `attention.wq|wk|wv|wo` to `compute_query|key|value|output`.
pub fn canonical_name(name: &str) -> String {
    let name = name.strip_prefix("_orig_mod.").unwrap_or(name);
    let mut out = name.to_string();
    for (old, new) in [
        (".attention.wq.", ".attention.compute_query."),
        (".attention.wk.", ".attention.compute_key."),
        (".attention.wv.", ".attention.compute_value."),
        (".attention.wo.", ".attention.compute_output."),
    ] {
        if out.contains(old) {
            out = out.replace(old, new);
        }
    }
    out
}

/// The shape of every parameter a model of `config` may have, by name, the classifier
/// `output.weight` included (a tied checkpoint may carry a copy). Derived from the config
/// alone, so a file's shapes can be checked before any of its tensors is read.
pub fn parameter_shapes(config: &LlamaConfig) -> BTreeMap<String, Vec<usize>> {
    let mut out = BTreeMap::new();
    for (name, shape) in super::llama2c_bin::layout(config, false, false) {
        if super::llama2c_bin::is_per_layer(name) {
            for i in 0..shape[0] {
                out.insert(format!("layers.{i}.{name}"), shape[1..].to_vec());
            }
        } else {
            out.insert(name.to_string(), shape);
        }
    }
    out
}

/// One line per tensor holding NaN or infinite values: such a model loads, but its outputs
/// are garbage, so callers warn.
pub fn non_finite_report(path: &Path, tensors: &TensorMap) -> Vec<String> {
    tensors
        .iter()
        .filter_map(|(name, t)| non_finite_line(path, name, &t.data))
        .collect()
}

/// The line of [`non_finite_report`] for one tensor, if it holds NaN or infinite values.
pub fn non_finite_line(path: &Path, name: &str, data: &[f32]) -> Option<String> {
    let bad = data.iter().filter(|v| !v.is_finite()).count();
    (bad > 0).then(|| {
        format!(
            "{}: tensor `{name}` holds {bad} NaN or infinite values of {}",
            path.display(),
            data.len()
        )
    })
}

/// Takes tensors out of a map, checking each name and shape against the config: the
/// checkpoint's [`ParamSource`], so a loaded model is built from its tensors alone.
struct Taker<'a, B: Backend> {
    path: &'a Path,
    tensors: TensorMap,
    device: &'a B::Device,
}

/// Stored tensors handed out by our parameter name, each checked against its expected
/// shape; wrapped in [`Stored`], such a store is a [`ParamSource`].
pub(super) trait StoredTensors<B: Backend> {
    /// Parameter `name` with PyTorch shape `expected`, on the store's device.
    fn take<const D: usize>(
        &mut self,
        name: &str,
        expected: [usize; D],
    ) -> Result<Tensor<B, D>, CheckpointError>;
}

impl<B: Backend> StoredTensors<B> for Taker<'_, B> {
    fn take<const D: usize>(
        &mut self,
        name: &str,
        expected: [usize; D],
    ) -> Result<Tensor<B, D>, CheckpointError> {
        let tensor = self
            .tensors
            .remove(name)
            .ok_or_else(|| CheckpointError::MissingTensor {
                path: self.path.to_path_buf(),
                name: name.to_string(),
                expected: expected.to_vec(),
            })?;
        if tensor.shape != expected {
            return Err(CheckpointError::ShapeMismatch {
                path: self.path.to_path_buf(),
                name: name.to_string(),
                expected: expected.to_vec(),
                found: tensor.shape,
            });
        }
        Ok(Tensor::from_data(
            TensorData::new(tensor.data, expected),
            self.device,
        ))
    }
}

/// Reads one parameter's f32 values by our name, checked against its PyTorch shape.
pub(super) trait ReadValues {
    fn values(&mut self, ours: &str, expected: &[usize]) -> Result<Vec<f32>, CheckpointError>;
}

/// A [`ReadValues`] building each tensor on `device` as it is asked for.
pub(super) struct OnDevice<'a, R, B: Backend> {
    pub reader: R,
    pub device: &'a B::Device,
}

impl<B: Backend, R: ReadValues> StoredTensors<B> for OnDevice<'_, R, B> {
    fn take<const D: usize>(
        &mut self,
        ours: &str,
        expected: [usize; D],
    ) -> Result<Tensor<B, D>, CheckpointError> {
        let data = self.reader.values(ours, &expected)?;
        Ok(Tensor::from_data(
            TensorData::new(data, expected),
            self.device,
        ))
    }
}

/// A [`StoredTensors`] as the [`ParamSource`] a model is built from.
pub(super) struct Stored<S>(pub S);

impl<B: Backend, S: StoredTensors<B>> ParamSource<B> for Stored<S> {
    type Error = CheckpointError;

    /// A PyTorch `[out, in]` weight. Burn's `Linear` computes `x · W` with `W` `[in, out]`,
    /// so the weight is used transposed (a view, no copy).
    fn linear(
        &mut self,
        name: &str,
        d_in: usize,
        d_out: usize,
        _init_std: f64,
    ) -> Result<Linear<B>, CheckpointError> {
        Ok(Linear {
            weight: Param::from_tensor(self.0.take(name, [d_out, d_in])?.transpose()),
            bias: None,
        })
    }

    fn matrix(
        &mut self,
        name: &str,
        shape: [usize; 2],
        _init_std: f64,
    ) -> Result<Param<Tensor<B, 2>>, CheckpointError> {
        Ok(Param::from_tensor(self.0.take(name, shape)?))
    }

    fn gain(&mut self, name: &str, dim: usize) -> Result<Param<Tensor<B, 1>>, CheckpointError> {
        Ok(Param::from_tensor(self.0.take(name, [dim])?))
    }
}

/// `config`, checked to be usable; an error names the checkpoint `path`.
pub(super) fn validated(path: &Path, config: LlamaConfig) -> Result<LlamaConfig, CheckpointError> {
    config.validate().map_err(|error| CheckpointError::Config {
        path: path.to_path_buf(),
        error,
    })?;
    Ok(config)
}

/// Assemble a [`Llama`] from `tensors`, which must hold exactly the model's parameters with
/// the shapes `config` implies. Returns the model and the config it was built with (whose
/// `tie_embeddings` reflects the file: an `output.weight` that differs from the embeddings
/// becomes a separate head).
pub fn build_model<B: Backend>(
    path: &Path,
    config: LlamaConfig,
    mut tensors: TensorMap,
    device: &B::Device,
) -> Result<(Llama<B>, LlamaConfig), CheckpointError> {
    let mut config = validated(path, config)?;
    let is_llama_name =
        |name: &str| name.starts_with("layers.") || name.starts_with("tok_embeddings.");
    if !tensors.keys().any(|name| is_llama_name(name)) {
        let example = tensors
            .keys()
            .next()
            .map_or("none".to_string(), |n| format!("`{n}`"));
        return Err(CheckpointError::UnknownFormat {
            path: path.to_path_buf(),
            detail: format!(
                "none of its {} tensors has a Llama parameter name (first: {example}): \
                 the state dict of another model?",
                tensors.len()
            ),
        });
    }
    // A tied checkpoint may still carry `output.weight` (the exercise's .pt shares the
    // storage; safetensors holds a copy). Equal to the embeddings: drop it. Different: the
    // head is not tied after all.
    if let (Some(out), Some(emb)) = (
        tensors.get("output.weight"),
        tensors.get("tok_embeddings.weight"),
    ) {
        if config.tie_embeddings && out == emb {
            tensors.remove("output.weight");
        } else {
            config.tie_embeddings = false;
        }
    }

    let mut t = Stored(Taker {
        path,
        tensors,
        device,
    });
    let model = config.build(&mut t, device)?;
    if let Some((name, tensor)) = t.0.tensors.into_iter().next() {
        return Err(CheckpointError::UnexpectedTensor {
            path: path.to_path_buf(),
            name,
            shape: tensor.shape,
        });
    }
    Ok((model, config))
}

#[cfg(test)]
mod tests {
    use super::canonical_name;

    #[test]
    fn llama2c_names_map_to_the_exercise_names() {
        assert_eq!(
            canonical_name("_orig_mod.layers.3.attention.wq.weight"),
            "layers.3.attention.compute_query.weight"
        );
        assert_eq!(
            canonical_name("layers.0.attention.wo.weight"),
            "layers.0.attention.compute_output.weight"
        );
        assert_eq!(canonical_name("_orig_mod.norm.weight"), "norm.weight");
        assert_eq!(
            canonical_name("layers.1.feed_forward.w2.weight"),
            "layers.1.feed_forward.w2.weight"
        );
    }
}
