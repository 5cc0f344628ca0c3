//! A chat session: one KV cache kept across turns.
//!
//! Each turn gets the whole conversation's ids (rendered again by the template). The cache
//! keeps the ids it holds; the longest common prefix of those and the new prompt stays, the
//! rest of the cache is dropped ([`Engine::truncate`]), and only the prompt's tokens past
//! that prefix are pre-filled. A reply's tokens are fed as they are generated, so when the
//! template renders the reply back as the same ids, the next turn pre-fills only the new
//! message. Positions never shift, so the cached keys and values are exactly what a fresh
//! pre-fill of the prefix computes.

use burn::tensor::backend::Backend;

use crate::generation::decoder::Clock;
use crate::generation::engine::{check_prompt, Engine};
use crate::generation::generate::{GenerateConfig, GenerateError, GenerationStats, StopReason};
use crate::model::llama::Llama;

/// What one turn did.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The reply's ids (without a stop token).
    pub tokens: Vec<u32>,
    /// Why the reply ended (`MaxNewTokens` also when the context is full).
    pub stop_reason: StopReason,
    /// Prompt tokens pre-filled this turn: those past the prefix already cached.
    pub prefilled: usize,
    /// Timings; `prompt_tokens` counts the whole prompt.
    pub stats: GenerationStats,
}

/// A model with one KV cache kept across the turns of a conversation.
#[derive(Debug)]
pub struct ChatSession<'m, B: Backend> {
    engine: Engine<'m, B>,
}

impl<'m, B: Backend> ChatSession<'m, B> {
    /// A session with nothing cached; `split` as [`GenerateConfig::decode_split`].
    pub fn new(model: &'m Llama<B>, split: usize) -> Self {
        Self {
            engine: Engine::single(model, split),
        }
    }

    /// The ids whose keys and values are cached.
    pub fn cached(&self) -> &[u32] {
        &self.engine.history
    }

    /// The most tokens a prompt plus its reply may hold (the model's context).
    pub fn context(&self) -> usize {
        self.engine.cache.capacity()
    }

    /// Forgets everything cached.
    pub fn reset(&mut self) {
        self.engine.truncate(0);
    }

    /// Replies to `prompt` (the whole conversation, ending with the generation prompt),
    /// calling `on_token` with each new token. Pre-fills only what is not cached; stops at
    /// a stop token of `config`, after `config.max_new_tokens` tokens, or when the context
    /// is full. A prompt that leaves no room for a token is [`GenerateError::ContextFull`].
    pub fn reply(
        &mut self,
        prompt: &[u32],
        config: &GenerateConfig,
        mut on_token: impl FnMut(u32),
    ) -> Result<Reply, GenerateError> {
        config.validate()?;
        check_prompt(self.engine.model, 0, prompt)?;
        let context = self.context();
        if prompt.len() >= context {
            return Err(GenerateError::ContextFull {
                tokens: prompt.len(),
                context,
            });
        }
        // At least the last prompt token is fed: its logits give the first reply token.
        let common = common_prefix(self.cached(), prompt).min(prompt.len() - 1);
        self.engine.truncate(common);
        let mut sampler = config.sampler(0, prompt)?;
        let mut clock = Clock::new(prompt.len());
        clock.start();
        let mut logits = self.engine.extend(&prompt[common..])?;
        let mut tokens = Vec::new();
        let mut stop_reason = StopReason::MaxNewTokens;
        for step in 0..config.max_new_tokens {
            let token = sampler.sample(&logits)?;
            clock.sampled(1);
            if let Some(reason) = config.stop_for(token) {
                stop_reason = reason;
                break;
            }
            on_token(token);
            tokens.push(token);
            let room = self.engine.cache.len() < context;
            if step + 1 == config.max_new_tokens || !room {
                break;
            }
            logits = self.engine.extend(&[token])?;
        }
        Ok(Reply {
            tokens,
            stop_reason,
            prefilled: prompt.len() - common,
            stats: clock.stats(0),
        })
    }
}

/// How many leading ids `a` and `b` share.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
