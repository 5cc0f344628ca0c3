//! PEFT adapter folders: the fixture's adapter gives `peft`'s logits, and ours round-trip.

use std::collections::BTreeMap;
use std::path::Path;

use burn::backend::NdArray;
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use safetensors::SafeTensors;

use super::peft::{read_peft, save_peft, WEIGHTS_FILE};
use super::{LoraConfig, LoraTarget};
use crate::fixtures::fixture;
use crate::model::projection::LoraAdapter;
use crate::{load_checkpoint, Llama, LoadOptions, LoadedCheckpoint};

type B = NdArray;

fn load(path: &Path) -> LoadedCheckpoint<B> {
    load_checkpoint::<B>(path, &LoadOptions::default(), &Default::default()).unwrap()
}

/// Logits `[len, vocab]` of `ids`, flattened.
fn logits(model: &Llama<B>, ids: &[i64]) -> Vec<f32> {
    let tokens = Tensor::<B, 2, Int>::from_data(
        TensorData::new(ids.to_vec(), [1, ids.len()]),
        &Default::default(),
    );
    model
        .forward(tokens)
        .logits
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap()
}

/// The tensors of a safetensors file by name: (shape, bytes).
fn stored(path: &Path) -> BTreeMap<String, (Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| (name, (view.shape().to_vec(), view.data().to_vec())))
        .collect()
}

/// `n` greedy ids after `prompt`, by whole forward passes (argmax of the last row).
fn greedy(model: &Llama<B>, prompt: &[i64], n: usize) -> Vec<i64> {
    let mut ids = prompt.to_vec();
    for _ in 0..n {
        let all = logits(model, &ids);
        let vocab = all.len() / ids.len();
        let last = &all[all.len() - vocab..];
        let best = (0..vocab).fold(0, |b, i| if last[i] > last[b] { i } else { b });
        ids.push(best as i64);
    }
    ids.split_off(prompt.len())
}

#[test]
fn the_peft_fixture_gives_peft_greedy_ids() {
    // The fixtures' reference.safetensors holds no logits for the PEFT entry (its keys stop
    // before the ones reference.json names), so the check is peft's greedy ids, which part
    // from the base model's after 31 tokens.
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("real-models/reference.json")).unwrap(),
    )
    .unwrap();
    let entry = &reference["models"]["peft/stories260K-lora"];
    let base_key = entry["base"].as_str().unwrap();
    let base = load(&fixture(&format!("real-models/{base_key}")));
    let adapter = read_peft(&fixture("real-models/peft/stories260K-lora"), &base.config).unwrap();
    assert_eq!(adapter.config().rank, 4);
    let adapted = adapter.apply(base.model.clone()).unwrap();
    let merged = adapted.clone().merge_lora();
    let ids = |v: &serde_json::Value| -> Vec<i64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_i64().unwrap())
            .collect()
    };
    for case in entry["greedy"].as_array().unwrap() {
        let (prompt, expected) = (ids(&case["prompt_ids"]), ids(&case["new_ids"]));
        assert_ne!(greedy(&base.model, &prompt, expected.len()), expected);
        assert_eq!(greedy(&adapted, &prompt, expected.len()), expected);
        assert_eq!(greedy(&merged, &prompt, expected.len()), expected);
    }
}

#[test]
fn the_peft_fixture_is_written_back_as_peft_wrote_it() {
    let base = load(&fixture("real-models/hf/stories260K"));
    let folder = fixture("real-models/peft/stories260K-lora");
    let adapter = read_peft(&folder, &base.config).unwrap();
    let lora = adapter.config().clone();
    let adapted = adapter.apply(base.model).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("peft");
    save_peft(&out, &adapted, &base.config, &lora, Some("hf/stories260K")).unwrap();
    // Names, shapes, f32 bytes and the q rows' HF order: exactly peft's file.
    assert_eq!(
        stored(&out.join(WEIGHTS_FILE)),
        stored(&folder.join(WEIGHTS_FILE))
    );
    let back = read_peft(&out, &base.config).unwrap();
    assert_eq!(back.config(), &lora);
}

#[test]
fn an_adapter_on_q_and_k_round_trips_to_the_same_merged_model() {
    let source = load(&fixture("models/stories260K/stories260K.pt"));
    let lora = LoraConfig::new(4).with_alpha(Some(8.0)).with_targets(vec![
        LoraTarget::Q,
        LoraTarget::K,
        LoraTarget::V,
        LoraTarget::W2,
    ]);
    let mut model = source.model.clone().with_lora(&lora, 7).unwrap();
    // Non-zero B (a fresh adapter's is zero), so that every factor matters.
    for (_, linear) in model.projections_mut() {
        if linear.lora.is_some() {
            let (d_in, d_out) = (linear.d_in(), linear.d_out());
            let device = Default::default();
            let factor = |rows, cols| {
                Tensor::<B, 2>::random([rows, cols], Distribution::Normal(0.0, 0.1), &device)
            };
            linear.lora = Some(LoraAdapter::from_factors(
                factor(d_in, 4),
                factor(4, d_out),
                lora.scale(),
            ));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("peft");
    save_peft(&out, &model, &source.config, &lora, None).unwrap();
    let back = read_peft(&out, &source.config).unwrap();
    assert_eq!(back.config(), &lora);
    let reread = back.apply(source.model).unwrap().merge_lora();
    let ids = [1i64, 403, 407, 261, 378, 9, 300];
    assert_eq!(logits(&reread, &ids), logits(&model.merge_lora(), &ids));
}
