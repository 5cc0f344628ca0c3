//! Why fine-tuning, evaluation or loading a saved classifier failed: [`FinetuneError`], the
//! error of every stage after the config (each variant names its file where there is one).

use std::path::{Path, PathBuf};

use llama_model::lora::file::LoraFileError;
use llama_model::train::adamw::AdamWError;

use crate::classify::classifier::ClassifierError;
use crate::classify::finetune::artifacts::{LAST_CLASSIFIER_FILE, NO_BEST_YET};
use crate::classify::finetune::config::ConfigError;
use crate::classify::finetune::resume::Position;
use crate::data::sentences::DataError;
use crate::metrics::MetricsError;
use crate::report::metrics_log::MetricsLogError;
use crate::run::resume_file::ResumeError;

/// Why fine-tuning or evaluation failed.
#[derive(Debug, thiserror::Error)]
pub enum FinetuneError {
    /// A [`FinetuneConfig`](crate::classify::finetune::config::FinetuneConfig) value is out of range.
    #[error("invalid fine-tuning config: {0}")]
    InvalidConfig(String),
    /// The classifier could not be built.
    #[error(transparent)]
    Classifier(#[from] ClassifierError),
    /// The optimizer settings are invalid.
    #[error(transparent)]
    Optimizer(#[from] AdamWError),
    /// The LoRA adapter could not be written.
    #[error(transparent)]
    Adapter(#[from] LoraFileError),
    /// A dataset's labels do not fit the classifier.
    #[error(transparent)]
    Data(#[from] DataError),
    /// Scores could not be computed.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// The run's `metrics.csv` could not be read back.
    #[error(transparent)]
    MetricsLog(#[from] MetricsLogError),
    /// A dataset without examples.
    #[error("the {which} set is empty")]
    EmptyDataset {
        /// `"training"`, `"dev"`, ...
        which: &'static str,
    },
    /// A file or folder could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A config file of an artifact folder is missing or unreadable.
    #[error("cannot read {path}: {detail}")]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// A model record could not be read (missing, corrupt, or of another model shape).
    #[error("cannot load classifier record {path}: {detail}")]
    Record {
        /// The record file.
        path: PathBuf,
        /// Burn's error.
        detail: String,
    },
    /// Training ended without any dev evaluation, so there is no best model.
    #[error("training stopped before the first dev evaluation: no model was saved in {0}")]
    NoCheckpoint(PathBuf),
    /// The run cannot be resumed.
    #[error(transparent)]
    Resume(#[from] ResumeError),
    /// The run stopped early (Ctrl-C or the step budget) and was saved.
    #[error(
        "fine-tuning {} at {at}; saved in {}: run the same command with --resume to continue; the weights of step {step} are {LAST_CLASSIFIER_FILE}; {}",
        if *.interrupted { "interrupted" } else { "stopped (step budget spent)" },
        .dir.display(),
        .best_epoch.map_or(NO_BEST_YET.to_string(), |e| format!("the best model (epoch {e}) is classifier.mpk"))
    )]
    Stopped {
        /// The artifact folder holding the saved run.
        dir: PathBuf,
        /// Where the run continues.
        at: Position,
        /// `true` when the interrupter fired, `false` when the step budget was spent.
        interrupted: bool,
        /// Training steps done (the step of the last weights).
        step: usize,
        /// The epoch of the best model, if any epoch has finished.
        best_epoch: Option<usize>,
    },
    /// Joining a data-parallel run failed.
    #[error(transparent)]
    Collective(#[from] crate::distributed::settings::CollectiveError),
    /// Saving during training failed (training stopped; the last saved state is intact).
    #[error("fine-tuning stopped: {0}")]
    Save(String),
    /// [`evaluate`](crate::classify::evaluate::evaluate) was given a model on an autodiff backend,
    /// where dropout is active.
    #[error(
        "evaluate the inference model (`model.valid()`): dropout is active on an autodiff backend"
    )]
    AutodiffModel,
}

impl From<ConfigError> for FinetuneError {
    fn from(error: ConfigError) -> Self {
        match error {
            ConfigError::Invalid(message) => Self::InvalidConfig(message),
            ConfigError::Classifier(e) => Self::Classifier(e),
            ConfigError::Optimizer(e) => Self::Optimizer(e),
        }
    }
}

/// Maps an I/O error on `path` to [`FinetuneError::Io`].
pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> FinetuneError + '_ {
    move |source| FinetuneError::Io {
        path: path.to_path_buf(),
        source,
    }
}
