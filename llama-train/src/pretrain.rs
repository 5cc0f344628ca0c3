//! Training the language model itself on text: continued pre-training of a checkpoint, or
//! training a preset from random weights, with the LM objective of
//! [`crate::lm_objective`] and the exercise's AdamW.
//!
//! # Flow of [`pretrain_with`]
//!
//! 1. Optionally attach LoRA adapters and freeze the base weights.
//! 2. Score the validation documents with the starting model (the "step 0" evaluation), as
//!    `llama-cli perplexity` scores a file ([`crate::perplexity`]).
//! 3. Each epoch visits every window once, in an order drawn from `(seed, epoch)`, in
//!    micro-batches of `batch_size` windows. One optimizer step takes `grad_accum_steps`
//!    micro-batches: each one's mean token loss, divided by the number of micro-batches in
//!    the step, is back-propagated and the gradients are summed (Burn's
//!    `GradientsAccumulator`); they are then clipped to the global norm `grad_clip`
//!    ([`llama_model::grad_clip`]) and AdamW steps at the learning rate of
//!    [`crate::lr_schedule`] (Burn's linear warm-up, then Burn's cosine decay).
//! 4. Every `eval_every` steps and at each epoch's end the validation text is scored; the
//!    best model so far (lowest validation loss) is `model.safetensors` with
//!    `model.config.json` (LoRA merged in; the adapters alone in `adapter.safetensors`), and
//!    `model.bin` (llama2.c v0) with `export_bin`.
//! 5. At each evaluation, at each epoch's end and when stopped (Ctrl-C, the step budget) the
//!    run saves Burn's records of the model and the optimizer (`checkpoint/model.mpk`,
//!    `checkpoint/optim.mpk`), `metrics.csv` with `curves.png`, `pretrain.json` and, last,
//!    `resume.json` ([`crate::pretrain_state`]). `resume` continues bit for bit.
//!
//! Burn's `Learner` keeps its optimizer private: outside Burn's `SupervisedTraining` its
//! state cannot be saved, and without it a run cannot resume exactly. So this loop drives
//! Burn's parts directly (the optimizer adaptor over our AdamW, the schedulers, the
//! gradient accumulator, the recorder); classification fine-tuning, whose metrics Burn's
//! training loop serves, runs inside `SupervisedTraining` ([`crate::finetune`]).

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{AutodiffModule, Module};
use burn::optim::lr_scheduler::LrScheduler;
use burn::optim::{GradientsAccumulator, GradientsParams, Optimizer};
use burn::record::{DefaultRecorder, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ElementConversion;
use llama_model::atomic_file;
use llama_model::checkpoint::{save_llama2c_bin, save_model, TensorMap};
use llama_model::grad_clip::clip_global_norm;
use llama_model::lora_file::save_adapter;
use llama_model::{load_checkpoint, Llama, LlamaConfig, LoadOptions};

use crate::curves::{save_curves, CURVES_FILE};
use crate::finetune::RunControl;
use crate::lm_corpus::LmCorpus;
use crate::lm_objective::{lm_loss, LmBatch};
use crate::metrics_log::{rows_to_resume, write_metrics, MetricsRow, Split, METRICS_FILE};
use crate::perplexity::perplexity;
use crate::pretrain_config::PretrainConfig;
use crate::pretrain_error::{io_err, PretrainError};
use crate::pretrain_state::{Evaluation, PretrainSettings, PretrainState};
use crate::resume::RESUME_FILE;
use crate::training_loop::{epoch_order, step_seed};

pub use crate::pretrain_state::PRETRAIN_RECORD_FILE;

/// File name of the best model in a run folder (its config is `model.config.json`).
pub const MODEL_FILE: &str = "model.safetensors";
/// File name of the best model as a llama2.c v0 export (with `export_bin`).
pub const MODEL_BIN_FILE: &str = "model.bin";
/// File name of the best model's LoRA adapters (LoRA runs).
pub const ADAPTER_FILE: &str = crate::artifacts::ADAPTER_FILE;

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
    if control.collective.is_some() {
        return Err(PretrainError::InvalidConfig(
            "pretrain runs on one process (data-parallel training is finetune's so far)".into(),
        ));
    }
    let mut model = match &config.lora {
        Some(lora) => llama.with_lora(lora, config.seed)?.freeze_base(),
        None => llama,
    };
    let dir = &config.artifact_dir;
    let checkpoints = dir.join("checkpoint");
    let settings = PretrainSettings::new(config, &corpus.windows, corpus.val_rows.len(), seq_len);
    let mut state = if control.resume {
        PretrainState::load(dir, &settings)?
    } else {
        clear_previous_run(dir)?;
        PretrainState::start(settings)
    };
    std::fs::create_dir_all(&checkpoints).map_err(io_err(&checkpoints))?;

    let recorder = DefaultRecorder::new();
    let mut optim = config.optimizer().init::<B, Llama<B>>()?;
    if state.steps > 0 {
        let path = checkpoints.join("model");
        model = model
            .load_file(&path, &recorder, device)
            .map_err(record_error(&path))?;
        let path = checkpoints.join("optim");
        let record =
            Recorder::<B>::load(&recorder, path.clone(), device).map_err(record_error(&path))?;
        optim = optim.load_record(record);
    }
    let per_epoch = config.steps_per_epoch(corpus.windows.len());
    let schedule = config.schedule(config.epochs * per_epoch).init();
    let mut scheduler = schedule
        .map_err(PretrainError::InvalidConfig)?
        .load_record::<B>(state.steps);

    let mut run = Run {
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
    };
    if state.evaluations.is_empty() {
        run.evaluate(&model.valid(), &mut state, 0.0)?;
        run.save(&model, &optim, &mut state)?;
    }

    let mut steps_here = 0;
    let mut lr = 0.0;
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
            lr = scheduler.step();
            // One dropout seed per micro-batch of the epoch (LoRA's input dropout).
            let first = state.epoch_steps * config.grad_accum_steps;
            let seeds: Vec<u64> = (first..first + group.len())
                .map(|micro| step_seed(config.seed, epoch, micro))
                .collect();
            let (grads, loss) =
                accumulated_gradients(&model, group, &seeds, &corpus.windows, device);
            let grads = if config.grad_clip > 0.0 {
                clip_global_norm(&model, grads, config.grad_clip).0
            } else {
                grads
            };
            model = optim.step(lr, model, grads);
            state.steps += 1;
            state.epoch_steps += 1;
            steps_here += 1;
            let tokens = group.iter().map(|b| b.len()).sum::<usize>() * seq_len;
            for sums in [&mut state.since_eval, &mut state.since_log] {
                sums.0 += loss * tokens as f64;
                sums.1 += tokens;
            }
            bar.inc(1);
            bar.set_message(format!("loss {loss:.4}, lr {lr:.2e}"));
            if state.steps.is_multiple_of(config.log_every) {
                run.log_train(&mut state, lr, groups.len());
            }
            let last_of_epoch = state.epoch_steps == groups.len();
            if config.eval_every > 0
                && state.steps.is_multiple_of(config.eval_every)
                && !last_of_epoch
            {
                bar.suspend(|| run.evaluate(&model.valid(), &mut state, lr))?;
                run.save(&model, &optim, &mut state)?;
            }
            let stop = control.interrupted();
            if !last_of_epoch && (stop || control.max_steps.is_some_and(|m| steps_here >= m)) {
                bar.finish_and_clear();
                run.save(&model, &optim, &mut state)?;
                return Err(PretrainError::Stopped {
                    dir: dir.clone(),
                    step: state.steps,
                    interrupted: stop,
                });
            }
        }
        bar.finish_and_clear();
        run.evaluate(&model.valid(), &mut state, lr)?;
        state.epoch += 1;
        state.epoch_steps = 0;
        run.save(&model, &optim, &mut state)?;
        let stop = control.interrupted();
        let spent = control.max_steps.is_some_and(|m| steps_here >= m);
        if (stop || spent) && state.epoch <= config.epochs {
            return Err(PretrainError::Stopped {
                dir: dir.clone(),
                step: state.steps,
                interrupted: stop,
            });
        }
    }

    let model_path = dir.join(MODEL_FILE);
    let best = state
        .best()
        .cloned()
        .ok_or_else(|| PretrainError::NoValidation("no evaluation was recorded".into()))?;
    let loaded = load_checkpoint::<B::InnerBackend>(&model_path, &LoadOptions::default(), device)?;
    let bin_path = dir.join(MODEL_BIN_FILE);
    let adapter_path = dir.join(ADAPTER_FILE);
    Ok(PretrainOutcome {
        model: loaded.model,
        evaluations: state.evaluations.clone(),
        best,
        steps: state.steps,
        model_path,
        bin_path: config.export_bin.then_some(bin_path),
        adapter_path: config.lora.is_some().then_some(adapter_path),
    })
}

/// The summed gradients of one optimizer step over the micro-batches `group` (window
/// indices; `seeds` their dropout seeds) and the step's mean token loss.
fn accumulated_gradients<B: AutodiffBackend>(
    model: &Llama<B>,
    group: &[&[usize]],
    seeds: &[u64],
    windows: &[Vec<u32>],
    device: &B::Device,
) -> (GradientsParams, f64) {
    let mut accumulator = GradientsAccumulator::<Llama<B>>::new();
    let mut loss_sum = 0.0;
    for (indices, &seed) in group.iter().zip(seeds) {
        let rows: Vec<&[u32]> = indices.iter().map(|&i| windows[i].as_slice()).collect();
        let batch = LmBatch::new(&rows, device);
        let seeded = model.clone().with_lora_dropout_seed(seed);
        let loss = lm_loss(&seeded, &batch);
        loss_sum += loss.clone().into_scalar().elem::<f64>();
        let grads = (loss / group.len() as f32).backward();
        accumulator.accumulate(model, GradientsParams::from_grads(grads, model));
    }
    (accumulator.grads(), loss_sum / group.len() as f64)
}

/// What the saving and evaluating steps of a run share.
struct Run<'a, D> {
    config: &'a PretrainConfig,
    llama_config: &'a LlamaConfig,
    corpus: &'a LmCorpus,
    dir: &'a Path,
    device: &'a D,
    control: &'a RunControl,
    rows: Vec<MetricsRow>,
    started: Instant,
    wall_offset: f64,
}

impl<D: Clone> Run<'_, D> {
    fn wall(&self) -> f64 {
        self.wall_offset + self.started.elapsed().as_secs_f64()
    }

    /// A `metrics.csv` training row (and, without bars, a progress line).
    fn log_train(&mut self, state: &mut PretrainState, lr: f64, epoch_len: usize) {
        let (sum, tokens) = std::mem::take(&mut state.since_log);
        let loss = sum / tokens.max(1) as f64;
        self.rows.push(MetricsRow {
            epoch: state.epoch,
            step: state.steps,
            split: Split::Train,
            loss: Some(loss),
            accuracy: None,
            macro_f1: None,
            lr: Some(lr),
            perplexity: Some(loss.exp()),
            wall_seconds: self.wall(),
        });
        if !self.control.progress.bars() {
            eprintln!(
                "epoch {}/{}, step {}/{epoch_len}: loss {loss:.4} (perplexity {:.2}), lr {lr:.3e}",
                state.epoch,
                self.config.epochs,
                state.epoch_steps,
                loss.exp()
            );
        }
    }
}

impl<'a, D: Clone> Run<'a, D> {
    /// Scores the validation text with `model`, records it, and writes the model files when
    /// it is the best so far.
    fn evaluate<B: Backend<Device = D>>(
        &mut self,
        model: &Llama<B>,
        state: &mut PretrainState,
        lr: f64,
    ) -> Result<(), PretrainError> {
        // The inference model (`valid()`): on an autodiff backend every scored batch would
        // also record its graph (gigabytes on a dev set) and LoRA dropout would act.
        debug_assert!(!B::ad_enabled(self.device), "evaluate the inference model");
        let rows = &self.corpus.val_rows;
        let bar = self
            .control
            .progress
            .bar(rows.len(), "validation", "documents");
        let figures = perplexity(model, rows, self.config.eval_batch_size, self.device, |n| {
            bar.set_position(n as u64)
        })?;
        bar.finish_and_clear();
        let (sum, tokens) = std::mem::take(&mut state.since_eval);
        let evaluation = Evaluation {
            epoch: if state.steps == 0 { 0 } else { state.epoch },
            step: state.steps,
            train_loss: (tokens > 0).then(|| sum / tokens as f64),
            val_loss: figures.mean_nll(),
            val_perplexity: figures.perplexity(),
            val_tokens: figures.predicted_tokens,
            lr,
            wall_seconds: self.wall(),
        };
        let better = state
            .best()
            .is_none_or(|best| evaluation.val_loss < best.val_loss);
        eprintln!(
            "step {}: validation loss {:.4}, perplexity {:.3} over {} tokens{}",
            evaluation.step,
            evaluation.val_loss,
            evaluation.val_perplexity,
            evaluation.val_tokens,
            if better { " (best so far: saved)" } else { "" }
        );
        self.rows.push(MetricsRow {
            epoch: evaluation.epoch,
            step: evaluation.step,
            split: Split::Dev,
            loss: Some(evaluation.val_loss),
            accuracy: None,
            macro_f1: None,
            lr: None,
            perplexity: Some(evaluation.val_perplexity),
            wall_seconds: evaluation.wall_seconds,
        });
        state.evaluations.push(evaluation);
        if better {
            state.best = Some(state.evaluations.len() - 1);
            self.save_best(model)?;
        }
        Ok(())
    }

    /// Writes the best model: merged safetensors + config, the adapters alone with LoRA,
    /// and the llama2.c export with `export_bin`.
    fn save_best<B: Backend>(&self, model: &Llama<B>) -> Result<(), PretrainError> {
        if let Some(lora) = &self.config.lora {
            save_adapter(&self.dir.join(ADAPTER_FILE), model, lora, TensorMap::new())?;
        }
        let merged = model.clone().merge_lora();
        save_model(&merged, self.llama_config, &self.dir.join(MODEL_FILE))?;
        if self.config.export_bin {
            save_llama2c_bin(&merged, self.llama_config, &self.dir.join(MODEL_BIN_FILE))?;
        }
        Ok(())
    }

    /// Saves everything a resumed run needs; `resume.json` last.
    fn save<B: AutodiffBackend, O: Optimizer<Llama<B>, B>>(
        &mut self,
        model: &Llama<B>,
        optim: &O,
        state: &mut PretrainState,
    ) -> Result<(), PretrainError> {
        let recorder = DefaultRecorder::new();
        let checkpoints = self.dir.join("checkpoint");
        let partial = checkpoints.join("model-partial");
        model
            .clone()
            .save_file(&partial, &recorder)
            .map_err(record_error(&partial))?;
        commit(&partial, &checkpoints.join("model.mpk"))?;
        let partial = checkpoints.join("optim-partial");
        Recorder::<B>::record(&recorder, optim.to_record(), partial.clone())
            .map_err(record_error(&partial))?;
        commit(&partial, &checkpoints.join("optim.mpk"))?;
        let path = self.dir.join(METRICS_FILE);
        write_metrics(&path, &self.rows).map_err(|e| PretrainError::Record {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        let path = self.dir.join(CURVES_FILE);
        save_curves(&self.rows, &path).map_err(|e| PretrainError::Record {
            path,
            detail: e.to_string(),
        })?;
        state.wall_seconds = self.wall();
        state.save(self.dir, self.config)
    }
}

/// Moves Burn's finished `<partial>.mpk` into place.
fn commit(partial: &Path, target: &Path) -> Result<(), PretrainError> {
    atomic_file::commit(&partial.with_extension("mpk"), target).map_err(io_err(target))
}

fn record_error(path: &Path) -> impl FnOnce(burn::record::RecorderError) -> PretrainError + '_ {
    move |e| PretrainError::Record {
        path: path.with_extension("mpk"),
        detail: e.to_string(),
    }
}

/// Removes what an earlier run left in `dir` that this one would read back or leave
/// standing: Burn's records, the state, the tables and pictures, the best model files.
fn clear_previous_run(dir: &Path) -> Result<(), PretrainError> {
    let checkpoints = dir.join("checkpoint");
    let stale = [
        checkpoints.join("model.mpk"),
        checkpoints.join("optim.mpk"),
        dir.join(RESUME_FILE),
        dir.join(PRETRAIN_RECORD_FILE),
        dir.join(METRICS_FILE),
        dir.join(CURVES_FILE),
        dir.join(MODEL_FILE),
        dir.join("model.config.json"),
        dir.join(MODEL_BIN_FILE),
        dir.join(ADAPTER_FILE),
    ];
    for path in stale {
        if path.is_file() {
            std::fs::remove_file(&path).map_err(io_err(&path))?;
        }
    }
    Ok(())
}
