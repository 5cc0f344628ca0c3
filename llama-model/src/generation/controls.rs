//! The sampling controls beyond temperature and top-p: the repetition, presence and
//! frequency penalties, top-k and min-p, applied in `transformers`' order:
//!
//! 1. repetition penalty over the prompt and the generated tokens, as `transformers`'
//!    `RepetitionPenaltyLogitsProcessor`: each distinct token's logit is divided by the
//!    penalty when positive and multiplied by it when negative;
//! 2. presence and frequency penalties over the generated tokens only, by OpenAI's formula:
//!    `logit[j] -= count[j] * frequency + (count[j] > 0) * presence`;
//! 3. temperature, then top-k (`TopKLogitsWarper`: tokens below the k-th largest logit go,
//!    ties with it stay), then top-p ([`super::sampling`]), then min-p (`MinPLogitsWarper`:
//!    tokens whose probability is below `min_p` times the largest go).
//!
//! The penalties change the logits (so they apply to greedy decoding too, as in
//! `transformers`); the filters only remove candidates, so they change nothing at
//! temperature 0. Penalties are computed in f32, as `transformers` computes them on f32
//! scores; the filters work on the sampler's f64 weights.

use std::collections::HashMap;

use crate::generation::sampling::SamplingError;

/// The sampling controls (all off by default).
#[derive(Debug, Clone, PartialEq)]
pub struct Controls {
    /// Keep only the `k` most probable tokens (ties with the k-th kept); `None` keeps all.
    pub top_k: Option<usize>,
    /// Drop tokens whose probability is below `min_p` times the most probable one's, in
    /// `[0, 1]`; `None` (or 0) keeps all.
    pub min_p: Option<f64>,
    /// `transformers`' repetition penalty, `> 0`; 1 is off, above 1 discourages repeats.
    pub repetition_penalty: f64,
    /// OpenAI's presence penalty in `[-2, 2]`: subtracted once from every generated token.
    pub presence_penalty: f64,
    /// OpenAI's frequency penalty in `[-2, 2]`: subtracted once per earlier occurrence.
    pub frequency_penalty: f64,
}

impl Default for Controls {
    fn default() -> Self {
        Self {
            top_k: None,
            min_p: None,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
        }
    }
}

impl Controls {
    /// Checks every control's range (see the fields).
    pub fn validate(&self) -> Result<(), SamplingError> {
        if self.top_k == Some(0) {
            return Err(SamplingError::InvalidControl {
                name: "top_k",
                value: 0.0,
                range: "an integer >= 1",
            });
        }
        let checks = [
            (
                "min_p",
                self.min_p.unwrap_or(0.0),
                (0.0..=1.0).contains(&self.min_p.unwrap_or(0.0)),
                "in [0, 1]",
            ),
            (
                "repetition_penalty",
                self.repetition_penalty,
                self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite(),
                "a finite number > 0",
            ),
            (
                "presence_penalty",
                self.presence_penalty,
                (-2.0..=2.0).contains(&self.presence_penalty),
                "in [-2, 2]",
            ),
            (
                "frequency_penalty",
                self.frequency_penalty,
                (-2.0..=2.0).contains(&self.frequency_penalty),
                "in [-2, 2]",
            ),
        ];
        for (name, value, ok, range) in checks {
            if !ok {
                return Err(SamplingError::InvalidControl { name, value, range });
            }
        }
        Ok(())
    }

    /// Whether any penalty changes the logits.
    pub(super) fn penalizes(&self) -> bool {
        self.repetition_penalty != 1.0
            || self.presence_penalty != 0.0
            || self.frequency_penalty != 0.0
    }
}

/// The tokens the penalties count: how often each occurred in the prompt and among the
/// generated tokens.
#[derive(Debug, Clone, Default)]
pub struct TokenCounts {
    /// Tokens of the prompt (repetition penalty only).
    prompt: HashMap<u32, u32>,
    /// Generated tokens.
    generated: HashMap<u32, u32>,
}

impl TokenCounts {
    /// Counts the prompt's tokens.
    pub fn with_prompt(prompt: &[u32]) -> Self {
        let mut counts = Self::default();
        for &t in prompt {
            *counts.prompt.entry(t).or_default() += 1;
        }
        counts
    }

    /// Counts a generated token.
    pub fn push(&mut self, token: u32) {
        *self.generated.entry(token).or_default() += 1;
    }

    /// Applies the penalties of `controls` to one row of logits `[vocab]`, in place (tokens
    /// outside the row are ignored).
    pub fn penalize(&self, logits: &mut [f32], controls: &Controls) {
        if controls.repetition_penalty != 1.0 {
            let penalty = controls.repetition_penalty as f32;
            // Each distinct token once (transformers gathers each id's score once).
            let seen = self.prompt.keys().chain(
                self.generated
                    .keys()
                    .filter(|t| !self.prompt.contains_key(t)),
            );
            for &t in seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l < 0.0 { *l * penalty } else { *l / penalty };
                }
            }
        }
        let (presence, frequency) = (
            controls.presence_penalty as f32,
            controls.frequency_penalty as f32,
        );
        if presence != 0.0 || frequency != 0.0 {
            for (&t, &count) in &self.generated {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = *l - count as f32 * frequency - presence;
                }
            }
        }
    }
}

/// Top-k over unnormalised weights `[vocab]` (monotone in the logits): zeroes every weight
/// below the k-th largest; ties with it stay.
pub(super) fn top_k(weights: &mut [f64], k: usize) {
    if k >= weights.len() {
        return;
    }
    let mut sorted: Vec<f64> = weights.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let threshold = sorted[k - 1];
    for w in weights.iter_mut() {
        if *w < threshold {
            *w = 0.0;
        }
    }
}

/// Min-p over the candidates' unnormalised weights, whose largest is 1 (the sampler's
/// weights are `exp((logit - max) / T)`, and top-k and top-p keep the most probable token):
/// zeroes every weight below `min_p`, the largest always staying.
pub(super) fn min_p<'w>(weights: impl Iterator<Item = &'w mut f64>, min_p: f64) {
    for w in weights {
        if *w < min_p {
            *w = 0.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::sampling::Sampler;

    /// What `transformers`' processors make of fixed logits (scripts/sampling-reference.py).
    const REFERENCE: &str = include_str!("../../testdata/sampling-processors.json");

    /// Probabilities are compared within this: the reference's softmax runs in f64 on f32
    /// scores divided by the temperature in f32, ours divides in f64.
    const PROBABILITY_TOLERANCE: f64 = 1e-6;

    fn reference() -> serde_json::Value {
        serde_json::from_str(REFERENCE).unwrap()
    }

    fn ids(value: &serde_json::Value) -> Vec<u32> {
        serde_json::from_value(value.clone()).unwrap()
    }

    fn controls(c: &serde_json::Value) -> Controls {
        let number = |name: &str, default: f64| c[name].as_f64().unwrap_or(default);
        Controls {
            top_k: c["top_k"].as_u64().map(|k| k as usize),
            min_p: c["min_p"].as_f64(),
            repetition_penalty: number("repetition_penalty", 1.0),
            presence_penalty: number("presence_penalty", 0.0),
            frequency_penalty: number("frequency_penalty", 0.0),
        }
    }

    #[test]
    fn the_processed_distribution_is_transformers() {
        let r = reference();
        let logits: Vec<f32> = serde_json::from_value(r["logits"].clone()).unwrap();
        let (prompt, generated) = (ids(&r["prompt"]), ids(&r["generated"]));
        let cases = r["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 9);
        for case in cases {
            let c = &case["controls"];
            let mut sampler =
                Sampler::new(c["temperature"].as_f64().unwrap(), c["top_p"].as_f64(), 0)
                    .unwrap()
                    .with_controls(controls(c), &prompt)
                    .unwrap();
            for &t in &generated {
                sampler.record_generated(t);
            }
            let ours = sampler.distribution(&logits).unwrap();
            let theirs: Vec<f64> = serde_json::from_value(case["probabilities"].clone()).unwrap();
            for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
                assert_eq!(*a > 0.0, *b > 0.0, "{c}: token {i} kept by one side only");
                assert!(
                    (a - b).abs() <= PROBABILITY_TOLERANCE,
                    "{c}: token {i}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn penalties_are_exactly_transformers_and_openais_formula() {
        let r = reference();
        let logits: Vec<f32> = serde_json::from_value(r["logits"].clone()).unwrap();
        let mut counts = TokenCounts::with_prompt(&ids(&r["prompt"]));
        for t in ids(&r["generated"]) {
            counts.push(t);
        }
        let mut checked = 0;
        for case in r["cases"].as_array().unwrap() {
            let c = controls(&case["controls"]);
            if !c.penalizes()
                || c.top_k.is_some()
                || c.min_p.is_some()
                || case["controls"]["temperature"] != 1.0
            {
                continue;
            }
            let mut ours = logits.clone();
            counts.penalize(&mut ours, &c);
            let theirs: Vec<Option<f32>> = serde_json::from_value(case["scores"].clone()).unwrap();
            let theirs: Vec<f32> = theirs
                .into_iter()
                .map(|s| s.unwrap_or(f32::NEG_INFINITY))
                .collect();
            assert_eq!(ours, theirs, "{c:?}");
            checked += 1;
        }
        assert_eq!(checked, 4);
    }

    #[test]
    fn penalties_apply_to_greedy_decoding_and_filters_do_not() {
        // Token 1 leads by 0.5; a repetition penalty of 2 on it (seen in the prompt) halves
        // its logit of 2.0 to 1.0, below token 2's 1.5.
        let logits = [0.0f32, 2.0, 1.5];
        let plain = Sampler::greedy().sample(&logits).unwrap();
        let penalized = Controls {
            repetition_penalty: 2.0,
            ..Controls::default()
        };
        let mut s = Sampler::greedy().with_controls(penalized, &[1]).unwrap();
        assert_eq!((plain, s.sample(&logits).unwrap()), (1, 2));
        let filtered = Controls {
            top_k: Some(1),
            min_p: Some(0.9),
            ..Controls::default()
        };
        let mut s = Sampler::greedy().with_controls(filtered, &[1]).unwrap();
        assert_eq!(s.sample(&logits).unwrap(), 1);
    }

    #[test]
    fn controls_out_of_range_are_refused() {
        let bad = [
            Controls {
                top_k: Some(0),
                ..Controls::default()
            },
            Controls {
                min_p: Some(1.5),
                ..Controls::default()
            },
            Controls {
                min_p: Some(f64::NAN),
                ..Controls::default()
            },
            Controls {
                repetition_penalty: 0.0,
                ..Controls::default()
            },
            Controls {
                repetition_penalty: f64::INFINITY,
                ..Controls::default()
            },
            Controls {
                presence_penalty: 2.5,
                ..Controls::default()
            },
            Controls {
                frequency_penalty: -3.0,
                ..Controls::default()
            },
        ];
        for c in bad {
            let err = c.validate().unwrap_err();
            assert!(
                matches!(err, SamplingError::InvalidControl { .. }),
                "{c:?}: {err}"
            );
        }
        assert!(Controls::default().validate().is_ok());
    }
}
