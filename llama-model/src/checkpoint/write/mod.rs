//! Writing a model back out: safetensors (with its `config.json`), a Hugging Face folder,
//! llama.cpp's GGUF and llama2.c's `.bin`.

pub(super) mod gguf;
pub(super) mod hf;
mod hf_config;
pub(super) mod llama2c;
pub(super) mod safetensors;

use std::path::Path;

use crate::atomic_file::{parent_dir, sync_dir, temp_path_for};
use crate::checkpoint::CheckpointError;

/// Write the new folder `out` atomically: `fill` writes its files into a temporary folder
/// beside it (`.NAME.tmp-PID-N`), which is renamed to `out` when `fill` succeeds and
/// removed when it fails. An existing `out` is refused, untouched.
pub fn write_folder<T>(
    out: &Path,
    fill: impl FnOnce(&Path) -> Result<T, CheckpointError>,
) -> Result<T, CheckpointError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CheckpointError::Io { path, source }
    };
    if out.exists() {
        return Err(io(out)(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "the output folder already exists",
        )));
    }
    let temp = temp_path_for(out);
    std::fs::create_dir(&temp).map_err(io(&temp))?;
    let written = fill(&temp).and_then(|value| {
        std::fs::rename(&temp, out).map_err(io(out))?;
        sync_dir(parent_dir(out)).map_err(io(out))?;
        Ok(value)
    });
    if written.is_err() {
        // Best effort: the write already failed, and that is the error to report.
        let _ = std::fs::remove_dir_all(&temp);
    }
    written
}

#[cfg(test)]
mod gguf_tests;
#[cfg(test)]
mod hf_tests;
#[cfg(test)]
mod round_trip;
