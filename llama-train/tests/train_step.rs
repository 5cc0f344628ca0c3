//! The classifier's forward pass, loss, gradients and AdamW steps against the PyTorch
//! reference (`reference/train-step-stories260K.json` and its safetensors twin).

use std::collections::HashMap;

use burn::backend::NdArray;
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use llama_model::fixtures::fixture;
use llama_model::{load_checkpoint, AdamWConfig, LoadOptions};
use llama_train::classify::classifier::{
    ClassifierConfig, LlamaEmbeddingClassifier, SentencePosition,
};
use serde_json::Value;

use crate::common;

use common::{assert_close, assert_rel, dims, floats};

/// What the CLI trains on (balanced checkpointing).
type TB = llama_train::TrainBackend<NdArray>;

fn json() -> Value {
    let path = fixture("reference/train-step-stories260K.json");
    let text = std::fs::read_to_string(&path).expect("read fixture");
    serde_json::from_str(&text).expect("parse fixture")
}

/// The float32 tensors of a safetensors file, by name (the format: u64 header length, a JSON
/// header of `{name: {dtype, shape, data_offsets}}`, then the raw little-endian data).
fn safetensors_f32(relative: &str) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(fixture(relative)).expect("read safetensors");
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + header_len]).expect("header");
    let data = &bytes[8 + header_len..];
    let mut out = HashMap::new();
    for (name, info) in header.as_object().expect("header object") {
        if name == "__metadata__" || info["dtype"] != "F32" {
            continue;
        }
        let shape = dims(&info["shape"]);
        let start = info["data_offsets"][0].as_u64().expect("offset") as usize;
        let end = info["data_offsets"][1].as_u64().expect("offset") as usize;
        let values = data[start..end]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        out.insert(name.clone(), (shape, values));
    }
    out
}

fn ints(v: &Value) -> (Vec<i64>, Vec<usize>) {
    let rows = v.as_array().expect("rows");
    let cols = rows[0].as_array().expect("row").len();
    let flat = rows
        .iter()
        .flat_map(|r| {
            r.as_array()
                .expect("row")
                .iter()
                .map(|x| x.as_i64().expect("int"))
        })
        .collect();
    (flat, vec![rows.len(), cols])
}

fn int_tensor<const D: usize>(values: Vec<i64>, shape: [usize; D]) -> Tensor<TB, D, Int> {
    Tensor::from_data(TensorData::new(values, shape), &Default::default())
}

fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().expect("f32 data")
}

/// The stories260K classifier with the fixture's head and no dropout.
fn classifier(fx: &Value, position: SentencePosition) -> LlamaEmbeddingClassifier<TB> {
    let device = Default::default();
    let loaded = load_checkpoint::<TB>(
        &fixture("models/stories260K/stories260K.bin"),
        &LoadOptions::default(),
        &device,
    )
    .expect("load stories260K");
    assert_eq!(loaded.config.dropout, 0.0);
    let head = &fx["classifier_head_init"];
    ClassifierConfig::new(loaded.config, 5)
        .with_hidden_dropout_prob(0.0)
        .with_position(position)
        .init_with_llama(loaded.model, 0)
        .expect("classifier")
        .with_head_weights(&floats(&head["weight"]), &floats(&head["bias"]))
        .expect("head weights")
}

struct Batch {
    tokens: Tensor<TB, 2, Int>,
    lengths: Tensor<TB, 1, Int>,
    labels: Tensor<TB, 1, Int>,
}

fn batch(case: &Value, lengths: Option<Vec<i64>>) -> Batch {
    let (ids, shape) = ints(&case["input_ids"]);
    let labels: Vec<i64> = case["labels"]
        .as_array()
        .expect("labels")
        .iter()
        .map(|l| l.as_i64().expect("label"))
        .collect();
    let lengths = lengths.unwrap_or_else(|| vec![shape[1] as i64; shape[0]]);
    Batch {
        tokens: int_tensor(ids, [shape[0], shape[1]]),
        lengths: int_tensor(lengths, [shape[0]]),
        labels: int_tensor(labels.clone(), [labels.len()]),
    }
}

fn loss_of(model: &LlamaEmbeddingClassifier<TB>, b: &Batch) -> (Tensor<TB, 2>, Tensor<TB, 1>) {
    let log_probs = model.forward(b.tokens.clone(), b.lengths.clone());
    let loss = llama_train::classify::classifier::nll_loss(log_probs.clone(), b.labels.clone());
    (log_probs, loss)
}

/// A parameter's gradient in PyTorch's layout (Linear weights transposed back to `[out, in]`).
fn grad_pt(
    model: &LlamaEmbeddingClassifier<TB>,
    grads: &<TB as AutodiffBackend>::Gradients,
    name: &str,
) -> Vec<f32> {
    let linear_t = |w: &Param<Tensor<TB, 2>>| to_vec(w.grad(grads).expect("grad").transpose());
    let plain2 = |w: &Param<Tensor<TB, 2>>| to_vec(w.grad(grads).expect("grad"));
    let plain1 = |w: &Param<Tensor<TB, 1>>| to_vec(w.grad(grads).expect("grad"));
    let l = &model.llama;
    match name {
        "classifier_head.weight" => linear_t(&model.classifier_head.weight),
        "classifier_head.bias" => plain1(model.classifier_head.bias.as_ref().expect("bias")),
        "llama.norm.weight" => plain1(&l.norm.weight),
        "llama.layers.4.feed_forward.w2.weight" => linear_t(&l.layers[4].feed_forward.w2.weight),
        "llama.layers.4.attention.compute_value.weight" => {
            linear_t(&l.layers[4].attention.compute_value.weight)
        }
        "llama.layers.0.attention.compute_query.weight" => {
            linear_t(&l.layers[0].attention.compute_query.weight)
        }
        "llama.layers.0.attention_norm.weight" => plain1(&l.layers[0].attention_norm.weight),
        "llama.tok_embeddings.weight" => plain2(&l.tok_embeddings.weight),
        other => panic!("no mapping for {other}"),
    }
}

/// Sum of squared gradients over every parameter (for the total L2 norm).
struct SquaredNorm<'a> {
    grads: &'a <TB as AutodiffBackend>::Gradients,
    sum: f64,
    params: usize,
    with_grad: usize,
}

impl ModuleVisitor<TB> for SquaredNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<TB, D>>) {
        self.params += 1;
        if let Some(g) = param.grad(self.grads) {
            self.with_grad += 1;
            self.sum += to_vec(g).iter().map(|&x| f64::from(x).powi(2)).sum::<f64>();
        }
    }
}

#[test]
fn unpadded_batch_matches_reference_forward_gradients_and_adamw() {
    let fx = json();
    let model = classifier(&fx, SentencePosition::LastToken);
    let b = batch(&fx, None);

    // Forward: log-probabilities and loss.
    let (log_probs, loss) = loss_of(&model, &b);
    assert_close(
        "log_probs",
        &to_vec(log_probs),
        &floats(&fx["log_probs"]),
        1e-5,
        0.0,
    );
    let loss_value = to_vec(loss.clone())[0];
    assert_close("loss", &[loss_value], &floats(&fx["loss"]), 1e-5, 0.0);

    // Backward: the eight named gradients, and the norm over every parameter.
    let grads = loss.backward();
    named_gradients_match(&model, &grads, &fx);
    total_gradient_norm_matches(&model, &grads, &fx);
    adamw_steps_match(model, &b, &fx);
}

/// The eight named gradients of the reference: norm, sum, first values, every value.
fn named_gradients_match(
    model: &LlamaEmbeddingClassifier<TB>,
    grads: &<TB as AutodiffBackend>::Gradients,
    fx: &Value,
) {
    let full = safetensors_f32("reference/train-step-stories260K.safetensors");
    for (name, expected) in fx["grads"].as_object().expect("grads") {
        let actual = grad_pt(model, grads, name);
        let shape = dims(&expected["shape"]);
        assert_eq!(actual.len(), shape.iter().product::<usize>(), "{name} size");
        let norm = actual
            .iter()
            .map(|&x| f64::from(x).powi(2))
            .sum::<f64>()
            .sqrt();
        let sum: f64 = actual.iter().map(|&x| f64::from(x)).sum();
        assert_rel(
            &format!("{name} l2"),
            norm,
            expected["l2_norm"].as_f64().expect("l2"),
            1e-4,
        );
        // Sums that cancel to ~0 (the head's, by construction of log_softmax) are checked
        // absolutely against the gradient's scale instead.
        let expected_sum = expected["sum"].as_f64().expect("sum");
        if expected_sum.abs() < 1e-4 * norm {
            println!("{name} sum: {sum:e} vs {expected_sum:e} (cancels)");
            assert!(
                (sum - expected_sum).abs() <= 1e-4 * norm,
                "{name} sum {sum} vs {expected_sum}"
            );
        } else {
            assert_rel(&format!("{name} sum"), sum, expected_sum, 1e-4);
        }
        let first = floats(&expected["first_values"]);
        assert_close(
            &format!("{name} first"),
            &actual[..first.len()],
            &first,
            1e-6,
            1e-3,
        );
        let (full_shape, full_values) = &full[&format!("grad.{name}")];
        assert_eq!(full_shape, &shape, "{name} safetensors shape");
        assert_close(&format!("{name} full"), &actual, full_values, 1e-6, 1e-3);
    }
}

/// The gradient's norm over every parameter, each of which gets a gradient.
fn total_gradient_norm_matches(
    model: &LlamaEmbeddingClassifier<TB>,
    grads: &<TB as AutodiffBackend>::Gradients,
    fx: &Value,
) {
    let mut visitor = SquaredNorm {
        grads,
        sum: 0.0,
        params: 0,
        with_grad: 0,
    };
    model.visit(&mut visitor);
    println!(
        "{} parameters, {} with a gradient",
        visitor.params, visitor.with_grad
    );
    assert_eq!(
        visitor.with_grad, visitor.params,
        "every parameter gets a gradient"
    );
    assert_rel(
        "total_grad_l2_norm",
        visitor.sum.sqrt(),
        fx["total_grad_l2_norm"].as_f64().expect("norm"),
        1e-4,
    );
}

/// Three AdamW steps (lr 1e-3, weight decay 0, every parameter) on the same batch: the
/// losses and chosen parameters after them.
fn adamw_steps_match(model: LlamaEmbeddingClassifier<TB>, b: &Batch, fx: &Value) {
    let hp = &fx["adamw"];
    let num = |v: &Value| v.as_f64().expect("number");
    let config = AdamWConfig::new()
        .with_beta_1(num(&hp["betas"][0]))
        .with_beta_2(num(&hp["betas"][1]))
        .with_epsilon(num(&hp["eps"]))
        .with_weight_decay(num(&hp["weight_decay"]))
        .with_correct_bias(hp["correct_bias"].as_bool().expect("bool"));
    let mut optim = config
        .init::<TB, LlamaEmbeddingClassifier<TB>>()
        .expect("valid AdamW config");
    let expected_losses = floats(&hp["losses"]);
    let mut model = model;
    let mut loss = loss_of(&model, b).1;
    for (step, expected) in expected_losses.iter().enumerate().skip(1) {
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(num(&hp["lr"]), model, grads);
        loss = loss_of(&model, b).1;
        assert_close(
            &format!("loss after {step} AdamW steps"),
            &to_vec(loss.clone()),
            &[*expected],
            1e-4,
            0.0,
        );
    }
    let after = &hp["params_after_3_steps"];
    let bias = to_vec(model.classifier_head.bias.as_ref().expect("bias").val());
    assert_close(
        "bias after 3 steps",
        &bias,
        &floats(&after["classifier_head.bias"]),
        1e-5,
        1e-3,
    );
    // PyTorch's weight[0, :8] is column 0 of Burn's [in, out] weight.
    let w0 = to_vec(
        model
            .classifier_head
            .weight
            .val()
            .transpose()
            .narrow(0, 0, 1)
            .narrow(1, 0, 8),
    );
    assert_close(
        "head weight[0,:8] after 3 steps",
        &w0,
        &floats(&after["classifier_head.weight[0,:8]"]),
        1e-5,
        1e-3,
    );
    let norm = to_vec(model.llama.norm.weight.val().narrow(0, 0, 8));
    assert_close(
        "norm weight[:8] after 3 steps",
        &norm,
        &floats(&after["llama.norm.weight[:8]"]),
        1e-5,
        1e-3,
    );
    let wq = to_vec(
        model.llama.layers[0]
            .attention
            .compute_query
            .weight
            .val()
            .transpose()
            .narrow(0, 0, 1)
            .narrow(1, 0, 8),
    );
    assert_close(
        "wq[0,:8] after 3 steps",
        &wq,
        &floats(&after["llama.layers.0.attention.compute_query.weight[0,:8]"]),
        1e-5,
        1e-3,
    );
}

#[test]
fn padded_batch_matches_the_exercise_convention() {
    let fx = json();
    let case = &fx["padded_batch_assignment_convention"];
    let lengths: Vec<i64> = case["lengths_without_padding"]
        .as_array()
        .expect("lengths")
        .iter()
        .map(|l| l.as_i64().expect("length"))
        .collect();

    // The exercise reads position -1 whatever the padding.
    let model = classifier(&fx, SentencePosition::LastPosition);
    let b = batch(case, Some(lengths.clone()));
    let (log_probs, loss) = loss_of(&model, &b);
    assert_close(
        "padded log_probs",
        &to_vec(log_probs),
        &floats(&case["log_probs"]),
        1e-5,
        0.0,
    );
    assert_close(
        "padded loss",
        &to_vec(loss.clone()),
        &floats(&case["loss"]),
        1e-5,
        0.0,
    );
    let grads = loss.backward();
    let g = grad_pt(&model, &grads, "classifier_head.weight");
    let expected = &case["grad_classifier_head.weight"];
    let norm = g.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    assert_rel(
        "padded head grad l2",
        norm,
        expected["l2_norm"].as_f64().expect("l2"),
        1e-4,
    );
    let first = floats(&expected["first_values"]);
    assert_close(
        "padded head grad first",
        &g[..first.len()],
        &first,
        1e-6,
        1e-3,
    );

    // Reading each row's last real token instead gives, for every row, what that sentence
    // gives alone without padding.
    let model = classifier(&fx, SentencePosition::LastToken);
    let padded = to_vec(model.forward(b.tokens.clone(), b.lengths.clone()));
    for (row, &len) in lengths.iter().enumerate() {
        let tokens = b
            .tokens
            .clone()
            .narrow(0, row, 1)
            .narrow(1, 0, len as usize);
        let alone = to_vec(model.forward(tokens, int_tensor(vec![len], [1])));
        assert_close(
            &format!("row {row} padded vs alone"),
            &padded[row * 5..row * 5 + 5],
            &alone,
            1e-5,
            0.0,
        );
    }
}

/// The last, partial batch of an epoch: the exercise divides the summed NLL by the configured
/// `batch_size` (`nll_loss(..., reduction="sum") / args.batch_size`), not by the rows present.
/// Three of the fixture's four rows, with the configured batch size 4: the head-bias gradient
/// must be `sum_i (softmax_i - onehot(label_i)) / 4`, computed here from the fixture's
/// log-probabilities (each row's are independent of the others'); dividing by 3 would be 4/3
/// of it.
#[test]
fn a_partial_batch_divides_the_loss_by_the_configured_batch_size() {
    use burn::train::TrainStep;
    use llama_train::data::sentences::make_batch;

    let fx = json();
    let model = classifier(&fx, SentencePosition::LastToken);
    let (ids, shape) = ints(&fx["input_ids"]);
    let labels: Vec<usize> = fx["labels"]
        .as_array()
        .expect("labels")
        .iter()
        .map(|l| l.as_u64().expect("label") as usize)
        .collect();
    let configured = fx["batch_size"].as_u64().expect("batch_size") as usize;
    assert_eq!(configured, 4);
    let rows: Vec<Vec<u32>> = ids
        .chunks(shape[1])
        .take(3)
        .map(|r| r.iter().map(|&x| x as u32).collect())
        .collect();
    let log_probs = floats(&fx["log_probs"]);
    let classes = log_probs.len() / shape[0];
    let bias_gradient = |divisor: usize| -> Vec<f32> {
        let mut g = vec![0f64; classes];
        for (row, &label) in labels.iter().take(3).enumerate() {
            for (c, value) in g.iter_mut().enumerate() {
                let p = f64::from(log_probs[row * classes + c]).exp();
                *value += p - f64::from(u8::from(c == label));
            }
        }
        g.iter().map(|v| (v / divisor as f64) as f32).collect()
    };

    let bias_id = model.classifier_head.bias.as_ref().expect("bias").id;
    for (divisor, expected) in [
        (Some(configured), bias_gradient(configured)),
        (None, bias_gradient(3)),
    ] {
        let mut b = make_batch::<TB, _>(&rows, &labels[..3], 3, &Default::default());
        b.loss_divisor = divisor;
        let output = TrainStep::step(&model, b);
        let actual = to_vec(
            output
                .grads
                .get::<NdArray, 1>(bias_id)
                .expect("head bias gradient"),
        );
        assert_close(
            &format!("head bias gradient, divisor {divisor:?}"),
            &actual,
            &expected,
            1e-6,
            1e-4,
        );
    }
}
