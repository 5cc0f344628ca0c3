//! The vocabulary a GGUF file carries in its `tokenizer.ggml.*` metadata, tokenized as
//! llama.cpp tokenizes it.
//!
//! `tokenizer.ggml.model = llama` is a sentencepiece BPE vocabulary (pieces, scores, token
//! types). llama.cpp's rules differ from sentencepiece's `.model` path in two ways, both
//! reproduced here: special tokens written in the text (control and unknown pieces, such as
//! `<s>`) are parsed to their ids, and each stretch of text between them gets the `▁` prefix
//! (so text right after a special token starts with a space); whitespace is never collapsed.
//! BOS is added unless `tokenizer.ggml.add_bos_token` is false.

use std::collections::BTreeMap;
use std::path::Path;

use super::huggingface::SpecialTokens;
use super::vocab::{parse_byte_piece, Piece, PieceKind, TextOptions, Vocabulary};
use super::{builder, TokenizerError, PAD_PIECE};
use crate::gguf::Value;

/// llama.cpp's token types (`llama_token_type`).
const NORMAL: u64 = 1;
const UNKNOWN: u64 = 2;
const CONTROL: u64 = 3;
const UNUSED: u64 = 5;
const BYTE: u64 = 6;

/// A GGUF file at `path` whose metadata cannot be read, for `reason`.
pub fn invalid(path: &Path, reason: String) -> TokenizerError {
    TokenizerError::InvalidModel {
        path: path.to_path_buf(),
        reason,
    }
}

/// Whether GGUF metadata `meta` holds a byte-level (`gpt2`) vocabulary, decoded by its own
/// decoder rather than sentencepiece's rules.
pub fn is_byte_level(meta: &BTreeMap<String, Value>) -> bool {
    meta.get("tokenizer.ggml.model").and_then(Value::as_str) == Some("gpt2")
}

/// The tokenizer, vocabulary and special tokens of GGUF metadata `meta` (from `path`).
pub fn parse(
    meta: &BTreeMap<String, Value>,
    path: &Path,
) -> Result<(tokenizers::Tokenizer, Vocabulary, SpecialTokens), TokenizerError> {
    let invalid = |reason: String| invalid(path, reason);
    let model = meta
        .get("tokenizer.ggml.model")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("`tokenizer.ggml.model` is missing: no vocabulary".into()))?;
    let (inner, vocab) = match model {
        "llama" => {
            let vocab = llama_vocabulary(meta, path)?;
            let mut inner = builder::build(&vocab, path)?;
            // llama.cpp parses special tokens written in the text.
            inner.set_encode_special_tokens(false);
            (inner, vocab)
        }
        "gpt2" => {
            let array = |key: &str| {
                meta.get(&format!("tokenizer.ggml.{key}"))
                    .and_then(Value::as_array)
                    .unwrap_or_default()
            };
            super::gguf_bpe::parse(meta, path, array("tokens"), array("token_type"))?
        }
        other => {
            return Err(TokenizerError::Unsupported {
                path: path.to_path_buf(),
                reason: format!("GGUF vocabulary `{other}` (only `llama` and `gpt2`)"),
            })
        }
    };
    let id = |key: &str| {
        meta.get(&format!("tokenizer.ggml.{key}"))
            .and_then(Value::as_u64)
            .and_then(|v| u32::try_from(v).ok())
            .filter(|&v| (v as usize) < vocab.pieces.len())
    };
    let special = SpecialTokens {
        bos: id("bos_token_id"),
        eos: id("eos_token_id"),
        pad: vocab
            .find(PAD_PIECE)
            .or(id("padding_token_id"))
            .or(id("eos_token_id")),
        adds_bos: meta
            .get("tokenizer.ggml.add_bos_token")
            .and_then(Value::as_bool)
            .unwrap_or(true),
    };
    Ok((inner, vocab, special))
}

/// The pieces of a `llama` vocabulary: tokens, scores and token types, one per id.
fn llama_vocabulary(
    meta: &BTreeMap<String, Value>,
    path: &Path,
) -> Result<Vocabulary, TokenizerError> {
    let invalid = |reason: String| invalid(path, reason);
    let array = |key: &str| {
        meta.get(&format!("tokenizer.ggml.{key}"))
            .and_then(Value::as_array)
    };
    let tokens =
        array("tokens").ok_or_else(|| invalid("`tokenizer.ggml.tokens` is missing".into()))?;
    let scores = array("scores").unwrap_or_default();
    let types = array("token_type").unwrap_or_default();
    for (key, len) in [("scores", scores.len()), ("token_type", types.len())] {
        if len != 0 && len != tokens.len() {
            return Err(invalid(format!(
                "`tokenizer.ggml.{key}` has {len} entries for {} tokens",
                tokens.len()
            )));
        }
    }
    let mut pieces = Vec::with_capacity(tokens.len());
    for (id, token) in tokens.iter().enumerate() {
        let text = token
            .as_str()
            .ok_or_else(|| invalid(format!("token {id} is not a string")))?;
        let kind = match types.get(id).and_then(Value::as_u64).unwrap_or(NORMAL) {
            NORMAL => PieceKind::Normal,
            UNKNOWN => PieceKind::Unknown,
            CONTROL => PieceKind::Control,
            UNUSED => PieceKind::Unused,
            BYTE => PieceKind::Byte(parse_byte_piece(text).ok_or_else(|| {
                invalid(format!(
                    "token {id} {text:?} has type BYTE but is not <0xAB>"
                ))
            })?),
            other => {
                return Err(TokenizerError::Unsupported {
                    path: path.to_path_buf(),
                    reason: format!("token {id} {text:?} of type {other} (user-defined)"),
                })
            }
        };
        pieces.push(Piece {
            text: text.to_string(),
            score: scores.get(id).and_then(Value::as_f64).unwrap_or(0.0) as f32,
            kind,
        });
    }
    let add_space_prefix = meta
        .get("tokenizer.ggml.add_space_prefix")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let vocab = Vocabulary {
        pieces,
        options: TextOptions {
            add_dummy_prefix: add_space_prefix,
            ..TextOptions::default()
        },
    };
    vocab.validate(path)?;
    Ok(vocab)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The metadata of a five-piece `llama` vocabulary, with `add_bos_token` if given.
    fn metadata(add_bos: Option<bool>) -> BTreeMap<String, Value> {
        let strings =
            |v: &[&str]| Value::Array(v.iter().map(|s| Value::Str(s.to_string())).collect());
        let mut meta = BTreeMap::from([
            (
                "tokenizer.ggml.model".to_string(),
                Value::Str("llama".into()),
            ),
            (
                "tokenizer.ggml.tokens".to_string(),
                strings(&["<unk>", "<s>", "</s>", "<0x00>", "▁a"]),
            ),
            (
                "tokenizer.ggml.token_type".to_string(),
                Value::Array([2, 3, 3, 6, 1].map(Value::Int).to_vec()),
            ),
            ("tokenizer.ggml.bos_token_id".to_string(), Value::Uint(1)),
            ("tokenizer.ggml.eos_token_id".to_string(), Value::Uint(2)),
        ]);
        if let Some(add) = add_bos {
            meta.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(add));
        }
        meta
    }

    #[test]
    fn bos_is_added_unless_the_metadata_says_not() {
        let path = Path::new("m.gguf");
        for (add, expected) in [(None, true), (Some(true), true), (Some(false), false)] {
            let (_, _, special) = parse(&metadata(add), path).unwrap();
            assert_eq!(special.adds_bos, expected, "{add:?}");
            assert_eq!(
                (special.bos, special.eos, special.pad),
                (Some(1), Some(2), Some(3))
            );
        }
    }

    #[test]
    fn other_vocabularies_are_refused_by_name() {
        let mut meta = metadata(None);
        meta.insert("tokenizer.ggml.model".into(), Value::Str("bert".into()));
        let err = parse(&meta, Path::new("m.gguf"))
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("`bert`")));
    }
}
