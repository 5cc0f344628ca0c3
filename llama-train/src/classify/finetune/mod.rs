//! Fine-tuning the [`LlamaEmbeddingClassifier`] with Burn's `Learner` and the exercise's
//! AdamW, evaluation on dev after every epoch, and prediction with the best-dev model.
//!
//! # Flow of [`finetune`]
//!
//! 1. Build the classifier over the given Llama, its head initialised from the seed; with
//!    [`FinetuneOption::Pretrain`] the Llama is frozen.
//! 2. Train for `epochs` epochs with Burn's [`SupervisedTraining`] and `Learner`, driven by
//!    [`crate::classify::finetune::training_loop`]: each epoch's batch order comes from `(seed,
//! epoch)` and each
//!    step's dropout masks from `(seed, epoch, batch)`, AdamW at a constant learning rate, dev
//!    evaluation after each epoch. Metrics: loss, accuracy, macro-F1 (train and dev),
//!    learning rate and iteration speed (train), shown by [`ProgressRenderer`], logged
//!    by Burn under `artifact_dir/train` and `artifact_dir/valid`, and tabled in
//!    `artifact_dir/metrics.csv` (every `log_every` steps and every dev evaluation) with
//!    their picture `artifact_dir/curves.png`.
//! 3. After every epoch the best model so far (by dev accuracy; a tie keeps the earlier
//!    epoch) is `artifact_dir/classifier.mpk`, next to `classifier.json` (its
//!    [`ClassifierConfig`]) and `finetune.json`; Burn's checkpoint of the model and the
//!    optimizer (`artifact_dir/checkpoint/`) and `resume.json` make the run resumable.
//! 4. At the end the best model is **reloaded** from its file and predicts dev (and test):
//!    the predictions returned are exactly what [`load_classifier`] + [`evaluate`] give later
//!    with the same batch size.
//!
//! # Stopping and resuming
//!
//! [`finetune_with`] takes a [`RunControl`]: an [`Interrupter`] (the CLI fires it on
//! Ctrl-C) and a step budget stop the run after the current step and save it mid-epoch;
//! `resume` continues a saved run from `resume.json` and ends with the same weights, epoch
//! summaries and predictions as an uninterrupted run (`tests/finetune.rs` checks this).
//! A run that does not resume first removes what an earlier run left in `artifact_dir`
//! (Burn would read old epoch logs back).
//!
//! Records are saved in full precision (Burn's `DefaultRecorder`, named MessagePack):
//! Burn's `CompactRecorder` stores half precision, whose rounding (about 5e-4 relative)
//! exceeds what a fine-tuning step at lr 2e-5 changes.
//!
//! # Reproducibility
//!
//! The same seed on the same backend gives the same run (same batches, same dropout masks,
//! same head, hence the same weights and predictions) provided `num_workers <= 1` (with more
//! workers, batches arrive in thread order). Nothing is drawn from the backend's random
//! generator (global to the process on ndarray and flex), so other runs or tests in the same
//! process, on other threads, do not change a run.

pub mod artifacts;
pub mod config;
pub mod epoch_order;
pub mod error;
pub mod resume;
mod stages;
pub mod training_loop;

use std::path::PathBuf;
use std::sync::Arc;

use burn::tensor::backend::{AutodiffBackend, Backend};
use llama_model::{Llama, LlamaConfig};

use crate::classify::classifier::{ClassifierConfig, ClassifierError, LlamaEmbeddingClassifier};
use crate::classify::finetune::resume::RunSettings;
use crate::data::sentences::SentenceDataset;
use crate::distributed::collective::{Collective, RankOutcome, RankSummary};
use crate::run::control::RunControl;
use stages::{check_run, Concluded, RankRun};

// The parts of a run live in their own modules; these re-exports keep `finetune::…` paths.
pub use crate::classify::evaluate::{
    evaluate, evaluate_with_progress, load_classifier, Evaluation, SavedClassifier,
};
pub use crate::classify::finetune::artifacts::{
    run_files, ClassifierRecorder, CLASSIFIER_CONFIG_FILE, CLASSIFIER_RECORD_STEM,
    FINETUNE_CONFIG_FILE, LAST_ADAPTER_FILE, LAST_CLASSIFIER_FILE,
};
pub use crate::classify::finetune::config::{ConfigError, FinetuneConfig};
pub use crate::classify::finetune::error::FinetuneError;
pub use crate::classify::finetune::resume::EpochSummary;
pub use crate::metrics::{
    ClassPredictions, MacroF1Metric, ACCURACY, ITERATION_SPEED, LEARNING_RATE, LOSS, MACRO_F1,
};
pub use crate::report::progress::{ProgressMode, ProgressRenderer};

/// The data of a fine-tuning run.
#[derive(Debug, Clone)]
pub struct FinetuneData {
    /// Training set (shuffled every epoch).
    pub train: SentenceDataset,
    /// Dev set: evaluated after every epoch, selects the best model.
    pub dev: SentenceDataset,
    /// Optional test set, predicted with the best model at the end.
    pub test: Option<SentenceDataset>,
    /// Number of classes of the head (labels are class ids `0..num_labels`).
    pub num_labels: usize,
    /// Pad id of the tokenizer (3 for Llama 2 and tok512).
    pub pad_id: u32,
}

impl FinetuneData {
    /// The exercise's setup: the number of classes is the number of distinct training labels
    /// (`num_labels = len(set(train labels))`).
    pub fn new(
        train: SentenceDataset,
        dev: SentenceDataset,
        test: Option<SentenceDataset>,
        pad_id: u32,
    ) -> Self {
        let num_labels = train.num_labels();
        Self {
            train,
            dev,
            test,
            num_labels,
            pad_id,
        }
    }

    /// Non-empty training and dev sets whose labels are all below `num_labels` (test labels
    /// are never used: CFIMDB's are placeholders).
    fn check(&self) -> Result<(), FinetuneError> {
        if self.train.items().is_empty() {
            return Err(FinetuneError::EmptyDataset { which: "training" });
        }
        if self.dev.items().is_empty() {
            return Err(FinetuneError::EmptyDataset { which: "dev" });
        }
        if self.num_labels == 0 {
            return Err(ClassifierError::NoLabels.into());
        }
        self.train.check_labels_below(self.num_labels)?;
        self.dev.check_labels_below(self.num_labels)?;
        Ok(())
    }
}

/// What [`finetune`] produced.
#[derive(Debug)]
pub struct FinetuneOutcome<B: Backend> {
    /// The best-dev classifier, as reloaded from its saved record.
    pub model: LlamaEmbeddingClassifier<B>,
    /// Its configuration (saved as `classifier.json`).
    pub classifier_config: ClassifierConfig,
    /// The epoch (1-based) whose model had the best dev accuracy.
    pub best_epoch: usize,
    /// The saved record of the best model (`artifact_dir/classifier.mpk`).
    pub record_path: PathBuf,
    /// With LoRA: the best model's adapters and head alone (`artifact_dir/adapter.safetensors`).
    pub adapter_path: Option<PathBuf>,
    /// Dev predictions and scores of the best model.
    pub dev: Evaluation,
    /// Test predictions (and scores, meaningful only with real labels), if a test set was
    /// given.
    pub test: Option<Evaluation>,
    /// Per-epoch metric means.
    pub epochs: Vec<EpochSummary>,
    /// Training steps of the run (all calls of a resumed run).
    pub steps: usize,
    /// On a data-parallel run: rank 0's summary (its weights after the last step, not the
    /// best epoch's; its exchanges).
    pub rank: Option<RankSummary>,
}

/// Fine-tune a classifier over `llama` (with hyper-parameters `llama_config`) on `data`;
/// see the [module docs](self) for the steps and the files written to
/// `config.artifact_dir`.
///
/// Returns the best-dev model on the inference backend with its dev (and test) predictions.
///
/// # Panics
///
/// Burn's `Learner` panics (instead of returning an error) when it cannot write its metric
/// logs under `artifact_dir` during training; everything checkable up front (config, data, a
/// writable folder) is checked before training starts.
pub fn finetune<B: AutodiffBackend>(
    config: &FinetuneConfig,
    llama: Llama<B>,
    llama_config: &LlamaConfig,
    data: &FinetuneData,
    device: &B::Device,
) -> Result<FinetuneOutcome<B::InnerBackend>, FinetuneError> {
    finetune_with(
        config,
        llama,
        llama_config,
        data,
        device,
        &RunControl::default(),
    )
}

/// [`finetune`], resumable and stoppable: see [`RunControl`]. A run stopped early returns
/// [`FinetuneError::Stopped`] after saving.
pub fn finetune_with<B: AutodiffBackend>(
    config: &FinetuneConfig,
    llama: Llama<B>,
    llama_config: &LlamaConfig,
    data: &FinetuneData,
    device: &B::Device,
    control: &RunControl,
) -> Result<FinetuneOutcome<B::InnerBackend>, FinetuneError> {
    match finetune_rank(config, llama, llama_config, data, device, control)? {
        RankOutcome::Main(outcome) => Ok(*outcome),
        RankOutcome::Other(_) => Err(FinetuneError::InvalidConfig(
            "only rank 0 of a data-parallel run has the outcome: call finetune_rank".into(),
        )),
    }
}

/// [`finetune_with`] on any rank of a data-parallel run ([`RunControl::collective`]):
/// every rank trains its share of each batch; rank 0 evaluates, saves and predicts, and
/// returns the outcome; the other ranks write nothing.
pub fn finetune_rank<B: AutodiffBackend>(
    config: &FinetuneConfig,
    llama: Llama<B>,
    llama_config: &LlamaConfig,
    data: &FinetuneData,
    device: &B::Device,
    control: &RunControl,
) -> Result<RankOutcome<FinetuneOutcome<B::InnerBackend>>, FinetuneError> {
    check_run(config, data, control, &llama)?;
    let world_size = control.collective.as_ref().map_or(1, |c| c.world_size);
    let settings = RunSettings::new(config, &data.train).with_world_size(world_size);
    // Join the other ranks before anything is written: a bad address or a missing rank
    // leaves no run folder. (Rank 0 writes nothing another rank reads before the first
    // step, which waits for every rank.)
    let collective = match &control.collective {
        Some(rank) => Some(Arc::new(Collective::<B::InnerBackend>::join(
            rank.clone(),
            device,
            settings.digest(),
        )?)),
        None => None,
    };
    let run = RankRun {
        config,
        data,
        control,
        device,
        is_main: control.collective.as_ref().is_none_or(|c| c.is_main()),
        collective,
    };
    let state = run.open_folder(settings)?;
    let classifier_config = run.classifier_config(llama_config);
    let learner = run.restore_learner(&classifier_config, llama, &state)?;
    let trained = run.train(learner, state)?;
    match run.conclude(trained)? {
        Concluded::Other(summary) => Ok(RankOutcome::Other(summary)),
        Concluded::Main { state, summary } => run
            .predict_with_best(state, summary)
            .map(|outcome| RankOutcome::Main(Box::new(outcome))),
    }
}
