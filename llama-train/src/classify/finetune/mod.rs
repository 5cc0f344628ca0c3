//! Fine-tuning the [`LlamaEmbeddingClassifier`] with Burn's `Learner` and the exercise's
//! AdamW, evaluation on dev after every epoch, and prediction with the best-dev model.
//!
//! # Flow of [`finetune`]
//!
//! 1. Build the classifier over the given Llama, its head initialised from the seed; with
//!    [`FinetuneOption::Pretrain`] the Llama is frozen.
//! 2. Train for `epochs` epochs with Burn's [`SupervisedTraining`] and `Learner`, driven by
//!    [`crate::classify::finetune::training_loop`]: each epoch's batch order comes from `(seed, epoch)` and each
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
pub mod error;
pub mod resume;
pub mod training_loop;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use burn::data::dataloader::DataLoaderBuilder;
use burn::module::Module;
use burn::record::{FileRecorder, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::train::metric::{AccuracyMetric, IterationSpeedMetric, LearningRateMetric, LossMetric};
use burn::train::{
    Learner, LearnerModelRecord, LearnerOptimizerRecord, SupervisedTraining, TrainingStrategy,
};
use llama_model::checkpoint::{raw_tensor, TensorMap};
use llama_model::lora::file::save_adapter;
use llama_model::lora::LoraConfig;
use llama_model::{AdamWConfig, Llama, LlamaConfig};

use crate::classify::classifier::{ClassifierConfig, ClassifierError, LlamaEmbeddingClassifier};
use crate::classify::finetune::artifacts::{
    clear_previous_run, remove_stale_checkpoints, save_json, SaveEveryCall,
};
use crate::classify::finetune::error::io_err;
use crate::classify::finetune::resume::{ResumeState, RunSettings};
use crate::classify::finetune::training_loop::{Components, EpochOrdered, LoopEnd, ResumableLoop};
use crate::data::sentences::{SentenceBatch, SentenceBatcher, SentenceDataset, SentenceItem};
use crate::distributed::collective::{Collective, RankOutcome, RankSummary};
use crate::fnv::weights_digest;
use crate::report::metrics_log::{rows_to_resume, METRICS_FILE};
use crate::run::control::RunControl;
use crate::run::ADAPTER_FILE;

// The parts of a run live in their own modules; these re-exports keep `finetune::…` paths.
pub use crate::classify::evaluate::{
    evaluate, evaluate_with_progress, load_classifier, Evaluation, SavedClassifier,
};
pub use crate::classify::finetune::artifacts::{
    ClassifierRecorder, CLASSIFIER_CONFIG_FILE, CLASSIFIER_RECORD_STEM, FINETUNE_CONFIG_FILE,
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
    config.check()?;
    data.check()?;
    if control.max_steps == Some(0) {
        return Err(FinetuneError::InvalidConfig(
            "max_steps must be at least 1".into(),
        ));
    }
    // The adapters are attached after the run folder exists: refuse bad settings before.
    if let Some(lora) = &config.lora {
        lora.check(&llama).map_err(ClassifierError::from)?;
    }
    let dir = &config.artifact_dir;
    let world_size = control.collective.as_ref().map_or(1, |c| c.world_size);
    let is_main = control.collective.as_ref().is_none_or(|c| c.is_main());
    let settings = RunSettings::new(config, &data.train).with_world_size(world_size);
    let digest = settings.digest();
    // Join the other ranks before anything is written: a bad address or a missing rank
    // leaves no run folder. (Rank 0 writes nothing another rank reads before the first
    // step, which waits for every rank.)
    let collective = match &control.collective {
        Some(settings) => Some(Arc::new(Collective::<B::InnerBackend>::join(
            settings.clone(),
            device,
            digest,
        )?)),
        None => None,
    };
    if is_main {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let state = if control.resume {
        // Every rank reads rank 0's saved state (a shared folder, or a copy of it).
        let state = ResumeState::load(dir, &settings)?;
        if is_main && state.steps > 0 {
            remove_stale_checkpoints(dir, state.steps)?;
        }
        state
    } else {
        if is_main {
            clear_previous_run(dir)?;
        }
        ResumeState::start(settings)
    };

    let classifier_config = ClassifierConfig::new(llama_config.clone(), data.num_labels)
        .with_hidden_dropout_prob(config.hidden_dropout_prob)
        .with_position(config.position)
        .with_lora(config.lora.clone());
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
    if is_main {
        save_json(&classifier_config, &dir.join(CLASSIFIER_CONFIG_FILE))?;
        save_json(config, &dir.join(FINETUNE_CONFIG_FILE))?;
    }

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

    let metrics = if is_main {
        rows_to_resume(&dir.join(METRICS_FILE), state.steps)?
    } else {
        Vec::new()
    };
    let previous_key = (state.steps > 0).then_some(state.steps);
    let state = Arc::new(Mutex::new(state));
    let end = Arc::new(Mutex::new(None));
    let strategy = ResumableLoop::<B> {
        dir: dir.clone(),
        train,
        seed: config.seed,
        batch_size: config.batch_size,
        group_by_length: config.group_by_length,
        max_steps: control.max_steps,
        log_every: config.log_every,
        metrics,
        state: state.clone(),
        end: end.clone(),
        collective: collective.clone(),
        backend: std::marker::PhantomData,
    };
    let renderer = ProgressRenderer::new(config.epochs, config.log_every, control.progress);
    // The other ranks keep Burn's logs in a folder of their own, removed at the end.
    let scratch = if is_main {
        None
    } else {
        Some(tempfile::tempdir().map_err(io_err(dir))?)
    };
    let burn_dir = scratch.as_ref().map_or(dir.as_path(), |s| s.path());
    let training = SupervisedTraining::new(burn_dir, train_loader, valid_loader)
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
    // Only ranks compare digests: reading every weight back is not free on a large model.
    let last_weights_digest = {
        let last = training.launch(learner).model;
        collective.as_ref().map(|_| weights_digest(&last))
    };
    let summary = |collective: &Collective<B::InnerBackend>, steps: usize| RankSummary {
        steps,
        last_weights_digest: last_weights_digest.unwrap_or_default(),
        exchange: collective.stats(),
    };

    let end = end.lock().unwrap_or_else(PoisonError::into_inner).take();
    if let (Some(collective), Some(LoopEnd::Finished | LoopEnd::Stopped { .. })) =
        (&collective, &end)
    {
        collective.leave();
    }
    if let (false, Some(LoopEnd::Finished), Some(collective)) = (is_main, &end, &collective) {
        let steps = state.lock().unwrap_or_else(PoisonError::into_inner).steps;
        return Ok(RankOutcome::Other(summary(collective, steps)));
    }
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
    let predict = |dataset: &SentenceDataset, which: &str| {
        let bar = control.progress.bar(
            dataset.items().len(),
            format!("best model (epoch {best_epoch}): {which}"),
            "sentences",
        );
        let result = evaluate_with_progress(
            &saved.model,
            dataset,
            config.batch_size,
            data.pad_id,
            device,
            |n| bar.inc(n as u64),
        );
        bar.finish_and_clear();
        result
    };
    let adapter_path = match &classifier_config.lora {
        Some(lora) => Some(save_classifier_adapter(&saved.model, lora, dir)?),
        None => None,
    };
    let dev = predict(&data.dev, "dev")?;
    let test = data
        .test
        .as_ref()
        .map(|test| predict(test, "test"))
        .transpose()?;
    Ok(RankOutcome::Main(Box::new(FinetuneOutcome {
        model: saved.model,
        classifier_config: saved.config,
        best_epoch,
        record_path,
        adapter_path,
        dev,
        test,
        steps: state.steps,
        epochs: state.history,
        rank: collective.as_deref().map(|c| summary(c, state.steps)),
    })))
}

/// Write the adapters of a LoRA-trained `model` and its head (`classifier_head.weight`
/// `[labels, dim]`, `classifier_head.bias`) to `dir/adapter.safetensors`.
fn save_classifier_adapter<B: Backend>(
    model: &LlamaEmbeddingClassifier<B>,
    lora: &LoraConfig,
    dir: &Path,
) -> Result<PathBuf, FinetuneError> {
    let path = dir.join(ADAPTER_FILE);
    let mut head = TensorMap::new();
    head.insert(
        "classifier_head.weight".into(),
        raw_tensor(model.classifier_head.weight.val().transpose()),
    );
    if let Some(bias) = &model.classifier_head.bias {
        head.insert("classifier_head.bias".into(), raw_tensor(bias.val()));
    }
    save_adapter(&path, &model.llama, lora, head)?;
    Ok(path)
}
