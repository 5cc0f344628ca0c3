//! Hugging Face Llama folders (`real-models/hf/…`) against what `transformers` computes on
//! them (`real-models/reference.json` and `reference.safetensors`): logits at the last
//! position and at chosen rows of a long sequence, greedy ids; and the errors of bad folders.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::common;

use common::*;
use llama_model::exercise::compare::compare;
use llama_model::generation::generate::{generate, GenerateConfig};
use llama_model::{load_checkpoint, LoadOptions};
use serde_json::Value;

/// The fixtures' tolerance for logits.
const ATOL: f64 = 1e-5;
const RTOL: f64 = 1e-4;

/// `reference.json`'s `models` object.
fn reference() -> Value {
    let text = std::fs::read_to_string(fixture("real-models/reference.json")).unwrap();
    serde_json::from_str::<Value>(&text).unwrap()["models"].clone()
}

/// The `hf/` entries of `reference.json`, with their folders.
fn hf_models() -> Vec<(String, PathBuf, Value)> {
    let models = reference();
    let entries: Vec<_> = models
        .as_object()
        .unwrap()
        .iter()
        .filter(|(key, _)| key.starts_with("hf/"))
        .map(|(key, entry)| {
            (
                key.clone(),
                fixture(&format!("real-models/{key}")),
                entry.clone(),
            )
        })
        .collect();
    assert!(entries.len() >= 4, "expected the four hf/ fixtures");
    entries
}

fn logits_reference() -> HashMap<String, RefTensor> {
    read_safetensors(&fixture("real-models/reference.safetensors"))
}

fn load(path: &Path) -> llama_model::Llama<B> {
    load_checkpoint::<B>(path, &LoadOptions::default(), &Default::default())
        .unwrap_or_else(|e| panic!("{e}"))
        .model
}

fn i64_ids(v: &Value) -> Vec<i64> {
    ids(v).into_iter().map(i64::from).collect()
}

#[test]
fn every_hf_folder_gives_the_transformers_logits() {
    let stored = logits_reference();
    for (key, folder, entry) in hf_models() {
        let model = load(&folder);
        for case in entry["logits"].as_array().unwrap() {
            let prompt = i64_ids(&case["ids"]);
            let out = model.forward_last(tokens(&prompt, [1, prompt.len()]));
            let expected = &stored[case["last_position_logits"].as_str().unwrap()].f32;
            let c = compare(&values(out.logits), expected, ATOL, RTOL);
            assert!(c.passed(), "{key}: {}: {c:?}", case["prompt"]);
        }
        // Every stored row of the long sequence (past the original context for llama3
        // scaling).
        let all = &entry["logits_all_positions"];
        let seq = i64_ids(&all["ids"]);
        let logits = values(model.forward(tokens(&seq, [1, seq.len()])).logits);
        let vocab = logits.len() / seq.len();
        let expected = &stored[all["logits"].as_str().unwrap()];
        for (k, row) in all["rows"].as_array().unwrap().iter().enumerate() {
            let row = row.as_u64().unwrap() as usize;
            let c = compare(
                &logits[row * vocab..(row + 1) * vocab],
                &expected.f32[k * vocab..(k + 1) * vocab],
                ATOL,
                RTOL,
            );
            assert!(c.passed(), "{key}: row {row}: {c:?}");
        }
    }
}

#[test]
fn every_hf_folder_gives_the_transformers_greedy_ids() {
    for (key, folder, entry) in hf_models() {
        let model = load(&folder);
        for case in entry["greedy"].as_array().unwrap() {
            let prompt = ids(&case["prompt_ids"]);
            let expected = ids(&case["new_ids"]);
            let out = generate(
                &model,
                &prompt,
                &GenerateConfig::greedy(expected.len()),
                |_| {},
            )
            .unwrap();
            assert_eq!(out.tokens, expected, "{key}: {}", case["prompt"]);
        }
    }
}

#[test]
fn the_hf_stories260k_holds_the_bins_weights_and_tells_its_text() {
    use llama_model::checkpoint::read_checkpoint;
    let (config, tensors, format) = read_checkpoint(
        &fixture("real-models/hf/stories260K/config.json"),
        &LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(
        format,
        llama_model::checkpoint::CheckpointFormat::HuggingFace
    );
    let (bin_config, bin, _) = read_checkpoint(
        &fixture("models/stories260K/stories260K.bin"),
        &LoadOptions::default(),
    )
    .unwrap();
    // The q/k rows are back in interleaved order: every weight equals the .bin's exactly.
    assert_eq!(tensors, bin);
    assert_eq!(
        (
            config.dim,
            config.n_layers,
            config.hidden_dim(),
            config.vocab_size
        ),
        (
            bin_config.dim,
            bin_config.n_layers,
            bin_config.hidden_dim(),
            bin_config.vocab_size
        )
    );

    let entry = &reference()["hf/stories260K"];
    let tok = tok512();
    let model = load(&fixture("real-models/hf/stories260K"));
    let (bin_model, _) = stories260k();
    for case in entry["greedy"].as_array().unwrap() {
        let prompt = ids(&case["prompt_ids"]);
        let n = ids(&case["new_ids"]).len();
        let hf = generate(&model, &prompt, &GenerateConfig::greedy(n), |_| {}).unwrap();
        let bin = generate(&bin_model, &prompt, &GenerateConfig::greedy(n), |_| {}).unwrap();
        assert_eq!(hf.tokens, bin.tokens);
        assert_eq!(
            tok.decode(&hf.tokens).unwrap(),
            case["text"].as_str().unwrap()
        );
    }
}
