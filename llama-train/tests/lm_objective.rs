//! The language-model objective of stories260K against the PyTorch reference's `lm_batch`
//! (`reference/lm-stories260K.json` and its safetensors twin): the packed batch, the loss,
//! the gradients, and the losses after steps of global-norm clipping and the exercise's
//! AdamW, within the tolerances the fixture states.

use burn::backend::NdArray;
use burn::module::{Module, ModuleMapper, Param};
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use llama_model::checkpoint::model_tensors;
use llama_model::fixtures::fixture;
use llama_model::train::grad_clip::clip_global_norm;
use llama_model::{load_checkpoint, AdamWConfig, Llama, LoadOptions, Tokenizer};
use llama_train::data::sentences::read_labelled_file;
use llama_train::lm::objective::{lm_loss, pack_documents, LmBatch};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

use crate::common;

use common::{assert_close, assert_rel, dims, floats};

/// What the CLI trains on (balanced checkpointing).
type TB = llama_train::TrainBackend<NdArray>;

fn reference() -> Value {
    let text = std::fs::read_to_string(fixture("reference/lm-stories260K.json")).expect("fixture");
    serde_json::from_str(&text).expect("json")
}

fn num(v: &Value) -> f64 {
    v.as_f64().expect("number")
}

/// The fixture's packing: SST training sentences 0..39, each with BOS, windows of 65.
fn packed_windows() -> Vec<Vec<u32>> {
    let tokenizer = Tokenizer::from_file(fixture("models/stories260K/tok512.bin")).expect("tok512");
    let records = read_labelled_file(fixture("data/sst-train.txt")).expect("sst");
    let documents: Vec<Vec<u32>> = records[..40]
        .iter()
        .map(|r| tokenizer.encode(&r.sentence, true, false).expect("encode"))
        .collect();
    pack_documents(&documents, 64)
}

/// The model with each parameter replaced by its gradient (so that [`model_tensors`] names
/// the gradients and puts them in PyTorch's layout).
struct ToGradients<'a> {
    grads: &'a <TB as AutodiffBackend>::Gradients,
}

impl ModuleMapper<TB> for ToGradients<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<TB, D>>) -> Param<Tensor<TB, D>> {
        let grad = param
            .grad(self.grads)
            .expect("every parameter has a gradient");
        Param::from_tensor(Tensor::from_inner(grad))
    }
}

#[test]
fn lm_batch_loss_gradients_and_clipped_adamw_steps_match_the_reference() {
    let fx = reference();
    let lm = &fx["lm_batch"];
    let device = Default::default();

    // The packed batch, exactly.
    let windows = packed_windows();
    let batch = LmBatch::<TB>::new(&windows[..4], &device);
    let ids = |v: &Value| -> Vec<i64> {
        v.as_array()
            .expect("rows")
            .iter()
            .flat_map(|r| {
                r.as_array()
                    .expect("row")
                    .iter()
                    .map(|x| x.as_i64().expect("id"))
            })
            .collect()
    };
    assert_eq!(
        batch.inputs.to_data().to_vec::<i64>().unwrap(),
        ids(&lm["input_ids"])
    );
    assert_eq!(
        batch.targets.to_data().to_vec::<i64>().unwrap(),
        ids(&lm["targets"])
    );

    // The loss (atol 1e-5).
    let model: Llama<TB> = load_checkpoint(
        &fixture("models/stories260K/stories260K.pt"),
        &LoadOptions::default(),
        &device,
    )
    .expect("stories260K")
    .model;
    let loss = lm_loss(&model, &batch);
    let value = f64::from(loss.clone().into_scalar());
    println!("loss {value} vs {}", num(&lm["loss"]));
    assert!((value - num(&lm["loss"])).abs() <= 1e-5);

    gradients_match(&model, loss, lm);
    clipped_adamw_steps_match(model, &batch, lm);
}

/// The gradients: norms and sums (rtol 1e-4), values (atol 1e-6 + rtol 1e-3).
fn gradients_match(model: &Llama<TB>, loss: Tensor<TB, 1>, lm: &Value) {
    let grads = loss.backward();
    let gradients = Module::map(model.clone(), &mut ToGradients { grads: &grads });
    let named = model_tensors(&gradients);
    let twin_bytes = std::fs::read(fixture("reference/lm-stories260K.safetensors")).expect("twin");
    let twin = SafeTensors::deserialize(&twin_bytes).expect("safetensors");
    for (name, expected) in lm["grads"].as_object().expect("grads") {
        let actual = &named[name];
        let shape = dims(&expected["shape"]);
        assert_eq!(actual.shape, shape, "{name}");
        let l2 = actual
            .data
            .iter()
            .map(|&v| f64::from(v).powi(2))
            .sum::<f64>()
            .sqrt();
        let sum: f64 = actual.data.iter().map(|&v| f64::from(v)).sum();
        assert_rel(&format!("{name} l2"), l2, num(&expected["l2_norm"]), 1e-4);
        assert_rel(&format!("{name} sum"), sum, num(&expected["sum"]), 1e-4);
        let first = floats(&expected["first8"]);
        assert_close(
            &format!("{name} first8"),
            &actual.data[..8],
            &first,
            1e-6,
            1e-3,
        );
        let view = twin.tensor(&format!("grad.{name}")).expect("full gradient");
        assert_eq!((view.dtype(), view.shape()), (Dtype::F32, &shape[..]));
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_close(&format!("{name} all"), &actual.data, &values, 1e-6, 1e-3);
    }
}

/// Steps of global-norm clipping and the exercise's AdamW on the same batch: the norm
/// before each clip (rtol 1e-4) and the loss after each step (atol 1e-4).
fn clipped_adamw_steps_match(model: Llama<TB>, batch: &LmBatch<TB>, lm: &Value) {
    let steps = &lm["train_steps"];
    let hp = &steps["adamw"];
    let mut optim = AdamWConfig::new()
        .with_beta_1(num(&hp["betas"][0]))
        .with_beta_2(num(&hp["betas"][1]))
        .with_epsilon(num(&hp["eps"]))
        .with_weight_decay(num(&hp["weight_decay"]))
        .with_correct_bias(hp["correct_bias"].as_bool().expect("bool"))
        .init::<TB, Llama<TB>>()
        .expect("adamw");
    let expected_losses = floats(&steps["losses"]);
    let expected_norms = floats(&steps["pre_clip_grad_norms"]);
    let max_norm = num(&steps["grad_clip_global_norm"]);
    let mut model = model;
    let mut first_norm = None;
    for (step, &expected_norm) in expected_norms.iter().enumerate() {
        let loss = lm_loss(&model, batch);
        let value = f64::from(loss.clone().into_scalar());
        assert!(
            (value - f64::from(expected_losses[step])).abs() <= 1e-4,
            "loss before step {}: {value} vs {}",
            step + 1,
            expected_losses[step]
        );
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let (grads, norm) = clip_global_norm(&model, grads, max_norm);
        first_norm.get_or_insert(norm);
        assert_rel(
            &format!("step {} norm", step + 1),
            norm,
            f64::from(expected_norm),
            1e-4,
        );
        model = optim.step(num(&hp["lr"]), model, grads);
    }
    let last = f64::from(lm_loss(&model, batch).into_scalar());
    println!("losses: {expected_losses:?}, last {last}");
    assert!((last - f64::from(expected_losses[3])).abs() <= 1e-4);
    assert_rel(
        "total_grad_l2_norm",
        first_norm.expect("a step"),
        num(&lm["total_grad_l2_norm"]),
        1e-4,
    );
}
