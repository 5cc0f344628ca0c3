//! Reading llama2.c's `tokenizer.bin`.
//!
//! Layout (little endian): `u32 max_token_length`, then for every id in order
//! `f32 score, i32 len, len bytes`. The vocabulary size is not stored: entries run to the end
//! of the file. llama2.c's exporter writes `▁` as a plain space, BOS as `"\n<s>\n"`, EOS as
//! `"\n</s>\n"` and byte pieces as the text `<0xAB>`; this reader undoes those spellings so the
//! result matches the sentencepiece model the file was exported from.

use std::path::Path;

use super::vocab::{parse_byte_piece, Piece, PieceKind, TextOptions, Vocabulary, SPACE_SYMBOL};
use super::TokenizerError;

/// Largest `max_token_length` accepted when sniffing the format. Real files have 7 (tok512)
/// or 27 (Llama 2); the bound only separates this format from protobuf/JSON/garbage.
pub const MAX_PLAUSIBLE_TOKEN_LENGTH: u32 = 4096;

/// Whether the bytes start like a llama2.c tokenizer: a plausible `max_token_length` and,
/// if present, a first entry whose length fits under it.
pub fn looks_like_llama2c(bytes: &[u8]) -> bool {
    let Some(max_len) = read_u32(bytes, 0) else {
        return false;
    };
    if max_len == 0 || max_len > MAX_PLAUSIBLE_TOKEN_LENGTH {
        return false;
    }
    match read_u32(bytes, 8) {
        // A truncated first entry still counts as this format, so the error says "truncated".
        None => true,
        Some(len) => len <= max_len,
    }
}

/// Parses a whole `tokenizer.bin`; every length field is checked against the bytes that are
/// actually left, so a corrupt file can neither over-allocate nor read out of bounds.
pub fn parse(bytes: &[u8], path: &Path) -> Result<Vocabulary, TokenizerError> {
    let truncated = |reason: String| TokenizerError::TruncatedBin {
        path: path.to_path_buf(),
        reason,
    };
    let invalid = |reason: String| TokenizerError::InvalidBin {
        path: path.to_path_buf(),
        reason,
    };

    let max_len = read_u32(bytes, 0).ok_or_else(|| {
        truncated(format!(
            "{} bytes, shorter than the 4-byte header",
            bytes.len()
        ))
    })?;
    let mut offset = 4usize;
    let mut pieces = Vec::new();
    while offset < bytes.len() {
        let id = pieces.len();
        let (Some(score_bits), Some(len)) = (read_u32(bytes, offset), read_u32(bytes, offset + 4))
        else {
            return Err(truncated(format!(
                "entry {id} starts at byte {offset} but only {} bytes are left (need 8 for score and length)",
                bytes.len() - offset
            )));
        };
        let score = f32::from_bits(score_bits);
        // llama2.c reads the length as a C int.
        let len = len as i32;
        if len < 0 {
            return Err(invalid(format!(
                "entry {id} at byte {offset} has a negative length {len}"
            )));
        }
        let len = len as usize;
        if len as u64 > u64::from(max_len) {
            return Err(invalid(format!(
                "entry {id} at byte {offset} is {len} bytes long, more than the header's \
                 max_token_length {max_len}"
            )));
        }
        let start = offset + 8;
        let left = bytes.len() - start.min(bytes.len());
        if len > left {
            return Err(truncated(format!(
                "entry {id} at byte {offset} needs {len} bytes of text but only {left} are left"
            )));
        }
        let raw = &bytes[start..start + len];
        let text = std::str::from_utf8(raw).map_err(|e| {
            invalid(format!(
                "entry {id} at byte {offset} is not valid UTF-8 ({e})"
            ))
        })?;
        pieces.push(piece_from_llama2c(text, score));
        offset = start + len;
    }

    let vocab = Vocabulary {
        pieces,
        options: TextOptions::default(),
    };
    vocab.validate(path)?;
    Ok(vocab)
}

/// Undoes the exporter's spellings and infers the piece kind (the file stores no kinds).
fn piece_from_llama2c(text: &str, score: f32) -> Piece {
    let (text, kind) = match text {
        "\n<s>\n" => ("<s>".to_string(), PieceKind::Control),
        "\n</s>\n" => ("</s>".to_string(), PieceKind::Control),
        "<unk>" => ("<unk>".to_string(), PieceKind::Unknown),
        _ => match parse_byte_piece(text) {
            Some(byte) => (text.to_string(), PieceKind::Byte(byte)),
            None => (
                text.replace(' ', &SPACE_SYMBOL.to_string()),
                PieceKind::Normal,
            ),
        },
    };
    Piece { text, score, kind }
}

/// A little-endian u32 at `offset`, or `None` past the end.
fn read_u32(bytes: &[u8], offset: usize) -> Option<u32> {
    let end = offset.checked_add(4)?;
    let chunk: [u8; 4] = bytes.get(offset..end)?.try_into().ok()?;
    Some(u32::from_le_bytes(chunk))
}

/// Serialises entries in the llama2.c layout; used by tests to craft (broken) files.
#[cfg(test)]
pub fn write(max_len: u32, entries: &[(f32, &[u8])]) -> Vec<u8> {
    let mut out = max_len.to_le_bytes().to_vec();
    for (score, text) in entries {
        out.extend_from_slice(&score.to_le_bytes());
        out.extend_from_slice(&(text.len() as u32).to_le_bytes());
        out.extend_from_slice(text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Vec<(f32, &'static [u8])> {
        vec![
            (0.0, b"<unk>".as_slice()),
            (0.0, b"\n<s>\n"),
            (0.0, b"\n</s>\n"),
            (0.0, b"<0x00>"),
            (-1.0, b" a"),
            (-2.0, b"a"),
        ]
    }

    #[test]
    fn parses_and_restores_sentencepiece_spelling() {
        let bytes = write(6, &tiny());
        assert!(looks_like_llama2c(&bytes));
        let vocab = parse(&bytes, Path::new("t.bin")).expect("valid file");
        let texts: Vec<&str> = vocab.pieces.iter().map(|p| p.text.as_str()).collect();
        assert_eq!(texts, ["<unk>", "<s>", "</s>", "<0x00>", "▁a", "a"]);
        let kinds: Vec<PieceKind> = vocab.pieces.iter().map(|p| p.kind).collect();
        assert_eq!(
            kinds,
            [
                PieceKind::Unknown,
                PieceKind::Control,
                PieceKind::Control,
                PieceKind::Byte(0),
                PieceKind::Normal,
                PieceKind::Normal
            ]
        );
        assert_eq!(vocab.pieces[5].score, -2.0);
    }

    #[test]
    fn every_truncation_point_is_an_error() {
        let entries = tiny();
        let bytes = write(6, &entries);
        // Cuts exactly between entries give a shorter but well-formed file (the format stores
        // no count); every other cut must be reported.
        let mut boundaries = vec![4usize];
        for (_, text) in &entries {
            boundaries.push(boundaries.last().copied().unwrap_or(0) + 8 + text.len());
        }
        let mut errors = 0;
        for cut in 0..bytes.len() {
            let result = parse(&bytes[..cut], Path::new("t.bin"));
            if cut == 4 {
                assert!(matches!(result, Err(TokenizerError::EmptyVocab { .. })));
            } else if boundaries.contains(&cut) {
                let n = result.expect("cut between entries").pieces.len();
                assert_eq!(boundaries[n], cut);
            } else {
                match result {
                    Err(TokenizerError::TruncatedBin { .. }) => errors += 1,
                    other => panic!("cut at {cut}: expected TruncatedBin, got {other:?}"),
                }
            }
        }
        assert_eq!(errors, bytes.len() - entries.len());
    }

    #[test]
    fn absurd_lengths_are_rejected_without_allocating() {
        let mut bytes = write(6, &tiny());
        // Entry 0's length field -> 0x7fff_ffff (and then -1).
        bytes[8..12].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        assert!(matches!(
            parse(&bytes, Path::new("t.bin")),
            Err(TokenizerError::InvalidBin { .. })
        ));
        bytes[8..12].copy_from_slice(&(-1i32).to_le_bytes());
        assert!(matches!(
            parse(&bytes, Path::new("t.bin")),
            Err(TokenizerError::InvalidBin { .. })
        ));
        // A length within max_token_length but beyond the end of the file.
        let short = write(100, &[(0.0, b"<unk>".as_slice())]);
        let mut short = short;
        short[8..12].copy_from_slice(&90u32.to_le_bytes());
        assert!(matches!(
            parse(&short, Path::new("t.bin")),
            Err(TokenizerError::TruncatedBin { .. })
        ));
    }

    #[test]
    fn invalid_utf8_and_duplicates_are_errors() {
        let bad = write(4, &[(0.0, b"\xff\xfe".as_slice())]);
        assert!(matches!(
            parse(&bad, Path::new("t.bin")),
            Err(TokenizerError::InvalidBin { .. })
        ));
        let dup = write(4, &[(0.0, b"a".as_slice()), (0.0, b"a")]);
        assert!(matches!(
            parse(&dup, Path::new("t.bin")),
            Err(TokenizerError::DuplicatePiece { .. })
        ));
    }
}
