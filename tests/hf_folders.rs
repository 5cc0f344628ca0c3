//! Hugging Face Llama folders (`real-models/hf/…`) against what `transformers` computes on
//! them (`real-models/reference.json` and `reference.safetensors`): logits at the last
//! position and at chosen rows of a long sequence, greedy ids; and the errors of bad folders.

use std::path::{Path, PathBuf};

use crate::common;
use crate::real_models::*;

use common::*;
use llama_model::generation::generate::{generate, GenerateConfig};
use llama_model::{LoadOptions, Tokenizer};
use serde_json::Value;

/// The `hf/` entries of `reference.json`, with their folders.
fn hf_models() -> Vec<(String, PathBuf, Value)> {
    let entries = entries("hf/");
    assert!(entries.len() >= 4, "expected the four hf/ fixtures");
    entries
}

#[test]
fn every_hf_folder_gives_the_transformers_logits() {
    let stored = logits_reference();
    for (key, folder, entry) in hf_models() {
        check_logits(&key, &load(&folder), &entry, &stored);
    }
}

#[test]
fn every_hf_folder_gives_the_transformers_greedy_ids() {
    for (key, folder, entry) in hf_models() {
        check_greedy(&key, &load(&folder), &entry);
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

/// The tokenizer of an HF folder: its own `tokenizer.json`.
fn folder_tokenizer(folder: &Path) -> Tokenizer {
    Tokenizer::from_file(folder.join("tokenizer.json")).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_hf_tokenizer_json_gives_the_transformers_ids_and_text() {
    for (key, folder, entry) in hf_models() {
        assert_eq!(entry["tokenized_by"], "transformers", "{key}");
        let tok = folder_tokenizer(&folder);
        check_tokenizer(&key, &tok, &entry);
    }
}

#[test]
fn every_hf_folder_gives_the_transformers_perplexity() {
    for (key, folder, entry) in hf_models() {
        check_perplexity(&key, &load(&folder), &folder_tokenizer(&folder), &entry);
    }
}

#[test]
fn a_weight_file_of_a_folder_loads_the_folder() {
    use llama_model::checkpoint::{detect_format, CheckpointFormat};
    let file = fixture("real-models/hf/tiny-llama3/model.safetensors");
    assert_eq!(detect_format(&file).unwrap(), CheckpointFormat::HuggingFace);
    let seq = [595i64, 46, 77, 327];
    let from_file = values(load(&file).forward_last(tokens(&seq, [1, 4])).logits);
    let folder = load(&fixture("real-models/hf/tiny-llama3"));
    assert_eq!(
        from_file,
        values(folder.forward_last(tokens(&seq, [1, 4])).logits)
    );
}

#[test]
fn bos_and_eos_come_from_config_and_generation_config() {
    use llama_model::checkpoint::hf::special_ids;
    // generation_config.json's list of two EOS ids wins over config.json's one.
    let eot = special_ids(&fixture("real-models/hf/tiny-llama3-eot"))
        .unwrap()
        .unwrap();
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture(
            "real-models/hf/tiny-llama3-eot/generation_config.json",
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(eot.eos, ids(&config["eos_token_id"]));
    assert_eq!(eot.eos.len(), 2);
    assert_eq!(eot.bos, config["bos_token_id"].as_u64().map(|b| b as u32));
    let stories = special_ids(&fixture("real-models/hf/stories260K/config.json"))
        .unwrap()
        .unwrap();
    assert_eq!((stories.bos, stories.eos), (Some(1), vec![2]));
    // Not a Hugging Face model: none.
    assert!(special_ids(&fixture("models/stories260K/stories260K.bin"))
        .unwrap()
        .is_none());
}
