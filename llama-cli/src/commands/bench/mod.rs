//! `llama-cli bench`: generation, prompting and fine-tuning speed and memory, as one table
//! (and optionally JSON), for a checkpoint or a preset config with seeded random weights.
//!
//! Every figure is the median of several timed runs after a warm-up run. Peak resident
//! memory is measured per phase by resetting the kernel's high-water mark
//! (`/proc/self/clear_refs`) before the phase and reading `VmHWM` after it.

mod bandwidth;
mod phases;
mod report;
mod system;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::tensor::backend::{AutodiffBackend, Backend};
use clap::{Args, ValueEnum};
use llama_model::{load_checkpoint_as, Llama, LlamaConfig, LoadOptions, LoadPrecision, Tokenizer};

use crate::args::data_files::fixture_or;
use crate::args::model::find_tokenizer;
use crate::args::weight_dtype::WeightDtype;
use crate::runtime::allocator::ReturnFreedPages;
use crate::runtime::backend::{BackendKind, Job};
use phases::{bench_generate, bench_prompt, bench_train};
use report::{print_report, Figures, Setting};
use system::{peak_rss_mb, reset_peak_rss};

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
    #[arg(
        long,
        conflicts_with = "config",
        required_unless_present_any = ["config", "bandwidth"]
    )]
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
    /// First measure the streaming-read rate of memory on the command's threads (the
    /// ceiling of decoding, which reads every weight once per token); alone, without a
    /// model, only that.
    #[arg(long)]
    pub bandwidth: bool,
}

pub(super) struct Model<B: Backend> {
    pub(super) llama: Llama<B>,
    pub(super) config: LlamaConfig,
    pub(super) load_seconds: f64,
    pub(super) source: String,
}

/// The model, its weight matrices loaded in `precision`.
fn load_model<B: Backend>(
    args: &BenchArgs,
    precision: LoadPrecision,
    device: &B::Device,
) -> Result<Model<B>> {
    let start = Instant::now();
    let (llama, config, source) = match (&args.checkpoint, &args.config) {
        (Some(path), _) => {
            let loaded = load_checkpoint_as::<B>(path, &LoadOptions::default(), precision, device)?;
            (loaded.model, loaded.config, path.display().to_string())
        }
        (None, Some(path)) => {
            let config = LlamaConfig::from_json_file(path)?;
            B::seed(device, args.seed);
            let mut llama = config.init::<B>(device);
            if precision == LoadPrecision::F16 {
                llama = llama.with_half_weights();
            }
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

impl Job for BenchArgs {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device, backend: BackendKind) -> Result<()> {
        if let Some(path) = &self.json {
            crate::runtime::output::check_writable(path)?;
        }
        if self.bandwidth {
            let b = bandwidth::measure();
            println!(
                "streaming read: {:.1} GB/s on {} thread(s) ({} MiB buffer, best of the passes)",
                b.gb_per_s, b.threads, b.buffer_mib
            );
            if self.checkpoint.is_none() && self.config.is_none() {
                return Ok(());
            }
        }
        if let Some(dtype) = self.weight_dtype {
            dtype.check(backend)?;
        }
        let threads = rayon::current_num_threads();
        let huge_pages = crate::runtime::allocator::huge_pages_enabled();
        let decay = crate::runtime::allocator::freed_page_decay_ms();
        // Decoding alone loads only the decoding weights, f16 ones cast as they are read;
        // the other phases keep the f32 weights beside them.
        let decoding_only = self.only == Some(Phase::Generate);
        let precision = match self.weight_dtype {
            Some(WeightDtype::F16) if decoding_only => LoadPrecision::F16,
            Some(WeightDtype::Q8) => LoadPrecision::Int8,
            _ => LoadPrecision::AsStored,
        };
        reset_peak_rss();
        let loading = ReturnFreedPages::start();
        let Model {
            llama: loaded,
            config,
            load_seconds,
            source,
        } = load_model::<B::InnerBackend>(&self, precision, &device)?;
        let dtype = WeightDtype::resolve(self.weight_dtype, &loaded);
        let split = backend.decode_split(self.decode_split, config.dim);
        let wants = |p: Phase| self.only.is_none_or(|only| only == p);
        let convert = Instant::now();
        // The generation phase's weights (`--weight-dtype`). Prompting and training run on
        // f32 weights (an int8 export's dequantized ones); decoding alone keeps none of them,
        // so that the loaded weights are freed as their converted copies are made.
        let (decoding, weights, llama) = if wants(Phase::Generate) {
            let kept = (!decoding_only).then(|| loaded.clone());
            let (decoding, text) = dtype.apply(loaded, backend)?;
            eprintln!("decode weights {text}");
            let llama = kept.map_or_else(|| decoding.clone(), Llama::without_q8);
            (Some(decoding), text, llama)
        } else {
            (None, dtype.name().to_string(), loaded.without_q8())
        };
        let model = Model {
            llama,
            config,
            load_seconds: load_seconds + convert.elapsed().as_secs_f64(),
            source,
        };
        // Loading ends with the decoding weights made: the peak includes their conversion.
        drop(loading);
        let load_rss = peak_rss_mb();
        // What loading is measured against: the decoding weights, when they are all it keeps.
        let held_mb =
            decoding_only.then(|| model.llama.weight_bytes_held() as f64 / f64::from(1u32 << 20));
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

        print_report(
            &self,
            &model,
            &f,
            &Setting {
                backend,
                threads,
                split,
                huge_pages,
                decay,
                dtype,
                weights: &weights,
                group: decoding.as_ref().and_then(|l| l.q8_group()),
                load_rss,
                held_mb,
            },
        )
    }
}
