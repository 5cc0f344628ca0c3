//! The format-independent vocabulary: one [`Piece`] per id plus the text-handling options.
//!
//! Every loader turns its file into a [`Vocabulary`]; the BPE tokenizer and the decoder are
//! built from it, so the three file formats share one code path after parsing.

use std::collections::HashMap;
use std::path::Path;

use super::TokenizerError;

/// The sentencepiece meta symbol that stands for a space inside pieces (U+2581).
pub const SPACE_SYMBOL: char = '\u{2581}';

/// What a piece is, following sentencepiece's `ModelProto.SentencePiece.Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceKind {
    /// Ordinary text piece; the only kind BPE merges produce.
    Normal,
    /// The unknown piece `<unk>`.
    Unknown,
    /// Invisible control piece such as `<s>` and `</s>`; decodes to nothing.
    Control,
    /// A user-defined piece (only read from `tokenizer.json`; treated as text).
    UserDefined,
    /// A reserved piece that encoding never produces.
    Unused,
    /// A byte-fallback piece `<0xAB>` standing for the raw byte it names.
    Byte(u8),
}

/// One vocabulary entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    /// The piece in sentencepiece spelling (`▁` for a space, `<0x0A>` for a byte).
    pub text: String,
    /// The merge priority (higher merges first); 0 where the file carries none.
    pub score: f32,
    /// The kind of piece.
    pub kind: PieceKind,
}

/// How text is normalised before BPE and how the first space is treated when decoding.
#[derive(Debug, Clone, PartialEq)]
pub struct TextOptions {
    /// Prepend `▁` to non-empty input (and strip it again when decoding).
    pub add_dummy_prefix: bool,
    /// Drop leading/trailing spaces and collapse runs of spaces before encoding.
    pub remove_extra_whitespaces: bool,
    /// Write spaces as `▁` (sentencepiece's default; always true for Llama).
    pub escape_whitespaces: bool,
    /// Encode characters missing from the vocabulary as `<0xAB>` byte pieces.
    pub byte_fallback: bool,
    /// What the unknown piece decodes to (sentencepiece prints `" ⁇ "`).
    pub unk_surface: String,
    /// Sentencepiece's precompiled character map (NFKC and the like), if any.
    pub precompiled_charsmap: Option<Vec<u8>>,
}

impl Default for TextOptions {
    /// The Llama 2 settings, which are also what llama2.c's `encode()` does.
    fn default() -> Self {
        Self {
            add_dummy_prefix: true,
            remove_extra_whitespaces: false,
            escape_whitespaces: true,
            byte_fallback: true,
            unk_surface: DEFAULT_UNK_SURFACE.to_string(),
            precompiled_charsmap: None,
        }
    }
}

/// Sentencepiece's default surface of `<unk>`: a space, U+2047 and a space.
pub const DEFAULT_UNK_SURFACE: &str = " \u{2047} ";

/// The pieces (index = id) and the text options of a tokenizer.
#[derive(Debug, Clone)]
pub struct Vocabulary {
    /// Pieces by id.
    pub pieces: Vec<Piece>,
    /// Normalisation / decoding options.
    pub options: TextOptions,
}

impl Vocabulary {
    /// Checks the invariants every later step relies on: at least one piece, and every piece
    /// text unique (the BPE vocabulary maps text to exactly one id).
    pub fn validate(&self, path: &Path) -> Result<(), TokenizerError> {
        if self.pieces.is_empty() {
            return Err(TokenizerError::EmptyVocab {
                path: path.to_path_buf(),
            });
        }
        if u32::try_from(self.pieces.len()).is_err() {
            return Err(TokenizerError::Unsupported {
                path: path.to_path_buf(),
                reason: format!("{} pieces do not fit u32 ids", self.pieces.len()),
            });
        }
        let mut seen: HashMap<&str, u32> = HashMap::with_capacity(self.pieces.len());
        for (id, piece) in self.pieces.iter().enumerate() {
            let id = id as u32; // fits: checked above
            if let Some(first) = seen.insert(piece.text.as_str(), id) {
                return Err(TokenizerError::DuplicatePiece {
                    path: path.to_path_buf(),
                    piece: piece.text.clone(),
                    first,
                    second: id,
                });
            }
        }
        Ok(())
    }

    /// The id of the piece spelled `text`, by linear search (used a handful of times at load).
    pub fn find(&self, text: &str) -> Option<u32> {
        self.pieces
            .iter()
            .position(|p| p.text == text)
            .map(|id| id as u32)
    }
}

/// The byte named by a byte-fallback piece: exactly `<0x` + two hex digits + `>`.
pub fn parse_byte_piece(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(text: &str) -> Piece {
        Piece {
            text: text.to_string(),
            score: 0.0,
            kind: PieceKind::Normal,
        }
    }

    #[test]
    fn byte_pieces_are_recognised_exactly() {
        assert_eq!(parse_byte_piece("<0x00>"), Some(0));
        assert_eq!(parse_byte_piece("<0x0A>"), Some(10));
        assert_eq!(parse_byte_piece("<0xFF>"), Some(255));
        assert_eq!(parse_byte_piece("<0xfe>"), Some(254));
        assert_eq!(parse_byte_piece("<0x0>"), None);
        assert_eq!(parse_byte_piece("<0x0AB>"), None);
        assert_eq!(parse_byte_piece("<0x+A>"), None);
        assert_eq!(parse_byte_piece("0x0A"), None);
        assert_eq!(parse_byte_piece("<s>"), None);
    }

    #[test]
    fn validate_rejects_empty_and_duplicates() {
        let path = Path::new("x.model");
        let empty = Vocabulary {
            pieces: vec![],
            options: TextOptions::default(),
        };
        assert!(matches!(
            empty.validate(path),
            Err(TokenizerError::EmptyVocab { .. })
        ));
        let dup = Vocabulary {
            pieces: vec![piece("a"), piece("b"), piece("a")],
            options: TextOptions::default(),
        };
        match dup.validate(path) {
            Err(TokenizerError::DuplicatePiece {
                piece,
                first,
                second,
                ..
            }) => assert_eq!((piece.as_str(), first, second), ("a", 0, 2)),
            other => panic!("expected DuplicatePiece, got {other:?}"),
        }
        let ok = Vocabulary {
            pieces: vec![piece("a"), piece("b")],
            options: TextOptions::default(),
        };
        assert!(ok.validate(path).is_ok());
        assert_eq!(ok.find("b"), Some(1));
        assert_eq!(ok.find("c"), None);
    }
}
