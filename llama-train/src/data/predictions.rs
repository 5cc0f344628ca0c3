//! Prediction files: one `{prediction} ||| {sentence}` line per example, in input order,
//! no header — what the exercise's `write_predictions_to_file` writes
//! (`f.write(f"{p} ||| {s}\n")`).
//!
//! Note that in the exercise's prompting mode the `sents` it writes are the *prompted*
//! texts (sentence + `" "` + suffix, see [`crate::data::sentences::SentenceItem::text`]); pass those to
//! reproduce its files byte for byte, or the plain sentences for readable output.
//!
//! Files are written atomically ([`llama_model::atomic_file`]): the target is either the
//! complete new file or untouched.

use std::path::{Path, PathBuf};

use llama_model::atomic_file;

use crate::data::sentences::SEPARATOR;

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

/// Writes `bytes` to `path` with the workspace's one atomic writer.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), PredictionsError> {
    if path.file_name().is_none() {
        return Err(PredictionsError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    atomic_file::write_atomic(path, bytes).map_err(|source| PredictionsError::Write {
        path: path.to_path_buf(),
        source,
    })
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
