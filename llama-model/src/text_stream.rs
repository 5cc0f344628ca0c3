//! Turning generated token ids into printable text one token at a time.
//!
//! A character outside the vocabulary is spelled with byte-fallback pieces, e.g. `’` as
//! `<0xE2><0x80><0x99>`: printing each byte as it arrives would print invalid UTF-8 (or
//! three replacement characters). [`Utf8Buffer`] holds the bytes of an unfinished character
//! back until it is complete; [`TextStream`] feeds it the bytes each token prints
//! ([`Tokenizer::decode_piece`], llama2.c's `decode(prev, token)`).
//!
//! Leading space: as in sentencepiece and llama2.c, the first piece of a text (the piece
//! after BOS) loses its leading space (`▁Once` prints `Once`). A stream that continues a
//! text already shown ([`TextStream::after`], e.g. new tokens after an echoed prompt) keeps
//! it (`▁were` prints ` were`). Like llama2.c, a BOS in the middle of a stream restarts a
//! text, so the piece after it also loses its space (`Tokenizer::decode` keeps it there).

use crate::tokenizer::{PieceKind, Tokenizer, TokenizerError};

/// Assembles UTF-8 text from bytes that arrive in arbitrary pieces.
///
/// Complete characters are released as soon as their last byte arrives; bytes that can
/// never form a character are released as one U+FFFD each (sentencepiece's rule), and
/// [`finish`](Self::finish) or [`flush`](Self::flush) releases an unfinished character the
/// same way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Utf8Buffer {
    /// Bytes of a character whose remaining bytes have not arrived yet (at most 3).
    pending: Vec<u8>,
}

impl Utf8Buffer {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `bytes`; returns the text that is now complete (possibly empty).
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        self.drain(false)
    }

    /// Releases everything, an unfinished character as one U+FFFD per byte (for when the
    /// byte run is known to be over: a text piece follows, or the stream ends).
    pub fn flush(&mut self) -> String {
        self.drain(true)
    }

    /// Ends the stream: [`flush`](Self::flush).
    pub fn finish(mut self) -> String {
        self.flush()
    }

    /// The bytes held back.
    pub fn pending(&self) -> &[u8] {
        &self.pending
    }

    /// Moves complete characters (and invalid bytes, as U+FFFD) out of `pending`; with
    /// `all`, an incomplete trailing character is invalid too.
    fn drain(&mut self, all: bool) -> String {
        let mut out = String::new();
        crate::tokenizer::decode::drain_utf8(&mut self.pending, &mut out, all);
        out
    }
}

/// Decodes a stream of token ids into text chunks, each valid UTF-8.
///
/// The concatenated chunks of a stream started with [`new`](Self::new) over `ids` (with or
/// without a leading BOS) equal `tokenizer.decode(ids)` unless a BOS occurs after the start
/// (see the module documentation).
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use llama_model::text_stream::TextStream;
/// let tokenizer = llama_model::Tokenizer::from_file("tok512.bin")?;
/// let prompt = tokenizer.encode("Once upon a time", true, false)?;
/// print!("{}", tokenizer.decode(&prompt)?);
/// // Continue after the prompt's last token, so the first new word keeps its space.
/// let mut stream = TextStream::after(&tokenizer, *prompt.last().unwrap());
/// for id in [432, 383] {
///     print!("{}", stream.push(id)?);
/// }
/// print!("{}", stream.finish());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct TextStream<'t> {
    tokenizer: &'t Tokenizer,
    /// The previous token; decides whether the next piece's leading space is dropped.
    prev: u32,
    buffer: Utf8Buffer,
}

impl<'t> TextStream<'t> {
    /// A stream at the start of a text: the first piece's leading space is dropped.
    pub fn new(tokenizer: &'t Tokenizer) -> Self {
        // Starting "after BOS" gives the start-of-text rule whether or not the ids begin
        // with BOS (a BOS itself prints nothing and keeps the rule for the next piece).
        Self::after(tokenizer, tokenizer.bos_id())
    }

    /// A stream continuing after `prev_id`, a token whose text was already shown.
    pub fn after(tokenizer: &'t Tokenizer, prev_id: u32) -> Self {
        Self {
            tokenizer,
            prev: prev_id,
            buffer: Utf8Buffer::new(),
        }
    }

    /// Feeds one id; returns the text that is now complete (often one word, possibly empty
    /// while a multi-byte character is unfinished). Errors on an id outside the vocabulary.
    pub fn push(&mut self, id: u32) -> Result<String, TokenizerError> {
        let bytes = self.tokenizer.decode_piece(self.prev, id)?;
        let is_byte = matches!(self.tokenizer.piece_kind(id), Some(PieceKind::Byte(_)));
        self.prev = id;
        if is_byte {
            return Ok(self.buffer.push(&bytes));
        }
        // Any other piece ends a run of byte pieces: an unfinished character there is
        // invalid (sentencepiece decodes each byte run on its own).
        let mut out = self.buffer.flush();
        out.push_str(&String::from_utf8_lossy(&bytes));
        Ok(out)
    }

    /// Bytes of an unfinished character held back.
    pub fn pending(&self) -> &[u8] {
        self.buffer.pending()
    }

    /// Ends the stream, returning an unfinished trailing character as U+FFFD per byte.
    pub fn finish(self) -> String {
        self.buffer.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::fixture;

    fn chunks(parts: &[&[u8]]) -> (Vec<String>, String) {
        let mut buffer = Utf8Buffer::new();
        let out: Vec<String> = parts.iter().map(|p| buffer.push(p)).collect();
        (out, buffer.finish())
    }

    #[test]
    fn a_character_split_over_byte_pieces_is_held_back() {
        // U+2019 RIGHT SINGLE QUOTATION MARK = E2 80 99.
        let (out, rest) = chunks(&[b"don", &[0xE2], &[0x80], &[0x99], b"t"]);
        assert_eq!(out, ["don", "", "", "\u{2019}", "t"]);
        assert_eq!(rest, "");
        // A four-byte emoji arriving two bytes at a time.
        let (out, _) = chunks(&[&[0xF0, 0x9F], &[0x98, 0x80]]);
        assert_eq!(out, ["", "\u{1F600}"]);
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        // A lone continuation byte and an invalid lead byte are released at once.
        let (out, _) = chunks(&[&[0x80], &[0xFF], b"a"]);
        assert_eq!(out, ["\u{FFFD}", "\u{FFFD}", "a"]);
        // A character cut by an ASCII byte: both held bytes are broken.
        let (out, _) = chunks(&[&[0xE2, 0x80], b"x"]);
        assert_eq!(out, ["", "\u{FFFD}\u{FFFD}x"]);
        // An unfinished character at the end.
        let (out, rest) = chunks(&[b"ok", &[0xE2, 0x80]]);
        assert_eq!(
            (out.concat(), rest),
            ("ok".into(), "\u{FFFD}\u{FFFD}".into())
        );
        let mut b = Utf8Buffer::new();
        assert_eq!(b.push(&[0xE2]), "");
        assert_eq!(b.pending(), &[0xE2]);
        assert_eq!(b.flush(), "\u{FFFD}");
        assert!(b.pending().is_empty());
    }

    fn tok512() -> Tokenizer {
        Tokenizer::from_file(fixture("models/stories260K/tok512.bin")).expect("tok512 loads")
    }

    fn byte_id(tok: &Tokenizer, b: u8) -> u32 {
        tok.piece_to_id(&format!("<0x{b:02X}>"))
            .expect("byte piece")
    }

    #[test]
    fn stream_joins_byte_pieces_and_strips_the_first_space() {
        let tok = tok512();
        let mut ids = tok.encode("Lily said", true, false).unwrap();
        let quote = [0xE2u8, 0x80, 0x99].map(|b| byte_id(&tok, b));
        ids.extend(quote);
        ids.extend(tok.encode("s toy", false, false).unwrap());

        let mut stream = TextStream::new(&tok);
        let mut pieces = vec![];
        for &id in &ids {
            pieces.push(stream.push(id).unwrap());
        }
        assert!(stream.pending().is_empty());
        pieces.push(stream.finish());
        let text = pieces.concat();
        assert_eq!(text, tok.decode(&ids).unwrap());
        assert!(text.starts_with("Lily said\u{2019}"), "{text:?}");
        // Every chunk is valid text; the quote appears whole in one chunk.
        assert!(pieces.iter().any(|p| p == "\u{2019}"), "{pieces:?}");
        assert!(!pieces.iter().any(|p| p.contains('\u{FFFD}')), "{pieces:?}");

        // Without BOS the first piece still loses its space.
        let ids = tok.encode("Once upon", false, false).unwrap();
        let mut stream = TextStream::new(&tok);
        let text: String = ids.iter().map(|&id| stream.push(id).unwrap()).collect();
        assert_eq!(text, "Once upon");
    }

    #[test]
    fn continuing_after_a_prompt_keeps_the_space() {
        let tok = tok512();
        let prompt = tok.encode("Once upon a", true, false).unwrap();
        let more = tok.encode(" time", false, false).unwrap();
        let mut stream = TextStream::after(&tok, *prompt.last().unwrap());
        let text: String = more.iter().map(|&id| stream.push(id).unwrap()).collect();
        assert!(text.starts_with(' '), "{text:?}");
        assert_eq!(
            tok.decode(&prompt).unwrap() + &text,
            tok.decode(&[prompt, more].concat()).unwrap()
        );
    }

    #[test]
    fn a_text_piece_ends_an_unfinished_byte_run() {
        let tok = tok512();
        let mut stream = TextStream::new(&tok);
        assert_eq!(stream.push(byte_id(&tok, 0xE2)).unwrap(), "");
        assert_eq!(stream.push(byte_id(&tok, 0x80)).unwrap(), "");
        let a = tok.encode("a", false, false).unwrap();
        // BOS (a control piece) also ends the run.
        assert_eq!(stream.push(tok.bos_id()).unwrap(), "\u{FFFD}\u{FFFD}");
        assert_eq!(stream.push(a[0]).unwrap(), "a");
        assert!(matches!(
            stream.push(100_000),
            Err(TokenizerError::InvalidId { id: 100_000, .. })
        ));
    }
}
