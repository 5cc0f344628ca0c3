//! Writing models (and other f32 tensor sets, such as LoRA adapters) as safetensors.
//!
//! A model is written under the exercise's names in PyTorch's layout (`nn.Linear` weights
//! `[out, in]`), with its config as `<stem>.config.json` beside it: exactly what the
//! safetensors reader of this crate (and PyTorch's `load_state_dict`) takes back.

use std::collections::HashMap;
use std::path::Path;

use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

use crate::atomic_file::write_atomic;
use crate::checkpoint::safetensors_file::config_candidates;
use crate::checkpoint::tensors::{RawTensor, TensorMap};
use crate::checkpoint::CheckpointError;
use crate::model::config::LlamaConfig;
use crate::Llama;

/// The values of `tensor` as a [`RawTensor`] (row-major, its logical shape, f32).
pub fn raw_tensor<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> RawTensor {
    let shape = tensor.dims().to_vec();
    let data = tensor.into_data().convert::<f32>();
    // Converted to f32 just above, so reading it as f32 cannot fail.
    let data = data.into_vec::<f32>().unwrap_or_default();
    RawTensor { shape, data }
}

/// One parameter of a model under the exercise's name, its values read when asked for
/// (so that a writer holds one tensor's f32 copy at a time).
pub struct LazyTensor<'m> {
    pub name: String,
    /// PyTorch shape (`nn.Linear` weights as `[out, in]`).
    pub shape: Vec<usize>,
    read: Box<dyn Fn() -> RawTensor + 'm>,
}

impl LazyTensor<'_> {
    /// The values, row-major in [`Self::shape`].
    pub fn read(&self) -> RawTensor {
        (self.read)()
    }
}

/// The parameters of `model` as [`LazyTensor`]s: the embedding, the projections layer by
/// layer, the norms layer by layer, the final norm, the head (if untied). LoRA adapters are
/// not included: merge them first ([`Llama::merge_lora`]).
pub fn lazy_model_tensors<B: Backend>(model: &Llama<B>) -> Vec<LazyTensor<'_>> {
    fn vector<B: Backend>(name: String, param: &Param<Tensor<B, 1>>) -> LazyTensor<'_> {
        LazyTensor {
            name,
            shape: param.val().dims().to_vec(),
            read: Box::new(move || raw_tensor(param.val())),
        }
    }
    /// Burn keeps linear weights as `[in, out]`: transposed on reading.
    fn matrix<B: Backend>(name: String, param: &Param<Tensor<B, 2>>) -> LazyTensor<'_> {
        let [d_in, d_out] = param.val().dims();
        LazyTensor {
            name,
            shape: vec![d_out, d_in],
            read: Box::new(move || raw_tensor(param.val().transpose())),
        }
    }
    let embedding = &model.tok_embeddings.weight;
    let mut tensors = vec![LazyTensor {
        name: "tok_embeddings.weight".into(),
        shape: embedding.val().dims().to_vec(),
        read: Box::new(move || raw_tensor(embedding.val())),
    }];
    for (prefix, linear) in model.projections() {
        tensors.push(matrix(format!("{prefix}.weight"), &linear.weight));
    }
    for (i, layer) in model.layers.iter().enumerate() {
        for (name, norm) in [
            ("attention_norm", &layer.attention_norm),
            ("ffn_norm", &layer.ffn_norm),
        ] {
            tensors.push(vector(format!("layers.{i}.{name}.weight"), &norm.weight));
        }
    }
    tensors.push(vector("norm.weight".into(), &model.norm.weight));
    if let Some(output) = &model.output {
        tensors.push(matrix("output.weight".into(), &output.weight));
    }
    tensors
}

/// The parameters of `model` under the exercise's names, `nn.Linear` weights as `[out, in]`.
/// LoRA adapters are not included: merge them first ([`Llama::merge_lora`]).
pub fn model_tensors<B: Backend>(model: &Llama<B>) -> TensorMap {
    lazy_model_tensors(model)
        .into_iter()
        .map(|t| (t.name.clone(), t.read()))
        .collect()
}

/// Write `tensors` (f32) and `metadata` to `path` as one safetensors file, atomically.
pub fn write_safetensors(
    path: &Path,
    tensors: &TensorMap,
    metadata: Option<HashMap<String, String>>,
) -> Result<(), CheckpointError> {
    let encoded: Vec<EncodedTensor> = tensors
        .iter()
        .map(|(name, t)| EncodedTensor {
            name: name.clone(),
            dtype: Dtype::F32,
            shape: t.shape.clone(),
            bytes: t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        })
        .collect();
    write_encoded(path, &encoded, metadata)
}

/// One tensor's little-endian bytes in its stored dtype.
pub struct EncodedTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

/// Write already encoded `tensors` and `metadata` to `path` as one safetensors file,
/// atomically.
pub fn write_encoded(
    path: &Path,
    tensors: &[EncodedTensor],
    metadata: Option<HashMap<String, String>>,
) -> Result<(), CheckpointError> {
    let corrupt = |detail: String| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    let views = tensors
        .iter()
        .map(|t| {
            TensorView::new(t.dtype, t.shape.clone(), &t.bytes)
                .map(|view| (t.name.as_str(), view))
                .map_err(|e| corrupt(format!("tensor `{}`: {e}", t.name)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let file = safetensors::serialize(views, metadata).map_err(|e| corrupt(e.to_string()))?;
    write_atomic(path, &file).map_err(|source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Write `model` (built from `config`) to `path` as safetensors and its config as
/// `<stem>.config.json` beside it, where [`crate::load_checkpoint`] looks for it.
pub fn save_model<B: Backend>(
    model: &Llama<B>,
    config: &LlamaConfig,
    path: &Path,
) -> Result<(), CheckpointError> {
    let config_path = config_candidates(path)
        .into_iter()
        .next()
        .unwrap_or_else(|| path.with_extension("config.json"));
    let json = serde_json::to_vec_pretty(config).map_err(|e| CheckpointError::Corrupt {
        path: config_path.clone(),
        detail: e.to_string(),
    })?;
    write_atomic(&config_path, &json).map_err(|source| CheckpointError::Io {
        path: config_path.clone(),
        source,
    })?;
    write_safetensors(path, &model_tensors(model), None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{load_checkpoint, LoadOptions};
    use burn::backend::NdArray;
    use burn::tensor::{Int, TensorData};

    type B = NdArray;

    #[test]
    fn a_saved_model_loads_back_to_the_same_logits() {
        let device = Default::default();
        // A separate output projection, so that `output.weight` is written too.
        let config = LlamaConfig::new(32, 2, 4, 64)
            .with_n_kv_heads(Some(2))
            .with_max_seq_len(16)
            .with_tie_embeddings(false);
        let model = config.init::<B>(&device);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        save_model(&model, &config, &path).unwrap();
        assert!(dir.path().join("m.config.json").is_file());
        let loaded = load_checkpoint::<B>(&path, &LoadOptions::default(), &device).unwrap();
        let tokens =
            Tensor::<B, 2, Int>::from_data(TensorData::new(vec![1i64, 4, 9, 63], [1, 4]), &device);
        assert_eq!(
            loaded.model.forward(tokens.clone()).logits.into_data(),
            model.forward(tokens).logits.into_data()
        );
    }
}
