//! Log-probabilities of generated tokens, as OpenAI's API and vLLM report them: the
//! log-softmax of the model's raw logits (before any penalty, temperature or filter), for
//! the chosen token and for the most probable alternatives.

/// The most alternatives a token may list (OpenAI's cap on `top_logprobs`).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// The log-probability of one generated token and of the most probable tokens at its step.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The generated token.
    pub token: u32,
    /// Its log-probability under the raw logits.
    pub logprob: f64,
    /// The most probable tokens with their log-probabilities, most probable first (ties in
    /// id order).
    pub top: Vec<(u32, f64)>,
}

impl TokenLogprob {
    /// `token`'s log-probability under `logits` `[vocab]` (finite, or `-inf` for a token
    /// ruled out) and the `top` most probable tokens'. Computed in f64.
    pub fn of(logits: &[f32], token: u32, top: usize) -> Self {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
        let log_normalizer = max + sum.ln();
        let logprob = |id: usize| {
            logits
                .get(id)
                .map_or(f64::NEG_INFINITY, |&l| l as f64 - log_normalizer)
        };
        let mut order: Vec<usize> = (0..logits.len()).collect();
        // Stable: equal logits stay in id order.
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        Self {
            token,
            logprob: logprob(token as usize),
            top: order
                .into_iter()
                .take(top)
                .map(|id| (id as u32, logprob(id)))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logprobs_are_the_log_softmax_of_the_raw_logits() {
        // Probabilities 0.5, 0.25, 0.125, 0.125 (shifted logits change nothing).
        let logits: Vec<f32> = [0.5f32, 0.25, 0.125, 0.125]
            .iter()
            .map(|p| p.ln() + 7.0)
            .collect();
        let lp = TokenLogprob::of(&logits, 1, 3);
        assert!((lp.logprob - 0.25f64.ln()).abs() < 1e-6, "{lp:?}");
        let ids: Vec<u32> = lp.top.iter().map(|&(id, _)| id).collect();
        assert_eq!(ids, [0, 1, 2], "most probable first, ties in id order");
        assert!((lp.top[2].1 - 0.125f64.ln()).abs() < 1e-6);
        let total: f64 = (0..4)
            .map(|t| TokenLogprob::of(&logits, t, 0).logprob.exp())
            .sum();
        assert!((total - 1.0).abs() < 1e-12);
        assert_eq!(
            TokenLogprob::of(&[0.0, f32::NEG_INFINITY], 1, 0).logprob,
            f64::NEG_INFINITY
        );
    }
}
