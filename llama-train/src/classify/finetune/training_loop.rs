//! The fine-tuning loop: Burn's `Learner` (train step, AdamW step, file checkpointer, metrics
//! and renderer) driven one batch at a time by a loop of ours, so that a run can stop after
//! any step and resume exactly.
//!
//! Burn's default loop shuffles with one generator that every epoch advances, and dropout
//! draws from the backend's generator, global to the process; neither state can be saved,
//! so a resumed run would see other batches and other dropout masks than an uninterrupted
//! one, and anything else drawing from that generator (a run on another thread) would change
//! the masks. Here each epoch's order is drawn from `(seed, epoch)` ([`epoch_order`]) and each
//! step's dropout mask from `(seed, epoch, batch)` ([`step_seed`], carried by the batch to
//! [`crate::dropout::seeded_dropout`]): the position in the run *is* its random state, and
//! `resume.json` records it.
//!
//! After every epoch (training pass, then dev) the loop saves, in this order: the best model
//! so far as `classifier.mpk` when the dev accuracy improved (strictly: a tie keeps the
//! earlier epoch), Burn's checkpoint of the model and the optimizer (under the step's key),
//! `metrics.csv` (a row every `log_every` steps and one per dev evaluation, see
//! [`crate::report::metrics_log`]), `curves.png` and `finetune.json`, then `resume.json`
//! naming the checkpoint with its lengths, and last it removes the checkpoints no longer
//! named. When the [`Interrupter`](burn::train::Interrupter) fires (Ctrl-C) or the step
//! budget is spent, the current step finishes, the last weights are written as
//! `classifier-last.mpk` (and `adapter-last.safetensors` with LoRA), and the same
//! checkpoint is saved mid-epoch; a stop adds no dev evaluation, so the best-model choice
//! of a stopped and resumed run is that of an uninterrupted one.
//!
//! # What is Burn's and what is ours
//!
//! [`ResumableLoop`] is a [`SupervisedLearningStrategy`] handed to Burn's
//! `SupervisedTraining` as `TrainingStrategy::Custom`. Burn's `SupervisedTraining::launch`
//! still does everything around the loop: it builds the [`Learner`] (our
//! [`LlamaEmbeddingClassifier`]'s `TrainStep`/`InferenceStep`, our AdamW through Burn's
//! optimizer adaptor), the data loaders and their batcher, the metrics (accuracy, loss,
//! our macro-F1, learning rate, iteration speed) and their per-epoch log files, the event
//! processor and our renderer, the file checkpointer, the interrupter, and the start and
//! end events. What this file re-implements is only `fit`, the epoch loop that Burn's
//! `SingleDeviceTrainingStrategy` runs: it differs in the training order (set per epoch from
//! the seed instead of drawn from a running generator), the per-step dropout seed and loss
//! divisor, skipping the batches done before an interruption, stopping after any step, the
//! checkpoint key (the step count, not the epoch) and the best-model file. Burn's dev pass
//! (`InferenceStep` over the valid loader, with its metrics) is driven the same way Burn's
//! drives it.
//!
//! # Several processes
//!
//! One step of training is one call of [`ResumableLoop::train_step`]. On a data-parallel
//! run ([`crate::distributed::collective`]) it cuts this rank's rows out of the ordered global batch
//! (rows in the epoch order, padded to the global batch's width, dropout masks the rows'
//! part of the global batch's masks), runs Burn's `TrainStep` on them, sums the
//! `GradientsParams` across ranks (`GradientsParams::all_reduce`, burn-collective) and steps
//! the optimizer once; the rows' outputs are gathered so that the metrics are the global
//! batch's. Everything else in this loop (order, positions, saving) stays as it is; only
//! rank 0 evaluates and saves, and the ranks agree after every step and every epoch on
//! whether to stop. Burn's own `MultiDevice` and DDP strategies split batches with their
//! own loaders, which would lose the exact resumption; they are not used.

use std::marker::PhantomData;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use burn::data::dataloader::Progress;
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, Tensor};
use burn::train::{
    ClassificationOutput, EventProcessorTraining, InferenceStep, Learner, LearnerEvent,
    LearningComponentsMarker, SupervisedLearningStrategy, SupervisedTrainingEventProcessor,
    TrainLoader, TrainingComponents, TrainingItem, TrainingModel, ValidLoader,
};
use llama_model::train::adamw::AdamWOptimizer;

use crate::classify::classifier::LlamaEmbeddingClassifier;
use crate::classify::finetune::artifacts::{
    checkpoint_records, remove_superseded, save_best, save_last, save_run_record,
};
use crate::classify::finetune::config::FinetuneConfig;
pub use crate::classify::finetune::epoch_order::training_order;
use crate::classify::finetune::epoch_order::EpochOrdered;
use crate::classify::finetune::resume::EpochSummary;
use crate::classify::finetune::resume::{BestEpoch, Position, ResumeState, Tally};
use crate::data::sentences::SentenceBatch;
use crate::distributed::collective::{row_share, Collective};
use crate::distributed::settings::CollectiveError;
use crate::metrics::LEARNING_RATE;
use crate::report::curves::{save_curves, CURVES_FILE};
use crate::report::metrics_log::{write_metrics, MetricsRow, Split, METRICS_FILE};
use crate::run::control::INTERRUPTED;
use crate::run::order::step_seed;
use crate::run::saving::SaveGuard;

/// Burn's learning components of fine-tuning: constant learning rate, our classifier and
/// AdamW.
pub(crate) type Components<B> = LearningComponentsMarker<
    B,
    f64,
    LlamaEmbeddingClassifier<B>,
    AdamWOptimizer<LlamaEmbeddingClassifier<B>, B>,
>;

/// How the loop ended.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum LoopEnd {
    /// Every epoch is done.
    Finished,
    /// Stopped early (interrupter or step budget); the state was saved at this position.
    Stopped {
        /// Where the run will continue.
        at: Position,
        /// `true` for the interrupter, `false` for the step budget.
        interrupted: bool,
    },
    /// Saving failed.
    Failed(String),
}

/// Every rank's rows of a global batch's outputs (per-row losses, log-probabilities
/// `[rows, classes]` and targets) as one item of the global batch of `rows` rows, and
/// whether any rank asked to stop.
fn gather_outputs<B: AutodiffBackend>(
    collective: &Collective<B::InnerBackend>,
    item: ClassificationOutput<B>,
    share: Range<usize>,
    rows: usize,
    stop: bool,
    step: usize,
) -> Result<(ClassificationOutput<B>, bool), CollectiveError> {
    let classes = item.output.dims()[1];
    let width = classes + 2;
    let block = (!share.is_empty()).then(|| {
        let n = share.len();
        Tensor::cat(
            vec![
                item.loss.inner().reshape([n, 1]),
                item.output.inner(),
                item.targets.inner().float().reshape([n, 1]),
            ],
            1,
        )
    });
    let (table, any_stop) = collective.gather_rows(block, share, [rows, width], stop, step)?;
    let loss = table.clone().slice([0..rows, 0..1]).reshape([rows]);
    let output = table.clone().slice([0..rows, 1..1 + classes]);
    let targets: Tensor<B::InnerBackend, 1, Int> = table
        .slice([0..rows, 1 + classes..width])
        .reshape([rows])
        .int();
    let item = ClassificationOutput::new(
        Tensor::from_inner(loss),
        Tensor::from_inner(output),
        Tensor::from_inner(targets),
    );
    Ok((item, any_stop))
}

/// The loop of [`crate::classify::finetune`]; see the [module docs](self).
pub(crate) struct ResumableLoop<B: AutodiffBackend> {
    pub(crate) dir: PathBuf,
    /// The run's settings (written to `finetune.json` at each save).
    pub(crate) config: FinetuneConfig,
    pub(crate) train: EpochOrdered,
    pub(crate) seed: u64,
    /// The configured batch size: the divisor of every step's summed loss, as in the
    /// exercise (see [`crate::data::sentences::SentenceBatch::loss_divisor`]).
    pub(crate) batch_size: usize,
    /// Batches of similar lengths ([`crate::data::length_grouping`]) instead of the plain order.
    pub(crate) group_by_length: bool,
    /// Stop after this many steps of this call.
    pub(crate) max_steps: Option<usize>,
    /// A `metrics.csv` row every this many steps (0: dev rows only).
    pub(crate) log_every: usize,
    /// The `metrics.csv` rows of the run so far (those a resumed run keeps).
    pub(crate) metrics: Vec<MetricsRow>,
    /// State in, final state out.
    pub(crate) state: Arc<Mutex<ResumeState>>,
    pub(crate) end: Arc<Mutex<Option<LoopEnd>>>,
    /// Data-parallel training: this rank's membership (`None`: one process). Only rank 0
    /// evaluates and saves.
    pub(crate) collective: Option<Arc<Collective<B::InnerBackend>>>,
    pub(crate) backend: PhantomData<B>,
}

impl<B: AutodiffBackend> ResumableLoop<B> {
    /// One training step on a global batch: forward and backward, then one optimizer step at
    /// the scheduled learning rate. `stop` is this process's wish to stop after the step.
    ///
    /// On several ranks ([`Collective`]) this rank trains on its block of the batch's rows,
    /// the gradients are summed across ranks before the optimizer step, and the rows'
    /// outputs are gathered, so the item returned covers the whole batch on every rank;
    /// the returned flag is whether any rank wants to stop (all stop after the same step).
    fn train_step(
        &self,
        learner: &mut Learner<Components<B>>,
        batch: SentenceBatch<B>,
        step: usize,
        stop: &dyn Fn() -> bool,
    ) -> Result<(ClassificationOutput<B>, bool), String> {
        learner.lr_step();
        let Some(collective) = &self.collective else {
            let output = learner.train_step(batch);
            learner.optimizer_step(output.grads);
            return Ok((output.item, stop()));
        };
        let settings = collective.settings();
        let rows = batch.len();
        let (share, op) = row_share(rows, settings.rank, settings.world_size);
        let output = learner.train_step(batch.rows(share.clone()));
        let what = format!("step {step}'s gradient all-reduce");
        let grads = collective
            .all_reduce_grads(&learner.model(), output.grads, op, &what)
            .map_err(|e| e.to_string())?;
        learner.optimizer_step(grads);
        // Every rank trained on all rows when there are fewer rows than ranks: rank 0's
        // outputs stand for the batch.
        let reported =
            if op == crate::distributed::collective::ReduceOperation::Mean && settings.rank > 0 {
                0..0
            } else {
                share
            };
        gather_outputs(collective, output.item, reported, rows, stop(), step)
            .map_err(|e| e.to_string())
    }

    fn finish(&self, end: LoopEnd) {
        *self.end.lock().unwrap_or_else(PoisonError::into_inner) = Some(end);
    }

    /// Whether any rank wants to stop after epoch `epoch`'s dev pass (rank 0 only can: it
    /// alone evaluates, and Ctrl-C may come during that). On one process: `stop`.
    fn agree_to_stop(&self, stop: bool, epoch: usize) -> Result<bool, String> {
        let Some(collective) = &self.collective else {
            return Ok(stop);
        };
        collective
            .any(stop, &format!("the end of epoch {epoch}"))
            .map_err(|e| e.to_string())
    }

    fn is_main(&self) -> bool {
        self.collective
            .as_ref()
            .is_none_or(|c| c.settings().is_main())
    }
}

/// What the loop carries from step to step: Burn's parts of the run, and ours.
struct LoopRun<B: AutodiffBackend> {
    components: TrainingComponents<Components<B>>,
    /// Where the run stands (saved as `resume.json`).
    state: ResumeState,
    /// The `metrics.csv` rows so far.
    rows: Vec<MetricsRow>,
    /// Steps trained by this call (for the step budget).
    steps_here: usize,
    /// Training time of the earlier calls of a resumed run.
    wall_offset: f64,
    started: Instant,
}

impl<B: AutodiffBackend> LoopRun<B> {
    /// Training time of the whole run so far, in seconds.
    fn wall(&self) -> f64 {
        self.wall_offset + self.started.elapsed().as_secs_f64()
    }

    /// A `metrics.csv` train row from the steps since the last one.
    fn log_train(&mut self, epoch: usize, lr: f64) {
        let window = std::mem::take(&mut self.state.window);
        let mut row =
            MetricsRow::from_tally(epoch, self.state.steps, Split::Train, &window, self.wall());
        row.lr = Some(lr);
        self.rows.push(row);
    }
}

impl<B: AutodiffBackend> ResumableLoop<B> {
    /// Saves the model, the optimizer, the metrics and their curves, and the state (whose
    /// `next` says where to continue; written last, so a crash between these writes resumes
    /// from the previous state, and the metrics rows past it are dropped). Rank 0 saves the
    /// run; the other ranks only keep their state.
    fn save(&self, run: &mut LoopRun<B>, learner: &Learner<Components<B>>) -> Result<(), String> {
        if !self.is_main() {
            *self.state.lock().unwrap_or_else(PoisonError::into_inner) = run.state.clone();
            return Ok(());
        }
        let _saving = SaveGuard::begin();
        let components = &mut run.components;
        if let Some(checkpointer) = components.checkpointer.as_mut() {
            checkpointer.checkpoint(learner, run.state.steps, &components.event_store);
        }
        // Burn's checkpointer reports a failed write through the interrupter.
        if components.interrupter.should_stop() {
            if let Some(message) = components
                .interrupter
                .get_message()
                .filter(|m| m != INTERRUPTED)
            {
                return Err(format!("saving the checkpoint failed: {message}"));
            }
        }
        write_metrics(&self.dir.join(METRICS_FILE), &run.rows).map_err(|e| e.to_string())?;
        if run.rows.iter().any(|r| r.loss.is_some()) {
            save_curves(&run.rows, &self.dir.join(CURVES_FILE)).map_err(|e| e.to_string())?;
        }
        run.state.checkpoint =
            checkpoint_records(&self.dir, run.state.steps).map_err(|e| e.to_string())?;
        save_run_record(&self.config, &run.state).map_err(|e| e.to_string())?;
        run.state.save(&self.dir).map_err(|e| e.to_string())?;
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = run.state.clone();
        // Only now is nothing older named: the checkpoints before go.
        remove_superseded(&self.dir, &run.state).map_err(|e| e.to_string())
    }

    /// A stop: the last weights as a usable classifier beside the best one (rank 0), then
    /// the saved state that names them.
    fn save_stopped(
        &self,
        run: &mut LoopRun<B>,
        learner: &Learner<Components<B>>,
    ) -> Result<(), String> {
        // The last weights and the save after them are one save (a second Ctrl-C waits).
        let _saving = self.is_main().then(SaveGuard::begin);
        if self.is_main() {
            let model = learner.model().valid();
            save_last(&model, self.config.lora.as_ref(), &self.dir)?;
        }
        run.state.last = Some(run.state.steps);
        self.save(run, learner)
    }

    /// The epochs from the saved position on, and how they ended.
    fn epochs(
        &self,
        run: &mut LoopRun<B>,
        learner: &mut Learner<Components<B>>,
        train_loader: &TrainLoader<Components<B>>,
        valid_loader: &ValidLoader<Components<B>>,
    ) -> LoopEnd {
        let lengths = self.train.lengths();
        for epoch in run.state.next.epoch..=run.components.num_epochs {
            self.train.set_order(training_order(
                self.seed,
                epoch,
                &lengths,
                self.batch_size,
                self.group_by_length,
            ));
            match self.train_epoch(run, learner, train_loader, epoch) {
                Ok(None) => {}
                Ok(Some(interrupted)) => {
                    return match self.save_stopped(run, learner) {
                        Ok(()) => LoopEnd::Stopped {
                            at: run.state.next,
                            interrupted,
                        },
                        Err(e) => LoopEnd::Failed(e),
                    }
                }
                Err(e) => return LoopEnd::Failed(e),
            }
            // The epoch's last training row: the window since the last logged step, whatever
            // `log_every` is (empty when the epoch ended on a logged step).
            if self.log_every > 0 && !run.state.window.is_empty() {
                run.log_train(epoch, learner.lr_current());
            }
            let processor = &mut run.components.event_processor;
            processor.process_train(LearnerEvent::EndEpoch(epoch));
            let stop = if self.is_main() {
                if let Err(e) = self.close_epoch(run, learner, valid_loader, epoch) {
                    return LoopEnd::Failed(e);
                }
                run.components.interrupter.should_stop()
            } else {
                // Rank 0 evaluates and saves; this rank waits for its verdict on stopping.
                self.next_epoch(run, epoch);
                let _ = self.save(run, learner);
                false
            };
            match self.agree_to_stop(stop, epoch) {
                Ok(false) => {}
                // Ctrl-C during the dev pass: the epoch is complete and saved; the last
                // weights join it.
                Ok(true) => {
                    return match self.save_stopped(run, learner) {
                        Ok(()) => LoopEnd::Stopped {
                            at: run.state.next,
                            interrupted: true,
                        },
                        Err(e) => LoopEnd::Failed(e),
                    }
                }
                Err(e) => return LoopEnd::Failed(e),
            }
        }
        LoopEnd::Finished
    }

    /// Trains epoch `epoch` from where the run stands. `Some(interrupted)` when the run
    /// stopped after a step (the interrupter, or the step budget), with `state.next` there.
    fn train_epoch(
        &self,
        run: &mut LoopRun<B>,
        learner: &mut Learner<Components<B>>,
        train_loader: &TrainLoader<Components<B>>,
        epoch: usize,
    ) -> Result<Option<bool>, String> {
        let global = Progress::new(epoch, run.components.num_epochs);
        let skip = run.state.next.batches_done;
        let started = Instant::now();
        let mut iterator = train_loader.iter();
        let mut batch = 0;
        let mut stop = None;
        while let Some(mut item) = iterator.next() {
            batch += 1;
            if batch <= skip {
                continue; // trained before the interruption
            }
            item.dropout_seed = Some(step_seed(self.seed, epoch, batch - 1));
            item.loss_divisor = Some(self.batch_size);
            let interrupter = &run.components.interrupter;
            let wants_stop = || interrupter.should_stop();
            let (output, any_stop) =
                self.train_step(learner, item, run.state.steps + 1, &wants_stop)?;
            run.state.steps += 1;
            run.steps_here += 1;
            run.state.tally.add(&output);
            run.state.window.add(&output);
            if self.log_every > 0 && run.state.steps.is_multiple_of(self.log_every) {
                run.log_train(epoch, learner.lr_current());
            }
            run.components
                .event_processor
                .process_train(LearnerEvent::ProcessedItem(TrainingItem::new(
                    output,
                    iterator.progress(),
                    global.clone(),
                    Some(batch),
                    Some(learner.lr_current()),
                )));
            if any_stop {
                stop = Some(true);
            } else if self.max_steps.is_some_and(|max| run.steps_here >= max) {
                stop = Some(false);
            }
            if stop.is_some() {
                break;
            }
        }
        run.state.partial_seconds += started.elapsed().as_secs_f64();
        if stop.is_some() {
            run.state.next = Position {
                epoch,
                batches_done: batch,
            };
        }
        Ok(stop)
    }

    /// Rank 0's end of an epoch: the dev evaluation (no dropout, no generator draws), the
    /// epoch's summary, the best model so far, the dev row, and the saved state.
    fn close_epoch(
        &self,
        run: &mut LoopRun<B>,
        learner: &Learner<Components<B>>,
        valid_loader: &ValidLoader<Components<B>>,
        epoch: usize,
    ) -> Result<(), String> {
        let global = Progress::new(epoch, run.components.num_epochs);
        let processor = &mut run.components.event_processor;
        let model = learner.model().valid();
        let mut dev = Tally::default();
        let mut iterator = valid_loader.iter();
        let mut batch = 0;
        while let Some(item) = iterator.next() {
            batch += 1;
            let output = model.step(item);
            dev.add(&output);
            processor.process_valid(LearnerEvent::ProcessedItem(TrainingItem::new(
                output,
                iterator.progress(),
                global.clone(),
                Some(batch),
                None,
            )));
        }
        processor.process_valid(LearnerEvent::EndEpoch(epoch));

        let state = &mut run.state;
        let mut train = state.tally.summary();
        train.insert(LEARNING_RATE.to_string(), learner.lr_current());
        let summary = EpochSummary {
            epoch,
            train,
            dev: dev.summary(),
            train_seconds: state.partial_seconds,
        };
        let accuracy = summary.dev_accuracy().unwrap_or(f64::NAN) / 100.0;
        // The best model and the save after it are one save (a second Ctrl-C waits for both).
        let _saving = SaveGuard::begin();
        if state.best.is_none_or(|best| accuracy > best.dev_accuracy) {
            save_best(&model, &self.dir)?;
            state.best = Some(BestEpoch {
                epoch,
                step: state.steps,
                dev_accuracy: accuracy,
            });
        }
        state.history.push(summary);
        let wall = run.wall();
        run.rows.push(MetricsRow::from_tally(
            epoch,
            run.state.steps,
            Split::Dev,
            &dev,
            wall,
        ));
        self.next_epoch(run, epoch);
        self.save(run, learner)
    }

    /// The state at the start of the epoch after `epoch`.
    fn next_epoch(&self, run: &mut LoopRun<B>, epoch: usize) {
        run.state.tally = Tally::default();
        run.state.partial_seconds = 0.0;
        run.state.next = Position {
            epoch: epoch + 1,
            batches_done: 0,
        };
    }
}

impl<B: AutodiffBackend> SupervisedLearningStrategy<Components<B>> for ResumableLoop<B> {
    fn fit(
        &self,
        components: TrainingComponents<Components<B>>,
        mut learner: Learner<Components<B>>,
        dataloader_train: TrainLoader<Components<B>>,
        dataloader_valid: ValidLoader<Components<B>>,
        _starting_epoch: usize,
    ) -> (
        TrainingModel<Components<B>>,
        SupervisedTrainingEventProcessor<Components<B>>,
    ) {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        // Training goes on: the last weights of a stop are removed at the next save.
        state.last = None;
        let rows = self.metrics.clone();
        let mut run = LoopRun {
            components,
            state,
            // Training time of the earlier calls of a resumed run, then this call's.
            wall_offset: rows.last().map_or(0.0, |r| r.wall_seconds),
            rows,
            steps_here: 0,
            started: Instant::now(),
        };
        let end = self.epochs(&mut run, &mut learner, &dataloader_train, &dataloader_valid);
        self.finish(end);
        (learner.model(), run.components.event_processor)
    }
}
