//! Writing result files so that a failure never leaves a partial file behind.

use std::path::Path;

use anyhow::{Context, Result};
use llama_model::atomic_file::{self, parent_dir};

/// Write `contents` to `path` with the workspace's one atomic writer
/// ([`llama_model::atomic_file`]): complete, flushed, with the usual file mode, or not at all.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    atomic_file::write_atomic(path, contents)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Fail early, before any long computation, when `path` cannot be written.
pub fn check_writable(path: &Path) -> Result<()> {
    if atomic_file::is_special(path) {
        // A device or FIFO is written in place (see `atomic_file::write_atomic`), and
        // opening it now could block (a FIFO without a reader) or end a reader's input.
        return Ok(());
    }
    let dir = parent_dir(path);
    tempfile::NamedTempFile::new_in(dir)
        .map(drop)
        .with_context(|| {
            format!(
                "cannot write {}: the folder {} is not writable or does not exist",
                path.display(),
                dir.display()
            )
        })
}
