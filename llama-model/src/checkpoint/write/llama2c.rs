//! Writing a model as a llama2.c legacy (v0) `.bin` export, the format `run.c` reads and
//! llama2.c's `export.py --version 0` writes: seven little-endian i32 `dim, hidden_dim,
//! n_layers, n_heads, n_kv_heads, vocab_size, seq_len` (the vocab size negative when the
//! classifier is not shared), then every tensor as f32 in the order the reader of this
//! crate expects ([`crate::checkpoint::llama2c_bin`]), the RoPE tables included.

use std::path::Path;

use burn::tensor::backend::Backend;

use crate::atomic_file::write_atomic;
use crate::checkpoint::llama2c_bin::{is_per_layer, layout};
use crate::checkpoint::write::safetensors::model_tensors;
use crate::checkpoint::CheckpointError;
use crate::model::config::LlamaConfig;
use crate::Llama;

/// The legacy RoPE tables `cos` or `sin` of `pos · θ^(-2j / head_dim)`, `[seq_len,
/// head_dim / 2]` row-major, as llama2.c's export computes them: frequencies and angles in
/// f32 (PyTorch's `precompute_freqs_cis`), then the cosine or sine of each f32 angle,
/// correctly rounded to f32, where PyTorch's f32 `cos`/`sin` can be one unit in the last
/// place away. `run.c` and this crate's reader skip the tables anyway.
fn rope_table(config: &LlamaConfig, sin: bool) -> Vec<f32> {
    let head = config.head_dim();
    let theta = config.rope_theta as f32;
    let freqs: Vec<f32> = (0..head / 2)
        .map(|j| 1.0 / theta.powf((2 * j) as f32 / head as f32))
        .collect();
    (0..config.max_seq_len)
        .flat_map(|pos| {
            freqs.iter().map(move |&f| {
                let angle = f64::from(pos as f32 * f);
                (if sin { angle.sin() } else { angle.cos() }) as f32
            })
        })
        .collect()
}

/// The header's seven ints.
fn header(config: &LlamaConfig, path: &Path) -> Result<Vec<i32>, CheckpointError> {
    let int = |v: usize, name: &str| {
        i32::try_from(v).map_err(|_| CheckpointError::Unsupported {
            path: path.to_path_buf(),
            detail: format!("{name} = {v} does not fit llama2.c's 32-bit header"),
        })
    };
    let vocab = int(config.vocab_size, "vocab_size")?;
    Ok(vec![
        int(config.dim, "dim")?,
        int(config.hidden_dim(), "hidden_dim")?,
        int(config.n_layers, "n_layers")?,
        int(config.n_heads, "n_heads")?,
        int(config.n_kv_heads(), "n_kv_heads")?,
        if config.tie_embeddings { vocab } else { -vocab },
        int(config.max_seq_len, "seq_len")?,
    ])
}

/// Why `config` cannot be written as a llama2.c `.bin` (whose `run.c` hard-codes RoPE
/// θ = 10000 without scaling and an RMSNorm eps of 1e-5), naming the field; `None` if it
/// can.
pub fn llama2c_refusal(config: &LlamaConfig) -> Option<String> {
    if config.rope_theta != 10000.0 {
        return Some(format!(
            "rope_theta = {} (llama2.c's run.c uses 10000)",
            config.rope_theta
        ));
    }
    if let Some(scaling) = &config.rope_scaling {
        return Some(format!(
            "rope_scaling = {} (llama2.c has no RoPE scaling)",
            serde_json::to_string(scaling).unwrap_or_default()
        ));
    }
    if config.norm_eps != 1e-5 {
        return Some(format!(
            "rms_norm_eps = {} (llama2.c's run.c uses 1e-5)",
            config.norm_eps
        ));
    }
    None
}

/// Write `model` (built from `config`) to `path` as a llama2.c v0 `.bin`, atomically.
/// LoRA adapters are not written: merge them first ([`Llama::merge_lora`]).
pub fn save_llama2c_bin<B: Backend>(
    model: &Llama<B>,
    config: &LlamaConfig,
    path: &Path,
) -> Result<(), CheckpointError> {
    let tensors = model_tensors(model);
    let mut bytes: Vec<u8> = header(config, path)?
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let mut put = |values: &[f32]| bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    for (name, shape) in layout(config, true, config.tie_embeddings) {
        let names: Vec<String> = match name {
            "<rope cos>" | "<rope sin>" => {
                put(&rope_table(config, name == "<rope sin>"));
                continue;
            }
            _ if is_per_layer(name) => (0..shape[0])
                .map(|i| format!("layers.{i}.{name}"))
                .collect(),
            _ => vec![name.to_string()],
        };
        for full in names {
            let tensor = tensors
                .get(&full)
                .ok_or_else(|| CheckpointError::MissingTensor {
                    path: path.to_path_buf(),
                    name: full.clone(),
                    expected: shape.clone(),
                })?;
            put(&tensor.data);
        }
    }
    write_atomic(path, &bytes).map_err(|source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::fixture;
    use crate::{load_checkpoint, LoadOptions};
    use burn::backend::NdArray;

    type B = NdArray;

    #[test]
    fn stories260k_written_back_as_v0_matches_llama2c_export() {
        let bin = fixture("models/stories260K/stories260K.bin");
        let device = Default::default();
        // Loaded from the .pt, so the bytes come from another container than the one compared.
        let pt = bin.with_file_name("stories260K.pt");
        let loaded = load_checkpoint::<B>(&pt, &LoadOptions::default(), &device).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("written.bin");
        save_llama2c_bin(&loaded.model, &loaded.config, &out).unwrap();
        let ours = std::fs::read(&out).unwrap();
        let theirs = std::fs::read(&bin).unwrap();
        assert_eq!(ours.len(), theirs.len());
        // Header and weights: byte for byte. Then the two RoPE tables [512, 4] (tied
        // classifier: nothing after them): within one f32 ulp (see `rope_table`).
        let tables = 2 * 512 * 4 * 4;
        let weights_end = ours.len() - tables;
        assert_eq!(
            ours[..weights_end],
            theirs[..weights_end],
            "header or weights differ"
        );
        let floats = |b: &[u8]| -> Vec<f32> {
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        let (a, b) = (floats(&ours[weights_end..]), floats(&theirs[weights_end..]));
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs() / y.abs().max(f32::MIN_POSITIVE) / f32::EPSILON)
            .fold(0f32, f32::max);
        assert!(worst <= 1.0, "RoPE tables differ by {worst} ulp");
    }

    #[test]
    fn an_untied_model_round_trips_with_a_negative_vocab_size() {
        let device = Default::default();
        let config = LlamaConfig::new(16, 2, 4, 40)
            .with_n_kv_heads(Some(2))
            .with_max_seq_len(8)
            .with_tie_embeddings(false);
        let model = config.init::<B>(&device);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.bin");
        save_llama2c_bin(&model, &config, &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(
            i32::from_le_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]),
            -40
        );
        let back = load_checkpoint::<B>(&path, &LoadOptions::default(), &device).unwrap();
        assert!(!back.config.tie_embeddings);
        assert_eq!(model_tensors(&back.model), model_tensors(&model));
    }
}
