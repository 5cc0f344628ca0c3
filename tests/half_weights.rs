//! f16 weights (`Llama::with_half_weights`, `--weight-dtype f16`) on flex, the backend that
//! runs them: how far the stories260K forward fixture's logits move, and how long greedy
//! decoding follows the f32 reference.

use crate::common;

use burn::backend::Flex;
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{DType, Int, Tensor, TensorData};
use common::{fixture, ids, read_safetensors};
use llama_model::exercise::compare::compare;
use llama_model::generation::generate::{generate, GenerateConfig};
use llama_model::{load_checkpoint, load_checkpoint_as, Llama, LoadOptions, LoadPrecision};
use serde_json::Value;

fn half_model() -> Llama<Flex> {
    load_checkpoint::<Flex>(
        &fixture("models/stories260K/stories260K.bin"),
        &LoadOptions::default(),
        &Default::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"))
    .model
    .with_half_weights()
}

#[test]
fn weight_matrices_are_f16_and_outputs_stay_f32() {
    let model = half_model();
    assert_eq!(model.tok_embeddings.weight.val().dtype(), DType::F16);
    let layer = &model.layers[0];
    for w in [
        &layer.attention.compute_query,
        &layer.attention.compute_key,
        &layer.attention.compute_value,
        &layer.attention.compute_output,
        &layer.feed_forward.w1,
        &layer.feed_forward.w2,
        &layer.feed_forward.w3,
    ] {
        assert_eq!(w.weight.val().dtype(), DType::F16);
    }
    assert_eq!(model.norm.weight.val().dtype(), DType::F32);
    assert_eq!(layer.attention_norm.weight.val().dtype(), DType::F32);
    let out = model.forward(Tensor::from_data(
        TensorData::new(vec![1i64, 403, 407], [1, 3]),
        &Default::default(),
    ));
    assert_eq!(out.logits.dtype(), DType::F32);
    assert_eq!(out.hidden.dtype(), DType::F32);
}

/// f16 keeps 11 significant bits (relative rounding ≤ 2⁻¹¹ ≈ 4.9e-4) of every weight and of
/// every product's inputs and outputs; through stories260K's 5 layers that moves its logits
/// (magnitudes up to ~20) by up to a few hundredths (measured 1.9e-2).
#[test]
fn forward_logits_stay_within_f16_rounding_of_the_reference() {
    let reference = read_safetensors(&fixture("reference/forward-stories260K.safetensors"));
    let input = &reference["input_ids"];
    let tokens = Tensor::<Flex, 2, Int>::from_data(
        TensorData::new(input.i64.clone(), [input.shape[0], input.shape[1]]),
        &Default::default(),
    );
    let out = half_model().forward(tokens);
    for (key, tensor, atol) in [
        ("logits", out.logits, 2.5e-2),
        ("final_hidden", out.hidden, 1.5e-2),
    ] {
        let actual = tensor
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .unwrap();
        let c = compare(&actual, &reference[key].f32, atol, 0.0);
        eprintln!("{key}: largest difference {:.2e}", c.max_abs_diff);
        assert!(c.passed(), "{key}: {c:?}");
        // Not the f32 numbers: the weights really are rounded.
        assert!(c.max_abs_diff > 1e-5, "{key}: {c:?}");
    }
}

/// Greedy decoding with f16 weights gives the f32 reference ids, all of them (200 from BOS,
/// 3 × 64 after the prompts), as the README states.
#[test]
fn greedy_tokens_follow_the_f32_reference() {
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("reference/generate-stories260K.json")).unwrap(),
    )
    .unwrap();
    let model = half_model();
    let mut cases = vec![(
        ids(&reference["from_bos"]["input_ids"]),
        ids(&reference["from_bos"]["new_ids"]),
    )];
    for case in reference["prompts"].as_array().unwrap() {
        cases.push((ids(&case["prompt_ids"]), ids(&case["new_ids"])));
    }
    for (prompt, expected) in cases {
        let half = generate(
            &model,
            &prompt,
            &GenerateConfig::greedy(expected.len()),
            |_| {},
        )
        .unwrap()
        .tokens;
        let equal = half
            .iter()
            .zip(&expected)
            .take_while(|(a, b)| a == b)
            .count();
        eprintln!(
            "prompt {prompt:?}: {equal} of {} greedy tokens equal to f32",
            expected.len()
        );
        assert_eq!(
            half, expected,
            "prompt {prompt:?}: f16 left f32 after {equal} tokens"
        );
    }
}

/// Every float parameter's dtype and values, in module order.
struct Params(Vec<(DType, Vec<f32>)>);

impl ModuleVisitor<Flex> for Params {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Flex, D>>) {
        let t = param.val();
        let values = t.clone().into_data().convert::<f32>().to_vec().unwrap();
        self.0.push((t.dtype(), values));
    }
}

fn params(model: &Llama<Flex>) -> Vec<(DType, Vec<f32>)> {
    let mut params = Params(Vec::new());
    model.visit(&mut params);
    params.0
}

/// Cast as each tensor is read (so that the f32 model is never whole in memory), a Hugging
/// Face folder gets exactly the weights of an f32 load cast afterwards, at two bytes each.
#[test]
fn a_hugging_face_folder_loaded_in_f16_has_its_f32_loads_weights_cast() {
    let folder = fixture("real-models/hf/stories260K");
    let (options, device) = (LoadOptions::default(), Default::default());
    let full = load_checkpoint::<Flex>(&folder, &options, &device)
        .unwrap()
        .model;
    let half = load_checkpoint_as::<Flex>(&folder, &options, LoadPrecision::F16, &device)
        .unwrap()
        .model;
    let cast = full.clone().with_half_weights();
    assert!(params(&half) == params(&cast));
    let matrices: usize = params(&half)
        .iter()
        .filter(|(dtype, _)| *dtype == DType::F16)
        .map(|(_, values)| values.len())
        .sum();
    assert!(matrices > 0);
    assert_eq!(
        half.weight_bytes_held(),
        full.weight_bytes_held() - 2 * matrices
    );
    assert_eq!(full.weight_bytes_held(), 4 * full.num_params());
}
