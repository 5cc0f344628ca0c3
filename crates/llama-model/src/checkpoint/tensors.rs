//! Format-independent checkpoint contents, and the one place where they become a model.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::CheckpointError;
use crate::config::LlamaConfig;
use crate::llama::Llama;

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

/// One line per tensor holding NaN or infinite values: such a model loads, but its outputs
/// are garbage, so callers warn.
pub fn non_finite_report(path: &Path, tensors: &TensorMap) -> Vec<String> {
    tensors
        .iter()
        .filter_map(|(name, t)| {
            let bad = t.data.iter().filter(|v| !v.is_finite()).count();
            (bad > 0).then(|| {
                format!(
                    "{}: tensor `{name}` holds {bad} NaN or infinite values of {}",
                    path.display(),
                    t.data.len()
                )
            })
        })
        .collect()
}

/// Takes tensors out of a map, checking each name and shape against the config.
struct Taker<'a> {
    path: &'a Path,
    tensors: TensorMap,
}

impl Taker<'_> {
    fn take(&mut self, name: &str, expected: &[usize]) -> Result<Vec<f32>, CheckpointError> {
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
        Ok(tensor.data)
    }
}

fn vector<B: Backend>(data: Vec<f32>, device: &B::Device) -> Param<Tensor<B, 1>> {
    let n = data.len();
    Param::from_tensor(Tensor::from_data(TensorData::new(data, [n]), device))
}

fn matrix<B: Backend>(data: Vec<f32>, shape: [usize; 2], device: &B::Device) -> Tensor<B, 2> {
    Tensor::from_data(TensorData::new(data, shape), device)
}

/// Fill `linear` with a PyTorch `[out, in]` weight. Burn's `Linear` computes `x · W` with
/// `W` `[in, out]`, so the weight is used transposed (a view, no copy).
fn set_linear<B: Backend>(
    linear: &mut Linear<B>,
    taker: &mut Taker,
    name: &str,
    d_in: usize,
    d_out: usize,
    device: &B::Device,
) -> Result<(), CheckpointError> {
    let data = taker.take(name, &[d_out, d_in])?;
    linear.weight = Param::from_tensor(matrix::<B>(data, [d_out, d_in], device).transpose());
    Ok(())
}

/// Assemble a [`Llama`] from `tensors`, which must hold exactly the model's parameters with
/// the shapes `config` implies. Returns the model and the config it was built with (whose
/// `tie_embeddings` reflects the file: an `output.weight` that differs from the embeddings
/// becomes a separate head).
pub fn build_model<B: Backend>(
    path: &Path,
    mut config: LlamaConfig,
    mut tensors: TensorMap,
    device: &B::Device,
) -> Result<(Llama<B>, LlamaConfig), CheckpointError> {
    config
        .validate()
        .map_err(|source| CheckpointError::Config {
            path: path.to_path_buf(),
            source,
        })?;
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
    let (dim, vocab, hidden) = (config.dim, config.vocab_size, config.hidden_dim());
    let kv_dim = config.n_kv_heads() * config.head_dim();

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

    let mut model = config.init::<B>(device); // parameters are lazy: nothing random is drawn
    let mut t = Taker { path, tensors };

    model.tok_embeddings.weight = Param::from_tensor(matrix(
        t.take("tok_embeddings.weight", &[vocab, dim])?,
        [vocab, dim],
        device,
    ));
    for (i, layer) in model.layers.iter_mut().enumerate() {
        let p = format!("layers.{i}");
        let att = &mut layer.attention;
        set_linear(
            &mut att.compute_query,
            &mut t,
            &format!("{p}.attention.compute_query.weight"),
            dim,
            dim,
            device,
        )?;
        set_linear(
            &mut att.compute_key,
            &mut t,
            &format!("{p}.attention.compute_key.weight"),
            dim,
            kv_dim,
            device,
        )?;
        set_linear(
            &mut att.compute_value,
            &mut t,
            &format!("{p}.attention.compute_value.weight"),
            dim,
            kv_dim,
            device,
        )?;
        set_linear(
            &mut att.compute_output,
            &mut t,
            &format!("{p}.attention.compute_output.weight"),
            dim,
            dim,
            device,
        )?;
        let ff = &mut layer.feed_forward;
        set_linear(
            &mut ff.w1,
            &mut t,
            &format!("{p}.feed_forward.w1.weight"),
            dim,
            hidden,
            device,
        )?;
        set_linear(
            &mut ff.w2,
            &mut t,
            &format!("{p}.feed_forward.w2.weight"),
            hidden,
            dim,
            device,
        )?;
        set_linear(
            &mut ff.w3,
            &mut t,
            &format!("{p}.feed_forward.w3.weight"),
            dim,
            hidden,
            device,
        )?;
        layer.attention_norm.weight = vector(
            t.take(&format!("{p}.attention_norm.weight"), &[dim])?,
            device,
        );
        layer.ffn_norm.weight = vector(t.take(&format!("{p}.ffn_norm.weight"), &[dim])?, device);
    }
    model.norm.weight = vector(t.take("norm.weight", &[dim])?, device);
    if let Some(output) = model.output.as_mut() {
        set_linear(output, &mut t, "output.weight", dim, vocab, device)?;
    }

    if let Some((name, tensor)) = t.tensors.into_iter().next() {
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
