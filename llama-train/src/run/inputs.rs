//! A run's inputs must not be files of its own run folder: a fresh run clears the folder,
//! and every run replaces its outputs there, so `--checkpoint runs/x/model.safetensors
//! --out-dir runs/x` would destroy the model it trains.

use std::path::{Path, PathBuf};

/// An input is a file the run would overwrite or remove.
#[derive(Debug, thiserror::Error)]
#[error(
    "{}: this input is a file of the run folder {}, which the run overwrites or removes; copy it out of the folder or choose another --out-dir",
    input.display(),
    dir.display()
)]
pub struct InputInRunFolder {
    /// The input, as given.
    pub input: PathBuf,
    /// The run folder.
    pub dir: PathBuf,
}

/// Refuses the first of `inputs` that is one of `run_files` (the files of the run folder
/// `dir` a run writes or removes), compared as canonical paths (links and `..` resolved).
pub fn check_inputs_outside_run(
    dir: &Path,
    run_files: &[PathBuf],
    inputs: &[&Path],
) -> Result<(), InputInRunFolder> {
    let canonical: Vec<PathBuf> = run_files
        .iter()
        .filter_map(|p| p.canonicalize().ok())
        .collect();
    for input in inputs {
        if input
            .canonicalize()
            .is_ok_and(|path| canonical.contains(&path))
        {
            return Err(InputInRunFolder {
                input: input.to_path_buf(),
                dir: dir.to_path_buf(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_input_among_the_run_files_is_refused_however_it_is_spelled() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        std::fs::create_dir_all(run.join("sub")).unwrap();
        let model = run.join("model.safetensors");
        let other = dir.path().join("text.txt");
        std::fs::write(&model, b"x").unwrap();
        std::fs::write(&other, b"x").unwrap();
        let files = [model.clone()];
        let spelled = run.join("sub/../model.safetensors");
        let err = check_inputs_outside_run(&run, &files, &[&other, &spelled]).unwrap_err();
        assert_eq!(err.input, spelled);
        assert!(err.to_string().contains("--out-dir"), "{err}");
        assert!(check_inputs_outside_run(&run, &files, &[&other]).is_ok());
    }
}
