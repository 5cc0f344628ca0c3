//! Perplexity against the independent value of `reference/lm-stories260K.json` (`perplexity`:
//! 303 documents, three of them reviews longer than the context), and independent of the
//! batch size.

use burn::backend::NdArray;
use llama_model::fixtures::fixture;
use llama_model::{load_checkpoint, Llama, LoadOptions, Tokenizer};
use llama_train::lm::perplexity::{encode_documents, perplexity, read_documents, Perplexity};
use serde_json::Value;

type B = NdArray;

fn reference() -> Value {
    let text = std::fs::read_to_string(fixture("reference/lm-stories260K.json")).unwrap();
    serde_json::from_str::<Value>(&text).unwrap()["perplexity"].clone()
}

/// The fixture's documents (those picked by `keep`) written one per line, scored at
/// `batch_size`.
fn score(
    reference: &Value,
    batch_size: usize,
    keep: impl Fn(usize) -> bool,
) -> (Perplexity, usize) {
    let documents: Vec<&str> = reference["documents"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .filter(|(i, _)| keep(*i))
        .map(|(_, d)| d.as_str().unwrap())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("documents.txt");
    std::fs::write(&path, documents.join("\n") + "\n").unwrap();

    let device = Default::default();
    let model: Llama<B> = load_checkpoint::<B>(
        &fixture("models/stories260K/stories260K.bin"),
        &LoadOptions::default(),
        &device,
    )
    .unwrap()
    .model;
    let tokenizer = Tokenizer::from_file(fixture("models/stories260K/tok512.model")).unwrap();
    let docs = read_documents(&path).unwrap();
    assert_eq!(docs.len(), documents.len());
    let text = encode_documents(&tokenizer, &docs, model.max_seq_len(), &path).unwrap();
    let figures = perplexity(&model, &text.rows, batch_size, &device, |_| {}).unwrap();
    (figures, text.cut)
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs()
}

#[test]
fn perplexity_matches_the_reference_and_ignores_the_batch_size() {
    let reference = reference();
    let num = |k: &str| reference[k].as_f64().unwrap();
    // One document per pass: the fastest on ndarray in a test build (no padding at all).
    let (batched, cut) = score(&reference, 1, |_| true);
    assert_eq!(cut, 3, "three reviews are longer than the context");
    assert_eq!(batched.predicted_tokens as f64, num("predicted_tokens"));
    println!(
        "total NLL {} vs {}, perplexity {} vs {}",
        batched.total_nll,
        num("total_nll"),
        batched.perplexity(),
        num("perplexity")
    );
    // The README's claim: within 1e-5 relative of the reference.
    assert!(rel(batched.total_nll, num("total_nll")) < 1e-5);
    assert!(rel(batched.mean_nll(), num("mean_nll")) < 1e-5);
    assert!(rel(batched.perplexity(), num("perplexity")) < 1e-5);
    // Per document: the first 5 and the last 3 (cut to 512 tokens: 511 predicted).
    let per_doc = reference["per_document_predicted_tokens_and_nll"]
        .as_array()
        .unwrap();
    let n = batched.per_document.len();
    let ours = batched.per_document[..5]
        .iter()
        .chain(&batched.per_document[n - 3..]);
    for ((tokens, nll), expected) in ours.zip(per_doc) {
        assert_eq!(*tokens as u64, expected[0].as_u64().unwrap());
        assert!(
            rel(*nll, expected[1].as_f64().unwrap()) < 1e-5,
            "{nll} vs {expected}"
        );
    }

    // Padding never changes the result: batches of 16 give the same figures as one document
    // per pass (the run above), on the first 45 documents and the last, cut to the context
    // (lengths from 10 to 512 tokens, so most rows of a batch are padded).
    let keep = |i: usize| i < 45 || i == 302;
    let alone: Vec<(usize, f64)> = (0..n)
        .filter(|&i| keep(i))
        .map(|i| batched.per_document[i])
        .collect();
    let (batched, cut) = score(&reference, 16, keep);
    assert_eq!(cut, 1);
    let tokens: Vec<usize> = alone.iter().map(|d| d.0).collect();
    let padded: Vec<usize> = batched.per_document.iter().map(|d| d.0).collect();
    assert_eq!(tokens, padded);
    for ((_, a), (_, b)) in alone.iter().zip(&batched.per_document) {
        assert!(
            rel(*a, *b) < 1e-5,
            "document NLL {a} alone vs {b} in a batch of 16"
        );
    }
    let alone_nll: f64 = alone.iter().map(|d| d.1).sum();
    let r = rel(alone_nll, batched.total_nll);
    println!("batch 1 vs 16: relative difference {r:e}");
    assert!(r < 1e-6, "{r}");
}
