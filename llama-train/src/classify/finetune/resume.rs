//! The resumable state of a fine-tuning run: `artifact_dir/resume.json`, written (atomically)
//! after every epoch and when a run stops early, beside Burn's checkpoint of the model and
//! the optimizer (`checkpoint/{model,optim}-<steps>.mpk`).
//!
//! A run's randomness is a function of its position (see [`crate::classify::finetune::training_loop`]), so the
//! position, the optimizer state and the model are all a resumed run needs to continue
//! exactly as an uninterrupted one; the partial epoch's running totals and the best epoch so
//! far come along so that the epoch summaries and the best-model choice are the same too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use llama_model::lora::LoraConfig;

use crate::classify::classifier::{FinetuneOption, SentencePosition};
use crate::classify::finetune::config::FinetuneConfig;
use crate::data::sentences::SentenceDataset;
use crate::fnv::{json_digest, Fnv1a};
use crate::metrics::{ACCURACY, LOSS};
use crate::run::resume_file::{
    check_settings, read_resume_file, RecordFile, ResumeError, RESUME_FILE,
};
// The epoch tally lives with the metrics; `resume::Tally` stays a valid path.
pub use crate::metrics::Tally;

/// Version of the `resume.json` layout.
const VERSION: u32 = 2;

/// Where a run stands: the epoch being trained (1-based) and how many of its batches are
/// done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Epoch to train next (1-based); `epochs + 1` once all are done.
    pub epoch: usize,
    /// Batches of that epoch already trained.
    pub batches_done: usize,
}

impl Position {
    /// The start of a run.
    pub const START: Self = Self {
        epoch: 1,
        batches_done: 0,
    };
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.batches_done == 0 {
            write!(f, "the start of epoch {}", self.epoch)
        } else {
            write!(f, "epoch {}, after batch {}", self.epoch, self.batches_done)
        }
    }
}

/// The best dev accuracy so far and its epoch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BestEpoch {
    /// 1-based epoch.
    pub epoch: usize,
    /// Optimizer steps done at its end.
    pub step: usize,
    /// Dev accuracy in `[0, 1]`.
    pub dev_accuracy: f64,
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

/// The settings that must not change between a run and its resumption (the number of
/// epochs may grow).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    seed: u64,
    lr: f64,
    batch_size: usize,
    hidden_dropout_prob: f64,
    weight_decay: f64,
    option: FinetuneOption,
    position: SentencePosition,
    max_sentence_len: Option<usize>,
    /// LoRA settings, if any.
    #[serde(default)]
    lora: Option<LoraConfig>,
    /// Length-grouped batches (runs saved before the option existed had none).
    #[serde(default)]
    group_by_length: bool,
    /// Training sentences and a hash of their tokens and labels.
    train_items: usize,
    train_hash: u64,
    /// Processes of a data-parallel run (1: one process). A run resumes on as many.
    #[serde(default = "one")]
    world_size: usize,
}

fn one() -> usize {
    1
}

impl RunSettings {
    /// The settings of `config` training on `train`.
    pub fn new(config: &FinetuneConfig, train: &SentenceDataset) -> Self {
        Self {
            seed: config.seed,
            lr: config.lr,
            batch_size: config.batch_size,
            hidden_dropout_prob: config.hidden_dropout_prob,
            weight_decay: config.weight_decay,
            option: config.option,
            position: config.position,
            max_sentence_len: config.max_sentence_len,
            lora: config.lora.clone(),
            group_by_length: config.group_by_length,
            train_items: train.items().len(),
            train_hash: fingerprint(train),
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

    /// The first setting that differs from `other`, as `(name, saved, now)`.
    fn difference(&self, now: &Self) -> Option<(&'static str, String, String)> {
        let lora = |l: &Option<LoraConfig>| l.as_ref().map_or("off".into(), LoraConfig::summary);
        let pairs: [(&str, String, String); 12] = [
            ("seed", self.seed.to_string(), now.seed.to_string()),
            ("lr", self.lr.to_string(), now.lr.to_string()),
            (
                "batch size",
                self.batch_size.to_string(),
                now.batch_size.to_string(),
            ),
            (
                "hidden dropout",
                self.hidden_dropout_prob.to_string(),
                now.hidden_dropout_prob.to_string(),
            ),
            (
                "weight decay",
                self.weight_decay.to_string(),
                now.weight_decay.to_string(),
            ),
            ("option", self.option.to_string(), now.option.to_string()),
            (
                "sentence position",
                format!("{:?}", self.position),
                format!("{:?}", now.position),
            ),
            (
                "max sentence length",
                format!("{:?}", self.max_sentence_len),
                format!("{:?}", now.max_sentence_len),
            ),
            ("LoRA", lora(&self.lora), lora(&now.lora)),
            (
                "group by length",
                self.group_by_length.to_string(),
                now.group_by_length.to_string(),
            ),
            (
                "training data",
                format!(
                    "{} sentences (hash {:016x})",
                    self.train_items, self.train_hash
                ),
                format!(
                    "{} sentences (hash {:016x})",
                    now.train_items, now.train_hash
                ),
            ),
            (
                "world size",
                self.world_size.to_string(),
                now.world_size.to_string(),
            ),
        ];
        pairs.into_iter().find(|(_, a, b)| a != b)
    }
}

/// FNV-1a over every training item's label and tokens, in file order.
fn fingerprint(train: &SentenceDataset) -> u64 {
    let mut hash = Fnv1a::default();
    for item in train.items() {
        hash.u64(item.label as u64);
        hash.u64(item.tokens.len() as u64);
        for &token in &item.tokens {
            hash.u64(u64::from(token));
        }
    }
    hash.finish()
}

/// What `resume.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResumeState {
    version: u32,
    /// Where to continue.
    pub next: Position,
    /// Optimizer steps done so far; also the key of Burn's checkpoint files
    /// (`checkpoint/model-<steps>.mpk`, `checkpoint/optim-<steps>.mpk`).
    pub steps: usize,
    /// Running totals of the partial epoch `next.epoch` (empty at an epoch boundary).
    pub tally: Tally,
    /// Training seconds already spent on the partial epoch.
    pub partial_seconds: f64,
    /// Running totals of the steps since the last `metrics.csv` training row, so that a
    /// resumed run logs the rows an uninterrupted one would.
    #[serde(default)]
    pub window: Tally,
    /// Best dev accuracy so far (its model is `classifier.mpk`).
    pub best: Option<BestEpoch>,
    /// Summaries of the finished epochs.
    pub history: Vec<EpochSummary>,
    /// What must stay the same on resumption.
    pub settings: RunSettings,
    /// Burn's checkpoint files of step `steps` (model, optimizer, schedule), with their
    /// lengths when saved.
    pub checkpoint: Vec<RecordFile>,
    /// The step whose weights `classifier-last.mpk` holds, while the run is stopped.
    pub last: Option<usize>,
}

impl ResumeState {
    /// The state at the start of a run with `settings`.
    pub fn start(settings: RunSettings) -> Self {
        Self {
            version: VERSION,
            next: Position::START,
            steps: 0,
            tally: Tally::default(),
            partial_seconds: 0.0,
            window: Tally::default(),
            best: None,
            history: Vec::new(),
            settings,
            checkpoint: Vec::new(),
            last: None,
        }
    }

    /// The path of Burn's checkpoint file `kind` (`model`, `optim`) of step `steps` in
    /// `checkpoints`, checked to be named here, there, and of its saved length.
    pub fn checked_record(&self, checkpoints: &Path, kind: &str) -> Result<PathBuf, ResumeError> {
        let name = format!("{kind}-{}.mpk", self.steps);
        match self.checkpoint.iter().find(|r| r.name == name) {
            Some(record) => record.check(checkpoints),
            None => Err(ResumeError::Record {
                path: checkpoints.join(name),
                detail: format!("not among the checkpoint files of step {}", self.steps),
            }),
        }
    }

    /// Read `dir/resume.json` and check that it belongs to a run with `settings`.
    pub fn load(dir: &Path, settings: &RunSettings) -> Result<Self, ResumeError> {
        let state: Self = read_resume_file(dir, VERSION, |s: &Self| s.version)?;
        check_settings(dir, state.settings.difference(settings))?;
        Ok(state)
    }

    /// Write `dir/resume.json` atomically ([`llama_model::atomic_file`]), so that a crash
    /// leaves the previous state whole.
    pub fn save(&self, dir: &Path) -> Result<(), ResumeError> {
        let path = dir.join(RESUME_FILE);
        let io = |source| ResumeError::Io {
            path: path.clone(),
            source,
        };
        let text = serde_json::to_string(self).map_err(|e| io(std::io::Error::other(e)))?;
        llama_model::atomic_file::write_atomic(&path, text.as_bytes()).map_err(io)
    }
}
