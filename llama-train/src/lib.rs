//! Sentence classification with Llama 2 on Burn: the exercise's SST-5 and CFIMDB tasks,
//! by zero-shot prompting and by fine-tuning a classifier head with Burn's Learner; and the
//! language model itself: its perplexity on text, and training it on text (`pretrain`).

pub mod classify;
pub mod data;
pub mod distributed;
pub mod fnv;
pub mod lm;
pub mod metrics;
pub mod report;
pub mod run;

pub use run::train_backend::TrainBackend;
