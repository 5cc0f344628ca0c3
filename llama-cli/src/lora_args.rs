//! The LoRA flags of `finetune`: `--lora-rank`, `--lora-alpha`, `--lora-targets`.

use clap::Args;
use llama_model::lora::{LoraConfig, LoraTarget};

use crate::flag_values;

/// Train low-rank adapters instead of every weight.
#[derive(Debug, Args)]
pub struct LoraArgs {
    /// Train rank-R LoRA adapters on the targeted projections (and the head), the model's own
    /// weights frozen, instead of every weight; the adapter and head are saved alone as
    /// `adapter.safetensors` in the output folder.
    #[arg(long, value_parser = flag_values::positive())]
    pub lora_rank: Option<usize>,
    /// LoRA's alpha: the adapters' update is scaled by alpha / rank [default: the rank].
    #[arg(long, requires = "lora_rank", value_parser = flag_values::lora_alpha)]
    pub lora_alpha: Option<f64>,
    /// The projections of every layer that get adapters, comma-separated, from
    /// q,k,v,o,w1,w2,w3.
    #[arg(long, requires = "lora_rank", default_value = "q,v", value_parser = flag_values::lora_targets)]
    pub lora_targets: LoraTargets,
}

/// A parsed `--lora-targets` list.
#[derive(Debug, Clone)]
pub struct LoraTargets(pub Vec<LoraTarget>);

impl LoraArgs {
    /// The LoRA settings, or `None` without `--lora-rank`.
    pub fn config(&self) -> Option<LoraConfig> {
        self.lora_rank.map(|rank| {
            LoraConfig::new(rank)
                .with_alpha(self.lora_alpha)
                .with_targets(self.lora_targets.0.clone())
        })
    }
}
