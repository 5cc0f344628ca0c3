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
//! earlier epoch), Burn's checkpoint of the model and the optimizer, `metrics.csv` (a row
//! every `log_every` steps and one per dev evaluation, see [`crate::report::metrics_log`]) and
//! `curves.png`, then `resume.json`. When
//! the [`Interrupter`](burn::train::Interrupter) fires (Ctrl-C) or the step budget is spent,
//! the current step finishes and the same checkpoint is saved mid-epoch.
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
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Instant;

use burn::data::dataloader::Progress;
use burn::data::dataset::Dataset;
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burn::train::{
    ClassificationOutput, EventProcessorTraining, InferenceStep, Learner, LearnerEvent,
    LearningComponentsMarker, SupervisedLearningStrategy, SupervisedTrainingEventProcessor,
    TrainLoader, TrainingComponents, TrainingItem, TrainingModel, ValidLoader,
};
use llama_model::train::adamw::AdamWOptimizer;

use crate::classify::classifier::LlamaEmbeddingClassifier;
use crate::classify::finetune::artifacts::save_best;
use crate::classify::finetune::resume::EpochSummary;
use crate::classify::finetune::resume::{BestEpoch, Position, ResumeState, Tally};
use crate::data::length_grouping::length_grouped_order;
use crate::data::sentences::{SentenceBatch, SentenceDataset, SentenceItem};
use crate::distributed::collective::{row_share, Collective};
use crate::metrics::LEARNING_RATE;
use crate::report::curves::{save_curves, CURVES_FILE};
use crate::report::metrics_log::{write_metrics, MetricsRow, Split, METRICS_FILE};
use crate::run::control::INTERRUPTED;
use crate::run::order::{epoch_order, step_seed};

/// Burn's learning components of fine-tuning: constant learning rate, our classifier and
/// AdamW.
pub(crate) type Components<B> = LearningComponentsMarker<
    B,
    f64,
    LlamaEmbeddingClassifier<B>,
    AdamWOptimizer<LlamaEmbeddingClassifier<B>, B>,
>;

/// Training order of epoch `epoch` over sentences of `lengths` tokens: [`epoch_order`],
/// regrouped into batches of similar lengths ([`length_grouped_order`]) when
/// `group_by_length`.
pub fn training_order(
    seed: u64,
    epoch: usize,
    lengths: &[usize],
    batch_size: usize,
    group_by_length: bool,
) -> Vec<usize> {
    let order = epoch_order(seed, epoch, lengths.len());
    if group_by_length {
        length_grouped_order(&order, lengths, batch_size)
    } else {
        order
    }
}

/// The training set in the current epoch's order (set by the loop before each epoch's
/// iteration starts; the data loader reads items lazily).
#[derive(Clone)]
pub(crate) struct EpochOrdered {
    items: SentenceDataset,
    order: Arc<RwLock<Vec<usize>>>,
}

impl EpochOrdered {
    pub(crate) fn new(items: SentenceDataset) -> Self {
        let order = (0..items.items().len()).collect();
        Self {
            items,
            order: Arc::new(RwLock::new(order)),
        }
    }

    fn set_order(&self, order: Vec<usize>) {
        *self.order.write().unwrap_or_else(PoisonError::into_inner) = order;
    }
}

impl Dataset<SentenceItem> for EpochOrdered {
    fn get(&self, index: usize) -> Option<SentenceItem> {
        let order = self.order.read().unwrap_or_else(PoisonError::into_inner);
        self.items.get(*order.get(index)?)
    }

    fn len(&self) -> usize {
        self.items.len()
    }
}

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

/// The loop of [`crate::classify::finetune`]; see the [module docs](self).
pub(crate) struct ResumableLoop<B: AutodiffBackend> {
    pub(crate) dir: PathBuf,
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
        let reported = if op == burn_collective::ReduceOperation::Mean && settings.rank > 0 {
            0..0
        } else {
            share
        };
        collective
            .gather_outputs(output.item, reported, rows, stop(), step)
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
        let mut processor = components.event_processor;
        let mut checkpointer = components.checkpointer;
        let interrupter = components.interrupter;
        let num_epochs = components.num_epochs;
        let store = components.event_store;
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let lengths = self.train.items.lengths();
        let mut steps_here = 0;
        let mut rows = self.metrics.clone();
        // Training time of the earlier calls of a resumed run, then this call's.
        let wall_offset = rows.last().map_or(0.0, |r| r.wall_seconds);
        let run_started = Instant::now();
        let wall = || wall_offset + run_started.elapsed().as_secs_f64();
        let is_main = self.is_main();

        // Save the model, the optimizer, the metrics and their curves, and `state` (whose
        // `next` says where to continue; written last, so a crash between these writes
        // resumes from the previous state, and the metrics rows past it are dropped).
        let mut save = |learner: &Learner<Components<B>>,
                        state: &ResumeState,
                        rows: &[MetricsRow]|
         -> Result<(), String> {
            *self.state.lock().unwrap_or_else(PoisonError::into_inner) = state.clone();
            if !is_main {
                return Ok(()); // rank 0 saves the run
            }
            if let Some(checkpointer) = checkpointer.as_mut() {
                checkpointer.checkpoint(learner, state.steps, &store);
            }
            // Burn's checkpointer reports a failed write through the interrupter.
            if interrupter.should_stop() {
                if let Some(message) = interrupter.get_message().filter(|m| m != INTERRUPTED) {
                    return Err(format!("saving the checkpoint failed: {message}"));
                }
            }
            write_metrics(&self.dir.join(METRICS_FILE), rows).map_err(|e| e.to_string())?;
            if rows.iter().any(|r| r.loss.is_some()) {
                save_curves(rows, &self.dir.join(CURVES_FILE)).map_err(|e| e.to_string())?;
            }
            state.save(&self.dir).map_err(|e| e.to_string())?;
            Ok(())
        };

        for epoch in state.next.epoch..=num_epochs {
            let global = Progress::new(epoch, num_epochs);
            self.train.set_order(training_order(
                self.seed,
                epoch,
                &lengths,
                self.batch_size,
                self.group_by_length,
            ));
            let skip = state.next.batches_done;
            let started = Instant::now();
            let mut iterator = dataloader_train.iter();
            let mut batch = 0;
            let mut stop = None;
            while let Some(mut item) = iterator.next() {
                batch += 1;
                if batch <= skip {
                    continue; // trained before the interruption
                }
                item.dropout_seed = Some(step_seed(self.seed, epoch, batch - 1));
                item.loss_divisor = Some(self.batch_size);
                let wants_stop = || interrupter.should_stop();
                let (output, any_stop) =
                    match self.train_step(&mut learner, item, state.steps + 1, &wants_stop) {
                        Ok(done) => done,
                        Err(e) => {
                            self.finish(LoopEnd::Failed(e));
                            return (learner.model(), processor);
                        }
                    };
                state.steps += 1;
                steps_here += 1;
                state.tally.add(&output);
                state.window.add(&output);
                if self.log_every > 0 && state.steps.is_multiple_of(self.log_every) {
                    let window = std::mem::take(&mut state.window);
                    let mut row =
                        MetricsRow::from_tally(epoch, state.steps, Split::Train, &window, wall());
                    row.lr = Some(learner.lr_current());
                    rows.push(row);
                }
                processor.process_train(LearnerEvent::ProcessedItem(TrainingItem::new(
                    output,
                    iterator.progress(),
                    global.clone(),
                    Some(batch),
                    Some(learner.lr_current()),
                )));
                if any_stop {
                    stop = Some(true);
                } else if self.max_steps.is_some_and(|max| steps_here >= max) {
                    stop = Some(false);
                }
                if stop.is_some() {
                    break;
                }
            }
            state.partial_seconds += started.elapsed().as_secs_f64();
            if let Some(interrupted) = stop {
                state.next = Position {
                    epoch,
                    batches_done: batch,
                };
                let end = match save(&learner, &state, &rows) {
                    Ok(()) => LoopEnd::Stopped {
                        at: state.next,
                        interrupted,
                    },
                    Err(e) => LoopEnd::Failed(e),
                };
                self.finish(end);
                return (learner.model(), processor);
            }
            // The epoch's last training row: the window since the last logged step, whatever
            // `log_every` is (empty when the epoch ended on a logged step).
            if self.log_every > 0 && !state.window.is_empty() {
                let window = std::mem::take(&mut state.window);
                let mut row =
                    MetricsRow::from_tally(epoch, state.steps, Split::Train, &window, wall());
                row.lr = Some(learner.lr_current());
                rows.push(row);
            }
            processor.process_train(LearnerEvent::EndEpoch(epoch));
            let next = Position {
                epoch: epoch + 1,
                batches_done: 0,
            };
            if !is_main {
                // Rank 0 evaluates and saves; this rank waits for its verdict on stopping.
                state.tally = Tally::default();
                state.partial_seconds = 0.0;
                state.next = next;
                let _ = save(&learner, &state, &rows);
                match self.agree_to_stop(false, epoch) {
                    Ok(false) => continue,
                    Ok(true) => self.finish(LoopEnd::Stopped {
                        at: state.next,
                        interrupted: true,
                    }),
                    Err(e) => self.finish(LoopEnd::Failed(e)),
                }
                return (learner.model(), processor);
            }

            // Dev evaluation (no dropout, no generator draws).
            let model = learner.model().valid();
            let mut dev = Tally::default();
            let mut iterator = dataloader_valid.iter();
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

            let mut train = state.tally.summary();
            train.insert(LEARNING_RATE.to_string(), learner.lr_current());
            let summary = EpochSummary {
                epoch,
                train,
                dev: dev.summary(),
                train_seconds: state.partial_seconds,
            };
            let accuracy = summary.dev_accuracy().unwrap_or(f64::NAN) / 100.0;
            if state.best.is_none_or(|best| accuracy > best.dev_accuracy) {
                if let Err(e) = save_best(&model, &self.dir) {
                    self.finish(LoopEnd::Failed(e));
                    return (learner.model(), processor);
                }
                state.best = Some(BestEpoch {
                    epoch,
                    dev_accuracy: accuracy,
                });
            }
            state.history.push(summary);
            rows.push(MetricsRow::from_tally(
                epoch,
                state.steps,
                Split::Dev,
                &dev,
                wall(),
            ));
            state.tally = Tally::default();
            state.partial_seconds = 0.0;
            state.next = next;
            if let Err(e) = save(&learner, &state, &rows) {
                self.finish(LoopEnd::Failed(e));
                return (learner.model(), processor);
            }
            let stop = match self.agree_to_stop(interrupter.should_stop(), epoch) {
                Ok(stop) => stop,
                Err(e) => {
                    self.finish(LoopEnd::Failed(e));
                    return (learner.model(), processor);
                }
            };
            if stop {
                // Ctrl-C during the dev pass: the epoch is complete and saved.
                self.finish(LoopEnd::Stopped {
                    at: state.next,
                    interrupted: true,
                });
                return (learner.model(), processor);
            }
        }
        self.finish(LoopEnd::Finished);
        (learner.model(), processor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_orders_are_permutations_fixed_by_seed_and_epoch() {
        let a = epoch_order(7, 1, 100);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(a, epoch_order(7, 1, 100));
        assert_ne!(a, epoch_order(7, 2, 100));
        assert_ne!(a, epoch_order(8, 1, 100));
    }

    #[test]
    fn step_seeds_differ_by_epoch_and_batch() {
        let seeds: std::collections::HashSet<u64> = (1..4)
            .flat_map(|e| (0..100).map(move |b| step_seed(1337, e, b)))
            .collect();
        assert_eq!(seeds.len(), 300);
    }
}
