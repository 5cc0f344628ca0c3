//! A GGUF file's `gpt2` vocabulary (byte-level BPE: tokens, token types, merges), as a
//! `tokenizer.json` for the `tokenizers` crate.
//!
//! The pre-tokenizer's regex is not in the file, only its name (`tokenizer.ggml.pre`); the
//! names we know map to llama.cpp's regexes, others are refused by name. Merges are applied
//! as llama.cpp does for them (a word that is itself a token is not split: `ignore_merges`).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value as Json};

use super::vocab::Vocabulary;
use super::{huggingface, TokenizerError};
use crate::gguf::Value;

/// llama.cpp's `LLAMA_VOCAB_PRE_TYPE_LLAMA3` regex (Llama 3.x).
const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The regex of the pre-tokenizer named `pre`, if we know it.
fn pre_regex(pre: &str) -> Option<&'static str> {
    match pre {
        "llama-bpe" => Some(LLAMA3_REGEX),
        _ => None,
    }
}

/// The tokenizer and vocabulary of a `gpt2` vocabulary in `meta`.
pub fn parse(
    meta: &BTreeMap<String, Value>,
    path: &Path,
    tokens: &[Value],
    types: &[Value],
) -> Result<(tokenizers::Tokenizer, Vocabulary), TokenizerError> {
    let invalid = |reason: String| super::gguf::invalid(path, reason);
    let pre = meta
        .get("tokenizer.ggml.pre")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let regex = pre_regex(pre).ok_or_else(|| TokenizerError::Unsupported {
        path: path.to_path_buf(),
        reason: format!("GGUF pre-tokenizer `{pre}` (only `llama-bpe`)"),
    })?;
    let merges = meta
        .get("tokenizer.ggml.merges")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("`tokenizer.ggml.merges` is missing".into()))?;
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (id, token) in tokens.iter().enumerate() {
        let text = token
            .as_str()
            .ok_or_else(|| invalid(format!("token {id} is not a string")))?;
        vocab.insert(text.to_string(), json!(id));
        // Control (3) and user-defined (4) tokens are matched in the text, as llama.cpp does.
        if matches!(types.get(id).and_then(Value::as_u64), Some(3 | 4)) {
            added.push(
                json!({"id": id, "content": text, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true}),
            );
        }
    }
    let merges: Vec<&str> = merges.iter().filter_map(Value::as_str).collect();
    let file = json!({
        "version": "1.0",
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
        ]},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
            "byte_fallback": false, "ignore_merges": true, "vocab": Json::Object(vocab),
            "merges": merges}
    });
    huggingface::parse(file.to_string().as_bytes(), path)
}
