//! The stages of one rank's fine-tuning run, in the order [`super::finetune_rank`] runs
//! them: check the settings, open the run folder (fresh or resumed), restore the learner,
//! train, conclude (stopped, failed or finished), and predict with the best model.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use burn::data::dataloader::{DataLoader, DataLoaderBuilder};
use burn::data::dataset::Dataset;
use burn::module::Module;
use burn::record::{FileRecorder, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::train::metric::{AccuracyMetric, IterationSpeedMetric, LearningRateMetric, LossMetric};
use burn::train::{
    Learner, LearnerModelRecord, LearnerOptimizerRecord, SupervisedTraining, TrainingStrategy,
};
use llama_model::{AdamWConfig, Llama, LlamaConfig};

use crate::classify::classifier::{ClassifierConfig, ClassifierError, LlamaEmbeddingClassifier};
use crate::classify::evaluate::{evaluate_with_progress, load_classifier};
use crate::classify::finetune::artifacts::{
    clear_previous_run, remove_orphaned_temps, save_classifier_adapter, save_json,
    ClassifierRecorder, SaveEveryCall, CLASSIFIER_CONFIG_FILE, CLASSIFIER_RECORD_STEM,
    FINETUNE_CONFIG_FILE,
};
use crate::classify::finetune::config::FinetuneConfig;
use crate::classify::finetune::epoch_order::EpochOrdered;
use crate::classify::finetune::error::{io_err, FinetuneError};
use crate::classify::finetune::resume::{ResumeState, RunSettings};
use crate::classify::finetune::training_loop::{Components, LoopEnd, ResumableLoop};
use crate::classify::finetune::{FinetuneData, FinetuneOutcome};
use crate::data::sentences::{SentenceBatch, SentenceBatcher, SentenceDataset, SentenceItem};
use crate::distributed::collective::{Collective, RankSummary};
use crate::fnv::weights_digest;
use crate::metrics::MacroF1Metric;
use crate::report::metrics_log::{rows_to_resume, METRICS_FILE};
use crate::report::progress::ProgressRenderer;
use crate::run::control::RunControl;
use crate::run::ADAPTER_FILE;

/// Everything checkable before anything is written: the config, the data, the step budget
/// and the LoRA settings (the adapters are attached after the run folder exists).
pub(super) fn check_run<B: AutodiffBackend>(
    config: &FinetuneConfig,
    data: &FinetuneData,
    control: &RunControl,
    llama: &Llama<B>,
) -> Result<(), FinetuneError> {
    config.check()?;
    data.check()?;
    if control.max_steps == Some(0) {
        return Err(FinetuneError::InvalidConfig(
            "max_steps must be at least 1".into(),
        ));
    }
    if let Some(lora) = &config.lora {
        lora.check(llama).map_err(ClassifierError::from)?;
    }
    Ok(())
}

/// One rank's run: its settings and its place in a data-parallel run.
pub(super) struct RankRun<'a, B: AutodiffBackend> {
    pub(super) config: &'a FinetuneConfig,
    pub(super) data: &'a FinetuneData,
    pub(super) control: &'a RunControl,
    pub(super) device: &'a B::Device,
    /// Rank 0 (or a run on one process): it alone writes the run folder.
    pub(super) is_main: bool,
    pub(super) collective: Option<Arc<Collective<B::InnerBackend>>>,
}

/// What the training loop left: how it ended, where the run stands, and the last step's
/// weights digest (data-parallel runs only).
pub(super) struct Trained {
    end: Option<LoopEnd>,
    state: ResumeState,
    last_weights_digest: Option<u64>,
}

/// How a finished rank goes on.
pub(super) enum Concluded {
    /// Rank 0 (or a single process): predict with the best model.
    Main {
        state: Box<ResumeState>,
        summary: Option<RankSummary>,
    },
    /// Another rank of a data-parallel run: its summary, nothing more to do.
    Other(RankSummary),
}

impl<B: AutodiffBackend> RankRun<'_, B> {
    fn dir(&self) -> &Path {
        &self.config.artifact_dir
    }

    /// The run folder and the state to start from: `resume.json`'s (every rank reads rank
    /// 0's saved state, from a shared folder or a copy) or a fresh start, after clearing
    /// what an earlier run left.
    pub(super) fn open_folder(&self, settings: RunSettings) -> Result<ResumeState, FinetuneError> {
        let dir = self.dir();
        if self.is_main {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
            remove_orphaned_temps(dir)?;
        }
        if self.control.resume {
            // Checkpoints `resume.json` does not name go after the next save: until the
            // named one has loaded, nothing is removed.
            Ok(ResumeState::load(dir, &settings)?)
        } else {
            if self.is_main {
                clear_previous_run(dir)?;
            }
            Ok(ResumeState::start(settings))
        }
    }

    /// The classifier's configuration over a Llama of `llama_config`.
    pub(super) fn classifier_config(&self, llama_config: &LlamaConfig) -> ClassifierConfig {
        ClassifierConfig::new(llama_config.clone(), self.data.num_labels)
            .with_hidden_dropout_prob(self.config.hidden_dropout_prob)
            .with_position(self.config.position)
            .with_lora(self.config.lora.clone())
    }

    /// The classifier over `llama` and its AdamW, both restored from Burn's checkpoint that
    /// `state` names (checked to be whole) when resuming; rank 0 saves the two configs
    /// beside them.
    pub(super) fn restore_learner(
        &self,
        classifier_config: &ClassifierConfig,
        llama: Llama<B>,
        state: &ResumeState,
    ) -> Result<Learner<Components<B>>, FinetuneError> {
        let (config, dir, steps) = (self.config, self.dir(), state.steps);
        let mut model = classifier_config.init_with_llama(llama, config.seed)?;
        let recorder = ClassifierRecorder::new();
        let checkpoint = |kind: &str| state.checked_record(&dir.join("checkpoint"), kind);
        let record_error = |path: PathBuf| {
            move |e: burn::record::RecorderError| FinetuneError::Record {
                path,
                detail: e.to_string(),
            }
        };
        if steps > 0 {
            let path = checkpoint("model")?;
            let record: LearnerModelRecord<Components<B>> = recorder
                .load(path.clone(), self.device)
                .map_err(record_error(path))?;
            model = model.load_record(record);
        }
        // After loading: the option sets which parameters are trained.
        let model = model.with_option(config.option);
        if self.is_main {
            save_json(classifier_config, &dir.join(CLASSIFIER_CONFIG_FILE))?;
            if steps == 0 {
                // A resumed run keeps the record of what its files hold until it saves.
                save_json(config, &dir.join(FINETUNE_CONFIG_FILE))?;
            }
        }
        let optim = AdamWConfig::new()
            .with_weight_decay(config.weight_decay)
            .init::<B, LlamaEmbeddingClassifier<B>>()?;
        let mut learner: Learner<Components<B>> = Learner::new(model, optim, config.lr);
        if steps > 0 {
            let path = checkpoint("optim")?;
            let record: LearnerOptimizerRecord<Components<B>> = recorder
                .load(path.clone(), self.device)
                .map_err(record_error(path))?;
            learner.load_optim(record);
        }
        Ok(learner)
    }

    /// A data loader of `dataset` in batches of the run's batch size, on `Bk`.
    fn loader<Bk: Backend, D: Dataset<SentenceItem> + 'static>(
        &self,
        dataset: D,
        device: &Bk::Device,
    ) -> Arc<dyn DataLoader<Bk, SentenceBatch<Bk>>> {
        DataLoaderBuilder::<Bk, SentenceItem, SentenceBatch<Bk>>::new(SentenceBatcher::new(
            self.data.pad_id,
        ))
        .batch_size(self.config.batch_size)
        .num_workers(self.config.num_workers)
        .set_device(device.clone())
        .build(dataset)
    }

    /// Trains from `state` with Burn's `SupervisedTraining`, driven step by step by our
    /// [`ResumableLoop`]; rank 0 logs under the run folder, the other ranks in a scratch
    /// folder removed at the end.
    pub(super) fn train(
        &self,
        learner: Learner<Components<B>>,
        state: ResumeState,
    ) -> Result<Trained, FinetuneError> {
        let (config, dir) = (self.config, self.dir());
        let train = EpochOrdered::new(self.data.train.clone());
        let train_loader = self.loader::<B, _>(train.clone(), self.device);
        let valid_loader = self.loader::<B::InnerBackend, _>(self.data.dev.clone(), self.device);
        let metrics = if self.is_main {
            rows_to_resume(&dir.join(METRICS_FILE), state.steps)?
        } else {
            Vec::new()
        };
        let state = Arc::new(Mutex::new(state));
        let end = Arc::new(Mutex::new(None));
        let strategy = ResumableLoop::<B> {
            dir: dir.to_path_buf(),
            config: config.clone(),
            train,
            seed: config.seed,
            batch_size: config.batch_size,
            group_by_length: config.group_by_length,
            max_steps: self.control.max_steps,
            log_every: config.log_every,
            metrics,
            state: state.clone(),
            end: end.clone(),
            collective: self.collective.clone(),
            backend: std::marker::PhantomData,
        };
        let renderer =
            ProgressRenderer::new(config.epochs, config.log_every, self.control.progress);
        let scratch = if self.is_main {
            None
        } else {
            Some(tempfile::tempdir().map_err(io_err(dir))?)
        };
        let burn_dir = scratch.as_ref().map_or(dir, |s| s.path());
        let training = SupervisedTraining::new(burn_dir, train_loader, valid_loader)
            .metrics((
                AccuracyMetric::new(),
                LossMetric::new(),
                MacroF1Metric::new(),
            ))
            .metric_train_numeric(LearningRateMetric::new())
            .metric_train_numeric(IterationSpeedMetric::new())
            .with_file_checkpointer(ClassifierRecorder::new())
            .with_checkpointing_strategy(SaveEveryCall)
            .with_training_strategy(TrainingStrategy::Custom(Arc::new(strategy)))
            .with_interrupter(self.control.interrupter.clone().unwrap_or_default())
            .num_epochs(config.epochs)
            .renderer(renderer)
            // Burn's default installs a process-wide tracing subscriber and panic hook
            // (logging to `experiment.log`); a library must leave those to the application.
            .with_application_logger(None);
        // The model returned by `launch` is the last step's; the best one is on disk.
        // Only ranks compare digests: reading every weight back is not free on a large model.
        let last = training.launch(learner).model;
        let last_weights_digest = self.collective.as_ref().map(|_| weights_digest(&last));
        let end = end.lock().unwrap_or_else(PoisonError::into_inner).take();
        let state = state.lock().unwrap_or_else(PoisonError::into_inner).clone();
        Ok(Trained {
            end,
            state,
            last_weights_digest,
        })
    }

    /// How the loop ended: a stop or a failure is this call's error; a finished rank leaves
    /// the data-parallel run and goes on with its summary.
    pub(super) fn conclude(&self, trained: Trained) -> Result<Concluded, FinetuneError> {
        let Trained {
            end,
            state,
            last_weights_digest,
        } = trained;
        let summary = |collective: &Collective<B::InnerBackend>| RankSummary {
            steps: state.steps,
            last_weights_digest: last_weights_digest.unwrap_or_default(),
            exchange: collective.stats(),
        };
        if let (Some(collective), Some(LoopEnd::Finished | LoopEnd::Stopped { .. })) =
            (&self.collective, &end)
        {
            collective.leave();
        }
        match end {
            Some(LoopEnd::Finished) => {}
            Some(LoopEnd::Stopped { at, interrupted }) => {
                return Err(FinetuneError::Stopped {
                    dir: self.dir().to_path_buf(),
                    at,
                    interrupted,
                    step: state.steps,
                    best_epoch: state.best.map(|b| b.epoch),
                })
            }
            Some(LoopEnd::Failed(message)) => return Err(FinetuneError::Save(message)),
            None => return Err(FinetuneError::Save("the training loop did not run".into())),
        }
        let summary = self.collective.as_deref().map(summary);
        match (self.is_main, summary) {
            (false, Some(summary)) => Ok(Concluded::Other(summary)),
            (_, summary) => Ok(Concluded::Main {
                state: Box::new(state),
                summary,
            }),
        }
    }

    /// The best model, reloaded from its file (so that these predictions are exactly what a
    /// later `eval` of the saved classifier gives), with its adapter file (LoRA) and its dev
    /// and test predictions.
    pub(super) fn predict_with_best(
        &self,
        state: Box<ResumeState>,
        summary: Option<RankSummary>,
    ) -> Result<FinetuneOutcome<B::InnerBackend>, FinetuneError> {
        let dir = self.dir();
        let best_epoch = state
            .best
            .ok_or_else(|| FinetuneError::NoCheckpoint(dir.to_path_buf()))?
            .epoch;
        let extension = <ClassifierRecorder as FileRecorder<B>>::file_extension();
        let record_path = dir.join(format!("{CLASSIFIER_RECORD_STEM}.{extension}"));
        let saved = load_classifier::<B::InnerBackend>(dir, self.device)?;
        let predict = |dataset: &SentenceDataset, which: &str| {
            let bar = self.control.progress.bar(
                dataset.items().len(),
                format!("best model (epoch {best_epoch}): {which}"),
                "sentences",
            );
            let result = evaluate_with_progress(
                &saved.model,
                dataset,
                self.config.batch_size,
                self.data.pad_id,
                self.device,
                |n| bar.inc(n as u64),
            );
            bar.finish_and_clear();
            result
        };
        let adapter_path = match &saved.config.lora {
            Some(lora) => {
                let path = dir.join(ADAPTER_FILE);
                save_classifier_adapter(&saved.model, lora, &path)?;
                Some(path)
            }
            None => None,
        };
        let dev = predict(&self.data.dev, "dev")?;
        let test = self
            .data
            .test
            .as_ref()
            .map(|test| predict(test, "test"))
            .transpose()?;
        Ok(FinetuneOutcome {
            model: saved.model,
            classifier_config: saved.config,
            best_epoch,
            record_path,
            adapter_path,
            dev,
            test,
            steps: state.steps,
            epochs: state.history,
            rank: summary,
        })
    }
}
