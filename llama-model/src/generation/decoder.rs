//! The sample-and-stop loop of every generation, and its clock.

use std::time::Instant;

use burn::tensor::backend::Backend;

use crate::generation::engine::Engine;
use crate::generation::generate::{GenerateConfig, GenerateError, GenerationStats, StopReason};
use crate::generation::sampling::Sampler;
use crate::model::llama::Llama;

/// The sample-and-stop loop of every generation: an [`Engine`] decoding a batch of rows,
/// each row with its own sampler (seeded `config.seed + row`) and stop rules, all within
/// `config.max_new_tokens` steps. [`Generator`] is one row of it, [`generate_batch`] many.
#[derive(Debug)]
pub(super) struct Decoder<'m, B: Backend> {
    pub(super) engine: Engine<'m, B>,
    pub(super) samplers: Vec<Sampler>,
    pub(super) config: GenerateConfig,
    /// Per row, why it stopped (`None` while it runs).
    pub(super) stopped: Vec<Option<StopReason>>,
    /// Per row, the logits `[vocab]` its last token was sampled from.
    pub(super) logits: Vec<Vec<f32>>,
    /// The tokens the next step feeds, one per row (`None` before the pre-fill).
    pub(super) next: Option<Vec<u32>>,
    pub(super) steps: usize,
    pub(super) clock: Clock,
}

impl<'m, B: Backend> Decoder<'m, B> {
    pub(super) fn new(
        model: &'m Llama<B>,
        prompts: Vec<Vec<u32>>,
        config: &GenerateConfig,
    ) -> Result<Self, GenerateError> {
        let rows = prompts.len();
        let samplers = prompts
            .iter()
            .enumerate()
            .map(|(row, prompt)| config.sampler(row, prompt))
            .collect::<Result<Vec<_>, _>>()?;
        let clock = Clock::new(prompts.iter().map(Vec::len).sum());
        Ok(Self {
            engine: Engine::new(model, prompts, config.decode_split)?,
            samplers,
            config: config.clone(),
            stopped: vec![None; rows],
            logits: Vec::new(),
            next: None,
            steps: 0,
            clock,
        })
    }

    /// Whether every row has stopped or the token budget is spent.
    pub(super) fn done(&self) -> bool {
        self.steps >= self.config.max_new_tokens || self.stopped.iter().all(Option::is_some)
    }

    /// One step: the pre-fill (first call) or the last tokens fed, then a token sampled for
    /// every running row. Per row the new token; `None` for a row that has stopped (a stop
    /// token is not returned). A stopped row still needs an input: it repeats its last
    /// token, whose result is discarded.
    pub(super) fn step(&mut self) -> Result<Vec<Option<u32>>, GenerateError> {
        let logits = match &self.next {
            None => {
                self.clock.start();
                self.engine.prefill()?
            }
            Some(next) => self.engine.push(next)?,
        };
        let mut next = Vec::with_capacity(logits.len());
        let mut tokens = Vec::with_capacity(logits.len());
        let mut sampled = 0;
        for (row, row_logits) in logits.iter().enumerate() {
            if self.stopped[row].is_some() {
                let history = &self.engine.histories[row];
                next.push(*history.last().unwrap_or(&self.config.bos_id));
                tokens.push(None);
                continue;
            }
            let token = self.samplers[row].sample(row_logits)?;
            sampled += 1;
            match self.config.stop_for(token) {
                Some(reason) => {
                    self.stopped[row] = Some(reason);
                    tokens.push(None);
                }
                None => tokens.push(Some(token)),
            }
            next.push(token);
        }
        self.clock.sampled(sampled);
        self.steps += 1;
        self.logits = logits;
        self.next = Some(next);
        Ok(tokens)
    }

    /// Per row, why it stopped; a row still running when the budget ran out stopped for it.
    pub(super) fn stop_reasons(&self) -> Vec<StopReason> {
        self.stopped
            .iter()
            .map(|r| r.unwrap_or(StopReason::MaxNewTokens))
            .collect()
    }

    pub(super) fn stats(&self) -> GenerationStats {
        self.clock.stats(self.engine.context_resets)
    }
}

/// Timestamps of a generation.
#[derive(Debug, Clone)]
pub(super) struct Clock {
    prompt_tokens: usize,
    start: Option<Instant>,
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
