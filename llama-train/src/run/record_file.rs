//! Burn records (a model's weights, an optimizer's state) as files that are whole or absent:
//! [`DurableRecorder`] writes Burn's named MessagePack format (`.mpk`, full precision; what
//! `DefaultRecorder` reads and writes) through [`llama_model::atomic_file`].
//!
//! Burn's own file recorder writes through a `BufWriter` whose last flush error is dropped,
//! and removes the old file before writing the new one: on a full disk it reports success
//! for a truncated file, which then replaces the only good one.

use std::path::{Path, PathBuf};

use burn::record::{
    FileRecorder, FullPrecisionSettings, NamedMpkFileRecorder, Recorder, RecorderError,
};
use burn::tensor::backend::Backend;
use llama_model::atomic_file::write_atomic_with;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The extension of a record file.
pub const RECORD_EXTENSION: &str = "mpk";

/// Burn's named MessagePack recorder (full precision), saving atomically and durably: the
/// file is flushed, `fsync`ed and renamed into place, and any write error is returned.
#[derive(Debug, Default, Clone, Copy)]
pub struct DurableRecorder;

impl DurableRecorder {
    /// The recorder.
    pub fn new() -> Self {
        Self
    }
}

impl<B: Backend> Recorder<B> for DurableRecorder {
    type Settings = FullPrecisionSettings;
    type RecordArgs = PathBuf;
    type RecordOutput = ();
    type LoadArgs = PathBuf;

    fn save_item<I: Serialize>(&self, item: I, mut file: PathBuf) -> Result<(), RecorderError> {
        file.set_extension(RECORD_EXTENSION);
        write_atomic_with(&file, |out| {
            rmp_serde::encode::write_named(out, &item).map_err(std::io::Error::other)
        })
        .map_err(|e| RecorderError::Unknown(format!("cannot write {}: {e}", file.display())))
    }

    fn load_item<I: DeserializeOwned>(&self, file: &mut PathBuf) -> Result<I, RecorderError> {
        Recorder::<B>::load_item(&NamedMpkFileRecorder::<FullPrecisionSettings>::new(), file)
    }
}

impl<B: Backend> FileRecorder<B> for DurableRecorder {
    fn file_extension() -> &'static str {
        RECORD_EXTENSION
    }
}

/// Removes the temporary files that saves of processes now gone left in the run folder
/// `dir` and its `checkpoint/` folder (nowhere else), saying so. The error names the folder.
pub fn remove_orphaned_temps(dir: &Path) -> Result<(), (PathBuf, std::io::Error)> {
    for folder in [dir.to_path_buf(), dir.join("checkpoint")] {
        let removed = llama_model::atomic_file::remove_orphaned_temps(&folder)
            .map_err(|e| (folder.clone(), e))?;
        for path in removed {
            eprintln!(
                "removed {} (left by a save that was cut off)",
                path.display()
            );
        }
    }
    Ok(())
}

/// `path` with the record extension.
pub fn record_path(path: &Path) -> PathBuf {
    path.with_extension(RECORD_EXTENSION)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::module::{Module, Param};
    use burn::tensor::Tensor;

    #[derive(Module, Debug)]
    struct Weights<B: Backend> {
        w: Param<Tensor<B, 1>>,
    }

    #[test]
    fn burns_recorder_reads_back_what_it_writes() {
        type B = NdArray<f32>;
        let device = Default::default();
        let dir = tempfile::tempdir().unwrap();
        let stem = dir.path().join("w");
        let weights = Weights::<B> {
            w: Param::from_tensor(Tensor::from_floats([1.0, 2.0, 3.0], &device)),
        };
        weights.clone().save_file(&stem, &DurableRecorder).unwrap();
        assert!(record_path(&stem).is_file());
        let burn = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
        let back = weights.clone().load_file(&stem, &burn, &device).unwrap();
        assert_eq!(back.w.val().into_data(), weights.w.val().into_data());
    }
}
