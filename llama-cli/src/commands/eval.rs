//! `llama-cli eval`: a saved classifier re-run on a data file.

use std::path::PathBuf;

use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use llama_model::Tokenizer;
use llama_train::classify::finetune::{evaluate_with_progress, load_classifier};
use llama_train::data::predictions::write_predictions;
use llama_train::data::sentences::{load_label_names, SentenceDataset};

use crate::args::classify::default_output;
use crate::args::data_files;
use crate::args::values;
use crate::runtime::backend::{BackendKind, Job};
use crate::runtime::confusion;
use crate::runtime::output::check_writable;

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
    #[arg(long, default_value_t = 8, value_parser = values::positive())]
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
        let bar = crate::runtime::progress::bar(dataset.items().len(), "eval", "sentences");
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
