//! A classifier record that does not match its `classifier.json` is refused at load, naming
//! the file and the tensor: Burn's loader checks no shape, so a head of another width loaded
//! and then panicked in the first forward pass, and a record with fewer layers panicked in
//! the load itself.

use std::path::Path;

use burn::backend::NdArray;
use burn::config::Config;
use burn::module::Module;
use llama_model::LlamaConfig;
use llama_train::classify::classifier::ClassifierConfig;
use llama_train::classify::finetune::{
    load_classifier, ClassifierRecorder, FinetuneError, CLASSIFIER_CONFIG_FILE,
    CLASSIFIER_RECORD_STEM,
};

type B = NdArray;

fn tiny(n_layers: usize, num_labels: usize) -> ClassifierConfig {
    ClassifierConfig::new(
        LlamaConfig::new(16, n_layers, 2, 32).with_max_seq_len(16),
        num_labels,
    )
    .with_hidden_dropout_prob(0.0)
}

/// A run folder holding the record of a `saved` classifier and the config `claimed`.
fn run_folder(dir: &Path, saved: &ClassifierConfig, claimed: &ClassifierConfig) {
    let device = Default::default();
    saved
        .init::<B>(&device)
        .unwrap()
        .save_file(dir.join(CLASSIFIER_RECORD_STEM), &ClassifierRecorder::new())
        .unwrap();
    claimed.save(dir.join(CLASSIFIER_CONFIG_FILE)).unwrap();
}

fn record_error(dir: &Path) -> String {
    match load_classifier::<B>(dir, &Default::default()) {
        Err(err @ FinetuneError::Record { .. }) => {
            let msg = err.to_string();
            assert!(msg.contains("classifier.mpk"), "{msg}");
            println!("{msg}");
            msg
        }
        Err(other) => panic!("expected a record error, got {other}"),
        Ok(_) => panic!("a mismatched record loaded"),
    }
}

#[test]
fn a_matching_record_loads() {
    let dir = tempfile::tempdir().unwrap();
    run_folder(dir.path(), &tiny(2, 3), &tiny(2, 3));
    let saved = load_classifier::<B>(dir.path(), &Default::default()).unwrap();
    assert_eq!(saved.model.num_labels(), 3);
}

#[test]
fn a_head_of_another_width_is_named_with_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    run_folder(dir.path(), &tiny(2, 5), &tiny(2, 3));
    let msg = record_error(dir.path());
    assert!(
        msg.contains("tensor `classifier_head.bias` has shape [5]")
            && msg.contains("classifier.json implies [3]"),
        "{msg}"
    );
}

#[test]
fn a_record_with_fewer_layers_names_the_missing_tensor() {
    let dir = tempfile::tempdir().unwrap();
    run_folder(dir.path(), &tiny(1, 3), &tiny(2, 3));
    let msg = record_error(dir.path());
    assert!(msg.contains("tensor `llama.layers.1."), "{msg}");
    assert!(msg.contains("is missing"), "{msg}");
}

#[test]
fn a_truncated_or_foreign_record_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    run_folder(dir.path(), &tiny(2, 3), &tiny(2, 3));
    let record = dir.path().join("classifier.mpk");
    let bytes = std::fs::read(&record).unwrap();
    for cut in [0, 10, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&record, &bytes[..cut]).unwrap();
        record_error(dir.path());
    }
    std::fs::write(&record, b"not a record").unwrap();
    record_error(dir.path());
}
