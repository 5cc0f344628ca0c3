//! `resume.json`, the resumable state that every kind of run writes in its folder: reading it
//! back with its layout version checked, and why a run cannot be resumed.

use std::path::{Path, PathBuf};

/// File name of the resumable state in an artifact folder.
pub const RESUME_FILE: &str = "resume.json";

/// Why a run cannot be resumed.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    /// No `resume.json` in the folder.
    #[error(
        "nothing to resume in {}: {RESUME_FILE} not found (a run saves it after its first epoch or when stopped); start without --resume",
        .0.display()
    )]
    NotFound(PathBuf),
    /// The file cannot be read or parsed.
    #[error("{}: unreadable resume state: {detail}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// A setting differs from the saved run's.
    #[error(
        "cannot resume the run in {}: its {what} was {saved}, now {now}; resume with the same settings or start a new run",
        dir.display()
    )]
    Mismatch {
        /// The artifact folder.
        dir: PathBuf,
        /// The setting.
        what: &'static str,
        /// The saved run's value.
        saved: String,
        /// This call's value.
        now: String,
    },
    /// A record file `resume.json` names is missing, of another length, or of another step:
    /// the save that wrote it was cut off, or the folder was changed since.
    #[error(
        "{}: {detail}; resume.json names it, so the run cannot resume from this folder (start again without --resume)",
        path.display()
    )]
    Record {
        /// The record file.
        path: PathBuf,
        /// What does not match.
        detail: String,
    },
    /// The folder cannot be written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Reads `dir/resume.json` as a `T` whose layout version (read by `version_of`) must be
/// `version`: the loader of every kind of run's state.
pub fn read_resume_file<T: serde::de::DeserializeOwned>(
    dir: &Path,
    version: u32,
    version_of: impl Fn(&T) -> u32,
) -> Result<T, ResumeError> {
    let path = dir.join(RESUME_FILE);
    let corrupt = |detail: String| ResumeError::Corrupt {
        path: path.clone(),
        detail,
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ResumeError::NotFound(dir.to_path_buf()))
        }
        Err(e) => return Err(corrupt(e.to_string())),
    };
    // Another kind of run's state (fine-tuning against pretraining) fails to parse here.
    let state: T = serde_json::from_str(&text)
        .map_err(|e| corrupt(format!("{e} (is this folder another kind of run's?)")))?;
    let found = version_of(&state);
    if found != version {
        return Err(corrupt(format!(
            "layout version {found} (this build reads {version})"
        )));
    }
    Ok(state)
}

/// The error for the first differing setting `(name, saved, now)`, if any.
pub fn check_settings(
    dir: &Path,
    difference: Option<(&'static str, String, String)>,
) -> Result<(), ResumeError> {
    match difference {
        Some((what, saved, now)) => Err(ResumeError::Mismatch {
            dir: dir.to_path_buf(),
            what,
            saved,
            now,
        }),
        None => Ok(()),
    }
}

/// A record file a run's `resume.json` names, with its length when saved: the file a
/// resumed run loads must be that one, whole.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecordFile {
    /// File name, in the run's `checkpoint/` folder.
    pub name: String,
    /// Its length in bytes.
    pub bytes: u64,
}

impl RecordFile {
    /// The saved file `path` (in the checkpoint folder) as it is now.
    pub fn of(path: &Path) -> Result<Self, ResumeError> {
        let io = |source| ResumeError::Io {
            path: path.to_path_buf(),
            source,
        };
        let bytes = std::fs::metadata(path).map_err(io)?.len();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| io(std::io::Error::other("not a UTF-8 file name")))?;
        Ok(Self {
            name: name.to_string(),
            bytes,
        })
    }

    /// The file's path in `checkpoints`, checked to be there with its saved length.
    pub fn check(&self, checkpoints: &Path) -> Result<PathBuf, ResumeError> {
        let path = checkpoints.join(&self.name);
        let found = match std::fs::metadata(&path) {
            Ok(meta) => meta.len(),
            Err(e) => {
                return Err(ResumeError::Record {
                    path,
                    detail: format!("cannot be read ({e})"),
                })
            }
        };
        if found != self.bytes {
            return Err(ResumeError::Record {
                path,
                detail: format!("{found} bytes, but {} when it was saved", self.bytes),
            });
        }
        Ok(path)
    }
}
