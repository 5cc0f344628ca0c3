//! Reading a sentencepiece `tokenizer.model` (a serialized `ModelProto`).
//!
//! Only what a BPE tokenizer needs is taken over: pieces with scores and types, the
//! normalizer flags and the byte-fallback switch. Settings this implementation cannot
//! reproduce (unigram models, suffix whitespace, user-defined pieces) are refused with
//! [`TokenizerError::Unsupported`] instead of silently encoding differently.

use std::path::Path;

use sentencepiece_model::{ModelType, SentencePieceModel, Type};

use super::vocab::{parse_byte_piece, Piece, PieceKind, TextOptions, Vocabulary};
use super::TokenizerError;

/// Whether the bytes could be a `ModelProto`: its first field is normally `pieces` (field 1,
/// length-delimited, tag byte 0x0A); trainer/normalizer specs (0x12, 0x1A) may come first.
pub fn looks_like_model_proto(bytes: &[u8]) -> bool {
    matches!(bytes.first(), Some(0x0A | 0x12 | 0x1A))
}

/// Decodes and converts a `tokenizer.model`.
pub fn parse(bytes: &[u8], path: &Path) -> Result<Vocabulary, TokenizerError> {
    let invalid = |reason: String| TokenizerError::InvalidModel {
        path: path.to_path_buf(),
        reason,
    };
    let unsupported = |reason: String| TokenizerError::Unsupported {
        path: path.to_path_buf(),
        reason,
    };

    let model = SentencePieceModel::from_slice(bytes)
        .map_err(|e| invalid(format!("protobuf decoding failed: {e}")))?;
    if model.pieces().is_empty() {
        return Err(TokenizerError::EmptyVocab {
            path: path.to_path_buf(),
        });
    }

    // Proto2 defaults apply to a missing spec, exactly as sentencepiece reads it.
    let trainer = model.trainer().cloned().unwrap_or_default();
    let normalizer = model.normalizer().cloned().unwrap_or_default();
    if trainer.model_type() != ModelType::Bpe {
        return Err(unsupported(format!(
            "model type {:?}; only BPE models (Llama) are supported",
            trainer.model_type()
        )));
    }
    if trainer.treat_whitespace_as_suffix() {
        return Err(unsupported("treat_whitespace_as_suffix = true".to_string()));
    }

    let mut pieces = Vec::with_capacity(model.pieces().len());
    for (id, sp) in model.pieces().iter().enumerate() {
        let text = sp.piece();
        if text.is_empty() {
            return Err(invalid(format!("piece {id} is empty")));
        }
        let raw_type = sp.r#type.unwrap_or(Type::Normal as i32);
        let kind = match Type::try_from(raw_type) {
            Ok(Type::Normal) => PieceKind::Normal,
            Ok(Type::Unknown) => PieceKind::Unknown,
            Ok(Type::Control) => PieceKind::Control,
            Ok(Type::Unused) => PieceKind::Unused,
            Ok(Type::Byte) => match parse_byte_piece(text) {
                Some(byte) => PieceKind::Byte(byte),
                None => {
                    return Err(invalid(format!(
                        "piece {id} {text:?} has type BYTE but is not of the form <0xAB>"
                    )))
                }
            },
            // Sentencepiece matches these greedily before BPE; the tokenizers crate would need
            // them as added tokens, which changes how the dummy prefix is applied.
            Ok(Type::UserDefined) => {
                return Err(unsupported(format!("user-defined piece {id} {text:?}")))
            }
            Err(_) => return Err(invalid(format!("piece {id} has unknown type {raw_type}"))),
        };
        pieces.push(Piece {
            text: text.to_string(),
            score: sp.score(),
            kind,
        });
    }

    let charsmap = normalizer.precompiled_charsmap();
    let options = TextOptions {
        add_dummy_prefix: normalizer.add_dummy_prefix(),
        remove_extra_whitespaces: normalizer.remove_extra_whitespaces(),
        escape_whitespaces: normalizer.escape_whitespaces(),
        byte_fallback: trainer.byte_fallback(),
        unk_surface: trainer.unk_surface().to_string(),
        precompiled_charsmap: (!charsmap.is_empty()).then(|| charsmap.to_vec()),
    };
    let vocab = Vocabulary { pieces, options };
    vocab.validate(path)?;
    Ok(vocab)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_llama2_model() {
        let path = crate::fixtures::fixture("tokenizers/llama2-tokenizer.model");
        let bytes = std::fs::read(&path).expect("fixture readable");
        assert!(looks_like_model_proto(&bytes));
        let vocab = parse(&bytes, &path).expect("valid model");
        assert_eq!(vocab.pieces.len(), 32000);
        assert_eq!(vocab.pieces[0].kind, PieceKind::Unknown);
        assert_eq!(vocab.pieces[1].text, "<s>");
        assert_eq!(vocab.pieces[1].kind, PieceKind::Control);
        assert_eq!(vocab.pieces[3].kind, PieceKind::Byte(0));
        assert_eq!(vocab.pieces[29871].text, "▁");
        let o = &vocab.options;
        assert!(o.add_dummy_prefix && !o.remove_extra_whitespaces && o.escape_whitespaces);
        assert!(o.byte_fallback);
        assert_eq!(o.precompiled_charsmap, None);
    }

    #[test]
    fn truncated_model_is_an_error() {
        let path = crate::fixtures::fixture("tokenizers/llama2-tokenizer.model");
        let bytes = std::fs::read(&path).expect("fixture readable");
        let cut = &bytes[..bytes.len() / 2];
        assert!(matches!(
            parse(cut, &path),
            Err(TokenizerError::InvalidModel { .. })
        ));
    }
}
