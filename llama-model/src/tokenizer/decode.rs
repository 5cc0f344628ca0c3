//! Sentencepiece's decoding rules, as a state machine fed one piece at a time.
//!
//! Rules (sentencepiece `SentencePieceProcessor::Decode`): control pieces vanish; `<unk>`
//! becomes the unknown surface (`" ⁇ "`); runs of byte pieces are joined and read as UTF-8,
//! each byte that is not part of a valid character becoming U+FFFD; `▁` becomes a space; and
//! the first piece that produces text loses one leading `▁` (the dummy prefix). Feeding pieces
//! one by one yields exactly the text of decoding them at once, which is what streaming needs.

use super::vocab::{Piece, PieceKind, TextOptions, SPACE_SYMBOL};

/// Decoding state: pending bytes of an unfinished UTF-8 character and the leading-space flags.
#[derive(Debug, Clone, Default)]
pub struct DecodeState {
    /// Byte-piece bytes not yet turned into text.
    pending: Vec<u8>,
    /// Whether any text has been produced (sentencepiece's `!text->empty()`).
    produced: bool,
    /// Whether the previous text piece consumed the dummy-prefix space.
    bos_ws_seen: bool,
    /// Whether a leading space may still be consumed.
    done_with_prefix: bool,
}

impl DecodeState {
    /// The state of a text already under way: no leading space is dropped any more.
    pub fn continuing() -> Self {
        Self {
            produced: true,
            done_with_prefix: true,
            ..Self::default()
        }
    }

    /// Starts a new text (llama2.c's rule after a BOS): the next piece's leading space is
    /// dropped again. Bytes of an unfinished character stay pending.
    pub fn restart(&mut self) {
        self.produced = false;
        self.bos_ws_seen = false;
        self.done_with_prefix = false;
    }

    /// Bytes of an unfinished character held back.
    pub fn pending(&self) -> &[u8] {
        &self.pending
    }

    /// Feeds one piece and returns the text that became final (possibly empty).
    ///
    /// Byte pieces only release text once their UTF-8 character is complete; an invalid byte
    /// is released at once as U+FFFD.
    pub fn push(&mut self, piece: &Piece, options: &TextOptions) -> String {
        let mut out = String::new();
        if let PieceKind::Byte(byte) = piece.kind {
            self.pending.push(byte);
            self.drain_pending(&mut out, false);
            self.note_output(&out);
            return out;
        }
        // A text piece ends a byte run: incomplete characters are errors now.
        self.drain_pending(&mut out, true);
        self.note_output(&out);

        if self.bos_ws_seen || self.produced {
            self.done_with_prefix = true;
        }
        let (surface, consumed_prefix) = match piece.kind {
            PieceKind::Control => (String::new(), false),
            PieceKind::Unknown => (options.unk_surface.clone(), false),
            _ => {
                let mut text = piece.text.as_str();
                let mut consumed = false;
                if !self.done_with_prefix
                    && (options.add_dummy_prefix || options.remove_extra_whitespaces)
                {
                    if let Some(rest) = text.strip_prefix(SPACE_SYMBOL) {
                        text = rest;
                        // With whitespace removal every leading space goes, so keep consuming.
                        consumed = !options.remove_extra_whitespaces;
                    }
                }
                (text.replace(SPACE_SYMBOL, " "), consumed)
            }
        };
        self.bos_ws_seen = consumed_prefix;
        out.push_str(&surface);
        self.note_output(&out);
        out
    }

    /// Releases whatever is still pending at the end of the ids (each byte as U+FFFD).
    pub fn finish(&mut self) -> String {
        let mut out = String::new();
        self.drain_pending(&mut out, true);
        self.note_output(&out);
        out
    }

    fn note_output(&mut self, out: &str) {
        self.produced |= !out.is_empty();
    }

    /// Moves complete characters (and invalid bytes, as U+FFFD) from `pending` to `out`;
    /// with `flush`, an incomplete trailing character is invalid too.
    fn drain_pending(&mut self, out: &mut String, flush: bool) {
        drain_utf8(&mut self.pending, out, flush);
    }
}

/// Moves the complete UTF-8 characters at the front of `pending` to `out`, each invalid byte
/// as one U+FFFD (as sentencepiece does); an incomplete trailing character stays in `pending`
/// for the bytes still to come, or with `flush` is replaced too.
pub(crate) fn drain_utf8(pending: &mut Vec<u8>, out: &mut String, flush: bool) {
    let mut rest: &[u8] = pending;
    loop {
        match std::str::from_utf8(rest) {
            Ok(valid) => {
                out.push_str(valid);
                rest = &[];
                break;
            }
            Err(e) => {
                let (valid, after) = rest.split_at(e.valid_up_to());
                // `valid` is valid UTF-8 by the error's contract.
                out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                let bad = match e.error_len() {
                    Some(n) => n,
                    None if flush => after.len(),
                    None => {
                        rest = after; // wait for the character's remaining bytes
                        break;
                    }
                };
                out.extend(std::iter::repeat_n('\u{FFFD}', bad));
                rest = &after[bad..];
            }
        }
    }
    let start = pending.len() - rest.len();
    pending.drain(..start);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(t: &str) -> Piece {
        Piece {
            text: t.to_string(),
            score: 0.0,
            kind: PieceKind::Normal,
        }
    }
    fn byte(b: u8) -> Piece {
        Piece {
            text: format!("<0x{b:02X}>"),
            score: 0.0,
            kind: PieceKind::Byte(b),
        }
    }
    fn control() -> Piece {
        Piece {
            text: "<s>".to_string(),
            score: 0.0,
            kind: PieceKind::Control,
        }
    }

    fn decode(pieces: &[Piece]) -> (String, Vec<String>) {
        let options = TextOptions::default();
        let mut state = DecodeState::default();
        let mut chunks: Vec<String> = pieces.iter().map(|p| state.push(p, &options)).collect();
        chunks.push(state.finish());
        (chunks.concat(), chunks)
    }

    #[test]
    fn first_space_is_dropped_once() {
        assert_eq!(decode(&[text("▁Hello"), text("▁world")]).0, "Hello world");
        assert_eq!(decode(&[control(), text("▁Hi")]).0, "Hi");
        // "▁" alone consumes the prefix; the next piece keeps its space.
        assert_eq!(decode(&[text("▁"), text("▁x")]).0, " x");
        assert_eq!(decode(&[text("▁▁")]).0, " ");
        // Bytes first: text exists, so no stripping afterwards.
        assert_eq!(decode(&[byte(b'\n'), text("▁x")]).0, "\n x");
    }

    #[test]
    fn bytes_join_into_characters_and_stream() {
        let (all, chunks) = decode(&[text("▁a"), byte(0xE4), byte(0xB8), byte(0xAD), text("b")]);
        assert_eq!(all, "a中b");
        assert_eq!(chunks, ["a", "", "", "中", "b", ""]);
    }

    #[test]
    fn invalid_bytes_become_one_replacement_each() {
        assert_eq!(
            decode(&[byte(0xE4), byte(0xB8), text("x")]).0,
            "\u{FFFD}\u{FFFD}x"
        );
        assert_eq!(decode(&[byte(0xFF), byte(b'A')]).0, "\u{FFFD}A");
        assert_eq!(decode(&[byte(0xE4), byte(0xB8)]).0, "\u{FFFD}\u{FFFD}");
        assert_eq!(
            decode(&[byte(0xE4), byte(0xB8), byte(0xAD), byte(0x80)]).0,
            "中\u{FFFD}"
        );
    }
}
