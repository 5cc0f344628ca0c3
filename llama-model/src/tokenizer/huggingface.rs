//! Loading a HuggingFace `tokenizer.json`.
//!
//! The `tokenizers` crate reads the file itself; this module only derives the piece table
//! (id -> piece text and kind) that decoding and the special ids need, and switches off the
//! file's own truncation/padding so that [`Tokenizer::encode`](super::Tokenizer::encode) has one
//! behaviour whatever the source format.

use std::path::Path;

use serde_json::Value;
use tokenizers::models::ModelWrapper;

use super::vocab::{parse_byte_piece, Piece, PieceKind, TextOptions, Vocabulary};
use super::TokenizerError;

/// Parses a `tokenizer.json` and derives its vocabulary.
pub fn parse(
    bytes: &[u8],
    path: &Path,
) -> Result<(tokenizers::Tokenizer, Vocabulary), TokenizerError> {
    let invalid = |reason: String| TokenizerError::InvalidJson {
        path: path.to_path_buf(),
        reason,
    };

    let mut inner = tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| invalid(e.to_string()))?;
    inner
        .with_truncation(None)
        .map_err(|e| invalid(e.to_string()))?;
    inner.with_padding(None);
    // Special tokens written in the text are parsed (`"<s>"` is BOS), as `transformers` does
    // with a model's own tokenizer.json; BOS is added by `encode(.., bos)`.
    inner.set_encode_special_tokens(false);

    let by_id = inner.get_vocab(true);
    if by_id.is_empty() {
        return Err(TokenizerError::EmptyVocab {
            path: path.to_path_buf(),
        });
    }
    let size = by_id.len();
    let mut texts: Vec<Option<String>> = vec![None; size];
    for (text, id) in by_id {
        match texts.get_mut(id as usize) {
            Some(slot) => *slot = Some(text),
            None => {
                return Err(invalid(format!(
                    "token {text:?} has id {id}, outside 0..{size}: ids are not contiguous"
                )))
            }
        }
    }

    let added = inner.get_added_tokens_decoder();
    let unk = match inner.get_model() {
        ModelWrapper::BPE(bpe) => bpe.unk_token.clone(),
        _ => None,
    };
    let mut pieces = Vec::with_capacity(size);
    for (id, text) in texts.into_iter().enumerate() {
        // Each slot is filled: `size` distinct ids all below `size`.
        let text = text.ok_or_else(|| invalid(format!("no token has id {id}")))?;
        let kind = if unk.as_deref() == Some(text.as_str()) {
            PieceKind::Unknown
        } else if let Some(token) = added.get(&(id as u32)) {
            if token.special {
                PieceKind::Control
            } else {
                PieceKind::UserDefined
            }
        } else if let Some(byte) = parse_byte_piece(&text) {
            PieceKind::Byte(byte)
        } else {
            PieceKind::Normal
        };
        pieces.push(Piece {
            text,
            score: 0.0,
            kind,
        });
    }

    let decoder = serde_json::to_value(inner.get_decoder()).unwrap_or(Value::Null);
    let options = TextOptions {
        add_dummy_prefix: strips_first_space(&decoder),
        ..TextOptions::default()
    };
    let vocab = Vocabulary { pieces, options };
    vocab.validate(path)?;
    Ok((inner, vocab))
}

/// The special tokens of a `tokenizer.json` at `path`, as `transformers` takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialTokens {
    /// What the post-processor puts before a text, else `tokenizer_config.json`'s `bos_token`
    /// beside the file, else `<s>`.
    pub bos: Option<u32>,
    /// `tokenizer_config.json`'s `eos_token`, else `</s>`.
    pub eos: Option<u32>,
    /// `<0x00>`, else `pad_token`, else EOS.
    pub pad: Option<u32>,
    /// Whether a text gets BOS: `tokenizer_config.json`'s `add_bos_token` where given, else
    /// whether the post-processor puts one (a file without a post-processor: yes).
    pub adds_bos: bool,
}

/// The [`SpecialTokens`] of the `tokenizer.json` at `path`, parsed as `inner`.
pub fn special_tokens(inner: &tokenizers::Tokenizer, path: &Path) -> SpecialTokens {
    let config = path
        .parent()
        .map(|dir| dir.join("tokenizer_config.json"))
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|text| serde_json::from_str::<Value>(&text).ok())
        .unwrap_or(Value::Null);
    // A token is written as its text or as `{"content": text, ...}`.
    let named = |key: &str| {
        let value = config.get(key)?;
        let text = value
            .as_str()
            .or_else(|| value.get("content").and_then(Value::as_str))?;
        inner.token_to_id(text)
    };
    let has_post_processor = inner.get_post_processor().is_some();
    let prefixed = has_post_processor
        .then(|| inner.encode_fast("", true).ok())
        .flatten()
        .and_then(|e| e.get_ids().first().copied());
    let bos = prefixed
        .or_else(|| named("bos_token"))
        .or_else(|| inner.token_to_id(super::BOS_PIECE));
    let eos = named("eos_token").or_else(|| inner.token_to_id(super::EOS_PIECE));
    let pad = inner
        .token_to_id(super::PAD_PIECE)
        .or_else(|| named("pad_token"))
        .or(eos);
    let adds_bos = config
        .get("add_bos_token")
        .and_then(Value::as_bool)
        .unwrap_or(prefixed.is_some() || !has_post_processor);
    SpecialTokens {
        bos,
        eos,
        pad,
        adds_bos,
    }
}

/// Whether the serialized decoder removes the dummy-prefix space (`Strip` with `start >= 1`,
/// or a `Metaspace` that prepends), i.e. whether the file follows sentencepiece's convention.
fn strips_first_space(decoder: &Value) -> bool {
    match decoder {
        Value::Object(map) => {
            let kind = map.get("type").and_then(Value::as_str);
            let this = match kind {
                Some("Strip") => {
                    map.get("content").and_then(Value::as_str) == Some(" ")
                        && map.get("start").and_then(Value::as_u64).unwrap_or(0) >= 1
                }
                Some("Metaspace") => {
                    map.get("prepend_scheme").and_then(Value::as_str) != Some("never")
                }
                _ => false,
            };
            this || map.values().any(strips_first_space)
        }
        Value::Array(items) => items.iter().any(strips_first_space),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::fixture;
    use crate::Tokenizer;

    #[test]
    fn tokenizer_config_add_bos_token_decides_bos() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("tokenizer.json");
        std::fs::copy(fixture("real-models/hf/stories260K/tokenizer.json"), &json).unwrap();
        // Nothing said: the post-processor's `<s>`.
        let ids = Tokenizer::from_file(&json)
            .unwrap()
            .encode("Once", true, false)
            .unwrap();
        assert_eq!(ids[0], 1);
        let config = dir.path().join("tokenizer_config.json");
        std::fs::write(&config, r#"{"add_bos_token": false}"#).unwrap();
        let tok = Tokenizer::from_file(&json).unwrap();
        assert!(!tok.adds_bos());
        let without = tok.encode("Once", true, false).unwrap();
        assert_eq!(without, ids[1..]);
        // A named BOS token, given as text or as an added-token object.
        std::fs::write(
            &config,
            r#"{"bos_token": {"content": "</s>"}, "eos_token": "<s>"}"#,
        )
        .unwrap();
        let tok = Tokenizer::from_file(&json).unwrap();
        assert_eq!(
            (tok.bos_id(), tok.eos_id()),
            (1, 1),
            "post-processor's BOS wins"
        );
    }

    #[test]
    fn garbage_json_is_an_error() {
        let err = parse(b"{\"not\": \"a tokenizer\"}", Path::new("t.json"));
        assert!(matches!(err, Err(TokenizerError::InvalidJson { .. })));
        let err = parse(b"{ truncated", Path::new("t.json"));
        assert!(matches!(err, Err(TokenizerError::InvalidJson { .. })));
    }

    #[test]
    fn recognises_the_llama_decoder() {
        let llama: Value = serde_json::json!({"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]});
        assert!(strips_first_space(&llama));
        let none: Value = serde_json::json!({"type": "Sequence", "decoders": [{"type": "Fuse"}]});
        assert!(!strips_first_space(&none));
        assert!(!strips_first_space(&Value::Null));
    }
}
