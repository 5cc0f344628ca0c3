//! The same numbers on every CPU backend of the test build: the stories260K forward fixture
//! and a greedy generation, on ndarray and flex. (wgpu and libtorch are behind cargo features
//! of llama-cli and are checked on machines that have them; see the README.)

mod common;

use burn::backend::{Flex, NdArray};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use common::{fixture, read_safetensors};
use llama_model::compare::compare;
use llama_model::generate::{generate, GenerateConfig};
use llama_model::{load_checkpoint, LoadOptions};

fn forward_matches_reference<Bk: Backend>(name: &str) {
    let reference = read_safetensors(&fixture("reference/forward-stories260K.safetensors"));
    let ids = &reference["input_ids"];
    let device = Default::default();
    let tokens = Tensor::<Bk, 2, Int>::from_data(
        TensorData::new(ids.i64.clone(), [ids.shape[0], ids.shape[1]]),
        &device,
    );
    let model = load_checkpoint::<Bk>(
        &fixture("models/stories260K/stories260K.bin"),
        &LoadOptions::default(),
        &device,
    )
    .unwrap()
    .model;
    let out = model.forward(tokens);
    for (key, tensor) in [("logits", out.logits), ("final_hidden", out.hidden)] {
        let actual = tensor
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .unwrap();
        let c = compare(&actual, &reference[key].f32, 1e-5, 1e-4);
        assert!(c.passed(), "{name}: {key}: {c:?}");
    }
}

fn greedy_tokens<Bk: Backend>() -> Vec<u32> {
    let model = load_checkpoint::<Bk>(
        &fixture("models/stories260K/stories260K.bin"),
        &LoadOptions::default(),
        &Default::default(),
    )
    .unwrap()
    .model;
    generate(&model, &[1], &GenerateConfig::greedy(100), |_| {})
        .unwrap()
        .tokens
}

#[test]
fn forward_fixture_passes_on_ndarray_and_flex() {
    forward_matches_reference::<NdArray>("ndarray");
    forward_matches_reference::<Flex>("flex");
}

#[test]
fn greedy_generation_is_token_identical_across_backends() {
    let ndarray = greedy_tokens::<NdArray>();
    let flex = greedy_tokens::<Flex>();
    assert_eq!(ndarray.len(), 100);
    assert_eq!(ndarray, flex);
    println!(
        "wgpu: skipped (not compiled into the test build; run `llama-cli --backend wgpu` checks)"
    );
}
