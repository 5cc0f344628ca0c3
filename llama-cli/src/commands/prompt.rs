//! `llama-cli prompt`: zero-shot classification by prompting.

use std::time::Instant;

use anyhow::{bail, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use llama_train::classify::prompting::{PromptingConfig, ZeroShotClassifier};
use llama_train::data::predictions::write_predictions;
use llama_train::data::sentences::{read_label_names, read_labelled_file, DataError, DataOptions};

use crate::args::classify::{describe_files, DataArgs};
use crate::args::data_files::TrainFile;
use crate::args::model::ModelArgs;
use crate::args::values;
use crate::runtime::backend::{BackendKind, Job};
use crate::runtime::confusion;

/// Arguments of `llama-cli prompt`.
#[derive(Debug, Args)]
pub struct PromptArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub data: DataArgs,
    /// Sentences per forward pass.
    #[arg(long, alias = "batch_size", default_value_t = 10, value_parser = values::positive())]
    pub batch_size: usize,
    /// Read the next-token distribution at the batch's last position (a pad token for every
    /// shorter row), as the exercise does, instead of at each row's last real token.
    #[arg(long)]
    pub pad_position_scoring: bool,
    /// Keep only the first N text tokens of each prompt, then BOS in front (the exercise's
    /// tokenizer); default: no truncation.
    #[arg(long, alias = "max_sentence_len", value_parser = values::positive())]
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
            let bar = crate::runtime::progress::bar(
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
