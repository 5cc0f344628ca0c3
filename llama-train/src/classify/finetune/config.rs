//! The settings of a fine-tuning run ([`FinetuneConfig`], saved as `finetune.json`) and why
//! they can be refused ([`ConfigError`]).

use std::path::PathBuf;

use burn::config::Config;
use llama_model::lora::LoraConfig;
use llama_model::train::adamw::{validate_lr, AdamWError};
use llama_model::AdamWConfig;

use crate::classify::classifier::{
    validate_dropout, ClassifierError, FinetuneOption, SentencePosition,
};
use crate::data::sentences::DataOptions;

/// A [`FinetuneConfig`] value that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value is out of range.
    #[error("invalid fine-tuning config: {0}")]
    Invalid(String),
    /// The classifier settings are invalid (the dropout probability).
    #[error(transparent)]
    Classifier(#[from] ClassifierError),
    /// The optimizer settings are invalid.
    #[error(transparent)]
    Optimizer(#[from] AdamWError),
}

/// Settings of [`crate::classify::finetune::finetune`] (the exercise's `run_llama.py` options for
/// fine-tuning).
#[derive(Config, Debug)]
pub struct FinetuneConfig {
    /// Folder for checkpoints, metric logs and the saved classifier (created if missing).
    pub artifact_dir: PathBuf,
    /// Number of passes over the training set.
    #[config(default = 5)]
    pub epochs: usize,
    /// Constant learning rate of AdamW.
    #[config(default = 2e-5)]
    pub lr: f64,
    /// Sentences per batch (training and evaluation).
    #[config(default = 8)]
    pub batch_size: usize,
    /// Dropout on the sentence representation before the head.
    #[config(default = 0.3)]
    pub hidden_dropout_prob: f64,
    /// Seed of shuffling, dropout and head initialisation.
    #[config(default = 1337)]
    pub seed: u64,
    /// Text tokens kept per sentence (BOS goes in front, as in the exercise); applied when
    /// the datasets are tokenized (build them with [`Self::data_options`]) and saved so that
    /// evaluation tokenizes alike.
    #[config(default = "None")]
    pub max_sentence_len: Option<usize>,
    /// Train the head only (`pretrain`) or everything (`finetune`).
    #[config(default = "FinetuneOption::Finetune")]
    pub option: FinetuneOption,
    /// AdamW's decoupled weight decay.
    #[config(default = 0.0)]
    pub weight_decay: f64,
    /// Data-loading threads for the training and dev sets (0 loads on the training thread;
    /// more than 1 makes the batch order, hence the run, non-reproducible).
    #[config(default = 1)]
    pub num_workers: usize,
    /// Which hidden state represents a sentence.
    #[config(default = "SentencePosition::LastToken")]
    pub position: SentencePosition,
    /// A `metrics.csv` row, and off a terminal a progress line, every this many training
    /// steps (0: per-epoch rows and lines only).
    #[config(default = 50)]
    pub log_every: usize,
    /// Train LoRA adapters (and the head) instead of every weight; `None`: full fine-tuning.
    #[config(default = "None")]
    pub lora: Option<LoraConfig>,
    /// Batch sentences of similar length (Hugging Face's `group_by_length`, see
    /// [`crate::data::length_grouping`]) instead of the exercise's plain random order.
    #[config(default = false)]
    pub group_by_length: bool,
}

impl FinetuneConfig {
    /// Check the values: at least one epoch and one sentence per batch, a finite
    /// non-negative learning rate, dropout in `[0, 1)`.
    pub fn check(&self) -> Result<(), ConfigError> {
        let bad = |msg: String| Err(ConfigError::Invalid(msg));
        if self.epochs == 0 {
            return bad("epochs must be at least 1".into());
        }
        if self.batch_size == 0 {
            return bad("batch_size must be at least 1".into());
        }
        if self.max_sentence_len == Some(0) {
            return bad("max_sentence_len must be at least 1 (text tokens kept after BOS)".into());
        }
        validate_lr(self.lr)?;
        validate_dropout(self.hidden_dropout_prob)?;
        AdamWConfig::new()
            .with_weight_decay(self.weight_decay)
            .validate()?;
        if self.lora.is_some() && self.option == FinetuneOption::Pretrain {
            return bad(
                "LoRA trains adapters on the Llama, which the `pretrain` option freezes: use `finetune`"
                    .into(),
            );
        }
        Ok(())
    }

    /// How to tokenize the datasets for this run (`max_sentence_len`).
    pub fn data_options(&self) -> DataOptions {
        DataOptions::default().with_max_sentence_len(self.max_sentence_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_checks() {
        let ok = FinetuneConfig::new("out".into());
        assert!(ok.check().is_ok());
        assert_eq!((ok.epochs, ok.batch_size, ok.seed), (5, 8, 1337));
        assert_eq!((ok.lr, ok.hidden_dropout_prob), (2e-5, 0.3));
        assert_eq!(ok.option, FinetuneOption::Finetune);
        for bad in [
            FinetuneConfig::new("out".into()).with_epochs(0),
            FinetuneConfig::new("out".into()).with_batch_size(0),
            FinetuneConfig::new("out".into()).with_lr(-1.0),
            FinetuneConfig::new("out".into()).with_lr(f64::NAN),
            FinetuneConfig::new("out".into()).with_hidden_dropout_prob(1.0),
            FinetuneConfig::new("out".into()).with_weight_decay(-0.1),
            FinetuneConfig::new("out".into()).with_max_sentence_len(Some(0)),
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }
}
