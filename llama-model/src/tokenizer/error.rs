//! The error type of the tokenizer module.

use std::path::PathBuf;

/// Everything that can go wrong while loading, using or saving a [`Tokenizer`](super::Tokenizer).
///
/// Loading errors name the file (`<memory>` for [`Tokenizer::from_bytes`](super::Tokenizer::from_bytes))
/// and say what is wrong with it, so that a user can tell a missing file from a wrong one.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The file could not be read (missing, a directory, no permission ...).
    #[error("cannot read tokenizer file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The file is empty.
    #[error("tokenizer file {path} is empty")]
    EmptyFile {
        /// The file.
        path: PathBuf,
    },

    /// The content is none of the supported formats.
    #[error(
        "{path} is not a tokenizer: expected a sentencepiece tokenizer.model (protobuf), \
         a llama2.c tokenizer.bin or a HuggingFace tokenizer.json ({reason})"
    )]
    UnknownFormat {
        /// The file.
        path: PathBuf,
        /// Why each format was ruled out.
        reason: String,
    },

    /// A sentencepiece `tokenizer.model` that cannot be decoded or is inconsistent.
    #[error("{path}: invalid sentencepiece model: {reason}")]
    InvalidModel {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A llama2.c `tokenizer.bin` that ends in the middle of an entry.
    #[error("{path}: truncated llama2.c tokenizer.bin: {reason}")]
    TruncatedBin {
        /// The file.
        path: PathBuf,
        /// Which entry is cut and where.
        reason: String,
    },

    /// A llama2.c `tokenizer.bin` with an impossible field (negative length, invalid UTF-8 ...).
    #[error("{path}: invalid llama2.c tokenizer.bin: {reason}")]
    InvalidBin {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A `tokenizer.json` that the `tokenizers` crate rejects or that is not a usable vocabulary.
    #[error("{path}: invalid HuggingFace tokenizer.json: {reason}")]
    InvalidJson {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// The file holds no pieces at all.
    #[error("{path}: the tokenizer's vocabulary is empty")]
    EmptyVocab {
        /// The file.
        path: PathBuf,
    },

    /// A piece the model needs (`<s>`, `</s>`, `<0x00>`) is not in the vocabulary.
    #[error("{path}: the vocabulary has no {piece:?} piece ({purpose})")]
    MissingPiece {
        /// The file.
        path: PathBuf,
        /// The missing piece, e.g. `<0x00>`.
        piece: String,
        /// What it is needed for.
        purpose: &'static str,
    },

    /// Two ids share one piece, so text could not be mapped back to a single id.
    #[error("{path}: the piece {piece:?} appears twice (ids {first} and {second})")]
    DuplicatePiece {
        /// The file.
        path: PathBuf,
        /// The repeated piece.
        piece: String,
        /// Its first id.
        first: u32,
        /// Its second id.
        second: u32,
    },

    /// A valid file that uses a feature this implementation does not reproduce.
    #[error("{path}: unsupported tokenizer: {reason}")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// The feature.
        reason: String,
    },

    /// The `tokenizers` crate refused the vocabulary/merges built from the file.
    #[error("{path}: cannot build the BPE tokenizer: {reason}")]
    Build {
        /// The file.
        path: PathBuf,
        /// The `tokenizers` error.
        reason: String,
    },

    /// The `tokenizers` crate failed to encode a text.
    #[error("encoding failed: {0}")]
    Encode(String),

    /// An id outside the vocabulary was given to a decoding function.
    #[error("token id {id} is outside the vocabulary (size {vocab_size})")]
    InvalidId {
        /// The id.
        id: u32,
        /// The vocabulary size.
        vocab_size: usize,
    },

    /// Writing a `tokenizer.json` failed.
    #[error("cannot save the tokenizer to {path}: {reason}")]
    Save {
        /// The destination.
        path: PathBuf,
        /// The `tokenizers` / I/O error.
        reason: String,
    },
}
