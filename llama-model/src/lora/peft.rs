//! LoRA adapters in PEFT's folder layout: `adapter_config.json` (`r`, `lora_alpha`,
//! `target_modules` in HF's module names) and `adapter_model.safetensors` with
//! `base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight` `[r, d_in]` and
//! `….lora_B.weight` `[d_out, r]`, what `peft` saves and loads onto a `transformers` base.
//!
//! The rows of the q and k `lora_B` matrices are in HF's half-split RoPE order, like the
//! base q/k weights (`W + s·B·A` permuted by rows is `B` permuted by rows): they are put
//! into our interleaved order on reading and back on writing, exactly (rows only move).

use std::collections::HashMap;
use std::path::Path;

use burn::tensor::backend::Backend;
use serde::Deserialize;
use serde_json::{json, Value};

use super::file::{factor_name, AdapterFile, LoraFileError};
use super::{LoraConfig, LoraTarget};
use crate::atomic_file::write_atomic;
use crate::checkpoint::hf::names::{from_hf, permute_rows, rope_rows, to_hf, unpermute_rows};
use crate::checkpoint::{raw_tensor, read_tensors, write_folder, write_safetensors, TensorMap};
use crate::checkpoint::{CheckpointError, RawTensor};
use crate::model::config::LlamaConfig;
use crate::Llama;

/// The settings file of a PEFT adapter folder.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The weights file of a PEFT adapter folder.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// What PEFT puts before the base model's module names.
const PEFT_PREFIX: &str = "base_model.model.";

/// HF's module name of each target (`target_modules` in `adapter_config.json`).
const HF_TARGETS: [(LoraTarget, &str); 7] = [
    (LoraTarget::Q, "q_proj"),
    (LoraTarget::K, "k_proj"),
    (LoraTarget::V, "v_proj"),
    (LoraTarget::O, "o_proj"),
    (LoraTarget::W1, "gate_proj"),
    (LoraTarget::W2, "down_proj"),
    (LoraTarget::W3, "up_proj"),
];

/// Whether `path` is a PEFT adapter folder (a folder holding `adapter_config.json`).
pub fn is_peft_folder(path: &Path) -> bool {
    path.is_dir() && path.join(CONFIG_FILE).is_file()
}

/// The fields of `adapter_config.json` we read; a setting we cannot reproduce is refused.
#[derive(Debug, Deserialize)]
struct PeftConfig {
    peft_type: Option<String>,
    r: usize,
    lora_alpha: f64,
    target_modules: Value,
    lora_dropout: Option<f64>,
    bias: Option<String>,
    fan_in_fan_out: Option<bool>,
    use_rslora: Option<bool>,
    use_dora: Option<bool>,
    rank_pattern: Option<HashMap<String, Value>>,
    alpha_pattern: Option<HashMap<String, Value>>,
    modules_to_save: Option<Value>,
    layers_to_transform: Option<Value>,
}

impl PeftConfig {
    /// Our settings, or which PEFT setting is not supported.
    fn lora_config(&self) -> Result<LoraConfig, String> {
        if let Some(kind) = self.peft_type.as_deref().filter(|t| *t != "LORA") {
            return Err(format!("`peft_type` {kind} is not LORA"));
        }
        let set = |v: &Option<HashMap<String, Value>>| v.as_ref().is_some_and(|m| !m.is_empty());
        let given = |v: &Option<Value>| v.as_ref().is_some_and(|v| !v.is_null());
        let refused = [
            (self.bias.as_deref().is_some_and(|b| b != "none"), "bias"),
            (self.fan_in_fan_out == Some(true), "fan_in_fan_out"),
            (self.use_rslora == Some(true), "use_rslora"),
            (self.use_dora == Some(true), "use_dora"),
            (set(&self.rank_pattern), "rank_pattern"),
            (set(&self.alpha_pattern), "alpha_pattern"),
            (given(&self.modules_to_save), "modules_to_save"),
            (given(&self.layers_to_transform), "layers_to_transform"),
        ];
        if let Some((_, field)) = refused.iter().find(|(on, _)| *on) {
            return Err(format!("`{field}` is not supported"));
        }
        let names = self
            .target_modules
            .as_array()
            .ok_or("`target_modules` must be a list of module names (a regex is not supported)")?;
        let mut targets = Vec::new();
        for name in names {
            let name = name.as_str().unwrap_or_default();
            let (target, _) = HF_TARGETS
                .iter()
                .find(|(_, hf)| *hf == name)
                .ok_or_else(|| format!("target module `{name}` is not a Llama projection"))?;
            targets.push(*target);
        }
        targets.sort();
        targets.dedup();
        Ok(LoraConfig::new(self.r)
            .with_alpha(Some(self.lora_alpha))
            .with_targets(targets)
            .with_dropout(self.lora_dropout.unwrap_or(0.0)))
    }
}

/// Our projection prefix (`layers.N.attention.compute_query`) as HF's module
/// (`model.layers.N.self_attn.q_proj`).
fn hf_module(ours: &str) -> Option<String> {
    to_hf(&format!("{ours}.weight")).and_then(|n| n.strip_suffix(".weight").map(str::to_owned))
}

/// HF's module as our projection prefix.
fn our_module(hf: &str) -> Option<String> {
    from_hf(&format!("{hf}.weight")).and_then(|n| n.strip_suffix(".weight").map(str::to_owned))
}

/// The heads whose rows a q or k projection's `lora_B` permutes, `None` for the others.
fn rope_heads(ours: &str, config: &LlamaConfig) -> Option<usize> {
    rope_rows(&format!("{ours}.weight")).map(|query| {
        if query {
            config.n_heads
        } else {
            config.n_kv_heads()
        }
    })
}

/// Write the adapters of `model` (built from `llama`, set up with `lora`) as the PEFT folder
/// `out` (which must not exist), atomically. `base` is recorded as
/// `base_model_name_or_path`.
pub fn save_peft<B: Backend>(
    out: &Path,
    model: &Llama<B>,
    llama: &LlamaConfig,
    lora: &LoraConfig,
    base: Option<&str>,
) -> Result<(), LoraFileError> {
    let mut tensors = TensorMap::new();
    for (prefix, linear) in model.projections() {
        let (Some(adapter), Some(hf)) = (&linear.lora, hf_module(&prefix)) else {
            continue;
        };
        let a = raw_tensor(adapter.lora_a.val().transpose());
        let mut b = raw_tensor(adapter.lora_b.val().transpose());
        if let Some(heads) = rope_heads(&prefix, llama) {
            b.data = permute_rows(&b.data, heads, lora.rank);
        }
        tensors.insert(format!("{PEFT_PREFIX}{hf}.lora_A.weight"), a);
        tensors.insert(format!("{PEFT_PREFIX}{hf}.lora_B.weight"), b);
    }
    let targets: Vec<&str> = HF_TARGETS
        .iter()
        .filter(|(t, _)| lora.targets.contains(t))
        .map(|(_, hf)| *hf)
        .collect();
    let config = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": lora.rank,
        "lora_alpha": lora.alpha(),
        "lora_dropout": lora.dropout,
        "target_modules": targets,
        "bias": "none",
        "fan_in_fan_out": false,
        "use_rslora": false,
        "use_dora": false,
        "init_lora_weights": true,
        "inference_mode": true,
        "modules_to_save": null,
    });
    write_folder(out, |dir| {
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        write_safetensors(&dir.join(WEIGHTS_FILE), &tensors, Some(metadata))?;
        let path = dir.join(CONFIG_FILE);
        let text = serde_json::to_vec_pretty(&config).unwrap_or_default();
        write_atomic(&path, &text).map_err(|source| CheckpointError::Io { path, source })
    })?;
    Ok(())
}

/// Read the PEFT adapter folder `dir` for a base model of shape `llama`, its q/k `lora_B`
/// rows put in our order.
pub fn read_peft(dir: &Path, llama: &LlamaConfig) -> Result<AdapterFile, LoraFileError> {
    let config_path = dir.join(CONFIG_FILE);
    let not_adapter = |path: &Path, detail: String| LoraFileError::NotAnAdapter {
        path: path.to_path_buf(),
        detail,
    };
    let text = std::fs::read_to_string(&config_path).map_err(|source| CheckpointError::Io {
        path: config_path.clone(),
        source,
    })?;
    let peft: PeftConfig = serde_json::from_str(&text)
        .map_err(|e| not_adapter(&config_path, format!("not a PEFT adapter config: {e}")))?;
    let lora = peft
        .lora_config()
        .map_err(|detail| not_adapter(&config_path, detail))?;
    let weights = dir.join(WEIGHTS_FILE);
    let (_, stored) = read_tensors(&weights)?;
    let mut tensors = TensorMap::new();
    for (name, tensor) in stored {
        let ours = peft_factor(&name, tensor, llama, &lora)
            .ok_or_else(|| not_adapter(&weights, format!("unexpected tensor `{name}`")))?;
        tensors.insert(ours.0, ours.1);
    }
    Ok(AdapterFile::from_parts(weights, lora, tensors))
}

/// The tensor `name` of a PEFT file under our adapter name, q/k `lora_B` rows in our
/// order; `None` if it is not a LoRA factor of a Llama projection.
fn peft_factor(
    name: &str,
    mut tensor: RawTensor,
    llama: &LlamaConfig,
    lora: &LoraConfig,
) -> Option<(String, RawTensor)> {
    let module = name.strip_prefix(PEFT_PREFIX)?;
    let (module, factor) = module
        .strip_suffix(".lora_A.weight")
        .map(|m| (m, 'A'))
        .or_else(|| module.strip_suffix(".lora_B.weight").map(|m| (m, 'B')))?;
    let ours = our_module(module)?;
    if factor == 'B' && tensor.shape.last() == Some(&lora.rank) {
        if let Some(heads) = rope_heads(&ours, llama) {
            tensor.data = unpermute_rows(&tensor.data, heads, lora.rank);
        }
    }
    Some((factor_name(&ours, factor), tensor))
}

/// The adapter at `path`: a PEFT folder (read for a base of shape `llama`), else an
/// `adapter.safetensors` of this tool.
pub fn read_any_adapter(path: &Path, llama: &LlamaConfig) -> Result<AdapterFile, LoraFileError> {
    if is_peft_folder(path) {
        read_peft(path, llama)
    } else {
        AdapterFile::read(path)
    }
}

/// `model` (of shape `llama`) with the adapter at `path` (a PEFT folder or an
/// `adapter.safetensors`) merged into its weights.
pub fn merge_adapter<B: Backend>(
    path: &Path,
    model: Llama<B>,
    llama: &LlamaConfig,
) -> Result<Llama<B>, LoraFileError> {
    Ok(read_any_adapter(path, llama)?.apply(model)?.merge_lora())
}
