//! The LoRA flags of `finetune` and `pretrain`: `--lora-rank`, `--lora-alpha`,
//! `--lora-targets`, `--lora-dropout`, or `--lora-init` (an adapter to start from).

use std::path::PathBuf;

use burn::tensor::backend::Backend;
use clap::Args;
use llama_model::lora::peft::read_any_adapter;
use llama_model::lora::{LoraConfig, LoraTarget};
use llama_model::{Llama, LlamaConfig};

use crate::args::values;

/// Train low-rank adapters instead of every weight.
#[derive(Debug, Args)]
pub struct LoraArgs {
    /// Train rank-R LoRA adapters on the targeted projections (and, for finetune, the head),
    /// the model's own weights frozen, instead of every weight; the adapters (and head) are
    /// saved alone as `adapter.safetensors` in the output folder.
    #[arg(long, value_parser = values::positive())]
    pub lora_rank: Option<usize>,
    /// LoRA's alpha: the adapters' update is scaled by alpha / rank [default: the rank].
    #[arg(long, requires = "lora_rank", value_parser = lora_alpha)]
    pub lora_alpha: Option<f64>,
    /// The projections of every layer that get adapters, comma-separated, from
    /// q,k,v,o,w1,w2,w3.
    #[arg(long, requires = "lora_rank", default_value = "q,v", value_parser = lora_targets)]
    pub lora_targets: LoraTargets,
    /// Dropout on each adapter's input while training, its masks drawn from the seed and
    /// the step (a resumed run draws the same ones).
    #[arg(long, requires = "lora_rank", default_value_t = 0.0, value_parser = values::dropout)]
    pub lora_dropout: f64,
    /// Start the adapters from ADAPTER (a PEFT folder, or the adapter.safetensors of a
    /// LoRA run) instead of a fresh init: its rank, alpha, targets and dropout are the run's.
    #[arg(
        long,
        value_name = "ADAPTER",
        conflicts_with_all = ["lora_rank", "lora_alpha", "lora_targets", "lora_dropout"]
    )]
    pub lora_init: Option<PathBuf>,
}

/// A parsed `--lora-targets` list.
#[derive(Debug, Clone)]
pub struct LoraTargets(pub Vec<LoraTarget>);

impl LoraArgs {
    /// `llama` with the adapters of `--lora-init` attached and their settings; else `llama`
    /// and the settings of the flags (`None` without `--lora-rank`).
    pub fn start<B: Backend>(
        &self,
        llama: Llama<B>,
        llama_config: &LlamaConfig,
    ) -> anyhow::Result<(Llama<B>, Option<LoraConfig>)> {
        let Some(path) = &self.lora_init else {
            return Ok((llama, self.config()));
        };
        let file = read_any_adapter(path, llama_config)?;
        let config = file.config().clone();
        Ok((file.apply(llama)?, Some(config)))
    }

    /// The LoRA settings, or `None` without `--lora-rank`.
    pub fn config(&self) -> Option<LoraConfig> {
        self.lora_rank.map(|rank| {
            LoraConfig::new(rank)
                .with_alpha(self.lora_alpha)
                .with_targets(self.lora_targets.0.clone())
                .with_dropout(self.lora_dropout)
        })
    }
}

/// The line that says what a LoRA run trains on `llama`, `also` naming what else trains
/// (the head, for `finetune`).
pub fn describe<B: Backend>(lora: &LoraConfig, llama: &Llama<B>, also: &str) -> String {
    format!(
        "LoRA rank {}, alpha {}, on {}{}: {} adapter parameters train{also}; the model's {} stay frozen",
        lora.rank,
        lora.alpha(),
        lora.targets_list(),
        if lora.dropout > 0.0 {
            format!(" (input dropout {})", lora.dropout)
        } else {
            String::new()
        },
        lora.adapter_parameters(llama),
        burn::module::Module::num_params(llama)
    )
}

/// `--lora-alpha`: a positive finite number.
fn lora_alpha(s: &str) -> Result<f64, String> {
    let alpha = values::number(s)?;
    if alpha.is_finite() && alpha > 0.0 {
        Ok(alpha)
    } else {
        Err(format!("LoRA alpha must be a positive number, not {s}"))
    }
}

/// `--lora-targets`: names from q,k,v,o,w1,w2,w3.
fn lora_targets(s: &str) -> Result<LoraTargets, String> {
    LoraTarget::parse_list(s)
        .map(LoraTargets)
        .map_err(|e| e.to_string())
}
