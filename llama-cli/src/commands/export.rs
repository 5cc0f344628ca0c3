//! `llama-cli export --checkpoint P --format hf|gguf|llama2c|peft --out X
//! [--dtype f32|f16|bf16|q8_0]`: a model of any format we read, written for other tools: a
//! Hugging Face folder (`transformers`), a GGUF file (llama.cpp), a llama2.c `.bin`
//! (`run.c`), or a LoRA adapter as a PEFT folder (`peft`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use burn::tensor::backend::{AutodiffBackend, Backend};
use clap::{Args, ValueEnum};
use llama_model::checkpoint::{
    hf, llama2c_refusal, save_llama2c_bin, ExportDtype, GgufDtype, GgufExport, HfFolder,
    TokenizerWritten,
};
use llama_model::generation::chat::ChatTemplate;
use llama_model::lora::peft::{read_any_adapter, save_peft};
use llama_model::{Llama, LlamaConfig, Tokenizer};

use crate::args::model::{find_tokenizer, ModelArgs};
use crate::runtime::backend::{BackendKind, Job};
use crate::runtime::output::check_writable;

/// The formats `export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// A Hugging Face Llama folder (config.json, model.safetensors, tokenizer).
    Hf,
    /// A llama2.c legacy (v0) f32 `.bin`, as `run.c` reads.
    Llama2c,
    /// The LoRA adapter `--adapter` as a PEFT folder (adapter_config.json,
    /// adapter_model.safetensors) for the base `--checkpoint`.
    Peft,
    /// llama.cpp's GGUF v3 file (hyper-parameters, vocabulary and chat template as
    /// metadata).
    Gguf,
}

/// The storage dtype of the exported weights.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum DtypeFlag {
    #[default]
    F32,
    F16,
    Bf16,
    /// llama.cpp's 8-bit blocks (gguf only).
    #[value(name = "q8_0")]
    Q8,
}

/// The storage dtype of a Hugging Face folder written from scratch (`init --dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HfDtypeFlag {
    F32,
    F16,
    Bf16,
}

impl From<HfDtypeFlag> for ExportDtype {
    fn from(flag: HfDtypeFlag) -> Self {
        match flag {
            HfDtypeFlag::F32 => Self::F32,
            HfDtypeFlag::F16 => Self::F16,
            HfDtypeFlag::Bf16 => Self::Bf16,
        }
    }
}

impl DtypeFlag {
    /// The storage of a Hugging Face export (`None`: not a safetensors dtype).
    fn hf(self) -> Option<ExportDtype> {
        match self {
            Self::F32 => Some(ExportDtype::F32),
            Self::F16 => Some(ExportDtype::F16),
            Self::Bf16 => Some(ExportDtype::Bf16),
            Self::Q8 => None,
        }
    }

    /// The storage of a GGUF export.
    fn gguf(self) -> GgufDtype {
        match self {
            Self::F32 => GgufDtype::F32,
            Self::F16 => GgufDtype::F16,
            Self::Bf16 => GgufDtype::Bf16,
            Self::Q8 => GgufDtype::Q8_0,
        }
    }
}

/// Arguments of `llama-cli export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The format to write.
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// Where to write: a folder (must not exist) for hf and peft, a file for gguf and
    /// llama2c.
    #[arg(long)]
    pub out: PathBuf,
    /// The LoRA adapter to export with --format peft (adapter.safetensors of a
    /// `finetune --lora-rank` or `pretrain --lora-rank` run).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Weight storage for hf (f32, f16, bf16) and gguf (also q8_0; norms stay f32);
    /// llama2c and peft are f32 only.
    #[arg(long, value_enum, default_value_t = DtypeFlag::F32)]
    pub dtype: DtypeFlag,
}

/// The tokenizer to export with: `explicit` (`--tokenizer`), else the one found beside
/// `checkpoint`, a sentencepiece `.model` preferred over a llama2.c `.bin` of the same name
/// (the `.bin` cannot be written for `transformers`).
pub fn export_tokenizer(checkpoint: &Path, explicit: Option<&Path>) -> PathBuf {
    if let Some(path) = explicit {
        return path.to_path_buf();
    }
    let found = find_tokenizer(checkpoint);
    let sentencepiece = found.with_extension("model");
    if found.extension().is_some_and(|e| e == "bin") && sentencepiece.is_file() {
        sentencepiece
    } else {
        found
    }
}

impl ExportArgs {
    /// Refuse, before loading, what cannot be written.
    fn check_flags(&self) -> Result<()> {
        match self.format {
            ExportFormat::Hf if self.dtype == DtypeFlag::Q8 => {
                bail!("export --format hf writes f32, f16 or bf16: --dtype q8_0 is gguf only")
            }
            ExportFormat::Llama2c | ExportFormat::Peft if self.dtype != DtypeFlag::F32 => bail!(
                "export --format {:?} writes f32: --dtype {:?} is not supported",
                self.format,
                self.dtype
            ),
            ExportFormat::Peft if self.adapter.is_none() => {
                bail!("export --format peft needs --adapter (the adapter to write)")
            }
            ExportFormat::Hf | ExportFormat::Peft if self.out.exists() => bail!(
                "{}: already exists; export writes a new folder",
                self.out.display()
            ),
            _ => check_writable(&self.out),
        }
    }
}

impl Job for ExportArgs {
    type Output = ();

    fn run<B: AutodiffBackend>(self, device: B::Device, _backend: BackendKind) -> Result<()> {
        self.check_flags()?;
        let model_args = ModelArgs {
            checkpoint: self.model.checkpoint.clone(),
            config: self.model.config.clone(),
            tokenizer: Some(export_tokenizer(
                &self.model.checkpoint,
                self.model.tokenizer.as_deref(),
            )),
        };
        let (model, config, tokenizer) = model_args.load::<B::InnerBackend>(&device)?;
        if let (ExportFormat::Peft, Some(adapter)) = (self.format, &self.adapter) {
            let file = read_any_adapter(adapter, &config)?;
            let lora = file.config().clone();
            let base = self.model.checkpoint.display().to_string();
            save_peft(&self.out, &file.apply(model)?, &config, &lora, Some(&base))?;
            println!(
                "wrote {} (PEFT LoRA adapter, {})",
                self.out.display(),
                lora.summary()
            );
            return Ok(());
        }
        if self.format == ExportFormat::Llama2c {
            let refusal = llama2c_refusal(&config).or_else(|| {
                tokenizer.is_byte_level().then(|| {
                    format!(
                        "the vocabulary of {} is byte-level BPE (llama2.c's is sentencepiece's)",
                        tokenizer.source().display()
                    )
                })
            });
            if let Some(field) = refusal {
                bail!(
                    "{}: cannot be written as llama2.c .bin: {field}",
                    self.model.checkpoint.display()
                );
            }
            save_llama2c_bin(&model, &config, &self.out)?;
            println!("wrote {} (llama2.c .bin v0, f32)", self.out.display());
            return Ok(());
        }
        if self.format == ExportFormat::Gguf {
            return self.write_gguf(&model, &config, &tokenizer);
        }
        write_hf_folder(
            &model,
            &config,
            &self.model.checkpoint,
            &tokenizer,
            self.dtype.hf().unwrap_or_default(),
            &self.out,
        )
    }
}

impl ExportArgs {
    /// Write `model` as the GGUF file `--out`, named after the checkpoint, with its chat
    /// template where it has one.
    fn write_gguf<B: Backend>(
        &self,
        model: &Llama<B>,
        config: &LlamaConfig,
        tokenizer: &Tokenizer,
    ) -> Result<()> {
        let checkpoint = &self.model.checkpoint;
        let name = checkpoint
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let dtype = self.dtype.gguf();
        GgufExport {
            config,
            tokenizer,
            dtype,
            name,
            chat_template: ChatTemplate::for_checkpoint(checkpoint)
                .ok()
                .map(|t| t.source().to_string()),
        }
        .save(model, &self.out)?;
        println!("wrote {} (GGUF v3, {})", self.out.display(), dtype.name());
        Ok(())
    }
}

/// Write `model` (built from `config`, loaded from `checkpoint`) as the Hugging Face folder
/// `out` with `tokenizer`: BOS/EOS from the checkpoint's HF configs, else the tokenizer's.
pub fn write_hf_folder<B: Backend>(
    model: &Llama<B>,
    config: &LlamaConfig,
    checkpoint: &Path,
    tokenizer: &Tokenizer,
    dtype: ExportDtype,
    out: &Path,
) -> Result<()> {
    let mut special = hf::special_ids(checkpoint)?.unwrap_or_default();
    special.bos = special.bos.or(Some(tokenizer.bos_id()));
    if special.eos.is_empty() {
        special.eos.push(tokenizer.eos_id());
    }
    let written = HfFolder {
        config,
        special,
        tokenizer: Some(tokenizer),
        dtype,
    }
    .save(model, out)?;
    println!(
        "wrote {} (Hugging Face folder, {})",
        out.display(),
        dtype.torch_name()
    );
    if let Some(TokenizerWritten::NotWritten(source)) = written {
        eprintln!("{}", tokenizer_note(&source));
    }
    Ok(())
}

/// Refuse, before any work, an `--hf-out` folder that exists or cannot be created.
pub fn check_hf_out(dir: &Path) -> Result<()> {
    if dir.exists() {
        bail!(
            "{}: already exists; --hf-out writes a new folder",
            dir.display()
        );
    }
    check_writable(dir)
}

/// Write `model` (built from `config`; BOS/EOS from `checkpoint`'s HF configs, if any) as
/// the f32 Hugging Face folder `dir` (`--hf-out` of `merge-lora` and `pretrain`), with the
/// tokenizer `export` would take: `explicit`, else the one beside `checkpoint`.
pub fn write_hf_out<B: Backend>(
    model: &Llama<B>,
    config: &LlamaConfig,
    checkpoint: &Path,
    explicit: Option<&Path>,
    dir: &Path,
) -> Result<()> {
    let tokenizer = Tokenizer::from_file(export_tokenizer(checkpoint, explicit))?;
    write_hf_folder(model, config, checkpoint, &tokenizer, ExportDtype::F32, dir)
}

/// Why a llama2.c tokenizer was left out of a Hugging Face folder, and what to do.
fn tokenizer_note(source: &Path) -> String {
    format!(
        "note: no tokenizer written: {} is a llama2.c tokenizer.bin, which transformers cannot \
         read; pass its sentencepiece .model with --tokenizer to include it",
        source.display()
    )
}
