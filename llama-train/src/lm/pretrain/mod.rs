//! Training the language model itself on text: continued pre-training of a checkpoint, or
//! training a preset from random weights, with the LM objective of
//! [`crate::lm::objective`] and the exercise's AdamW.
//!
//! # Flow of [`pretrain_with`]
//!
//! 1. Optionally attach LoRA adapters and freeze the base weights.
//! 2. Score the validation documents with the starting model (the "step 0" evaluation), as
//!    `llama-cli perplexity` scores a file ([`crate::lm::perplexity`]).
//! 3. Each epoch visits every window once, in an order drawn from `(seed, epoch)`, in
//!    micro-batches of `batch_size` windows. One optimizer step takes `grad_accum_steps`
//!    micro-batches: each one's mean token loss, divided by the number of micro-batches in
//!    the step, is back-propagated and the gradients are summed (Burn's
//!    `GradientsAccumulator`); they are then clipped to the global norm `grad_clip`
//!    ([`llama_model::train::grad_clip`]) and AdamW steps at the learning rate of
//!    [`crate::lm::schedule`] (Burn's linear warm-up, then Burn's cosine decay).
//! 4. Every `eval_every` steps and at each epoch's end the validation text is scored; the
//!    best model so far (lowest validation loss among the evaluations after training began;
//!    the starting model is scored for reference only) is `model.safetensors` with
//!    `model.config.json` (LoRA merged in; the adapters alone in `adapter.safetensors`), and
//!    `model.bin` (llama2.c v0) with `export_bin`.
//! 5. At each evaluation, at each epoch's end and when stopped (Ctrl-C, the step budget) the
//!    run saves Burn's records of the model and the optimizer
//!    (`checkpoint/model-<step>.mpk`, `checkpoint/optim-<step>.mpk`), `metrics.csv` with
//!    `curves.png`, `pretrain.json` and, last, `resume.json`, which names the records
//!    ([`crate::lm::pretrain::state`], [`crate::lm::pretrain::files`]). A stop first writes
//!    the last weights as `model-last.safetensors`. `resume` continues bit for bit.
//!
//! On a data-parallel run ([`RunControl::collective`], [`pretrain_rank`]) each rank trains
//! its rows of every micro-batch and the gradients are summed across ranks once per
//! optimizer step, before clipping; rank 0 alone evaluates and saves
//! ([`crate::distributed::collective`]).
//!
//! Burn's `Learner` keeps its optimizer private: outside Burn's `SupervisedTraining` its
//! state cannot be saved, and without it a run cannot resume exactly. So this loop drives
//! Burn's parts directly (the optimizer adaptor over our AdamW, the schedulers, the
//! gradient accumulator, the recorder); classification fine-tuning, whose metrics Burn's
//! training loop serves, runs inside `SupervisedTraining` ([`crate::classify::finetune`]).

pub mod config;
pub mod error;
pub mod files;
pub mod run;
pub mod state;

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::lr_scheduler::LrScheduler;
use burn::optim::{GradientsAccumulator, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ElementConversion;

use llama_model::train::grad_clip::clip_global_norm;
use llama_model::{load_checkpoint, Llama, LlamaConfig, LoadOptions};

use crate::distributed::collective::{
    row_share, Collective, RankOutcome, RankSummary, ReduceOperation,
};
use crate::fnv::weights_digest;
use crate::lm::corpus::LmCorpus;
use crate::lm::objective::{lm_loss, LmBatch};
use crate::lm::pretrain::config::PretrainConfig;
use crate::lm::pretrain::error::{io_err, PretrainError};
use crate::lm::pretrain::files::{
    clear_previous_run, remove_orphaned_temps, restore, CHECKPOINT_DIR,
};
use crate::lm::pretrain::run::Run;
use crate::lm::pretrain::state::{Evaluation, PretrainSettings, PretrainState};
use crate::report::metrics_log::{rows_to_resume, METRICS_FILE};
use crate::run::control::RunControl;
use crate::run::order::{epoch_order, step_seed};

pub use crate::lm::pretrain::state::PRETRAIN_RECORD_FILE;

pub use crate::lm::pretrain::files::{
    run_files, ADAPTER_FILE, LAST_ADAPTER_FILE, LAST_MODEL_FILE, MODEL_BIN_FILE, MODEL_FILE,
};

/// What [`pretrain_with`] produced.
#[derive(Debug)]
pub struct PretrainOutcome<B: Backend> {
    /// The best model, as reloaded from `model.safetensors`.
    pub model: Llama<B>,
    /// Every evaluation, the starting model's first.
    pub evaluations: Vec<Evaluation>,
    /// The best of them.
    pub best: Evaluation,
    /// Optimizer steps done.
    pub steps: usize,
    /// `model.safetensors`.
    pub model_path: PathBuf,
    /// `model.bin`, with `export_bin`.
    pub bin_path: Option<PathBuf>,
    /// `adapter.safetensors`, with LoRA.
    pub adapter_path: Option<PathBuf>,
    /// On a data-parallel run: rank 0's summary (its weights after the last step, its
    /// exchanges).
    pub rank: Option<RankSummary>,
}

impl<B: Backend> PretrainOutcome<B> {
    /// The evaluation of the starting model.
    pub fn start(&self) -> Option<&Evaluation> {
        self.evaluations.first()
    }
}

/// The window length of `config` on a model of `llama`'s shape: `seq_len`, or the context.
pub fn window_len(config: &PretrainConfig, llama: &LlamaConfig) -> Result<usize, PretrainError> {
    let seq_len = config.seq_len.unwrap_or(llama.max_seq_len);
    if seq_len > llama.max_seq_len {
        return Err(PretrainError::InvalidConfig(format!(
            "seq_len {seq_len} exceeds the model's context of {} tokens",
            llama.max_seq_len
        )));
    }
    Ok(seq_len)
}

/// Trains `llama` (of shape `llama_config`) on `corpus` (packed with [`window_len`]); see the
/// [module docs](self). A run stopped early returns [`PretrainError::Stopped`] after saving.
pub fn pretrain_with<B: AutodiffBackend>(
    config: &PretrainConfig,
    llama: Llama<B>,
    llama_config: &LlamaConfig,
    corpus: &LmCorpus,
    device: &B::Device,
    control: &RunControl,
) -> Result<PretrainOutcome<B::InnerBackend>, PretrainError> {
    match pretrain_rank(config, llama, llama_config, corpus, device, control)? {
        RankOutcome::Main(outcome) => Ok(*outcome),
        RankOutcome::Other(_) => Err(PretrainError::InvalidConfig(
            "only rank 0 of a data-parallel run has the outcome: call pretrain_rank".into(),
        )),
    }
}

/// [`pretrain_with`] on any rank of a data-parallel run ([`RunControl::collective`]): every
/// rank trains its rows of each micro-batch, the gradients are summed across ranks before
/// each step; rank 0 evaluates and saves, the other ranks write nothing.
pub fn pretrain_rank<B: AutodiffBackend>(
    config: &PretrainConfig,
    llama: Llama<B>,
    llama_config: &LlamaConfig,
    corpus: &LmCorpus,
    device: &B::Device,
    control: &RunControl,
) -> Result<RankOutcome<PretrainOutcome<B::InnerBackend>>, PretrainError> {
    let seq_len = check_run(config, llama_config, corpus, control)?;
    let model = match &config.lora {
        // Adapters already attached (read from a file to start from) are the ones trained.
        Some(_) if llama.has_lora() => llama.freeze_base(),
        Some(lora) => llama.with_lora(lora, config.seed)?.freeze_base(),
        None => llama,
    };
    let dir = &config.artifact_dir;
    let world_size = control.collective.as_ref().map_or(1, |c| c.world_size);
    let settings = PretrainSettings::new(config, &corpus.windows, corpus.val_rows.len(), seq_len)
        .with_world_size(world_size);
    // Join before anything is written (see `finetune_rank`).
    let collective = match &control.collective {
        Some(c) => Some(Collective::<B::InnerBackend>::join(
            c.clone(),
            device,
            settings.digest(),
        )?),
        None => None,
    };
    let share = control.collective.as_ref().map(|c| (c.rank, c.world_size));
    let is_main = share.is_none_or(|(rank, _)| rank == 0);
    let mut state = open_run(dir, settings, control.resume, is_main)?;
    let optim = config.optimizer().init::<B, Llama<B>>()?;
    let (model, optim) = restore(model, optim, dir, &state, device)?;
    // Training goes on: the last weights of a stop are removed at the next save.
    state.last = None;
    let per_epoch = config.steps_per_epoch(corpus.windows.len());
    let scheduler = config
        .schedule(config.epochs * per_epoch)
        .init()
        .map_err(PretrainError::InvalidConfig)?
        .load_record::<B>(state.steps);
    let run = Run {
        config,
        llama_config,
        corpus,
        dir,
        device,
        control,
        rows: rows_to_resume(&dir.join(METRICS_FILE), state.steps).map_err(|e| {
            PretrainError::Record {
                path: dir.join(METRICS_FILE),
                detail: e.to_string(),
            }
        })?,
        started: Instant::now(),
        wall_offset: state.wall_seconds,
        is_main,
    };
    let mut epochs = Epochs {
        run,
        optim,
        scheduler,
        collective: collective.as_ref(),
        share,
        seq_len,
        steps_here: 0,
        lr: 0.0,
    };
    if state.evaluations.is_empty() {
        epochs.run.evaluate(&model.valid(), &mut state, 0.0)?;
        epochs.run.save(&model, &epochs.optim, &mut state)?;
    }
    let model = epochs.train(model, &mut state)?;
    outcome(config, model, &state, collective.as_ref(), is_main, device)
}

/// Everything checkable before anything is written; the window length.
fn check_run(
    config: &PretrainConfig,
    llama_config: &LlamaConfig,
    corpus: &LmCorpus,
    control: &RunControl,
) -> Result<usize, PretrainError> {
    config.check()?;
    let seq_len = window_len(config, llama_config)?;
    if corpus.windows.first().map(Vec::len) != Some(seq_len + 1) {
        return Err(PretrainError::InvalidConfig(format!(
            "the corpus was not packed into windows of seq_len {seq_len} + 1 tokens"
        )));
    }
    if control.max_steps == Some(0) {
        return Err(PretrainError::InvalidConfig(
            "max_steps must be at least 1".into(),
        ));
    }
    Ok(seq_len)
}

/// The state to start from (`resume.json`'s, or a fresh start after clearing what an
/// earlier run left), and the checkpoint folder rank 0 writes.
fn open_run(
    dir: &Path,
    settings: PretrainSettings,
    resume: bool,
    is_main: bool,
) -> Result<PretrainState, PretrainError> {
    if is_main {
        remove_orphaned_temps(dir)?;
    }
    let state = if resume {
        PretrainState::load(dir, &settings)?
    } else {
        if is_main {
            clear_previous_run(dir)?;
        }
        PretrainState::start(settings)
    };
    if is_main {
        let checkpoints = dir.join(CHECKPOINT_DIR);
        std::fs::create_dir_all(&checkpoints).map_err(io_err(&checkpoints))?;
    }
    Ok(state)
}

/// The training loop's parts: the run's files and figures, the optimizer and its schedule,
/// and this rank's place in a data-parallel run.
struct Epochs<'r, 'a, B: AutodiffBackend, O, S> {
    run: Run<'a, B::Device>,
    optim: O,
    scheduler: S,
    collective: Option<&'r Collective<B::InnerBackend>>,
    /// `(rank, world_size)` on a data-parallel run.
    share: Option<(usize, usize)>,
    seq_len: usize,
    /// Optimizer steps of this call (for the step budget).
    steps_here: usize,
    /// The last step's learning rate.
    lr: f64,
}

impl<B: AutodiffBackend, O: Optimizer<Llama<B>, B>, S: LrScheduler> Epochs<'_, '_, B, O, S> {
    /// Every epoch from where `state` stands, evaluating and saving as configured; the
    /// last step's model. A stop (Ctrl-C, the step budget) saves and returns
    /// [`PretrainError::Stopped`].
    fn train(
        &mut self,
        mut model: Llama<B>,
        state: &mut PretrainState,
    ) -> Result<Llama<B>, PretrainError> {
        let (config, corpus, control) = (self.run.config, self.run.corpus, self.run.control);
        while state.epoch <= config.epochs {
            let epoch = state.epoch;
            let order = epoch_order(config.seed, epoch, corpus.windows.len());
            let micro: Vec<&[usize]> = order.chunks(config.batch_size).collect();
            let groups: Vec<&[&[usize]]> = micro.chunks(config.grad_accum_steps).collect();
            let bar = control.progress.bar(
                groups.len(),
                format!("epoch {epoch}/{}", config.epochs),
                "steps",
            );
            bar.set_position(state.epoch_steps as u64);
            for group in &groups[state.epoch_steps..] {
                let (stepped, loss, stop) = self.step(model, group, state)?;
                model = stepped;
                bar.inc(1);
                bar.set_message(format!("loss {loss:.4}, lr {:.2e}", self.lr));
                if state.steps.is_multiple_of(config.log_every) {
                    self.run.log_train(state, self.lr, groups.len());
                }
                let last_of_epoch = state.epoch_steps == groups.len();
                if config.eval_every > 0
                    && state.steps.is_multiple_of(config.eval_every)
                    && !last_of_epoch
                {
                    bar.suspend(|| self.run.evaluate(&model.valid(), state, self.lr))?;
                    self.run.save(&model, &self.optim, state)?;
                }
                let spent = control.max_steps.is_some_and(|m| self.steps_here >= m);
                if !last_of_epoch && (stop || spent) {
                    bar.finish_and_clear();
                    self.run.save_stopped(&model, &self.optim, state)?;
                    return self.stop(state, stop);
                }
            }
            bar.finish_and_clear();
            // The epoch's last training row, whatever `log_every` is (nothing to log when
            // the epoch ended on a logged step).
            if state.since_log.1 > 0 {
                self.run.log_train(state, self.lr, groups.len());
            }
            self.run.evaluate(&model.valid(), state, self.lr)?;
            state.epoch += 1;
            state.epoch_steps = 0;
            let mut stop = control.interrupted();
            if let Some(c) = self.collective {
                // Rank 0 alone evaluated: Ctrl-C may have come to it meanwhile.
                stop = c.any(stop, &format!("the end of epoch {epoch}"))?;
            }
            let spent = control.max_steps.is_some_and(|m| self.steps_here >= m);
            let stopping = (stop || spent) && state.epoch <= config.epochs;
            if stopping {
                self.run.save_stopped(&model, &self.optim, state)?;
                return self.stop(state, stop);
            }
            self.run.save(&model, &self.optim, state)?;
        }
        Ok(model)
    }

    /// One optimizer step on a group of micro-batches: the accumulated gradients (summed
    /// across ranks), clipped, applied at the scheduled rate. The stepped model, the
    /// group's loss, and whether any rank wants to stop.
    fn step(
        &mut self,
        model: Llama<B>,
        group: &[&[usize]],
        state: &mut PretrainState,
    ) -> Result<(Llama<B>, f64, bool), PretrainError> {
        let (config, corpus, control) = (self.run.config, self.run.corpus, self.run.control);
        self.lr = self.scheduler.step();
        // One dropout seed per micro-batch of the epoch (LoRA's input dropout).
        let first = state.epoch_steps * config.grad_accum_steps;
        let seeds: Vec<u64> = (first..first + group.len())
            .map(|micro| step_seed(config.seed, state.epoch, micro))
            .collect();
        let (grads, loss) = accumulated_gradients(
            &model,
            group,
            &seeds,
            &corpus.windows,
            self.run.device,
            self.share,
        );
        let (grads, loss, stop) = match self.collective {
            None => (grads, loss, control.interrupted()),
            Some(c) => {
                let step = state.steps + 1;
                let what = format!("step {step}'s gradient all-reduce");
                let grads = c.all_reduce_grads(&model, grads, ReduceOperation::Sum, &what)?;
                let flag = f32::from(u8::from(control.interrupted()));
                let what = format!("step {step}'s loss");
                let sums = c.sum_values(&[loss as f32, flag], &what)?;
                (grads, f64::from(sums[0]), sums[1] > 0.0)
            }
        };
        let grads = if config.grad_clip > 0.0 {
            clip_global_norm(&model, grads, config.grad_clip).0
        } else {
            grads
        };
        let model = self.optim.step(self.lr, model, grads);
        state.steps += 1;
        state.epoch_steps += 1;
        self.steps_here += 1;
        let tokens = group.iter().map(|b| b.len()).sum::<usize>() * self.seq_len;
        for sums in [&mut state.since_eval, &mut state.since_log] {
            sums.0 += loss * tokens as f64;
            sums.1 += tokens;
        }
        Ok((model, loss, stop))
    }

    /// Leaves the data-parallel run and reports where the run stopped (saved there).
    fn stop<T>(&self, state: &PretrainState, interrupted: bool) -> Result<T, PretrainError> {
        if let Some(c) = self.collective {
            c.leave();
        }
        Err(PretrainError::Stopped {
            dir: self.run.dir.to_path_buf(),
            step: state.steps,
            interrupted,
            best: state.best().map(|best| best.step),
        })
    }
}

/// What a finished rank returns: rank 0 the best model as reloaded from its file, with the
/// run's figures; another rank its summary.
fn outcome<B: AutodiffBackend>(
    config: &PretrainConfig,
    model: Llama<B>,
    state: &PretrainState,
    collective: Option<&Collective<B::InnerBackend>>,
    is_main: bool,
    device: &B::Device,
) -> Result<RankOutcome<PretrainOutcome<B::InnerBackend>>, PretrainError> {
    // Only ranks compare digests: reading every weight back is not free on a large model.
    let summary = collective.map(|c| {
        c.leave();
        RankSummary {
            steps: state.steps,
            last_weights_digest: weights_digest(&model),
            exchange: c.stats(),
        }
    });
    if let (false, Some(summary)) = (is_main, summary) {
        return Ok(RankOutcome::Other(summary));
    }
    let dir = &config.artifact_dir;
    let model_path = dir.join(MODEL_FILE);
    let best = state
        .best()
        .cloned()
        .ok_or_else(|| PretrainError::NoValidation("no evaluation was recorded".into()))?;
    let loaded = load_checkpoint::<B::InnerBackend>(&model_path, &LoadOptions::default(), device)?;
    let bin_path = dir.join(MODEL_BIN_FILE);
    let adapter_path = dir.join(ADAPTER_FILE);
    Ok(RankOutcome::Main(Box::new(PretrainOutcome {
        model: loaded.model,
        evaluations: state.evaluations.clone(),
        best,
        steps: state.steps,
        model_path,
        bin_path: config.export_bin.then_some(bin_path),
        adapter_path: config.lora.is_some().then_some(adapter_path),
        rank: summary,
    })))
}

/// The summed gradients of one optimizer step over the micro-batches `group` (window
/// indices; `seeds` their dropout seeds) and the step's mean token loss.
///
/// On rank `r` of `W` (`share`) only the rank's rows of each micro-batch ([`row_share`]) are
/// trained, their mean loss weighted by their share of the micro-batch (all windows have the
/// same length), so that the sum over ranks is the one-process gradient and loss; a
/// micro-batch of fewer windows than ranks is trained whole by every rank, weighted `1/W`.
fn accumulated_gradients<B: AutodiffBackend>(
    model: &Llama<B>,
    group: &[&[usize]],
    seeds: &[u64],
    windows: &[Vec<u32>],
    device: &B::Device,
    share: Option<(usize, usize)>,
) -> (GradientsParams, f64) {
    let mut accumulator = GradientsAccumulator::<Llama<B>>::new();
    let mut loss_sum = 0.0;
    for (indices, &seed) in group.iter().zip(seeds) {
        let (range, weight) = match share {
            None => (0..indices.len(), None),
            Some((rank, world)) => match row_share(indices.len(), rank, world) {
                (range, ReduceOperation::Sum) => {
                    let weight = range.len() as f64 / indices.len() as f64;
                    (range, Some(weight))
                }
                (range, ReduceOperation::Mean) => (range, Some(1.0 / world as f64)),
            },
        };
        let rows: Vec<&[u32]> = indices[range.clone()]
            .iter()
            .map(|&i| windows[i].as_slice())
            .collect();
        let batch = LmBatch::new(&rows, device);
        let seeded = model.clone().with_lora_dropout_rows(seed, range.start);
        let loss = lm_loss(&seeded, &batch);
        let value = loss.clone().into_scalar().elem::<f64>();
        let loss = match weight {
            None => {
                loss_sum += value;
                loss / group.len() as f32
            }
            Some(weight) => {
                loss_sum += value * weight;
                loss * (weight / group.len() as f64) as f32
            }
        };
        let grads = loss.backward();
        accumulator.accumulate(model, GradientsParams::from_grads(grads, model));
    }
    (accumulator.grads(), loss_sum / group.len() as f64)
}
