//! Text generation on stories260K against the reference (`generate-stories260K.json`): greedy
//! ids and texts, the KV cache against full recomputation, batching, cropping past the
//! context length, and the sampler's distribution.

use crate::common;

use burn::tensor::{Int, Tensor, TensorData};
use common::*;
use llama_model::generation::generate::{
    generate, generate_batch, generate_text, generate_uncached, GenerateConfig, StopReason,
};
use llama_model::generation::sampling::{probabilities, Sampler};
use llama_model::Llama;
use serde_json::Value;

fn reference() -> Value {
    let path = fixture("reference/generate-stories260K.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn input(ids: &[u32]) -> Tensor<B, 2, Int> {
    let data: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    Tensor::from_data(TensorData::new(data, [1, ids.len()]), &Default::default())
}

/// Logits `[vocab]` of the last position of a full (uncached) pass over `context`.
fn full_last_logits(model: &Llama<B>, context: &[u32]) -> Vec<f32> {
    values(model.forward_last(input(context)).logits)
}

#[test]
fn greedy_from_bos_prints_the_reference_story() {
    let (model, _) = stories260k();
    let tok = tok512();
    let case = &reference()["from_bos"];
    let prompt = ids(&case["input_ids"]);
    assert_eq!(prompt, [tok.bos_id()]);
    let expected = ids(&case["new_ids"]);
    let config = GenerateConfig::greedy(200);

    let mut chunks = vec![];
    let out = generate_text(&model, &tok, &prompt, &config, |chunk| {
        chunks.push(chunk.to_string())
    })
    .unwrap();
    assert_eq!(out.generation.tokens, expected);
    assert_eq!(out.generation.stop_reason, StopReason::MaxNewTokens);
    // After BOS the first piece's leading space is dropped, so the stream is the story.
    let text = case["text"].as_str().unwrap();
    assert_eq!(out.text, text);
    assert_eq!(chunks.concat(), text);
    assert!(chunks.len() > 100, "text arrives piece by piece");
    assert_eq!(tok.decode(&ids(&case["output_ids"])).unwrap(), text);

    let stats = out.generation.stats;
    assert_eq!((stats.prompt_tokens, stats.generated_tokens), (1, 200));
    assert_eq!(stats.decode_tokens, 199);
    assert!(stats.time_to_first_token.is_some());
    assert!(stats.tokens_per_second().is_some_and(|t| t > 0.0));
    assert_eq!(stats.context_resets, 0);
    println!(
        "dev-profile NdArray: time to first token {:?}, {:.0} tokens/s",
        stats.time_to_first_token.unwrap(),
        stats.tokens_per_second().unwrap()
    );
}

#[test]
fn prompt_continuations_match_the_reference() {
    let (model, _) = stories260k();
    let tok = tok512();
    for case in reference()["prompts"].as_array().unwrap() {
        let prompt_text = case["prompt"].as_str().unwrap();
        let prompt = tok.encode(prompt_text, true, false).unwrap();
        assert_eq!(prompt, ids(&case["prompt_ids"]), "{prompt_text}");
        let n = case["max_new_tokens"].as_u64().unwrap() as usize;

        let mut seen = vec![];
        let out = generate(&model, &prompt, &GenerateConfig::greedy(n), |t| {
            seen.push(t)
        })
        .unwrap();
        assert_eq!(out.tokens, ids(&case["new_ids"]), "{prompt_text}");
        assert_eq!(seen, out.tokens);
        let all = [prompt.clone(), out.tokens.clone()].concat();
        assert_eq!(all, ids(&case["output_ids"]));
        assert_eq!(tok.decode(&all).unwrap(), case["text"].as_str().unwrap());

        // Streaming after the prompt: the new text keeps its leading space.
        let streamed =
            generate_text(&model, &tok, &prompt, &GenerateConfig::greedy(n), |_| {}).unwrap();
        assert_eq!(
            streamed.text,
            case["new_text"].as_str().unwrap(),
            "{prompt_text}"
        );
    }
}

#[test]
fn batched_prompts_equal_prompts_alone() {
    let (model, _) = stories260k();
    let reference = reference();
    let cases = reference["prompts"].as_array().unwrap();
    // Lengths 1, 5, 5, 4: left padding of up to 4 columns.
    let mut prompts = vec![vec![1u32]];
    prompts.extend(cases.iter().map(|c| ids(&c["prompt_ids"])));

    let greedy = GenerateConfig::greedy(64);
    let batch = generate_batch(&model, &prompts, &greedy).unwrap();
    assert_eq!(
        batch.tokens[0],
        ids(&reference["from_bos"]["new_ids"])[..64]
    );
    for (row, case) in cases.iter().enumerate() {
        assert_eq!(
            batch.tokens[row + 1],
            ids(&case["new_ids"]),
            "row {}",
            row + 1
        );
    }
    assert!(batch
        .stop_reasons
        .iter()
        .all(|&r| r == StopReason::MaxNewTokens));
    assert_eq!(batch.stats.generated_tokens, 4 * 64);
    assert_eq!(batch.stats.prompt_tokens, 1 + 5 + 5 + 4);

    // Sampling: row i uses seed + i and reproduces the prompt run alone with that seed.
    let sampled = GenerateConfig::new().with_max_new_tokens(24).with_seed(10);
    let batch = generate_batch(&model, &prompts, &sampled).unwrap();
    for (row, prompt) in prompts.iter().enumerate() {
        let alone = generate(
            &model,
            prompt,
            &sampled.clone().with_seed(10 + row as u64),
            |_| {},
        )
        .unwrap();
        assert_eq!(batch.tokens[row], alone.tokens, "row {row}");
    }
}

/// stories260K with its context length cut to `max_seq_len` (rotary tables rebuilt to
/// match), so generation runs past it quickly.
fn short_context_model(max_seq_len: usize) -> Llama<B> {
    stories260k().0.with_max_seq_len(max_seq_len)
}

#[test]
fn generation_past_the_context_length_crops_like_the_exercise() {
    let model = short_context_model(16);
    let tok = tok512();
    let short = tok.encode("Once upon a time", true, false).unwrap();
    let long = tok
        .encode(
            "Lily and Tom were playing in the park. They liked to play",
            true,
            false,
        )
        .unwrap();
    assert!(long.len() > 16, "the long prompt itself is cropped");
    for prompt in [&short, &long] {
        for config in [
            GenerateConfig::greedy(30),
            GenerateConfig::new().with_max_new_tokens(30).with_seed(5),
        ] {
            let cached = generate(&model, prompt, &config, |_| {}).unwrap();
            let uncached = generate_uncached(&model, prompt, &config).unwrap();
            assert_eq!(cached.tokens.len(), 30);
            assert_eq!(cached.tokens, uncached.tokens, "{prompt:?} {config:?}");
            // Every step whose context exceeds 16 tokens ran a cropped window.
            let expected_resets = (0..30).filter(|k| prompt.len() + k > 16).count();
            assert_eq!(cached.stats.context_resets, expected_resets);
            assert_eq!(uncached.stats.context_resets, expected_resets);
        }
    }
    // A batch whose rows cross the limit at different steps.
    let prompts = vec![short.clone(), long.clone(), vec![1]];
    let config = GenerateConfig::greedy(30);
    let batch = generate_batch(&model, &prompts, &config).unwrap();
    for (row, prompt) in prompts.iter().enumerate() {
        let uncached = generate_uncached(&model, prompt, &config).unwrap();
        assert_eq!(batch.tokens[row], uncached.tokens, "row {row}");
    }
}

#[test]
fn a_seed_repeats_its_text() {
    let (model, _) = stories260k();
    let config = GenerateConfig::new()
        .with_max_new_tokens(40)
        .with_temperature(0.9)
        .with_top_p(Some(0.9))
        .with_seed(1234);
    let a = generate(&model, &[1], &config, |_| {}).unwrap();
    let b = generate(&model, &[1], &config, |_| {}).unwrap();
    assert_eq!(a.tokens, b.tokens);
    let c = generate(&model, &[1], &config.clone().with_seed(1235), |_| {}).unwrap();
    assert_ne!(a.tokens, c.tokens, "another seed tells another story");
}

#[test]
fn stopping_at_bos_ends_a_story() {
    let (model, _) = stories260k();
    // Find a seed whose story ends (samples BOS) within 200 tokens at T = 1.
    let free = GenerateConfig::new().with_max_new_tokens(200);
    let (seed, story) = (0..20)
        .find_map(|seed| {
            let out = generate(&model, &[1], &free.clone().with_seed(seed), |_| {}).unwrap();
            let end = out.tokens.iter().position(|&t| t == 1)?;
            Some((seed, out.tokens[..end].to_vec()))
        })
        .expect("some story ends within 200 tokens");
    let stopping = free.clone().with_seed(seed).with_stop_at_bos(true);
    let out = generate(&model, &[1], &stopping, |_| {}).unwrap();
    assert_eq!(out.tokens, story);
    assert_eq!(out.stop_reason, StopReason::Bos);
    assert_eq!(out.stats.generated_tokens, story.len() + 1);
}

// ---- the sampler's distribution -------------------------------------------------------------

/// `ln Γ(x)` for `x > 0` (Lanczos, g = 7, n = 9; relative error ~1e-15).
fn ln_gamma(x: f64) -> f64 {
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + 7.5;
    let sum = C[0] + (1..9).map(|i| C[i] / (x + i as f64)).sum::<f64>();
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

/// Upper regularised incomplete gamma `Q(a, x)` (series below `a + 1`, Lentz's continued
/// fraction above; Numerical Recipes §6.2).
fn gamma_q(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    let prefactor = (a * x.ln() - x - ln_gamma(a)).exp();
    if x < a + 1.0 {
        let (mut term, mut sum, mut n) = (1.0 / a, 1.0 / a, a);
        for _ in 0..10_000 {
            n += 1.0;
            term *= x / n;
            sum += term;
            if term.abs() < sum.abs() * 1e-16 {
                break;
            }
        }
        1.0 - sum * prefactor
    } else {
        let tiny = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / tiny;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..10_000 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            d = if d.abs() < tiny { tiny } else { d };
            c = b + an / c;
            c = if c.abs() < tiny { tiny } else { c };
            d = 1.0 / d;
            let delta = d * c;
            h *= delta;
            if (delta - 1.0).abs() < 1e-16 {
                break;
            }
        }
        prefactor * h
    }
}

/// P(χ²_df ≥ statistic).
fn chi_square_p_value(statistic: f64, df: usize) -> f64 {
    gamma_q(df as f64 / 2.0, statistic / 2.0)
}

/// Pearson's χ² of `counts` against `probs` (`counts.len() == probs.len()`), with bins of
/// expected count below 5 pooled (smallest first) until every bin expects at least 5.
/// Returns `(statistic, degrees of freedom)`.
fn chi_square(counts: &[usize], probs: &[f64]) -> (f64, usize) {
    let n: usize = counts.iter().sum();
    let mut bins: Vec<(f64, f64)> = probs
        .iter()
        .zip(counts)
        .map(|(&p, &c)| (p * n as f64, c as f64))
        .collect();
    bins.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut merged: Vec<(f64, f64)> = vec![];
    let mut pool = (0.0, 0.0);
    for (expected, observed) in bins {
        if expected < 5.0 || (pool.0 > 0.0 && pool.0 < 5.0) {
            pool.0 += expected;
            pool.1 += observed;
            if pool.0 >= 5.0 {
                merged.push(pool);
                pool = (0.0, 0.0);
            }
        } else {
            merged.push((expected, observed));
        }
    }
    if pool.0 > 0.0 {
        // A remainder below 5 joins the smallest kept bin.
        match merged.first_mut() {
            Some(first) => {
                first.0 += pool.0;
                first.1 += pool.1;
            }
            None => merged.push(pool),
        }
    }
    assert!(merged.iter().all(|b| b.0 >= 5.0), "{merged:?}");
    let statistic = merged.iter().map(|(e, o)| (o - e) * (o - e) / e).sum();
    (statistic, merged.len() - 1)
}

#[test]
fn the_chi_square_helpers_are_right() {
    // Tabulated 0.1% critical values: df 1 -> 10.828, df 10 -> 29.588, df 30 -> 59.703.
    for (x, df) in [(10.828, 1), (29.588, 10), (59.703, 30)] {
        let p = chi_square_p_value(x, df);
        assert!((p - 0.001).abs() < 2e-6, "df {df}: {p}");
    }
    // Median of χ²_2 is 2 ln 2.
    assert!((chi_square_p_value(2.0 * 2f64.ln(), 2) - 0.5).abs() < 1e-12);
    assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-12);
}

/// Significance of the sampling tests. Their draws are seeded, so each test is one fixed
/// experiment: a correct sampler fails it with probability 0.001 over the choice of seed.
const ALPHA: f64 = 0.001;
const DRAWS: usize = 20_000;

/// Draws `DRAWS` tokens from `logits` at `temperature` and counts them.
fn draw_counts(logits: &[f32], temperature: f64, seed: u64) -> Vec<usize> {
    let mut sampler = Sampler::new(temperature, None, seed).unwrap();
    let mut counts = vec![0usize; logits.len()];
    for _ in 0..DRAWS {
        counts[sampler.sample(logits).unwrap() as usize] += 1;
    }
    counts
}

#[test]
fn temperature_sampling_follows_the_tempered_softmax() {
    let (model, _) = stories260k();
    let tok = tok512();
    // A context with many plausible next words, so the test has many bins.
    let context = tok
        .encode("Once upon a time, there was a", true, false)
        .unwrap();
    let logits = full_last_logits(&model, &context);
    for temperature in [1.0, 0.5] {
        let probs = probabilities(&logits, temperature);
        let counts = draw_counts(&logits, temperature, 42);
        let (statistic, df) = chi_square(&counts, &probs);
        let p = chi_square_p_value(statistic, df);
        println!("T = {temperature}: chi2 = {statistic:.1}, df = {df}, p = {p:.3}");
        assert!(df >= 5, "too few bins for a meaningful test ({df})");
        assert!(
            p > ALPHA,
            "T = {temperature}: chi2 = {statistic:.1} with {df} df, p = {p:e}"
        );

        // The same seed repeats the draws exactly.
        assert_eq!(draw_counts(&logits, temperature, 42), counts);
    }
    // The test has power: draws at T = 1 are rejected as samples of T = 0.5 and vice versa.
    let (s, df) = chi_square(&draw_counts(&logits, 1.0, 7), &probabilities(&logits, 0.5));
    assert!(chi_square_p_value(s, df) < ALPHA);
    let (s, df) = chi_square(&draw_counts(&logits, 0.5, 7), &probabilities(&logits, 1.0));
    assert!(chi_square_p_value(s, df) < ALPHA);
    // A temperature near 0 is greedy in practice.
    let counts = draw_counts(&logits, 1e-4, 3);
    let argmax = llama_model::generation::sampling::argmax(&logits).unwrap();
    assert_eq!(counts[argmax], DRAWS);
}
