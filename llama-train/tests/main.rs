//! The integration tests of llama-train: fine-tuning, prompting, evaluation and
//! language-model training end to end, on the fixtures' stories260K model and data.
//!
//! One test binary for the package: each file is a module, so the generic model and
//! training code is instantiated and linked once.

mod common;

mod checkpointing;
mod classifier_record;
mod data;
mod finetune;
mod fused_attention;
mod lm_objective;
mod lora;
mod perplexity;
mod pretrain;
mod prompting;
mod train_step;
