//! Recognising a tokenizer file's format from its content.

use std::fmt;

use super::llama2c::looks_like_llama2c;
use super::sentencepiece::looks_like_model_proto;

/// The file formats a [`Tokenizer`](super::Tokenizer) can be loaded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenizerFormat {
    /// Sentencepiece `tokenizer.model` (protobuf `ModelProto`).
    SentencePiece,
    /// llama2.c `tokenizer.bin`.
    Llama2c,
    /// HuggingFace `tokenizer.json`.
    HuggingFaceJson,
    /// The sentencepiece (`llama`) vocabulary in a GGUF file's metadata.
    Gguf,
    /// The byte-level BPE (`gpt2`) vocabulary in a GGUF file's metadata.
    GgufByteLevel,
}

impl TokenizerFormat {
    /// Whether ids are decoded by the `tokenizers` decoder of the file (byte-level and
    /// `tokenizer.json` vocabularies) rather than by sentencepiece's rules.
    pub fn has_own_decoder(self) -> bool {
        matches!(self, Self::HuggingFaceJson | Self::GgufByteLevel)
    }
}

impl fmt::Display for TokenizerFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::SentencePiece => "sentencepiece tokenizer.model",
            Self::Llama2c => "llama2.c tokenizer.bin",
            Self::HuggingFaceJson => "HuggingFace tokenizer.json",
            Self::Gguf => "GGUF vocabulary",
            Self::GgufByteLevel => "GGUF byte-level vocabulary",
        })
    }
}

/// Guesses the format from the first bytes; `Err` explains why nothing matched.
///
/// The checks cannot collide on real files: JSON starts with `{` (after whitespace or a BOM);
/// a `tokenizer.bin` starts with a small `u32` (the longest piece, 7 or 27 bytes) followed by a
/// zero-padded score/length, while a `ModelProto` starts with a protobuf tag (0x0A ...) and
/// a message length, which read as a `u32` is far too large for a piece length.
pub fn detect(bytes: &[u8]) -> Result<TokenizerFormat, String> {
    let text_start = bytes
        .strip_prefix("\u{feff}".as_bytes())
        .unwrap_or(bytes)
        .iter()
        .find(|b| !b.is_ascii_whitespace());
    if crate::gguf::is_gguf(bytes) {
        return Ok(TokenizerFormat::Gguf);
    }
    if text_start == Some(&b'{') {
        return Ok(TokenizerFormat::HuggingFaceJson);
    }
    if looks_like_llama2c(bytes) {
        return Ok(TokenizerFormat::Llama2c);
    }
    if looks_like_model_proto(bytes) {
        return Ok(TokenizerFormat::SentencePiece);
    }
    let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    Err(format!(
        "first bytes {} are neither JSON, GGUF, a llama2.c header nor a protobuf tag",
        head.join(" ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_the_fixture_files_by_content() {
        for (file, format) in [
            (
                "tokenizers/llama2-tokenizer.model",
                TokenizerFormat::SentencePiece,
            ),
            ("tokenizers/llama2-tokenizer.bin", TokenizerFormat::Llama2c),
            (
                "models/stories260K/tok512.model",
                TokenizerFormat::SentencePiece,
            ),
            ("models/stories260K/tok512.bin", TokenizerFormat::Llama2c),
        ] {
            let bytes = std::fs::read(crate::fixtures::fixture(file)).expect("fixture readable");
            assert_eq!(detect(&bytes), Ok(format), "{file}");
        }
    }

    #[test]
    fn detects_json_and_rejects_garbage() {
        assert_eq!(
            detect(b"\xef\xbb\xbf \n {\"model\": {}}"),
            Ok(TokenizerFormat::HuggingFaceJson)
        );
        assert!(detect(b"hello, this is not a tokenizer").is_err());
        assert!(detect(&[0xff; 64]).is_err());
        assert!(detect(b"").is_err());
    }
}
