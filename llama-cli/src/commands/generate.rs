//! `llama-cli generate`: stream a continuation of a prompt (phase 3 of the exercise).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use llama_model::generation::generate::{generate_text, GenerateConfig};

use crate::args::model::ModelArgs;
use crate::args::values;
use crate::args::weight_dtype::WeightDtype;
use crate::runtime::backend::{BackendKind, Job};
use crate::runtime::output::{check_writable, write_atomic};

/// The exercise's default prompt.
pub const DEFAULT_PROMPT: &str = "I have wanted to see this thriller for a while, and it didn't disappoint. Keanu Reeves, playing the hero John Wick, is";

/// Arguments of `llama-cli generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Text to continue; an empty prompt starts from BOS alone.
    #[arg(long, default_value = DEFAULT_PROMPT)]
    pub prompt: String,
    /// Number of tokens to generate.
    #[arg(long, default_value_t = 75, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_new_tokens: u64,
    /// Sampling temperature (0 = greedy). Default: two runs, 0.0 and 1.0, written to
    /// generated-sentence-temp-0.txt and generated-sentence-temp-1.txt as the exercise does.
    #[arg(long, value_parser = values::temperature, allow_hyphen_values = true)]
    pub temperature: Option<f64>,
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
    /// Stop when the model produces EOS.
    #[arg(long)]
    pub stop_at_eos: bool,
    /// Stop when the model produces BOS (llama2.c's behaviour: a new story starts).
    #[arg(long)]
    pub stop_at_bos: bool,
    /// Output file of a single run (with --temperature); by default nothing is written.
    #[arg(long, requires = "temperature")]
    pub out: Option<PathBuf>,
    /// Folder of the two files of the default two-temperature run.
    #[arg(long, default_value = ".", conflicts_with = "temperature")]
    pub out_dir: PathBuf,
    /// Split each weight product of a decoding step into N column blocks run in parallel on
    /// the CPU thread pool (default: one per thread on ndarray and flex for models of dim
    /// 512 and more, else 1).
    #[arg(long, value_parser = values::positive())]
    pub decode_split: Option<usize>,
    /// Precision of the weight matrices while generating (default: as stored; f32, or q8
    /// for llama2.c's int8 export). f16 halves the bytes each decoded token reads (logits
    /// within ~2e-2 of f32's; flex only); q8 quarters them with llama2.c runq.c's int8
    /// products (groups of 64, or the largest power of two dividing every row).
    #[arg(long, value_enum)]
    pub weight_dtype: Option<WeightDtype>,
}

impl Job for GenerateArgs {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device, backend: BackendKind) -> Result<()> {
        let runs: Vec<(f64, Option<PathBuf>)> = match self.temperature {
            Some(t) => vec![(t, self.out.clone())],
            None => vec![
                (
                    0.0,
                    Some(self.out_dir.join("generated-sentence-temp-0.txt")),
                ),
                (
                    1.0,
                    Some(self.out_dir.join("generated-sentence-temp-1.txt")),
                ),
            ],
        };
        for path in runs.iter().filter_map(|(_, p)| p.as_deref()) {
            check_writable(path)?;
        }
        if let Some(dtype) = self.weight_dtype {
            dtype.check(backend)?;
        }

        let (model, config, tokenizer) = self.model.load_as_stored::<B::InnerBackend>(&device)?;
        let (model, weights) =
            WeightDtype::resolve(self.weight_dtype, &model).apply(model, backend)?;
        eprintln!("backend {backend}; weights {weights}");
        let prompt = tokenizer.encode(&self.prompt, true, false)?;
        let context = config.max_seq_len;
        if prompt.len() > context {
            // The exercise's generate() feeds the model only the last max_seq_len tokens of its
            // context at every step; the library does the same (see llama_model::generation::generate).
            eprintln!(
                "note: the prompt has {} tokens, more than the model's context of {context}: \
                 each step sees only the last {context} tokens, as the exercise does",
                prompt.len()
            );
        }
        let prompt_text = tokenizer.decode(&prompt)?;
        let split = backend.decode_split(self.decode_split, config.dim);
        let mut stdout = std::io::stdout().lock();
        for (temperature, out) in runs {
            let config = GenerateConfig::new()
                .with_max_new_tokens(self.max_new_tokens as usize)
                .with_temperature(temperature)
                .with_top_p(self.top_p)
                .with_top_k(self.top_k)
                .with_min_p(self.min_p)
                .with_repetition_penalty(self.repetition_penalty)
                .with_presence_penalty(self.presence_penalty)
                .with_frequency_penalty(self.frequency_penalty)
                .with_seed(self.seed)
                .with_stop_at_eos(self.stop_at_eos)
                .with_stop_at_bos(self.stop_at_bos)
                .with_bos_id(tokenizer.bos_id())
                .with_eos_id(tokenizer.eos_id())
                .with_decode_split(split);
            eprintln!("--- temperature {temperature}");
            write!(stdout, "{prompt_text}")?;
            stdout.flush()?;
            let result = generate_text(&model, &tokenizer, &prompt, &config, |piece| {
                // A closed stdout (e.g. `| head`) must not abort the run: ignore write errors.
                let _ = write!(stdout, "{piece}");
                let _ = stdout.flush();
            })?;
            writeln!(stdout)?;
            let stats = result.generation.stats;
            let speed = stats
                .tokens_per_second()
                .map_or_else(|| "n/a".to_string(), |s| format!("{s:.1}"));
            eprintln!(
                "{} tokens; {speed} tokens/s (after the first); first token after {:.3} s",
                stats.generated_tokens,
                stats.time_to_first_token.map_or(0.0, |d| d.as_secs_f64())
            );
            if let Some(path) = out {
                let full = format!("{prompt_text}{}\n", result.text);
                write_atomic(&path, full.as_bytes())?;
                eprintln!("wrote {}", path.display());
            }
        }
        Ok(())
    }
}
