//! Choosing the next token from a row of logits.
//!
//! * temperature 0: greedy, the first maximal index (what `torch.argmax` returns);
//! * temperature `T > 0`: one draw from `softmax(logits / T)` by inverse CDF on a uniform
//!   number from a seeded [`StdRng`], so a seed fixes the whole sequence of draws;
//! * optionally nucleus sampling (`top_p`): only the smallest set of most probable tokens
//!   whose probability reaches `top_p` can be drawn (off by default; `top_p = 1` is off too).
//!
//! Probabilities are computed in f64 from the f32 logits: with 32000 tokens, summing in f32
//! would lose the small ones' mass, and the extra precision costs nothing next to a forward
//! pass.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::generation::controls::{self, Controls, TokenCounts};

/// Why a sampler cannot be built or cannot sample.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SamplingError {
    /// The temperature is negative, NaN or infinite.
    #[error("temperature must be a finite number >= 0, got {0}")]
    InvalidTemperature(f64),
    /// `top_p` is outside `(0, 1]`.
    #[error("top_p must be in (0, 1], got {0}")]
    InvalidTopP(f64),
    /// A sampling control is out of its range.
    #[error("{name} must be {range}, got {value}")]
    InvalidControl {
        /// The control (`top_k`, `min_p`, ...).
        name: &'static str,
        /// The value given.
        value: f64,
        /// What it must be.
        range: &'static str,
    },
    /// The logits row is empty.
    #[error("cannot sample from an empty row of logits")]
    EmptyLogits,
    /// A logit is NaN or `+inf` (a broken model or checkpoint), so no distribution exists.
    #[error("logit {index} is {value}; cannot sample")]
    NonFiniteLogit {
        /// Token id of the offending logit.
        index: usize,
        /// Its value.
        value: f32,
    },
    /// Every logit is `-inf`: every token is ruled out.
    #[error("every logit is -inf; no token can be sampled")]
    NoCandidate,
}

/// Checks a temperature (finite, `>= 0`) and a `top_p` (`0 < p <= 1`).
pub fn validate(temperature: f64, top_p: Option<f64>) -> Result<(), SamplingError> {
    if !(temperature.is_finite() && temperature >= 0.0) {
        return Err(SamplingError::InvalidTemperature(temperature));
    }
    if let Some(p) = top_p {
        // NaN fails both comparisons and is rejected too.
        if !(p > 0.0 && p <= 1.0) {
            return Err(SamplingError::InvalidTopP(p));
        }
    }
    Ok(())
}

/// Index of the first maximal logit (ties go to the lowest index, as `torch.argmax`);
/// `None` for an empty slice. NaN entries are never chosen (they compare false).
pub fn argmax(logits: &[f32]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in logits.iter().enumerate() {
        // Strictly greater: an equal later value does not replace the first.
        if !v.is_nan() && best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i)
}

/// `softmax(logits / temperature)` in f64, for `temperature > 0` and logits that are not
/// NaN or `+inf` (check with [`Sampler::sample`]'s rules; `-inf` gives probability 0).
/// Returns one probability per logit, summing to 1.
pub fn probabilities(logits: &[f32], temperature: f64) -> Vec<f64> {
    let weights = weights(logits, temperature);
    let total: f64 = weights.iter().sum();
    weights.into_iter().map(|w| w / total).collect()
}

/// Unnormalised `exp((logit - max) / T)`: the largest weight is exactly 1, so the sum lies
/// in `[1, n]` and never overflows or vanishes.
fn weights(logits: &[f32], temperature: f64) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    logits
        .iter()
        .map(|&l| ((l as f64 - max) / temperature).exp())
        .collect()
}

/// Rejects rows no distribution can be formed from (see [`SamplingError`]).
fn check_logits(logits: &[f32]) -> Result<(), SamplingError> {
    if logits.is_empty() {
        return Err(SamplingError::EmptyLogits);
    }
    if let Some((index, &value)) = logits
        .iter()
        .enumerate()
        .find(|(_, v)| v.is_nan() || **v == f32::INFINITY)
    {
        return Err(SamplingError::NonFiniteLogit { index, value });
    }
    if logits.iter().all(|&v| v == f32::NEG_INFINITY) {
        return Err(SamplingError::NoCandidate);
    }
    Ok(())
}

/// A seeded next-token sampler.
///
/// ```
/// use llama_model::generation::sampling::Sampler;
/// let mut greedy = Sampler::greedy();
/// assert_eq!(greedy.sample(&[0.5, 2.0, 2.0]).unwrap(), 1);
/// let mut s = Sampler::new(0.8, Some(0.9), 42).unwrap();
/// let id = s.sample(&[0.5, 2.0, 1.0]).unwrap();
/// assert!(id < 3);
/// ```
#[derive(Debug, Clone)]
pub struct Sampler {
    temperature: f64,
    top_p: Option<f64>,
    rng: StdRng,
    controls: Controls,
    /// The tokens the penalties count (the prompt's, then each sampled one).
    counts: TokenCounts,
}

impl Sampler {
    /// A sampler with `temperature` (0 = greedy) and optional nucleus `top_p`, drawing from
    /// a generator seeded with `seed`. Errors on a temperature that is not finite and
    /// `>= 0` or a `top_p` outside `(0, 1]`.
    pub fn new(temperature: f64, top_p: Option<f64>, seed: u64) -> Result<Self, SamplingError> {
        validate(temperature, top_p)?;
        Ok(Self {
            temperature,
            top_p,
            rng: StdRng::seed_from_u64(seed),
            controls: Controls::default(),
            counts: TokenCounts::default(),
        })
    }

    /// This sampler with the penalties and filters of `controls` (see
    /// [`crate::generation::controls`]), the penalties counting `prompt`'s tokens and every
    /// token sampled from now on. Errors on a control out of its range.
    pub fn with_controls(
        mut self,
        controls: Controls,
        prompt: &[u32],
    ) -> Result<Self, SamplingError> {
        controls.validate()?;
        self.controls = controls;
        self.counts = TokenCounts::with_prompt(prompt);
        Ok(self)
    }

    /// The argmax sampler (temperature 0).
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_p: None,
            rng: StdRng::seed_from_u64(0),
            controls: Controls::default(),
            counts: TokenCounts::default(),
        }
    }

    /// The temperature.
    pub fn temperature(&self) -> f64 {
        self.temperature
    }

    /// The nucleus threshold, if any.
    pub fn top_p(&self) -> Option<f64> {
        self.top_p
    }

    /// Choose a token from one row of logits `[vocab]`.
    ///
    /// Greedy at temperature 0 (no random number is drawn); otherwise exactly one uniform
    /// number is drawn per call, so the `k`-th call of two samplers with the same seed
    /// picks the same token from the same logits.
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32, SamplingError> {
        check_logits(logits)?;
        let penalized = self.penalized(logits);
        let logits = penalized.as_deref().unwrap_or(logits);
        let token = if self.temperature == 0.0 {
            // check_logits guarantees a non-NaN entry exists.
            argmax(logits).ok_or(SamplingError::NoCandidate)?
        } else {
            let u: f64 = self.rng.random();
            self.candidates(logits).draw(u)
        };
        if self.controls.penalizes() {
            self.counts.push(token as u32);
        }
        Ok(token as u32)
    }

    /// Counts `token` as generated without sampling it (a token the caller chose), for the
    /// penalties.
    pub fn record_generated(&mut self, token: u32) {
        self.counts.push(token);
    }

    /// The distribution the next [`Self::sample`] draws from (at a temperature above 0):
    /// one probability per logit after the penalties and filters, 0 for a removed token.
    pub fn distribution(&self, logits: &[f32]) -> Result<Vec<f64>, SamplingError> {
        check_logits(logits)?;
        let penalized = self.penalized(logits);
        let logits = penalized.as_deref().unwrap_or(logits);
        let mut probabilities = vec![0.0; logits.len()];
        let candidates = self.candidates(logits).into_pairs();
        let total: f64 = candidates.iter().map(|(_, w)| w).sum();
        for (i, w) in candidates {
            probabilities[i] = w / total;
        }
        Ok(probabilities)
    }

    /// The logits after the penalties; `None` when no penalty is set.
    fn penalized(&self, logits: &[f32]) -> Option<Vec<f32>> {
        self.controls.penalizes().then(|| {
            let mut row = logits.to_vec();
            self.counts.penalize(&mut row, &self.controls);
            row
        })
    }

    /// The candidates and their unnormalised weights, in the order the inverse CDF walks
    /// them: every token in id order, or the nucleus by decreasing weight with `top_p`
    /// (top-k before it, min-p after it, as `transformers` orders them).
    fn candidates(&self, logits: &[f32]) -> Candidates {
        let mut weights = weights(logits, self.temperature);
        if let Some(k) = self.controls.top_k {
            controls::top_k(&mut weights, k);
        }
        let min_p = self.controls.min_p.filter(|&p| p > 0.0);
        match self.top_p {
            Some(p) if p < 1.0 => {
                let mut nucleus = nucleus(&weights, p);
                if let Some(min_p) = min_p {
                    controls::min_p(nucleus.iter_mut().map(|(_, w)| w), min_p);
                }
                Candidates::Nucleus(nucleus)
            }
            _ => {
                if let Some(min_p) = min_p {
                    controls::min_p(weights.iter_mut(), min_p);
                }
                Candidates::All(weights)
            }
        }
    }
}

/// What a draw walks: every token's weight in id order (no allocation of pairs on the
/// common path), or the nucleus's `(token, weight)` by decreasing weight.
enum Candidates {
    All(Vec<f64>),
    Nucleus(Vec<(usize, f64)>),
}

impl Candidates {
    /// One draw by inverse CDF at `u` in `[0, 1)`.
    fn draw(&self, u: f64) -> usize {
        match self {
            Self::All(weights) => sample_weights(weights.iter().copied().enumerate(), u),
            Self::Nucleus(pairs) => sample_weights(pairs.iter().copied(), u),
        }
    }

    /// The `(token, weight)` pairs.
    fn into_pairs(self) -> Vec<(usize, f64)> {
        match self {
            Self::All(weights) => weights.into_iter().enumerate().collect(),
            Self::Nucleus(pairs) => pairs,
        }
    }
}

/// Inverse CDF over `(index, weight)` pairs with unnormalised weights: the first index whose
/// cumulative weight exceeds `u * total`, `u` in `[0, 1)`.
fn sample_weights(weights: impl Iterator<Item = (usize, f64)> + Clone, u: f64) -> usize {
    let total: f64 = weights.clone().map(|(_, w)| w).sum();
    let target = u * total;
    let mut cumulative = 0.0;
    let mut last_positive = 0;
    for (i, w) in weights {
        if w > 0.0 {
            last_positive = i;
        }
        cumulative += w;
        // Strict: a zero-weight token can never be the first to pass the target.
        if cumulative > target {
            return i;
        }
    }
    // Only reachable when rounding makes the running sum fall short of `total` for u ~ 1.
    last_positive
}

/// The nucleus: the most probable tokens (ties in id order) until their mass reaches
/// `p * total`, by decreasing weight (as llama2.c's `sample_topp`, which then draws among
/// them in that order).
fn nucleus(weights: &[f64], p: f64) -> Vec<(usize, f64)> {
    let total: f64 = weights.iter().sum();
    // A token lighter than (1 - p) / (n - 1) of the mass cannot be in the nucleus: even if
    // all n - 1 others were heavier, the nucleus would be complete before it (llama2.c's
    // pre-filter; it only saves sorting the long tail).
    let n = weights.len();
    let cutoff = if n > 1 {
        (1.0 - p) / (n - 1) as f64 * total
    } else {
        0.0
    };
    let mut candidates: Vec<(usize, f64)> = weights
        .iter()
        .copied()
        .enumerate()
        .filter(|&(_, w)| w >= cutoff && w > 0.0)
        .collect();
    // Stable sort: equal weights stay in id order, so the result does not depend on the
    // sort algorithm.
    candidates.sort_by(|a, b| b.1.total_cmp(&a.1));
    let threshold = p * total;
    let mut mass = 0.0;
    let mut keep = candidates.len();
    for (k, &(_, w)) in candidates.iter().enumerate() {
        mass += w;
        if mass >= threshold {
            keep = k + 1;
            break;
        }
    }
    candidates.truncate(keep.max(1));
    candidates
}

/// Nucleus sampling: one draw among [`nucleus`]'s tokens, in its order.
#[cfg(test)]
fn sample_nucleus(weights: &[f64], p: f64, u: f64) -> usize {
    sample_weights(nucleus(weights, p).into_iter(), u)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]), Some(1));
        assert_eq!(argmax(&[f32::NAN, 0.5, 0.5]), Some(1));
        assert_eq!(argmax(&[f32::NEG_INFINITY, f32::NEG_INFINITY]), Some(0));
        assert_eq!(argmax(&[]), None);
        let mut s = Sampler::new(0.0, Some(0.5), 7).unwrap();
        assert_eq!(s.sample(&[0.0, 9.0, 9.0]).unwrap(), 1);
    }

    #[test]
    fn invalid_parameters_are_typed_errors() {
        for t in [-0.1, f64::NAN, f64::INFINITY] {
            let err = Sampler::new(t, None, 0).unwrap_err();
            assert!(
                matches!(err, SamplingError::InvalidTemperature(_)),
                "{t}: {err}"
            );
        }
        for p in [0.0, -0.5, 1.0001, f64::NAN] {
            let err = Sampler::new(1.0, Some(p), 0).unwrap_err();
            assert!(matches!(err, SamplingError::InvalidTopP(_)), "{p}: {err}");
        }
        assert!(Sampler::new(0.0, Some(1.0), 0).is_ok());
        assert!(Sampler::new(1e-3, Some(1e-9), 0).is_ok());
    }

    #[test]
    fn broken_logits_are_rejected() {
        let mut s = Sampler::new(1.0, None, 0).unwrap();
        assert_eq!(s.sample(&[]), Err(SamplingError::EmptyLogits));
        assert!(matches!(
            s.sample(&[0.0, f32::NAN]),
            Err(SamplingError::NonFiniteLogit { index: 1, .. })
        ));
        assert!(matches!(
            Sampler::greedy().sample(&[f32::INFINITY]),
            Err(SamplingError::NonFiniteLogit { index: 0, .. })
        ));
        assert_eq!(
            s.sample(&[f32::NEG_INFINITY; 3]),
            Err(SamplingError::NoCandidate)
        );
        // -inf is a legal "never" (probability 0).
        for _ in 0..100 {
            assert_eq!(
                s.sample(&[f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY])
                    .unwrap(),
                1
            );
        }
    }

    #[test]
    fn probabilities_are_a_tempered_softmax() {
        let p = probabilities(&[0.0, (2.0f32).ln()], 1.0);
        assert!((p[0] - 1.0 / 3.0).abs() < 1e-7 && (p[1] - 2.0 / 3.0).abs() < 1e-7);
        // T = 0.5 squares the odds: 1 : 4.
        let p = probabilities(&[0.0, (2.0f32).ln()], 0.5);
        assert!((p[0] - 0.2).abs() < 1e-7, "{p:?}");
        // Huge logits do not overflow.
        let p = probabilities(&[1e30, 1e30], 1e-6);
        assert_eq!(p, vec![0.5, 0.5]);
    }

    #[test]
    fn a_seed_repeats_and_different_seeds_differ() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let draw = |seed| {
            let mut s = Sampler::new(1.0, None, seed).unwrap();
            (0..200)
                .map(|_| s.sample(&logits).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(5), draw(5));
        assert_ne!(draw(5), draw(6));
    }

    #[test]
    fn inverse_cdf_boundaries() {
        let w = [0.0, 1.0, 0.0, 3.0, 0.0];
        let pairs = || w.iter().copied().enumerate();
        assert_eq!(sample_weights(pairs(), 0.0), 1);
        assert_eq!(sample_weights(pairs(), 0.2499), 1);
        assert_eq!(sample_weights(pairs(), 0.25), 3);
        assert_eq!(sample_weights(pairs(), 0.999_999_999), 3);
    }

    #[test]
    fn top_p_keeps_the_smallest_nucleus() {
        // Probabilities 0.05, 0.5, 0.15, 0.3 (ids 0..4).
        let logits: Vec<f32> = [0.05f32, 0.5, 0.15, 0.3].iter().map(|p| p.ln()).collect();
        let w = weights(&logits, 1.0);
        // Sorted: 1 (0.5), 3 (0.3), 2 (0.15), 0 (0.05).
        // (Thresholds kept away from the exact partial sums 0.5, 0.8, 0.95, which rounding
        // could put on either side.) p = 0.45 is reached by id 1 alone; p = 0.79 by {1, 3};
        // p = 0.81 needs id 2 too.
        for u in [0.0, 0.5, 0.999] {
            assert_eq!(sample_nucleus(&w, 0.45, u), 1);
        }
        assert_eq!(sample_nucleus(&w, 0.79, 0.6), 1); // 0.6 * 0.8 = 0.48 < 0.5
        assert_eq!(sample_nucleus(&w, 0.79, 0.7), 3); // 0.7 * 0.8 = 0.56 > 0.5
        assert_eq!(sample_nucleus(&w, 0.81, 0.99), 2);
        assert_eq!(sample_nucleus(&w, 1e-9, 0.99), 1, "a tiny p is greedy");

        // Empirically: with p = 0.79 only ids 1 and 3 appear, in ratio 5 : 3.
        let mut s = Sampler::new(1.0, Some(0.79), 11).unwrap();
        let mut counts = [0usize; 4];
        let n = 40_000;
        for _ in 0..n {
            counts[s.sample(&logits).unwrap() as usize] += 1;
        }
        assert_eq!((counts[0], counts[2]), (0, 0), "{counts:?}");
        let share = counts[1] as f64 / n as f64;
        // Binomial sd = sqrt(0.625 * 0.375 / 40000) ~ 0.0024; allow 5 sd.
        assert!((share - 0.625).abs() < 0.012, "{counts:?}");

        // top_p = 1 is exactly no nucleus (same draws as None).
        let mut a = Sampler::new(0.7, Some(1.0), 3).unwrap();
        let mut b = Sampler::new(0.7, None, 3).unwrap();
        for _ in 0..200 {
            assert_eq!(a.sample(&logits).unwrap(), b.sample(&logits).unwrap());
        }
    }

    #[test]
    fn the_prefilter_never_cuts_into_the_nucleus() {
        // Many equal tokens: the nucleus for p = 0.9 is 90% of them, none below the cutoff.
        let logits = vec![0.0f32; 1000];
        let w = weights(&logits, 1.0);
        let picked = sample_nucleus(&w, 0.9, 0.999);
        assert_eq!(picked, 899, "the last token of the nucleus, in id order");
    }
}
