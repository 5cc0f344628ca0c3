//! `pretrain`/`finetune --lora-init ADAPTER`: training starts from a saved adapter (a PEFT
//! folder) instead of fresh LoRA factors, with the adapter's own settings.

use std::path::Path;
use std::process::Output;

use llama_model::checkpoint::read_tensors;
use llama_model::fixtures::fixture;

use crate::common::{cli, head, path, text};
use crate::export::merge_lora;
use crate::pretrain::sentences;

/// `pretrain` of `checkpoint` on `train` for one step at learning rate 1e-30 (the scheduler
/// wants it positive; AdamW's update is then far below one ulp of every weight), into `run`.
fn pretrain_one_step(checkpoint: &Path, train: &str, run: &Path, extra: &[&str]) -> Output {
    let checkpoint = path(checkpoint);
    let run = path(run);
    let args = [
        "pretrain",
        "--checkpoint",
        &checkpoint,
        "--text",
        train,
        "--seq-len",
        "32",
        "--batch-size",
        "4",
        "--lr",
        "1e-30",
        "--warmup-steps",
        "1",
        "--max-steps",
        "1",
        "--out-dir",
        &run,
    ];
    cli(&[&args[..], extra].concat())
}

#[test]
fn pretrain_from_a_peft_adapter_at_lr_1e_30_keeps_it_and_starts_from_its_model() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = fixture("real-models/hf/stories260K");
    let adapter = fixture("real-models/peft/stories260K-lora");
    let train = sentences(d, "sst-train.txt", 60);
    let run = d.join("run");
    let out = pretrain_one_step(&base, &train, &run, &["--lora-init", &path(&adapter)]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // The adapter's settings: r 4, alpha 8, q, v and down.
    assert!(stderr.contains("LoRA rank 4, alpha 8"), "{stderr}");

    // One step at lr 1e-30: the saved adapter is the input.
    assert_is_the_fixture_adapter(&run.join("adapter-last.safetensors"), d);

    // Step 0 is the adapted model: its validation loss is that of the merged model (the
    // model `generate --adapter` and `merge-lora` run), within float rounding.
    let merged = d.join("merged.safetensors");
    let out = merge_lora(&base, &adapter, "--out", &merged);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let plain = pretrain_one_step(
        &merged,
        &train,
        &d.join("plain"),
        &["--tokenizer", &path(&base.join("tokenizer.json"))],
    );
    assert!(plain.status.success(), "{}", text(&plain.stderr));
    let (ours, theirs) = (start_loss(&run), start_loss(&d.join("plain")));
    assert!((ours - theirs).abs() <= 1e-5 * theirs, "{ours} vs {theirs}");
    // ... and not the base model's.
    let bare = pretrain_one_step(&base, &train, &d.join("bare"), &[]);
    assert!(bare.status.success(), "{}", text(&bare.stderr));
    let base_loss = start_loss(&d.join("bare"));
    assert!((base_loss - theirs).abs() > 1e-4 * theirs, "{base_loss}");
}

/// The adapter `saved` (a run's), written back as PEFT for `hf/stories260K`, has the very
/// tensors of the fixture PEFT adapter.
fn assert_is_the_fixture_adapter(saved: &Path, d: &Path) {
    let peft = d.join("peft");
    let written = cli(&[
        "export",
        "--checkpoint",
        &path(&fixture("real-models/hf/stories260K")),
        "--format",
        "peft",
        "--adapter",
        &path(saved),
        "--out",
        &path(&peft),
    ]);
    assert!(written.status.success(), "{}", text(&written.stderr));
    let tensors = |p: &Path| read_tensors(p).unwrap().1;
    let fixture_adapter = fixture("real-models/peft/stories260K-lora");
    assert_eq!(
        tensors(&peft.join("adapter_model.safetensors")),
        tensors(&fixture_adapter.join("adapter_model.safetensors"))
    );
}

#[test]
fn finetune_from_a_peft_adapter_trains_it_with_a_fresh_head() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = d.join("run");
    let out = cli(&[
        "finetune",
        "--checkpoint",
        &path(&fixture("real-models/hf/stories260K")),
        "--lora-init",
        &path(&fixture("real-models/peft/stories260K-lora")),
        "--train",
        &head(d, "cfimdb-train.txt", 16),
        "--dev",
        &head(d, "cfimdb-dev.txt", 8),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--lr",
        "1e-30",
        "--max-sentence-len",
        "16",
        "--out-dir",
        &path(&run),
        "--dev-out",
        &path(&d.join("dev-out.txt")),
    ]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("LoRA rank 4, alpha 8"), "{stderr}");
    // At lr 1e-30 the adapters saved beside the head are the ones it started from.
    assert_is_the_fixture_adapter(&run.join("adapter.safetensors"), d);
}

/// The validation loss of step 0 that the run in `run` recorded (`pretrain.json`).
fn start_loss(run: &Path) -> f64 {
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("pretrain.json")).unwrap()).unwrap();
    record["evaluations"][0]["val_loss"].as_f64().unwrap()
}

#[test]
fn lora_init_with_lora_settings_is_one_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let train = sentences(d, "sst-train.txt", 8);
    let adapter = path(&fixture("real-models/peft/stories260K-lora"));
    let run = d.join("run");
    for flags in [
        &["--lora-rank", "8"][..],
        &["--lora-targets", "q,k"][..],
        &["--lora-alpha", "2"][..],
    ] {
        let out = pretrain_one_step(
            &fixture("real-models/hf/stories260K"),
            &train,
            &run,
            &[&["--lora-init", &adapter][..], flags].concat(),
        );
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
        assert_eq!(errors.len(), 1, "{stderr}");
        assert!(errors[0].contains("--lora-init"), "{stderr}");
        assert!(!run.exists());
    }
}
