//! `llama-cli bench`: generation, prompting and fine-tuning speed and memory, as one table
//! (and optionally JSON), for a checkpoint or a preset config with seeded random weights.
//!
//! Every figure is the median of several timed runs after a warm-up run. Peak resident
//! memory is measured per phase by resetting the kernel's high-water mark
//! (`/proc/self/clear_refs`) before the phase and reading `VmHWM` after it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use burn::module::{AutodiffModule, Module};
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use clap::{Args, ValueEnum};
use indicatif::ProgressBar;
use llama_model::generation::generate::{GenerateConfig, Generator};
use llama_model::train::adamw::AdamWConfig;

use llama_model::{load_checkpoint, Llama, LlamaConfig, LoadOptions, Tokenizer};
use llama_train::classify::classifier::ClassifierConfig;
use llama_train::classify::prompting::{PromptingConfig, ZeroShotClassifier};
use llama_train::data::sentences::{make_batch, read_label_names, DataOptions, SentenceDataset};
use llama_train::run::order::step_seed;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::args::data_files::fixture_or;
use crate::args::model::find_tokenizer;
use crate::args::weight_dtype::WeightDtype;
use crate::runtime::backend::{BackendKind, Job};
use crate::runtime::output::write_atomic;

/// A benchmark phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Phase {
    Generate,
    Prompt,
    Train,
}

impl Phase {
    /// The phase's name in the table.
    fn name(self) -> &'static str {
        match self {
            Self::Generate => "generate",
            Self::Prompt => "prompt",
            Self::Train => "train",
        }
    }
}

/// Arguments of `llama-cli bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Checkpoint to measure (its weights and config).
    #[arg(long, conflicts_with = "config", required_unless_present = "config")]
    pub checkpoint: Option<PathBuf>,
    /// Preset config (e.g. configs/stories42M.json): random weights, seeded.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Tokenizer for the prompting and training phases (default: beside the checkpoint;
    /// for a preset, the Llama 2 tokenizer of the fixtures when the vocabulary is 32000).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Sentences scored by the prompting phase [default: the fixtures' data/sst-dev.txt,
    /// found through LLAMA_FIXTURES, else ../shared/fixtures].
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Label names of the prompting phase [default: the fixtures'
    /// data/sst-label-mapping.json].
    #[arg(long)]
    pub label_names: Option<PathBuf>,
    /// Sentences of the training phase [default: the fixtures' data/sst-train.txt].
    #[arg(long)]
    pub train_data: Option<PathBuf>,
    /// Run one phase only.
    #[arg(long, value_enum)]
    pub only: Option<Phase>,
    /// Also write the figures as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Timed runs per figure (after one warm-up run).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub runs: u64,
    /// Prompt length of the generation phase.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    pub prompt_tokens: u64,
    /// Tokens decoded by the generation phase.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(2..))]
    pub new_tokens: u64,
    /// Batch size of the prompting phase.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub prompt_batch: u64,
    /// Sentences scored per timed prompting run: the first N of the file (default: all of
    /// it, SST dev's 1101, batched in order of length as `prompt` does).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub prompt_sentences: Option<u64>,
    /// Batch size of the training phase.
    #[arg(long, default_value_t = 80, value_parser = clap::value_parser!(u64).range(1..))]
    pub train_batch: u64,
    /// Seed of the random weights and prompt.
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    /// Column blocks per decoding product (see `generate --decode-split`; default: one per
    /// thread on ndarray and flex for models of dim 512 and more, else 1).
    #[arg(long, value_parser = crate::args::values::positive())]
    pub decode_split: Option<usize>,
    /// Precision of the weight matrices in the generation phase (see `generate
    /// --weight-dtype`; default: as stored). Prompting and training run on the f32 weights:
    /// f16 and q8 pay where products read each weight once per row (decoding); batched
    /// products ran slower in f16 (42M prompting: 32 → 24 sentences/s).
    #[arg(long, value_enum)]
    pub weight_dtype: Option<WeightDtype>,
}

/// Peak resident memory since the last reset, in MiB (Linux; `None` elsewhere).
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Reset the peak-RSS mark to the current RSS (best effort).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

struct Model<B: Backend> {
    llama: Llama<B>,
    config: LlamaConfig,
    load_seconds: f64,
    source: String,
}

fn load_model<B: Backend>(args: &BenchArgs, device: &B::Device) -> Result<Model<B>> {
    let start = Instant::now();
    let (llama, config, source) = match (&args.checkpoint, &args.config) {
        (Some(path), _) => {
            let loaded = load_checkpoint::<B>(path, &LoadOptions::default(), device)?;
            (loaded.model, loaded.config, path.display().to_string())
        }
        (None, Some(path)) => {
            let config = LlamaConfig::from_json_file(path)?;
            B::seed(device, args.seed);
            let llama = config.init::<B>(device);
            (
                llama,
                config,
                format!("{} (random weights, seed {})", path.display(), args.seed),
            )
        }
        (None, None) => bail!("pass --checkpoint or --config"),
    };
    // One single-token pass, so that first-use costs (kernel set-up, allocator warm-up) fall
    // in the load time and not in the first timed run.
    let one = burn::tensor::Tensor::<B, 2, burn::tensor::Int>::ones([1, 1], device);
    let _ = llama.forward_last(one).logits.sum().into_scalar();
    Ok(Model {
        llama,
        config,
        load_seconds: start.elapsed().as_secs_f64(),
        source,
    })
}

fn tokenizer_for(args: &BenchArgs, config: &LlamaConfig) -> Result<Tokenizer> {
    let path = match (&args.tokenizer, &args.checkpoint) {
        (Some(p), _) => p.clone(),
        (None, Some(checkpoint)) => find_tokenizer(checkpoint),
        (None, None) if config.vocab_size == 32000 => {
            fixture_or(&None, "tokenizers/llama2-tokenizer.model", "--tokenizer")?
        }
        (None, None) => bail!(
            "pass --tokenizer for a model with a {}-token vocabulary",
            config.vocab_size
        ),
    };
    let tokenizer = Tokenizer::from_file(&path)?;
    if tokenizer.vocab_size() != config.vocab_size {
        bail!(
            "tokenizer {} has {} tokens, the model {}",
            path.display(),
            tokenizer.vocab_size(),
            config.vocab_size
        );
    }
    Ok(tokenizer)
}

/// One figure of the table and of the JSON report: both are printed from the same rows.
struct Row {
    /// `load`, `generate`, `prompt` or `train`.
    phase: &'static str,
    /// What the table calls it.
    label: String,
    /// Its key in the JSON report.
    key: &'static str,
    value: Option<f64>,
    /// Decimals in the table.
    digits: usize,
}

/// The JSON report (`--json`): the run's setting, then every [`Row`] by key.
#[derive(Serialize)]
struct Report<'a> {
    source: &'a str,
    backend: &'static str,
    threads: usize,
    decode_split: usize,
    huge_pages: bool,
    /// jemalloc's delay before freed pages go back to the kernel (-1: kept; see
    /// `allocator::freed_page_decay_ms`).
    freed_page_decay_ms: Option<isize>,
    weight_dtype: &'static str,
    machine: String,
    cores: usize,
    runs: u64,
    /// The largest peak RSS of the phases run.
    peak_rss_mb: Option<f64>,
    #[serde(flatten)]
    figures: std::collections::BTreeMap<&'static str, Option<f64>>,
}

/// Whether the table shows a phase's rows (`--only`).
fn wants_row(args: &BenchArgs, phase: &str) -> bool {
    match args.only {
        None => true,
        Some(only) => phase == "load" || phase == only.name(),
    }
}

#[derive(Default)]
struct Figures {
    prefill_tokens_per_s: Option<f64>,
    decode_tokens_per_s: Option<f64>,
    time_to_first_token_s: Option<f64>,
    generate_peak_rss_mb: Option<f64>,
    prompt_sentences_per_s: Option<f64>,
    prompt_peak_rss_mb: Option<f64>,
    train_step_seconds: Option<f64>,
    train_sentences_per_s: Option<f64>,
    train_peak_rss_mb: Option<f64>,
}

impl Figures {
    /// Every figure as a row, in table order.
    fn rows(
        &self,
        args: &BenchArgs,
        load_seconds: f64,
        load_rss: Option<f64>,
        weight_bytes: f64,
    ) -> Vec<Row> {
        let row = |phase, label: String, key, value, digits| Row {
            phase,
            label,
            key,
            value,
            digits,
        };
        vec![
            row(
                "load",
                "seconds".into(),
                "load_seconds",
                Some(load_seconds),
                3,
            ),
            row(
                "load",
                "peak RSS MiB".into(),
                "load_peak_rss_mb",
                load_rss,
                0,
            ),
            row(
                "generate",
                format!("prefill tokens/s ({}-token prompt)", args.prompt_tokens),
                "prefill_tokens_per_s",
                self.prefill_tokens_per_s,
                1,
            ),
            row(
                "generate",
                format!("decode tokens/s ({} new, first excluded)", args.new_tokens),
                "decode_tokens_per_s",
                self.decode_tokens_per_s,
                1,
            ),
            row(
                "generate",
                format!(
                    "weights streamed GB/s (decode x {:.0} MB)",
                    weight_bytes / 1e6
                ),
                "decode_weight_gb_per_s",
                self.decode_tokens_per_s.map(|t| t * weight_bytes / 1e9),
                1,
            ),
            row(
                "generate",
                "time to first token s".into(),
                "time_to_first_token_s",
                self.time_to_first_token_s,
                4,
            ),
            row(
                "generate",
                "peak RSS MiB".into(),
                "generate_peak_rss_mb",
                self.generate_peak_rss_mb,
                0,
            ),
            row(
                "prompt",
                format!("sentences/s (batch {})", args.prompt_batch),
                "prompt_sentences_per_s",
                self.prompt_sentences_per_s,
                1,
            ),
            row(
                "prompt",
                "peak RSS MiB".into(),
                "prompt_peak_rss_mb",
                self.prompt_peak_rss_mb,
                0,
            ),
            row(
                "train",
                format!("seconds/step (batch {})", args.train_batch),
                "train_step_seconds",
                self.train_step_seconds,
                3,
            ),
            row(
                "train",
                "sentences/s".into(),
                "train_sentences_per_s",
                self.train_sentences_per_s,
                1,
            ),
            row(
                "train",
                "peak RSS MiB".into(),
                "train_peak_rss_mb",
                self.train_peak_rss_mb,
                0,
            ),
        ]
    }
}

/// One greedy generation: `(time to first token, decode tokens/s)`.
fn time_generation<B: Backend>(
    model: &Llama<B>,
    prompt: &[u32],
    new_tokens: usize,
    split: usize,
) -> Result<(Duration, f64)> {
    let config = GenerateConfig::greedy(new_tokens).with_decode_split(split);
    let mut generator = Generator::new(model, prompt, &config)?;
    for token in generator.by_ref() {
        token?;
    }
    let stats = generator.stats();
    Ok((
        stats.time_to_first_token.unwrap_or_default(),
        stats.tokens_per_second().unwrap_or(f64::NAN),
    ))
}

fn bench_generate<B: Backend>(
    args: &BenchArgs,
    model: &Model<B>,
    llama: &Llama<B>,
    split: usize,
    f: &mut Figures,
    bar: &ProgressBar,
) -> Result<()> {
    bar.set_prefix("bench generate");
    let n = args.prompt_tokens as usize;
    if n + args.new_tokens as usize > model.config.max_seq_len {
        bail!(
            "{} prompt + {} new tokens exceed the model's context of {}",
            n,
            args.new_tokens,
            model.config.max_seq_len
        );
    }
    // A seeded random prompt of ordinary tokens (ids past BOS/EOS/byte pieces).
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let low = 259.min(model.config.vocab_size as u32 - 1);
    let mut prompt = vec![1u32];
    prompt.extend((1..n).map(|_| rng.random_range(low..model.config.vocab_size as u32)));
    reset_peak_rss();
    time_generation(llama, &prompt, 8, split)?; // warm-up
    bar.inc(1);
    let mut ttft = vec![];
    let mut decode = vec![];
    for _ in 0..args.runs {
        let (first, speed) = time_generation(llama, &prompt, args.new_tokens as usize, split)?;
        bar.inc(1);
        ttft.push(first.as_secs_f64());
        decode.push(speed);
    }
    let ttft = median(ttft);
    f.time_to_first_token_s = Some(ttft);
    f.prefill_tokens_per_s = Some(n as f64 / ttft);
    f.decode_tokens_per_s = Some(median(decode));
    f.generate_peak_rss_mb = peak_rss_mb();
    Ok(())
}

fn bench_prompt<B: Backend>(
    args: &BenchArgs,
    llama: &Llama<B>,
    tokenizer: &Tokenizer,
    device: &B::Device,
    f: &mut Figures,
    bar: &ProgressBar,
) -> Result<()> {
    bar.set_prefix("bench prompt");
    let names = read_label_names(fixture_or(
        &args.label_names,
        "data/sst-label-mapping.json",
        "--label-names",
    )?)?;
    let classifier = ZeroShotClassifier::new(tokenizer, names)?;
    let data = fixture_or(&args.data, "data/sst-dev.txt", "--data")?;
    let dataset = classifier.load_dataset(&data, tokenizer, &DataOptions::default())?;
    let items = dataset.items();
    let part = &items[..args
        .prompt_sentences
        .map_or(items.len(), |n| (n as usize).min(items.len()))];
    let config = PromptingConfig {
        batch_size: args.prompt_batch as usize,
        pad_position_scoring: false,
    };
    reset_peak_rss();
    // Warm-up: one batch.
    classifier.classify_items(
        llama,
        &part[..part.len().min(config.batch_size)],
        &config,
        device,
    )?;
    bar.inc(1);
    let mut rates = vec![];
    for _ in 0..args.runs {
        let start = Instant::now();
        classifier.classify_items(llama, part, &config, device)?;
        rates.push(part.len() as f64 / start.elapsed().as_secs_f64());
        bar.inc(1);
    }
    f.prompt_sentences_per_s = Some(median(rates));
    f.prompt_peak_rss_mb = peak_rss_mb();
    Ok(())
}

/// Marks every float parameter as requiring gradients.
struct Trainable;

impl<B: Backend> burn::module::ModuleMapper<B> for Trainable {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<burn::tensor::Tensor<B, D>>,
    ) -> burn::module::Param<burn::tensor::Tensor<B, D>> {
        param.set_require_grad(true)
    }
}

fn bench_train<B: AutodiffBackend>(
    args: &BenchArgs,
    model: &Model<B::InnerBackend>,
    tokenizer: &Tokenizer,
    device: &B::Device,
    f: &mut Figures,
    bar: &ProgressBar,
) -> Result<()> {
    bar.set_prefix("bench train");
    let train_data = fixture_or(&args.train_data, "data/sst-train.txt", "--train-data")?;
    let dataset = SentenceDataset::from_file(&train_data, tokenizer, &DataOptions::default())?;
    let items = dataset.items();
    let batch = args.train_batch as usize;
    if items.len() < batch {
        bail!(
            "{} has {} sentences, fewer than one batch of {batch}",
            train_data.display(),
            items.len()
        );
    }
    let num_labels = items.iter().map(|i| i.label).max().unwrap_or(0) + 1;
    let config = ClassifierConfig::new(model.config.clone(), num_labels);
    // `from_inner` keeps the inner parameters' "no gradient" flag: mark every weight
    // trainable, as a checkpoint loaded for fine-tuning is (otherwise only the head trains).
    let llama = Llama::<B>::from_inner(model.llama.clone()).map(&mut Trainable);
    let mut classifier = config.init_with_llama(llama, args.seed)?;
    let mut optim = AdamWConfig::new()
        .init::<B, llama_train::classify::classifier::LlamaEmbeddingClassifier<B>>()?;
    reset_peak_rss();
    let mut times = vec![];
    // Consecutive training batches (the exercise's batches are padded to 59–93 tokens).
    for (step, rows) in items
        .chunks_exact(batch)
        .take(args.runs as usize + 1)
        .enumerate()
    {
        let tokens: Vec<&[u32]> = rows.iter().map(|r| r.tokens.as_slice()).collect();
        let labels: Vec<usize> = rows.iter().map(|r| r.label).collect();
        let start = Instant::now();
        let mut batch = make_batch::<B, _>(&tokens, &labels, tokenizer.pad_id(), device);
        // The mask as fine-tuning draws it (on the host, from the step's seed).
        batch.dropout_seed = Some(step_seed(args.seed, 1, step));
        let output = classifier.forward_classification(batch);
        let loss = output.loss.mean();
        let grads = GradientsParams::from_grads(loss.backward(), &classifier);
        classifier = optim.step(2e-5, classifier, grads);
        // Force the update to finish before the clock stops.
        let _ = classifier.classifier_head.weight.val().sum().into_scalar();
        if step > 0 {
            times.push(start.elapsed().as_secs_f64());
        }
        bar.inc(1);
    }
    let step = median(times);
    f.train_step_seconds = Some(step);
    f.train_sentences_per_s = Some(batch as f64 / step);
    f.train_peak_rss_mb = peak_rss_mb();
    Ok(())
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

impl Job for BenchArgs {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device, backend: BackendKind) -> Result<()> {
        if let Some(path) = &self.json {
            crate::runtime::output::check_writable(path)?;
        }
        if let Some(dtype) = self.weight_dtype {
            dtype.check(backend)?;
        }
        let threads = rayon::current_num_threads();
        let huge_pages = crate::runtime::allocator::huge_pages_enabled();
        let decay = crate::runtime::allocator::freed_page_decay_ms();
        reset_peak_rss();
        let mut model = load_model::<B::InnerBackend>(&self, &device)?;
        let dtype = WeightDtype::resolve(self.weight_dtype, &model.llama);
        let split = backend.decode_split(self.decode_split, model.config.dim);
        let load_rss = peak_rss_mb();
        let wants = |p: Phase| self.only.is_none_or(|only| only == p);
        // The generation phase's weights (`--weight-dtype`).
        let (decoding, weights) = if wants(Phase::Generate) {
            let (llama, text) = dtype.apply(model.llama.clone(), backend)?;
            eprintln!("decode weights {text}");
            (Some(llama), text)
        } else {
            (None, dtype.name().to_string())
        };
        // Prompting and training run on f32 weights (an int8 export's dequantized ones).
        model.llama = model.llama.without_q8();
        let mut f = Figures::default();
        let tokenizer = if wants(Phase::Prompt) || wants(Phase::Train) {
            Some(tokenizer_for(&self, &model.config)?)
        } else {
            None
        };
        // A warm-up and the timed runs of each phase; drawn only between runs.
        let phases = [Phase::Generate, Phase::Prompt, Phase::Train]
            .into_iter()
            .filter(|&p| wants(p))
            .count();
        let bar = crate::runtime::progress::bar(phases * (self.runs as usize + 1), "bench", "runs");
        if let Some(llama) = &decoding {
            bench_generate(&self, &model, llama, split, &mut f, &bar)
                .context("generation phase")?;
        }
        if let (true, Some(tok)) = (wants(Phase::Prompt), &tokenizer) {
            // The layout `llama-cli prompt` uses.
            let llama = backend.layout_for_batches(model.llama.clone());
            bench_prompt(&self, &llama, tok, &device, &mut f, &bar).context("prompting phase")?;
        }
        if let (true, Some(tok)) = (wants(Phase::Train), &tokenizer) {
            bench_train::<B>(&self, &model, tok, &device, &mut f, &bar)
                .context("training phase")?;
        }
        bar.finish_and_clear();

        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        // A decoded token reads every weight once (norms are f32 either way, a rounding error).
        let group = decoding
            .as_ref()
            .and_then(|l| l.q8_group())
            .unwrap_or_else(|| model.llama.q8_group_size());
        let weight_bytes = model.llama.num_params() as f64 * dtype.bytes(group);
        let rows = f.rows(&self, model.load_seconds, load_rss, weight_bytes);
        println!("llama-cli bench: {}", model.source);
        println!(
            "machine: {} ({cores} cores); backend {backend}; {threads} threads; decode split {split}; huge pages {}; freed pages {}; decode weights {}; median of {} runs after a warm-up",
            cpu_model(),
            if huge_pages { "advised" } else { "off" },
            match decay {
                Some(-1) => "kept".to_string(),
                Some(ms) => format!("returned after {ms} ms"),
                None => "system allocator's".to_string(),
            },
            weights,
            self.runs
        );
        println!("| phase | figure | value |");
        println!("|---|---|---|");
        for row in rows.iter().filter(|r| wants_row(&self, r.phase)) {
            println!(
                "| {} | {} | {} |",
                row.phase,
                row.label,
                fmt(row.value, row.digits)
            );
        }

        if let Some(path) = &self.json {
            let peak = rows
                .iter()
                .filter(|r| r.key.ends_with("peak_rss_mb"))
                .filter_map(|r| r.value)
                .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
            let report = Report {
                source: &model.source,
                backend: backend.name(),
                threads,
                decode_split: split,
                huge_pages,
                freed_page_decay_ms: decay,
                weight_dtype: dtype.name(),
                machine: cpu_model(),
                cores,
                runs: self.runs,
                peak_rss_mb: peak,
                figures: rows.iter().map(|r| (r.key, r.value)).collect(),
            };
            write_atomic(path, serde_json::to_string_pretty(&report)?.as_bytes())?;
            eprintln!("wrote {}", path.display());
        }
        Ok(())
    }
}
