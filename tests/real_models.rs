//! What every `real-models/` entry (Hugging Face folders, GGUF files) is checked against:
//! `reference.json` and `reference.safetensors` (logits at stored positions, greedy ids,
//! perplexity), shared by `hf_folders` and `gguf_files`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::common;

use common::*;
use llama_model::exercise::compare::compare;
use llama_model::generation::generate::{generate, GenerateConfig};
use llama_model::tokenizer::TextStream;
use llama_model::{load_checkpoint, Llama, LoadOptions, Tokenizer};
use serde_json::Value;

/// The fixtures' tolerance for logits.
const ATOL: f64 = 1e-5;
const RTOL: f64 = 1e-4;

/// `reference.json`'s `models` object.
pub fn reference() -> Value {
    let text = std::fs::read_to_string(fixture("real-models/reference.json")).unwrap();
    serde_json::from_str::<Value>(&text).unwrap()["models"].clone()
}

/// The entries of `reference.json` whose key starts with `prefix`, with their paths.
pub fn entries(prefix: &str) -> Vec<(String, PathBuf, Value)> {
    reference()
        .as_object()
        .unwrap()
        .iter()
        .filter(|(key, _)| key.starts_with(prefix))
        .map(|(key, entry)| {
            (
                key.clone(),
                fixture(&format!("real-models/{key}")),
                entry.clone(),
            )
        })
        .collect()
}

pub fn logits_reference() -> HashMap<String, RefTensor> {
    read_safetensors(&fixture("real-models/reference.safetensors"))
}

/// The model of the checkpoint at `path`.
pub fn load(path: &Path) -> Llama<B> {
    load_checkpoint::<B>(path, &LoadOptions::default(), &Default::default())
        .unwrap_or_else(|e| panic!("{e}"))
        .model
}

pub fn i64_ids(v: &Value) -> Vec<i64> {
    ids(v).into_iter().map(i64::from).collect()
}

/// The model's logits equal the entry's at the last position of each prompt and at every
/// stored row of the long sequence.
pub fn check_logits(
    key: &str,
    model: &Llama<B>,
    entry: &Value,
    stored: &HashMap<String, RefTensor>,
) {
    for case in entry["logits"].as_array().unwrap() {
        let prompt = i64_ids(&case["ids"]);
        let out = model.forward_last(tokens(&prompt, [1, prompt.len()]));
        let expected = &stored[case["last_position_logits"].as_str().unwrap()].f32;
        let c = compare(&values(out.logits), expected, ATOL, RTOL);
        assert!(c.passed(), "{key}: {}: {c:?}", case["prompt"]);
    }
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

/// The model's greedy continuations equal the entry's.
pub fn check_greedy(key: &str, model: &Llama<B>, entry: &Value) {
    for case in entry["greedy"].as_array().unwrap() {
        let prompt = ids(&case["prompt_ids"]);
        let expected = ids(&case["new_ids"]);
        let out = generate(
            model,
            &prompt,
            &GenerateConfig::greedy(expected.len()),
            |_| {},
        )
        .unwrap();
        assert_eq!(out.tokens, expected, "{key}: {}", case["prompt"]);
    }
}

/// The perplexity of the entry's documents (each with BOS, cut to the context) is within
/// 1e-5 relative of the reference's.
pub fn check_perplexity(key: &str, model: &Llama<B>, tok: &Tokenizer, entry: &Value) {
    let reference = &entry["perplexity"];
    let context = model.max_seq_len();
    let (mut nll, mut count) = (0.0f64, 0usize);
    for doc in reference["documents"].as_array().unwrap() {
        let mut doc_ids = tok.encode(doc.as_str().unwrap(), true, false).unwrap();
        doc_ids.truncate(context);
        if doc_ids.len() < 2 {
            continue;
        }
        let seq: Vec<i64> = doc_ids.iter().map(|&i| i64::from(i)).collect();
        let logits = values(model.forward(tokens(&seq, [1, seq.len()])).logits);
        let vocab = logits.len() / seq.len();
        for (row, &next) in logits.chunks(vocab).zip(&doc_ids[1..]) {
            // log-softmax in f64, as the reference takes the f32 logits to double.
            let max = row
                .iter()
                .fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
            let sum: f64 = row.iter().map(|&v| (f64::from(v) - max).exp()).sum();
            nll -= f64::from(row[next as usize]) - max - sum.ln();
        }
        count += doc_ids.len() - 1;
    }
    assert_eq!(
        count as u64,
        reference["predicted_tokens"].as_u64().unwrap(),
        "{key}"
    );
    let ppl = (nll / count as f64).exp();
    let expected = reference["perplexity"].as_f64().unwrap();
    assert!(
        ((ppl - expected) / expected).abs() <= 1e-5,
        "{key}: perplexity {ppl}, reference {expected}"
    );
}

/// The tokenizer gives the entry's ids (BOS added) and decoded texts, and the greedy
/// continuations' text, whole or streamed.
pub fn check_tokenizer(key: &str, tok: &Tokenizer, entry: &Value) {
    for case in entry["tokenizer"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let expected = ids(&case["ids"]);
        assert_eq!(
            tok.encode(text, true, false).unwrap(),
            expected,
            "{key}: {text:?}"
        );
        assert_eq!(
            tok.decode(&expected).unwrap(),
            case["decoded"].as_str().unwrap(),
            "{key}: {text:?}"
        );
    }
    // Random models print broken bytes: decoded lossily, as transformers does.
    for case in entry["greedy"].as_array().unwrap() {
        let new = ids(&case["new_ids"]);
        assert_eq!(
            tok.decode(&new).unwrap(),
            case["text"].as_str().unwrap(),
            "{key}"
        );
        // Streaming prints the same text in whole characters.
        let mut stream = TextStream::after(tok, *ids(&case["prompt_ids"]).last().unwrap());
        let mut chunks: Vec<String> = new.iter().map(|&id| stream.push(id).unwrap()).collect();
        chunks.push(stream.finish());
        let joined = chunks.concat();
        assert_eq!(
            joined.trim_start(),
            tok.decode(&new).unwrap().trim_start(),
            "{key}"
        );
    }
}
