//! The sampling flags of the commands that generate text (`generate`, `chat`).

use clap::Args;
use llama_model::generation::generate::GenerateConfig;

use crate::args::values;

/// Filters, penalties and seed of sampling (the temperature is each command's own).
#[derive(Debug, Args)]
pub struct SamplingArgs {
    /// Nucleus sampling: sample from the smallest set of tokens whose probability reaches
    /// this (off by default).
    #[arg(long, value_parser = values::top_p, allow_hyphen_values = true)]
    pub top_p: Option<f64>,
    /// Sample only from the K most probable tokens (off by default).
    #[arg(long, value_parser = values::positive())]
    pub top_k: Option<usize>,
    /// Drop tokens less probable than this fraction of the most probable one, in [0, 1]
    /// (off by default).
    #[arg(long, value_parser = values::min_p, allow_hyphen_values = true)]
    pub min_p: Option<f64>,
    /// Repetition penalty over the prompt's and the generated tokens, as `transformers`'
    /// (1 = off; above 1 discourages repeats). Applies to greedy decoding too.
    #[arg(long, default_value_t = 1.0, value_parser = values::repetition_penalty, allow_hyphen_values = true)]
    pub repetition_penalty: f64,
    /// OpenAI's presence penalty over the generated tokens, in [-2, 2].
    #[arg(long, default_value_t = 0.0, value_parser = values::presence_penalty, allow_hyphen_values = true)]
    pub presence_penalty: f64,
    /// OpenAI's frequency penalty over the generated tokens, in [-2, 2].
    #[arg(long, default_value_t = 0.0, value_parser = values::frequency_penalty, allow_hyphen_values = true)]
    pub frequency_penalty: f64,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
}

impl SamplingArgs {
    /// `config` with these settings.
    pub fn apply(&self, config: GenerateConfig) -> GenerateConfig {
        config
            .with_top_p(self.top_p)
            .with_top_k(self.top_k)
            .with_min_p(self.min_p)
            .with_repetition_penalty(self.repetition_penalty)
            .with_presence_penalty(self.presence_penalty)
            .with_frequency_penalty(self.frequency_penalty)
            .with_seed(self.seed)
    }
}
