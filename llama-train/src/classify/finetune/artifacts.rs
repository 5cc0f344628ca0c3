//! The run folder of a fine-tuning run (`artifact_dir`): the file names, the saved best
//! and last classifiers and the run's record, and clearing what a stale run left behind.
//!
//! ```text
//! artifact_dir/
//!   classifier.mpk    best-dev model (Burn record, full precision)
//!   classifier.json   its ClassifierConfig
//!   adapter.safetensors        with LoRA: the best model's adapters and head
//!   classifier-last.mpk, adapter-last.safetensors   the last weights, while the run is stopped
//!   finetune.json     the FinetuneConfig of the run, and which step each model file holds
//!   resume.json       the resumable state (crate::classify::finetune::resume)
//!   metrics.csv       a row per logged step and per dev evaluation (crate::report::metrics_log)
//!   curves.png        the loss and dev curves (crate::report::curves)
//!   checkpoint/       Burn's checkpoint of model and optimizer (model-<steps>.mpk, ...)
//!   train/ valid/     Burn's per-epoch metric logs
//! ```
//!
//! Every record is written whole or not at all ([`DurableRecorder`]). A save writes the
//! step's checkpoint, then `resume.json` naming it with its lengths, and only then removes
//! the checkpoints it no longer names.

use burn::train::checkpoint::{CheckpointingAction, CheckpointingStrategy};
use burn::train::metric::store::EventStoreClient;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::backend::Backend;
use llama_model::atomic_file;
use llama_model::checkpoint::{raw_tensor, TensorMap};
use llama_model::lora::file::save_adapter;
use llama_model::lora::LoraConfig;
use serde::Serialize;

use crate::classify::classifier::LlamaEmbeddingClassifier;
use crate::classify::finetune::config::FinetuneConfig;
use crate::classify::finetune::error::{io_err, FinetuneError};
use crate::classify::finetune::resume::ResumeState;
use crate::run::record_file::DurableRecorder;
use crate::run::resume_file::RecordFile;
use crate::run::ADAPTER_FILE;

/// The recorder of classifier records and training checkpoints: Burn's named MessagePack,
/// full precision (`.mpk`), written whole or not at all.
pub type ClassifierRecorder = DurableRecorder;

/// File name of the saved [`ClassifierConfig`](crate::classify::classifier::ClassifierConfig) in an
/// artifact folder.
pub const CLASSIFIER_CONFIG_FILE: &str = "classifier.json";
/// File stem of the saved best classifier record in an artifact folder (the recorder adds
/// `.mpk`).
pub const CLASSIFIER_RECORD_STEM: &str = "classifier";
/// File name of a stopped run's last classifier (a record like `classifier.mpk`).
pub const LAST_CLASSIFIER_FILE: &str = "classifier-last.mpk";
/// File name of a stopped LoRA run's last adapters and head.
pub const LAST_ADAPTER_FILE: &str = "adapter-last.safetensors";
/// File name of the saved [`FinetuneConfig`](crate::classify::finetune::config::FinetuneConfig) in an artifact
/// folder.
pub const FINETUNE_CONFIG_FILE: &str = "finetune.json";

/// Writes a config as pretty JSON to `path` with the workspace's atomic writer.
pub(crate) fn save_json<T: Serialize>(value: &T, path: &Path) -> Result<(), FinetuneError> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| io_err(path)(std::io::Error::other(e)))?;
    atomic_file::write_atomic(path, text.as_bytes()).map_err(io_err(path))
}

/// Write the inference model as `dir/classifier.mpk`.
pub(crate) fn save_best<Bk: Backend>(
    model: &LlamaEmbeddingClassifier<Bk>,
    dir: &Path,
) -> Result<(), String> {
    let target = dir.join(format!("{CLASSIFIER_RECORD_STEM}.mpk"));
    model
        .clone()
        .save_file(&target, &ClassifierRecorder::new())
        .map_err(|e| format!("cannot save {}: {e}", target.display()))
}

/// Write a stopped run's last weights: `dir/classifier-last.mpk`, and with LoRA
/// `dir/adapter-last.safetensors`.
pub(crate) fn save_last<Bk: Backend>(
    model: &LlamaEmbeddingClassifier<Bk>,
    lora: Option<&LoraConfig>,
    dir: &Path,
) -> Result<(), String> {
    let target = dir.join(LAST_CLASSIFIER_FILE);
    model
        .clone()
        .save_file(&target, &ClassifierRecorder::new())
        .map_err(|e| format!("cannot save {}: {e}", target.display()))?;
    if let Some(lora) = lora {
        save_classifier_adapter(model, lora, &dir.join(LAST_ADAPTER_FILE))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Write the adapters of a LoRA-trained `model` and its head (`classifier_head.weight`
/// `[labels, dim]`, `classifier_head.bias`) to `path`.
pub(crate) fn save_classifier_adapter<B: Backend>(
    model: &LlamaEmbeddingClassifier<B>,
    lora: &LoraConfig,
    path: &Path,
) -> Result<(), FinetuneError> {
    let mut head = TensorMap::new();
    head.insert(
        "classifier_head.weight".into(),
        raw_tensor(model.classifier_head.weight.val().transpose()),
    );
    if let Some(bias) = &model.classifier_head.bias {
        head.insert("classifier_head.bias".into(), raw_tensor(bias.val()));
    }
    save_adapter(path, &model.llama, lora, head)?;
    Ok(())
}

/// Writes `finetune.json`: the run's settings and which step each model file holds.
pub(crate) fn save_run_record(
    config: &FinetuneConfig,
    state: &ResumeState,
) -> Result<(), FinetuneError> {
    let dir = &config.artifact_dir;
    let path = dir.join(FINETUNE_CONFIG_FILE);
    let mut value =
        serde_json::to_value(config).map_err(|e| io_err(&path)(std::io::Error::other(e)))?;
    let lora = config.lora.is_some();
    let best = state.best.map_or_else(
        || serde_json::json!({ "step": null, "files": [], "note": NO_BEST_YET }),
        |best| {
            let mut files = vec![format!("{CLASSIFIER_RECORD_STEM}.mpk")];
            if lora {
                files.push(ADAPTER_FILE.into());
            }
            serde_json::json!({ "epoch": best.epoch, "step": best.step, "files": files })
        },
    );
    let last = state.last.map_or(serde_json::Value::Null, |step| {
        let mut files = vec![LAST_CLASSIFIER_FILE];
        if lora {
            files.push(LAST_ADAPTER_FILE);
        }
        serde_json::json!({ "step": step, "files": files })
    });
    if let Some(object) = value.as_object_mut() {
        object.insert(
            "outputs".into(),
            serde_json::json!({ "best": best, "last": last }),
        );
    }
    save_json(&value, &path)
}

/// What a run without a best model says (in `finetune.json` and when it stops).
pub const NO_BEST_YET: &str =
    "no best model yet: no epoch has finished (the best model is chosen on dev after each epoch)";

/// The checkpoint files of step `step` in `dir/checkpoint`, as `resume.json` names them.
pub(crate) fn checkpoint_records(
    dir: &Path,
    step: usize,
) -> Result<Vec<RecordFile>, FinetuneError> {
    let suffix = format!("-{step}.mpk");
    checkpoint_files(dir)
        .into_iter()
        .filter(|(_, name)| name.ends_with(&suffix))
        .map(|(path, _)| RecordFile::of(&path).map_err(FinetuneError::from))
        .collect()
}

/// After `resume.json` was written: removes the checkpoints it does not name, and the last
/// weights when it records none (training went on after a stop).
pub(crate) fn remove_superseded(dir: &Path, state: &ResumeState) -> Result<(), FinetuneError> {
    let mut stale: Vec<PathBuf> = checkpoint_files(dir)
        .into_iter()
        .filter(|(_, name)| !state.checkpoint.iter().any(|r| &r.name == name))
        .map(|(path, _)| path)
        .collect();
    if state.last.is_none() {
        stale.push(dir.join(LAST_CLASSIFIER_FILE));
        stale.push(dir.join(LAST_ADAPTER_FILE));
    }
    for path in stale {
        atomic_file::remove(&path).map_err(io_err(&path))?;
    }
    Ok(())
}

/// Removes the temporary files of cut-off saves of processes now gone from the run folder
/// ([`crate::run::record_file::remove_orphaned_temps`]).
pub(crate) fn remove_orphaned_temps(dir: &Path) -> Result<(), FinetuneError> {
    crate::run::record_file::remove_orphaned_temps(dir).map_err(|(path, e)| io_err(&path)(e))
}

/// Every file of `dir` a fresh run removes or a run replaces (those that exist): what a
/// run's inputs must not be.
pub fn run_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = checkpoint_files(dir)
        .into_iter()
        .map(|(path, _)| path)
        .collect();
    for name in [
        "classifier.mpk",
        "classifier-partial.mpk",
        LAST_CLASSIFIER_FILE,
        LAST_ADAPTER_FILE,
        CLASSIFIER_CONFIG_FILE,
        FINETUNE_CONFIG_FILE,
        crate::run::resume_file::RESUME_FILE,
        crate::report::metrics_log::METRICS_FILE,
        crate::report::curves::CURVES_FILE,
        ADAPTER_FILE,
    ] {
        files.push(dir.join(name));
    }
    files.retain(|p| p.is_file());
    files
}

/// Remove what an earlier run left in `dir` that this one would read back: Burn's metric logs
/// of epochs this run may not reach would enter the best-epoch search, and an old checkpoint
/// could be taken for this run's. Only Burn's own names (`train/epoch-*`, `valid/epoch-*`,
/// `checkpoint/{model,optim,scheduler}-*.mpk`) and ours (`classifier.mpk`, `resume.json`)
/// are touched, and the run's tables and pictures (`metrics.csv`, `curves.png`).
pub(crate) fn clear_previous_run(dir: &Path) -> Result<(), FinetuneError> {
    for split in ["train", "valid"] {
        for (path, name) in entries(dir, split) {
            if name.starts_with("epoch-") && path.is_dir() {
                std::fs::remove_dir_all(&path).map_err(io_err(&path))?;
            }
        }
    }
    // The configs are rewritten at the start; everything else goes.
    let configs = [
        dir.join(CLASSIFIER_CONFIG_FILE),
        dir.join(FINETUNE_CONFIG_FILE),
    ];
    let mut stale = run_files(dir);
    stale.retain(|p| !configs.contains(p));
    remove_files(stale)
}

/// Burn's checkpoint files in `dir/checkpoint`, with their names.
fn checkpoint_files(dir: &Path) -> Vec<(PathBuf, String)> {
    let checkpoint = |name: &str| {
        ["model-", "optim-", "scheduler-"]
            .iter()
            .any(|prefix| name.starts_with(prefix))
            && name.ends_with(".mpk")
    };
    entries(dir, "checkpoint")
        .into_iter()
        .filter(|(path, name)| checkpoint(name) && path.is_file())
        .collect()
}

fn entries(dir: &Path, sub: &str) -> Vec<(PathBuf, String)> {
    std::fs::read_dir(dir.join(sub))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| Some((e.path(), e.file_name().into_string().ok()?)))
                .collect()
        })
        .unwrap_or_default()
}

fn remove_files(paths: Vec<PathBuf>) -> Result<(), FinetuneError> {
    for path in paths {
        if path.is_file() {
            std::fs::remove_file(&path).map_err(io_err(&path))?;
        }
    }
    Ok(())
}

/// Saves Burn's checkpoint every time it is asked to, under the key it is given (the step
/// count), and deletes nothing: the loop removes the checkpoints `resume.json` no longer
/// names once the new one is written ([`remove_superseded`]).
///
/// The delete of a key that never exists only flushes: Burn's checkpointers write on their
/// own threads behind rendezvous channels, so once a delete has been handed over, the save
/// before it is on disk.
pub(crate) struct SaveEveryCall;

impl SaveEveryCall {
    fn actions() -> Vec<CheckpointingAction> {
        vec![
            CheckpointingAction::Save,
            CheckpointingAction::Delete(usize::MAX),
        ]
    }
}

impl CheckpointingStrategy for SaveEveryCall {
    fn checkpointing(
        &mut self,
        _key: usize,
        _store: &EventStoreClient,
    ) -> Vec<CheckpointingAction> {
        Self::actions()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previous_runs_are_cleared_but_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in ["train/epoch-4", "valid/epoch-1", "train/mine", "checkpoint"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        for file in [
            "train/epoch-4/Loss.log",
            "train/notes.txt",
            "checkpoint/model-3.mpk",
            "checkpoint/optim-3.mpk",
            "checkpoint/keep.txt",
            "classifier.mpk",
            "classifier.json",
        ] {
            std::fs::write(d.join(file), "x").unwrap();
        }
        clear_previous_run(d).unwrap();
        for gone in [
            "train/epoch-4",
            "valid/epoch-1",
            "checkpoint/model-3.mpk",
            "checkpoint/optim-3.mpk",
            "classifier.mpk",
        ] {
            assert!(!d.join(gone).exists(), "{gone}");
        }
        for kept in [
            "train/mine",
            "train/notes.txt",
            "checkpoint/keep.txt",
            "classifier.json",
        ] {
            assert!(d.join(kept).exists(), "{kept}");
        }
    }
}
