//! The settings of a language-model training run ([`PretrainConfig`], saved in
//! `pretrain.json`).

use std::path::PathBuf;

use burn::config::Config;
use llama_model::lora::LoraConfig;
use llama_model::train::adamw::validate_lr;
use llama_model::AdamWConfig;

use crate::lm::pretrain::error::PretrainError;
use crate::lm::schedule::WarmupCosineConfig;

/// Settings of [`crate::lm::pretrain::pretrain`]. The defaults are llama2.c `train.py`'s where it
/// has one (AdamW betas 0.9/0.95, weight decay 0.1, clipping at 1.0, peak lr 5e-4).
#[derive(Config, Debug)]
pub struct PretrainConfig {
    /// Folder for the best model, checkpoints and logs (created if missing).
    pub artifact_dir: PathBuf,
    /// Passes over the training windows.
    #[config(default = 1)]
    pub epochs: usize,
    /// Tokens per training window; `None`: the model's context.
    #[config(default = "None")]
    pub seq_len: Option<usize>,
    /// Windows per micro-batch.
    #[config(default = 32)]
    pub batch_size: usize,
    /// Micro-batches whose gradients are summed into one optimizer step (their mean loss).
    #[config(default = 1)]
    pub grad_accum_steps: usize,
    /// Peak learning rate, reached at the end of the warm-up.
    #[config(default = 5e-4)]
    pub lr: f64,
    /// Learning rate at the last step of the cosine decay.
    #[config(default = 0.0)]
    pub min_lr: f64,
    /// Steps of linear warm-up.
    #[config(default = 100)]
    pub warmup_steps: usize,
    /// AdamW's decoupled weight decay.
    #[config(default = 0.1)]
    pub weight_decay: f64,
    /// AdamW's `beta_2` (`beta_1` is 0.9).
    #[config(default = 0.95)]
    pub beta_2: f64,
    /// Clip the gradients to this global norm before each step; 0 turns clipping off.
    #[config(default = 1.0)]
    pub grad_clip: f64,
    /// Evaluate every this many optimizer steps (0: at each epoch's end only).
    #[config(default = 0)]
    pub eval_every: usize,
    /// Documents per batch when evaluating.
    #[config(default = 16)]
    pub eval_batch_size: usize,
    /// A `metrics.csv` training row (and a plain progress line) every this many steps.
    #[config(default = 10)]
    pub log_every: usize,
    /// Seed of the window order (and of the adapters' initialisation with LoRA).
    #[config(default = 1337)]
    pub seed: u64,
    /// Also write the best model as a llama2.c v0 `.bin`.
    #[config(default = false)]
    pub export_bin: bool,
    /// Train LoRA adapters on a frozen model instead of every weight.
    #[config(default = "None")]
    pub lora: Option<LoraConfig>,
}

impl PretrainConfig {
    /// Checks every value that does not depend on the model or the data.
    pub fn check(&self) -> Result<(), PretrainError> {
        let invalid = |m: String| Err(PretrainError::InvalidConfig(m));
        for (name, value) in [
            ("epochs", self.epochs),
            ("batch_size", self.batch_size),
            ("grad_accum_steps", self.grad_accum_steps),
            ("eval_batch_size", self.eval_batch_size),
            ("log_every", self.log_every),
        ] {
            if value == 0 {
                return invalid(format!("{name} must be at least 1"));
            }
        }
        if self.seq_len == Some(0) {
            return invalid("seq_len must be at least 1".into());
        }
        validate_lr(self.lr)?;
        if !(self.grad_clip.is_finite() && self.grad_clip >= 0.0) {
            return invalid(format!(
                "grad_clip must be a finite norm >= 0 (0: off), not {}",
                self.grad_clip
            ));
        }
        self.optimizer().validate()?;
        self.schedule(1)
            .init()
            .map_err(PretrainError::InvalidConfig)?;
        Ok(())
    }

    /// The exercise's AdamW with this run's settings.
    pub fn optimizer(&self) -> AdamWConfig {
        AdamWConfig::new()
            .with_beta_1(0.9)
            .with_beta_2(self.beta_2)
            .with_weight_decay(self.weight_decay)
    }

    /// The learning-rate schedule of a run of `total_steps` optimizer steps.
    pub fn schedule(&self, total_steps: usize) -> WarmupCosineConfig {
        WarmupCosineConfig {
            lr: self.lr,
            min_lr: self.min_lr,
            warmup_steps: self.warmup_steps,
            total_steps,
        }
    }

    /// Optimizer steps in one epoch of `windows` windows.
    pub fn steps_per_epoch(&self, windows: usize) -> usize {
        windows
            .div_ceil(self.batch_size)
            .div_ceil(self.grad_accum_steps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_values_are_refused_with_their_name() {
        let base = || PretrainConfig::new("runs/x".into());
        assert!(base().check().is_ok());
        let err = |c: PretrainConfig| c.check().unwrap_err().to_string();
        assert!(err(base().with_batch_size(0)).contains("batch_size"));
        assert!(err(base().with_grad_accum_steps(0)).contains("grad_accum_steps"));
        assert!(err(base().with_seq_len(Some(0))).contains("seq_len"));
        assert!(err(base().with_grad_clip(-1.0)).contains("grad_clip"));
        assert!(err(base().with_min_lr(1e-3)).contains("minimum learning rate"));
        assert!(!err(base().with_lr(0.0)).is_empty());
        assert!(!err(base().with_beta_2(1.0)).is_empty());
    }

    #[test]
    fn an_epoch_is_the_micro_batches_grouped_by_accumulation() {
        let c = PretrainConfig::new("x".into())
            .with_batch_size(4)
            .with_grad_accum_steps(3);
        assert_eq!(c.steps_per_epoch(4 * 3 * 5), 5);
        assert_eq!(c.steps_per_epoch(4 * 3 * 5 + 1), 6);
        assert_eq!(c.steps_per_epoch(1), 1);
    }
}
