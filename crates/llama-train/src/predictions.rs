//! Prediction files: one `{prediction} ||| {sentence}` line per example, in input order,
//! no header — what the exercise's `write_predictions_to_file` writes
//! (`f.write(f"{p} ||| {s}\n")`).
//!
//! Note that in the exercise's prompting mode the `sents` it writes are the *prompted*
//! texts (sentence + `" "` + suffix, see [`crate::data::SentenceItem::text`]); pass those to
//! reproduce its files byte for byte, or the plain sentences for readable output.
//!
//! Files are written atomically: the content goes to a temporary file in the target's
//! folder, is flushed to disk, and is then renamed over the target. A failure at any step
//! removes the temporary file, so the target is either the complete new file or untouched.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::data::SEPARATOR;

/// Why a prediction file could not be written or read. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum PredictionsError {
    /// Creating, writing or renaming failed.
    #[error("cannot write predictions to {path}: {source}")]
    Write {
        /// The target file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The target path has no file name (`/`, `..`, empty).
    #[error("cannot write predictions to {path}: not a file path")]
    NotAFile {
        /// The target path.
        path: PathBuf,
    },
    /// Different numbers of predictions and sentences.
    #[error(
        "cannot write predictions to {path}: {predictions} predictions for {sentences} sentences"
    )]
    LengthMismatch {
        /// The target file.
        path: PathBuf,
        /// Number of predictions.
        predictions: usize,
        /// Number of sentences.
        sentences: usize,
    },
    /// A sentence containing a line break would make the file unreadable.
    #[error("cannot write predictions to {path}: sentence {index} contains a line break")]
    LineBreak {
        /// The target file.
        path: PathBuf,
        /// 0-based index of the sentence.
        index: usize,
    },
    /// The file could not be read.
    #[error("cannot read predictions from {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A line that is not `prediction ||| sentence`.
    #[error("{path}:{line}: not a `prediction ||| sentence` line")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
}

/// One line of a prediction file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prediction {
    /// The predicted class id.
    pub label: usize,
    /// The sentence as written.
    pub sentence: String,
}

/// The content of a prediction file: `"{p} ||| {s}\n"` for each pair, in order.
pub fn format_predictions<S: AsRef<str>>(predictions: &[usize], sentences: &[S]) -> String {
    let mut out = String::new();
    for (p, s) in predictions.iter().zip(sentences) {
        out.push_str(&format!("{p}{SEPARATOR}{}\n", s.as_ref()));
    }
    out
}

/// Writes `predictions[i] ||| sentences[i]` lines to `path` atomically (see the
/// [module docs](self)). The folder must exist; an existing file is replaced.
pub fn write_predictions<S: AsRef<str>>(
    path: impl AsRef<Path>,
    predictions: &[usize],
    sentences: &[S],
) -> Result<(), PredictionsError> {
    let path = path.as_ref();
    if predictions.len() != sentences.len() {
        return Err(PredictionsError::LengthMismatch {
            path: path.to_path_buf(),
            predictions: predictions.len(),
            sentences: sentences.len(),
        });
    }
    if let Some(index) = sentences
        .iter()
        .position(|s| s.as_ref().contains(['\n', '\r']))
    {
        return Err(PredictionsError::LineBreak {
            path: path.to_path_buf(),
            index,
        });
    }
    write_atomically(path, format_predictions(predictions, sentences).as_bytes())
}

/// Distinguishes temporary files of concurrent writers in one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to a fresh temporary file beside `path`, syncs it, renames it to `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), PredictionsError> {
    let name = path.file_name().ok_or_else(|| PredictionsError::NotAFile {
        path: path.to_path_buf(),
    })?;
    // The temporary file must be in the same folder: rename is only atomic within one
    // file system.
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let write_error = |source| PredictionsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(
        ".tmp-{}-{}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let temp = dir.join(temp_name);
    // `create_new` never clobbers a file someone else owns; a missing folder fails here,
    // before anything exists.
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp)
        .map_err(write_error)?;
    let result = fill(file, bytes).and_then(|()| std::fs::rename(&temp, path));
    if let Err(source) = result {
        // Best effort: the write already failed, and that is the error to report.
        let _ = std::fs::remove_file(&temp);
        return Err(write_error(source));
    }
    Ok(())
}

/// Writes and syncs, so that the rename never exposes a file whose data is not on disk.
fn fill(mut file: File, bytes: &[u8]) -> std::io::Result<()> {
    file.write_all(bytes)?;
    file.sync_all()
}

/// Reads a prediction file back (for tests and tools).
pub fn read_predictions(path: impl AsRef<Path>) -> Result<Vec<Prediction>, PredictionsError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| PredictionsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    text.lines()
        .enumerate()
        .map(|(index, line)| {
            let malformed = || PredictionsError::Malformed {
                path: path.to_path_buf(),
                line: index + 1,
            };
            let (label, sentence) = line.split_once(SEPARATOR).ok_or_else(malformed)?;
            let label = label.trim().parse().map_err(|_| malformed())?;
            Ok(Prediction {
                label,
                sentence: sentence.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_one_line_per_prediction() {
        assert_eq!(
            format_predictions(&[3, 0], &["A film .", "Bad ."]),
            "3 ||| A film .\n0 ||| Bad .\n"
        );
        let none: [&str; 0] = [];
        assert_eq!(format_predictions(&[], &none), "");
    }

    #[test]
    fn rejects_mismatched_or_multiline_input() {
        let path = Path::new("never-written.txt");
        assert!(matches!(
            write_predictions(path, &[1], &["a", "b"]),
            Err(PredictionsError::LengthMismatch { .. })
        ));
        assert!(matches!(
            write_predictions(path, &[1, 2], &["a", "b\nc"]),
            Err(PredictionsError::LineBreak { index: 1, .. })
        ));
        assert!(!path.exists());
    }
}
