//! Incremental decoding: generated token ids turned into printable text one at a time.
//!
//! A character outside the vocabulary is spelled with byte-fallback pieces, e.g. `’` as
//! `<0xE2><0x80><0x99>`: printing each byte as it arrives would print invalid UTF-8 (or
//! three replacement characters), so the bytes of an unfinished character are held back until
//! it is complete. The rules are sentencepiece's ([`DecodeState`]): the concatenated chunks
//! of a stream over `ids` equal `tokenizer.decode(ids)`, with one exception taken from
//! llama2.c's streaming `decode(prev, token)`: a BOS in the middle of a stream starts a new
//! text, so the piece after it loses its leading space too (`Tokenizer::decode` keeps it).
//!
//! A `tokenizer.json` (byte-level BPE included) is decoded by its own decoder instead, through
//! `tokenizers`' stream step: a chunk is printed once the text of the ids so far extends the
//! text already printed and does not end in U+FFFD (an unfinished character).
//!
//! Leading space: the first piece of a text loses its leading space (`▁Once` prints `Once`).
//! A stream that continues a text already shown ([`TextStream::after`], e.g. new tokens
//! after an echoed prompt) keeps it (`▁were` prints ` were`).

use super::decode::DecodeState;
use super::{Tokenizer, TokenizerError};

/// Decodes a stream of token ids into text chunks, each valid UTF-8 (see the
/// module docs).
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use llama_model::tokenizer::TextStream;
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
    state: DecodeState,
    /// The `tokenizer.json` stream's state, for that format.
    json: Option<JsonStream>,
}

/// The state `tokenizers::tokenizer::step_decode_stream` keeps between ids.
#[derive(Debug, Clone, Default)]
struct JsonStream {
    ids: Vec<u32>,
    prefix: String,
    prefix_index: usize,
}

impl JsonStream {
    fn step(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String, TokenizerError> {
        tokenizers::tokenizer::step_decode_stream(
            tokenizer.inner(),
            vec![id],
            true,
            &mut self.ids,
            &mut self.prefix,
            &mut self.prefix_index,
        )
        .map(Option::unwrap_or_default)
        .map_err(|e| TokenizerError::Encode(e.to_string()))
    }

    /// What the held-back ids decode to past the printed prefix (lossy).
    fn rest(&self, tokenizer: &Tokenizer) -> String {
        let text = tokenizer
            .inner()
            .decode(&self.ids, true)
            .unwrap_or_default();
        text.get(self.prefix.len()..)
            .unwrap_or_default()
            .to_string()
    }
}

impl<'t> TextStream<'t> {
    /// A stream at the start of a text: the first piece's leading space is dropped.
    pub fn new(tokenizer: &'t Tokenizer) -> Self {
        let json = tokenizer
            .format()
            .has_own_decoder()
            .then(JsonStream::default);
        Self {
            tokenizer,
            state: DecodeState::default(),
            json,
        }
    }

    /// A stream continuing after `prev_id`, a token whose text was already shown (after a
    /// BOS, that is the start of a text).
    pub fn after(tokenizer: &'t Tokenizer, prev_id: u32) -> Self {
        let mut stream = Self::new(tokenizer);
        if let Some(json) = &mut stream.json {
            // The text of `prev_id` was shown: decode after it, print only what follows.
            let _ = json.step(tokenizer, prev_id);
        } else if prev_id != tokenizer.bos_id() {
            stream.state = DecodeState::continuing();
        }
        stream
    }

    /// Feeds one id; returns the text that is now complete (often one word, possibly empty
    /// while a multi-byte character is unfinished). Errors on an id outside the vocabulary.
    pub fn push(&mut self, id: u32) -> Result<String, TokenizerError> {
        let piece = self.tokenizer.piece(id)?;
        if let Some(json) = &mut self.json {
            return json.step(self.tokenizer, id);
        }
        let out = self.state.push(piece, self.tokenizer.text_options());
        if id == self.tokenizer.bos_id() {
            // llama2.c: a BOS starts a new text.
            self.state.restart();
        }
        Ok(out)
    }

    /// Bytes of an unfinished character held back.
    pub fn pending(&self) -> &[u8] {
        self.state.pending()
    }

    /// Ends the stream, returning an unfinished trailing character as U+FFFD per byte.
    pub fn finish(mut self) -> String {
        match &self.json {
            Some(json) => json.rest(self.tokenizer),
            None => self.state.finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::fixture;

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

    #[test]
    fn a_bos_in_the_middle_starts_a_new_text() {
        let tok = tok512();
        let once = tok.encode("Once", true, false).unwrap();
        let ids = [once.clone(), once].concat();
        let mut stream = TextStream::new(&tok);
        let text: String = ids.iter().map(|&id| stream.push(id).unwrap()).collect();
        assert_eq!(text, "OnceOnce", "llama2.c drops the space after each BOS");
        assert_eq!(
            tok.decode(&ids).unwrap(),
            "Once Once",
            "sentencepiece keeps it"
        );
    }
}
