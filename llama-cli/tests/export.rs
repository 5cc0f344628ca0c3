//! `llama-cli export`: models written as Hugging Face folders and llama2.c `.bin` files,
//! read back by our own loaders; what a format cannot express is refused.

use llama_model::fixtures::fixture;

use std::path::Path;
use std::process::Output;

use llama_model::Tokenizer;

use crate::common::{
    cli, greedy_generation, greedy_generation_with, json_ids, path, real_models_reference, text,
};

/// The greedy continuation `generate` writes for `checkpoint`.
fn greedy(checkpoint: &str) -> String {
    greedy_generation(checkpoint, "Once upon a time", 20).1
}

/// `export --checkpoint CHECKPOINT --format FORMAT --out OUT` (the default dtype, f32).
fn export(checkpoint: &Path, format: &str, out: &Path) -> Output {
    export_as(checkpoint, format, "f32", out)
}

/// `export --checkpoint CHECKPOINT --format FORMAT --dtype DTYPE --out OUT`.
fn export_as(checkpoint: &Path, format: &str, dtype: &str, out: &Path) -> Output {
    cli(&[
        "export",
        "--checkpoint",
        &path(checkpoint),
        "--format",
        format,
        "--dtype",
        dtype,
        "--out",
        &path(out),
    ])
}

#[test]
fn a_bin_exported_as_a_hugging_face_folder_generates_the_same_text() {
    let bin = fixture("models/stories260K/stories260K.bin");
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("hf");
    let out = export(&bin, "hf", &folder);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The sentencepiece model beside the .bin is the folder's tokenizer.
    assert!(folder.join("tokenizer.model").is_file());
    assert_eq!(greedy(&path(&folder)), greedy(&path(&bin)));
    // A second export onto it is refused, the folder untouched.
    let again = export(&bin, "hf", &folder);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("already exists"),
        "{}",
        text(&again.stderr)
    );
}

#[test]
fn a_hugging_face_folder_exported_as_llama2c_has_the_bins_weights() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("m.bin");
    let out = export(&fixture("real-models/hf/stories260K"), "llama2c", &bin);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ours = std::fs::read(&bin).unwrap();
    let theirs = std::fs::read(fixture("models/stories260K/stories260K.bin")).unwrap();
    assert_eq!(ours.len(), theirs.len());
    // Header and weights byte for byte (the RoPE tables after them are checked to one ulp
    // by the writer's own test).
    let tables = 2 * 512 * 4 * 4;
    assert_eq!(ours[..ours.len() - tables], theirs[..theirs.len() - tables]);
}

#[test]
fn what_llama2c_cannot_express_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    for (folder, field) in [
        ("tiny-llama3", "rope_theta"),
        ("tiny-llama2-f16", "rms_norm_eps"),
    ] {
        let bin = dir.path().join(format!("{folder}.bin"));
        let source = fixture(&format!("real-models/hf/{folder}"));
        let out = export(&source, "llama2c", &bin);
        assert!(!out.status.success(), "{folder}");
        let err = text(&out.stderr);
        let error_lines: Vec<_> = err.lines().filter(|l| l.starts_with("error")).collect();
        assert_eq!(error_lines.len(), 1, "{err}");
        assert!(error_lines[0].contains(field), "{err}");
        assert!(!bin.exists(), "{folder}");
    }
    // Q8_0 is GGUF's: refused for a Hugging Face folder, nothing written.
    let bin = fixture("models/stories260K/stories260K.bin");
    let folder = dir.path().join("q8");
    let out = export_as(&bin, "hf", "q8_0", &folder);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("q8_0 is gguf only"),
        "{}",
        text(&out.stderr)
    );
    assert!(!folder.exists());
    // A GGUF's rope_freqs table has no Hugging Face config field: refused, nothing written.
    let gguf = fixture("real-models/gguf/tiny-llama3-bf16.gguf");
    let folder = dir.path().join("from-gguf");
    let out = export(&gguf, "hf", &folder);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("per-frequency factors"),
        "{}",
        text(&out.stderr)
    );
    assert!(!folder.exists());
}

#[test]
fn a_bin_exported_as_gguf_generates_as_llama_cpps_conversion() {
    // In every dtype with a fixture, the greedy text equals that of the fixture GGUF
    // llama.cpp's gguf-py converted from the same weights.
    let bin = fixture("models/stories260K/stories260K.bin");
    let dir = tempfile::tempdir().unwrap();
    for dtype in ["f32", "f16", "q8_0"] {
        let file = dir.path().join(format!("{dtype}.gguf"));
        let out = export_as(&bin, "gguf", dtype, &file);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let converted = fixture(&format!("real-models/gguf/stories260K-{dtype}.gguf"));
        assert_eq!(greedy(&path(&file)), greedy(&path(&converted)), "{dtype}");
    }
    // A Hugging Face folder's chat template goes into the file.
    let file = dir.path().join("chat.gguf");
    let out = export(&fixture("real-models/hf/tiny-llama3"), "gguf", &file);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let metadata = llama_model::gguf::read_metadata(&file).unwrap();
    let template =
        std::fs::read_to_string(fixture("real-models/hf/tiny-llama3/chat_template.jinja"));
    assert_eq!(
        metadata["tokenizer.chat_template"].as_str(),
        Some(template.unwrap().as_str())
    );
}

/// The first greedy case of reference.json's PEFT entry: (prompt, ids of prompt and reply).
fn peft_greedy_case() -> (String, Vec<u32>) {
    let reference = real_models_reference();
    let case = &reference["models"]["peft/stories260K-lora"]["greedy"][0];
    let mut all = json_ids(&case["prompt_ids"]);
    all.extend(json_ids(&case["new_ids"]));
    (case["prompt"].as_str().unwrap().to_string(), all)
}

#[test]
fn a_peft_adapter_gives_peft_greedy_text_applied_merged_and_re_exported() {
    let base = fixture("real-models/hf/stories260K");
    let adapter = fixture("real-models/peft/stories260K-lora");
    let (prompt, all) = peft_greedy_case();
    let tok = Tokenizer::from_file(base.join("tokenizer.json")).unwrap();
    let expected = format!("{}\n", tok.decode(&all).unwrap());
    let n = all.len() - tok.encode(&prompt, true, false).unwrap().len();
    let (base_s, adapter_s) = (path(&base), path(&adapter));
    let direct = greedy_generation_with(&base_s, &prompt, n, &["--adapter", &adapter_s]).1;
    assert_eq!(direct, expected);

    let dir = tempfile::tempdir().unwrap();
    let merge = |adapter: &Path, out: &Path| {
        let merged = cli(&[
            "merge-lora",
            "--checkpoint",
            &base_s,
            "--adapter",
            &path(adapter),
            "--out",
            &path(out),
        ]);
        assert!(merged.status.success(), "{}", text(&merged.stderr));
        std::fs::read(out).unwrap()
    };
    let merged = dir.path().join("merged.safetensors");
    let merged_bytes = merge(&adapter, &merged);
    let tok_s = path(&base.join("tokenizer.json"));
    let from_merged = greedy_generation_with(&path(&merged), &prompt, n, &["--tokenizer", &tok_s]);
    assert_eq!(from_merged.1, expected);

    // Read and written back as PEFT, it merges into the same model, byte for byte.
    let exported = dir.path().join("peft");
    let out = cli(&[
        "export",
        "--checkpoint",
        &base_s,
        "--format",
        "peft",
        "--adapter",
        &adapter_s,
        "--out",
        &path(&exported),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let again = merge(&exported, &dir.path().join("again.safetensors"));
    assert_eq!(again, merged_bytes);
}

/// `merge-lora --checkpoint BASE --adapter ADAPTER OUT_FLAG OUT` (`--out` or `--hf-out`).
pub(crate) fn merge_lora(base: &Path, adapter: &Path, out_flag: &str, out: &Path) -> Output {
    cli(&[
        "merge-lora",
        "--checkpoint",
        &path(base),
        "--adapter",
        &path(adapter),
        out_flag,
        &path(out),
    ])
}

#[test]
fn merge_lora_writes_a_hugging_face_folder_with_hf_out() {
    let base = fixture("real-models/hf/stories260K");
    let adapter = fixture("real-models/peft/stories260K-lora");
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("merged-hf");
    let out = merge_lora(&base, &adapter, "--hf-out", &folder);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(folder.join("tokenizer.json").is_file());
    let (prompt, all) = peft_greedy_case();
    let tok = Tokenizer::from_file(base.join("tokenizer.json")).unwrap();
    let n = all.len() - tok.encode(&prompt, true, false).unwrap().len();
    let (_, greedy) = greedy_generation(&path(&folder), &prompt, n);
    assert_eq!(greedy, format!("{}\n", tok.decode(&all).unwrap()));
}

#[test]
fn a_byte_level_vocabulary_is_refused_for_llama2c() {
    // tiny-llama3 with llama2.c's RoPE and eps: only its byte-level BPE vocabulary is left
    // for the format to refuse.
    let source = fixture("real-models/hf/tiny-llama3");
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("tiny");
    std::fs::create_dir(&folder).unwrap();
    for entry in std::fs::read_dir(&source).unwrap() {
        let from = entry.unwrap().path();
        std::fs::copy(&from, folder.join(from.file_name().unwrap())).unwrap();
    }
    let config_path = folder.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["rope_theta"] = serde_json::json!(10000.0);
    config["rope_scaling"] = serde_json::Value::Null;
    std::fs::write(&config_path, config.to_string()).unwrap();
    let bin = dir.path().join("m.bin");
    let out = export(&folder, "llama2c", &bin);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("byte-level"),
        "{}",
        text(&out.stderr)
    );
    assert!(!bin.exists());
}
