//! `llama-cli init --config PRESET --tokenizer T --out DIR [--seed S] [--dtype bf16]`: a model
//! of a preset's shape with seeded random weights (llama2.c's initialisation, as `pretrain`
//! starts from), written as a Hugging Face folder. It gives models of the sizes people run
//! (configs/tinyllama-1.1b.json) for measuring speed and memory without downloading one.

use std::path::PathBuf;

use anyhow::{bail, Result};
use burn::module::Module;
use burn::tensor::backend::{AutodiffBackend, Backend};
use clap::Args;
use llama_model::{LlamaConfig, Tokenizer};

use super::export::{write_hf_folder, HfDtypeFlag};
use crate::runtime::backend::{BackendKind, Job};
use crate::runtime::output::check_writable;

/// Arguments of `llama-cli init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Model preset (e.g. configs/tinyllama-1.1b.json).
    #[arg(long)]
    pub config: PathBuf,
    /// Tokenizer written into the folder; its vocabulary must be the preset's (a
    /// sentencepiece `.model` or a `tokenizer.json`, which `transformers` reads).
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// The folder to write (must not exist).
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of the random weights: the same seed gives the same weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Weight storage in the folder.
    #[arg(long, value_enum, default_value_t = HfDtypeFlag::Bf16)]
    pub dtype: HfDtypeFlag,
}

impl Job for InitArgs {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device, _backend: BackendKind) -> Result<()> {
        if self.out.exists() {
            bail!(
                "{}: already exists; init writes a new folder",
                self.out.display()
            );
        }
        check_writable(&self.out)?;
        let config = LlamaConfig::from_json_file(&self.config)?;
        let tokenizer = Tokenizer::from_file(&self.tokenizer)?;
        if tokenizer.vocab_size() != config.vocab_size {
            bail!(
                "tokenizer {} has {} tokens but the preset {} has a vocabulary of {}",
                self.tokenizer.display(),
                tokenizer.vocab_size(),
                self.config.display(),
                config.vocab_size
            );
        }
        let device = &device;
        B::InnerBackend::seed(device, self.seed);
        let model = config.init::<B::InnerBackend>(device);
        eprintln!(
            "new model from {} ({} parameters, random weights from seed {})",
            self.config.display(),
            model.num_params(),
            self.seed
        );
        write_hf_folder(
            &model,
            &config,
            &self.config,
            &tokenizer,
            self.dtype.into(),
            &self.out,
        )
    }
}
