//! The `llama.*` hyper-parameters of a GGUF file as a [`LlamaConfig`].

use std::collections::BTreeMap;

use crate::gguf::Value;
use crate::model::config::LlamaConfig;
use crate::model::rope_scaling::RopeScaling;

/// The architecture this reader understands (`general.architecture`).
pub const LLAMA: &str = "llama";

/// The config of a `llama` GGUF file with metadata `meta` and `vocab_size` embedding rows
/// (llama.cpp takes the vocabulary size from the token list or the embedding, not a key).
pub fn llama_config(
    meta: &BTreeMap<String, Value>,
    vocab_size: usize,
) -> Result<LlamaConfig, String> {
    let arch = meta
        .get("general.architecture")
        .and_then(Value::as_str)
        .ok_or("`general.architecture` is missing")?;
    if arch != LLAMA {
        return Err(format!(
            "architecture `{arch}` is not supported (only `{LLAMA}`)"
        ));
    }
    let int = |key: &str| -> Result<Option<usize>, String> {
        match meta.get(&format!("{LLAMA}.{key}")) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|v| usize::try_from(v).ok())
                .map(Some)
                .ok_or_else(|| format!("`{LLAMA}.{key}` is not an unsigned integer: {v:?}")),
        }
    };
    let float = |key: &str| -> Result<Option<f64>, String> {
        match meta.get(&format!("{LLAMA}.{key}")) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| format!("`{LLAMA}.{key}` is not a number: {v:?}")),
        }
    };
    let need = |key: &str| int(key)?.ok_or_else(|| format!("`{LLAMA}.{key}` is missing"));
    let dim = need("embedding_length")?;
    let n_heads = need("attention.head_count")?;
    if let Some(rot) = int("rope.dimension_count")? {
        if n_heads == 0 || rot * n_heads != dim {
            return Err(format!(
                "`{LLAMA}.rope.dimension_count` {rot} differs from the head size \
                 ({dim} / {n_heads}): partial rotary embeddings are not supported"
            ));
        }
    }
    Ok(
        LlamaConfig::new(dim, need("block_count")?, n_heads, vocab_size)
            .with_n_kv_heads(Some(int("attention.head_count_kv")?.unwrap_or(n_heads)))
            .with_hidden_dim(Some(need("feed_forward_length")?))
            .with_max_seq_len(int("context_length")?.unwrap_or(2048))
            .with_norm_eps(float("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5))
            .with_rope_theta(float("rope.freq_base")?.unwrap_or(10000.0))
            .with_rope_scaling(rope_scaling(meta)?)
            .with_tie_embeddings(false),
    )
}

/// `llama.rope.scaling.type`: `none` or `linear` (with its factor); others refused by name.
fn rope_scaling(meta: &BTreeMap<String, Value>) -> Result<Option<RopeScaling>, String> {
    let kind = meta
        .get("llama.rope.scaling.type")
        .and_then(Value::as_str)
        .unwrap_or("none");
    let factor = meta
        .get("llama.rope.scaling.factor")
        .and_then(Value::as_f64)
        .unwrap_or(1.0);
    match kind {
        "none" => Ok(None),
        "linear" if factor == 1.0 => Ok(None),
        "linear" => Ok(Some(RopeScaling::Linear { factor })),
        other => Err(format!(
            "rope scaling type `{other}` is not supported (none and linear are)"
        )),
    }
}
