//! The saving and evaluating side of a `pretrain` run ([`crate::lm::pretrain`]): the
//! validation pass, the best and last models' files and the resumable checkpoint (the
//! folder's layout is [`crate::lm::pretrain::files`]'s).

use std::path::Path;
use std::time::Instant;

use burn::module::{AutodiffModule, Module};
use burn::optim::Optimizer;
use burn::record::Recorder;
use burn::tensor::backend::{AutodiffBackend, Backend};
use llama_model::checkpoint::{save_llama2c_bin, save_model, TensorMap};
use llama_model::lora::file::save_adapter;
use llama_model::{Llama, LlamaConfig};

use crate::lm::corpus::LmCorpus;
use crate::lm::perplexity::perplexity;
use crate::lm::pretrain::config::PretrainConfig;
use crate::lm::pretrain::error::PretrainError;
use crate::lm::pretrain::files::{
    record_error, record_paths, remove_superseded, CHECKPOINT_DIR, LAST_ADAPTER_FILE,
    LAST_MODEL_FILE,
};
use crate::lm::pretrain::state::{Evaluation, PretrainState, SavedRecords};
use crate::report::curves::{save_curves, CURVES_FILE};
use crate::report::metrics_log::{write_metrics, MetricsRow, Split, METRICS_FILE};
use crate::run::control::RunControl;
use crate::run::record_file::DurableRecorder;
use crate::run::resume_file::RecordFile;
use crate::run::saving::SaveGuard;

pub use crate::lm::pretrain::files::{ADAPTER_FILE, MODEL_BIN_FILE, MODEL_FILE};

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
        // The starting model is scored for reference, never kept as the best: a run that
        // has not evaluated since training began has no best model.
        let better = evaluation.step > 0
            && state
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

    /// A stop's save: the last weights ([`Self::save_last`]), then everything a resumed run
    /// needs ([`Self::save`]), as one save (a second Ctrl-C waits for both).
    pub(crate) fn save_stopped<B: AutodiffBackend, O: Optimizer<Llama<B>, B>>(
        &mut self,
        model: &Llama<B>,
        optim: &O,
        state: &mut PretrainState,
    ) -> Result<(), PretrainError> {
        let _saving = self.is_main.then(SaveGuard::begin);
        self.save_last(&model.valid(), state)?;
        self.save(model, optim, state)
    }

    /// Writes the last weights of a stopped run beside the best model (merged safetensors
    /// + config, and its adapters with LoRA), and records their step.
    fn save_last<B: Backend>(
        &self,
        model: &Llama<B>,
        state: &mut PretrainState,
    ) -> Result<(), PretrainError> {
        if !self.is_main {
            return Ok(());
        }
        if let Some(lora) = &self.config.lora {
            save_adapter(
                &self.dir.join(LAST_ADAPTER_FILE),
                model,
                lora,
                TensorMap::new(),
            )?;
        }
        let merged = model.clone().merge_lora();
        save_model(&merged, self.llama_config, &self.dir.join(LAST_MODEL_FILE))?;
        state.last = Some(state.steps);
        Ok(())
    }

    /// Saves everything a resumed run needs: the step's records under new names,
    /// the metrics, `pretrain.json`, then `resume.json` naming the records; the records it
    /// no longer names go last (see [`crate::lm::pretrain::files`]).
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
        let (model_path, optim_path) = record_paths(&self.dir.join(CHECKPOINT_DIR), state.steps);
        model
            .clone()
            .save_file(&model_path, &DurableRecorder)
            .map_err(record_error(&model_path))?;
        Recorder::<B>::record(&DurableRecorder, optim.to_record(), optim_path.clone())
            .map_err(record_error(&optim_path))?;
        state.records = Some(SavedRecords {
            step: state.steps,
            model: RecordFile::of(&model_path)?,
            optim: RecordFile::of(&optim_path)?,
        });
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
        state.save(self.dir, self.config, outputs(self.config, state))?;
        remove_superseded(self.dir, state)
    }
}

/// Which model file holds which step, for `pretrain.json`.
fn outputs(config: &PretrainConfig, state: &PretrainState) -> serde_json::Value {
    let mut best_files = vec![MODEL_FILE.to_string(), "model.config.json".into()];
    let mut last_files = vec![LAST_MODEL_FILE.to_string(), "model-last.config.json".into()];
    if config.lora.is_some() {
        best_files.push(ADAPTER_FILE.into());
        last_files.push(LAST_ADAPTER_FILE.into());
    }
    if config.export_bin {
        best_files.push(MODEL_BIN_FILE.into());
    }
    let best = state.best().map_or_else(
        || serde_json::json!({ "step": null, "files": [], "note": NO_BEST_YET }),
        |best| serde_json::json!({ "step": best.step, "epoch": best.epoch, "files": best_files }),
    );
    let last = state.last.map_or(
        serde_json::Value::Null,
        |step| serde_json::json!({ "step": step, "files": last_files }),
    );
    serde_json::json!({ "best": best, "last": last })
}

/// What a run without a best model says (in `pretrain.json` and when it stops).
pub const NO_BEST_YET: &str =
    "no best model yet: no evaluation since training began (the starting model is not a candidate)";
