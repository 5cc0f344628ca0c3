//! The design's two example commands in a folder laid out like the exercise's (`data/`,
//! `stories42M.pt`, `tokenizer.model`), built from the fixtures in a temporary directory:
//! `llama-cli train` runs the CFIMDB fine-tune and `llama-cli prompt` the prompting run with
//! no flags but `--epochs`, and `llama-cli train --backend tch-cuda` parses as written.
//!
//! stories260K stands in for stories42M (the same `torch.save` container, see the fixtures'
//! README), tok512 for the Llama 2 tokenizer, and the first lines of the CFIMDB files for the
//! whole files, to keep the test short. The backend comes from `LLAMA_BACKEND` (ndarray, the
//! test backend), so the command lines are exactly the exercise's.

use std::path::Path;
use std::process::Output;

use crate::common::text;
use llama_model::fixtures::fixture;

/// `llama-cli ARGS` run in `dir` on ndarray.
fn cli_in(dir: &Path, args: &[&str]) -> Output {
    crate::common::llama_cli()
        .current_dir(dir)
        .env("LLAMA_BACKEND", "ndarray")
        .args(args)
        .output()
        .expect("llama-cli runs")
}

/// A folder laid out like the exercise's, with the `lines` shortest reviews of each CFIMDB
/// file (in file order; the shortest train reviews hold both labels).
fn exercise_folder(lines: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    for split in ["train", "dev", "test"] {
        let name = format!("cfimdb-{split}.txt");
        let all = std::fs::read_to_string(fixture(&format!("data/{name}"))).unwrap();
        let mut by_length: Vec<(usize, usize)> =
            all.lines().enumerate().map(|(i, l)| (l.len(), i)).collect();
        by_length.sort();
        let mut keep: Vec<usize> = by_length.iter().take(lines).map(|&(_, i)| i).collect();
        keep.sort();
        let kept: Vec<&str> = keep.iter().filter_map(|&i| all.lines().nth(i)).collect();
        std::fs::write(data.join(name), kept.join("\n") + "\n").unwrap();
    }
    std::fs::copy(
        fixture("data/cfimdb-label-mapping.json"),
        data.join("cfimdb-label-mapping.json"),
    )
    .unwrap();
    std::fs::copy(
        fixture("models/stories260K/stories260K.pt"),
        dir.path().join("stories42M.pt"),
    )
    .unwrap();
    std::fs::copy(
        fixture("models/stories260K/tok512.model"),
        dir.path().join("tokenizer.model"),
    )
    .unwrap();
    dir
}

fn prediction_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn train_and_prompt_run_the_exercise_with_its_defaults() {
    let dir = exercise_folder(8);
    let d = dir.path();
    let out = cli_in(d, &["train", "--epochs", "1"]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{}{stderr}", text(&out.stdout));
    assert!(
        stderr.contains(
            "data: train data/cfimdb-train.txt, dev data/cfimdb-dev.txt, test \
             data/cfimdb-test.txt, label names data/cfimdb-label-mapping.json"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("stories42M.pt"), "{stderr}");
    assert!(stderr.contains("tokenizer.model"), "{stderr}");
    // The exercise's output names, in the current folder; the run folder after the data.
    for name in [
        "cfimdb-dev-finetuning-output.txt",
        "cfimdb-test-finetuning-output.txt",
    ] {
        let lines = prediction_lines(&d.join(name));
        assert_eq!(lines.len(), 8, "{name}");
        assert!(lines
            .iter()
            .all(|l| l.starts_with("0 ||| ") || l.starts_with("1 ||| ")));
    }
    assert!(d.join("runs/cfimdb-train/classifier.mpk").is_file());

    let out = cli_in(d, &["prompt"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for name in [
        "cfimdb-dev-prompting-output.txt",
        "cfimdb-test-prompting-output.txt",
    ] {
        assert_eq!(prediction_lines(&d.join(name)).len(), 8, "{name}");
    }
}

#[test]
fn the_exercise_flag_spellings_are_accepted() {
    let dir = exercise_folder(8);
    let d = dir.path();
    // run_llama.py's spellings, pasted as they are.
    let out = cli_in(
        d,
        &[
            "prompt",
            "--pretrained_model_path",
            "stories42M.pt",
            "--batch_size",
            "4",
            "--max_sentence_len",
            "32",
            "--label_names",
            "data/cfimdb-label-mapping.json",
            "--train",
            "data/cfimdb-train.txt",
            "--dev",
            "data/cfimdb-dev.txt",
            "--dev_out",
            "dev.txt",
            "--test",
            "data/cfimdb-test.txt",
            "--test_out",
            "test.txt",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(prediction_lines(&d.join("dev.txt")).len(), 8);
    assert_eq!(prediction_lines(&d.join("test.txt")).len(), 8);
    let out = cli_in(
        d,
        &[
            "train",
            "--hidden_dropout_prob",
            "0.5",
            "--batch_size",
            "4",
            "--max-steps",
            "1",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("resume with:"));
}

#[test]
fn the_design_example_train_backend_tch_cuda_parses_as_written() {
    let dir = exercise_folder(8);
    let out = cli_in(dir.path(), &["train", "--backend", "tch-cuda"]);
    let stderr = text(&out.stderr);
    if cfg!(feature = "tch") {
        // Built with libtorch: it runs, or says that libtorch sees no CUDA device.
        assert!(
            out.status.success() || stderr.contains("no CUDA device"),
            "{stderr}"
        );
    } else {
        // Parsed (not a usage error, 2): the backend is just not compiled in.
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("--features tch"), "{stderr}");
    }
}

#[test]
fn a_missing_default_file_is_one_line_naming_it_and_its_flag() {
    let dir = exercise_folder(8);
    let d = dir.path();
    std::fs::remove_file(d.join("data/cfimdb-dev.txt")).unwrap();
    let out = cli_in(d, &["train", "--epochs", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert_eq!(
        stderr.trim_end(),
        "error: data/cfimdb-dev.txt not found: it is the default of --dev (the exercise's \
         layout, or the siblings of the data file given); pass --dev FILE"
    );

    let dir = exercise_folder(8);
    let d = dir.path();
    std::fs::remove_file(d.join("stories42M.pt")).unwrap();
    let out = cli_in(d, &["prompt"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: checkpoint stories42M.pt not found (--checkpoint"),
        "{stderr}"
    );
}

/// With a training file, the label names are counted against its classes, as the exercise
/// does: a dev set that lacks a class (here only label 0) still prompts.
#[test]
fn a_dev_set_lacking_a_class_prompts_when_the_training_file_names_the_classes() {
    let dir = exercise_folder(8);
    let d = dir.path();
    let dev = std::fs::read_to_string(d.join("data/cfimdb-dev.txt")).unwrap();
    let zeros: Vec<&str> = dev.lines().filter(|l| l.starts_with("0 ||| ")).collect();
    assert!(!zeros.is_empty() && zeros.len() < dev.lines().count());
    std::fs::write(d.join("zeros.txt"), zeros.join("\n") + "\n").unwrap();
    let out = cli_in(
        d,
        &[
            "prompt",
            "--train",
            "data/cfimdb-train.txt",
            "--dev",
            "zeros.txt",
            "--label-names",
            "data/cfimdb-label-mapping.json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        prediction_lines(&d.join("zeros-prompting-output.txt")).len(),
        zeros.len()
    );
}
