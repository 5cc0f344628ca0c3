//! A LoRA adapter on its own: a small safetensors file with the adapters' factors, the
//! settings, and the shape of the model it belongs to.
//!
//! Keys follow PEFT where it fits: `base_model.model.<projection>.lora_A.weight` `[r, d_in]`
//! and `….lora_B.weight` `[d_out, r]` (PyTorch's `nn.Linear` layout of the two factors, so
//! `A` here is the transpose of `LoraAdapter::lora_a`). The metadata holds PEFT's `r`,
//! `lora_alpha` and `target_modules` (our target names, `q,v`), and the base model's `dim`,
//! `n_layers`, `hidden_dim`, `n_kv_heads` and `vocab_size`, so that an adapter for another
//! model is refused with both shapes named. Other tensors (a classifier head trained beside
//! the adapter) are stored under their own names.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use crate::checkpoint::{
    raw_tensor, read_tensors, write_safetensors, CheckpointError, RawTensor, TensorMap,
};
use crate::lora::{LoraConfig, LoraError, LoraTarget};
use crate::model::projection::LoraAdapter;
use crate::Llama;

/// The prefix PEFT puts before a model's parameter names.
const PEFT_PREFIX: &str = "base_model.model.";
/// The `format` metadata value of our adapter files.
const FORMAT: &str = "llama-burn-lora";

/// Why an adapter file cannot be written, read or applied. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum LoraFileError {
    /// Reading or writing the file failed, or it is not a safetensors file.
    #[error(transparent)]
    File(#[from] CheckpointError),
    /// A safetensors file without our adapter metadata, or with inconsistent tensors.
    #[error("{}: not a LoRA adapter of this tool: {detail}", path.display())]
    NotAnAdapter {
        /// The file.
        path: PathBuf,
        /// What is missing or wrong.
        detail: String,
    },
    /// The adapter was trained on a model of another shape.
    #[error("{}: the adapter is for another model: {detail}", path.display())]
    OtherModel {
        /// The file.
        path: PathBuf,
        /// Both shapes.
        detail: String,
    },
    /// The settings stored in the file are invalid.
    #[error("{}: {source}", path.display())]
    Settings {
        /// The file.
        path: PathBuf,
        /// The problem.
        source: LoraError,
    },
}

/// The model shape an adapter belongs to, as stored in its metadata.
fn model_shape<B: Backend>(model: &Llama<B>) -> Vec<(&'static str, usize)> {
    let first = model.layers.first();
    let width = |f: fn(&crate::model::layer::LlamaLayer<B>) -> usize| first.map_or(0, f);
    vec![
        ("dim", model.dim()),
        ("n_layers", model.n_layers()),
        ("hidden_dim", width(|l| l.feed_forward.w1.d_out())),
        ("kv_dim", width(|l| l.attention.compute_key.d_out())),
        ("vocab_size", model.vocab_size()),
    ]
}

/// Write the adapters of `model` (set up with `config`) to `path`, with `extra` tensors
/// (PyTorch layout) under their own names.
pub fn save_adapter<B: Backend>(
    path: &Path,
    model: &Llama<B>,
    config: &LoraConfig,
    extra: TensorMap,
) -> Result<(), LoraFileError> {
    let mut tensors = extra;
    for (prefix, linear) in model.projections() {
        if let Some(lora) = &linear.lora {
            tensors.insert(
                factor_name(&prefix, 'A'),
                raw_tensor(lora.lora_a.val().transpose()),
            );
            tensors.insert(
                factor_name(&prefix, 'B'),
                raw_tensor(lora.lora_b.val().transpose()),
            );
        }
    }
    let mut metadata: HashMap<String, String> = model_shape(model)
        .into_iter()
        .map(|(k, v)| (format!("base_{k}"), v.to_string()))
        .collect();
    metadata.insert("format".into(), FORMAT.into());
    metadata.insert("r".into(), config.rank.to_string());
    metadata.insert("lora_alpha".into(), config.alpha().to_string());
    metadata.insert("target_modules".into(), config.targets_list());
    metadata.insert("lora_dropout".into(), config.dropout.to_string());
    write_safetensors(path, &tensors, Some(metadata))?;
    Ok(())
}

/// An adapter file read back: its settings, and its tensors by name.
#[derive(Debug, Clone)]
pub struct AdapterFile {
    path: PathBuf,
    config: LoraConfig,
    /// The base model's shape, where the file records it (PEFT folders do not).
    shape: Option<Vec<(String, usize)>>,
    tensors: TensorMap,
}

/// The name an [`AdapterFile`] keeps factor `factor` (`A` or `B`) of projection `prefix`
/// under (PyTorch layout).
pub(crate) fn factor_name(prefix: &str, factor: char) -> String {
    format!("{PEFT_PREFIX}{prefix}.lora_{factor}.weight")
}

impl AdapterFile {
    /// Read an adapter written by [`save_adapter`].
    pub fn read(path: &Path) -> Result<Self, LoraFileError> {
        let (metadata, tensors) = read_tensors(path)?;
        let not_adapter = |detail: String| LoraFileError::NotAnAdapter {
            path: path.to_path_buf(),
            detail,
        };
        let metadata = metadata
            .filter(|m| m.get("format").map(String::as_str) == Some(FORMAT))
            .ok_or_else(|| not_adapter(format!("no `format: {FORMAT}` metadata")))?;
        let get = |key: &str| {
            metadata
                .get(key)
                .ok_or_else(|| not_adapter(format!("metadata `{key}` is missing")))
        };
        let number = |key: &str| -> Result<usize, LoraFileError> {
            get(key)?
                .parse()
                .map_err(|_| not_adapter(format!("metadata `{key}` is not a whole number")))
        };
        let alpha: f64 = get("lora_alpha")?
            .parse()
            .map_err(|_| not_adapter("metadata `lora_alpha` is not a number".into()))?;
        let targets = LoraTarget::parse_list(get("target_modules")?).map_err(|source| {
            LoraFileError::Settings {
                path: path.to_path_buf(),
                source,
            }
        })?;
        // A training setting, recorded as PEFT records it; absent from older files.
        let dropout = match metadata.get("lora_dropout") {
            Some(p) => p
                .parse()
                .map_err(|_| not_adapter("metadata `lora_dropout` is not a number".into()))?,
            None => 0.0,
        };
        let config = LoraConfig::new(number("r")?)
            .with_alpha(Some(alpha))
            .with_targets(targets)
            .with_dropout(dropout);
        let shape = ["dim", "n_layers", "hidden_dim", "kv_dim", "vocab_size"]
            .into_iter()
            .map(|k| Ok((k.to_string(), number(&format!("base_{k}"))?)))
            .collect::<Result<Vec<_>, LoraFileError>>()?;
        Ok(Self {
            path: path.to_path_buf(),
            config,
            shape: Some(shape),
            tensors,
        })
    }

    /// An adapter of `config` whose factors `tensors` are named by [`factor_name`], read
    /// from `path` (named in errors); its shapes are checked against the model it is applied
    /// to.
    pub(crate) fn from_parts(path: PathBuf, config: LoraConfig, tensors: TensorMap) -> Self {
        Self {
            path,
            config,
            shape: None,
            tensors,
        }
    }

    /// The adapter's settings.
    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    /// A tensor stored beside the adapters (PyTorch layout), e.g. a classifier head.
    pub fn extra(&self, name: &str) -> Option<&RawTensor> {
        self.tensors.get(name)
    }

    /// `model` with these adapters attached (the base weights untouched; merge with
    /// [`Llama::merge_lora`]). The model must have the shape the adapter was trained on.
    pub fn apply<B: Backend>(&self, mut model: Llama<B>) -> Result<Llama<B>, LoraFileError> {
        let expected: Vec<(String, usize)> = model_shape(&model)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let stored = self.shape.as_ref().unwrap_or(&expected);
        if expected != *stored {
            let show = |s: &[(String, usize)]| {
                s.iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(LoraFileError::OtherModel {
                path: self.path.clone(),
                detail: format!(
                    "it was trained on a model with {}; this model has {}",
                    show(stored),
                    show(&expected)
                ),
            });
        }
        self.config
            .check(&model)
            .map_err(|source| LoraFileError::Settings {
                path: self.path.clone(),
                source,
            })?;
        let device = model.tok_embeddings.weight.device();
        let (rank, scale) = (self.config.rank, self.config.scale());
        for (prefix, linear) in model.projections_mut() {
            let a_name = factor_name(&prefix, 'A');
            let b_name = factor_name(&prefix, 'B');
            let (a, b) = match (self.tensors.get(&a_name), self.tensors.get(&b_name)) {
                (Some(a), Some(b)) => (a, b),
                (None, None) => continue,
                _ => {
                    return Err(LoraFileError::NotAnAdapter {
                        path: self.path.clone(),
                        detail: format!("`{prefix}` has only one of lora_A and lora_B"),
                    })
                }
            };
            let (d_in, d_out) = (linear.d_in(), linear.d_out());
            for (name, t, want) in [(&a_name, a, [rank, d_in]), (&b_name, b, [d_out, rank])] {
                if t.shape != want {
                    return Err(LoraFileError::OtherModel {
                        path: self.path.clone(),
                        detail: format!(
                            "tensor `{name}` has shape {:?}, this model needs {want:?}",
                            t.shape
                        ),
                    });
                }
            }
            let tensor = |t: &RawTensor, shape: [usize; 2]| {
                Tensor::<B, 2>::from_data(TensorData::new(t.data.clone(), shape), &device)
                    .transpose()
            };
            // The file's dropout acts only in training (an adapter to start a run from).
            linear.lora = Some(
                LoraAdapter::from_factors(tensor(a, [rank, d_in]), tensor(b, [d_out, rank]), scale)
                    .with_dropout(self.config.dropout),
            );
        }
        if !model.has_lora() {
            return Err(LoraFileError::NotAnAdapter {
                path: self.path.clone(),
                detail: "it holds no lora_A/lora_B tensors".into(),
            });
        }
        Ok(model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::LlamaConfig;
    use burn::backend::NdArray;
    use burn::tensor::Int;

    type B = NdArray;

    fn config(dim: usize) -> LlamaConfig {
        LlamaConfig::new(dim, 2, 4, 64)
            .with_n_kv_heads(Some(2))
            .with_hidden_dim(Some(48))
            .with_max_seq_len(16)
    }

    #[test]
    fn an_adapter_round_trips_and_another_models_is_refused() {
        let device = Default::default();
        let lora = LoraConfig::new(3)
            .with_alpha(Some(6.0))
            .with_targets(vec![LoraTarget::V, LoraTarget::W1]);
        let mut model = config(32).init::<B>(&device).with_lora(&lora, 5).unwrap();
        for (_, linear) in model.projections_mut() {
            if let Some(adapter) = linear.lora.as_mut() {
                adapter.lora_b = adapter.lora_b.clone().map(|b| b.ones_like() * 0.01);
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("adapter.safetensors");
        let mut extra = TensorMap::new();
        extra.insert(
            "classifier_head.bias".into(),
            RawTensor::new(vec![2], vec![0.5, -0.5]).unwrap(),
        );
        save_adapter(&path, &model, &lora, extra).unwrap();

        let file = AdapterFile::read(&path).unwrap();
        assert_eq!(file.config(), &lora);
        assert_eq!(
            file.extra("classifier_head.bias").unwrap().data,
            vec![0.5, -0.5]
        );
        let tokens =
            Tensor::<B, 2, Int>::from_data(TensorData::new(vec![1i64, 7, 3, 40], [1, 4]), &device);
        let mut plain = model.clone();
        for (_, linear) in plain.projections_mut() {
            linear.lora = None;
        }
        let reloaded = file.apply(plain).unwrap();
        assert_eq!(
            reloaded.forward(tokens.clone()).logits.into_data(),
            model.forward(tokens.clone()).logits.into_data()
        );

        let other = config(48).init::<B>(&device);
        let err = file.apply(other).unwrap_err();
        assert!(
            matches!(err, LoraFileError::OtherModel { .. }) && err.to_string().contains("dim 48"),
            "{err}"
        );

        // A model file is not an adapter.
        let model_path = dir.path().join("m.safetensors");
        crate::checkpoint::save_model(&config(32).init::<B>(&device), &config(32), &model_path)
            .unwrap();
        let err = AdapterFile::read(&model_path).unwrap_err();
        assert!(matches!(err, LoraFileError::NotAnAdapter { .. }), "{err}");
    }
}
