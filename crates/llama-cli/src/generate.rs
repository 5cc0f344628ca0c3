//! `llama-cli generate`: stream a continuation of a prompt (phase 3 of the exercise).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};
use burn::module::Module;
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use llama_model::generate::{generate_text, GenerateConfig};
use llama_model::{load_checkpoint, LoadOptions, Tokenizer};

use crate::backend::{BackendKind, Job};
use crate::output::{check_writable, write_atomic};

/// The exercise's default prompt.
pub const DEFAULT_PROMPT: &str = "I have wanted to see this thriller for a while, and it didn't disappoint. Keanu Reeves, playing the hero John Wick, is";

/// Arguments of `llama-cli generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Model checkpoint (.pt, .bin or .safetensors).
    #[arg(long, default_value = "stories42M.pt")]
    pub checkpoint: PathBuf,
    /// JSON config for a safetensors checkpoint without one beside it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Tokenizer (.model, .bin or .json); default: the one beside the checkpoint, else
    /// `tokenizer.model`.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Text to continue; an empty prompt starts from BOS alone.
    #[arg(long, default_value = DEFAULT_PROMPT)]
    pub prompt: String,
    /// Number of tokens to generate.
    #[arg(long, default_value_t = 75, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_new_tokens: u64,
    /// Sampling temperature (0 = greedy). Default: two runs, 0.0 and 1.0, written to
    /// generated-sentence-temp-0.txt and generated-sentence-temp-1.txt as the exercise does.
    #[arg(long, value_parser = parse_temperature)]
    pub temperature: Option<f64>,
    /// Nucleus sampling: sample from the smallest set of tokens whose probability reaches
    /// this (off by default).
    #[arg(long, value_parser = parse_top_p)]
    pub top_p: Option<f64>,
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
}

fn parse_temperature(s: &str) -> Result<f64, String> {
    let t: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if t.is_finite() && t >= 0.0 {
        Ok(t)
    } else {
        Err(format!("temperature must be a finite number >= 0, got {s}"))
    }
}

fn parse_top_p(s: &str) -> Result<f64, String> {
    let p: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if p > 0.0 && p <= 1.0 {
        Ok(p)
    } else {
        Err(format!("top-p must be in (0, 1], got {s}"))
    }
}

/// The tokenizer to use for `checkpoint`: the one beside it (tokenizer.model/.bin/.json, or
/// a single tok*.model / tok*.bin such as stories260K's tok512), else ./tokenizer.model.
pub fn find_tokenizer(checkpoint: &Path) -> PathBuf {
    let dir = checkpoint.parent().unwrap_or(Path::new("."));
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    for name in ["tokenizer.model", "tokenizer.bin", "tokenizer.json"] {
        if dir.join(name).is_file() {
            return dir.join(name);
        }
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let name = p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                name.starts_with("tok") && (name.ends_with(".model") || name.ends_with(".bin"))
            })
            .collect();
        found.sort(); // tok512.bin before tok512.model: both encode identically
        if let Some(p) = found.into_iter().next() {
            return p;
        }
    }
    PathBuf::from("tokenizer.model")
}

/// Explain how to get the exercise's checkpoint when it is not there.
pub fn missing_checkpoint_help(path: &Path) -> String {
    format!(
        "checkpoint {} not found. The exercise's model is stories42M.pt: download it with\n  \
         wget https://www.cs.cmu.edu/~vijayv/stories42M.pt\n\
         and put it in the current folder (or pass --checkpoint PATH). Any llama2.c .bin/.pt or \
         safetensors Llama works too, e.g. --checkpoint ../shared/fixtures/models/stories260K/stories260K.bin",
        path.display()
    )
}

impl Job for GenerateArgs {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device, backend: BackendKind) -> Result<()> {
        if !self.checkpoint.exists() {
            bail!(missing_checkpoint_help(&self.checkpoint));
        }
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

        let tokenizer_path = self
            .tokenizer
            .clone()
            .unwrap_or_else(|| find_tokenizer(&self.checkpoint));
        let start = Instant::now();
        let options = LoadOptions {
            config: self.config.clone(),
        };
        let loaded = load_checkpoint::<B::InnerBackend>(&self.checkpoint, &options, &device)?;
        let tokenizer = Tokenizer::from_file(&tokenizer_path)?;
        let load_time = start.elapsed();
        if tokenizer.vocab_size() != loaded.config.vocab_size {
            bail!(
                "tokenizer {} has {} tokens but the model {} expects {}: pass the model's tokenizer with --tokenizer",
                tokenizer_path.display(),
                tokenizer.vocab_size(),
                self.checkpoint.display(),
                loaded.config.vocab_size
            );
        }
        eprintln!(
            "loaded {} ({}, {} parameters) and {} in {:.2} s on {backend}",
            self.checkpoint.display(),
            loaded.format,
            loaded.model.num_params(),
            tokenizer_path.display(),
            load_time.as_secs_f64()
        );

        let prompt = tokenizer.encode(&self.prompt, true, false)?;
        let context = loaded.config.max_seq_len;
        if prompt.len() >= context {
            bail!(
                "the prompt has {} tokens; the model's context is {context} tokens: shorten it",
                prompt.len()
            );
        }
        let prompt_text = tokenizer.decode(&prompt)?;
        let mut stdout = std::io::stdout().lock();
        for (temperature, out) in runs {
            let config = GenerateConfig::new()
                .with_max_new_tokens(self.max_new_tokens as usize)
                .with_temperature(temperature)
                .with_top_p(self.top_p)
                .with_seed(self.seed)
                .with_stop_at_eos(self.stop_at_eos)
                .with_stop_at_bos(self.stop_at_bos)
                .with_bos_id(tokenizer.bos_id())
                .with_eos_id(tokenizer.eos_id());
            eprintln!("--- temperature {temperature}");
            write!(stdout, "{prompt_text}")?;
            stdout.flush()?;
            let result = generate_text(&loaded.model, &tokenizer, &prompt, &config, |piece| {
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
