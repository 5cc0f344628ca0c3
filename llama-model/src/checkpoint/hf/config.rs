//! A Hugging Face `config.json` (with `generation_config.json` beside it) as a
//! [`LlamaConfig`] and the model's special token ids.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::super::tensors::validated;
use super::super::CheckpointError;
use crate::model::config::LlamaConfig;
use crate::model::rope_scaling::{FrequencyPrecision, RopeScaling};

/// The architecture this reader understands (`architectures` in `config.json`).
pub const LLAMA_ARCHITECTURE: &str = "LlamaForCausalLM";

/// BOS and EOS ids as the folder's configs give them. `generation_config.json` wins over
/// `config.json` where it has a value (it is what `generate` reads); EOS may be a list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialIds {
    pub bos: Option<u32>,
    pub eos: Vec<u32>,
}

/// An id or a list of ids (`eos_token_id` is either).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Ids {
    One(u32),
    Many(Vec<u32>),
}

impl Ids {
    fn into_vec(self) -> Vec<u32> {
        match self {
            Self::One(id) => vec![id],
            Self::Many(ids) => ids,
        }
    }
}

/// The fields of `config.json` we read; the rest are ignored.
#[derive(Debug, Deserialize)]
struct RawConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: Option<usize>,
    max_position_embeddings: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    tie_word_embeddings: Option<bool>,
    hidden_act: Option<String>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    bos_token_id: Option<Ids>,
    eos_token_id: Option<Ids>,
    /// The storage dtype: `dtype` (transformers 5) or `torch_dtype` (older).
    dtype: Option<String>,
    torch_dtype: Option<String>,
}

/// The ids of `generation_config.json`.
#[derive(Debug, Default, Deserialize)]
struct GenerationConfig {
    bos_token_id: Option<Ids>,
    eos_token_id: Option<Ids>,
}

/// Whether the JSON object `value` is a Hugging Face model config (it names an
/// `architectures` list or a `model_type`; our own configs have neither).
pub fn is_hf_config(value: &Value) -> bool {
    value.get("architectures").is_some() || value.get("model_type").is_some()
}

/// Read `config.json` at `path` (and `generation_config.json` beside it).
pub fn read(path: &Path) -> Result<(LlamaConfig, SpecialIds), CheckpointError> {
    let bad = |detail: String| CheckpointError::Unsupported {
        path: path.to_path_buf(),
        detail,
    };
    let text = std::fs::read_to_string(path).map_err(|source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let raw: RawConfig = serde_json::from_str(&text).map_err(|e| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        detail: format!("not a Hugging Face config: {e}"),
    })?;
    check_architecture(&raw).map_err(bad)?;
    let config = validated(path, llama_config(&raw).map_err(bad)?)?;

    let generation_path = path.with_file_name("generation_config.json");
    let generation: GenerationConfig = match std::fs::read_to_string(&generation_path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| CheckpointError::Corrupt {
            path: generation_path.clone(),
            detail: e.to_string(),
        })?,
        Err(_) => GenerationConfig::default(),
    };
    let first = |ids: Option<Ids>| ids.and_then(|i| i.into_vec().first().copied());
    let special = SpecialIds {
        bos: first(generation.bos_token_id).or(first(raw.bos_token_id)),
        eos: generation
            .eos_token_id
            .or(raw.eos_token_id)
            .map(Ids::into_vec)
            .unwrap_or_default(),
    };
    Ok((config, special))
}

/// `LlamaForCausalLM` in `architectures`, else `model_type` `llama`; anything else is
/// refused by name.
fn check_architecture(raw: &RawConfig) -> Result<(), String> {
    match (&raw.architectures, &raw.model_type) {
        (Some(archs), _) if archs.iter().any(|a| a == LLAMA_ARCHITECTURE) => Ok(()),
        (Some(archs), _) if !archs.is_empty() => Err(format!(
            "architecture `{}` is not supported (only {LLAMA_ARCHITECTURE})",
            archs.join(", ")
        )),
        (_, Some(kind)) if kind == "llama" => Ok(()),
        (_, Some(kind)) => Err(format!(
            "model type `{kind}` is not supported (only `llama`, {LLAMA_ARCHITECTURE})"
        )),
        (_, None) => Err("neither `architectures` nor `model_type` is given".into()),
    }
}

/// The [`LlamaConfig`] of a Llama `config.json`. Missing optional values take
/// `transformers`' `LlamaConfig` defaults.
fn llama_config(raw: &RawConfig) -> Result<LlamaConfig, String> {
    let need = |v: Option<usize>, name: &str| v.ok_or_else(|| format!("`{name}` is missing"));
    let dim = need(raw.hidden_size, "hidden_size")?;
    let n_heads = need(raw.num_attention_heads, "num_attention_heads")?;
    if let Some(act) = raw.hidden_act.as_deref().filter(|a| *a != "silu") {
        return Err(format!("`hidden_act` `{act}` is not supported (only silu)"));
    }
    if raw.attention_bias == Some(true) || raw.mlp_bias == Some(true) {
        return Err("projection biases (`attention_bias`/`mlp_bias`) are not supported".into());
    }
    if let Some(head_dim) = raw.head_dim {
        if head_dim.checked_mul(n_heads) != Some(dim) {
            return Err(format!(
                "`head_dim` {head_dim} differs from hidden_size / num_attention_heads \
                 ({dim} / {n_heads}): not supported"
            ));
        }
    }
    let (theta, scaling) = rope(raw)?;
    Ok(LlamaConfig::new(
        dim,
        need(raw.num_hidden_layers, "num_hidden_layers")?,
        n_heads,
        need(raw.vocab_size, "vocab_size")?,
    )
    .with_n_kv_heads(Some(raw.num_key_value_heads.unwrap_or(n_heads)))
    .with_hidden_dim(Some(need(raw.intermediate_size, "intermediate_size")?))
    .with_max_seq_len(raw.max_position_embeddings.unwrap_or(2048))
    .with_norm_eps(raw.rms_norm_eps.unwrap_or(1e-6))
    .with_rope_theta(theta)
    .with_rope_scaling(scaling)
    .with_tie_embeddings(raw.tie_word_embeddings.unwrap_or(false))
    .with_rope_frequency_precision(frequency_precision(raw)))
}

/// A model stored in bf16 or f16 runs in `transformers` cast to that dtype, which rounds
/// the RoPE inverse frequencies too (see [`FrequencyPrecision`]).
fn frequency_precision(raw: &RawConfig) -> Option<FrequencyPrecision> {
    match raw.dtype.as_deref().or(raw.torch_dtype.as_deref()) {
        Some("bfloat16") => Some(FrequencyPrecision::Bf16),
        Some("float16") => Some(FrequencyPrecision::F16),
        _ => None,
    }
}

/// `rope_theta` and the scaling: transformers 5's `rope_parameters` (theta inside), or the
/// older top-level `rope_theta` and `rope_scaling` (whose type key was once `type`).
fn rope(raw: &RawConfig) -> Result<(f64, Option<RopeScaling>), String> {
    let params = raw
        .rope_parameters
        .as_ref()
        .or(raw.rope_scaling.as_ref())
        .filter(|v| !v.is_null());
    let theta = params
        .and_then(|p| p.get("rope_theta"))
        .and_then(Value::as_f64)
        .or(raw.rope_theta)
        .unwrap_or(10000.0);
    let Some(params) = params else {
        return Ok((theta, None));
    };
    let kind = params
        .get("rope_type")
        .or_else(|| params.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let scaling = match kind {
        "default" => None,
        "linear" | "llama3" => {
            let mut params = params.clone();
            if let Some(map) = params.as_object_mut() {
                map.insert("rope_type".into(), Value::from(kind));
            }
            Some(
                serde_json::from_value::<RopeScaling>(params)
                    .map_err(|e| format!("rope scaling `{kind}`: {e}"))?,
            )
        }
        other => {
            return Err(format!(
                "rope scaling type `{other}` is not supported (default, linear and llama3 are)"
            ))
        }
    };
    Ok((theta, scaling))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<LlamaConfig, String> {
        let raw: RawConfig = serde_json::from_str(json).map_err(|e| e.to_string())?;
        check_architecture(&raw)?;
        llama_config(&raw)
    }

    const BASE: &str = r#""hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 2,
        "num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 512"#;

    #[test]
    fn both_rope_conventions_give_the_same_config() {
        let scaling = r#""factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64"#;
        let old = parse(&format!(
            r#"{{"architectures": ["LlamaForCausalLM"], {BASE}, "rope_theta": 500000.0,
               "rope_scaling": {{"rope_type": "llama3", {scaling}}}}}"#
        ))
        .unwrap();
        let new = parse(&format!(
            r#"{{"model_type": "llama", {BASE}, "rope_parameters": {{"rope_type": "llama3",
               "rope_theta": 500000.0, {scaling}}}}}"#
        ))
        .unwrap();
        assert_eq!(old, new);
        assert_eq!(old.rope_theta, 500000.0);
        assert!(matches!(old.rope_scaling, Some(RopeScaling::Llama3 { .. })));
        let legacy = parse(&format!(
            r#"{{"model_type": "llama", {BASE}, "rope_scaling": {{"type": "linear", "factor": 2}}}}"#
        ))
        .unwrap();
        assert_eq!(
            legacy.rope_scaling,
            Some(RopeScaling::Linear { factor: 2.0 })
        );
    }

    #[test]
    fn foreign_models_and_unknown_scalings_are_refused_by_name() {
        let err = parse(&format!(
            r#"{{"architectures": ["MistralForCausalLM"], {BASE}}}"#
        ))
        .unwrap_err();
        assert!(err.contains("MistralForCausalLM"), "{err}");
        let err = parse(&format!(r#"{{"model_type": "gpt2", {BASE}}}"#)).unwrap_err();
        assert!(err.contains("gpt2"), "{err}");
        let err = parse(&format!(
            r#"{{"model_type": "llama", {BASE}, "rope_scaling": {{"rope_type": "yarn", "factor": 4}}}}"#
        ))
        .unwrap_err();
        assert!(err.contains("`yarn`"), "{err}");
        let err = parse(&format!(
            r#"{{"model_type": "llama", {BASE}, "head_dim": 16}}"#
        ))
        .unwrap_err();
        assert!(err.contains("head_dim"), "{err}");
        // Sizes whose product overflows are refused, not a panic.
        let err = parse(&format!(
            r#"{{"model_type": "llama", {BASE}, "head_dim": {}}}"#,
            usize::MAX
        ))
        .unwrap_err();
        assert!(err.contains("head_dim"), "{err}");
    }
}
