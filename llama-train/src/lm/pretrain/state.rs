//! The record of a language-model training run: `pretrain.json` (its settings, every
//! evaluation and which step each model file holds, rewritten at each save) and
//! `resume.json` (where to continue, and the records of the model and the optimizer that go
//! with it: `checkpoint/model-<step>.mpk`, `checkpoint/optim-<step>.mpk`, named with their
//! lengths), written atomically.
//!
//! The window order of an epoch is drawn from `(seed, epoch)` and the learning rate is a
//! function of the step, so the step, the optimizer state and the model are all a resumed
//! run needs to continue exactly as an uninterrupted one.

use std::path::Path;

use llama_model::atomic_file::write_atomic;
use llama_model::lora::LoraConfig;
use serde::{Deserialize, Serialize};

use crate::fnv::{json_digest, Fnv1a};
use crate::lm::pretrain::config::PretrainConfig;
use crate::lm::pretrain::error::{io_err, PretrainError};
use crate::run::resume_file::{
    check_settings, read_resume_file, RecordFile, ResumeError, RESUME_FILE,
};

/// File name of the run record in an artifact folder.
pub const PRETRAIN_RECORD_FILE: &str = "pretrain.json";

/// Version of the `resume.json` layout of a pretraining run.
const VERSION: u32 = 3;

/// The records of the model and the optimizer that a `resume.json` goes with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedRecords {
    /// The step they were saved at (`resume.json`'s own).
    pub step: usize,
    /// Burn's record of the model.
    pub model: RecordFile,
    /// Burn's record of the optimizer.
    pub optim: RecordFile,
}

/// One evaluation on the validation text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Epoch (1-based) in which it was taken; 0 for the model before training.
    pub epoch: usize,
    /// Optimizer steps done.
    pub step: usize,
    /// Mean training loss per token since the previous evaluation (`None` before training).
    pub train_loss: Option<f64>,
    /// Mean validation NLL per predicted token (nats).
    pub val_loss: f64,
    /// `exp(val_loss)`.
    pub val_perplexity: f64,
    /// Validation tokens predicted.
    pub val_tokens: usize,
    /// Learning rate of the last step.
    pub lr: f64,
    /// Seconds of training since the run started, across resumptions.
    pub wall_seconds: f64,
}

/// The settings a resumed run must share with the saved one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainSettings {
    /// Windows per epoch and a hash of their tokens.
    pub windows: usize,
    /// FNV-1a hash of the training windows.
    pub windows_hash: u64,
    /// Validation documents.
    pub val_documents: usize,
    /// Tokens per window.
    pub seq_len: usize,
    /// Passes over the windows (the schedule's length depends on it).
    pub epochs: usize,
    /// Micro-batch size.
    pub batch_size: usize,
    /// Micro-batches per step.
    pub grad_accum_steps: usize,
    /// Peak and final learning rate and warm-up.
    pub lr: (f64, f64, usize),
    /// Weight decay, beta 2, clip norm.
    pub optimizer: (f64, f64, f64),
    /// Seed of the order.
    pub seed: u64,
    /// LoRA settings, if any.
    pub lora: Option<LoraConfig>,
    /// Processes of a data-parallel run (1: one process). A run resumes on as many.
    #[serde(default = "one")]
    pub world_size: usize,
}

fn one() -> usize {
    1
}

impl PretrainSettings {
    /// The settings of `config` training on `windows` of `seq_len` tokens.
    pub fn new(
        config: &PretrainConfig,
        windows: &[Vec<u32>],
        val_documents: usize,
        seq_len: usize,
    ) -> Self {
        Self {
            windows: windows.len(),
            windows_hash: fingerprint(windows),
            val_documents,
            seq_len,
            epochs: config.epochs,
            batch_size: config.batch_size,
            grad_accum_steps: config.grad_accum_steps,
            lr: (config.lr, config.min_lr, config.warmup_steps),
            optimizer: (config.weight_decay, config.beta_2, config.grad_clip),
            seed: config.seed,
            lora: config.lora.clone(),
            world_size: 1,
        }
    }

    /// The settings of a data-parallel run on `world_size` processes.
    pub fn with_world_size(self, world_size: usize) -> Self {
        Self { world_size, ..self }
    }

    /// A digest of every setting (the ranks of a data-parallel run compare theirs).
    pub fn digest(&self) -> u64 {
        json_digest(self)
    }

    /// The first setting that differs from `now`, as `(name, saved, now)`.
    fn difference(&self, now: &Self) -> Option<(&'static str, String, String)> {
        let lora = |l: &Option<LoraConfig>| l.as_ref().map_or("off".into(), LoraConfig::summary);
        let pairs: [(&'static str, String, String); 11] = [
            (
                "training text",
                format!("{} windows (hash {:016x})", self.windows, self.windows_hash),
                format!("{} windows (hash {:016x})", now.windows, now.windows_hash),
            ),
            (
                "validation text",
                format!("{} documents", self.val_documents),
                format!("{} documents", now.val_documents),
            ),
            (
                "sequence length",
                self.seq_len.to_string(),
                now.seq_len.to_string(),
            ),
            ("epochs", self.epochs.to_string(), now.epochs.to_string()),
            (
                "batch size",
                self.batch_size.to_string(),
                now.batch_size.to_string(),
            ),
            (
                "gradient accumulation",
                self.grad_accum_steps.to_string(),
                now.grad_accum_steps.to_string(),
            ),
            (
                "learning rate (peak, min, warm-up)",
                format!("{:?}", self.lr),
                format!("{:?}", now.lr),
            ),
            (
                "optimizer (weight decay, beta 2, clip)",
                format!("{:?}", self.optimizer),
                format!("{:?}", now.optimizer),
            ),
            ("seed", self.seed.to_string(), now.seed.to_string()),
            ("LoRA", lora(&self.lora), lora(&now.lora)),
            (
                "world size",
                self.world_size.to_string(),
                now.world_size.to_string(),
            ),
        ];
        pairs.into_iter().find(|(_, a, b)| a != b)
    }
}

/// FNV-1a over the windows' tokens, in order.
fn fingerprint(windows: &[Vec<u32>]) -> u64 {
    let mut hash = Fnv1a::default();
    for &token in windows.iter().flatten() {
        hash.bytes(&token.to_le_bytes());
    }
    hash.finish()
}

/// Where a run stands, and what it has measured: `resume.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PretrainState {
    version: u32,
    /// The epoch being trained (1-based).
    pub epoch: usize,
    /// Optimizer steps done in that epoch.
    pub epoch_steps: usize,
    /// Optimizer steps done in the run.
    pub steps: usize,
    /// Summed training loss (per-token means × tokens) and tokens since the last evaluation.
    pub since_eval: (f64, usize),
    /// The same since the last `metrics.csv` training row.
    pub since_log: (f64, usize),
    /// Training seconds spent so far.
    pub wall_seconds: f64,
    /// Every evaluation so far.
    pub evaluations: Vec<Evaluation>,
    /// Index in `evaluations` of the best (lowest validation loss; the first of equals).
    pub best: Option<usize>,
    /// What must stay the same on resumption.
    pub settings: PretrainSettings,
    /// The records this state goes with (`None` before the first save).
    pub records: Option<SavedRecords>,
    /// The step whose weights the `*-last` model files hold, while the run is stopped.
    pub last: Option<usize>,
}

impl PretrainState {
    /// The state at the start of a run.
    pub fn start(settings: PretrainSettings) -> Self {
        Self {
            version: VERSION,
            epoch: 1,
            epoch_steps: 0,
            steps: 0,
            since_eval: (0.0, 0),
            since_log: (0.0, 0),
            wall_seconds: 0.0,
            evaluations: Vec::new(),
            best: None,
            settings,
            records: None,
            last: None,
        }
    }

    /// The best evaluation so far.
    pub fn best(&self) -> Option<&Evaluation> {
        self.evaluations.get(self.best?)
    }

    /// Read `dir/resume.json` and check that it belongs to a run with `settings`.
    pub fn load(dir: &Path, settings: &PretrainSettings) -> Result<Self, ResumeError> {
        let state: Self = read_resume_file(dir, VERSION, |s: &Self| s.version)?;
        check_settings(dir, state.settings.difference(settings))?;
        Ok(state)
    }

    /// Write `dir/pretrain.json` (with `config` and `outputs`, which model file holds which
    /// step) and then `dir/resume.json`.
    pub fn save(
        &self,
        dir: &Path,
        config: &PretrainConfig,
        outputs: serde_json::Value,
    ) -> Result<(), PretrainError> {
        let json = |value: serde_json::Value, name: &str| {
            let path = dir.join(name);
            let text = serde_json::to_string_pretty(&value)
                .map_err(|e| io_err(&path)(std::io::Error::other(e)))?;
            write_atomic(&path, text.as_bytes()).map_err(io_err(&path))
        };
        // Plain structs and numbers: serializing them cannot fail.
        json(
            serde_json::json!({
                "settings": config,
                "steps": self.steps,
                "best": self.best(),
                "outputs": outputs,
                "evaluations": self.evaluations,
            }),
            PRETRAIN_RECORD_FILE,
        )?;
        json(serde_json::json!(self), RESUME_FILE)
    }
}
