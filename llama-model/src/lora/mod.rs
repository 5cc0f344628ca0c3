//! LoRA on a whole [`Llama`]: which projections get an adapter, with what rank and scale, and
//! the model-level operations (attach, freeze the base, merge). The layer itself is
//! `model::projection` (internal); the adapter file is [`crate::lora::file`].

pub mod file;
pub mod peft;
#[cfg(test)]
mod peft_tests;

use std::fmt;
use std::str::FromStr;

use burn::config::Config;
use burn::module::Module;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::model::projection::LoraAdapter;
use crate::Llama;

/// A projection of every layer that LoRA can adapt (`--lora-targets` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoraTarget {
    /// `attention.compute_query`
    Q,
    /// `attention.compute_key`
    K,
    /// `attention.compute_value`
    V,
    /// `attention.compute_output`
    O,
    /// `feed_forward.w1` (gate)
    W1,
    /// `feed_forward.w2` (down)
    W2,
    /// `feed_forward.w3` (up)
    W3,
}

impl LoraTarget {
    /// Every target, in the order of a layer's parameters.
    pub const ALL: [Self; 7] = [
        Self::Q,
        Self::K,
        Self::V,
        Self::O,
        Self::W1,
        Self::W2,
        Self::W3,
    ];

    /// The short name (`q`, …, `w3`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Q => "q",
            Self::K => "k",
            Self::V => "v",
            Self::O => "o",
            Self::W1 => "w1",
            Self::W2 => "w2",
            Self::W3 => "w3",
        }
    }

    /// The projection's name inside a layer (`attention.compute_query`, …).
    pub fn projection(self) -> &'static str {
        match self {
            Self::Q => "attention.compute_query",
            Self::K => "attention.compute_key",
            Self::V => "attention.compute_value",
            Self::O => "attention.compute_output",
            Self::W1 => "feed_forward.w1",
            Self::W2 => "feed_forward.w2",
            Self::W3 => "feed_forward.w3",
        }
    }

    /// The target of a projection prefix `layers.{i}.<projection>`.
    fn of_projection(prefix: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|t| prefix.ends_with(&format!(".{}", t.projection())))
    }

    /// A comma-separated list (`q,v`), each name once, in [`Self::ALL`]'s order.
    pub fn parse_list(list: &str) -> Result<Vec<Self>, LoraError> {
        let mut targets = Vec::new();
        for name in list.split(',').map(str::trim) {
            let target = name.parse()?;
            if !targets.contains(&target) {
                targets.push(target);
            }
        }
        targets.sort();
        Ok(targets)
    }
}

impl fmt::Display for LoraTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for LoraTarget {
    type Err = LoraError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| LoraError::UnknownTarget(s.to_string()))
    }
}

/// What is wrong with a LoRA setting or adapter.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LoraError {
    /// A `--lora-targets` name that is not a projection.
    #[error("unknown LoRA target `{0}` (expected some of q,k,v,o,w1,w2,w3)")]
    UnknownTarget(String),
    /// A rank of 0, or above a targeted layer's width.
    #[error("LoRA rank {rank} is out of range: it must be from 1 to {max} (the narrowest side of the targeted layers)")]
    Rank {
        /// The rank asked for.
        rank: usize,
        /// The narrowest side of the targeted layers.
        max: usize,
    },
    /// An alpha that is not a positive finite number.
    #[error("LoRA alpha {0} must be a positive finite number")]
    Alpha(f64),
    /// No targets.
    #[error("LoRA needs at least one target")]
    NoTargets,
    /// A dropout probability outside `[0, 1)`.
    #[error("LoRA dropout {0} must be in [0, 1)")]
    Dropout(f64),
}

/// The settings of a LoRA adapter: rank `r`, scale `alpha / r`, and the adapted projections.
#[derive(Config, Debug, PartialEq)]
pub struct LoraConfig {
    /// The rank `r` of every adapter.
    pub rank: usize,
    /// `alpha` (the update is scaled by `alpha / r`); default: `r`, a scale of 1.
    #[config(default = "None")]
    pub alpha: Option<f64>,
    /// The adapted projections of every layer.
    #[config(default = "vec![LoraTarget::Q, LoraTarget::V]")]
    pub targets: Vec<LoraTarget>,
    /// Dropout on each adapter's input in training, in `[0, 1)` (PEFT's `lora_dropout`).
    #[config(default = 0.0)]
    pub dropout: f64,
}

impl LoraConfig {
    /// `alpha`, defaulting to the rank.
    pub fn alpha(&self) -> f64 {
        self.alpha.unwrap_or(self.rank as f64)
    }

    /// `alpha / r`.
    pub fn scale(&self) -> f64 {
        self.alpha() / self.rank as f64
    }

    /// The settings in words: `rank 8, alpha 16, targets q,v, dropout 0.05`.
    pub fn summary(&self) -> String {
        format!(
            "rank {}, alpha {}, targets {}, dropout {}",
            self.rank,
            self.alpha(),
            self.targets_list(),
            self.dropout
        )
    }

    /// The targets as `--lora-targets` spells them (`q,v`).
    pub fn targets_list(&self) -> String {
        let names: Vec<&str> = self.targets.iter().map(|t| t.name()).collect();
        names.join(",")
    }

    /// Check the settings against `model`'s layer widths: a rank from 1 to the narrowest side
    /// of the targeted layers, a positive alpha, some targets.
    pub fn check<B: Backend>(&self, model: &Llama<B>) -> Result<(), LoraError> {
        if self.targets.is_empty() {
            return Err(LoraError::NoTargets);
        }
        let max = model
            .projections()
            .filter(|(name, _)| self.targets(name))
            .map(|(_, l)| l.d_in().min(l.d_out()))
            .min()
            .unwrap_or(0);
        if self.rank == 0 || self.rank > max {
            return Err(LoraError::Rank {
                rank: self.rank,
                max,
            });
        }
        let alpha = self.alpha();
        if !(alpha.is_finite() && alpha > 0.0) {
            return Err(LoraError::Alpha(alpha));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(LoraError::Dropout(self.dropout));
        }
        Ok(())
    }

    /// How many numbers the adapters hold on `model`: `r (d_in + d_out)` per adapted
    /// projection.
    pub fn adapter_parameters<B: Backend>(&self, model: &Llama<B>) -> usize {
        model
            .projections()
            .filter(|(name, _)| self.targets(name))
            .map(|(_, l)| self.rank * (l.d_in() + l.d_out()))
            .sum()
    }

    /// Whether the projection `layers.{i}.<projection>` is adapted.
    fn targets(&self, prefix: &str) -> bool {
        LoraTarget::of_projection(prefix).is_some_and(|t| self.targets.contains(&t))
    }
}

impl<B: Backend> Llama<B> {
    /// The model with a fresh adapter on every targeted projection (`A` drawn from `seed`,
    /// `B` zero: the outputs are unchanged until it trains). The base weights are left as
    /// they are; [`Self::freeze_base`] freezes them for training.
    pub fn with_lora(mut self, config: &LoraConfig, seed: u64) -> Result<Self, LoraError> {
        config.check(&self)?;
        let device = self.tok_embeddings.weight.device();
        let scale = config.scale();
        for (index, (name, linear)) in self.projections_mut().enumerate() {
            if config.targets(&name) {
                let layer_seed = seed ^ (0x4c6f_5241_u64 << 16).wrapping_add(index as u64);
                linear.lora = Some(
                    LoraAdapter::new(
                        linear.d_in(),
                        linear.d_out(),
                        config.rank,
                        scale,
                        layer_seed,
                        &device,
                    )
                    .with_dropout(config.dropout),
                );
            }
        }
        Ok(self)
    }

    /// The model whose adapters draw their next training dropout masks from `seed` (each
    /// adapter its own, mixed with its position); call it before each step's forward pass.
    /// Without adapter dropout this changes nothing.
    pub fn with_lora_dropout_seed(self, seed: u64) -> Self {
        self.with_lora_dropout_rows(seed, 0)
    }

    /// [`Self::with_lora_dropout_seed`] for rows `first_row..` of a global batch: the masks
    /// are those rows' part of the global batch's masks (data-parallel training).
    pub fn with_lora_dropout_rows(mut self, seed: u64, first_row: usize) -> Self {
        for (index, (_, linear)) in self.projections_mut().enumerate() {
            if let Some(lora) = &mut linear.lora {
                lora.dropout_seed =
                    seed.rotate_left(17) ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                lora.dropout_first_row = first_row;
            }
        }
        self
    }

    /// Whether any projection carries an adapter.
    pub fn has_lora(&self) -> bool {
        self.projections().any(|(_, l)| l.lora.is_some())
    }

    /// The model with every parameter but the adapters' requiring no gradient: training then
    /// updates only `A` and `B`, and the optimizer keeps state only for them.
    pub fn freeze_base(mut self) -> Self {
        let adapters: Vec<_> = self
            .projections_mut()
            .map(|(_, linear)| linear.lora.take())
            .collect();
        let mut frozen = self.no_grad();
        for ((_, linear), adapter) in frozen.projections_mut().zip(adapters) {
            linear.lora = adapter;
        }
        frozen
    }

    /// The plain model: each adapter merged into its weight (`W + (alpha / r) A B`) and
    /// removed.
    pub fn merge_lora(mut self) -> Self {
        for (_, linear) in self.projections_mut() {
            linear.merge();
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::LlamaConfig;
    use burn::backend::{Autodiff, NdArray};
    use burn::tensor::{Int, Tensor, TensorData, Tolerance};

    type B = NdArray;

    fn tiny() -> LlamaConfig {
        LlamaConfig::new(32, 2, 4, 64)
            .with_n_kv_heads(Some(2))
            .with_hidden_dim(Some(48))
            .with_max_seq_len(16)
    }

    fn tokens() -> Tensor<B, 2, Int> {
        Tensor::from_data(
            TensorData::new(vec![1i64, 5, 9, 33, 2, 60, 7, 11], [2, 4]),
            &Default::default(),
        )
    }

    #[test]
    fn targets_parse_and_unknown_names_are_refused() {
        assert_eq!(
            LoraTarget::parse_list("v, q,q").unwrap(),
            vec![LoraTarget::Q, LoraTarget::V]
        );
        assert_eq!(LoraTarget::parse_list("w2,o").unwrap().len(), 2);
        let err = LoraTarget::parse_list("q,proj").unwrap_err();
        assert!(err.to_string().contains("`proj`"), "{err}");
    }

    #[test]
    fn rank_zero_or_wider_than_a_layer_is_refused() {
        let model = tiny().init::<B>(&Default::default());
        for rank in [0, 33] {
            let q = LoraConfig::new(rank).with_targets(vec![LoraTarget::Q]);
            let err = q.check(&model).unwrap_err();
            assert!(matches!(err, LoraError::Rank { max: 32, .. }), "{err}");
        }
        // `k` and `v` are 32 -> 16 here (2 kv heads of 8): the default `q,v` allows 16.
        let err = LoraConfig::new(17).check(&model).unwrap_err();
        assert!(matches!(err, LoraError::Rank { max: 16, .. }), "{err}");
        assert!(LoraConfig::new(16)
            .with_targets(vec![])
            .check(&model)
            .is_err());
        assert!(LoraConfig::new(4)
            .with_alpha(Some(-1.0))
            .check(&model)
            .is_err());
        LoraConfig::new(16).check(&model).unwrap();
    }

    #[test]
    fn a_fresh_adapter_gives_the_base_models_logits_exactly() {
        let model = tiny().init::<B>(&Default::default());
        let base = model.forward(tokens()).logits.into_data();
        let config = LoraConfig::new(4).with_targets(LoraTarget::ALL.to_vec());
        let adapted = model.with_lora(&config, 1).unwrap();
        assert!(adapted.has_lora());
        assert_eq!(
            adapted
                .projections()
                .filter(|(_, l)| l.lora.is_some())
                .count(),
            14
        );
        assert_eq!(adapted.forward(tokens()).logits.into_data(), base);
    }

    #[test]
    fn merging_gives_the_adapted_models_logits() {
        let model = tiny().init::<B>(&Default::default());
        let config = LoraConfig::new(4).with_alpha(Some(8.0)).with_targets(vec![
            LoraTarget::Q,
            LoraTarget::O,
            LoraTarget::W2,
        ]);
        let mut adapted = model.with_lora(&config, 2).unwrap();
        // Give every B a non-zero value so the adapters matter.
        for (i, (_, linear)) in adapted.projections_mut().enumerate() {
            if let Some(lora) = linear.lora.as_mut() {
                let [r, d_out] = lora.lora_b.dims();
                let values: Vec<f32> = (0..r * d_out)
                    .map(|j| ((i * 31 + j * 7) % 13) as f32 * 0.01 - 0.06)
                    .collect();
                lora.lora_b = burn::module::Param::from_tensor(Tensor::from_data(
                    TensorData::new(values, [r, d_out]),
                    &Default::default(),
                ));
            }
        }
        let with_adapters = adapted.forward(tokens()).logits.into_data();
        let merged = adapted.merge_lora();
        assert!(!merged.has_lora());
        merged
            .forward(tokens())
            .logits
            .into_data()
            .assert_approx_eq::<f32>(&with_adapters, Tolerance::absolute(1e-5));
    }

    #[test]
    fn a_frozen_base_gets_no_gradient_and_the_adapters_do() {
        type A = Autodiff<B>;
        let model = tiny().init::<A>(&Default::default());
        let model = model
            .with_lora(&LoraConfig::new(2), 3)
            .unwrap()
            .freeze_base();
        let tokens = Tensor::<A, 2, Int>::from_data(tokens().into_data(), &Default::default());
        let grads = model.forward(tokens).logits.sum().backward();
        assert!(model.tok_embeddings.weight.grad(&grads).is_none());
        assert!(model.norm.weight.grad(&grads).is_none());
        for (name, linear) in model.projections() {
            assert!(linear.weight.grad(&grads).is_none(), "{name}");
            if let Some(lora) = &linear.lora {
                assert!(lora.lora_a.grad(&grads).is_some(), "{name}");
            }
        }
    }
}
