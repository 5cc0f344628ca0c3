//! The fused attention (`llama_model`'s `model::fused_attention`) in whole training steps of
//! stories260K (grouped-query heads: 8 query heads over 4 key/value heads) on the training
//! backend (balanced checkpointing over ndarray): the loss and the gradients of a few
//! parameters equal those of the explicit chain (the same model with the fused attention off),
//! on sequences of more than one block of query rows, right-padded to different lengths.

use burn::backend::NdArray;
use burn::module::Param;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, Tensor, TensorData, Tolerance};
use llama_model::fixtures::fixture;
use llama_model::{load_checkpoint, Llama, LoadOptions};
use llama_train::classify::classifier::{nll_loss, ClassifierConfig};
use llama_train::lm::objective::{lm_loss, LmBatch};

type TB = llama_train::TrainBackend<NdArray>;
type Grads = <TB as AutodiffBackend>::Gradients;

/// Longer than one block of query rows (64), and not a multiple of it.
const SEQ: usize = 100;
/// Each row's real length: full, two across the block boundary, and a short one.
const LENGTHS: [i64; 4] = [100, 77, 65, 3];

/// Losses are O(1) and the gradients sums over a few hundred positions: the two summation
/// orders of f32 agree to a few units in the sixth digit.
fn tolerance() -> Tolerance<f32> {
    Tolerance::rel_abs(1e-4, 1e-6)
}

fn stories260k(fused: bool) -> (Llama<TB>, llama_model::LlamaConfig) {
    let loaded = load_checkpoint::<TB>(
        &fixture("models/stories260K/stories260K.bin"),
        &LoadOptions::default(),
        &Default::default(),
    )
    .expect("load stories260K");
    assert_eq!(
        loaded.config.dropout, 0.0,
        "the fused path needs no dropout"
    );
    (loaded.model.with_fused_attention(fused), loaded.config)
}

/// `[rows, width]` fixed, uneven token ids below the vocabulary of 512.
fn tokens(rows: usize, width: usize) -> Tensor<TB, 2, Int> {
    let ids = (0..rows * width)
        .map(|i| ((i * 37 + 11) % 500 + 1) as i64)
        .collect();
    Tensor::from_data(TensorData::new(ids, [rows, width]), &Default::default())
}

/// Parameters whose gradients are compared: the embeddings, the first and last layers'
/// attention projections and a norm.
fn watched(llama: &Llama<TB>, grads: &Grads) -> Vec<(&'static str, Vec<f32>)> {
    let last = llama.layers.len() - 1;
    let matrix = |name, p: &Param<Tensor<TB, 2>>| (name, values(p.grad(grads).expect(name)));
    vec![
        matrix("tok_embeddings", &llama.tok_embeddings.weight),
        matrix(
            "0.compute_query",
            &llama.layers[0].attention.compute_query.weight,
        ),
        matrix(
            "0.compute_key",
            &llama.layers[0].attention.compute_key.weight,
        ),
        matrix(
            "0.compute_value",
            &llama.layers[0].attention.compute_value.weight,
        ),
        matrix(
            "last.compute_key",
            &llama.layers[last].attention.compute_key.weight,
        ),
        (
            "0.attention_norm",
            values(
                llama.layers[0]
                    .attention_norm
                    .weight
                    .grad(grads)
                    .expect("norm"),
            ),
        ),
    ]
}

fn values<const D: usize>(t: Tensor<NdArray, D>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().expect("f32")
}

fn assert_same(fused: Vec<(&str, Vec<f32>)>, explicit: Vec<(&str, Vec<f32>)>) {
    for ((name, actual), (_, expected)) in fused.into_iter().zip(explicit) {
        assert!(
            expected.iter().any(|g| g.abs() > 1e-6),
            "{name}: no gradient"
        );
        let shape = [actual.len()];
        eprintln!("{name}");
        TensorData::new(actual, shape)
            .assert_approx_eq::<f32>(&TensorData::new(expected, shape), tolerance());
    }
}

/// A fine-tuning step (the classifier on each row's last real token) with the fused attention
/// on or off: its loss and watched gradients.
fn fine_tuning_step(fused: bool) -> Vec<(&'static str, Vec<f32>)> {
    let (llama, config) = stories260k(fused);
    let classifier = ClassifierConfig::new(config, 5)
        .with_hidden_dropout_prob(0.0)
        .init_with_llama(llama, 7)
        .expect("classifier");
    let device = Default::default();
    let lengths = Tensor::from_data(TensorData::new(LENGTHS.to_vec(), [4]), &device);
    let labels = Tensor::from_data(TensorData::new(vec![0i64, 3, 1, 4], [4]), &device);
    let loss = nll_loss(classifier.forward(tokens(4, SEQ), lengths), labels);
    let grads = loss.backward();
    let mut watched = watched(&classifier.llama, &grads);
    watched.push(("loss", values(loss.inner())));
    watched
}

/// A pretraining step (next-token cross-entropy at every position).
fn pretraining_step(fused: bool) -> Vec<(&'static str, Vec<f32>)> {
    let (llama, _) = stories260k(fused);
    let inputs = tokens(3, SEQ + 1);
    let batch = LmBatch {
        targets: inputs.clone().narrow(1, 1, SEQ),
        inputs: inputs.narrow(1, 0, SEQ),
    };
    let loss = lm_loss(&llama, &batch);
    let grads = loss.backward();
    let mut watched = watched(&llama, &grads);
    watched.push(("loss", values(loss.inner())));
    watched
}

#[test]
fn a_fine_tuning_step_equals_the_explicit_chain() {
    assert_same(fine_tuning_step(true), fine_tuning_step(false));
}

#[test]
fn a_pretraining_step_equals_the_explicit_chain() {
    assert_same(pretraining_step(true), pretraining_step(false));
}
