//! Incremental decoding for printing generated tokens as they arrive.

use super::decode::DecodeState;
use super::{Tokenizer, TokenizerError};

/// Turns ids into text one at a time; the concatenation of everything [`push`](Self::push)
/// and [`finish`](Self::finish) return equals [`Tokenizer::decode`] of all the ids.
///
/// Byte pieces that form one multi-byte character (e.g. an emoji spelled as four `<0xNN>`
/// pieces) are held back until the character is complete, so every chunk is valid text.
///
/// ```no_run
/// # fn main() -> Result<(), llama_model::TokenizerError> {
/// let tokenizer = llama_model::Tokenizer::from_file("tokenizer.model")?;
/// let mut stream = tokenizer.stream_decoder();
/// for id in [1, 15043, 3186] {
///     print!("{}", stream.push(id)?);
/// }
/// print!("{}", stream.finish());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    state: DecodeState,
}

impl<'a> StreamDecoder<'a> {
    pub(super) fn new(tokenizer: &'a Tokenizer) -> Self {
        Self {
            tokenizer,
            state: DecodeState::default(),
        }
    }

    /// Feeds one id; returns the text that is now final (often one word, possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String, TokenizerError> {
        let piece = self.tokenizer.piece(id)?;
        Ok(self.state.push(piece, self.tokenizer.text_options()))
    }

    /// Ends the stream, returning any incomplete trailing character as U+FFFD per byte.
    pub fn finish(mut self) -> String {
        self.state.finish()
    }
}
