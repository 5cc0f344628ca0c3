//! The data flags shared by `prompt`, `finetune` and `eval` (sentence classification on
//! SST-5 and CFIMDB, phase 4 of the exercise), named as in its run_llama.py, and the files
//! they default to.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;

use crate::args::data_files::{self, DataFiles, GivenFiles, TrainFile};
use crate::runtime::output::check_writable;

/// `data/sst-dev.txt` + `prompting` -> `sst-dev-prompting-output.txt` (the exercise's names).
pub fn default_output(data: &Path, kind: &str) -> PathBuf {
    let stem = data
        .file_stem()
        .map_or_else(|| "data".into(), |s| s.to_string_lossy().into_owned());
    PathBuf::from(format!("{stem}-{kind}-output.txt"))
}

/// The data files of a classification run and where their predictions go. Left out, they
/// follow the exercise's layout (see [`crate::args::data_files`]).
#[derive(Debug, Args)]
pub struct DataArgs {
    /// Training file (`label ||| sentence` lines) [default: data/cfimdb-train.txt]. For
    /// `prompt` it only gives the number of classes, as in the exercise.
    #[arg(long)]
    pub train: Option<PathBuf>,
    /// Dev file [default: the training file's sibling `<name>-dev.txt`, else
    /// data/cfimdb-dev.txt].
    #[arg(long)]
    pub dev: Option<PathBuf>,
    /// Test file [default: `<name>-test.txt` beside the data, if present]. CFIMDB's test
    /// labels are placeholders.
    #[arg(long)]
    pub test: Option<PathBuf>,
    /// JSON list of label names in class order [default: `<name>-label-mapping.json` beside
    /// the data, if present].
    #[arg(long, alias = "label_names")]
    pub label_names: Option<PathBuf>,
    /// Dev predictions file; default `<dev stem>-<prompting|finetuning>-output.txt`.
    #[arg(long, alias = "dev_out")]
    pub dev_out: Option<PathBuf>,
    /// Test predictions file; default `<test stem>-<prompting|finetuning>-output.txt`.
    #[arg(long, alias = "test_out")]
    pub test_out: Option<PathBuf>,
}

impl DataArgs {
    /// The data files after defaults ([`crate::args::data_files::resolve`]).
    pub fn files(&self, train: TrainFile) -> Result<DataFiles> {
        data_files::resolve(
            GivenFiles {
                train: self.train.as_deref(),
                dev: self.dev.as_deref(),
                test: self.test.as_deref(),
                label_names: self.label_names.as_deref(),
            },
            train,
        )
    }

    /// The dev and test output paths (defaults named after `kind`), checked writable before
    /// any long computation.
    pub fn outputs(&self, files: &DataFiles, kind: &str) -> Result<(PathBuf, Option<PathBuf>)> {
        let dev_out = self
            .dev_out
            .clone()
            .unwrap_or_else(|| default_output(&files.dev, kind));
        let test_out = files.test.as_ref().map(|t| {
            self.test_out
                .clone()
                .unwrap_or_else(|| default_output(t, kind))
        });
        for path in std::iter::once(&dev_out).chain(test_out.as_ref()) {
            check_writable(path)?;
        }
        Ok((dev_out, test_out))
    }
}

/// One line on stderr saying which files a run reads.
pub fn describe_files(files: &DataFiles) -> String {
    let mut parts = vec![];
    if let Some(train) = &files.train {
        parts.push(format!("train {}", train.display()));
    }
    parts.push(format!("dev {}", files.dev.display()));
    if let Some(test) = &files.test {
        parts.push(format!("test {}", test.display()));
    }
    if let Some(names) = &files.label_names {
        parts.push(format!("label names {}", names.display()));
    }
    format!("data: {}", parts.join(", "))
}
