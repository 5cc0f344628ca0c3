//! Sentence classification with Llama 2 on Burn: the exercise's SST-5 and CFIMDB tasks,
//! by zero-shot prompting and by fine-tuning a classifier head with Burn's Learner; and the
//! language model itself: its perplexity on text, and training it on text (`pretrain`).
//!
//! # Layout
//!
//! Two applications on shared infrastructure; each module imports only those listed before
//! it (a test of the workspace checks that no two top-level modules import each other):
//!
//! - [`data`]: labelled sentence files, padded sentence batches, text documents, prediction
//!   files, length-grouped order;
//! - [`fnv`] (run fingerprints) and [`metrics`] (accuracy, macro-F1, the epoch tally);
//! - [`report`]: progress bars and lines, `metrics.csv`, the curves, confusion matrices;
//! - [`distributed`]: data-parallel runs across processes and machines;
//! - [`run`]: what every training run shares (control, seeded order, the resume file);
//! - [`classify`]: the classifier, prompting, evaluation and fine-tuning;
//! - [`lm`]: perplexity and language-model training (`pretrain`), which never imports
//!   [`classify`].

pub mod classify;
pub mod data;
pub mod distributed;
pub mod fnv;
pub mod lm;
pub mod metrics;
pub mod report;
pub mod run;

pub use run::train_backend::TrainBackend;
