//! The GGUF container (llama.cpp's model files, versions 2 and 3): header, metadata and
//! tensor directory, parsed over a memory map with every field checked against the file.
//!
//! Format-level only, so that the checkpoint reader (weights), the tokenizer (vocabulary)
//! and chat (template) can all read it; what the contents mean is theirs. The writer
//! (`writer.rs`, `encode.rs`) is its inverse, for `export --format gguf`.

mod container;
mod encode;
mod ggml_type;
mod metadata;
mod writer;

pub use container::{GgufFile, TensorInfo, MAGIC};
pub use encode::{encode, quantize_q8_0};
pub use ggml_type::GgmlType;
pub use metadata::Value;
pub use writer::{write_gguf, GgufWriteError, MetaValue, TensorEntry, ALIGNMENT};

use std::collections::BTreeMap;
use std::path::Path;

/// Whether the first bytes of a file are GGUF's magic.
pub fn is_gguf(head: &[u8]) -> bool {
    head.starts_with(MAGIC)
}

/// Why a GGUF file cannot be read (the caller names the file).
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The problem, in one line.
    #[error("{0}")]
    Corrupt(String),
}

/// The metadata of the GGUF file at `path` (for its vocabulary and chat template).
pub fn read_metadata(path: &Path) -> Result<BTreeMap<String, Value>, String> {
    GgufFile::open(path)
        .map(|file| file.metadata)
        .map_err(|e| e.to_string())
}

/// The metadata of a GGUF file held in memory.
pub fn metadata_of(bytes: &[u8]) -> Result<BTreeMap<String, Value>, String> {
    container::parse(bytes).map(|(_, metadata, _)| metadata)
}
