//! `llama-cli generate`: stream a continuation of a prompt (phase 3 of the exercise).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use llama_model::generation::chat::{ChatTemplate, Message};
use llama_model::generation::generate::{generate_text, GenerateConfig, GenerationStats};
use llama_model::generation::logprobs::TokenLogprob;
use llama_model::{LoadPrecision, Tokenizer};

use llama_model::lora::peft::merge_adapter;

use crate::args::model::ModelArgs;
use crate::args::sampling::SamplingArgs;
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
    /// A LoRA adapter to merge into the model first: a PEFT folder (adapter_config.json and
    /// adapter_model.safetensors) or an adapter.safetensors of `finetune --lora-rank`.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Text to continue; an empty prompt starts from BOS alone.
    #[arg(long, default_value = DEFAULT_PROMPT)]
    pub prompt: String,
    /// One chat turn instead: the reply to this user message, the prompt being the model's
    /// chat template over it (and --system). Stops at any of the model's EOS ids; only the
    /// reply is printed.
    #[arg(long, value_name = "MESSAGE", conflicts_with = "prompt")]
    pub chat: Option<String>,
    /// The system message of --chat.
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// Number of tokens to generate.
    #[arg(long, default_value_t = 75, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_new_tokens: u64,
    /// Sampling temperature (0 = greedy). Default: two runs, 0.0 and 1.0, written to
    /// generated-sentence-temp-0.txt and generated-sentence-temp-1.txt as the exercise does.
    #[arg(long, value_parser = values::temperature, allow_hyphen_values = true)]
    pub temperature: Option<f64>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Stop when the text contains this string (repeatable); it is matched across token
    /// boundaries and not printed.
    #[arg(long = "stop", value_name = "TEXT")]
    pub stop: Vec<String>,
    /// After the text, list on stderr each generated token's log-probability (the
    /// log-softmax of the raw logits) and those of the N most probable tokens (0 to 20).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(0..=20))]
    pub logprobs: Option<u64>,
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

        // f16 weights are cast as they load, unless an adapter is merged into them first.
        let precision = match (self.weight_dtype, &self.adapter) {
            (Some(WeightDtype::F16), None) => LoadPrecision::F16,
            (Some(WeightDtype::Q8), None) => LoadPrecision::Int8,
            _ => LoadPrecision::AsStored,
        };
        let (model, config, tokenizer) =
            self.model.load_in::<B::InnerBackend>(&device, precision)?;
        let model = match &self.adapter {
            Some(adapter) => merge_adapter(adapter, model.without_q8(), &config)?,
            None => model,
        };
        let (model, weights) =
            WeightDtype::resolve(self.weight_dtype, &model).apply(model, backend)?;
        eprintln!("backend {backend}; weights {weights}");
        let eos_ids = self.model.eos_ids(&tokenizer)?;
        let prompt = match &self.chat {
            Some(message) => {
                let template = ChatTemplate::for_checkpoint(&self.model.checkpoint)?;
                template.prompt_ids(&tokenizer, &turn(self.system.as_deref(), message))?
            }
            None => tokenizer.encode(&self.prompt, true, false)?,
        };
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
        // A chat turn prints only the reply.
        let prompt_text = match self.chat {
            Some(_) => String::new(),
            None => tokenizer.decode(&prompt)?,
        };
        let split = backend.decode_split(self.decode_split, config.dim);
        let mut stdout = std::io::stdout().lock();
        for (temperature, out) in runs {
            let config = self
                .sampling
                .apply(GenerateConfig::new())
                .with_max_new_tokens(self.max_new_tokens as usize)
                .with_temperature(temperature)
                .with_stop_strings(self.stop.clone())
                .with_logprobs(self.logprobs.map(|n| n as usize))
                .with_stop_at_eos(self.stop_at_eos || self.chat.is_some())
                .with_stop_at_bos(self.stop_at_bos)
                .with_bos_id(tokenizer.bos_id())
                .with_eos_id(tokenizer.eos_id())
                .with_eos_ids(eos_ids.clone())
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
            if self.logprobs.is_some() {
                print_logprobs(&tokenizer, &result.logprobs);
            }
            eprintln!("{}", stats_line(&result.generation.stats));
            if let Some(path) = out {
                let full = format!("{prompt_text}{}\n", result.text);
                write_atomic(&path, full.as_bytes())?;
                eprintln!("wrote {}", path.display());
            }
        }
        Ok(())
    }
}

/// The stats line of a generation: tokens, speed, time to the first token.
pub fn stats_line(stats: &GenerationStats) -> String {
    let speed = stats
        .tokens_per_second()
        .map_or_else(|| "n/a".to_string(), |s| format!("{s:.1}"));
    format!(
        "{} tokens; {speed} tokens/s (after the first); first token after {:.3} s",
        stats.generated_tokens,
        stats.time_to_first_token.map_or(0.0, |d| d.as_secs_f64())
    )
}

/// The messages of one chat turn: the system message, if any, then the user's.
fn turn(system: Option<&str>, message: &str) -> Vec<Message> {
    system
        .map(|s| Message::new("system", s))
        .into_iter()
        .chain([Message::new("user", message)])
        .collect()
}

/// One line per generated token on stderr: its piece and log-probability, then the most
/// probable pieces at its step.
fn print_logprobs(tokenizer: &Tokenizer, logprobs: &[TokenLogprob]) {
    let piece = |id: u32| format!("{:?}", tokenizer.id_to_piece(id).unwrap_or("?"));
    for (i, lp) in logprobs.iter().enumerate() {
        let top: Vec<String> = lp
            .top
            .iter()
            .map(|&(id, logprob)| format!("{} {logprob:.4}", piece(id)))
            .collect();
        eprintln!(
            "logprob {i}: {} {:.4} | top: {}",
            piece(lp.token),
            lp.logprob,
            top.join(", ")
        );
    }
}
