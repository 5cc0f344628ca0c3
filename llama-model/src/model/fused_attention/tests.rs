//! The fused attention against the explicit chain ([`Attention::mix`]): outputs and the
//! gradients of q, k and v within 1e-5 (absolute, f32), on ndarray and flex, plain and under
//! autodiff with and without balanced checkpointing. The shapes exercise grouped-query heads,
//! a sequence of more than one block that is not a multiple of the block, batch 2 and padding.

use super::*;
use crate::model::attention::{Attention, AttentionConfig};
use crate::model::llama::MASKED;
use crate::model::param_source::RandomInit;
use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
use burn::backend::{Autodiff, Flex, NdArray};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, TensorData, Tolerance};

const BATCH: usize = 2;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const SEQ: usize = blocks::BLOCK_ROWS + 13;
const HEAD_DIM: usize = 8;
/// Padding positions of the batch's second row.
const PAD: usize = 9;

/// Outputs are O(1) and gradients O(1) sums of a few dozen terms: f32 rounding of two
/// summation orders stays far below this.
fn tolerance() -> Tolerance<f32> {
    Tolerance::absolute(1e-5)
}

/// Fixed, uneven values of `shape`, different per `seed`.
fn floats<B: Backend, const D: usize>(shape: [usize; D], seed: f32) -> Tensor<B, D> {
    let n = shape.iter().product::<usize>();
    let values = (0..n)
        .map(|i| ((i as f32 + seed) * 0.731).sin() * 1.5)
        .collect();
    Tensor::from_data(TensorData::new(values, shape), &Default::default())
}

/// `[BATCH, SEQ, SEQ]`: causal, and the second row right-padded (its last `PAD` keys hidden
/// from every query), as a right-padded batch is.
fn right_padded<B: Backend>() -> Tensor<B, 3> {
    mask::<B>(|b, t, k| k > t || (b == 1 && k >= SEQ - PAD))
}

/// `[BATCH, SEQ, SEQ]`: causal, and the second row left-padded (its first `PAD` keys hidden),
/// so that its first queries see no key at all (a uniform distribution over every key).
fn left_padded<B: Backend>() -> Tensor<B, 3> {
    mask::<B>(|b, t, k| k > t || (b == 1 && k < PAD))
}

fn mask<B: Backend>(hidden: impl Fn(usize, usize, usize) -> bool) -> Tensor<B, 3> {
    let values = (0..BATCH * SEQ * SEQ)
        .map(|i| {
            let (b, t, k) = (i / (SEQ * SEQ), i / SEQ % SEQ, i % SEQ);
            if hidden(b, t, k) {
                MASKED
            } else {
                0.0
            }
        })
        .collect();
    Tensor::from_data(
        TensorData::new(values, [BATCH, SEQ, SEQ]),
        &Default::default(),
    )
}

fn attention<B: Backend>() -> Attention<B> {
    let config = AttentionConfig::new(HEADS * HEAD_DIM, HEADS, KV_HEADS);
    let Ok(attention) = config.build("", &mut RandomInit::new(&Default::default()));
    attention
}

/// [`fused_attention`] laid out as [`Attention::mix`]'s `[batch, seq, n_heads * head_dim]`.
fn fused<B: Backend>(inputs: Inputs<B>) -> Tensor<B, 3> {
    let Ok(out) = fused_attention(inputs) else {
        panic!("no fused attention on {}", B::name(&Default::default()));
    };
    let [batch, h, seq, hd] = out.dims();
    out.swap_dims(1, 2).reshape([batch, seq, h * hd])
}

/// The masks the tests run, with the keys each lets the fused attention skip.
fn cases<B: Backend>() -> [(Option<Tensor<B, 3>>, Keys); 4] {
    [
        (Some(right_padded()), Keys::Causal),
        (Some(right_padded()), Keys::All),
        (Some(left_padded()), Keys::All),
        (None, Keys::All),
    ]
}

fn check_forward<B: Backend>() {
    let q = floats::<B, 4>([BATCH, HEADS, SEQ, HEAD_DIM], 0.0);
    let k = floats::<B, 4>([BATCH, KV_HEADS, SEQ, HEAD_DIM], 1.0);
    let v = floats::<B, 4>([BATCH, KV_HEADS, SEQ, HEAD_DIM], 2.0);
    for (mask, keys) in cases::<B>() {
        let expected = attention::<B>().mix(q.clone(), k.clone(), v.clone(), mask.clone());
        let actual = fused((q.clone(), k.clone(), v.clone(), mask, keys));
        actual
            .into_data()
            .assert_approx_eq::<f32>(&expected.into_data(), tolerance());
    }
}

/// Outputs and the gradients of the leaves q, k and v are derived from (so that balanced
/// checkpointing recomputes the op's inputs) agree with the explicit chain's.
fn check_gradients<B: AutodiffBackend>() {
    let leaves = || {
        (
            floats::<B, 4>([BATCH, HEADS, SEQ, HEAD_DIM], 0.0).require_grad(),
            floats::<B, 4>([BATCH, KV_HEADS, SEQ, HEAD_DIM], 1.0).require_grad(),
            floats::<B, 4>([BATCH, KV_HEADS, SEQ, HEAD_DIM], 2.0).require_grad(),
        )
    };
    // A fixed, uneven weighting of the output, so that every element's gradient differs.
    let weights = floats::<B, 3>([BATCH, SEQ, HEADS * HEAD_DIM], 3.0);
    for (mask, keys) in cases::<B>() {
        let run = |fused_path: bool| {
            let (ql, kl, vl) = leaves();
            let (q, k, v) = (ql.clone() * 1.5, kl.clone() - 0.25, vl.clone().exp());
            let out = if fused_path {
                fused((q, k, v, mask.clone(), keys))
            } else {
                attention::<B>().mix(q, k, v, mask.clone())
            };
            let grads = (out.clone() * weights.clone()).sum().backward();
            let grad = |leaf: &Tensor<B, 4>| leaf.grad(&grads).expect("a gradient");
            let out = out.inner().reshape([BATCH, SEQ, HEADS, HEAD_DIM]);
            (out, grad(&ql), grad(&kl), grad(&vl))
        };
        let expected = run(false);
        let actual = run(true);
        let names = ["output", "dq", "dk", "dv"];
        let expected = [expected.0, expected.1, expected.2, expected.3];
        let actual = [actual.0, actual.1, actual.2, actual.3];
        for ((name, expected), actual) in names.iter().zip(expected).zip(actual) {
            assert!(
                expected.clone().abs().max().into_scalar().elem::<f32>() > 1e-3,
                "{name}: all zero"
            );
            // Names the failing comparison (the assertion's message does not).
            eprintln!("{} {name}, {keys:?}", B::name(&Default::default()));
            actual
                .into_data()
                .assert_approx_eq::<f32>(&expected.into_data(), tolerance());
        }
    }
}

#[test]
fn the_forward_equals_the_explicit_chain_on_plain_backends() {
    check_forward::<NdArray>();
    check_forward::<Flex>();
}

#[test]
fn outputs_and_gradients_equal_the_explicit_chain_on_ndarray() {
    check_gradients::<Autodiff<NdArray>>();
    check_gradients::<Autodiff<NdArray, BalancedCheckpointing>>();
}

#[test]
fn outputs_and_gradients_equal_the_explicit_chain_on_flex() {
    check_gradients::<Autodiff<Flex>>();
    check_gradients::<Autodiff<Flex, BalancedCheckpointing>>();
}
