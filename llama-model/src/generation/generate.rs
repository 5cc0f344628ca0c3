//! Autoregressive text generation with a KV cache.
//!
//! Each call starts from an empty cache: the prompt is pre-filled in one forward pass, then
//! one token per step is fed, its keys/values appended to the cache
//! ([`Llama::forward_cached`]).
//!
//! # Context overflow
//!
//! The exercise's `generate` crops the context to its last `max_seq_len` tokens before every
//! step (`idx[:, -max_seq_len:]`), re-running that window from position 0. We reproduce that
//! exactly: while the context fits (`len <= max_seq_len`) the cache holds all of it and one
//! token per step is exact; once it would not fit, the cache is cleared and the last
//! `max_seq_len` tokens are pre-filled again, at positions `0..max_seq_len`. A shifted window
//! changes every hidden state (each token saw the dropped one), so no cached state can be
//! reused: past the context length, every step is a full window pass, as in the exercise.
//! [`GenerationStats::context_resets`] counts them. The cache never overflows.
//!
//! # Batches
//!
//! Every generation runs on the continuous-batching engine ([`crate::generation::batch`]):
//! [`generate_batch`] makes each prompt a slot with its own cache, pre-filled alone, and
//! decodes the slots together, the weight products on all rows at once and the attention per
//! row. So each row computes what it would alone, up to the rounding of differently shaped
//! matrix products on backends whose products are not batch-invariant (flex).
//!
//! Use an inference backend (not `Autodiff<_>`): on an autodiff backend dropout is active.

use std::time::Duration;

use burn::config::Config;
use burn::tensor::backend::Backend;

use crate::generation::controls::Controls;
use crate::generation::decoder::Decoder;
use crate::generation::logprobs::{TokenLogprob, MAX_TOP_LOGPROBS};
use crate::generation::sampling::{self, Sampler, SamplingError};
use crate::generation::stop_strings::StopStrings;
use crate::model::llama::Llama;
use crate::tokenizer::TextStream;
use crate::tokenizer::{Tokenizer, TokenizerError};

/// Settings of one generation.
#[derive(Config, Debug, PartialEq)]
pub struct GenerateConfig {
    /// Number of tokens to generate at most.
    #[config(default = 256)]
    pub max_new_tokens: usize,
    /// 0 = greedy (argmax); otherwise sample from `softmax(logits / temperature)`.
    /// Must be finite and `>= 0`. 1.0 is the exercise's and llama2.c's default.
    #[config(default = 1.0)]
    pub temperature: f64,
    /// Nucleus sampling threshold in `(0, 1]`; `None` (default) samples from every token.
    #[config(default = "None")]
    pub top_p: Option<f64>,
    /// Keep only the `k` most probable tokens (see [`crate::generation::controls`]).
    #[config(default = "None")]
    pub top_k: Option<usize>,
    /// Drop tokens below `min_p` times the most probable one's probability, in `[0, 1]`.
    #[config(default = "None")]
    pub min_p: Option<f64>,
    /// `transformers`' repetition penalty over prompt and generated tokens (1 = off).
    #[config(default = 1.0)]
    pub repetition_penalty: f64,
    /// OpenAI's presence penalty over generated tokens, in `[-2, 2]`.
    #[config(default = 0.0)]
    pub presence_penalty: f64,
    /// OpenAI's frequency penalty over generated tokens, in `[-2, 2]`.
    #[config(default = 0.0)]
    pub frequency_penalty: f64,
    /// Seed of the sampler's random generator (same seed, same text).
    #[config(default = 0)]
    pub seed: u64,
    /// Stop when the text contains one of these ([`generate_text`] only), across token
    /// boundaries; the stop string is not part of the text.
    #[config(default = "Vec::new()")]
    pub stop_strings: Vec<String>,
    /// Report the log-probability of every generated token and of this many most probable
    /// alternatives at its step ([`generate_text`] only; at most
    /// [`MAX_TOP_LOGPROBS`]); `None` reports nothing.
    #[config(default = "None")]
    pub logprobs: Option<usize>,
    /// Stop when EOS ([`Self::eos_id`]) is sampled.
    #[config(default = false)]
    pub stop_at_eos: bool,
    /// Stop when BOS ([`Self::bos_id`]) is sampled, as llama2.c does (the TinyStories
    /// models separate stories with BOS and never produce EOS).
    #[config(default = false)]
    pub stop_at_bos: bool,
    /// Id of BOS (1 for Llama 2 and tok512; take it from the tokenizer).
    #[config(default = 1)]
    pub bos_id: u32,
    /// Id of EOS (2 for Llama 2 and tok512).
    #[config(default = 2)]
    pub eos_id: u32,
    /// Further ids that end generation as EOS does (with `stop_at_eos`): a Hugging Face
    /// model may list several (Llama 3.x: `<|eot_id|>` and `<|end_of_text|>`).
    #[config(default = "Vec::new()")]
    pub eos_ids: Vec<u32>,
    /// Split each weight product of a decoding step into this many column blocks run on
    /// rayon's pool (see [`crate::weights::split_matmul`]; 1: one product per weight).
    #[config(default = 1)]
    pub decode_split: usize,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl GenerateConfig {
    /// Greedy decoding of `max_new_tokens` tokens, no stop tokens (the fixtures' setting).
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self::new()
            .with_max_new_tokens(max_new_tokens)
            .with_temperature(0.0)
    }

    /// Checks temperature, `top_p` (see [`sampling::validate`]) and the other controls
    /// ([`Controls::validate`]).
    pub fn validate(&self) -> Result<(), GenerateError> {
        sampling::validate(self.temperature, self.top_p)?;
        self.controls().validate()?;
        if let Some(n) = self.logprobs.filter(|&n| n > MAX_TOP_LOGPROBS) {
            return Err(SamplingError::InvalidControl {
                name: "logprobs",
                value: n as f64,
                range: "at most 20",
            }
            .into());
        }
        Ok(())
    }

    /// The penalties and filters besides temperature and `top_p`.
    pub fn controls(&self) -> Controls {
        Controls {
            top_k: self.top_k,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
        }
    }

    /// The sampler for batch row `row` (seed `seed + row`), whose penalties count `prompt`.
    pub(super) fn sampler(&self, row: usize, prompt: &[u32]) -> Result<Sampler, GenerateError> {
        Ok(Sampler::new(
            self.temperature,
            self.top_p,
            self.seed.wrapping_add(row as u64),
        )?
        .with_controls(self.controls(), prompt)?)
    }

    /// Why generation stops at `token`, if it does.
    pub(super) fn stop_for(&self, token: u32) -> Option<StopReason> {
        if self.stop_at_eos && (token == self.eos_id || self.eos_ids.contains(&token)) {
            Some(StopReason::Eos)
        } else if self.stop_at_bos && token == self.bos_id {
            Some(StopReason::Bos)
        } else {
            None
        }
    }
}

/// Why generation cannot run.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// Invalid temperature / `top_p`, or logits no token can be sampled from.
    #[error(transparent)]
    Sampling(#[from] SamplingError),
    /// A prompt without tokens (callers pass at least BOS).
    #[error("prompt {index} is empty; pass at least the BOS token")]
    EmptyPrompt {
        /// Position of the prompt in the batch (0 for a single prompt).
        index: usize,
    },
    /// [`generate_batch`] was given no prompts.
    #[error("no prompts to generate from")]
    EmptyBatch,
    /// A prompt token is not in the model's vocabulary.
    #[error("prompt {index}: token {id} at position {position} is outside the model's vocabulary of {vocab_size}")]
    TokenOutOfRange {
        /// Position of the prompt in the batch.
        index: usize,
        /// Position of the token in the prompt.
        position: usize,
        /// The token id.
        id: u32,
        /// The model's vocabulary size.
        vocab_size: usize,
    },
    /// A chat prompt leaves no room for a reply in the model's context.
    #[error("the conversation has {tokens} tokens, the model's context is {context}: there is no room for a reply")]
    ContextFull {
        /// Tokens of the prompt.
        tokens: usize,
        /// The model's context length.
        context: usize,
    },
    /// The logits could not be read back from the device.
    #[error("cannot read logits from the device: {0}")]
    Data(String),
    /// A generated token could not be decoded (the tokenizer does not match the model).
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// `max_new_tokens` tokens were generated.
    MaxNewTokens,
    /// EOS, or one of the further EOS ids, was sampled (with `stop_at_eos`); it is not part
    /// of the output.
    Eos,
    /// BOS was sampled (with `stop_at_bos`); it is not part of the output.
    Bos,
    /// The text reached one of `stop_strings` ([`generate_text`] only); the text ends
    /// before it, the tokens include the one that completed it.
    StopString,
}

/// Timings of a generation.
///
/// Timestamps are taken when a token has been sampled (its logits read back from the
/// device, so the device work is really done), before the caller's callback runs; callback
/// time between two tokens is included in the decode time.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct GenerationStats {
    /// Prompt tokens (summed over the rows of a batch).
    pub prompt_tokens: usize,
    /// Tokens sampled, including a stop token that ended generation (summed over rows).
    pub generated_tokens: usize,
    /// Tokens sampled after the first step (the ones [`Self::tokens_per_second`] counts).
    pub decode_tokens: usize,
    /// From the start of generation to the first sampled token: the prompt pre-fill plus
    /// one sampling. `None` when nothing was generated.
    pub time_to_first_token: Option<Duration>,
    /// From the first sampled token to the last.
    pub decode_time: Duration,
    /// The whole generation.
    pub total_time: Duration,
    /// Forward passes that ran a cropped window (the last `max_seq_len` tokens) because the
    /// context outgrew `max_seq_len`; see the module documentation.
    pub context_resets: usize,
}

impl GenerationStats {
    /// Decoding speed over the tokens after the first (the first one's time is the
    /// pre-fill, reported as [`Self::time_to_first_token`]); `None` without at least two
    /// steps.
    pub fn tokens_per_second(&self) -> Option<f64> {
        let secs = self.decode_time.as_secs_f64();
        (self.decode_tokens > 0 && secs > 0.0).then(|| self.decode_tokens as f64 / secs)
    }
}

/// The result of [`generate`].
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The new token ids (without the prompt, without a stop token).
    pub tokens: Vec<u32>,
    /// Why generation ended.
    pub stop_reason: StopReason,
    /// Timings.
    pub stats: GenerationStats,
}

/// The result of [`generate_batch`].
#[derive(Debug, Clone, PartialEq)]
pub struct BatchGeneration {
    /// Per prompt, the new token ids (without a stop token).
    pub tokens: Vec<Vec<u32>>,
    /// Per prompt, why its generation ended.
    pub stop_reasons: Vec<StopReason>,
    /// Timings of the whole batch (token counts summed over rows).
    pub stats: GenerationStats,
}

/// The result of [`generate_text`].
#[derive(Debug, Clone, PartialEq)]
pub struct TextGeneration {
    /// Ids, stop reason and timings.
    pub generation: Generation,
    /// The text of the new tokens, as streamed (continuing after the prompt, so a first
    /// word keeps its leading space).
    pub text: String,
    /// Per generated token, its log-probabilities (with [`GenerateConfig::logprobs`]).
    pub logprobs: Vec<TokenLogprob>,
}

/// Generates up to `config.max_new_tokens` tokens after `prompt` (at least one token,
/// normally starting with BOS), calling `on_token` with each new token as soon as it is
/// sampled. A stop token (see [`GenerateConfig`]) ends generation and is neither passed to
/// `on_token` nor returned.
///
/// For control over each step (stopping early, handling errors per token) use
/// [`Generator`], which this drives.
pub fn generate<B: Backend>(
    model: &Llama<B>,
    prompt: &[u32],
    config: &GenerateConfig,
    mut on_token: impl FnMut(u32),
) -> Result<Generation, GenerateError> {
    let mut generator = Generator::new(model, prompt, config)?;
    let mut tokens = Vec::new();
    for token in generator.by_ref() {
        let token = token?;
        on_token(token);
        tokens.push(token);
    }
    Ok(Generation {
        tokens,
        stop_reason: generator.stop_reason().unwrap_or(StopReason::MaxNewTokens),
        stats: generator.stats(),
    })
}

/// Like [`generate`], streaming text: `on_text` receives each complete piece of text as
/// soon as it is known (UTF-8 safe: the bytes of a character spelled by several byte
/// pieces are held back until it is complete; see [`TextStream`]). The text continues
/// after the prompt, which the caller prints itself (`tokenizer.decode(prompt)`).
pub fn generate_text<B: Backend>(
    model: &Llama<B>,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    config: &GenerateConfig,
    mut on_text: impl FnMut(&str),
) -> Result<TextGeneration, GenerateError> {
    let mut generator = Generator::new(model, prompt, config)?;
    let last = prompt
        .last()
        .copied()
        .ok_or(GenerateError::EmptyPrompt { index: 0 })?;
    let mut stream = TextStream::after(tokenizer, last);
    let mut stops = StopStrings::new(&config.stop_strings);
    let mut tokens = Vec::new();
    let mut logprobs = Vec::new();
    let mut text = String::new();
    let mut emit = |chunk: String, text: &mut String| {
        if !chunk.is_empty() {
            on_text(&chunk);
            text.push_str(&chunk);
        }
    };
    while let Some(token) = generator.next() {
        let token = token?;
        tokens.push(token);
        if let Some(top) = config.logprobs {
            logprobs.push(TokenLogprob::of(generator.logits(), token, top));
        }
        emit(stops.push(&stream.push(token)?), &mut text);
        if stops.stopped() {
            break;
        }
    }
    let stop_reason = if stops.stopped() {
        StopReason::StopString
    } else {
        emit(stops.push(&stream.finish()), &mut text);
        emit(stops.finish(), &mut text);
        if stops.stopped() {
            StopReason::StopString
        } else {
            generator.stop_reason().unwrap_or(StopReason::MaxNewTokens)
        }
    };
    Ok(TextGeneration {
        generation: Generation {
            tokens,
            stop_reason,
            stats: generator.stats(),
        },
        text,
        logprobs,
    })
}

/// Step-by-step generation of one prompt: an iterator over the new tokens.
///
/// Each `next()` runs one forward pass (the first one pre-fills the prompt) and samples one
/// token; iteration ends after `max_new_tokens` tokens, or without yielding a stop token
/// that ends generation. Dropping it early simply stops. After an error, it yields `None`.
///
/// ```no_run
/// # use burn::backend::NdArray;
/// # fn demo(model: &llama_model::Llama<NdArray>) -> Result<(), llama_model::generation::generate::GenerateError> {
/// use llama_model::generation::generate::{GenerateConfig, Generator};
/// let config = GenerateConfig::new().with_temperature(0.8).with_seed(7).with_stop_at_bos(true);
/// let mut generator = Generator::new(model, &[1], &config)?;
/// for token in generator.by_ref().take(10) {
///     println!("{}", token?);
/// }
/// println!("{:?}", generator.stats().tokens_per_second());
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Generator<'m, B: Backend> {
    decoder: Decoder<'m, B>,
    /// Set after an error: nothing more is yielded.
    failed: bool,
}

impl<'m, B: Backend> Generator<'m, B> {
    /// Prepares generation after `prompt`; validates the config and the prompt (non-empty,
    /// ids inside the vocabulary). Nothing runs until the first `next()`.
    pub fn new(
        model: &'m Llama<B>,
        prompt: &[u32],
        config: &GenerateConfig,
    ) -> Result<Self, GenerateError> {
        Ok(Self {
            decoder: Decoder::new(model, vec![prompt.to_vec()], config)?,
            failed: false,
        })
    }

    /// The logits `[vocab]` the last token was sampled from (empty before the first).
    pub fn logits(&self) -> &[f32] {
        self.decoder.logits.first().map_or(&[], Vec::as_slice)
    }

    /// Why generation ended; `None` while it runs (or after an error).
    pub fn stop_reason(&self) -> Option<StopReason> {
        if self.failed || !self.decoder.done() {
            return None;
        }
        Some(
            self.decoder
                .stop_reasons()
                .pop()
                .unwrap_or(StopReason::MaxNewTokens),
        )
    }

    /// Timings so far.
    pub fn stats(&self) -> GenerationStats {
        self.decoder.stats()
    }
}

impl<B: Backend> Iterator for Generator<'_, B> {
    type Item = Result<u32, GenerateError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.decoder.done() {
            return None;
        }
        match self.decoder.step() {
            Ok(tokens) => tokens.into_iter().next().flatten().map(Ok),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// Generates from several prompts at once (one forward pass per step for the batch).
///
/// Row `i` samples with its own generator seeded `config.seed + i`, so it reproduces
/// [`generate`] of prompt `i` with that seed (exactly when greedy; when sampling, up to the
/// rare draw that lands within rounding of a CDF boundary). A row that stops leaves the
/// batch; the others go on.
pub fn generate_batch<B: Backend>(
    model: &Llama<B>,
    prompts: &[Vec<u32>],
    config: &GenerateConfig,
) -> Result<BatchGeneration, GenerateError> {
    if prompts.is_empty() {
        return Err(GenerateError::EmptyBatch);
    }
    let mut decoder = Decoder::new(model, prompts.to_vec(), config)?;
    let mut tokens = vec![Vec::new(); prompts.len()];
    while !decoder.done() {
        for (row, token) in decoder.step()?.into_iter().enumerate() {
            tokens[row].extend(token);
        }
    }
    Ok(BatchGeneration {
        tokens,
        stop_reasons: decoder.stop_reasons(),
        stats: decoder.stats(),
    })
}

/// The exercise's generation loop, without a cache: every step re-runs the whole context,
/// cropped to its last `max_seq_len` tokens, and samples from the last position's logits.
/// Same sampler, stop rules and seed as [`generate`]; a reference for tests (quadratic cost),
/// so only in test builds (the `test-support` feature).
#[cfg(any(test, feature = "test-support"))]
pub fn generate_uncached<B: Backend>(
    model: &Llama<B>,
    prompt: &[u32],
    config: &GenerateConfig,
) -> Result<Generation, GenerateError> {
    use crate::generation::decoder::Clock;
    use crate::generation::engine::{check_prompt, int_tensor, read_rows};

    let mut sampler = config.sampler(0, prompt)?;
    check_prompt(model, 0, prompt)?;
    let mut context = prompt.to_vec();
    let device = model.tok_embeddings.weight.device();
    let mut clock = Clock::new(prompt.len());
    let mut tokens = Vec::new();
    let mut stop_reason = StopReason::MaxNewTokens;
    let mut resets = 0;
    clock.start();
    for _ in 0..config.max_new_tokens {
        let start = context.len().saturating_sub(model.max_seq_len());
        if start > 0 {
            resets += 1;
        }
        let window = &context[start..];
        let input = int_tensor::<B>(window, [1, window.len()], &device);
        let logits = model.forward_last(input).logits; // [1, 1, vocab]
        let vocab = model.vocab_size();
        let logits = read_rows(logits.reshape([1, vocab]))?;
        let token = sampler.sample(&logits[0])?;
        clock.sampled(1);
        if let Some(reason) = config.stop_for(token) {
            stop_reason = reason;
            break;
        }
        tokens.push(token);
        context.push(token);
    }
    Ok(Generation {
        tokens,
        stop_reason,
        stats: clock.stats(resets),
    })
}

#[cfg(test)]
#[path = "generate_tests.rs"]
pub(crate) mod tests;
