//! Fine-tuning the [`LlamaEmbeddingClassifier`] with Burn's `Learner` and the exercise's
//! AdamW, evaluation on dev after every epoch, and prediction with the best-dev model.
//!
//! # Flow of [`finetune`]
//!
//! 1. Build the classifier over the given Llama, its head initialised from the seed; with
//!    [`FinetuneOption::Pretrain`] the Llama is frozen.
//! 2. Train for `epochs` epochs with Burn's [`SupervisedTraining`] and `Learner`, driven by
//!    [`crate::training_loop`]: each epoch's batch order comes from `(seed, epoch)` and each
//!    step's dropout masks from `(seed, epoch, batch)`, AdamW at a constant learning rate, dev
//!    evaluation after each epoch. Metrics: loss, accuracy, macro-F1 (train and dev),
//!    learning rate and iteration speed (train), shown by [`ProgressRenderer`] and logged
//!    by Burn under `artifact_dir/train` and `artifact_dir/valid`.
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

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use burn::config::Config;
use burn::data::dataloader::DataLoaderBuilder;
use burn::module::Module;
use burn::record::{DefaultRecorder, FileRecorder, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor};
use burn::train::metric::{
    AccuracyMetric, Adaptor, IterationSpeedMetric, LearningRateMetric, LossMetric, Metric,
    MetricAttributes, MetricDefinition, MetricId, MetricMetadata, MetricName, Numeric,
    NumericAttributes, NumericEntry, SerializedEntry,
};
use burn::train::renderer::{
    EvaluationName, EvaluationProgress, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining, ProgressType, TrainingProgress,
};
use burn::train::{
    ClassificationOutput, Interrupter, Learner, LearnerModelRecord, LearnerOptimizerRecord,
    SupervisedTraining, TrainingStrategy,
};
use llama_model::adamw::{validate_lr, AdamWError};
use llama_model::{AdamWConfig, Llama, LlamaConfig};

use crate::classifier::{
    nll_per_example, ClassifierConfig, ClassifierError, FinetuneOption, LlamaEmbeddingClassifier,
    SentencePosition,
};
use crate::data::{
    make_batch, DataError, DataOptions, SentenceBatch, SentenceBatcher, SentenceDataset,
    SentenceItem,
};
use crate::metrics::{ConfusionMatrix, MetricsError};
use crate::resume::{Position, ResumeError, ResumeState, RunSettings};
use crate::training_loop::{Components, EpochOrdered, LoopEnd, ResumableLoop, SaveEveryCall};

/// The recorder of classifier records and training checkpoints: named MessagePack, full
/// precision (`.mpk`).
pub type ClassifierRecorder = DefaultRecorder;

/// File name of the saved [`ClassifierConfig`] in an artifact folder.
pub const CLASSIFIER_CONFIG_FILE: &str = "classifier.json";
/// File stem of the saved best classifier record in an artifact folder (the recorder adds
/// `.mpk`).
pub const CLASSIFIER_RECORD_STEM: &str = "classifier";
/// File name of the saved [`FinetuneConfig`] in an artifact folder.
pub const FINETUNE_CONFIG_FILE: &str = "finetune.json";

/// Name of the loss metric (mean NLL per sentence) in epoch summaries.
pub const LOSS: &str = "Loss";
/// Name of the accuracy metric (percent) in epoch summaries.
pub const ACCURACY: &str = "Accuracy";
/// Name of the macro-F1 metric (percent) in epoch summaries.
pub const MACRO_F1: &str = "Macro-F1";
/// Name of the learning-rate metric in epoch summaries.
pub const LEARNING_RATE: &str = "Learning Rate";
/// Name of the iteration-speed metric (iterations per second) in epoch summaries.
pub const ITERATION_SPEED: &str = "Iteration Speed";

/// Why fine-tuning or evaluation failed.
#[derive(Debug, thiserror::Error)]
pub enum FinetuneError {
    /// A [`FinetuneConfig`] value is out of range.
    #[error("invalid fine-tuning config: {0}")]
    InvalidConfig(String),
    /// The classifier could not be built.
    #[error(transparent)]
    Classifier(#[from] ClassifierError),
    /// The optimizer settings are invalid.
    #[error(transparent)]
    Optimizer(#[from] AdamWError),
    /// A dataset's labels do not fit the classifier.
    #[error(transparent)]
    Data(#[from] DataError),
    /// Scores could not be computed.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
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
        "fine-tuning {} at {at}; saved in {}: run the same command with --resume to continue",
        if *.interrupted { "interrupted" } else { "stopped (step budget spent)" },
        .dir.display()
    )]
    Stopped {
        /// The artifact folder holding the saved run.
        dir: PathBuf,
        /// Where the run continues.
        at: Position,
        /// `true` when the interrupter fired, `false` when the step budget was spent.
        interrupted: bool,
    },
    /// Saving during training failed (training stopped; the last saved state is intact).
    #[error("fine-tuning stopped: {0}")]
    Save(String),
    /// [`evaluate`] was given a model on an autodiff backend, where dropout is active.
    #[error(
        "evaluate the inference model (`model.valid()`): dropout is active on an autodiff backend"
    )]
    AutodiffModel,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> FinetuneError + '_ {
    move |source| FinetuneError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Settings of [`finetune`] (the exercise's `run_llama.py` options for fine-tuning).
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
    /// Token limit per sentence, BOS included; applied when the datasets are tokenized (build
    /// them with [`Self::data_options`]) and saved so that evaluation tokenizes alike.
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
    /// When stdout is not a terminal, print a progress line every this many training
    /// iterations (0: epoch summaries only). On a terminal one status line is redrawn.
    #[config(default = 50)]
    pub log_every: usize,
}

impl FinetuneConfig {
    /// Check the values: at least one epoch and one sentence per batch, a finite
    /// non-negative learning rate, dropout in `[0, 1)`.
    pub fn check(&self) -> Result<(), FinetuneError> {
        let bad = |msg: String| Err(FinetuneError::InvalidConfig(msg));
        if self.epochs == 0 {
            return bad("epochs must be at least 1".into());
        }
        if self.batch_size == 0 {
            return bad("batch_size must be at least 1".into());
        }
        if self.max_sentence_len == Some(0) {
            return bad("max_sentence_len must be at least 1 (it counts BOS)".into());
        }
        validate_lr(self.lr)?;
        if !(0.0..1.0).contains(&self.hidden_dropout_prob) {
            return Err(ClassifierError::InvalidDropout(self.hidden_dropout_prob).into());
        }
        AdamWConfig::new()
            .with_weight_decay(self.weight_decay)
            .validate()?;
        Ok(())
    }

    /// How to tokenize the datasets for this run (`max_sentence_len`).
    pub fn data_options(&self) -> DataOptions {
        DataOptions::default().with_max_sentence_len(self.max_sentence_len)
    }
}

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

/// Predictions and scores of a classifier on a dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// Predicted class of each example, in dataset order.
    pub predictions: Vec<usize>,
    /// Accuracy against the dataset's labels, in `[0, 1]`.
    pub accuracy: f64,
    /// Macro-F1 against the dataset's labels (scikit-learn's definition), in `[0, 1]`.
    pub macro_f1: f64,
    /// Mean NLL per example; `None` when some label is not a class of the head (placeholder
    /// test labels).
    pub loss: Option<f64>,
}

/// Metric values of one epoch (epoch means; percentages for accuracy and macro-F1), by
/// metric name: [`LOSS`], [`ACCURACY`], [`MACRO_F1`] for both splits, and
/// [`LEARNING_RATE`] for training.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochSummary {
    /// 1-based epoch.
    pub epoch: usize,
    /// Training metrics.
    pub train: BTreeMap<String, f64>,
    /// Dev metrics.
    pub dev: BTreeMap<String, f64>,
    /// Wall-clock seconds of the training pass (dev evaluation excluded).
    pub train_seconds: f64,
}

impl EpochSummary {
    /// Mean training loss of the epoch.
    pub fn train_loss(&self) -> Option<f64> {
        self.train.get(LOSS).copied()
    }

    /// Dev accuracy of the epoch, in percent.
    pub fn dev_accuracy(&self) -> Option<f64> {
        self.dev.get(ACCURACY).copied()
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
    /// Dev predictions and scores of the best model.
    pub dev: Evaluation,
    /// Test predictions (and scores, meaningful only with real labels), if a test set was
    /// given.
    pub test: Option<Evaluation>,
    /// Per-epoch metric means.
    pub epochs: Vec<EpochSummary>,
}

/// A classifier loaded from an artifact folder.
#[derive(Debug)]
pub struct SavedClassifier<B: Backend> {
    /// The model.
    pub model: LlamaEmbeddingClassifier<B>,
    /// Its configuration.
    pub config: ClassifierConfig,
    /// The settings it was trained with, when `finetune.json` is there (its
    /// `max_sentence_len` says how to tokenize evaluation data alike).
    pub finetune: Option<FinetuneConfig>,
}

/// How a fine-tuning run starts and when it stops early.
#[derive(Clone, Default)]
pub struct RunControl {
    /// Continue the run saved in `artifact_dir` (`resume.json`) instead of starting over.
    pub resume: bool,
    /// Stop after the current step and save when this fires (the CLI fires it on Ctrl-C).
    pub interrupter: Option<Interrupter>,
    /// Stop after this many training steps of this call and save (a time-boxed run).
    pub max_steps: Option<usize>,
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
    config.check()?;
    data.check()?;
    if control.max_steps == Some(0) {
        return Err(FinetuneError::InvalidConfig(
            "max_steps must be at least 1".into(),
        ));
    }
    let dir = &config.artifact_dir;
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let settings = RunSettings::new(config, &data.train);
    let state = if control.resume {
        ResumeState::load(dir, &settings)?
    } else {
        clear_previous_run(dir)?;
        ResumeState::start(settings)
    };

    let classifier_config = ClassifierConfig::new(llama_config.clone(), data.num_labels)
        .with_hidden_dropout_prob(config.hidden_dropout_prob)
        .with_position(config.position);
    let mut model = classifier_config.init_with_llama(llama, config.seed)?;
    let recorder = ClassifierRecorder::new();
    let checkpoint = |kind: &str| {
        dir.join("checkpoint")
            .join(format!("{kind}-{}", state.steps))
    };
    let record_error = |path: PathBuf| {
        let extension = <ClassifierRecorder as FileRecorder<B>>::file_extension();
        move |e: burn::record::RecorderError| FinetuneError::Record {
            path: path.with_extension(extension),
            detail: e.to_string(),
        }
    };
    if state.steps > 0 {
        let path = checkpoint("model");
        let record: LearnerModelRecord<Components<B>> = recorder
            .load(path.clone(), device)
            .map_err(record_error(path))?;
        model = model.load_record(record);
    }
    // After loading: the option sets which parameters are trained.
    let model = model.with_option(config.option);
    let config_path = dir.join(CLASSIFIER_CONFIG_FILE);
    classifier_config
        .save(&config_path)
        .map_err(io_err(&config_path))?;
    let finetune_path = dir.join(FINETUNE_CONFIG_FILE);
    config
        .save(&finetune_path)
        .map_err(io_err(&finetune_path))?;

    let optim = AdamWConfig::new()
        .with_weight_decay(config.weight_decay)
        .init::<B, LlamaEmbeddingClassifier<B>>()?;
    let mut learner: Learner<Components<B>> = Learner::new(model, optim, config.lr);
    if state.steps > 0 {
        let path = checkpoint("optim");
        let record: LearnerOptimizerRecord<Components<B>> = recorder
            .load(path.clone(), device)
            .map_err(record_error(path))?;
        learner.load_optim(record);
    }

    let batcher = SentenceBatcher::new(data.pad_id);
    let train = EpochOrdered::new(data.train.clone());
    let train_loader = DataLoaderBuilder::<B, SentenceItem, SentenceBatch<B>>::new(batcher)
        .batch_size(config.batch_size)
        .num_workers(config.num_workers)
        .set_device(device.clone())
        .build(train.clone());
    let valid_loader =
        DataLoaderBuilder::<B::InnerBackend, SentenceItem, SentenceBatch<B::InnerBackend>>::new(
            batcher,
        )
        .batch_size(config.batch_size)
        .num_workers(config.num_workers)
        .set_device(device.clone())
        .build(data.dev.clone());

    let previous_key = (state.steps > 0).then_some(state.steps);
    let state = Arc::new(Mutex::new(state));
    let end = Arc::new(Mutex::new(None));
    let strategy = ResumableLoop::<B> {
        dir: dir.clone(),
        train,
        seed: config.seed,
        max_steps: control.max_steps,
        state: state.clone(),
        end: end.clone(),
        backend: std::marker::PhantomData,
    };
    let renderer = ProgressRenderer::new(config.epochs, config.log_every);
    let training = SupervisedTraining::new(dir, train_loader, valid_loader)
        .metrics((
            AccuracyMetric::new(),
            LossMetric::new(),
            MacroF1Metric::new(),
        ))
        .metric_train_numeric(LearningRateMetric::new())
        .metric_train_numeric(IterationSpeedMetric::new())
        .with_file_checkpointer(ClassifierRecorder::new())
        .with_checkpointing_strategy(SaveEveryCall::new(previous_key))
        .with_training_strategy(TrainingStrategy::Custom(Arc::new(strategy)))
        .with_interrupter(control.interrupter.clone().unwrap_or_default())
        .num_epochs(config.epochs)
        .renderer(renderer)
        // Burn's default installs a process-wide tracing subscriber and panic hook (logging
        // to `experiment.log`); a library must leave those to the application.
        .with_application_logger(None);
    // The model returned by `launch` is the last step's; the best one is on disk.
    let _ = training.launch(learner);

    let end = end.lock().unwrap_or_else(PoisonError::into_inner).take();
    match end {
        Some(LoopEnd::Finished) => {}
        Some(LoopEnd::Stopped { at, interrupted }) => {
            return Err(FinetuneError::Stopped {
                dir: dir.clone(),
                at,
                interrupted,
            })
        }
        Some(LoopEnd::Failed(message)) => return Err(FinetuneError::Save(message)),
        None => return Err(FinetuneError::Save("the training loop did not run".into())),
    }
    let state = state.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let best_epoch = state
        .best
        .ok_or_else(|| FinetuneError::NoCheckpoint(dir.clone()))?
        .epoch;
    let extension = <ClassifierRecorder as FileRecorder<B>>::file_extension();
    let record_path = dir.join(format!("{CLASSIFIER_RECORD_STEM}.{extension}"));

    // Predict with the model as reloaded from its file, so that these predictions are
    // exactly what a later `eval` of the saved classifier gives.
    let saved = load_classifier::<B::InnerBackend>(dir, device)?;
    let dev = evaluate(
        &saved.model,
        &data.dev,
        config.batch_size,
        data.pad_id,
        device,
    )?;
    let test = data
        .test
        .as_ref()
        .map(|test| evaluate(&saved.model, test, config.batch_size, data.pad_id, device))
        .transpose()?;
    Ok(FinetuneOutcome {
        model: saved.model,
        classifier_config: saved.config,
        best_epoch,
        record_path,
        dev,
        test,
        epochs: state.history,
    })
}

/// Remove what an earlier run left in `dir` that this one would read back: Burn's metric logs
/// of epochs this run may not reach would enter the best-epoch search, and an old checkpoint
/// could be taken for this run's. Only Burn's own names (`train/epoch-*`, `valid/epoch-*`,
/// `checkpoint/{model,optim,scheduler}-*.mpk`) and ours (`classifier.mpk`, `resume.json`)
/// are touched.
fn clear_previous_run(dir: &Path) -> Result<(), FinetuneError> {
    let entries = |sub: &str| -> Vec<(PathBuf, String)> {
        std::fs::read_dir(dir.join(sub))
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| Some((e.path(), e.file_name().into_string().ok()?)))
                    .collect()
            })
            .unwrap_or_default()
    };
    for split in ["train", "valid"] {
        for (path, name) in entries(split) {
            if name.starts_with("epoch-") && path.is_dir() {
                std::fs::remove_dir_all(&path).map_err(io_err(&path))?;
            }
        }
    }
    let checkpoint = |name: &str| {
        ["model-", "optim-", "scheduler-"]
            .iter()
            .any(|prefix| name.starts_with(prefix))
            && name.ends_with(".mpk")
    };
    let mut stale: Vec<PathBuf> = entries("checkpoint")
        .into_iter()
        .filter(|(path, name)| checkpoint(name) && path.is_file())
        .map(|(path, _)| path)
        .collect();
    stale.push(dir.join(format!("{CLASSIFIER_RECORD_STEM}.mpk")));
    stale.push(dir.join(format!("{CLASSIFIER_RECORD_STEM}-partial.mpk")));
    stale.push(dir.join(crate::resume::RESUME_FILE));
    for path in stale {
        if path.is_file() {
            std::fs::remove_file(&path).map_err(io_err(&path))?;
        }
    }
    Ok(())
}

/// Load the classifier saved in an artifact folder by [`finetune`] (`classifier.json` +
/// `classifier.mpk`, and `finetune.json` if present) onto `device`.
pub fn load_classifier<B: Backend>(
    artifact_dir: &Path,
    device: &B::Device,
) -> Result<SavedClassifier<B>, FinetuneError> {
    let config_path = artifact_dir.join(CLASSIFIER_CONFIG_FILE);
    let config = ClassifierConfig::load(&config_path).map_err(|e| FinetuneError::ConfigFile {
        path: config_path.clone(),
        detail: e.to_string(),
    })?;
    let record_stem = artifact_dir.join(CLASSIFIER_RECORD_STEM);
    let record_path =
        record_stem.with_extension(<ClassifierRecorder as FileRecorder<B>>::file_extension());
    // Parameters are created lazily, so building the model before loading costs no random
    // initialisation of the Llama.
    let model = config
        .init::<B>(device)?
        .load_file(record_stem, &ClassifierRecorder::new(), device)
        .map_err(|e| FinetuneError::Record {
            path: record_path,
            detail: e.to_string(),
        })?;
    let finetune_path = artifact_dir.join(FINETUNE_CONFIG_FILE);
    let finetune = if finetune_path.exists() {
        Some(
            FinetuneConfig::load(&finetune_path).map_err(|e| FinetuneError::ConfigFile {
                path: finetune_path.clone(),
                detail: e.to_string(),
            })?,
        )
    } else {
        None
    };
    Ok(SavedClassifier {
        model,
        config,
        finetune,
    })
}

/// Predict every example of `dataset` in order (batches of `batch_size`, right-padded with
/// `pad_id`) and score the predictions against its labels.
///
/// The model must be on an inference backend (`model.valid()` of a trained one), where
/// dropout is off.
pub fn evaluate<B: Backend>(
    model: &LlamaEmbeddingClassifier<B>,
    dataset: &SentenceDataset,
    batch_size: usize,
    pad_id: u32,
    device: &B::Device,
) -> Result<Evaluation, FinetuneError> {
    if B::ad_enabled(device) {
        return Err(FinetuneError::AutodiffModel);
    }
    if batch_size == 0 {
        return Err(FinetuneError::InvalidConfig(
            "batch_size must be at least 1".into(),
        ));
    }
    let items = dataset.items();
    if items.is_empty() {
        return Err(FinetuneError::EmptyDataset {
            which: "evaluation",
        });
    }
    let num_labels = model.num_labels();
    // Gathering the log-probability of a label the head does not have would index out of
    // bounds, so the loss is only computed when every label is a class.
    let with_loss = items.iter().all(|item| item.label < num_labels);
    let mut predictions = Vec::with_capacity(items.len());
    let mut loss_sum = 0.0;
    for chunk in items.chunks(batch_size) {
        let rows: Vec<&[u32]> = chunk.iter().map(|item| item.tokens.as_slice()).collect();
        let labels: Vec<usize> = chunk.iter().map(|item| item.label).collect();
        let batch = make_batch::<B, _>(&rows, &labels, pad_id, device);
        let log_probs = model.forward(batch.tokens, batch.lengths);
        if with_loss {
            let nll: f64 = nll_per_example(log_probs.clone(), batch.labels)
                .sum()
                .into_scalar()
                .elem();
            loss_sum += nll;
        }
        predictions.extend(class_ids(log_probs.argmax(1).reshape([chunk.len()])));
    }
    let matrix = ConfusionMatrix::new(&dataset.labels(), &predictions)?;
    Ok(Evaluation {
        accuracy: matrix.accuracy(),
        macro_f1: matrix.macro_f1(),
        loss: with_loss.then(|| loss_sum / items.len() as f64),
        predictions,
    })
}

/// Class ids of an `Int` tensor `[n]` (argmax results are never negative).
pub(crate) fn class_ids<B: Backend>(ids: Tensor<B, 1, Int>) -> Vec<usize> {
    ids.into_data()
        .iter::<i64>()
        .map(|id| usize::try_from(id).unwrap_or_default())
        .collect()
}

/// Predicted and true classes of a batch, the input of [`MacroF1Metric`].
#[derive(Debug, Clone, Default)]
pub struct ClassPredictions {
    /// Predicted class of each row.
    pub predictions: Vec<usize>,
    /// True class of each row.
    pub targets: Vec<usize>,
}

impl<B: Backend> Adaptor<ClassPredictions> for ClassificationOutput<B> {
    fn adapt(&self) -> ClassPredictions {
        let batch = self.output.dims()[0];
        ClassPredictions {
            predictions: class_ids(self.output.clone().argmax(1).reshape([batch])),
            targets: class_ids(self.targets.clone()),
        }
    }
}

/// Macro-F1 (percent) over everything seen in the epoch, scikit-learn's definition.
///
/// Burn's `FBetaScoreMetric` averages per-batch scores, which for macro-F1 on small batches
/// is far from the epoch's score. This metric keeps the epoch's predictions instead, and
/// reports each batch as the increment `(F1_k N_k - F1_{k-1} N_{k-1}) / n_k` with weight
/// `n_k` (`F1_k` the score after `k` batches, `N_k` the sentences so far, `n_k` the batch
/// size): Burn's count-weighted epoch mean of those entries telescopes to exactly the epoch's
/// macro-F1, so logs, summaries and the checkpoint store all see the true value.
#[derive(Clone, Default)]
pub struct MacroF1Metric {
    predictions: Vec<usize>,
    targets: Vec<usize>,
    /// `F1_{k-1} N_{k-1}`.
    weighted: f64,
    /// Latest increment and batch size.
    last: (f64, usize),
}

impl MacroF1Metric {
    /// An empty metric.
    pub fn new() -> Self {
        Self::default()
    }

    /// Macro-F1 (percent) of everything seen so far.
    pub fn epoch_value(&self) -> f64 {
        ConfusionMatrix::new(&self.targets, &self.predictions)
            .map(|m| 100.0 * m.macro_f1())
            .unwrap_or(f64::NAN)
    }
}

impl Metric for MacroF1Metric {
    type Input = ClassPredictions;

    fn name(&self) -> MetricName {
        Arc::new(MACRO_F1.to_string())
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes {
            unit: Some("%".to_string()),
            higher_is_better: true,
        }
        .into()
    }

    fn update(&mut self, item: &ClassPredictions, _metadata: &MetricMetadata) -> SerializedEntry {
        self.predictions.extend(&item.predictions);
        self.targets.extend(&item.targets);
        let n = item.predictions.len();
        let f1 = self.epoch_value();
        let weighted = f1 * self.predictions.len() as f64;
        let increment = if n == 0 {
            0.0
        } else {
            (weighted - self.weighted) / n as f64
        };
        self.weighted = weighted;
        self.last = (increment, n);
        SerializedEntry::new(
            format!("epoch {f1:.2} %"),
            NumericEntry::Aggregated {
                aggregated_value: increment,
                count: n,
            }
            .serialize(),
        )
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

impl Numeric for MacroF1Metric {
    fn value(&self) -> NumericEntry {
        NumericEntry::Aggregated {
            aggregated_value: self.last.0,
            count: self.last.1,
        }
    }

    fn running_value(&self) -> NumericEntry {
        NumericEntry::Aggregated {
            aggregated_value: self.epoch_value(),
            count: self.predictions.len(),
        }
    }
}

/// Count-weighted running means of one split's metrics over the current epoch.
#[derive(Default)]
struct Running {
    /// name -> (sum of value * count, sum of count, latest value)
    values: HashMap<String, (f64, usize, f64)>,
    iterations: usize,
    items: (usize, usize),
}

impl Running {
    fn add(&mut self, name: &str, entry: &NumericEntry) {
        let (value, count) = match entry {
            NumericEntry::Value(v) => (*v, 1),
            NumericEntry::Aggregated {
                aggregated_value,
                count,
            } => (*aggregated_value, *count),
        };
        let slot = self
            .values
            .entry(name.to_string())
            .or_insert((0.0, 0, f64::NAN));
        if value.is_finite() {
            slot.0 += value * count as f64;
            slot.1 += count;
        }
        slot.2 = value;
    }

    /// Epoch means, except for the learning rate and speed, whose latest value is the one
    /// that matters (the speed metric is already an epoch average).
    fn summary(&self) -> BTreeMap<String, f64> {
        self.values
            .iter()
            .map(|(name, &(sum, count, latest))| {
                let value = if name == LEARNING_RATE || name == ITERATION_SPEED || count == 0 {
                    latest
                } else {
                    sum / count as f64
                };
                (name.clone(), value)
            })
            .collect()
    }
}

/// The order metrics are shown in.
fn metric_rank(name: &str) -> usize {
    [LOSS, ACCURACY, MACRO_F1, LEARNING_RATE, ITERATION_SPEED]
        .iter()
        .position(|n| *n == name)
        .unwrap_or(usize::MAX)
}

fn format_metrics(values: &BTreeMap<String, f64>) -> String {
    let mut names: Vec<&String> = values.keys().collect();
    names.sort_by_key(|name| (metric_rank(name), name.as_str()));
    names
        .into_iter()
        .map(|name| {
            let v = values[name];
            match name.as_str() {
                ACCURACY | MACRO_F1 => format!("{} {v:.2}%", name.to_lowercase()),
                LEARNING_RATE => format!("lr {v:.1e}"),
                ITERATION_SPEED => format!("{v:.2} it/s"),
                LOSS => format!("loss {v:.4}"),
                other => format!("{} {v:.4}", other.to_lowercase()),
            }
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

/// A plain-text [`MetricsRenderer`] (Burn's own prints a Debug line per batch without the
/// `tui` feature): on a terminal it redraws one status line; otherwise it prints a line
/// every `log_every` training iterations. After each split of each epoch it prints a summary
/// line of the epoch means.
pub struct ProgressRenderer {
    num_epochs: usize,
    log_every: usize,
    terminal: bool,
    names: HashMap<MetricId, String>,
    train: Running,
    valid: Running,
    /// Epoch being trained / validated, and whether its summary was already printed.
    train_epoch: Option<usize>,
    valid_epoch: Option<usize>,
    train_started: Option<Instant>,
    train_seconds: f64,
    last_draw: Option<Instant>,
}

impl ProgressRenderer {
    /// A renderer for `num_epochs` epochs printing a line every `log_every` iterations
    /// (when stdout is not a terminal).
    pub fn new(num_epochs: usize, log_every: usize) -> Self {
        Self {
            num_epochs,
            log_every,
            terminal: std::io::stdout().is_terminal(),
            names: HashMap::new(),
            train: Running::default(),
            valid: Running::default(),
            train_epoch: None,
            valid_epoch: None,
            train_started: None,
            train_seconds: 0.0,
            last_draw: None,
        }
    }

    fn name(&self, id: &MetricId) -> String {
        self.names
            .get(id)
            .cloned()
            .unwrap_or_else(|| format!("{id:?}"))
    }

    fn print_line(&mut self, line: &str) {
        let mut out = std::io::stdout().lock();
        // Errors writing progress (a closed pipe) must not stop training.
        if self.terminal {
            let _ = write!(out, "\r\x1b[2K{line}\n");
        } else {
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
    }

    fn draw_status(&mut self, line: &str) {
        let now = Instant::now();
        // Redraw at most ten times a second.
        if self
            .last_draw
            .is_some_and(|t| now.duration_since(t).as_millis() < 100)
        {
            return;
        }
        self.last_draw = Some(now);
        let mut out = std::io::stdout().lock();
        let _ = write!(out, "\r\x1b[2K{line}");
        let _ = out.flush();
    }

    /// Close the training pass of the current epoch: print and record its summary.
    fn finish_train(&mut self) {
        let Some(epoch) = self.train_epoch.take() else {
            return;
        };
        self.train_seconds = self
            .train_started
            .map_or(0.0, |t| t.elapsed().as_secs_f64());
        let summary = self.train.summary();
        let line = format!(
            "epoch {epoch}/{} train: {} ({:.1} s)",
            self.num_epochs,
            format_metrics(&summary),
            self.train_seconds
        );
        self.print_line(&line);
        self.train = Running::default();
    }

    /// Close the dev evaluation of the current epoch: print and record its summary.
    fn finish_valid(&mut self) {
        let Some(epoch) = self.valid_epoch.take() else {
            return;
        };
        let summary = self.valid.summary();
        let line = format!(
            "epoch {epoch}/{} dev:   {}",
            self.num_epochs,
            format_metrics(&summary)
        );
        self.print_line(&line);
        self.valid = Running::default();
    }
}

impl MetricsRendererTraining for ProgressRenderer {
    fn update_train(&mut self, state: MetricState) {
        if let MetricState::Numeric(entry, value) = state {
            let name = self.name(&entry.metric_id);
            self.train.add(&name, &value);
        }
    }

    fn update_valid(&mut self, state: MetricState) {
        if let MetricState::Numeric(entry, value) = state {
            let name = self.name(&entry.metric_id);
            self.valid.add(&name, &value);
        }
    }

    fn render_train(&mut self, item: TrainingProgress, _indicators: Vec<ProgressType>) {
        let epoch = item.global_progress.items_processed;
        if self.train_epoch != Some(epoch) {
            // A new epoch: the previous one's dev evaluation is complete.
            self.finish_valid();
            self.train_epoch = Some(epoch);
            self.train_started = Some(Instant::now());
        }
        self.train.iterations = item.iteration.unwrap_or(self.train.iterations + 1);
        if let Some(p) = &item.progress {
            self.train.items = (p.items_processed, p.items_total);
        }
        let iteration = self.train.iterations;
        let (done, total) = self.train.items;
        let line = format!(
            "epoch {epoch}/{} iter {iteration} ({done}/{total}) {}",
            self.num_epochs,
            format_metrics(&self.train.summary())
        );
        if self.terminal {
            self.draw_status(&line);
        } else if self.log_every > 0 && iteration.is_multiple_of(self.log_every) {
            self.print_line(&line);
        }
    }

    fn render_valid(&mut self, item: TrainingProgress, _indicators: Vec<ProgressType>) {
        let epoch = item.global_progress.items_processed;
        if self.valid_epoch != Some(epoch) {
            // Dev evaluation starts after the epoch's training pass.
            self.finish_train();
            self.valid_epoch = Some(epoch);
        }
        if self.terminal {
            let (done, total) = item
                .progress
                .as_ref()
                .map_or((0, 0), |p| (p.items_processed, p.items_total));
            let line = format!("epoch {epoch}/{} dev ({done}/{total})", self.num_epochs);
            self.draw_status(&line);
        }
    }

    fn on_train_end(
        &mut self,
        _summary: Option<burn::train::LearnerSummary>,
    ) -> Result<(), Box<dyn std::error::Error>> {
        self.finish_train();
        self.finish_valid();
        Ok(())
    }
}

impl MetricsRendererEvaluation for ProgressRenderer {
    fn update_test(&mut self, _name: EvaluationName, _state: MetricState) {}

    fn render_test(&mut self, _item: EvaluationProgress, _indicators: Vec<ProgressType>) {}
}

impl MetricsRenderer for ProgressRenderer {
    fn manual_close(&mut self) {}

    fn register_metric(&mut self, definition: MetricDefinition) {
        self.names.insert(definition.metric_id, definition.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(serialized: &SerializedEntry) -> (f64, usize) {
        match NumericEntry::deserialize(&serialized.serialized) {
            Ok(NumericEntry::Aggregated {
                aggregated_value,
                count,
            }) => (aggregated_value, count),
            other => panic!("unexpected entry {other:?}"),
        }
    }

    #[test]
    fn macro_f1_entries_average_to_the_epoch_score() {
        let batches = [
            (vec![0, 1, 1], vec![0, 1, 2]),
            (vec![2, 2], vec![2, 0]),
            (vec![3, 0, 1, 1], vec![3, 1, 1, 0]),
        ];
        let mut metric = MacroF1Metric::new();
        let metadata = MetricMetadata {
            progress: burn::data::dataloader::Progress::new(0, 0),
            global_progress: burn::data::dataloader::Progress::new(0, 0),
            iteration: None,
            lr: None,
        };
        let (mut sum, mut count) = (0.0, 0);
        let (mut truth, mut predicted) = (Vec::new(), Vec::new());
        for (p, t) in batches {
            truth.extend(&t);
            predicted.extend(&p);
            let input = ClassPredictions {
                predictions: p,
                targets: t,
            };
            let (value, n) = entry(&metric.update(&input, &metadata));
            sum += value * n as f64;
            count += n;
            // Burn's count-weighted mean of the entries so far is the score so far.
            let expected = 100.0 * crate::metrics::macro_f1(&truth, &predicted).unwrap();
            assert!((sum / count as f64 - expected).abs() < 1e-9);
            assert!((metric.epoch_value() - expected).abs() < 1e-12);
        }
        metric.clear();
        assert!(metric.epoch_value().is_nan());
    }

    #[test]
    fn running_means_weight_by_count_but_keep_the_latest_rate() {
        let mut running = Running::default();
        let agg = |v: f64, n: usize| NumericEntry::Aggregated {
            aggregated_value: v,
            count: n,
        };
        running.add(LOSS, &agg(2.0, 8));
        running.add(LOSS, &agg(1.0, 2));
        running.add(LEARNING_RATE, &agg(1e-3, 1));
        running.add(LEARNING_RATE, &agg(5e-4, 1));
        let summary = running.summary();
        assert!((summary[LOSS] - 1.8).abs() < 1e-12);
        assert_eq!(summary[LEARNING_RATE], 5e-4);
        let line = format_metrics(&summary);
        assert_eq!(line, "loss 1.8000 | lr 5.0e-4");
    }

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

    #[test]
    fn previous_runs_are_cleared_but_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in ["train/epoch-4", "valid/epoch-1", "train/mine", "checkpoint"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        for file in [
            "train/epoch-4/Loss.log",
            "train/notes.txt",
            "checkpoint/model-3.mpk",
            "checkpoint/optim-3.mpk",
            "checkpoint/keep.txt",
            "classifier.mpk",
            "classifier.json",
        ] {
            std::fs::write(d.join(file), "x").unwrap();
        }
        clear_previous_run(d).unwrap();
        for gone in [
            "train/epoch-4",
            "valid/epoch-1",
            "checkpoint/model-3.mpk",
            "checkpoint/optim-3.mpk",
            "classifier.mpk",
        ] {
            assert!(!d.join(gone).exists(), "{gone}");
        }
        for kept in [
            "train/mine",
            "train/notes.txt",
            "checkpoint/keep.txt",
            "classifier.json",
        ] {
            assert!(d.join(kept).exists(), "{kept}");
        }
    }

    #[test]
    fn loading_from_an_empty_folder_names_the_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let err =
            load_classifier::<burn::backend::NdArray>(dir.path(), &Default::default()).unwrap_err();
        assert!(matches!(err, FinetuneError::ConfigFile { .. }), "{err}");
        assert!(err.to_string().contains(CLASSIFIER_CONFIG_FILE), "{err}");
    }
}
