//! `llama-cli pretrain` from the command line: a preset trained from scratch writes a model
//! that `perplexity` reads back (safetensors and llama2.c `.bin`) to the recorded figure, and
//! each bad input gets one clear error with nothing left behind.

use std::path::Path;

use crate::common;
use common::{cli, path, text};

use llama_model::fixtures::fixture;

/// The sentences of the first `n` lines of a fixture data file, one per line, in `dir`.
pub(crate) fn sentences(dir: &Path, name: &str, n: usize) -> String {
    let all = std::fs::read_to_string(fixture(&format!("data/{name}"))).unwrap();
    let lines: Vec<&str> = all
        .lines()
        .take(n)
        .map(|l| l.split_once("|||").map_or(l, |(_, s)| s).trim())
        .collect();
    let p = dir.join(format!("{name}.sentences"));
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    path(&p)
}

pub(crate) fn tok512() -> String {
    path(&fixture("models/stories260K/tok512.bin"))
}

pub(crate) fn preset() -> String {
    path(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/stories260K.json"))
}

/// The number after `key` in `line`.
fn figure_after(output: &str, key: &str) -> f64 {
    let at = output
        .rfind(key)
        .unwrap_or_else(|| panic!("no `{key}` in {output}"));
    output[at + key.len()..]
        .split(|c: char| c == ',' || c.is_whitespace())
        .find(|s| !s.is_empty())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no number after `{key}` in {output}"))
}

#[test]
fn a_preset_trained_from_scratch_is_read_back_by_perplexity() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let train = sentences(d, "sst-train.txt", 160);
    let val = sentences(d, "sst-dev.txt", 24);
    let run = d.join("run");
    let out = cli(&[
        "pretrain",
        "--config",
        &preset(),
        "--tokenizer",
        &tok512(),
        "--text",
        &train,
        "--val-text",
        &val,
        "--seq-len",
        "64",
        "--batch-size",
        "8",
        "--warmup-steps",
        "2",
        "--lr",
        "5e-3",
        "--out-dir",
        &path(&run),
        "--export-bin",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}{stdout}", text(&out.stderr));
    let start = figure_after(&stdout, "start: validation loss ");
    let best = figure_after(&stdout, "best: step ");
    let best_loss = figure_after(&stdout, "validation loss ");
    println!("{stdout}");
    assert!(best > 0.0 && best_loss < start - 0.5, "{stdout}");
    for file in [
        "model.safetensors",
        "model.config.json",
        "model.bin",
        "pretrain.json",
        "metrics.csv",
        "curves.png",
        "resume.json",
    ] {
        assert!(run.join(file).is_file(), "{file} missing");
    }
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("pretrain.json")).unwrap()).unwrap();
    let recorded = record["best"]["val_perplexity"].as_f64().unwrap();
    assert_eq!(record["settings"]["seq_len"], 64);

    // `perplexity` on the saved model, both forms: the figure training recorded (another
    // batch size, so within float rounding).
    for model in ["model.safetensors", "model.bin"] {
        let out = cli(&[
            "perplexity",
            "--checkpoint",
            &path(&run.join(model)),
            "--tokenizer",
            &tok512(),
            "--text",
            &val,
        ]);
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{model}: {}", text(&out.stderr));
        let ppl = figure_after(&stdout, "perplexity ");
        assert!(
            (ppl - recorded).abs() <= 1e-4 * recorded,
            "{model}: {ppl} vs {recorded}"
        );
    }
}

#[test]
fn bad_text_gets_one_clear_error_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = d.join("run");
    let empty = d.join("empty.txt");
    std::fs::write(&empty, "\n  \n").unwrap();
    let binary = d.join("binary.txt");
    std::fs::write(&binary, b"fine\n\xff\xfe\n").unwrap();
    let jsonl = d.join("bad.jsonl");
    std::fs::write(&jsonl, "{\"text\": \"ok\"}\n{\"body\": 1}\n").unwrap();
    let missing = d.join("missing.txt");
    let short = d.join("short.txt");
    std::fs::write(&short, "one tiny line\n").unwrap();
    let checkpoint = path(&fixture("models/stories260K/stories260K.bin"));
    let good = sentences(d, "sst-train.txt", 40);
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec!["--text".into(), path(&missing)],
            format!("cannot read {}", path(&missing)),
        ),
        (
            vec!["--text".into(), path(&empty)],
            format!("{} holds no text", path(&empty)),
        ),
        (
            vec!["--text".into(), path(&binary)],
            format!("{}:2: not UTF-8 text", path(&binary)),
        ),
        (
            vec![
                "--text".into(),
                path(&jsonl),
                "--text-format".into(),
                "jsonl".into(),
            ],
            format!(
                "{}:2: expected an object with a string \"text\" field",
                path(&jsonl)
            ),
        ),
        (
            vec![
                "--text".into(),
                path(&short),
                "--val-text".into(),
                good.clone(),
            ],
            "fewer than one window".into(),
        ),
        (
            vec![
                "--text".into(),
                good.clone(),
                "--lora-rank".into(),
                "999".into(),
            ],
            "rank".into(),
        ),
        (
            vec![
                "--text".into(),
                good.clone(),
                "--seq-len".into(),
                "4096".into(),
            ],
            "exceeds the model's context of 512".into(),
        ),
        (
            vec!["--text".into(), good.clone(), "--resume".into()],
            "nothing to resume".into(),
        ),
    ];
    for (extra, expected) in cases {
        let mut args = vec![
            "pretrain".to_string(),
            "--checkpoint".into(),
            checkpoint.clone(),
        ];
        args.extend(extra);
        args.extend(["--out-dir".into(), path(&run)]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = cli(&refs);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
        assert_eq!(errors.len(), 1, "{args:?}: {stderr}");
        assert!(errors[0].contains(&expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        // Nothing written: no run folder (the resume case finds an empty one).
        let left: Vec<_> = std::fs::read_dir(&run)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_file())
                    .collect()
            })
            .unwrap_or_default();
        assert!(left.is_empty(), "{args:?} left {left:?}");
    }
}

#[test]
fn pretrain_hf_out_writes_the_best_model_as_a_hugging_face_folder() {
    use burn::backend::NdArray;
    use burn::tensor::{Int, Tensor, TensorData};
    use llama_model::{load_checkpoint, LoadOptions};

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let train = sentences(d, "sst-train.txt", 24);
    let (run, hf) = (d.join("run"), d.join("hf"));
    let bin = fixture("models/stories260K/stories260K.bin");
    let args = [
        "pretrain",
        "--checkpoint",
        &path(&bin),
        "--text",
        &train,
        "--seq-len",
        "32",
        "--batch-size",
        "8",
        "--lr",
        "1e-3",
        "--warmup-steps",
        "1",
        "--out-dir",
        &path(&run),
        "--hf-out",
        &path(&hf),
    ];
    let out = cli(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The sentencepiece model beside the .bin is the folder's tokenizer.
    assert!(hf.join("tokenizer.model").is_file());
    let logits = |p: &Path| {
        let loaded = load_checkpoint::<NdArray>(p, &LoadOptions::default(), &Default::default());
        let ids = TensorData::new((1..25i64).collect::<Vec<_>>(), [1, 24]);
        let tokens = Tensor::<NdArray, 2, Int>::from_data(ids, &Default::default());
        loaded.unwrap().model.forward(tokens).logits.into_data()
    };
    assert_eq!(logits(&hf), logits(&run.join("model.safetensors")));
    // An existing folder is refused before training.
    let again = cli(&args);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("already exists"),
        "{}",
        text(&again.stderr)
    );
}
