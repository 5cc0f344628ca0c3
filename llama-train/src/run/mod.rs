//! The run machinery that classification fine-tuning and language-model training share:
//! how a run is controlled, its seeded order, its resume file and folder's file names, and
//! the backend it trains on.

pub mod control;
pub mod inputs;
pub mod order;
pub mod record_file;
pub mod resume_file;
pub mod saving;
pub mod train_backend;

/// File name of a LoRA run's adapter in its folder (with the classifier head, for
/// fine-tuning).
pub const ADAPTER_FILE: &str = "adapter.safetensors";
