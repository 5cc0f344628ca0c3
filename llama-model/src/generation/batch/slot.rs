//! One sequence of the continuous batch: its cache and history, sampler and stop rules.

use burn::tensor::backend::Backend;

use crate::generation::engine::Engine;
use crate::generation::generate::{GenerateConfig, StopReason};
use crate::generation::sampling::Sampler;

/// A slot's state between steps.
#[derive(Debug)]
pub(super) struct Slot<'m, B: Backend> {
    pub(super) id: u64,
    /// Cache and history (prompt plus tokens fed).
    pub(super) engine: Engine<'m, B>,
    pub(super) sampler: Sampler,
    pub(super) config: GenerateConfig,
    /// Tokens sampled so far (a stop token included).
    pub(super) sampled: usize,
    /// The token the next decoding step feeds; `None` before the pre-fill.
    pub(super) next: Option<u32>,
}

impl<B: Backend> Slot<'_, B> {
    /// Samples from `logits` `[vocab]`; the token to report (`None` for a stop token) and
    /// why the slot ends, if it does.
    pub(super) fn sample(
        &mut self,
        logits: &[f32],
    ) -> Result<(Option<u32>, Option<StopReason>), crate::generation::sampling::SamplingError> {
        let token = self.sampler.sample(logits)?;
        self.sampled += 1;
        self.next = Some(token);
        if let Some(reason) = self.config.stop_for(token) {
            return Ok((None, Some(reason)));
        }
        let done = self.sampled >= self.config.max_new_tokens;
        Ok((Some(token), done.then_some(StopReason::MaxNewTokens)))
    }
}
