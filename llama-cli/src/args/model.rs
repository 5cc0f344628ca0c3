//! The `--checkpoint`, `--config` and `--tokenizer` flags, and loading what they name.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};
use burn::module::Module;
use clap::Args;
use llama_model::checkpoint::{hf, CheckpointFormat};
use llama_model::{load_checkpoint_as, LlamaConfig, LoadOptions, LoadPrecision, Tokenizer};

/// The model and tokenizer flags shared by the commands that load a Llama.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// Pre-trained checkpoint (.pt, .bin, .safetensors, .gguf, or a Hugging Face Llama folder
    /// or its config.json).
    #[arg(
        long,
        alias = "pretrained-model-path",
        alias = "pretrained_model_path",
        default_value = "stories42M.pt"
    )]
    pub checkpoint: PathBuf,
    /// JSON config for a safetensors checkpoint without one beside it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Tokenizer; default: a GGUF file's own, else the one beside the checkpoint, else
    /// tokenizer.model.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
}

impl ModelArgs {
    /// Load the checkpoint and its tokenizer, checking that their vocabularies agree. An
    /// int8 export gives its dequantized f32 weights (for training and scoring, whose
    /// products are differentiated or batched).
    pub fn load<B: burn::tensor::backend::Backend>(
        &self,
        device: &B::Device,
    ) -> Result<(llama_model::Llama<B>, LlamaConfig, Tokenizer)> {
        let (model, config, tokenizer) = self.load_as_stored(device)?;
        Ok((model.without_q8(), config, tokenizer))
    }

    /// [`Self::load`], an int8 export keeping its int8 matrices (for decoding; see
    /// `--weight-dtype`).
    pub fn load_as_stored<B: burn::tensor::backend::Backend>(
        &self,
        device: &B::Device,
    ) -> Result<(llama_model::Llama<B>, LlamaConfig, Tokenizer)> {
        self.load_in(device, LoadPrecision::AsStored)
    }

    /// [`Self::load_as_stored`] with the weight matrices in `precision`: f16 casts a Hugging
    /// Face folder's matrices one by one as they are read, so no f32 copy of the model is
    /// ever held (`--weight-dtype f16` while decoding).
    pub fn load_in<B: burn::tensor::backend::Backend>(
        &self,
        device: &B::Device,
        precision: LoadPrecision,
    ) -> Result<(llama_model::Llama<B>, LlamaConfig, Tokenizer)> {
        if !self.checkpoint.exists() {
            bail!(missing_checkpoint_help(&self.checkpoint));
        }
        let start = Instant::now();
        let options = LoadOptions {
            config: self.config.clone(),
        };
        let loading = crate::runtime::allocator::ReturnFreedPages::start();
        let loaded = load_checkpoint_as::<B>(&self.checkpoint, &options, precision, device)?;
        drop(loading);
        let tokenizer_path = self
            .tokenizer
            .clone()
            .unwrap_or_else(|| find_tokenizer(&self.checkpoint));
        let tokenizer = Tokenizer::from_file(&tokenizer_path)?;
        // A Hugging Face model may pad its embeddings past the tokenizer's vocabulary.
        let padded = loaded.format == CheckpointFormat::HuggingFace
            && tokenizer.vocab_size() < loaded.config.vocab_size;
        if tokenizer.vocab_size() != loaded.config.vocab_size && !padded {
            bail!(
                "tokenizer {} has {} tokens but the model {} expects {}: pass the model's tokenizer with --tokenizer",
                tokenizer_path.display(),
                tokenizer.vocab_size(),
                self.checkpoint.display(),
                loaded.config.vocab_size
            );
        }
        for warning in &loaded.warnings {
            eprintln!("warning: {warning}");
        }
        eprintln!(
            "loaded {} ({}, {} parameters) and {} in {:.2} s",
            self.checkpoint.display(),
            loaded.format,
            loaded.model.num_params(),
            tokenizer_path.display(),
            start.elapsed().as_secs_f64()
        );
        Ok((loaded.model, loaded.config, tokenizer))
    }
}

impl ModelArgs {
    /// The ids that end a reply: the tokenizer's EOS and those a Hugging Face folder's
    /// `config.json` and `generation_config.json` list.
    pub fn eos_ids(&self, tokenizer: &Tokenizer) -> Result<Vec<u32>> {
        let mut ids = vec![tokenizer.eos_id()];
        if let Some(special) = hf::special_ids(&self.checkpoint)? {
            for id in special.eos {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
        Ok(ids)
    }
}

/// The tokenizer to use for `checkpoint`: a GGUF file's own vocabulary; a Hugging Face
/// folder's own tokenizer.json (what `transformers` uses with it); else the one beside it (tokenizer.model/.bin/.json, or a
/// single tok*.model / tok*.bin such as stories260K's tok512), else ./tokenizer.model.
pub fn find_tokenizer(checkpoint: &Path) -> PathBuf {
    if llama_model::checkpoint::detect_format(checkpoint).ok() == Some(CheckpointFormat::Gguf) {
        return checkpoint.to_path_buf();
    }
    let hf_config = hf::locate(checkpoint).ok().flatten();
    if let Some(json) = hf_config
        .as_ref()
        .map(|c| c.with_file_name("tokenizer.json"))
    {
        if json.is_file() {
            return json;
        }
    }
    // A folder's files are inside it.
    let dir = match &hf_config {
        Some(config) => config.parent(),
        None => checkpoint.parent(),
    };
    let dir = dir.unwrap_or(Path::new("."));
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    for name in ["tokenizer.model", "tokenizer.bin", "tokenizer.json"] {
        if dir.join(name).is_file() {
            return dir.join(name);
        }
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let name = p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                name.starts_with("tok") && (name.ends_with(".model") || name.ends_with(".bin"))
            })
            .collect();
        found.sort(); // tok512.bin before tok512.model: both encode identically
        if let Some(p) = found.into_iter().next() {
            return p;
        }
    }
    PathBuf::from("tokenizer.model")
}

/// Explain how to get the exercise's checkpoint when it is not there (one line).
pub fn missing_checkpoint_help(path: &Path) -> String {
    format!(
        "checkpoint {} not found (--checkpoint, default stories42M.pt): pass --checkpoint PATH \
         (any llama2.c .bin/.pt, safetensors or Hugging Face Llama folder, e.g. \
         ../shared/fixtures/models/stories260K/stories260K.bin), or download the exercise's \
         model with `wget https://www.cs.cmu.edu/~vijayv/stories42M.pt`",
        path.display()
    )
}
