//! llama2.c `.bin` variants built from the stories260K v0 export: the v1 (`ak42`) header and
//! an unshared classifier (negative vocab size) load to the same model.

mod common;

use common::*;
use llama_model::checkpoint::{read_checkpoint, CheckpointFormat};
use llama_model::compare::compare;
use llama_model::{load_checkpoint, LoadOptions};

#[test]
fn v1_export_and_unshared_classifier_load_like_the_v0_file() {
    let v0 = std::fs::read(fixture("models/stories260K/stories260K.bin")).unwrap();
    let (config, tensors, format) = read_checkpoint(
        &fixture("models/stories260K/stories260K.bin"),
        &LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(format, CheckpointFormat::Llama2cV0);
    let bytes_of = |name: &str| -> Vec<u8> {
        tensors[name]
            .data
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect()
    };
    let per_layer = |suffix: &str| -> Vec<u8> {
        (0..config.n_layers)
            .flat_map(|i| bytes_of(&format!("layers.{i}.{suffix}")))
            .collect()
    };

    // v1: magic, version, 7 ints, shared flag, padding to 256, then llama2.c's v1 order.
    let mut v1 = vec![];
    v1.extend(0x616b_3432u32.to_le_bytes());
    v1.extend(1i32.to_le_bytes());
    v1.extend(&v0[..28]);
    v1.push(1);
    v1.resize(256, 0);
    for part in [
        per_layer("attention_norm.weight"),
        per_layer("ffn_norm.weight"),
        bytes_of("norm.weight"),
        bytes_of("tok_embeddings.weight"),
        per_layer("attention.compute_query.weight"),
        per_layer("attention.compute_key.weight"),
        per_layer("attention.compute_value.weight"),
        per_layer("attention.compute_output.weight"),
        per_layer("feed_forward.w1.weight"),
        per_layer("feed_forward.w2.weight"),
        per_layer("feed_forward.w3.weight"),
    ] {
        v1.extend(part);
    }

    // v0 with vocab -512 and a classifier (here: the embeddings scaled by 2) appended.
    let mut unshared = v0.clone();
    unshared[20..24].copy_from_slice(&(-512i32).to_le_bytes());
    let doubled: Vec<u8> = tensors["tok_embeddings.weight"]
        .data
        .iter()
        .flat_map(|v| (v * 2.0).to_le_bytes())
        .collect();
    unshared.extend(doubled);

    let dir = tempfile::tempdir().unwrap();
    let v1_path = dir.path().join("v1.bin");
    let unshared_path = dir.path().join("unshared.bin");
    std::fs::write(&v1_path, &v1).unwrap();
    std::fs::write(&unshared_path, &unshared).unwrap();

    let device = Default::default();
    let input = tokens(&[1, 403, 407, 261, 378], [1, 5]);
    let logits = |path: &std::path::Path| {
        let loaded = load_checkpoint::<B>(path, &LoadOptions::default(), &device).unwrap();
        (
            loaded.format,
            loaded.config.tie_embeddings,
            values(loaded.model.forward(input.clone()).logits),
        )
    };
    let (_, _, reference) = logits(&fixture("models/stories260K/stories260K.bin"));
    let (format, tied, from_v1) = logits(&v1_path);
    assert_eq!((format, tied), (CheckpointFormat::Llama2cV1, true));
    assert_eq!(from_v1, reference, "v1 export must load bit-identically");

    let (format, tied, from_unshared) = logits(&unshared_path);
    assert_eq!((format, tied), (CheckpointFormat::Llama2cV0, false));
    // The separate head is twice the embeddings, so logits double.
    let doubled: Vec<f32> = reference.iter().map(|v| v * 2.0).collect();
    let c = compare(&from_unshared, &doubled, 1e-5, 1e-5);
    assert!(c.passed(), "{c:?}");
}
