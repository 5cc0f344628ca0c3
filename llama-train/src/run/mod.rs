//! The run machinery that classification fine-tuning and language-model training share.

pub mod fnv;
pub mod train_backend;
