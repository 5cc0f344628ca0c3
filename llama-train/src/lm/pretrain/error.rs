//! Why language-model training failed: [`PretrainError`] (each variant about a file names
//! it).

use std::path::PathBuf;

use llama_model::lora::file::LoraFileError;
use llama_model::lora::LoraError;
use llama_model::train::adamw::AdamWError;
use llama_model::CheckpointError;

use crate::data::documents::TextError;
use crate::lm::pretrain::files::{LAST_MODEL_FILE, MODEL_FILE};
use crate::lm::pretrain::run::NO_BEST_YET;
use crate::run::resume_file::ResumeError;

/// Why [`crate::lm::pretrain::pretrain`] failed.
#[derive(Debug, thiserror::Error)]
pub enum PretrainError {
    /// Data-parallel training failed (joining, or an exchange with another rank).
    #[error(transparent)]
    Collective(#[from] crate::distributed::settings::CollectiveError),
    /// A [`PretrainConfig`](crate::lm::pretrain::config::PretrainConfig) value is out of range.
    #[error("invalid pretraining config: {0}")]
    InvalidConfig(String),
    /// The optimizer settings are invalid.
    #[error(transparent)]
    Optimizer(#[from] AdamWError),
    /// The LoRA settings do not fit the model.
    #[error(transparent)]
    Lora(#[from] LoraError),
    /// The LoRA adapter could not be written.
    #[error(transparent)]
    Adapter(#[from] LoraFileError),
    /// A text could not be read, tokenized or scored.
    #[error(transparent)]
    Text(#[from] TextError),
    /// The training text is too short for one window.
    #[error(
        "the training text holds {tokens} tokens, fewer than one window of {window} (seq_len + 1): pass more text or a smaller --seq-len"
    )]
    TooLittleText {
        /// Tokens in the training documents.
        tokens: usize,
        /// Tokens per window.
        window: usize,
    },
    /// No validation document.
    #[error("no validation text: {0}")]
    NoValidation(String),
    /// The best model could not be written.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A file or folder could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Burn's record of the model or the optimizer could not be written or read.
    #[error("{path}: {detail}")]
    Record {
        /// The record file.
        path: PathBuf,
        /// Burn's error.
        detail: String,
    },
    /// The run cannot be resumed.
    #[error(transparent)]
    Resume(#[from] ResumeError),
    /// The run stopped early (Ctrl-C or the step budget) and was saved, with its last
    /// weights as a model beside the best one.
    #[error(
        "pretraining {} after step {step}; saved in {}: run the same command with --resume to continue; the weights of step {step} are {LAST_MODEL_FILE}; {}",
        if *.interrupted { "interrupted" } else { "stopped (step budget spent)" },
        .dir.display(),
        .best.map_or(NO_BEST_YET.to_string(), |b| format!("the best model (step {b}) is {MODEL_FILE}"))
    )]
    Stopped {
        /// The artifact folder holding the saved run.
        dir: PathBuf,
        /// Optimizer steps done.
        step: usize,
        /// `true` when the interrupter fired, `false` when the step budget was spent.
        interrupted: bool,
        /// The step of the best model, if any evaluation came after training began.
        best: Option<usize>,
    },
}

/// Maps an I/O error on `path` to [`PretrainError::Io`].
pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> PretrainError + '_ {
    move |source| PretrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}
