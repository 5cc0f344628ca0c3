//! `metrics.csv`: the figures of a training run as a table anyone can open (a spreadsheet,
//! pandas, `llama-cli plot`).
//!
//! One row per logged training step (the means over the steps since the previous row) and
//! one per evaluation, with the columns
//!
//! ```text
//! epoch,step,split,loss,accuracy,macro_f1,lr,perplexity,wall_seconds
//! ```
//!
//! `split` is `train` or `dev`; `accuracy` and `macro_f1` are fractions in `[0, 1]`; `step` is
//! the number of optimizer steps done when the row was logged (a dev row carries the step at
//! which its epoch ended); `wall_seconds` counts training time from the start of the run,
//! across resumptions. A figure that does not apply (perplexity of a classifier) is empty.
//!
//! The file is rewritten whole, atomically, every time the run saves its state. A resumed
//! run reads it back and keeps the rows up to the saved step, so it continues the same file
//! and never repeats a row.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::metrics::Tally;

/// File name of the metrics table in a run folder.
pub const METRICS_FILE: &str = "metrics.csv";

/// Which pass a row describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Training steps.
    Train,
    /// An evaluation on the dev set.
    Dev,
}

/// One row of `metrics.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsRow {
    /// 1-based epoch.
    pub epoch: usize,
    /// Optimizer steps done.
    pub step: usize,
    /// Training or dev.
    pub split: Split,
    /// Mean loss per example (classification) or per token (language modelling).
    pub loss: Option<f64>,
    /// Fraction of correct predictions.
    pub accuracy: Option<f64>,
    /// Macro-averaged F1, a fraction.
    pub macro_f1: Option<f64>,
    /// Learning rate of the last step (training rows).
    pub lr: Option<f64>,
    /// `exp(loss)` of a language model.
    pub perplexity: Option<f64>,
    /// Seconds of training since the run started, across resumptions.
    pub wall_seconds: f64,
}

impl MetricsRow {
    /// A classification row from the predictions and losses of `tally`.
    pub fn from_tally(
        epoch: usize,
        step: usize,
        split: Split,
        tally: &Tally,
        wall_seconds: f64,
    ) -> Self {
        let scores = tally.scores();
        Self {
            epoch,
            step,
            split,
            loss: scores.map(|s| s.loss),
            accuracy: scores.map(|s| s.accuracy),
            macro_f1: scores.map(|s| s.macro_f1),
            lr: None,
            perplexity: None,
            wall_seconds,
        }
    }
}

/// Errors reading or writing `metrics.csv`.
#[derive(Debug, thiserror::Error)]
pub enum MetricsLogError {
    /// The file exists but is not a metrics table of this layout.
    #[error("{}: not a metrics table of this tool: {detail}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong (line and field).
        detail: String,
    },
    /// Reading or writing failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Read the rows of a metrics table.
pub fn read_metrics(path: &Path) -> Result<Vec<MetricsRow>, MetricsLogError> {
    let bytes = std::fs::read(path).map_err(|source| MetricsLogError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    csv::Reader::from_reader(bytes.as_slice())
        .deserialize()
        .collect::<Result<Vec<MetricsRow>, _>>()
        .map_err(|e| MetricsLogError::Malformed {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })
}

/// The table as CSV text (with its header, even when there are no rows).
pub fn metrics_csv(rows: &[MetricsRow]) -> Vec<u8> {
    let mut writer = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(Vec::new());
    let mut out = b"epoch,step,split,loss,accuracy,macro_f1,lr,perplexity,wall_seconds\n".to_vec();
    for row in rows {
        // Serializing plain numbers and a unit enum into memory cannot fail.
        let _ = writer.serialize(row);
    }
    out.extend(writer.into_inner().unwrap_or_default());
    out
}

/// Write the table whole with the workspace's atomic writer.
pub fn write_metrics(path: &Path, rows: &[MetricsRow]) -> Result<(), MetricsLogError> {
    llama_model::atomic_file::write_atomic(path, &metrics_csv(rows)).map_err(|source| {
        MetricsLogError::Io {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// The rows a run resumed after `steps` optimizer steps continues from: those of the saved
/// file up to that step (a missing file is an empty table).
pub fn rows_to_resume(path: &Path, steps: usize) -> Result<Vec<MetricsRow>, MetricsLogError> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let mut rows = read_metrics(path)?;
    rows.retain(|row| row.step <= steps);
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(step: usize, split: Split) -> MetricsRow {
        MetricsRow {
            epoch: 1,
            step,
            split,
            loss: Some(1.25),
            accuracy: Some(0.5),
            macro_f1: None,
            lr: Some(2e-5),
            perplexity: None,
            wall_seconds: 3.5,
        }
    }

    #[test]
    fn rows_round_trip_through_the_file_with_empty_cells_for_missing_figures() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(METRICS_FILE);
        let rows = vec![row(10, Split::Train), row(20, Split::Dev)];
        write_metrics(&path, &rows).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "epoch,step,split,loss,accuracy,macro_f1,lr,perplexity,wall_seconds",
                "1,10,train,1.25,0.5,,0.00002,,3.5",
                "1,20,dev,1.25,0.5,,0.00002,,3.5",
            ]
        );
        assert_eq!(read_metrics(&path).unwrap(), rows);
        assert_eq!(rows_to_resume(&path, 15).unwrap(), rows[..1]);
        assert!(rows_to_resume(&dir.path().join("none.csv"), 9)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn an_empty_table_still_has_its_header_and_a_foreign_file_is_named() {
        assert_eq!(
            String::from_utf8(metrics_csv(&[])).unwrap(),
            "epoch,step,split,loss,accuracy,macro_f1,lr,perplexity,wall_seconds\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(METRICS_FILE);
        std::fs::write(&path, "a,b\n1,2\n").unwrap();
        let err = read_metrics(&path).unwrap_err();
        assert!(matches!(err, MetricsLogError::Malformed { .. }), "{err}");
        assert!(err.to_string().contains("metrics.csv"), "{err}");
    }
}
