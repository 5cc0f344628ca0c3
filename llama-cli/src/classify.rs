//! `llama-cli prompt`, `finetune` (alias `train`) and `eval`: sentence classification on
//! SST-5 and CFIMDB (phase 4 of the exercise), with flags named as in its run_llama.py.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use llama_model::Tokenizer;
use llama_train::classifier::{FinetuneOption, SentencePosition};
use llama_train::data::{
    load_label_names, read_label_names, read_labelled_file, DataError, DataOptions, SentenceDataset,
};
use llama_train::finetune::{
    evaluate_with_progress, finetune_with, load_classifier, FinetuneConfig, FinetuneData,
    RunControl,
};
use llama_train::predictions::write_predictions;
use llama_train::prompting::{PromptingConfig, ZeroShotClassifier};
use llama_train::training_loop::INTERRUPTED;

use crate::backend::{BackendKind, Job};
use crate::confusion;
use crate::data_files::{self, DataFiles, GivenFiles, TrainFile};
use crate::flag_values;
use crate::lora_args::LoraArgs;
use crate::model_args::ModelArgs;
use crate::output::check_writable;

/// `data/sst-dev.txt` + `prompting` -> `sst-dev-prompting-output.txt` (the exercise's names).
fn default_output(data: &Path, kind: &str) -> PathBuf {
    let stem = data
        .file_stem()
        .map_or_else(|| "data".into(), |s| s.to_string_lossy().into_owned());
    PathBuf::from(format!("{stem}-{kind}-output.txt"))
}

/// The data files of a classification run and where their predictions go. Left out, they
/// follow the exercise's layout (see [`crate::data_files`]).
#[derive(Debug, Args)]
pub struct DataArgs {
    /// Training file (`label ||| sentence` lines) [default: data/cfimdb-train.txt]. For
    /// `prompt` it only gives the number of classes, as in the exercise.
    #[arg(long)]
    pub train: Option<PathBuf>,
    /// Dev file [default: the training file's sibling `<name>-dev.txt`, else
    /// data/cfimdb-dev.txt].
    #[arg(long)]
    pub dev: Option<PathBuf>,
    /// Test file [default: `<name>-test.txt` beside the data, if present]. CFIMDB's test
    /// labels are placeholders.
    #[arg(long)]
    pub test: Option<PathBuf>,
    /// JSON list of label names in class order [default: `<name>-label-mapping.json` beside
    /// the data, if present].
    #[arg(long, alias = "label_names")]
    pub label_names: Option<PathBuf>,
    /// Dev predictions file; default `<dev stem>-<prompting|finetuning>-output.txt`.
    #[arg(long, alias = "dev_out")]
    pub dev_out: Option<PathBuf>,
    /// Test predictions file; default `<test stem>-<prompting|finetuning>-output.txt`.
    #[arg(long, alias = "test_out")]
    pub test_out: Option<PathBuf>,
}

impl DataArgs {
    /// The data files after defaults ([`crate::data_files::resolve`]).
    fn files(&self, train: TrainFile) -> Result<DataFiles> {
        data_files::resolve(
            GivenFiles {
                train: self.train.as_deref(),
                dev: self.dev.as_deref(),
                test: self.test.as_deref(),
                label_names: self.label_names.as_deref(),
            },
            train,
        )
    }

    /// The dev and test output paths (defaults named after `kind`), checked writable before
    /// any long computation.
    fn outputs(&self, files: &DataFiles, kind: &str) -> Result<(PathBuf, Option<PathBuf>)> {
        let dev_out = self
            .dev_out
            .clone()
            .unwrap_or_else(|| default_output(&files.dev, kind));
        let test_out = files.test.as_ref().map(|t| {
            self.test_out
                .clone()
                .unwrap_or_else(|| default_output(t, kind))
        });
        for path in std::iter::once(&dev_out).chain(test_out.as_ref()) {
            check_writable(path)?;
        }
        Ok((dev_out, test_out))
    }
}

/// One line on stderr saying which files a run reads.
fn describe_files(files: &DataFiles) -> String {
    let mut parts = vec![];
    if let Some(train) = &files.train {
        parts.push(format!("train {}", train.display()));
    }
    parts.push(format!("dev {}", files.dev.display()));
    if let Some(test) = &files.test {
        parts.push(format!("test {}", test.display()));
    }
    if let Some(names) = &files.label_names {
        parts.push(format!("label names {}", names.display()));
    }
    format!("data: {}", parts.join(", "))
}

/// Arguments of `llama-cli prompt`.
#[derive(Debug, Args)]
pub struct PromptArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub data: DataArgs,
    /// Sentences per forward pass.
    #[arg(long, alias = "batch_size", default_value_t = 10, value_parser = flag_values::positive())]
    pub batch_size: usize,
    /// Read the next-token distribution at the batch's last position (a pad token for every
    /// shorter row), as the exercise does, instead of at each row's last real token.
    #[arg(long)]
    pub pad_position_scoring: bool,
    /// Keep only the first N text tokens of each prompt, then BOS in front (the exercise's
    /// tokenizer); default: no truncation.
    #[arg(long, alias = "max_sentence_len", value_parser = flag_values::positive())]
    pub max_sentence_len: Option<usize>,
}

impl Job for PromptArgs {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device, backend: BackendKind) -> Result<()> {
        let files = self.data.files(TrainFile::IfPresent)?;
        let Some(label_names) = files.label_names.clone() else {
            bail!(
                "no label names for prompting: pass --label-names FILE (a JSON list; by default \
                 <name>-label-mapping.json beside the data)"
            );
        };
        let (dev_out, test_out) = self.data.outputs(&files, "prompting")?;
        let (model, _, tokenizer) = self.model.load::<B::InnerBackend>(&device)?;
        eprintln!("{}", describe_files(&files));
        let model = backend.layout_for_batches(model);
        let options = DataOptions::default().with_max_sentence_len(self.max_sentence_len);
        let names = read_label_names(&label_names)?;
        let num_names = names.len();
        // One name per class, or the file is for another data set.
        let names_for = |classes: usize| -> Result<()> {
            if classes == num_names {
                Ok(())
            } else {
                Err(DataError::LabelCount {
                    path: label_names.clone(),
                    found: num_names,
                    expected: classes,
                }
                .into())
            }
        };
        // The exercise takes the number of classes from the training labels.
        if let Some(train) = &files.train {
            let labels: std::collections::BTreeSet<usize> = read_labelled_file(train)?
                .iter()
                .map(|record| record.label)
                .collect();
            names_for(labels.len())?;
        }
        let classifier = ZeroShotClassifier::new(&tokenizer, names)?;
        let config = PromptingConfig {
            batch_size: self.batch_size,
            pad_position_scoring: self.pad_position_scoring,
        };
        eprintln!(
            "prompt suffix: {:?}; backend {backend}",
            classifier.suffix()
        );
        let sets = std::iter::once((&files.dev, &dev_out, "dev")).chain(
            files
                .test
                .as_ref()
                .zip(test_out.as_ref())
                .map(|(d, o)| (d, o, "test")),
        );
        for (data, out, which) in sets {
            let dataset = classifier.load_dataset(data, &tokenizer, &options)?;
            if which == "dev" {
                if files.train.is_some() {
                    // The names were counted against the training classes: dev labels need
                    // only be among them (a small dev set may lack a class).
                    dataset.check_labels_below(num_names)?;
                } else {
                    // One name per class of the data (labels are class ids 0..n).
                    let classes = dataset
                        .items()
                        .iter()
                        .map(|i| i.label + 1)
                        .max()
                        .unwrap_or(0);
                    names_for(classes)?;
                }
                // Test labels may be placeholders and are not checked.
            }
            let start = Instant::now();
            let bar = crate::progress::bar(
                dataset.items().len(),
                &format!("prompt {which}"),
                "sentences",
            );
            let result =
                classifier.classify_with_progress(&model, &dataset, &config, &device, |n| {
                    bar.inc(n as u64)
                })?;
            bar.finish_and_clear();
            let secs = start.elapsed().as_secs_f64();
            write_predictions(out, &result.predictions, &dataset.sentences())?;
            println!(
                "{which} ({}): accuracy {:.3}, macro-F1 {:.3} over {} sentences in {secs:.1} s ({:.1} sentences/s); wrote {}",
                data.display(),
                result.accuracy,
                result.macro_f1,
                result.predictions.len(),
                result.predictions.len() as f64 / secs,
                out.display()
            );
            confusion::report(
                which,
                &result.labels,
                &result.predictions,
                classifier.label_names(),
                &confusion::picture_beside(out, data),
            )?;
        }
        Ok(())
    }
}

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
    #[arg(long, default_value = "finetune", value_parser = flag_values::finetune_option())]
    pub option: FinetuneOption,
    #[arg(long, default_value_t = 5, value_parser = flag_values::positive())]
    pub epochs: usize,
    #[arg(long, default_value_t = 2e-5, value_parser = flag_values::learning_rate)]
    pub lr: f64,
    #[arg(long, alias = "batch_size", default_value_t = 8, value_parser = flag_values::positive())]
    pub batch_size: usize,
    #[arg(long, alias = "hidden_dropout_prob", default_value_t = 0.3, value_parser = flag_values::dropout)]
    pub hidden_dropout_prob: f64,
    #[arg(long, default_value_t = 0.0, value_parser = flag_values::weight_decay)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    /// Keep only the first N text tokens of each sentence, then BOS in front (the exercise's
    /// tokenizer); default: no truncation.
    #[arg(long, alias = "max_sentence_len", value_parser = flag_values::positive())]
    pub max_sentence_len: Option<usize>,
    /// Represent a sentence by the hidden state at the batch's last position (a pad token
    /// for every shorter row), as the exercise's code (`h[:, -1]`) does, instead of at each
    /// row's last real token, as its text says. Reproduces the course's numbers.
    #[arg(long)]
    pub pad_position_pooling: bool,
    /// Folder for the saved classifier, Burn's checkpoints and logs; default
    /// `runs/<train stem>`.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// Continue the run saved in the output folder (stopped by Ctrl-C or `--max-steps`, or
    /// finished and given more `--epochs`); every other setting must be the same.
    #[arg(long)]
    pub resume: bool,
    /// Stop after this many training steps and save, so that `--resume` continues.
    #[arg(long, value_parser = flag_values::positive())]
    pub max_steps: Option<usize>,
    /// A metrics.csv row (and, without bars, a progress line) every N training steps.
    #[arg(long, default_value_t = 50, value_parser = flag_values::positive())]
    pub log_every: usize,
    #[command(flatten)]
    pub lora: LoraArgs,
}

impl Job for FinetuneArgs {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device, backend: BackendKind) -> Result<()> {
        // Catch Ctrl-C from the start: one during loading stops after the first step, saved.
        let interrupter = interrupt_on_ctrl_c();
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
        let config = FinetuneConfig::new(out_dir.clone())
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
            .with_position(if self.pad_position_pooling {
                SentencePosition::LastPosition
            } else {
                SentencePosition::LastToken
            });
        let (llama, llama_config, tokenizer) = self.model.load::<B>(&device)?;
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
        if let Some(lora) = &config.lora {
            lora.check(&llama)?;
            eprintln!(
                "LoRA rank {}, alpha {}, on {}: {} adapter parameters train (plus the head); the model's {} stay frozen",
                lora.rank,
                lora.alpha(),
                lora.targets_list(),
                lora.adapter_parameters(&llama),
                burn::module::Module::num_params(&llama)
            );
        }
        let control = RunControl {
            resume: self.resume,
            interrupter: Some(interrupter),
            max_steps: self.max_steps,
            progress: crate::progress::mode(),
        };
        let start = Instant::now();
        let outcome = finetune_with(&config, llama, &llama_config, &data, &device, &control)?;
        eprintln!("training took {:.1} s", start.elapsed().as_secs_f64());
        write_predictions(&dev_out, &outcome.dev.predictions, &data.dev.sentences())?;
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
            &label_names,
            &out_dir.join("confusion-dev.png"),
        )?;
        if let (Some(test), Some(out), Some(test_data)) = (&outcome.test, &test_out, &data.test) {
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
                &label_names,
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
}

/// An interrupter fired by the first Ctrl-C (training then finishes its step and saves);
/// a second Ctrl-C exits at once.
fn interrupt_on_ctrl_c() -> burn::train::Interrupter {
    let interrupter = burn::train::Interrupter::new();
    let handle = interrupter.clone();
    let handler = ctrlc::set_handler(move || {
        if handle.should_stop() {
            eprintln!("\nsecond Ctrl-C: exiting without saving");
            std::process::exit(130);
        }
        eprintln!("\nCtrl-C: finishing the current step, then saving (Ctrl-C again to quit now)");
        handle.stop(Some(INTERRUPTED));
    });
    if let Err(e) = handler {
        // Training still works; it just cannot be stopped gracefully.
        eprintln!("warning: cannot catch Ctrl-C ({e}): an interrupted run will not be saved");
    }
    interrupter
}

/// Arguments of `llama-cli eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Folder of a fine-tuning run (`--out-dir` of `finetune`).
    #[arg(long)]
    pub model_dir: PathBuf,
    /// Data file to classify (`label ||| sentence` lines).
    #[arg(long)]
    pub data: PathBuf,
    /// Tokenizer the classifier was trained with.
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// Predictions file; default `<data stem>-eval-output.txt`.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, default_value_t = 8, value_parser = flag_values::positive())]
    pub batch_size: usize,
    /// JSON list of label names in class order, for the confusion matrix [default:
    /// `<name>-label-mapping.json` beside the data, if present].
    #[arg(long, alias = "label_names")]
    pub label_names: Option<PathBuf>,
}

impl Job for EvalArgs {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device, _backend: BackendKind) -> Result<()> {
        let out = self
            .out
            .clone()
            .unwrap_or_else(|| default_output(&self.data, "eval"));
        check_writable(&out)?;
        let saved = load_classifier::<B::InnerBackend>(&self.model_dir, &device)?;
        let tokenizer = Tokenizer::from_file(&self.tokenizer)?;
        let options = saved
            .finetune
            .as_ref()
            .map(|f| f.data_options())
            .unwrap_or_default();
        let num_labels = saved.model.num_labels();
        let label_names = match self
            .label_names
            .clone()
            .or_else(|| data_files::label_names_beside(&self.data))
        {
            Some(path) => load_label_names(path, num_labels)?,
            None => (0..num_labels).map(|c| c.to_string()).collect(),
        };
        let dataset = SentenceDataset::from_file(&self.data, &tokenizer, &options)?;
        let bar = crate::progress::bar(dataset.items().len(), "eval", "sentences");
        let result = evaluate_with_progress(
            &saved.model,
            &dataset,
            self.batch_size,
            tokenizer.pad_id(),
            &device,
            |n| bar.inc(n as u64),
        )?;
        bar.finish_and_clear();
        write_predictions(&out, &result.predictions, &dataset.sentences())?;
        println!(
            "{}: accuracy {:.3}, macro-F1 {:.3} over {} sentences; wrote {}",
            self.data.display(),
            result.accuracy,
            result.macro_f1,
            result.predictions.len(),
            out.display()
        );
        confusion::report(
            "eval",
            &dataset.labels(),
            &result.predictions,
            &label_names,
            &confusion::picture_beside(&out, &self.data),
        )?;
        Ok(())
    }
}
