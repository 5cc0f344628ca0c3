//! `llama-cli init`: a preset's shape with seeded random weights, written as a Hugging Face
//! folder that our loaders read back.

use std::path::{Path, PathBuf};
use std::process::Output;

use burn::backend::NdArray;
use burn::module::Module;
use llama_model::fixtures::fixture;
use llama_model::{load_checkpoint, LlamaConfig, LoadOptions};

use crate::common::{cli, path, text};

fn preset() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs/stories260K.json")
}

/// `init --config stories260K --tokenizer tok512.model --seed SEED --out OUT`.
fn init(seed: &str, out: &Path) -> Output {
    let tokenizer = fixture("models/stories260K/tok512.model");
    cli(&[
        "init",
        "--config",
        &path(&preset()),
        "--tokenizer",
        &path(&tokenizer),
        "--seed",
        seed,
        "--out",
        &path(out),
    ])
}

#[test]
fn a_preset_is_written_as_a_folder_of_its_shape_with_weights_from_the_seed() {
    let dir = tempfile::tempdir().unwrap();
    let [first, again, other] = ["first", "again", "other"].map(|name| dir.path().join(name));
    for (seed, out) in [("7", &first), ("7", &again), ("8", &other)] {
        let run = init(seed, out);
        assert!(run.status.success(), "{}", text(&run.stderr));
    }
    let loaded =
        load_checkpoint::<NdArray>(&first, &LoadOptions::default(), &Default::default()).unwrap();
    let expected = LlamaConfig::from_json_file(&preset()).unwrap();
    let shape = |c: &LlamaConfig| {
        (
            (c.dim, c.n_layers, c.n_heads, c.n_kv_heads(), c.vocab_size),
            (c.hidden_dim(), c.max_seq_len, c.norm_eps, c.rope_theta),
        )
    };
    assert_eq!(shape(&loaded.config), shape(&expected));
    assert!(first.join("tokenizer.model").is_file());
    // bf16 by default: two bytes per parameter.
    let weights = |folder: &Path| std::fs::read(folder.join("model.safetensors")).unwrap();
    let params = loaded.model.num_params();
    assert!(weights(&first).len() > 2 * params && weights(&first).len() < 3 * params);
    assert_eq!(weights(&first), weights(&again), "same seed, same weights");
    assert_ne!(
        weights(&first),
        weights(&other),
        "another seed, other weights"
    );
    // A second init onto it is refused, the folder untouched.
    let refused = init("7", &first);
    assert!(!refused.status.success());
    assert!(text(&refused.stderr).contains("already exists"));
    assert_eq!(weights(&first), weights(&again));
}

#[test]
fn a_tokenizer_of_another_vocabulary_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m");
    let run = cli(&[
        "init",
        "--config",
        &path(&preset()),
        "--tokenizer",
        &path(&fixture("tokenizers/llama2-tokenizer.model")),
        "--out",
        &path(&out),
    ]);
    assert!(!run.status.success());
    let err = text(&run.stderr);
    assert!(err.contains("32000 tokens") && err.contains("512"), "{err}");
    assert!(!out.exists());
}
