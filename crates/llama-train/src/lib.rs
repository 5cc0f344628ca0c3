//! Sentence classification with Llama 2 on Burn: the exercise's SST-5 and CFIMDB tasks,
//! by zero-shot prompting and by fine-tuning a classifier head with Burn's Learner.

pub mod classifier;
pub mod data;
pub mod dropout;
pub mod finetune;
pub mod metrics;
pub mod predictions;
pub mod prompting;
pub mod resume;
pub mod training_loop;
