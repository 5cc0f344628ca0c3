//! The language model on text: perplexity, the LM objective, the packed corpus, the learning-
//! rate schedule, and language-model training (`pretrain`).

pub mod corpus;
pub mod objective;
pub mod perplexity;
pub mod pretrain;
pub mod schedule;
