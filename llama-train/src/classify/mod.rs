//! Sentence classification: the fine-tuned classifier, zero-shot prompting, evaluation,
//! and fine-tuning itself.

pub mod classifier;
pub mod evaluate;
pub mod finetune;
pub mod prompting;
mod record_check;
