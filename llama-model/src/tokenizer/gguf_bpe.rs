//! A GGUF file's `gpt2` vocabulary (byte-level BPE: tokens, token types, merges), as a
//! `tokenizer.json` for the `tokenizers` crate.
//!
//! The pre-tokenizer's regex is not in the file, only its name (`tokenizer.ggml.pre`); the
//! names we know (`llama-bpe`, `gpt-2`) map to llama.cpp's regexes, others are refused by
//! name. Merges are applied as llama.cpp does for them (for `llama-bpe`, a word that is
//! itself a token is not split: `ignore_merges`).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value as Json};

use super::vocab::Vocabulary;
use super::{huggingface, TokenizerError};
use crate::gguf::Value;

/// llama.cpp's `LLAMA_VOCAB_PRE_TYPE_LLAMA3` regex (Llama 3.x).
pub const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizer named `pre`, if we know it, and whether a word that is itself a token
/// skips the merges (llama.cpp's `ignore_merges`, set for Llama 3 only).
fn pre_tokenizer(pre: &str) -> Option<(Json, bool)> {
    match pre {
        "llama-bpe" => Some((
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated",
                 "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                 "use_regex": false}
            ]}),
            true,
        )),
        // GPT-2's regex, which the byte-level pre-tokenizer applies itself.
        "gpt-2" => Some((
            json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                   "use_regex": true}),
            false,
        )),
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
    let (pre_tokenizer, ignore_merges) =
        pre_tokenizer(pre).ok_or_else(|| TokenizerError::Unsupported {
            path: path.to_path_buf(),
            reason: format!("GGUF pre-tokenizer `{pre}` (only `llama-bpe` and `gpt-2`)"),
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
        "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
            "byte_fallback": false, "ignore_merges": ignore_merges, "vocab": Json::Object(vocab),
            "merges": merges}
    });
    huggingface::parse(file.to_string().as_bytes(), path)
}
