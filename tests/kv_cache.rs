//! The KV-cached decoding path against a full recomputation of the context at every step.

use crate::common;

use burn::tensor::{Int, Tensor, TensorData};
use common::*;
use llama_model::exercise::compare::compare;
use llama_model::generation::generate::{generate_uncached, GenerateConfig, Generator};
use llama_model::Llama;

/// The bound. On the plain ndarray backend the two paths differ by 1.7e-5 over 64
/// steps; a cache bug (wrong position, mask or key) gives differences of order 1. (ndarray's
/// optional SIMD kernels round alignment-dependently, 1e-4 to 6e-4 here: the workspace keeps
/// them off, see crates/llama-cli/Cargo.toml.)
const ATOL: f64 = 1e-4;

fn full_last_logits(model: &Llama<B>, context: &[u32]) -> Vec<f32> {
    let ids: Vec<i64> = context.iter().map(|&t| t as i64).collect();
    let input = Tensor::<B, 2, Int>::from_data(
        TensorData::new(ids, [1, context.len()]),
        &Default::default(),
    );
    values(model.forward_last(input).logits)
}

#[test]
fn the_cache_matches_full_recomputation() {
    let (model, _) = stories260k();
    let tok = tok512();
    let prompt = tok.encode("Once upon a time", true, false).unwrap();
    // Sampling (T = 1) rather than greedy leaves the well-trodden path of the reference.
    let config = GenerateConfig::new().with_max_new_tokens(64).with_seed(1);
    let mut generator = Generator::new(&model, &prompt, &config).unwrap();
    let mut context = prompt.clone();
    let mut worst = 0.0f64;
    // Not a `for` loop: the generator is borrowed again for its logits inside.
    while let Some(token) = generator.next() {
        let token = token.unwrap();
        let full = full_last_logits(&model, &context);
        let c = compare(generator.logits(), &full, ATOL, 0.0);
        assert!(c.passed(), "step {}: {c:?}", context.len() - prompt.len());
        worst = worst.max(c.max_abs_diff);
        context.push(token);
    }
    assert_eq!(context.len(), prompt.len() + 64);
    // The uncached loop samples the same tokens with the same seed.
    let reference = generate_uncached(&model, &prompt, &config).unwrap();
    assert_eq!(reference.tokens, context[prompt.len()..]);
    println!("largest |cached - recomputed| logit difference over 64 steps: {worst:e}");
}

/// Decoding with every weight product split into column blocks on rayon's pool (the CLI's
/// default on CPU backends) gives the same logits and tokens as one product per weight.
#[test]
fn split_decoding_matches_one_product_per_weight() {
    split_matches_whole();
}

/// The same from a worker of a two-thread pool, as the CLI decodes: there the other worker
/// polls for the products' blocks through each step instead of sleeping between them.
#[test]
fn split_decoding_on_the_pool_matches_one_product_per_weight() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("a two-thread pool");
    pool.install(split_matches_whole);
}

fn split_matches_whole() {
    let (model, _) = stories260k();
    let tok = tok512();
    let prompt = tok.encode("Once upon a time", true, false).unwrap();
    let config = GenerateConfig::new().with_max_new_tokens(48).with_seed(3);
    let mut whole = Generator::new(&model, &prompt, &config).unwrap();
    let split_config = config.clone().with_decode_split(3);
    let mut split = Generator::new(&model, &prompt, &split_config).unwrap();
    let mut worst = 0.0f64;
    for step in 0..48 {
        let a = whole.next().expect("token").unwrap();
        let b = split.next().expect("token").unwrap();
        let c = compare(split.logits(), whole.logits(), 1e-6, 0.0);
        assert!(c.passed(), "step {step}: {c:?}");
        worst = worst.max(c.max_abs_diff);
        assert_eq!(a, b, "step {step}");
    }
    println!("largest |split - whole| logit difference over 48 steps: {worst:e}");
}
