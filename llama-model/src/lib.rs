//! Llama 2 on Burn: the model of the CMU "minllama" exercise, its checkpoint formats,
//! its tokenizers, text generation and the exercise's AdamW.
//!
//! Everything is generic over Burn's [`Backend`](burn::tensor::backend::Backend).
//!
//! # Example
//!
//! Load a checkpoint (any format [`load_checkpoint`] recognises) and a tokenizer, and
//! continue a prompt (`examples/generate.rs`; `cargo run --example generate` runs it on the
//! fixtures' stories260K):
//!
//! ```no_run
#![doc = include_str!("../examples/generate.rs")]
//! ```
//!
//! # The public API
//!
//! - [`load_checkpoint`] → [`LoadedCheckpoint`] (a [`Llama`] and its [`LlamaConfig`]);
//!   [`checkpoint::save_model`] and [`checkpoint::save_llama2c_bin`] write one back out.
//! - The model, [`Llama`]: [`Llama::forward`] (logits and final hidden states of a batch),
//!   [`Llama::hidden_at`] (final hidden states at chosen positions, for classifiers).
//! - The [`Tokenizer`]: sentencepiece `.model`, llama2.c `.bin` or Hugging Face `tokenizer.json`.
//! - Generation ([`generation::generate`]): [`generation::generate::generate`],
//!   [`generation::generate::generate_text`], [`generation::generate::generate_batch`] and the
//!   step-by-step [`generation::generate::Generator`]; [`generation::sampling::Sampler`].
//! - [`lora`]: LoRA adapters on a whole model and their files.
//! - [`AdamW`] (the exercise's optimizer) and [`train`]'s clipping and seeded dropout.
//! - [`exercise`]: the exercise's own checks.
//!
//! The layers themselves (attention, feed-forward, RMSNorm, RoPE, the KV cache, the
//! projections) are internal to the crate; [`weights`] and [`model::param_source`] stay
//! public for this workspace's training crate and command line (int8 products, loading a
//! saved classifier without drawing random weights).

pub mod atomic_file;
pub mod checkpoint;
#[cfg(any(test, feature = "test-support"))]
pub mod crafted;
pub mod exercise;
pub mod fixtures;
pub mod generation;
pub mod gguf;
pub mod lora;
pub mod model;
pub mod tokenizer;
pub mod train;
pub mod weights;

pub use train::adamw::{AdamW, AdamWConfig};

pub use checkpoint::{
    load_checkpoint, load_checkpoint_as, CheckpointError, LoadOptions, LoadPrecision,
    LoadedCheckpoint,
};
pub use model::config::{ConfigError, LlamaConfig};
pub use model::llama::{Llama, LlamaOutput};
pub use tokenizer::{Tokenizer, TokenizerError};
