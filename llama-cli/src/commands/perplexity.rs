//! `llama-cli perplexity`: how well a model predicts a text file (see
//! [`llama_train::lm::perplexity`] for the exact definition).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use llama_train::data::documents::read_text;
use llama_train::lm::perplexity::{encode_documents, perplexity};

use crate::args::model::ModelArgs;
use crate::args::text_format::TextFormatFlag;
use crate::args::values;
use crate::runtime::backend::{BackendKind, Job};

/// Arguments of `llama-cli perplexity`.
#[derive(Debug, Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Plain text, one document per non-empty line (or JSON Lines with --text-format jsonl).
    #[arg(long)]
    pub text: PathBuf,
    /// How the text file holds its documents.
    #[arg(long, value_enum, default_value = "plain")]
    pub text_format: TextFormatFlag,
    /// Documents per forward pass (changes the figure only by float rounding).
    #[arg(long, default_value_t = 8, value_parser = values::positive())]
    pub batch_size: usize,
}

impl Job for PerplexityArgs {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device, backend: BackendKind) -> Result<()> {
        // Read the text first: a bad file fails before the model loads.
        let documents = read_text(&self.text, self.text_format.into())?;
        let (model, config, tokenizer) = self.model.load::<B::InnerBackend>(&device)?;
        let text = encode_documents(&tokenizer, &documents, config.max_seq_len, &self.text)?;
        let rows = text.rows;
        eprintln!(
            "scoring {} documents of {} ({} cut to the context of {} tokens); backend {backend}",
            rows.len(),
            self.text.display(),
            text.cut,
            config.max_seq_len
        );
        let start = Instant::now();
        let total = rows.len();
        let bar = crate::runtime::progress::bar(total, "perplexity", "documents");
        let figures = perplexity(&model, &rows, self.batch_size, &device, |done| {
            bar.set_position(done as u64)
        })?;
        bar.finish_and_clear();
        eprintln!("scored in {:.1} s", start.elapsed().as_secs_f64());
        println!(
            "{}: {} documents, {} predicted tokens, mean NLL {:.6}, perplexity {:.4}",
            self.text.display(),
            rows.len(),
            figures.predicted_tokens,
            figures.mean_nll(),
            figures.perplexity()
        );
        Ok(())
    }
}
