//! llama.cpp GGUF files (`real-models/gguf/…`) against the references of their dequantized
//! weights (logits at stored positions, greedy ids, perplexity), their vocabularies and chat
//! templates against llama.cpp's ids, and the errors of damaged files.

use std::path::PathBuf;

use crate::common;
use crate::real_models::*;

use common::*;
use llama_model::checkpoint::{detect_format, CheckpointFormat};
use llama_model::generation::chat::{ChatTemplate, Message};
use llama_model::generation::generate::{generate, GenerateConfig, StopReason};
use llama_model::tokenizer::TokenizerFormat;
use llama_model::{load_checkpoint, LoadOptions, Tokenizer};
use serde_json::Value;

/// The GGUF entries this reader supports, with their files.
fn gguf_models() -> Vec<(String, PathBuf, Value)> {
    let supported = entries("gguf/")
        .into_iter()
        .filter(|(key, _, _)| !key.contains("llama3"))
        .collect::<Vec<_>>();
    assert_eq!(
        supported.len(),
        4,
        "expected the f32, f16, q8_0 and q4_k_m files"
    );
    supported
}

#[test]
fn every_gguf_file_gives_the_reference_logits() {
    let stored = logits_reference();
    for (key, file, entry) in gguf_models() {
        assert_eq!(
            detect_format(&file).unwrap(),
            CheckpointFormat::Gguf,
            "{key}"
        );
        check_logits(&key, &load(&file), &entry, &stored);
    }
}

#[test]
fn every_gguf_file_gives_the_reference_greedy_ids() {
    for (key, file, entry) in gguf_models() {
        check_greedy(&key, &load(&file), &entry);
    }
}

#[test]
fn the_f32_gguf_holds_the_bins_weights() {
    use llama_model::checkpoint::read_checkpoint;
    let options = LoadOptions::default();
    let (config, tensors, _) =
        read_checkpoint(&fixture("real-models/gguf/stories260K-f32.gguf"), &options).unwrap();
    let (bin_config, bin, _) =
        read_checkpoint(&fixture("models/stories260K/stories260K.bin"), &options).unwrap();
    // Meta's q/k order, as ours: every weight equals the .bin's exactly.
    assert_eq!(tensors, bin);
    assert_eq!(
        (
            config.dim,
            config.n_layers,
            config.hidden_dim(),
            config.tie_embeddings
        ),
        (
            bin_config.dim,
            bin_config.n_layers,
            bin_config.hidden_dim(),
            true
        )
    );
}

#[test]
fn rope_freqs_gives_the_llama3_frequencies_of_the_hf_folder() {
    use llama_model::checkpoint::read_checkpoint;
    use llama_model::model::rope_scaling::RopeScaling;
    let options = LoadOptions::default();
    let (gguf, _, _) =
        read_checkpoint(&fixture("real-models/gguf/tiny-llama3-bf16.gguf"), &options).unwrap();
    let (hf, _, _) = read_checkpoint(&fixture("real-models/hf/tiny-llama3"), &options).unwrap();
    assert!(matches!(
        gguf.rope_scaling,
        Some(RopeScaling::Factors { .. })
    ));
    assert!(matches!(hf.rope_scaling, Some(RopeScaling::Llama3 { .. })));
    // The random model's logits barely depend on RoPE, so the frequencies are compared
    // directly: llama.cpp's divisors against transformers' llama3 formula.
    let half = hf.head_dim() / 2;
    let base: Vec<f32> = (0..half)
        .map(|j| (hf.rope_theta as f32).powf(-((2 * j) as f32) / hf.head_dim() as f32))
        .collect();
    let (mut from_gguf, mut from_hf) = (base.clone(), base.clone());
    gguf.rope_scaling.unwrap().apply(&mut from_gguf);
    hf.rope_scaling.unwrap().apply(&mut from_hf);
    assert_ne!(from_hf, base, "the scaling changes some frequencies");
    for (g, h) in from_gguf.iter().zip(&from_hf) {
        assert!(((g - h) / h).abs() < 1e-6, "{from_gguf:?} vs {from_hf:?}");
    }
}

/// The load error of `bytes` written as a `.gguf` file, as one line.
fn error_of(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    std::fs::write(&path, bytes).unwrap();
    let err = load_checkpoint::<B>(&path, &LoadOptions::default(), &Default::default())
        .expect_err("a damaged file must not load");
    let line = err.to_string();
    assert!(line.contains("bad.gguf"), "{line}");
    assert!(!line.contains('\n'), "{line}");
    line
}

#[test]
fn damaged_gguf_files_are_one_line_errors() {
    let good = std::fs::read(fixture("real-models/gguf/stories260K-q8_0.gguf")).unwrap();
    // Truncated in the last tensor.
    assert!(error_of(&good[..good.len() - 100]).contains("truncated"));
    // Truncated in the header.
    assert!(error_of(&good[..40]).contains("truncated"));
    // A version we do not read.
    let mut v1 = good.clone();
    v1[4..8].copy_from_slice(&1u32.to_le_bytes());
    assert!(error_of(&v1).contains("version 1"));
    // Counts far beyond the file are refused before anything is allocated.
    let mut huge = good.clone();
    huge[8..16].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    assert!(error_of(&huge).contains("tensors"));
    let mut huge_kv = good;
    huge_kv[16..24].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    assert!(error_of(&huge_kv).contains("metadata"));
}

#[test]
fn a_gguf_of_another_architecture_is_refused_by_name() {
    let good = std::fs::read(fixture("real-models/gguf/stories260K-f32.gguf")).unwrap();
    // Same length keeps every offset: `llama` -> `gemma` in `general.architecture` and its
    // `llama.*` keys.
    let patched: Vec<u8> = replace_all(&good, b"llama", b"gemma");
    let line = error_of(&patched);
    assert!(line.contains("`gemma`"), "{line}");
}

/// `bytes` with every `from` replaced by `to` (of the same length).
fn replace_all(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let mut i = 0;
    while i + from.len() <= out.len() {
        if &out[i..i + from.len()] == from {
            out[i..i + from.len()].copy_from_slice(to);
            i += from.len();
        } else {
            i += 1;
        }
    }
    out
}

/// The GGUF entries with their tokenizers (the file's own vocabulary).
fn with_vocabularies() -> Vec<(String, PathBuf, Value, Tokenizer)> {
    gguf_models()
        .into_iter()
        .map(|(key, file, entry)| {
            assert_eq!(entry["tokenized_by"], "llama.cpp", "{key}");
            let tok = Tokenizer::from_file(&file).unwrap_or_else(|e| panic!("{e}"));
            (key, file, entry, tok)
        })
        .collect()
}

#[test]
fn every_gguf_vocabulary_gives_llama_cpps_ids_and_text() {
    for (key, _, entry, tok) in with_vocabularies() {
        let format = if key.contains("llama3") {
            TokenizerFormat::GgufByteLevel
        } else {
            TokenizerFormat::Gguf
        };
        assert_eq!(tok.format(), format, "{key}");
        check_tokenizer(&key, &tok, &entry);
    }
}

#[test]
fn every_gguf_file_gives_the_reference_perplexity() {
    for (key, file, entry, tok) in with_vocabularies() {
        check_perplexity(&key, &load(&file), &tok, &entry);
    }
}

#[test]
fn every_gguf_chat_template_gives_the_reference_ids_and_reply() {
    for (key, file, entry, tok) in with_vocabularies() {
        let template = ChatTemplate::for_checkpoint(&file).unwrap_or_else(|e| panic!("{e}"));
        let model = load(&file);
        for case in entry["chat"].as_array().unwrap() {
            let messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
            let generation_prompt = case["add_generation_prompt"].as_bool().unwrap();
            let Some(text) = case["text"].as_str() else {
                assert!(
                    template.render(&messages, generation_prompt).is_err(),
                    "{key}"
                );
                continue;
            };
            assert_eq!(
                template.render(&messages, generation_prompt).unwrap(),
                text,
                "{key}"
            );
            assert_eq!(
                tok.encode(text, false, false).unwrap(),
                ids(&case["ids"]),
                "{key}"
            );
            let Some(reply) = case.get("reply_ids") else {
                continue;
            };
            let expected = ids(reply);
            let config = GenerateConfig::greedy(expected.len())
                .with_stop_at_eos(true)
                .with_eos_id(tok.eos_id());
            let out = generate(&model, &ids(&case["ids"]), &config, |_| {}).unwrap();
            let mut got = out.tokens;
            if out.stop_reason == StopReason::Eos {
                got.push(tok.eos_id());
            }
            assert_eq!(got, expected, "{key}: reply");
        }
    }
}
