//! The saving and evaluating side of a `pretrain` run ([`crate::lm::pretrain`]): the run
//! folder's file names, the validation pass, the best model's files and the resumable
//! checkpoint.

use std::path::Path;
use std::time::Instant;

use burn::module::Module;
use burn::optim::Optimizer;
use burn::record::{DefaultRecorder, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use llama_model::atomic_file;
use llama_model::checkpoint::{save_llama2c_bin, save_model, TensorMap};
use llama_model::lora::file::save_adapter;
use llama_model::{Llama, LlamaConfig};

use crate::lm::corpus::LmCorpus;
use crate::lm::perplexity::perplexity;
use crate::lm::pretrain::config::PretrainConfig;
use crate::lm::pretrain::error::{io_err, PretrainError};
use crate::lm::pretrain::state::{Evaluation, PretrainState, PRETRAIN_RECORD_FILE};
use crate::report::curves::{save_curves, CURVES_FILE};
use crate::report::metrics_log::{write_metrics, MetricsRow, Split, METRICS_FILE};
use crate::run::control::RunControl;
use crate::run::resume_file::RESUME_FILE;
use crate::run::saving::SaveGuard;

/// File name of the best model in a run folder (its config is `model.config.json`).
pub const MODEL_FILE: &str = "model.safetensors";
/// File name of the best model as a llama2.c v0 export (with `export_bin`).
pub const MODEL_BIN_FILE: &str = "model.bin";
/// File name of the best model's LoRA adapters (LoRA runs).
pub use crate::run::ADAPTER_FILE;

/// What the saving and evaluating steps of a run share.
pub(crate) struct Run<'a, D> {
    pub(crate) config: &'a PretrainConfig,
    pub(crate) llama_config: &'a LlamaConfig,
    pub(crate) corpus: &'a LmCorpus,
    pub(crate) dir: &'a Path,
    pub(crate) device: &'a D,
    pub(crate) control: &'a RunControl,
    pub(crate) rows: Vec<MetricsRow>,
    pub(crate) started: Instant,
    pub(crate) wall_offset: f64,
    /// Rank 0 (or one process): it alone evaluates, logs and saves.
    pub(crate) is_main: bool,
}

impl<D: Clone> Run<'_, D> {
    pub(crate) fn wall(&self) -> f64 {
        self.wall_offset + self.started.elapsed().as_secs_f64()
    }

    /// A `metrics.csv` training row (and, without bars, a progress line).
    pub(crate) fn log_train(&mut self, state: &mut PretrainState, lr: f64, epoch_len: usize) {
        let (sum, tokens) = std::mem::take(&mut state.since_log);
        if !self.is_main {
            return;
        }
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
    pub(crate) fn evaluate<B: Backend<Device = D>>(
        &mut self,
        model: &Llama<B>,
        state: &mut PretrainState,
        lr: f64,
    ) -> Result<(), PretrainError> {
        if !self.is_main {
            return Ok(());
        }
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
        let _saving = SaveGuard::begin();
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
    pub(crate) fn save<B: AutodiffBackend, O: Optimizer<Llama<B>, B>>(
        &mut self,
        model: &Llama<B>,
        optim: &O,
        state: &mut PretrainState,
    ) -> Result<(), PretrainError> {
        if !self.is_main {
            return Ok(());
        }
        let _saving = SaveGuard::begin();
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

pub(crate) fn record_error(
    path: &Path,
) -> impl FnOnce(burn::record::RecorderError) -> PretrainError + '_ {
    move |e| PretrainError::Record {
        path: path.with_extension("mpk"),
        detail: e.to_string(),
    }
}

/// Removes what an earlier run left in `dir` that this one would read back or leave
/// standing: Burn's records, the state, the tables and pictures, the best model files.
pub(crate) fn clear_previous_run(dir: &Path) -> Result<(), PretrainError> {
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
