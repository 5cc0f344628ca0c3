//! The sample-and-stop loop of `generate` and `generate_batch` over the continuous-batching
//! engine, and its clock.

use std::time::Instant;

use burn::tensor::backend::Backend;

use crate::generation::batch::{BatchEngine, SlotId};
use crate::generation::generate::{GenerateConfig, GenerateError, GenerationStats, StopReason};
use crate::model::llama::Llama;

/// A fixed set of rows decoded by a [`BatchEngine`], row `i` a slot seeded
/// `config.seed + i` with `config`'s stop rules and budget. [`Generator`] is one row of it,
/// [`generate_batch`] many.
///
/// [`Generator`]: crate::generation::generate::Generator
/// [`generate_batch`]: crate::generation::generate::generate_batch
#[derive(Debug)]
pub(super) struct Decoder<'m, B: Backend> {
    engine: BatchEngine<'m, B>,
    /// Per row, its slot.
    ids: Vec<SlotId>,
    /// Per row, why it stopped (`None` while it runs).
    stopped: Vec<Option<StopReason>>,
    /// Per row, the logits `[vocab]` its last token was sampled from.
    pub(super) logits: Vec<Vec<f32>>,
    clock: Clock,
}

impl<'m, B: Backend> Decoder<'m, B> {
    pub(super) fn new(
        model: &'m Llama<B>,
        prompts: Vec<Vec<u32>>,
        config: &GenerateConfig,
    ) -> Result<Self, GenerateError> {
        let rows = prompts.len();
        let mut engine = BatchEngine::new(model, config.decode_split);
        let ids = prompts
            .iter()
            .enumerate()
            .map(|(row, prompt)| engine.join(prompt, config, row))
            .collect::<Result<Vec<_>, _>>()?;
        let clock = Clock::new(prompts.iter().map(Vec::len).sum());
        Ok(Self {
            engine,
            ids,
            stopped: vec![None; rows],
            logits: vec![Vec::new(); rows],
            clock,
        })
    }

    /// Whether every row has stopped.
    pub(super) fn done(&self) -> bool {
        self.stopped.iter().all(Option::is_some)
    }

    /// One step of the engine (the pre-fill first). Per row the new token; `None` for a row
    /// that has stopped (a stop token is not returned).
    pub(super) fn step(&mut self) -> Result<Vec<Option<u32>>, GenerateError> {
        if self.clock.start.is_none() {
            self.clock.start();
        }
        let mut tokens = vec![None; self.ids.len()];
        let mut sampled = 0;
        for event in self.engine.step()? {
            let Some(row) = self.ids.iter().position(|&id| id == event.id) else {
                continue;
            };
            if !event.logits.is_empty() {
                sampled += 1;
                self.logits[row] = event.logits;
            }
            tokens[row] = event.token;
            if let Some(reason) = event.stop {
                self.stopped[row] = Some(reason);
            }
        }
        self.clock.sampled(sampled);
        Ok(tokens)
    }

    /// Per row, why it stopped; a row still running stopped for its budget.
    pub(super) fn stop_reasons(&self) -> Vec<StopReason> {
        self.stopped
            .iter()
            .map(|r| r.unwrap_or(StopReason::MaxNewTokens))
            .collect()
    }

    pub(super) fn stats(&self) -> GenerationStats {
        self.clock.stats(self.engine.context_resets())
    }
}

/// Timestamps of a generation.
#[derive(Debug, Clone)]
pub(super) struct Clock {
    prompt_tokens: usize,
    pub(super) start: Option<Instant>,
    first: Option<Instant>,
    last: Option<Instant>,
    generated: usize,
    decode_tokens: usize,
}

impl Clock {
    pub(super) fn new(prompt_tokens: usize) -> Self {
        Self {
            prompt_tokens,
            start: None,
            first: None,
            last: None,
            generated: 0,
            decode_tokens: 0,
        }
    }

    pub(super) fn start(&mut self) {
        self.start = Some(Instant::now());
    }

    /// `n` tokens (one per active row) were sampled in one step.
    pub(super) fn sampled(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        let now = Instant::now();
        if self.first.is_none() {
            self.first = Some(now);
        } else {
            self.decode_tokens += n;
        }
        self.last = Some(now);
        self.generated += n;
    }

    pub(super) fn stats(&self, context_resets: usize) -> GenerationStats {
        let between = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
            (Some(a), Some(b)) => Some(b.duration_since(a)),
            _ => None,
        };
        GenerationStats {
            prompt_tokens: self.prompt_tokens,
            generated_tokens: self.generated,
            decode_tokens: self.decode_tokens,
            time_to_first_token: between(self.start, self.first),
            decode_time: between(self.first, self.last).unwrap_or_default(),
            total_time: between(self.start, self.last).unwrap_or_default(),
            context_resets,
        }
    }
}
