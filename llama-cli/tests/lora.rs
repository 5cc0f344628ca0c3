//! `finetune --lora-rank` and `merge-lora` from the command line: the adapter file, the merged
//! model that other commands load, and one clear error for each bad LoRA input.

use std::path::Path;
use std::process::Output;

use burn::backend::NdArray;
use llama_train::classify::finetune::load_classifier;

use crate::common;
use common::{cli, head, path, text};

use llama_model::checkpoint::{read_tensors, save_model};
use llama_model::fixtures::fixture;
use llama_model::LlamaConfig;

fn stories260k() -> String {
    path(&fixture("models/stories260K/stories260K.pt"))
}

/// `finetune` of stories260K on a CFIMDB slice with `extra` flags, the run in `run`.
fn finetune(d: &Path, run: &Path, extra: &[&str]) -> Output {
    let train = head(d, "cfimdb-train.txt", 16);
    let dev = head(d, "cfimdb-dev.txt", 8);
    let mut args = vec![
        "finetune".to_string(),
        "--checkpoint".into(),
        stories260k(),
        "--train".into(),
        train,
        "--dev".into(),
        dev,
        "--epochs".into(),
        "1".into(),
        "--batch-size".into(),
        "8".into(),
        "--lr".into(),
        "1e-2".into(),
        "--max-sentence-len".into(),
        "16".into(),
        "--dev-out".into(),
        path(&d.join("dev-out.txt")),
        "--out-dir".into(),
        path(run),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    cli(&args)
}

/// One line on stderr, `error: …`, holding `needle`.
fn one_error_line(out: &Output, code: i32, needle: &str) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains(needle), "{needle:?} not in {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A run stopped after one step and resumed saves the same adapter as the whole run
/// (`adapter`), bit for bit: its tensors and settings (the metadata's order in the header is
/// a hash map's).
fn resumed_runs_save_the_same_adapter(d: &Path, adapter: &Path) {
    let split = d.join("split");
    let lora = ["--lora-rank", "4", "--lora-targets", "q,v,w2"];
    let out = finetune(d, &split, &[&lora[..], &["--max-steps", "1"]].concat());
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // No epoch finished: no best model, but the last weights as a usable classifier and
    // adapter, and the run says which step they hold.
    assert!(!split.join("adapter.safetensors").exists());
    assert!(!split.join("classifier.mpk").exists());
    assert!(
        stderr.contains("the weights of step 1 are classifier-last.mpk"),
        "{stderr}"
    );
    assert!(stderr.contains("no best model yet"), "{stderr}");
    let (_, last_adapter) = read_tensors(&split.join("adapter-last.safetensors")).unwrap();
    assert!(last_adapter.contains_key("classifier_head.weight"));
    let last = split.join("last");
    std::fs::create_dir(&last).unwrap();
    std::fs::copy(
        split.join("classifier-last.mpk"),
        last.join("classifier.mpk"),
    )
    .unwrap();
    std::fs::copy(split.join("classifier.json"), last.join("classifier.json")).unwrap();
    load_classifier::<NdArray<f32>>(&last, &Default::default()).unwrap();
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(split.join("finetune.json")).unwrap())
            .unwrap();
    assert_eq!(record["outputs"]["last"]["step"], 1, "{record}");
    assert_eq!(record["outputs"]["best"]["step"], serde_json::Value::Null);
    let out = finetune(d, &split, &[&lora[..], &["--resume"]].concat());
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Trained on: the last weights of the stop are gone with it.
    assert!(!split.join("classifier-last.mpk").exists());
    assert!(!split.join("adapter-last.safetensors").exists());
    let (resumed, whole) = (
        read_tensors(&split.join("adapter.safetensors")).unwrap(),
        read_tensors(adapter).unwrap(),
    );
    assert_eq!(resumed.0, whole.0);
    assert!(resumed.1 == whole.1, "the resumed run's adapter differs");
}

#[test]
fn a_lora_finetune_saves_a_small_adapter_that_merges_into_a_loadable_model() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = d.join("run");
    let out = finetune(d, &run, &["--lora-rank", "4", "--lora-targets", "q,v,w2"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("LoRA rank 4, alpha 4, on q,v,w2"));
    let adapter = run.join("adapter.safetensors");
    assert!(stdout.contains("saved LoRA adapter and head"), "{stdout}");
    // The adapter and head against the whole model's record: 9,200 + 325 numbers against
    // 260,032 + 325.
    let adapter_bytes = std::fs::metadata(&adapter).unwrap().len();
    let record_bytes = std::fs::metadata(run.join("classifier.mpk")).unwrap().len();
    assert!(
        adapter_bytes * 10 < record_bytes,
        "{adapter_bytes} vs {record_bytes}"
    );

    // `eval` rebuilds the adapted classifier from the run folder: the run's predictions.
    let eval_out = d.join("eval.txt");
    let out = cli(&[
        "eval",
        "--model-dir",
        &path(&run),
        "--data",
        &path(&d.join("cfimdb-dev.txt")),
        "--tokenizer",
        &path(&fixture("models/stories260K/tok512.bin")),
        "--out",
        &path(&eval_out),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(&eval_out).unwrap(),
        std::fs::read_to_string(d.join("dev-out.txt")).unwrap()
    );

    resumed_runs_save_the_same_adapter(d, &adapter);

    let merged = d.join("merged.safetensors");
    let out = cli(&[
        "merge-lora",
        "--checkpoint",
        &stories260k(),
        "--adapter",
        &path(&adapter),
        "--out",
        &path(&merged),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(d.join("merged.config.json").is_file());

    // The merged model loads like any checkpoint, and it is not the base model.
    let text_file = d.join("text.txt");
    std::fs::write(&text_file, "Once upon a time there was a little dog.\n").unwrap();
    let tokenizer = path(&fixture("models/stories260K/tok512.bin"));
    let score = |checkpoint: &str| {
        let out = cli(&[
            "perplexity",
            "--checkpoint",
            checkpoint,
            "--tokenizer",
            &tokenizer,
            "--text",
            &path(&text_file),
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    assert_ne!(score(&path(&merged)), score(&stories260k()));

    // An adapter for a model of another shape, and a file that is no adapter.
    let other = d.join("other.safetensors");
    let config = LlamaConfig::new(32, 2, 4, 512)
        .with_n_kv_heads(Some(2))
        .with_max_seq_len(64);
    save_model(
        &config.init::<NdArray>(&Default::default()),
        &config,
        &other,
    )
    .unwrap();
    let refused = d.join("refused.safetensors");
    let merge = |checkpoint: &Path, adapter: &Path| {
        cli(&[
            "merge-lora",
            "--checkpoint",
            &path(checkpoint),
            "--adapter",
            &path(adapter),
            "--out",
            &path(&refused),
        ])
    };
    one_error_line(&merge(&other, &adapter), 1, "for another model");
    one_error_line(&merge(&other, &other), 1, "not a LoRA adapter");
    one_error_line(
        &merge(&other, &d.join("none.safetensors")),
        1,
        "no such adapter file",
    );
    assert!(!refused.exists() && !d.join("refused.config.json").exists());
}

#[test]
fn bad_lora_flags_are_one_error_line_and_leave_no_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = d.join("run");
    one_error_line(&finetune(d, &run, &["--lora-rank", "0"]), 2, "--lora-rank");
    one_error_line(
        &finetune(d, &run, &["--lora-rank", "4", "--lora-targets", "q,wq"]),
        2,
        "unknown LoRA target `wq`",
    );
    one_error_line(&finetune(d, &run, &["--lora-alpha", "8"]), 2, "required");
    // stories260K's k and v project 64 -> 32.
    one_error_line(
        &finetune(d, &run, &["--lora-rank", "33"]),
        1,
        "LoRA rank 33 is out of range: it must be from 1 to 32",
    );
    one_error_line(
        &finetune(d, &run, &["--lora-rank", "4", "--option", "pretrain"]),
        1,
        "LoRA",
    );
    assert!(!run.exists());
}
