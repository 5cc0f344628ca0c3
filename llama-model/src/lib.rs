//! Llama 2 on Burn: the model of the CMU "minllama" exercise, its checkpoint formats,
//! its tokenizers, text generation and the exercise's AdamW.
//!
//! Everything is generic over Burn's [`Backend`](burn::tensor::backend::Backend).

pub mod atomic_file;
pub mod checkpoint;
pub mod exercise;
pub mod fixtures;
pub mod generation;
pub mod lora;
pub mod model;
pub mod tokenizer;
pub mod train;
pub mod weights;

pub use train::adamw::{AdamW, AdamWConfig};

pub use checkpoint::{load_checkpoint, CheckpointError, LoadOptions, LoadedCheckpoint};
pub use model::config::{ConfigError, LlamaConfig};
pub use model::llama::{Llama, LlamaOutput};
pub use tokenizer::{Tokenizer, TokenizerError};
