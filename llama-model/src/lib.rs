//! Llama 2 on Burn: the model of the CMU "minllama" exercise, its checkpoint formats,
//! its tokenizers, text generation and the exercise's AdamW.
//!
//! Everything is generic over Burn's [`Backend`](burn::tensor::backend::Backend).

pub mod adamw;
pub mod atomic_file;
pub mod attention;
pub mod checkpoint;
pub mod compare;
pub mod config;
pub mod exercise_checks;
pub mod feed_forward;
pub mod fixtures;
pub mod generate;
pub mod grad_clip;
pub mod half_weights;
pub mod kv_cache;
pub mod layer;
pub mod llama;
pub mod lora;
pub mod lora_file;
pub mod lora_linear;
pub mod param_source;
pub mod q8_kernel;
pub mod q8_matrix;
pub mod q8_product;
pub mod q8_weights;
pub mod rms_norm;
pub mod rope;
pub mod sampling;
pub mod seeded_dropout;
pub mod split_matmul;
pub mod tokenizer;
pub mod weight_layout;

pub use adamw::{AdamW, AdamWConfig};

pub use checkpoint::{load_checkpoint, CheckpointError, LoadOptions, LoadedCheckpoint};
pub use config::{ConfigError, LlamaConfig};
pub use llama::{Llama, LlamaOutput};
pub use tokenizer::{Tokenizer, TokenizerError};
