//! `llama-cli merge-lora --checkpoint P --adapter A --out M`: a plain model with a LoRA
//! adapter merged into its weights (`W + (alpha / r) A B`), which every command loads.

use std::path::PathBuf;

use anyhow::{bail, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use llama_model::checkpoint::save_model;
use llama_model::lora::file::AdapterFile;
use llama_model::lora::peft::{is_peft_folder, read_peft};
use llama_model::{load_checkpoint, LoadOptions};

use crate::commands::export::{check_hf_out, write_hf_out};

use crate::runtime::backend::{BackendKind, Job};
use crate::runtime::output::check_writable;

/// Arguments of `llama-cli merge-lora`.
#[derive(Debug, Args)]
pub struct MergeLoraArgs {
    /// The base model the adapter was trained on (.pt, .bin or .safetensors).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// JSON config for a safetensors checkpoint without one beside it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The adapter: `adapter.safetensors` of a `finetune --lora-rank` run, or a PEFT folder
    /// (adapter_config.json and adapter_model.safetensors, q/k rows in HF's order).
    #[arg(long)]
    pub adapter: PathBuf,
    /// The merged model to write: a .safetensors file, its config as `<stem>.config.json`
    /// beside it.
    #[arg(long, required_unless_present = "hf_out", conflicts_with = "hf_out")]
    pub out: Option<PathBuf>,
    /// Write the merged model as a Hugging Face folder instead (f32, with the tokenizer; see
    /// `export --format hf`). The folder must not exist.
    #[arg(long, value_name = "DIR")]
    pub hf_out: Option<PathBuf>,
    /// The tokenizer to put in the --hf-out folder (default: the one beside the checkpoint).
    #[arg(long, requires = "hf_out")]
    pub tokenizer: Option<PathBuf>,
}

impl Job for MergeLoraArgs {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device, _backend: BackendKind) -> Result<()> {
        match (&self.out, &self.hf_out) {
            (Some(out), _) if out.extension().and_then(|e| e.to_str()) != Some("safetensors") => {
                bail!(
                    "{}: the merged model is written as safetensors; name it <name>.safetensors",
                    out.display()
                )
            }
            (Some(out), _) => check_writable(out)?,
            (None, Some(dir)) => check_hf_out(dir)?,
            (None, None) => bail!("merge-lora needs --out or --hf-out"),
        }
        let peft = is_peft_folder(&self.adapter);
        if !self.adapter.is_file() && !peft {
            bail!(
                "{}: no such adapter file or PEFT folder (a `finetune --lora-rank` run writes adapter.safetensors in its --out-dir)",
                self.adapter.display()
            );
        }
        // The adapter first: a wrong file fails before the model loads. A PEFT folder's q/k
        // rows are put in order for the model's heads, so it is read after the model.
        let file = if peft {
            None
        } else {
            Some(AdapterFile::read(&self.adapter)?)
        };
        let options = LoadOptions {
            config: self.config.clone(),
        };
        let loaded = load_checkpoint::<B::InnerBackend>(&self.checkpoint, &options, &device)?;
        let adapter = match file {
            Some(file) => file,
            None => read_peft(&self.adapter, &loaded.config)?,
        };
        let lora = adapter.config();
        let merged = adapter.apply(loaded.model)?.merge_lora();
        let written = if let Some(out) = &self.out {
            save_model(&merged, &loaded.config, out)?;
            out
        } else if let Some(dir) = &self.hf_out {
            let explicit = self.tokenizer.as_deref();
            write_hf_out(&merged, &loaded.config, &self.checkpoint, explicit, dir)?;
            dir
        } else {
            bail!("merge-lora needs --out or --hf-out")
        };
        println!(
            "merged {} (rank {}, alpha {}, on {}) into {}: wrote {}",
            self.adapter.display(),
            lora.rank,
            lora.alpha(),
            lora.targets_list(),
            self.checkpoint.display(),
            written.display()
        );
        if adapter.extra("classifier_head.weight").is_some() {
            eprintln!(
                "note: the adapter's classifier head is not part of a language model and was left out"
            );
        }
        Ok(())
    }
}
