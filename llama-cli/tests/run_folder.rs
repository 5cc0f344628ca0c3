//! A run folder's promises outside a cut-off save: a run stopped by `--max-steps` leaves
//! its trained weights as a usable model and says that there is no best model yet; a run
//! refuses an input that is one of its own folder's files, before it deletes anything; the
//! temporary files of saves whose process is gone are removed at the next start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use llama_model::fixtures::fixture;
use safetensors::SafeTensors;

use crate::common::{path, text};
use crate::pretrain::sentences;
use crate::saves::{files, pretrain, run, Fault};

/// The training and validation text of these runs, written in `d`.
fn data(d: &Path) -> (String, String) {
    (
        sentences(d, "sst-train.txt", 40),
        sentences(d, "sst-dev.txt", 4),
    )
}

/// `args` with the preset (`--config`) replaced by `--checkpoint checkpoint`.
fn from_checkpoint(mut args: Vec<String>, checkpoint: &str) -> Vec<String> {
    let at = args.iter().position(|a| a == "--config").unwrap();
    args.splice(
        at..at + 2,
        ["--checkpoint".to_string(), checkpoint.to_string()],
    );
    args
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    files(dir)
        .into_iter()
        .map(|(name, p)| (name, std::fs::read(p).unwrap()))
        .collect()
}

fn record(dir: &Path, name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join(name)).unwrap()).unwrap()
}

#[test]
fn pretrain_max_steps_leaves_the_trained_weights_and_says_there_is_no_best_model() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let start = fixture("models/stories260K/stories260K.safetensors");
    let out_dir = d.join("run");
    let args = from_checkpoint(
        pretrain(&data(d), &out_dir, &["--max-steps", "2"]),
        &path(&start),
    );
    let out = run(&args, Fault::None);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // No evaluation after training began: no best model, and the run says so.
    assert!(stderr.contains("no best model yet"), "{stderr}");
    assert!(
        stderr.contains("the weights of step 2 are model-last.safetensors"),
        "{stderr}"
    );
    assert!(!out_dir.join("model.safetensors").exists());
    let outputs = &record(&out_dir, "pretrain.json")["outputs"];
    assert_eq!(
        outputs["best"]["step"],
        serde_json::Value::Null,
        "{outputs}"
    );
    assert_eq!(outputs["last"]["step"], 2, "{outputs}");
    // The last weights are the trained ones: every tensor of the start, of its shape, and
    // the trained ones changed.
    let (start, last) = (
        std::fs::read(&start).unwrap(),
        std::fs::read(out_dir.join("model-last.safetensors")).unwrap(),
    );
    let (start, last) = (
        SafeTensors::deserialize(&start).unwrap(),
        SafeTensors::deserialize(&last).unwrap(),
    );
    let mut changed = 0;
    for (name, tensor) in last.tensors() {
        let before = start.tensor(&name).unwrap();
        assert_eq!(before.shape(), tensor.shape(), "{name}");
        changed += usize::from(before.data() != tensor.data());
    }
    assert!(
        changed * 2 > last.len(),
        "{changed} of {} changed",
        last.len()
    );
    assert!(out_dir.join("model-last.config.json").is_file());
}

#[test]
fn an_input_in_the_run_folder_is_refused_and_nothing_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = data(d);
    let out_dir = d.join("run");
    let first = pretrain(&data, &out_dir, &["--max-steps", "1", "--eval-every", "1"]);
    let out = run(&first, Fault::None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let model = out_dir.join("model.safetensors");
    assert!(model.is_file());
    let before = snapshot(&out_dir);
    // A fresh run into the same folder, from the folder's own best model: it would clear
    // the folder, its input included.
    let again = from_checkpoint(pretrain(&data, &out_dir, &[]), &path(&model));
    let out = run(&again, Fault::None);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("model.safetensors: this input is a file of the run folder"),
        "{err}"
    );
    assert!(snapshot(&out_dir) == before, "the run folder changed");
}

#[test]
fn temporary_files_of_gone_processes_are_removed_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = data(d);
    let out_dir = d.join("run");
    let out = run(
        &pretrain(&data, &out_dir, &["--max-steps", "1"]),
        Fault::None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let gone = child.id();
    child.wait().unwrap();
    let alive = std::process::id();
    let stale = [
        out_dir.join(format!(".resume.json.tmp-{gone}-3")),
        out_dir.join(format!("checkpoint/.model-2.mpk.tmp-{gone}-0")),
    ];
    let kept = [
        // A live process's save in progress.
        out_dir.join(format!(".pretrain.json.tmp-{alive}-0")),
        // Not the run folder's own.
        out_dir.join(format!("checkpoint/sub/.model-2.mpk.tmp-{gone}-0")),
        d.join(format!(".notes.txt.tmp-{gone}-0")),
    ];
    std::fs::create_dir_all(out_dir.join("checkpoint/sub")).unwrap();
    for file in stale.iter().chain(&kept) {
        std::fs::write(file, b"cut off").unwrap();
    }
    let out = run(
        &pretrain(&data, &out_dir, &["--resume", "--max-steps", "1"]),
        Fault::None,
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for file in &stale {
        assert!(!file.exists(), "{} left: {stderr}", file.display());
        assert!(
            stderr.contains(&format!("removed {}", file.display())),
            "{stderr}"
        );
    }
    for file in &kept {
        assert!(file.exists(), "{} removed", file.display());
    }
}
