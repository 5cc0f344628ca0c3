//! Which data files a classification command reads when flags are left out: the exercise's
//! layout (`data/cfimdb-train.txt`, `data/cfimdb-dev.txt`, `data/cfimdb-test.txt`,
//! `data/cfimdb-label-mapping.json`), or the siblings of a file that was given.
//!
//! Files of one data set share a prefix: `P-train.txt`, `P-dev.txt`, `P-test.txt` and
//! `P-label-mapping.json`. The prefix comes from `--train` (`data/sst-train.txt` gives
//! `data/sst`), else from `--dev`, else it is the exercise's `data/cfimdb`. So
//! `llama-cli train --train data/sst-train.txt` reads SST's dev and test files too, never
//! CFIMDB's, and a bare `llama-cli train` runs the exercise's CFIMDB fine-tune.
//!
//! `bench` and `check` default to the project's reference data instead ([`fixture_or`]).

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use llama_model::fixtures::{fixtures_from_env, FIXTURES_ENV};

/// The exercise's data set, relative to the current folder.
pub const EXERCISE_PREFIX: &str = "data/cfimdb";

/// `given`, else `relative` in the fixtures folder that `LLAMA_FIXTURES` names: the defaults
/// of `bench` and `check`, whose files are the project's reference data. Without either, one
/// error line naming both the flag and the variable.
pub fn fixture_or(given: &Option<PathBuf>, relative: &str, flag: &str) -> Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path.clone());
    }
    match fixtures_from_env() {
        Some(dir) if dir.join(relative).is_file() => Ok(dir.join(relative)),
        Some(dir) => bail!(
            "{} not found ({FIXTURES_ENV} is {}): pass {flag} FILE",
            dir.join(relative).display(),
            dir.display()
        ),
        None => bail!(
            "no {flag} given and {FIXTURES_ENV} is not set to the reference data folder              (shared/fixtures): pass {flag} FILE, or set {FIXTURES_ENV}"
        ),
    }
}

/// The data set prefix of `path` if its name is `<prefix>-<split>.txt`.
fn prefix_of(path: &Path, split: &str) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(&format!("-{split}.txt"))?;
    (!stem.is_empty()).then(|| path.with_file_name(stem))
}

/// The label-name file beside a data file named `<prefix>-<split>.txt`:
/// `<prefix>-label-mapping.json`, if it exists.
pub fn label_names_beside(data: &Path) -> Option<PathBuf> {
    ["train", "dev", "test"]
        .iter()
        .find_map(|split| prefix_of(data, split))
        .map(|prefix| sibling(&prefix, "-label-mapping.json"))
        .filter(|path| path.is_file())
}

/// `<prefix><suffix>` as a path (`data/sst` + `-dev.txt`).
fn sibling(prefix: &Path, suffix: &str) -> PathBuf {
    let mut name = prefix.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

/// The files of a classification run, after defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFiles {
    /// Training file; `None` for `prompt` when neither given nor present.
    pub train: Option<PathBuf>,
    /// Dev file.
    pub dev: PathBuf,
    /// Test file, if given or present.
    pub test: Option<PathBuf>,
    /// Label names, if given or present beside the data.
    pub label_names: Option<PathBuf>,
}

/// How the training file is treated when `--train` is left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainFile {
    /// `finetune`: the default must exist.
    Required,
    /// `prompt`: used if present (to count the classes, as the exercise does).
    IfPresent,
}

/// The flags as given (`None` = left out).
#[derive(Debug, Clone, Copy)]
pub struct GivenFiles<'a> {
    /// `--train`.
    pub train: Option<&'a Path>,
    /// `--dev`.
    pub dev: Option<&'a Path>,
    /// `--test`.
    pub test: Option<&'a Path>,
    /// `--label-names`.
    pub label_names: Option<&'a Path>,
}

/// A default that is not there: one line naming the file and the flag that overrides it.
fn missing_default(path: &Path, flag: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{} not found: it is the default of {flag} (the exercise's layout, or the siblings of \
         the data file given); pass {flag} FILE",
        path.display()
    )
}

/// Fills in what was left out (see the [module docs](self)). Files given are returned as
/// they are: reading them reports their own errors.
pub fn resolve(given: GivenFiles<'_>, train: TrainFile) -> Result<DataFiles> {
    let prefix = match (given.train, given.dev) {
        (Some(t), _) => {
            prefix_of(t, "train").or_else(|| given.dev.and_then(|d| prefix_of(d, "dev")))
        }
        (None, Some(d)) => prefix_of(d, "dev"),
        (None, None) => Some(PathBuf::from(EXERCISE_PREFIX)),
    };
    let default = |suffix: &str| prefix.as_ref().map(|p| sibling(p, suffix));
    let present = |suffix: &str| default(suffix).filter(|p| p.is_file());

    let train = match (given.train, train) {
        (Some(t), _) => Some(t.to_path_buf()),
        (None, TrainFile::IfPresent) => present("-train.txt"),
        (None, TrainFile::Required) => match default("-train.txt") {
            Some(p) if p.is_file() => Some(p),
            Some(p) => return Err(missing_default(&p, "--train")),
            None => bail!("no training file: pass --train FILE"),
        },
    };
    let dev = match given.dev {
        Some(d) => d.to_path_buf(),
        None => match default("-dev.txt") {
            Some(p) if p.is_file() => p,
            Some(p) => return Err(missing_default(&p, "--dev")),
            None => bail!(
                "no dev file: pass --dev FILE (it defaults to the sibling of a --train file \
                 named <name>-train.txt)"
            ),
        },
    };
    let test = given
        .test
        .map(Path::to_path_buf)
        .or_else(|| present("-test.txt"));
    let label_names = given
        .label_names
        .map(Path::to_path_buf)
        .or_else(|| present("-label-mapping.json"));
    Ok(DataFiles {
        train,
        dev,
        test,
        label_names,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temporary folder holding the given (empty) files.
    fn folder(files: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for f in files {
            let p = dir.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "").unwrap();
        }
        dir
    }

    fn given<'a>(train: Option<&'a Path>, dev: Option<&'a Path>) -> GivenFiles<'a> {
        GivenFiles {
            train,
            dev,
            test: None,
            label_names: None,
        }
    }

    #[test]
    fn siblings_of_a_given_train_file_fill_the_rest() {
        let dir = folder(&[
            "d/sst-train.txt",
            "d/sst-dev.txt",
            "d/sst-test.txt",
            "d/sst-label-mapping.json",
        ]);
        let train = dir.path().join("d/sst-train.txt");
        let files = resolve(given(Some(&train), None), TrainFile::Required).unwrap();
        assert_eq!(files.dev, dir.path().join("d/sst-dev.txt"));
        assert_eq!(files.test, Some(dir.path().join("d/sst-test.txt")));
        assert_eq!(
            files.label_names,
            Some(dir.path().join("d/sst-label-mapping.json"))
        );
    }

    #[test]
    fn optional_files_are_used_only_when_present() {
        let dir = folder(&["x-dev.txt"]);
        let dev = dir.path().join("x-dev.txt");
        let files = resolve(given(None, Some(&dev)), TrainFile::IfPresent).unwrap();
        assert_eq!(files.train, None);
        assert_eq!(files.test, None);
        assert_eq!(files.label_names, None);
        // A name without the pattern has no siblings.
        let other = dir.path().join("mydev.txt");
        let files = resolve(given(None, Some(&other)), TrainFile::IfPresent).unwrap();
        assert_eq!(files.dev, other);
        assert_eq!(files.test, None);
    }

    #[test]
    fn a_missing_default_names_the_file_and_the_flag() {
        let dir = folder(&["a-train.txt"]);
        let train = dir.path().join("a-train.txt");
        let err = resolve(given(Some(&train), None), TrainFile::Required).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("a-dev.txt not found"), "{message}");
        assert!(message.contains("--dev"), "{message}");
        // Without the pattern there is no default dev file at all.
        let plain = dir.path().join("training.txt");
        let err = resolve(given(Some(&plain), None), TrainFile::Required).unwrap_err();
        assert!(err.to_string().contains("--dev FILE"), "{err}");
    }

    #[test]
    fn nothing_given_means_the_exercise_layout() {
        // Relative to the current folder, which holds no data/ in a test run.
        let err = resolve(given(None, None), TrainFile::Required).unwrap_err();
        assert_eq!(
            err.to_string().split(':').next(),
            Some("data/cfimdb-train.txt not found")
        );
        let err = resolve(given(None, None), TrainFile::IfPresent).unwrap_err();
        assert!(
            err.to_string().starts_with("data/cfimdb-dev.txt not found"),
            "{err}"
        );
    }
}
