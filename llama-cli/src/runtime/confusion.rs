//! The confusion matrix after a classification: a table on standard output with the label
//! names, and its picture beside the predictions or in the run folder.

use std::path::{Path, PathBuf};

use anyhow::Result;
use llama_model::atomic_file;
use llama_train::report::confusion::ConfusionReport;

/// `confusion-<data stem>.png` in the folder of `predictions` (`prompt` and `eval`:
/// `sst-dev-prompting-output.txt` from `data/sst-dev.txt` gives `confusion-sst-dev.png`);
/// in the current folder when the predictions go to a device (`--out /dev/null`), never
/// into `/dev`.
pub fn picture_beside(predictions: &Path, data: &Path) -> PathBuf {
    let stem = data
        .file_stem()
        .map_or_else(|| "data".into(), |s| s.to_string_lossy().into_owned());
    let dir = if atomic_file::is_special(predictions) {
        Path::new(".")
    } else {
        atomic_file::parent_dir(predictions)
    };
    dir.join(format!("confusion-{stem}.png"))
}

/// Print the matrix of `predictions` against `labels` (class `c` named `names[c]`) under
/// the heading `what`, and draw it to `picture`.
pub fn report<S: AsRef<str>>(
    what: &str,
    labels: &[usize],
    predictions: &[usize],
    names: &[S],
    picture: &Path,
) -> Result<()> {
    let report = ConfusionReport::new(labels, predictions, names)?;
    println!("{what} confusion matrix (rows: true label, columns: predicted label):");
    print!("{}", report.table());
    report.save_picture(&format!("Confusion matrix: {what}"), picture)?;
    println!("wrote {}", picture.display());
    Ok(())
}
