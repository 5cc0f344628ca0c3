//! The JSON files of a Hugging Face Llama folder we write: `config.json`,
//! `generation_config.json` and, for a sentencepiece tokenizer, `tokenizer_config.json`.
//!
//! `config.json` carries both conventions: transformers 5's `rope_parameters` and `dtype`,
//! and the older top-level `rope_theta`, `rope_scaling` and `torch_dtype` that
//! transformers 4 reads. They hold the same values.

use serde_json::{json, Map, Value};

use super::hf::ExportDtype;
use crate::checkpoint::hf::{SpecialIds, LLAMA_ARCHITECTURE};
use crate::model::config::LlamaConfig;
use crate::Tokenizer;

/// An id list as HF writes it: one id as an integer, several as a list.
fn ids_value(ids: &[u32]) -> Value {
    match ids {
        [one] => json!(one),
        many => json!(many),
    }
}

/// `config.json` for `config`, stored in `dtype`.
pub fn config_json(config: &LlamaConfig, special: &SpecialIds, dtype: ExportDtype) -> Value {
    let scaling = config
        .rope_scaling
        .as_ref()
        .map(|s| serde_json::to_value(s).unwrap_or(Value::Null))
        .unwrap_or(Value::Null);
    let mut parameters = match &scaling {
        Value::Object(map) => map.clone(),
        _ => {
            let mut map = Map::new();
            map.insert("rope_type".into(), json!("default"));
            map
        }
    };
    parameters.insert("rope_theta".into(), json!(config.rope_theta));
    json!({
        "architectures": [LLAMA_ARCHITECTURE],
        "model_type": "llama",
        "hidden_size": config.dim,
        "intermediate_size": config.hidden_dim(),
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads(),
        "head_dim": config.head_dim(),
        "hidden_act": "silu",
        "attention_bias": false,
        "mlp_bias": false,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": scaling,
        "rope_parameters": parameters,
        "max_position_embeddings": config.max_seq_len,
        "tie_word_embeddings": config.tie_embeddings,
        "vocab_size": config.vocab_size,
        "bos_token_id": special.bos,
        "eos_token_id": ids_value(&special.eos),
        "torch_dtype": dtype.torch_name(),
        "dtype": dtype.torch_name(),
        "use_cache": true,
    })
}

/// `generation_config.json`: the BOS and EOS ids `generate` uses.
pub fn generation_config_json(special: &SpecialIds) -> Value {
    json!({
        "_from_model_config": true,
        "bos_token_id": special.bos,
        "eos_token_id": ids_value(&special.eos),
    })
}

/// `tokenizer_config.json` beside a copied sentencepiece `tokenizer.model`: transformers'
/// `LlamaTokenizer` with the model's BOS, EOS and unknown pieces, BOS added, EOS not.
pub fn sentencepiece_tokenizer_config(tokenizer: &Tokenizer, max_len: usize) -> Value {
    let piece = |id: Option<u32>| id.and_then(|id| tokenizer.id_to_piece(id).map(str::to_owned));
    json!({
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": piece(Some(tokenizer.bos_id())),
        "eos_token": piece(Some(tokenizer.eos_id())),
        "unk_token": piece(tokenizer.unk_id()),
        "add_bos_token": true,
        "add_eos_token": false,
        "legacy": true,
        "model_max_length": max_len,
    })
}
