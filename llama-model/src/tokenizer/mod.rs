//! The Llama 2 tokenizer: sentencepiece BPE with byte fallback, run by the `tokenizers` crate.
//!
//! [`Tokenizer::from_file`] reads any of the three files the Llama 2 ecosystem ships —
//! sentencepiece's `tokenizer.model`, llama2.c's `tokenizer.bin`, HuggingFace's
//! `tokenizer.json` — recognising the format from the content, not the file name. The first two
//! are converted to a `tokenizers` BPE model (see `builder.rs`) that produces the same ids as
//! sentencepiece; the third is used as `transformers` uses a model's own file (special tokens
//! in the text parsed, BOS from its post-processor, its own decoder), byte-level BPE included.
//!
//! The API follows the minllama assignment's `tokenizer.py`: [`Tokenizer::encode`] takes `bos`
//! / `eos` flags, `pad_id` is the id of the piece `<0x00>`, and [`Tokenizer::decode`] follows
//! sentencepiece (control pieces dropped, byte pieces joined into characters, the first
//! piece's leading space removed).

mod builder;
pub(crate) mod decode;
mod error;
mod format;
mod gguf;
mod gguf_bpe;
mod gguf_write;
mod huggingface;
mod llama2c;
mod sentencepiece;
mod stream;
mod vocab;

#[cfg(test)]
mod reference;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};

pub use error::TokenizerError;
pub use format::TokenizerFormat;
pub use stream::TextStream;
pub use vocab::PieceKind;

use decode::DecodeState;
use vocab::{Piece, TextOptions, Vocabulary, SPACE_SYMBOL};

/// The piece whose id pads batches (the assignment overrides sentencepiece's `pad_id = -1`).
pub const PAD_PIECE: &str = "<0x00>";
/// The beginning-of-sequence piece.
pub const BOS_PIECE: &str = "<s>";
/// The end-of-sequence piece.
pub const EOS_PIECE: &str = "</s>";

/// A loaded tokenizer: a `tokenizers` BPE tokenizer plus the piece table used for decoding.
///
/// Cheap to share (`&Tokenizer` is `Send + Sync`); cloning copies the vocabulary.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    vocab: Vocabulary,
    bos_id: u32,
    /// Whether `encode(.., bos = true, ..)` puts BOS first (a `tokenizer.json` may say no).
    adds_bos: bool,
    eos_id: u32,
    pad_id: u32,
    unk_id: Option<u32>,
    max_len: Option<usize>,
    format: TokenizerFormat,
    source: PathBuf,
}

impl Tokenizer {
    /// Loads a `tokenizer.model`, `tokenizer.bin` or `tokenizer.json`, whichever the file's
    /// content is.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        let path = path.as_ref();
        if Self::is_gguf_file(path) {
            // A model file: only its metadata is read, through a memory map.
            let meta =
                crate::gguf::read_metadata(path).map_err(|reason| gguf::invalid(path, reason))?;
            return Self::from_gguf_metadata(&meta, path);
        }
        let bytes = std::fs::read(path).map_err(|source| TokenizerError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&bytes, path)
    }

    /// Loads a tokenizer from the bytes of one of the supported files (errors name `<memory>`).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TokenizerError> {
        Self::parse(bytes, Path::new("<memory>"))
    }

    /// Whether the file at `path` starts with GGUF's magic.
    fn is_gguf_file(path: &Path) -> bool {
        let mut head = [0u8; 4];
        std::fs::File::open(path)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
            .is_ok()
            && crate::gguf::is_gguf(&head)
    }

    /// The tokenizer of a GGUF file's metadata (read from `path`).
    fn from_gguf_metadata(
        meta: &std::collections::BTreeMap<String, crate::gguf::Value>,
        path: &Path,
    ) -> Result<Self, TokenizerError> {
        let (inner, vocab, special) = gguf::parse(meta, path)?;
        let format = if gguf::is_byte_level(meta) {
            TokenizerFormat::GgufByteLevel
        } else {
            TokenizerFormat::Gguf
        };
        Self::assemble(inner, vocab, special, format, path)
    }

    fn parse(bytes: &[u8], path: &Path) -> Result<Self, TokenizerError> {
        if bytes.is_empty() {
            return Err(TokenizerError::EmptyFile {
                path: path.to_path_buf(),
            });
        }
        let format = format::detect(bytes).map_err(|reason| TokenizerError::UnknownFormat {
            path: path.to_path_buf(),
            reason,
        })?;
        let (inner, vocab) = match format {
            TokenizerFormat::SentencePiece => {
                let vocab = sentencepiece::parse(bytes, path)?;
                (builder::build(&vocab, path)?, vocab)
            }
            TokenizerFormat::Llama2c => {
                let vocab = llama2c::parse(bytes, path)?;
                (builder::build(&vocab, path)?, vocab)
            }
            TokenizerFormat::HuggingFaceJson => huggingface::parse(bytes, path)?,
            TokenizerFormat::Gguf | TokenizerFormat::GgufByteLevel => {
                let meta = crate::gguf::metadata_of(bytes)
                    .map_err(|reason| gguf::invalid(path, reason))?;
                return Self::from_gguf_metadata(&meta, path);
            }
        };
        let special = match format {
            TokenizerFormat::HuggingFaceJson => huggingface::special_tokens(&inner, path),
            _ => huggingface::SpecialTokens {
                bos: vocab.find(BOS_PIECE),
                eos: vocab.find(EOS_PIECE),
                pad: vocab.find(PAD_PIECE),
                adds_bos: true,
            },
        };
        Self::assemble(inner, vocab, special, format, path)
    }

    /// The tokenizer of a parsed file, checking that it has BOS, EOS and padding ids.
    fn assemble(
        inner: tokenizers::Tokenizer,
        vocab: Vocabulary,
        special: huggingface::SpecialTokens,
        format: TokenizerFormat,
        path: &Path,
    ) -> Result<Self, TokenizerError> {
        let required = |piece: &str, purpose: &'static str, found: Option<u32>| {
            found.ok_or_else(|| TokenizerError::MissingPiece {
                path: path.to_path_buf(),
                piece: piece.to_string(),
                purpose,
            })
        };
        let (bos, eos, pad) = (special.bos, special.eos, special.pad);
        let bos_id = required(BOS_PIECE, "beginning-of-sequence id", bos)?;
        let eos_id = required(EOS_PIECE, "end-of-sequence id", eos)?;
        let pad_id = required(PAD_PIECE, "padding id", pad)?;
        let unk_id = vocab
            .pieces
            .iter()
            .position(|p| p.kind == PieceKind::Unknown)
            .map(|id| id as u32);

        Ok(Self {
            inner,
            vocab,
            bos_id,
            adds_bos: special.adds_bos,
            eos_id,
            pad_id,
            unk_id,
            max_len: None,
            format,
            source: path.to_path_buf(),
        })
    }

    /// Sets the maximum number of text tokens [`encode`](Self::encode) keeps, like the
    /// assignment's `Tokenizer(max_len=...)`; `None` (the default) keeps everything.
    #[must_use]
    pub fn with_max_len(mut self, max_len: Option<usize>) -> Self {
        self.max_len = max_len;
        self
    }

    /// The maximum set by [`with_max_len`](Self::with_max_len).
    pub fn max_len(&self) -> Option<usize> {
        self.max_len
    }

    /// Encodes `text` like sentencepiece, optionally with BOS in front and EOS at the end. A
    /// `tokenizer.json` whose `tokenizer_config.json` says `add_bos_token: false` (or whose
    /// post-processor puts no BOS, where it says nothing) gets no BOS.
    ///
    /// If a maximum length is set ([`with_max_len`](Self::with_max_len)) the text's ids are cut
    /// to it first, as in [`encode_truncated`](Self::encode_truncated).
    pub fn encode(&self, text: &str, bos: bool, eos: bool) -> Result<Vec<u32>, TokenizerError> {
        match self.max_len {
            Some(max_len) => self.encode_truncated(text, bos, eos, max_len),
            None => self.encode_impl(text, bos, eos, usize::MAX),
        }
    }

    /// Encodes `text`, keeping only its first `max_len` ids, then adds BOS/EOS.
    ///
    /// This is the order of the minllama assignment's `tokenizer.py`
    /// (`t = sp.encode(s); t = t[:max_len]; [bos] + t + [eos]`), so the result can hold
    /// `max_len + 2` ids and an EOS survives truncation.
    pub fn encode_truncated(
        &self,
        text: &str,
        bos: bool,
        eos: bool,
        max_len: usize,
    ) -> Result<Vec<u32>, TokenizerError> {
        self.encode_impl(text, bos, eos, max_len)
    }

    fn encode_impl(
        &self,
        text: &str,
        bos: bool,
        eos: bool,
        max_len: usize,
    ) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        let body = encoding.get_ids();
        let body = &body[..body.len().min(max_len)];
        let mut ids = Vec::with_capacity(body.len() + 2);
        if bos && self.adds_bos {
            ids.push(self.bos_id);
        }
        ids.extend_from_slice(body);
        if eos {
            ids.push(self.eos_id);
        }
        Ok(ids)
    }

    /// Decodes ids to text the way sentencepiece does (a `tokenizer.json`: its own decoder,
    /// special tokens skipped): BOS/EOS and other control pieces are dropped, `<0xNN>` pieces
    /// become bytes (U+FFFD for each byte that is not part of a valid character), `<unk>`
    /// becomes `" ⁇ "`, and the first piece's leading space is removed.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        if self.format.has_own_decoder() {
            return self.decode_json(ids);
        }
        let mut state = DecodeState::default();
        let mut text = String::new();
        for &id in ids {
            text.push_str(&state.push(self.piece(id)?, &self.vocab.options));
        }
        text.push_str(&state.finish());
        Ok(text)
    }

    /// A `tokenizer.json`'s own decoder, special tokens skipped, as `transformers` decodes
    /// (byte-level pieces that do not form UTF-8 become U+FFFD).
    fn decode_json(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        for &id in ids {
            self.piece(id)?;
        }
        self.inner
            .decode(ids, true)
            .map_err(|e| TokenizerError::Encode(e.to_string()))
    }

    /// The bytes one token prints in llama2.c's streaming `decode(prev, id)`: the piece with
    /// `▁` as a space, the raw byte for `<0xNN>`, nothing for control pieces; directly after
    /// BOS the leading space is dropped.
    ///
    /// Bytes rather than text because a byte piece can be part of a multi-byte character;
    /// [`stream_decoder`](Self::stream_decoder) assembles complete characters instead.
    pub fn decode_piece(&self, prev_id: u32, id: u32) -> Result<Vec<u8>, TokenizerError> {
        let piece = self.piece(id)?;
        let text = match piece.kind {
            PieceKind::Control => return Ok(Vec::new()),
            PieceKind::Byte(byte) => return Ok(vec![byte]),
            PieceKind::Unknown => self.vocab.options.unk_surface.clone(),
            _ => piece.text.replace(SPACE_SYMBOL, " "),
        };
        let text = match text.strip_prefix(' ') {
            Some(rest) if prev_id == self.bos_id && self.vocab.options.add_dummy_prefix => rest,
            _ => &text,
        };
        Ok(text.as_bytes().to_vec())
    }

    /// A decoder that turns ids into text incrementally (for printing while generating).
    pub fn stream_decoder(&self) -> TextStream<'_> {
        TextStream::new(self)
    }

    /// The piece of `id` in sentencepiece spelling (`▁Hello`, `<0x0A>`, `<s>`), if it exists.
    pub fn id_to_piece(&self, id: u32) -> Option<&str> {
        self.vocab.pieces.get(id as usize).map(|p| p.text.as_str())
    }

    /// The id of a piece given in sentencepiece spelling, if it is in the vocabulary.
    pub fn piece_to_id(&self, piece: &str) -> Option<u32> {
        self.inner.token_to_id(piece)
    }

    /// What kind of piece `id` is (normal, control, byte ...), if it exists.
    pub fn piece_kind(&self, id: u32) -> Option<PieceKind> {
        self.vocab.pieces.get(id as usize).map(|p| p.kind)
    }

    /// Number of pieces (32000 for Llama 2, 512 for tok512).
    pub fn vocab_size(&self) -> usize {
        self.vocab.pieces.len()
    }

    /// Id of BOS: `<s>` (1 for Llama 2), or what a `tokenizer.json`'s post-processor adds.
    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }

    /// Whether [`encode`](Self::encode) puts BOS first when asked to.
    pub fn adds_bos(&self) -> bool {
        self.adds_bos
    }

    /// Id of EOS: `</s>` (2 for Llama 2), or a `tokenizer.json`'s `eos_token`.
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// Id of the piece `<0x00>`, used to pad batches (3 for Llama 2 and tok512).
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Id of `<unk>`, if the vocabulary has one (0 for Llama 2).
    pub fn unk_id(&self) -> Option<u32> {
        self.unk_id
    }

    /// The format the tokenizer was loaded from.
    pub fn format(&self) -> TokenizerFormat {
        self.format
    }

    /// The file it was loaded from (`<memory>` for [`from_bytes`](Self::from_bytes)).
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The underlying `tokenizers` tokenizer (normaliser, BPE model with merges, decoder).
    ///
    /// Encode through it with `add_special_tokens = false`; BOS/EOS are added by
    /// [`encode`](Self::encode), not by a post-processor.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Writes the tokenizer as a HuggingFace `tokenizer.json`, loadable again by
    /// [`from_file`](Self::from_file) or by any `tokenizers` binding.
    pub fn save_json(&self, path: impl AsRef<Path>, pretty: bool) -> Result<(), TokenizerError> {
        let path = path.as_ref();
        self.inner
            .save(path, pretty)
            .map_err(|e| TokenizerError::Save {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
    }

    /// The piece of `id`, or [`TokenizerError::InvalidId`].
    fn piece(&self, id: u32) -> Result<&Piece, TokenizerError> {
        self.vocab
            .pieces
            .get(id as usize)
            .ok_or(TokenizerError::InvalidId {
                id,
                vocab_size: self.vocab.pieces.len(),
            })
    }

    fn text_options(&self) -> &TextOptions {
        &self.vocab.options
    }
}

impl fmt::Debug for Tokenizer {
    // The vocabulary and merges are far too long to print.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("source", &self.source)
            .field("format", &self.format)
            .field("vocab_size", &self.vocab_size())
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("pad_id", &self.pad_id)
            .field("max_len", &self.max_len)
            .finish_non_exhaustive()
    }
}
