//! Tests of [`super`]: the cached loop against the uncached reference, batches, stops,
//! sampling controls, errors.

use super::*;
use crate::model::config::LlamaConfig;
use burn::backend::NdArray;

pub(crate) type B = NdArray;

/// A random model with a short context, to exercise cropping.
pub(crate) fn tiny(max_seq_len: usize) -> Llama<B> {
    LlamaConfig::new(16, 2, 4, 40)
        .with_n_kv_heads(Some(2))
        .with_max_seq_len(max_seq_len)
        .init(&Default::default())
}

#[test]
fn invalid_input_is_a_typed_error() {
    let model = tiny(8);
    let config = GenerateConfig::greedy(3);
    assert!(matches!(
        generate(&model, &[], &config, |_| {}),
        Err(GenerateError::EmptyPrompt { index: 0 })
    ));
    assert!(matches!(
        generate(&model, &[1, 40], &config, |_| {}),
        Err(GenerateError::TokenOutOfRange {
            position: 1,
            id: 40,
            ..
        })
    ));
    assert!(matches!(
        generate_batch(&model, &[], &config),
        Err(GenerateError::EmptyBatch)
    ));
    assert!(matches!(
        generate_batch(&model, &[vec![1], vec![]], &config),
        Err(GenerateError::EmptyPrompt { index: 1 })
    ));
    for bad in [
        config.clone().with_temperature(-1.0),
        config.clone().with_temperature(f64::NAN),
        config.clone().with_top_p(Some(0.0)),
        config.clone().with_top_p(Some(1.5)),
    ] {
        assert!(bad.validate().is_err());
        assert!(matches!(
            generate(&model, &[1], &bad, |_| {}),
            Err(GenerateError::Sampling(_))
        ));
    }
}

#[test]
fn zero_tokens_runs_nothing() {
    let model = tiny(8);
    let g = generate(&model, &[1, 2, 3], &GenerateConfig::greedy(0), |_| {}).unwrap();
    assert!(g.tokens.is_empty());
    assert_eq!(g.stop_reason, StopReason::MaxNewTokens);
    assert_eq!(g.stats.time_to_first_token, None);
    assert_eq!(g.stats.tokens_per_second(), None);
}

#[test]
fn cropping_matches_the_uncached_reference() {
    // Context 6, prompts of 3 and 9 tokens (the latter cropped from the start), 12 steps.
    let model = tiny(6);
    for prompt in [vec![1u32, 5, 7], (1..10).collect()] {
        for config in [
            GenerateConfig::greedy(12),
            GenerateConfig::new().with_max_new_tokens(12).with_seed(3),
        ] {
            let cached = generate(&model, &prompt, &config, |_| {}).unwrap();
            let reference = generate_uncached(&model, &prompt, &config).unwrap();
            assert_eq!(cached.tokens, reference.tokens, "{prompt:?} {config:?}");
            assert!(cached.stats.context_resets > 0);
            assert_eq!(cached.stats.context_resets, reference.stats.context_resets);
        }
    }
}

#[test]
fn batches_crop_like_rows_alone() {
    // Rows of 3, 9 (cropped at once) and 1 tokens in a context of 6.
    let model = tiny(6);
    let prompts = vec![vec![1, 5, 7], (1..10).collect(), vec![3]];
    for config in [
        GenerateConfig::greedy(12),
        GenerateConfig::new().with_max_new_tokens(12).with_seed(3),
    ] {
        let batch = generate_batch(&model, &prompts, &config).unwrap();
        for (row, prompt) in prompts.iter().enumerate() {
            let seed = config.seed + row as u64;
            let alone = generate_uncached(&model, prompt, &config.clone().with_seed(seed));
            assert_eq!(batch.tokens[row], alone.unwrap().tokens, "row {row}");
        }
        assert!(batch.stats.context_resets > 0);
    }
}

/// The penalties and filters act in the cached loop as in the uncached reference (the
/// same sampler sees the same logits and history), greedy and sampled, and a strong
/// repetition penalty changes a greedy text that repeats.
#[test]
fn sampling_controls_act_alike_with_and_without_the_cache() {
    let model = tiny(64);
    let prompt = [1u32, 7, 7, 12];
    let plain = GenerateConfig::greedy(24);
    let controlled = plain
        .clone()
        .with_repetition_penalty(1.8)
        .with_presence_penalty(0.5)
        .with_frequency_penalty(0.3);
    let sampled = controlled
        .clone()
        .with_temperature(0.9)
        .with_top_k(Some(5))
        .with_top_p(Some(0.95))
        .with_min_p(Some(0.05))
        .with_seed(3);
    for config in [&controlled, &sampled] {
        let cached = generate(&model, &prompt, config, |_| {}).unwrap();
        let reference = generate_uncached(&model, &prompt, config).unwrap();
        assert_eq!(cached.tokens, reference.tokens, "{config:?}");
    }
    let repeats = |tokens: &[u32]| {
        let distinct: std::collections::HashSet<_> = tokens.iter().collect();
        tokens.len() - distinct.len()
    };
    let before = generate(&model, &prompt, &plain, |_| {}).unwrap().tokens;
    let after = generate(&model, &prompt, &controlled, |_| {})
        .unwrap()
        .tokens;
    assert!(
        repeats(&after) < repeats(&before),
        "{before:?} -> {after:?}"
    );
    let bad = plain.clone().with_top_k(Some(0));
    assert!(matches!(
        generate(&model, &prompt, &bad, |_| {}),
        Err(GenerateError::Sampling(SamplingError::InvalidControl {
            name: "top_k",
            ..
        }))
    ));
}

/// Decoding past the model's precomputed RoPE positions grows the engine's tables: the
/// tokens equal those of full passes, which compute the angles per call; a batch whose
/// rows start at different offsets (per-row positions) too.
#[test]
fn decoding_past_the_precomputed_tables_matches_the_uncached_reference() {
    use crate::model::rope::TABLE_POSITIONS;
    let model = tiny(TABLE_POSITIONS + 64);
    assert_eq!(model.rope().max_seq_len(), TABLE_POSITIONS);
    let prompt: Vec<u32> = (0..TABLE_POSITIONS - 2)
        .map(|i| (i * 7 % 39) as u32 + 1)
        .collect();
    let config = GenerateConfig::greedy(5);
    let cached = generate(&model, &prompt, &config, |_| {}).unwrap();
    let reference = generate_uncached(&model, &prompt, &config).unwrap();
    assert_eq!(cached.tokens, reference.tokens);

    let prompts = vec![prompt.clone(), prompt[3..].to_vec()];
    let batch = generate_batch(&model, &prompts, &config).unwrap();
    assert_eq!(batch.tokens[0], reference.tokens);
    let alone = generate_uncached(&model, &prompts[1], &config.clone().with_seed(1)).unwrap();
    assert_eq!(batch.tokens[1], alone.tokens);
}

#[test]
fn stop_tokens_end_generation_and_are_not_returned() {
    let model = tiny(8);
    let greedy = generate(&model, &[1], &GenerateConfig::greedy(5), |_| {}).unwrap();
    let first = greedy.tokens[0];
    // Declare the greedy first token to be EOS / BOS.
    let config = GenerateConfig::greedy(5)
        .with_stop_at_eos(true)
        .with_eos_id(first);
    let mut seen = vec![];
    let g = generate(&model, &[1], &config, |t| seen.push(t)).unwrap();
    assert_eq!(
        (g.tokens.len(), seen.len(), g.stop_reason),
        (0, 0, StopReason::Eos)
    );
    assert_eq!(g.stats.generated_tokens, 1);
    let config = GenerateConfig::greedy(5)
        .with_stop_at_bos(true)
        .with_bos_id(first);
    let g = generate_uncached(&model, &[1], &config).unwrap();
    assert_eq!((g.tokens.len(), g.stop_reason), (0, StopReason::Bos));
    // The flags are off by default.
    let config = GenerateConfig::greedy(5).with_eos_id(first);
    assert_eq!(
        generate(&model, &[1], &config, |_| {}).unwrap().tokens,
        greedy.tokens
    );
}

#[test]
fn any_of_the_further_eos_ids_ends_generation() {
    let model = tiny(8);
    let greedy = generate(&model, &[1], &GenerateConfig::greedy(6), |_| {}).unwrap();
    // The third greedy token is one of two further EOS ids; EOS itself never comes.
    let stop = greedy.tokens[2];
    let unused = (0..40).find(|t| !greedy.tokens.contains(t)).unwrap();
    let config = GenerateConfig::greedy(6)
        .with_stop_at_eos(true)
        .with_eos_id(unused)
        .with_eos_ids(vec![unused, stop]);
    let first = greedy.tokens.iter().position(|&t| t == stop).unwrap();
    for g in [
        generate(&model, &[1], &config, |_| {}).unwrap(),
        generate_uncached(&model, &[1], &config).unwrap(),
    ] {
        assert_eq!(g.tokens, greedy.tokens[..first]);
        assert_eq!(g.stop_reason, StopReason::Eos);
    }
}

#[test]
fn batch_rows_that_stop_early_do_not_disturb_the_others() {
    let model = tiny(8);
    let prompts = vec![vec![1, 4], vec![1, 9, 9, 3, 2], vec![1]];
    let alone: Vec<_> = prompts
        .iter()
        .map(|p| generate(&model, p, &GenerateConfig::greedy(10), |_| {}).unwrap())
        .collect();
    // Make row 1's third token a stop token.
    let stop = alone[1].tokens[2];
    let config = GenerateConfig::greedy(10)
        .with_stop_at_eos(true)
        .with_eos_id(stop);
    let batch = generate_batch(&model, &prompts, &config).unwrap();
    for (row, single) in prompts.iter().enumerate() {
        let expected = generate(&model, single, &config, |_| {}).unwrap();
        assert_eq!(batch.tokens[row], expected.tokens, "row {row}");
        assert_eq!(batch.stop_reasons[row], expected.stop_reason, "row {row}");
    }
    assert_eq!(batch.stop_reasons[1], StopReason::Eos);
}
