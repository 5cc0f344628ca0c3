//! `llama-cli finetune` (alias `train`): a classifier fine-tuned with Burn's Learner.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};
use burn::tensor::backend::{AutodiffBackend, Backend};
use clap::Args;
use llama_train::classify::classifier::{FinetuneOption, SentencePosition};
use llama_train::classify::finetune::training_loop::training_order;
use llama_train::classify::finetune::{
    finetune_rank, run_files, FinetuneConfig, FinetuneData, FinetuneOutcome,
};
use llama_train::data::length_grouping::padding_share;
use llama_train::data::predictions::write_predictions;
use llama_train::data::sentences::{load_label_names, SentenceDataset};
use llama_train::run::control::RunControl;
use llama_train::run::inputs::check_inputs_outside_run;

use crate::args::classify::{describe_files, DataArgs};
use crate::args::collective::{describe_rank, main_outcome, progress_of, CollectiveArgs};
use crate::args::data_files::TrainFile;
use crate::args::lora::{self, LoraArgs};
use crate::args::model::ModelArgs;
use crate::args::values;
use crate::runtime::backend::{BackendKind, Job};
use crate::runtime::confusion;
use crate::runtime::interrupt::interrupt_on_ctrl_c;

/// Arguments of `llama-cli finetune`.
#[derive(Debug, Args)]
pub struct FinetuneArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The dev set is evaluated each epoch and selects the best model; the test set is
    /// predicted with the best model; label names are checked against the training labels.
    #[command(flatten)]
    pub data: DataArgs,
    /// `finetune` updates every weight; `pretrain` freezes the Llama and trains the head.
    #[arg(long, default_value = "finetune", value_parser = values::finetune_option())]
    pub option: FinetuneOption,
    #[arg(long, default_value_t = 5, value_parser = values::positive())]
    pub epochs: usize,
    #[arg(long, default_value_t = 2e-5, value_parser = values::learning_rate)]
    pub lr: f64,
    #[arg(long, alias = "batch_size", default_value_t = 8, value_parser = values::positive())]
    pub batch_size: usize,
    #[arg(long, alias = "hidden_dropout_prob", default_value_t = 0.3, value_parser = values::dropout)]
    pub hidden_dropout_prob: f64,
    #[arg(long, default_value_t = 0.0, value_parser = values::weight_decay)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    /// Keep only the first N text tokens of each sentence, then BOS in front (the exercise's
    /// tokenizer); default: no truncation.
    #[arg(long, alias = "max_sentence_len", value_parser = values::positive())]
    pub max_sentence_len: Option<usize>,
    /// Represent a sentence by the hidden state at the batch's last position (a pad token
    /// for every shorter row), as the exercise's code (`h[:, -1]`) does, instead of at each
    /// row's last real token, as its text says. Reproduces the course's numbers.
    #[arg(long)]
    pub pad_position_pooling: bool,
    /// Batch sentences of similar length, as Hugging Face's `group_by_length`: each epoch's
    /// random order is cut into megabatches of up to 50 batches, each sorted longest first.
    /// Less padding, so faster epochs; the default is the exercise's plain random order.
    #[arg(long)]
    pub group_by_length: bool,
    /// Folder for the saved classifier, Burn's checkpoints and logs; default
    /// `runs/<train stem>`.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Continue the run saved in the output folder (stopped by Ctrl-C or `--max-steps`, or
    /// finished and given more `--epochs`); every other setting must be the same.
    #[arg(long)]
    pub resume: bool,
    /// Stop after this many training steps and save, so that `--resume` continues.
    #[arg(long, value_parser = values::positive())]
    pub max_steps: Option<usize>,
    /// A metrics.csv row (and, without bars, a progress line) every N training steps.
    #[arg(long, default_value_t = 50, value_parser = values::positive())]
    pub log_every: usize,
    #[command(flatten)]
    pub lora: LoraArgs,
    #[command(flatten)]
    pub collective: CollectiveArgs,
}

impl Job for FinetuneArgs {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device, backend: BackendKind) -> Result<()> {
        // Catch Ctrl-C from the start: one during loading stops after the first step, saved.
        let interrupter = interrupt_on_ctrl_c();
        self.collective.check_devices(backend)?;
        let collective = self.collective.settings()?;
        let files = self.data.files(TrainFile::Required)?;
        let Some(train_path) = files.train.clone() else {
            bail!("no training file: pass --train FILE");
        };
        let (dev_out, test_out) = self.data.outputs(&files, "finetuning")?;
        let out_dir = self.out_dir.clone().unwrap_or_else(|| {
            let stem = train_path
                .file_stem()
                .map_or_else(|| "train".into(), |s| s.to_string_lossy().into_owned());
            PathBuf::from("runs").join(stem)
        });
        let config = self.finetune_config(out_dir.clone());
        // A run rewrites or clears its folder: none of its inputs may be in it.
        let inputs: Vec<&Path> = [Some(&self.model.checkpoint), self.model.config.as_ref()]
            .into_iter()
            .flatten()
            .chain(&self.model.tokenizer)
            .chain(&files.train)
            .chain([&files.dev])
            .chain(&files.test)
            .chain(&files.label_names)
            .chain(&self.lora.lora_init)
            .map(PathBuf::as_path)
            .collect();
        check_inputs_outside_run(&out_dir, &run_files(&out_dir), &inputs)?;
        let (llama, llama_config, tokenizer) = self.model.load::<B>(&device)?;
        let (llama, lora) = self.lora.start(llama, &llama_config)?;
        let config = config.with_lora(lora);
        eprintln!("{}", describe_files(&files));
        let options = config.data_options();
        let train = SentenceDataset::from_file(&train_path, &tokenizer, &options)?;
        let dev = SentenceDataset::from_file(&files.dev, &tokenizer, &options)?;
        let test = match &files.test {
            Some(t) => Some(SentenceDataset::from_file(t, &tokenizer, &options)?),
            None => None,
        };
        let data = FinetuneData::new(train, dev, test, tokenizer.pad_id());
        let label_names = match &files.label_names {
            Some(names) => load_label_names(names, data.num_labels)?,
            None => (0..data.num_labels).map(|c| c.to_string()).collect(),
        };
        eprintln!(
            "fine-tuning ({}) on {} training sentences, {} classes; backend {backend}; artifacts in {}",
            config.option,
            data.train.items().len(),
            data.num_labels,
            out_dir.display()
        );
        eprintln!("{}", describe_padding(&data.train, &config));
        // `finetune_with` checks the LoRA settings against the model before it writes anything.
        if let Some(lora) = &config.lora {
            eprintln!("{}", lora::describe(lora, &llama, " (plus the head)"));
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
        let outcome = finetune_rank(&config, llama, &llama_config, &data, &device, &control)?;
        eprintln!("training took {:.1} s", start.elapsed().as_secs_f64());
        let Some(outcome) = main_outcome(outcome, rank, |o| o.rank) else {
            return Ok(()); // another rank than 0: rank 0 saved the run
        };
        report(
            &outcome,
            &data,
            &label_names,
            &dev_out,
            test_out.as_deref(),
            &out_dir,
        )
    }
}

impl FinetuneArgs {
    /// The run's settings, from the flags.
    fn finetune_config(&self, out_dir: PathBuf) -> FinetuneConfig {
        FinetuneConfig::new(out_dir)
            .with_epochs(self.epochs)
            .with_lr(self.lr)
            .with_batch_size(self.batch_size)
            .with_hidden_dropout_prob(self.hidden_dropout_prob)
            .with_weight_decay(self.weight_decay)
            .with_seed(self.seed)
            .with_option(self.option)
            .with_max_sentence_len(self.max_sentence_len)
            .with_log_every(self.log_every)
            .with_lora(self.lora.config())
            .with_group_by_length(self.group_by_length)
            .with_position(if self.pad_position_pooling {
                SentencePosition::LastPosition
            } else {
                SentencePosition::LastToken
            })
    }
}

/// Writes the dev (and test) predictions and prints their scores, confusion matrices and
/// the files saved.
fn report<B: Backend>(
    outcome: &FinetuneOutcome<B>,
    data: &FinetuneData,
    label_names: &[String],
    dev_out: &Path,
    test_out: Option<&Path>,
    out_dir: &Path,
) -> Result<()> {
    write_predictions(dev_out, &outcome.dev.predictions, &data.dev.sentences())?;
    println!(
        "best epoch {}: dev accuracy {:.3}, macro-F1 {:.3}; wrote {}",
        outcome.best_epoch,
        outcome.dev.accuracy,
        outcome.dev.macro_f1,
        dev_out.display()
    );
    confusion::report(
        "dev",
        &data.dev.labels(),
        &outcome.dev.predictions,
        label_names,
        &out_dir.join("confusion-dev.png"),
    )?;
    if let (Some(test), Some(out), Some(test_data)) = (&outcome.test, test_out, &data.test) {
        write_predictions(out, &test.predictions, &test_data.sentences())?;
        println!(
                "test accuracy {:.3}, macro-F1 {:.3} (meaningless where the test labels are placeholders); wrote {}",
                test.accuracy,
                test.macro_f1,
                out.display()
            );
        confusion::report(
            "test",
            &test_data.labels(),
            &test.predictions,
            label_names,
            &out_dir.join("confusion-test.png"),
        )?;
    }
    println!("saved classifier: {}", outcome.record_path.display());
    if let Some(adapter) = &outcome.adapter_path {
        let bytes = std::fs::metadata(adapter).map_or(0, |m| m.len());
        println!(
            "saved LoRA adapter and head: {} ({:.1} KiB)",
            adapter.display(),
            bytes as f64 / 1024.0
        );
    }
    Ok(())
}

/// How much of epoch 1's batches is padding, in the order this run uses and in the other.
fn describe_padding(train: &SentenceDataset, config: &FinetuneConfig) -> String {
    let lengths = train.lengths();
    let share = |grouped: bool| {
        let order = training_order(config.seed, 1, &lengths, config.batch_size, grouped);
        100.0 * padding_share(&order, &lengths, config.batch_size)
    };
    let used = share(config.group_by_length);
    let other = share(!config.group_by_length);
    let other_name = if config.group_by_length {
        "in the plain order"
    } else {
        "with --group-by-length"
    };
    format!("padding: {used:.1}% of epoch 1's token positions ({other:.1}% {other_name})")
}
