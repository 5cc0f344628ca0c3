//! The files of a `pretrain` run folder: their names, which of them a save replaces and
//! when the old ones go, reading Burn's records back (checked against `resume.json`), and
//! clearing what an earlier run left.
//!
//! ```text
//! artifact_dir/
//!   model.safetensors, model.config.json   best model (lowest validation loss after training began)
//!   model.bin, adapter.safetensors         its llama2.c export (--export-bin), its adapters (LoRA)
//!   model-last.safetensors (+ .config.json, adapter-last.safetensors)
//!                                          the last weights, while the run is stopped
//!   pretrain.json                          settings, evaluations, which step each model file holds
//!   resume.json                            where to continue, naming the records below
//!   metrics.csv, curves.png                the curves
//!   checkpoint/model-<step>.mpk, optim-<step>.mpk   Burn's records of the model and the optimizer
//! ```
//!
//! A save writes the new step's records under new names, then `resume.json`, which names
//! them with their lengths, and only then removes the older records: a crash at any point
//! leaves a `resume.json` whose records are on disk, whole.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::Optimizer;
use burn::record::Recorder;
use burn::tensor::backend::AutodiffBackend;
use llama_model::atomic_file;
use llama_model::Llama;

use crate::lm::pretrain::error::{io_err, PretrainError};
use crate::lm::pretrain::state::{PretrainState, PRETRAIN_RECORD_FILE};
use crate::report::curves::CURVES_FILE;
use crate::report::metrics_log::METRICS_FILE;
use crate::run::record_file::DurableRecorder;
use crate::run::resume_file::{ResumeError, RESUME_FILE};

/// File name of the best model in a run folder (its config is `model.config.json`).
pub const MODEL_FILE: &str = "model.safetensors";
/// File name of the best model as a llama2.c v0 export (with `export_bin`).
pub const MODEL_BIN_FILE: &str = "model.bin";
/// File name of the best model's LoRA adapters (LoRA runs).
pub use crate::run::ADAPTER_FILE;
/// File name of a stopped run's last weights (its config is `model-last.config.json`).
pub const LAST_MODEL_FILE: &str = "model-last.safetensors";
/// File name of a stopped LoRA run's last adapters.
pub const LAST_ADAPTER_FILE: &str = "adapter-last.safetensors";
/// The folder of Burn's records in a run folder.
pub const CHECKPOINT_DIR: &str = "checkpoint";

/// The config file `save_model` writes beside a model file.
fn config_of(model_file: &str) -> String {
    format!(
        "{}.config.json",
        model_file.trim_end_matches(".safetensors")
    )
}

/// The files of the last weights, in `dir`.
pub(crate) fn last_files(dir: &Path) -> [PathBuf; 3] {
    [
        dir.join(LAST_MODEL_FILE),
        dir.join(config_of(LAST_MODEL_FILE)),
        dir.join(LAST_ADAPTER_FILE),
    ]
}

/// Whether `name` is one of Burn's records a run writes in its checkpoint folder (or wrote,
/// in older layouts: `model.mpk`, `*-partial.mpk`).
fn is_record_name(name: &str) -> bool {
    ["model", "optim"].iter().any(|kind| {
        name.strip_prefix(kind)
            .is_some_and(|rest| rest == ".mpk" || rest.starts_with('-') && rest.ends_with(".mpk"))
    })
}

/// The record files in `checkpoints`.
fn record_files(checkpoints: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(checkpoints) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(is_record_name))
        .map(|e| e.path())
        .collect()
}

/// Every file of `dir` a run writes, replaces or removes (those that exist): what a run's
/// inputs must not be.
pub fn run_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = vec![
        dir.join(MODEL_FILE),
        dir.join(config_of(MODEL_FILE)),
        dir.join(MODEL_BIN_FILE),
        dir.join(ADAPTER_FILE),
        dir.join(RESUME_FILE),
        dir.join(PRETRAIN_RECORD_FILE),
        dir.join(METRICS_FILE),
        dir.join(CURVES_FILE),
    ];
    files.extend(last_files(dir));
    files.extend(record_files(&dir.join(CHECKPOINT_DIR)));
    files.retain(|p| p.is_file());
    files
}

/// Removes what an earlier run left in `dir` that this one would read back or leave
/// standing: Burn's records, the state, the tables and pictures, the model files.
pub(crate) fn clear_previous_run(dir: &Path) -> Result<(), PretrainError> {
    for path in run_files(dir) {
        std::fs::remove_file(&path).map_err(io_err(&path))?;
    }
    Ok(())
}

/// Removes the temporary files of cut-off saves of processes now gone from the run folder
/// ([`crate::run::record_file::remove_orphaned_temps`]).
pub(crate) fn remove_orphaned_temps(dir: &Path) -> Result<(), PretrainError> {
    crate::run::record_file::remove_orphaned_temps(dir).map_err(|(path, e)| io_err(&path)(e))
}

/// After `resume.json` was written: removes the records it does not name, and the last
/// weights when it records none (training went on after a stop).
pub(crate) fn remove_superseded(dir: &Path, state: &PretrainState) -> Result<(), PretrainError> {
    let checkpoints = dir.join(CHECKPOINT_DIR);
    let named: Vec<&str> = state
        .records
        .iter()
        .flat_map(|r| [r.model.name.as_str(), r.optim.name.as_str()])
        .collect();
    let mut stale: Vec<PathBuf> = record_files(&checkpoints)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_none_or(|n| !named.contains(&n))
        })
        .collect();
    if state.last.is_none() {
        stale.extend(last_files(dir));
    }
    for path in stale {
        atomic_file::remove(&path).map_err(io_err(&path))?;
    }
    Ok(())
}

/// The record paths of step `step` in `checkpoints`: the model's and the optimizer's.
pub(crate) fn record_paths(checkpoints: &Path, step: usize) -> (PathBuf, PathBuf) {
    (
        checkpoints.join(format!("model-{step}.mpk")),
        checkpoints.join(format!("optim-{step}.mpk")),
    )
}

/// The model and the optimizer as `state`'s `resume.json` saved them (as given, before the
/// first save): the records it names, checked to be of its step and of their saved lengths.
pub(crate) fn restore<B: AutodiffBackend, O: Optimizer<Llama<B>, B>>(
    model: Llama<B>,
    optim: O,
    dir: &Path,
    state: &PretrainState,
    device: &B::Device,
) -> Result<(Llama<B>, O), PretrainError> {
    let checkpoints = dir.join(CHECKPOINT_DIR);
    let Some(records) = &state.records else {
        if state.steps == 0 {
            return Ok((model, optim));
        }
        return Err(ResumeError::Record {
            path: dir.join(RESUME_FILE),
            detail: format!("names no records, at step {}", state.steps),
        }
        .into());
    };
    let model_path = records.model.check(&checkpoints)?;
    let optim_path = records.optim.check(&checkpoints)?;
    if records.step != state.steps || record_paths(&checkpoints, records.step).0 != model_path {
        return Err(ResumeError::Record {
            path: model_path,
            detail: format!("not the record of step {}", state.steps),
        }
        .into());
    }
    let model = model
        .load_file(&model_path, &DurableRecorder, device)
        .map_err(record_error(&model_path))?;
    let record = Recorder::<B>::load(&DurableRecorder, optim_path.clone(), device)
        .map_err(record_error(&optim_path))?;
    Ok((model, optim.load_record(record)))
}

/// Maps Burn's error on the record `path` to [`PretrainError::Record`].
pub(crate) fn record_error(
    path: &Path,
) -> impl FnOnce(burn::record::RecorderError) -> PretrainError + '_ {
    move |e| PretrainError::Record {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_told_from_other_files() {
        for name in [
            "model-3.mpk",
            "optim-12.mpk",
            "model.mpk",
            "optim-partial.mpk",
        ] {
            assert!(is_record_name(name), "{name}");
        }
        for name in [
            "model-3.json",
            "modelx.mpk",
            "keep.mpk",
            ".model-3.mpk.tmp-1-0",
        ] {
            assert!(!is_record_name(name), "{name}");
        }
    }
}
