//! `llama-cli pretrain`: train the language model on text, continuing a checkpoint or from a
//! preset's random weights (see [`llama_train::lm::pretrain`]).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};
use burn::module::Module;
use burn::tensor::backend::{AutodiffBackend, Backend};
use clap::Args;
use llama_model::{Llama, LlamaConfig, Tokenizer};
use llama_train::data::documents::{encode_documents, read_text, Document, TextFormat};
use llama_train::lm::corpus::{LmCorpus, Validation};
use llama_train::lm::pretrain::config::PretrainConfig;
use llama_train::lm::pretrain::{pretrain_rank, run_files, window_len, PretrainOutcome};
use llama_train::run::control::RunControl;
use llama_train::run::inputs::check_inputs_outside_run;

use crate::args::collective::{describe_rank, main_outcome, progress_of, CollectiveArgs};
use crate::args::lora::{self, LoraArgs};
use crate::args::model::ModelArgs;
use crate::args::text_format::TextFormatFlag;
use crate::args::values;
use crate::commands::export::{check_hf_out, write_hf_out};
use crate::runtime::backend::{BackendKind, Job};
use crate::runtime::interrupt::interrupt_on_ctrl_c;

/// Arguments of `llama-cli pretrain`.
#[derive(Debug, Args)]
pub struct PretrainArgs {
    /// Training text files.
    #[arg(long, required = true, num_args = 1..)]
    pub text: Vec<PathBuf>,
    /// How the text files (and --val-text) hold documents.
    #[arg(long, value_enum, default_value = "plain")]
    pub text_format: TextFormatFlag,
    /// Validation text files, scored like `llama-cli perplexity` [default: a --val-fraction
    /// of the training documents].
    #[arg(long, num_args = 1.., conflicts_with = "val_fraction")]
    pub val_text: Vec<PathBuf>,
    /// Share of the training documents held out for validation (drawn from the seed) when
    /// there is no --val-text [default: 0.05].
    #[arg(long, value_parser = values::fraction)]
    pub val_fraction: Option<f64>,
    /// Checkpoint to continue training (.pt, .bin or .safetensors).
    #[arg(long, conflicts_with = "config", required_unless_present = "config")]
    pub checkpoint: Option<PathBuf>,
    /// Model preset to train from random weights (e.g. configs/stories260K.json); needs
    /// --tokenizer.
    #[arg(long, requires = "tokenizer")]
    pub config: Option<PathBuf>,
    /// Tokenizer; default: the one beside the checkpoint.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Tokens per training window [default: the model's context].
    #[arg(long, value_parser = values::positive())]
    pub seq_len: Option<usize>,
    /// Windows per micro-batch.
    #[arg(long, default_value_t = 32, value_parser = values::positive())]
    pub batch_size: usize,
    /// Micro-batches per optimizer step (their gradients summed, their losses averaged).
    #[arg(long, default_value_t = 1, value_parser = values::positive())]
    pub grad_accum_steps: usize,
    #[arg(long, default_value_t = 1, value_parser = values::positive())]
    pub epochs: usize,
    /// Peak learning rate, reached after the warm-up.
    #[arg(long, default_value_t = 5e-4, value_parser = values::learning_rate)]
    pub lr: f64,
    /// Learning rate at the last step of the cosine decay.
    #[arg(long, default_value_t = 0.0, value_parser = values::non_negative)]
    pub min_lr: f64,
    /// Steps of linear warm-up.
    #[arg(long, default_value_t = 100)]
    pub warmup_steps: usize,
    #[arg(long, default_value_t = 0.1, value_parser = values::weight_decay)]
    pub weight_decay: f64,
    /// Clip the gradients' global norm to this before each step (0: no clipping).
    #[arg(long, default_value_t = 1.0, value_parser = values::non_negative)]
    pub grad_clip: f64,
    /// Score the validation text every N optimizer steps (and always at each epoch's end).
    #[arg(long, value_parser = values::positive())]
    pub eval_every: Option<usize>,
    /// Documents per forward pass when scoring the validation text.
    #[arg(long, default_value_t = 16, value_parser = values::positive())]
    pub eval_batch_size: usize,
    /// A metrics.csv row (and, without bars, a progress line) every N steps.
    #[arg(long, default_value_t = 10, value_parser = values::positive())]
    pub log_every: usize,
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    /// Folder for the best model, checkpoints and logs [default: runs/pretrain-<text stem>].
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Continue the run saved in the output folder; every other setting must be the same.
    #[arg(long)]
    pub resume: bool,
    /// Stop after this many optimizer steps and save, so that --resume continues.
    #[arg(long, value_parser = values::positive())]
    pub max_steps: Option<usize>,
    /// Also write the best model as a llama2.c v0 .bin (model.bin).
    #[arg(long)]
    pub export_bin: bool,
    /// Also write the best model as a Hugging Face folder DIR (f32, with the tokenizer, as
    /// `export --format hf` writes it). The folder must not exist.
    #[arg(long, value_name = "DIR")]
    pub hf_out: Option<PathBuf>,
    #[command(flatten)]
    pub lora: LoraArgs,
    #[command(flatten)]
    pub collective: CollectiveArgs,
}

impl PretrainArgs {
    fn run_config(&self) -> PretrainConfig {
        let out_dir = self.out_dir.clone().unwrap_or_else(|| {
            let stem = self.text[0]
                .file_stem()
                .map_or_else(|| "text".into(), |s| s.to_string_lossy().into_owned());
            PathBuf::from("runs").join(format!("pretrain-{stem}"))
        });
        PretrainConfig::new(out_dir)
            .with_epochs(self.epochs)
            .with_seq_len(self.seq_len)
            .with_batch_size(self.batch_size)
            .with_grad_accum_steps(self.grad_accum_steps)
            .with_lr(self.lr)
            .with_min_lr(self.min_lr)
            .with_warmup_steps(self.warmup_steps)
            .with_weight_decay(self.weight_decay)
            .with_grad_clip(self.grad_clip)
            .with_eval_every(self.eval_every.unwrap_or(0))
            .with_eval_batch_size(self.eval_batch_size)
            .with_log_every(self.log_every)
            .with_seed(self.seed)
            .with_export_bin(self.export_bin)
            .with_lora(self.lora.config())
    }

    /// The model to train: the checkpoint's, or the preset's with weights drawn from the seed.
    fn model<B: Backend>(&self, device: &B::Device) -> Result<(Llama<B>, LlamaConfig, Tokenizer)> {
        if let Some(checkpoint) = &self.checkpoint {
            let args = ModelArgs {
                checkpoint: checkpoint.clone(),
                config: None,
                tokenizer: self.tokenizer.clone(),
            };
            return args.load::<B>(device);
        }
        let (Some(preset), Some(tokenizer_path)) = (&self.config, &self.tokenizer) else {
            bail!(
                "pass --checkpoint to continue a model, or --config with --tokenizer to start one"
            );
        };
        let config = LlamaConfig::from_json_file(preset)?;
        let tokenizer = Tokenizer::from_file(tokenizer_path)?;
        if tokenizer.vocab_size() != config.vocab_size {
            bail!(
                "tokenizer {} has {} tokens but the preset {} expects {}",
                tokenizer_path.display(),
                tokenizer.vocab_size(),
                preset.display(),
                config.vocab_size
            );
        }
        B::seed(device, self.seed);
        let model = config.init::<B>(device);
        eprintln!(
            "new model from {} ({} parameters, random weights from seed {})",
            preset.display(),
            model.num_params(),
            self.seed
        );
        Ok((model, config, tokenizer))
    }
}

/// The documents of each file, read once, before the model loads (a bad file fails first).
fn read_files(files: &[PathBuf], format: TextFormat) -> Result<Vec<(&PathBuf, Vec<Document>)>> {
    files
        .iter()
        .map(|path| Ok((path, read_text(path, format)?)))
        .collect()
}

/// The documents of `files`, each BOS + ids (uncut), in order.
fn encode_files(
    files: &[(&PathBuf, Vec<Document>)],
    tokenizer: &Tokenizer,
) -> Result<Vec<Vec<u32>>> {
    let mut rows = Vec::new();
    for (path, documents) in files {
        rows.extend(encode_documents(tokenizer, documents, usize::MAX, path)?.rows);
    }
    Ok(rows)
}

fn describe(files: &[PathBuf]) -> String {
    let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    names.join(", ")
}

impl Job for PretrainArgs {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device, backend: BackendKind) -> Result<()> {
        let interrupter = interrupt_on_ctrl_c();
        self.collective.check_devices(backend)?;
        let collective = self.collective.settings()?;
        let format = TextFormat::from(self.text_format);
        let train_files = read_files(&self.text, format)?;
        let val_files = read_files(&self.val_text, format)?;
        let config = self.run_config();
        config.check()?;
        // A run rewrites or clears its folder: none of its inputs may be in it.
        let dir = &config.artifact_dir;
        let inputs: Vec<&Path> = [
            &self.checkpoint,
            &self.config,
            &self.tokenizer,
            &self.lora.lora_init,
        ]
        .into_iter()
        .flatten()
        .chain(self.text.iter().chain(&self.val_text))
        .map(PathBuf::as_path)
        .collect();
        check_inputs_outside_run(dir, &run_files(dir), &inputs)?;
        if let Some(hf_out) = &self.hf_out {
            check_hf_out(hf_out)?;
        }
        let (llama, llama_config, tokenizer) = self.model::<B>(&device)?;
        let (llama, lora) = self.lora.start(llama, &llama_config)?;
        let config = config.with_lora(lora);
        let seq_len = window_len(&config, &llama_config)?;
        let train = encode_files(&train_files, &tokenizer)?;
        let validation = if self.val_text.is_empty() {
            Validation::Fraction(self.val_fraction.unwrap_or(0.05))
        } else {
            Validation::Documents(encode_files(&val_files, &tokenizer)?)
        };
        let corpus = LmCorpus::new(
            train,
            validation,
            seq_len,
            llama_config.max_seq_len,
            config.seed,
        )?;
        let per_epoch = config.steps_per_epoch(corpus.windows.len());
        eprintln!(
            "training on {} ({} documents, {} tokens) in {} windows of {seq_len} tokens: {per_epoch} steps per epoch of {} x {} windows; validation: {} documents ({}); backend {backend}; artifacts in {}",
            describe(&self.text),
            corpus.train_documents,
            corpus.train_tokens,
            corpus.windows.len(),
            config.batch_size,
            config.grad_accum_steps,
            corpus.val_rows.len(),
            if self.val_text.is_empty() {
                "held out of the training text".to_string()
            } else {
                describe(&self.val_text)
            },
            config.artifact_dir.display()
        );
        // `pretrain_with` checks the LoRA settings against the model before it writes anything.
        if let Some(lora) = &config.lora {
            eprintln!("{}", lora::describe(lora, &llama, ""));
        }
        if let Some(c) = &collective {
            eprintln!("{}", describe_rank(c, self.batch_size));
        }
        let rank = collective.as_ref().map(|c| c.rank);
        let control = RunControl {
            resume: self.resume,
            interrupter: Some(interrupter),
            max_steps: self.max_steps,
            progress: progress_of(collective.as_ref()),
            collective,
        };
        let start = Instant::now();
        let outcome = pretrain_rank(&config, llama, &llama_config, &corpus, &device, &control)?;
        eprintln!("training took {:.1} s", start.elapsed().as_secs_f64());
        let Some(outcome) = main_outcome(outcome, rank, |o| o.rank) else {
            return Ok(()); // another rank than 0: rank 0 saved the run
        };
        self.finish(&outcome, &llama_config)
    }
}

impl PretrainArgs {
    /// Print the run's figures and files; with `--hf-out`, write the best model there.
    fn finish<B: Backend>(
        &self,
        outcome: &PretrainOutcome<B>,
        llama_config: &LlamaConfig,
    ) -> Result<()> {
        if let Some(first) = outcome.start() {
            println!(
                "start: validation loss {:.4}, perplexity {:.3}",
                first.val_loss, first.val_perplexity
            );
        }
        println!(
            "best: step {} (epoch {}), validation loss {:.4}, perplexity {:.3}",
            outcome.best.step,
            outcome.best.epoch,
            outcome.best.val_loss,
            outcome.best.val_perplexity
        );
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len()) as f64 / 1024.0;
        println!(
            "saved model: {} ({:.1} KiB)",
            outcome.model_path.display(),
            size(&outcome.model_path)
        );
        for path in outcome.bin_path.iter().chain(&outcome.adapter_path) {
            println!("saved: {} ({:.1} KiB)", path.display(), size(path));
        }
        if let Some(hf_out) = &self.hf_out {
            // The model's source names the tokenizer (and any HF BOS/EOS ids): the
            // checkpoint, else the preset with --tokenizer.
            let source = self.checkpoint.as_ref().or(self.config.as_ref());
            let source = source.map_or_else(PathBuf::new, PathBuf::clone);
            let explicit = self.tokenizer.as_deref();
            write_hf_out(&outcome.model, llama_config, &source, explicit, hf_out)?;
        }
        Ok(())
    }
}
