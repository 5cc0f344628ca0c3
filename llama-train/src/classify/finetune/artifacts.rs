//! The run folder of a fine-tuning run (`artifact_dir`): the file names, the saved best
//! classifier and its configs, and clearing what a stale run left behind.
//!
//! ```text
//! artifact_dir/
//!   classifier.mpk    best-dev model (Burn record, full precision)
//!   classifier.json   its ClassifierConfig
//!   finetune.json     the FinetuneConfig of the run
//!   resume.json       the resumable state (crate::classify::finetune::resume)
//!   metrics.csv       a row per logged step and per dev evaluation (crate::report::metrics_log)
//!   curves.png        the loss and dev curves (crate::report::curves)
//!   checkpoint/       Burn's checkpoint of model and optimizer (model-<steps>.mpk, ...)
//!   train/ valid/     Burn's per-epoch metric logs
//! ```

use burn::train::checkpoint::{CheckpointingAction, CheckpointingStrategy};
use burn::train::metric::store::EventStoreClient;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::record::{DefaultRecorder, FileRecorder};
use burn::tensor::backend::Backend;
use llama_model::atomic_file;
use serde::Serialize;

use crate::classify::classifier::LlamaEmbeddingClassifier;
use crate::classify::finetune::error::{io_err, FinetuneError};

/// The recorder of classifier records and training checkpoints: named MessagePack, full
/// precision (`.mpk`).
pub type ClassifierRecorder = DefaultRecorder;

/// File name of the saved [`ClassifierConfig`](crate::classify::classifier::ClassifierConfig) in an
/// artifact folder.
pub const CLASSIFIER_CONFIG_FILE: &str = "classifier.json";
/// File stem of the saved best classifier record in an artifact folder (the recorder adds
/// `.mpk`).
pub const CLASSIFIER_RECORD_STEM: &str = "classifier";
/// File name of the saved [`FinetuneConfig`](crate::classify::finetune::config::FinetuneConfig) in an artifact
/// folder.
pub const FINETUNE_CONFIG_FILE: &str = "finetune.json";

/// Writes a config as pretty JSON to `path` with the workspace's atomic writer.
pub(crate) fn save_json<T: Serialize>(value: &T, path: &Path) -> Result<(), FinetuneError> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| io_err(path)(std::io::Error::other(e)))?;
    atomic_file::write_atomic(path, text.as_bytes()).map_err(io_err(path))
}

/// Write the inference model as `dir/classifier.mpk`: Burn's recorder writes a partial file,
/// which the workspace's atomic writer then flushes and renames into place.
pub(crate) fn save_best<Bk: Backend>(
    model: &LlamaEmbeddingClassifier<Bk>,
    dir: &Path,
) -> Result<(), String> {
    let recorder = ClassifierRecorder::new();
    let extension = <ClassifierRecorder as FileRecorder<Bk>>::file_extension();
    let partial = dir.join(format!("{CLASSIFIER_RECORD_STEM}-partial"));
    let target = dir.join(format!("{CLASSIFIER_RECORD_STEM}.{extension}"));
    model
        .clone()
        .save_file(&partial, &recorder)
        .map_err(|e| format!("cannot save {}: {e}", target.display()))?;
    atomic_file::commit(&partial.with_extension(extension), &target)
        .map_err(|e| format!("cannot save {}: {e}", target.display()))
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
    let mut stale: Vec<PathBuf> = checkpoint_files(dir)
        .into_iter()
        .map(|(path, _)| path)
        .collect();
    stale.push(dir.join(format!("{CLASSIFIER_RECORD_STEM}.mpk")));
    stale.push(dir.join(format!("{CLASSIFIER_RECORD_STEM}-partial.mpk")));
    stale.push(dir.join(crate::run::resume_file::RESUME_FILE));
    stale.push(dir.join(crate::report::metrics_log::METRICS_FILE));
    stale.push(dir.join(crate::report::curves::CURVES_FILE));
    stale.push(dir.join(crate::run::ADAPTER_FILE));
    remove_files(stale)
}

/// Remove the checkpoints of `dir` but the one of step `keep` (what `resume.json` points
/// to): the loop keeps the previous checkpoint until the next `resume.json` is written, so
/// a resumed run finds one more than it needs.
pub(crate) fn remove_stale_checkpoints(dir: &Path, keep: usize) -> Result<(), FinetuneError> {
    let keep = format!("-{keep}.mpk");
    remove_files(
        checkpoint_files(dir)
            .into_iter()
            .filter(|(_, name)| !name.ends_with(&keep))
            .map(|(path, _)| path)
            .collect(),
    )
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
/// count), and deletes the one before the previous: the previous one is what `resume.json`
/// points to until the loop writes the next `resume.json`, so a crash in between still
/// resumes.
///
/// The delete also flushes: Burn's checkpointers write on their own threads behind
/// rendezvous channels, so once a delete has been handed over, the save before it is on
/// disk.
pub(crate) struct SaveEveryCall {
    previous: Option<usize>,
    older: Option<usize>,
}

impl SaveEveryCall {
    pub(crate) fn new(previous: Option<usize>) -> Self {
        Self {
            previous,
            older: None,
        }
    }
}

impl SaveEveryCall {
    fn actions(&mut self, key: usize) -> Vec<CheckpointingAction> {
        let stale = if self.previous == Some(key) {
            None
        } else {
            std::mem::replace(&mut self.older, self.previous.replace(key))
        };
        vec![
            CheckpointingAction::Save,
            // Nothing to delete: a key that never exists, only to flush the saves.
            CheckpointingAction::Delete(stale.unwrap_or(usize::MAX)),
        ]
    }
}

impl CheckpointingStrategy for SaveEveryCall {
    fn checkpointing(&mut self, key: usize, _store: &EventStoreClient) -> Vec<CheckpointingAction> {
        self.actions(key)
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

    #[test]
    fn checkpoint_strategy_keeps_the_previous_key_until_the_next_save() {
        let mut strategy = SaveEveryCall::new(None);
        let flush = CheckpointingAction::Delete(usize::MAX);
        assert_eq!(
            strategy.actions(5),
            [CheckpointingAction::Save, flush.clone()]
        );
        assert_eq!(
            strategy.actions(9),
            [CheckpointingAction::Save, flush.clone()]
        );
        assert_eq!(
            strategy.actions(12),
            [CheckpointingAction::Save, CheckpointingAction::Delete(5)]
        );
        // The same key again (a stop right after an epoch's save): nothing deleted.
        assert_eq!(strategy.actions(12), [CheckpointingAction::Save, flush]);
        assert_eq!(
            strategy.actions(14),
            [CheckpointingAction::Save, CheckpointingAction::Delete(9)]
        );
    }
}
