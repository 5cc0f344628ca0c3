//! The fine-tuning classifier of the exercise: a Llama 2 body whose final hidden state of each
//! sentence feeds a dropout and a linear head, trained with the negative log-likelihood.
//!
//! ```text
//! tokens [b, s] ──llama.hidden_at──> h[i, lengths[i] - 1, :]  (or h[i, s - 1, :], the
//!   exercise's convention)  -> [b, dim]   (the last layer runs at those positions only)
//!   -> dropout(hidden_dropout_prob) -> classifier_head: Linear(dim, num_labels) -> log_softmax
//!   loss = -sum_i log_probs[i, label_i] / b
//! ```
//!
//! The module's field names (`llama`, `classifier_head`) make the parameter paths read
//! `llama.layers.4.feed_forward.w2.weight`, `classifier_head.weight`, as in the exercise's
//! `LlamaEmbeddingClassifier` and the train-step fixture. One difference in storage: Burn's
//! [`Linear`] keeps its weight as `[in, out]`, the transpose of PyTorch's `[out, in]`.
//!
//! [`LlamaEmbeddingClassifier`] implements Burn's [`TrainStep`] (on an autodiff backend) and
//! [`InferenceStep`] (on any backend) with [`SentenceBatch`] as input, so it plugs into Burn's
//! `Learner`; [`crate::classify::finetune`] drives it.
//!
//! (Over 500 lines: one concept, the classifier with its config, loss and Burn step impls,
//! in about 450 lines, and its unit tests.)

use std::fmt;
use std::str::FromStr;

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use burn::train::{ClassificationOutput, InferenceStep, TrainOutput, TrainStep};
use llama_model::lora::{LoraConfig, LoraError};
use llama_model::model::param_source::ForRecord;
use llama_model::{Llama, LlamaConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::data::sentences::SentenceBatch;
use llama_model::train::seeded_dropout::seeded_dropout_rows;

/// Why a classifier could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClassifierError {
    /// The LoRA settings do not fit the model.
    #[error(transparent)]
    Lora(#[from] LoraError),
    /// `num_labels` is 0.
    #[error("a classifier needs at least one label (num_labels = 0)")]
    NoLabels,
    /// The dropout probability is outside `[0, 1)` or NaN.
    #[error("hidden_dropout_prob {0} is not in [0, 1)")]
    InvalidDropout(f64),
    /// The Llama given does not have the width the config describes.
    #[error("the Llama model has width {found}, the classifier config expects {expected}")]
    WidthMismatch {
        /// `config.llama.dim`.
        expected: usize,
        /// `llama.dim()`.
        found: usize,
    },
    /// Head weights of the wrong size (from [`LlamaEmbeddingClassifier::with_head_weights`]).
    #[error("classifier head {what}: expected {expected} values, got {found}")]
    HeadShape {
        /// `"weight"` or `"bias"`.
        what: &'static str,
        /// Number of values the head needs.
        expected: usize,
        /// Number of values given.
        found: usize,
    },
    /// The Llama configuration is not valid.
    #[error("invalid Llama config: {0}")]
    Llama(String),
}

/// What fine-tuning trains (the exercise's `--option`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinetuneOption {
    /// Freeze the Llama and train the classifier head only.
    Pretrain,
    /// Train every parameter (Llama and head).
    #[default]
    Finetune,
}

impl FinetuneOption {
    /// The option's name as the exercise spells it (`pretrain` / `finetune`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Pretrain => "pretrain",
            Self::Finetune => "finetune",
        }
    }
}

impl fmt::Display for FinetuneOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An option name other than `pretrain` / `finetune`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown fine-tuning option `{0}` (expected `pretrain` or `finetune`)")]
pub struct UnknownOption(pub String);

impl FromStr for FinetuneOption {
    type Err = UnknownOption;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pretrain" => Ok(Self::Pretrain),
            "finetune" => Ok(Self::Finetune),
            other => Err(UnknownOption(other.to_string())),
        }
    }
}

/// Which position's hidden state represents a sentence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SentencePosition {
    /// The last real token of each row (`lengths[i] - 1`): what a right-padded batch needs,
    /// since the causal mask makes it independent of the padding after it.
    #[default]
    LastToken,
    /// The batch's last position (`seq - 1`) for every row, as the exercise's
    /// `hidden_states[:, -1, :]` does; on a right-padded batch that is a pad position for
    /// every row shorter than the longest. Kept only to reproduce the exercise's numbers.
    LastPosition,
}

/// Hyper-parameters of a [`LlamaEmbeddingClassifier`]; saved next to a trained classifier's
/// record so that it can be rebuilt for evaluation.
#[derive(Config, Debug, PartialEq)]
pub struct ClassifierConfig {
    /// The Llama body's hyper-parameters.
    pub llama: LlamaConfig,
    /// Number of classes (5 for SST, 2 for CFIMDB).
    pub num_labels: usize,
    /// Dropout on the sentence representation before the head (the exercise's
    /// `hidden_dropout_prob`).
    #[config(default = 0.3)]
    pub hidden_dropout_prob: f64,
    /// Which hidden state represents a sentence.
    #[config(default = "SentencePosition::LastToken")]
    pub position: SentencePosition,
    /// LoRA adapters on the Llama body (the base weights then stay frozen); `None`: none.
    #[config(default = "None")]
    pub lora: Option<LoraConfig>,
}

/// Checks a dropout probability: `Ok(p)` for `p` in `[0, 1)`, else
/// [`ClassifierError::InvalidDropout`] (NaN included).
pub fn validate_dropout(p: f64) -> Result<f64, ClassifierError> {
    if (0.0..1.0).contains(&p) {
        Ok(p)
    } else {
        Err(ClassifierError::InvalidDropout(p))
    }
}

impl ClassifierConfig {
    /// Check the classifier's own hyper-parameters and the Llama config.
    pub fn check(&self) -> Result<(), ClassifierError> {
        if self.num_labels == 0 {
            return Err(ClassifierError::NoLabels);
        }
        validate_dropout(self.hidden_dropout_prob)?;
        self.llama
            .validate()
            .map_err(|e| ClassifierError::Llama(e.to_string()))
    }

    /// A classifier with a randomly initialised Llama and head (for loading a saved record
    /// into, see [`crate::classify::finetune::load_classifier`]).
    pub fn init<B: Backend>(
        &self,
        device: &B::Device,
    ) -> Result<LlamaEmbeddingClassifier<B>, ClassifierError> {
        self.check()?;
        self.with_llama_on(self.llama.init(device), 0, device)
    }

    /// A classifier over a given (pre-trained) Llama with a freshly initialised head.
    ///
    /// The head is initialised as PyTorch's `nn.Linear` (weight and bias uniform in
    /// `±1/sqrt(dim)`, Burn's default `Linear` initialiser too), drawn from `seed` alone:
    /// the same seed gives the same head whatever else uses the backend's generator.
    pub fn init_with_llama<B: Backend>(
        &self,
        llama: Llama<B>,
        seed: u64,
    ) -> Result<LlamaEmbeddingClassifier<B>, ClassifierError> {
        self.check()?;
        let device = llama.tok_embeddings.weight.device();
        self.with_llama_on(llama, seed, &device)
    }

    /// A classifier whose every parameter a saved record then replaces (`load_file`): the
    /// Llama's parameters are lazy placeholders ([`ForRecord`]), so building it draws nothing
    /// and allocates nothing for them.
    pub fn init_for_record<B: Backend>(
        &self,
        device: &B::Device,
    ) -> Result<LlamaEmbeddingClassifier<B>, ClassifierError> {
        self.check()?;
        let Ok(llama) = self.llama.build(&mut ForRecord::new(device), device);
        self.with_llama_on(llama, 0, device)
    }

    fn with_llama_on<B: Backend>(
        &self,
        llama: Llama<B>,
        seed: u64,
        device: &B::Device,
    ) -> Result<LlamaEmbeddingClassifier<B>, ClassifierError> {
        // The callers have checked the config.
        if llama.dim() != self.llama.dim {
            return Err(ClassifierError::WidthMismatch {
                expected: self.llama.dim,
                found: llama.dim(),
            });
        }
        let llama = match &self.lora {
            // Adapters already attached (read from a file to start from) are the ones trained.
            Some(_) if llama.has_lora() => llama,
            // Its own stream of draws: the head's stay those of a run without LoRA.
            Some(lora) => llama.with_lora(lora, seed ^ LORA_SEED_SALT)?,
            None => llama,
        };
        let (weight, bias) = head_init(self.llama.dim, self.num_labels, seed);
        Ok(LlamaEmbeddingClassifier {
            llama,
            classifier_head: pytorch_linear(&weight, &bias, self.llama.dim, device),
            dropout: DropoutConfig::new(self.hidden_dropout_prob).init(),
            position: self.position,
        })
    }
}

/// Mixed into the run's seed for the LoRA adapters' draws.
const LORA_SEED_SALT: u64 = 0x6c6f_7261_5f41;

/// PyTorch's `nn.Linear(dim, labels)` initialisation drawn from `seed`: weight row-major
/// `[labels, dim]` and bias `[labels]`, each uniform in `±1/sqrt(dim)`.
fn head_init(dim: usize, labels: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let bound = 1.0 / (dim.max(1) as f32).sqrt();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut draw = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| (2.0 * rng.random::<f32>() - 1.0) * bound)
            .collect()
    };
    let weight = draw(dim * labels);
    (weight, draw(labels))
}

/// A Burn [`Linear`] from PyTorch-layout values: `weight` row-major `[labels, dim]` (stored
/// transposed, `[dim, labels]`), `bias` `[labels]`. The lengths are checked by the callers.
fn pytorch_linear<B: Backend>(
    weight: &[f32],
    bias: &[f32],
    dim: usize,
    device: &B::Device,
) -> Linear<B> {
    let labels = bias.len();
    let weight = Tensor::<B, 2>::from_data(TensorData::new(weight.to_vec(), [labels, dim]), device)
        .transpose();
    let bias = Tensor::<B, 1>::from_data(TensorData::new(bias.to_vec(), [labels]), device);
    Linear {
        weight: Param::from_tensor(weight),
        bias: Some(Param::from_tensor(bias)),
    }
}

/// Llama 2 with a classification head on a sentence's final hidden state.
#[derive(Module, Debug)]
pub struct LlamaEmbeddingClassifier<B: Backend> {
    /// The (pre-trained) language model.
    pub llama: Llama<B>,
    /// `Linear(dim, num_labels)` with bias; weight stored `[dim, num_labels]`.
    pub classifier_head: Linear<B>,
    /// Dropout on the sentence representation (active only on an autodiff backend).
    pub dropout: Dropout,
    /// Which hidden state represents a sentence (a setting, not a parameter: not saved in
    /// the record, it comes from [`ClassifierConfig`]).
    #[module(skip)]
    pub position: SentencePosition,
}

impl<B: Backend> LlamaEmbeddingClassifier<B> {
    /// Number of classes.
    pub fn num_labels(&self) -> usize {
        self.classifier_head.weight.dims()[1]
    }

    /// Replace the head's parameters with values given in PyTorch's layout: `weight` row-major
    /// `[num_labels, dim]`, `bias` `[num_labels]` (e.g. the fixture's `classifier_head_init`).
    pub fn with_head_weights(self, weight: &[f32], bias: &[f32]) -> Result<Self, ClassifierError> {
        let [dim, labels] = self.classifier_head.weight.dims();
        if weight.len() != dim * labels {
            return Err(ClassifierError::HeadShape {
                what: "weight",
                expected: dim * labels,
                found: weight.len(),
            });
        }
        if bias.len() != labels {
            return Err(ClassifierError::HeadShape {
                what: "bias",
                expected: labels,
                found: bias.len(),
            });
        }
        let device = self.classifier_head.weight.device();
        Ok(Self {
            classifier_head: pytorch_linear(weight, bias, dim, &device),
            ..self
        })
    }

    /// Apply the fine-tuning option: [`FinetuneOption::Pretrain`] makes every Llama parameter
    /// require no gradient, so only the head is trained (and the backward pass stops at the
    /// head); [`FinetuneOption::Finetune`] trains everything, or, when the Llama carries LoRA
    /// adapters, the adapters and the head only.
    pub fn with_option(self, option: FinetuneOption) -> Self {
        match option {
            FinetuneOption::Pretrain => Self {
                llama: self.llama.no_grad(),
                ..self
            },
            FinetuneOption::Finetune if self.llama.has_lora() => Self {
                llama: self.llama.freeze_base(),
                ..self
            },
            FinetuneOption::Finetune => self,
        }
    }

    /// The sentence representation: the final hidden state at each row's chosen position.
    ///
    /// * `tokens`: `[batch, seq]` token ids.
    /// * `lengths`: `[batch]` real lengths (BOS included); only read for
    ///   [`SentencePosition::LastToken`], clamped to `1..=seq`.
    ///
    /// Returns `[batch, dim]`.
    pub fn sentence_embedding(
        &self,
        tokens: Tensor<B, 2, Int>,
        lengths: Tensor<B, 1, Int>,
    ) -> Tensor<B, 2> {
        let [batch, seq] = tokens.dims();
        let positions = match self.position {
            SentencePosition::LastPosition => {
                Tensor::<B, 1, Int>::full([batch], seq as i64 - 1, &tokens.device())
            }
            // The clamp keeps a malformed length from indexing out of bounds (not every
            // backend checks gather indices); the batcher's lengths are always in range.
            SentencePosition::LastToken => lengths.sub_scalar(1).clamp(0, seq as i64 - 1),
        };
        self.llama.hidden_at(tokens, positions)
    }

    /// Class log-probabilities `[batch, num_labels]` of `tokens` `[batch, seq]` with real
    /// lengths `lengths` `[batch]` (see [`Self::sentence_embedding`]). In training (an
    /// autodiff backend) the dropout mask comes from the backend's generator.
    pub fn forward(&self, tokens: Tensor<B, 2, Int>, lengths: Tensor<B, 1, Int>) -> Tensor<B, 2> {
        self.forward_with_dropout_seed(tokens, lengths, None)
    }

    /// [`Self::forward`] with the training dropout mask drawn from `dropout_seed` when given
    /// ([`llama_model::train::seeded_dropout::seeded_dropout`]), so that the step does not depend on the backend's generator.
    pub fn forward_with_dropout_seed(
        &self,
        tokens: Tensor<B, 2, Int>,
        lengths: Tensor<B, 1, Int>,
        dropout_seed: Option<u64>,
    ) -> Tensor<B, 2> {
        self.forward_rows(tokens, lengths, dropout_seed, 0)
    }

    /// [`Self::forward_with_dropout_seed`] of rows `first_row..` of a larger batch: the
    /// dropout masks are those rows' part of the larger batch's masks (data-parallel
    /// training; see [`llama_model::train::seeded_dropout::seeded_dropout_rows`]).
    fn forward_rows(
        &self,
        tokens: Tensor<B, 2, Int>,
        lengths: Tensor<B, 1, Int>,
        dropout_seed: Option<u64>,
        first_row: usize,
    ) -> Tensor<B, 2> {
        let embedding = match dropout_seed {
            // LoRA's input dropout: the adapters' masks come from the same step seed.
            Some(seed) if self.llama.has_lora() => {
                let seeded = Self {
                    llama: self.llama.clone().with_lora_dropout_rows(seed, first_row),
                    ..self.clone()
                };
                seeded.sentence_embedding(tokens, lengths)
            }
            _ => self.sentence_embedding(tokens, lengths),
        };
        let embedding = match dropout_seed {
            Some(seed) => seeded_dropout_rows(embedding, self.dropout.prob, seed, first_row),
            None => self.dropout.forward(embedding),
        };
        log_softmax(self.classifier_head.forward(embedding), 1)
    }

    /// Per-row losses, log-probabilities and labels of a batch: the item Burn's metrics read.
    ///
    /// `loss` holds the NLL of each row, `[batch]` (Burn's loss metric averages it and
    /// weights batches by their size, so epoch means are per sentence); the exercise's batch
    /// loss is its mean ([`nll_loss`]). `output` is the log-probabilities `[batch, labels]`.
    /// The batch's `dropout_seed` chooses the training dropout mask.
    pub fn forward_classification(&self, batch: SentenceBatch<B>) -> ClassificationOutput<B> {
        let log_probs = self.forward_rows(
            batch.tokens,
            batch.lengths,
            batch.dropout_seed,
            batch.first_row,
        );
        let losses = nll_per_example(log_probs.clone(), batch.labels.clone());
        ClassificationOutput::new(losses, log_probs, batch.labels)
    }
}

/// Negative log-likelihood of each row's label: `log_probs` `[batch, classes]`, `labels`
/// `[batch]` (each `< classes`); returns `[batch]`.
pub fn nll_per_example<B: Backend>(
    log_probs: Tensor<B, 2>,
    labels: Tensor<B, 1, Int>,
) -> Tensor<B, 1> {
    let batch = log_probs.dims()[0];
    log_probs
        .gather(1, labels.reshape([batch, 1]))
        .reshape([batch])
        .neg()
}

/// The exercise's loss: `nll_loss(log_probs, labels, reduction="sum") / batch_size`.
///
/// `log_probs` `[batch, classes]`, `labels` `[batch]` (each `< classes`); returns `[1]`.
pub fn nll_loss<B: Backend>(log_probs: Tensor<B, 2>, labels: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    mean_loss(nll_per_example(log_probs, labels))
}

/// Sum over the batch divided by the batch size (as the exercise: not a mean over classes).
fn mean_loss<B: Backend>(losses: Tensor<B, 1>) -> Tensor<B, 1> {
    let batch = losses.dims()[0];
    summed_loss_over(losses, batch)
}

/// Sum over the batch divided by `divisor`: the exercise divides by the configured batch
/// size, so a last, partial batch weighs less (see `SentenceBatch::loss_divisor`).
fn summed_loss_over<B: Backend>(losses: Tensor<B, 1>, divisor: usize) -> Tensor<B, 1> {
    losses.sum().div_scalar(divisor as f64)
}

impl<B: AutodiffBackend> TrainStep for LlamaEmbeddingClassifier<B> {
    type Input = SentenceBatch<B>;
    type Output = ClassificationOutput<B>;

    fn step(&self, batch: SentenceBatch<B>) -> TrainOutput<ClassificationOutput<B>> {
        let divisor = batch.loss_divisor;
        let output = self.forward_classification(batch);
        let loss = match divisor {
            Some(divisor) => summed_loss_over(output.loss.clone(), divisor),
            None => mean_loss(output.loss.clone()),
        };
        let grads = loss.backward();
        // The metrics only read values: detached, the item keeps no autodiff graph alive.
        let item =
            ClassificationOutput::new(output.loss.detach(), output.output.detach(), output.targets);
        TrainOutput::new(self, grads, item)
    }
}

impl<B: Backend> InferenceStep for LlamaEmbeddingClassifier<B> {
    type Input = SentenceBatch<B>;
    type Output = ClassificationOutput<B>;

    fn step(&self, batch: SentenceBatch<B>) -> ClassificationOutput<B> {
        self.forward_classification(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};

    type TB = Autodiff<NdArray>;

    fn tiny() -> ClassifierConfig {
        ClassifierConfig::new(LlamaConfig::new(16, 2, 2, 32).with_max_seq_len(16), 3)
            .with_hidden_dropout_prob(0.0)
    }

    fn batch(device: &burn::tensor::Device<TB>) -> SentenceBatch<TB> {
        // Row 0 has 3 real tokens then padding; row 1 is full.
        let tokens = Tensor::from_data(
            TensorData::new(vec![1i64, 5, 6, 3, 3, 1, 7, 8, 9, 10], [2, 5]),
            device,
        );
        SentenceBatch {
            tokens,
            lengths: Tensor::from_data(TensorData::new(vec![3i64, 5], [2]), device),
            labels: Tensor::from_data(TensorData::new(vec![2i64, 0], [2]), device),
            dropout_seed: None,
            loss_divisor: None,
            first_row: 0,
        }
    }

    #[test]
    fn option_names_round_trip() {
        for option in [FinetuneOption::Pretrain, FinetuneOption::Finetune] {
            assert_eq!(option.as_str().parse::<FinetuneOption>(), Ok(option));
        }
        assert!("train".parse::<FinetuneOption>().is_err());
    }

    #[test]
    fn config_checks() {
        let mut config = tiny();
        config.num_labels = 0;
        assert_eq!(config.check(), Err(ClassifierError::NoLabels));
        assert!(matches!(
            tiny().with_hidden_dropout_prob(1.0).check(),
            Err(ClassifierError::InvalidDropout(_))
        ));
        let device = Default::default();
        let llama = LlamaConfig::new(32, 1, 2, 32).init::<TB>(&device);
        assert!(matches!(
            tiny().init_with_llama(llama, 0),
            Err(ClassifierError::WidthMismatch {
                expected: 16,
                found: 32
            })
        ));
    }

    #[test]
    fn last_token_ignores_padding_and_loss_is_mean_nll() {
        let device = Default::default();
        let model = tiny().init::<TB>(&device).expect("valid config");
        let b = batch(&device);
        let out = model.forward_classification(b.clone());
        assert_eq!(out.output.dims(), [2, 3]);

        // Row 0 alone, unpadded, gives the same log-probabilities: the causal mask hides the
        // padding from the last real token.
        let alone = model.forward(
            b.tokens.clone().narrow(0, 0, 1).narrow(1, 0, 3),
            Tensor::from_data(TensorData::new(vec![3i64], [1]), &device),
        );
        let padded: Vec<f32> = out
            .output
            .clone()
            .narrow(0, 0, 1)
            .into_data()
            .to_vec()
            .unwrap();
        let alone: Vec<f32> = alone.into_data().to_vec().unwrap();
        for (a, p) in alone.iter().zip(&padded) {
            assert!((a - p).abs() < 1e-5, "{alone:?} vs {padded:?}");
        }

        let lp: Vec<f32> = out.output.into_data().to_vec().unwrap();
        let expected = -(lp[2] + lp[3]) / 2.0;
        assert_eq!(out.loss.dims(), [2]);
        let loss: f32 = mean_loss(out.loss).into_scalar();
        assert!((loss - expected).abs() < 1e-6, "{loss} vs {expected}");
    }

    #[test]
    fn pretrain_option_trains_the_head_only() {
        let device = Default::default();
        let model = tiny()
            .init::<TB>(&device)
            .expect("valid config")
            .with_option(FinetuneOption::Pretrain);
        let out = TrainStep::step(&model, batch(&device));
        let grads = out.grads;
        let head = model.classifier_head.weight.id;
        let emb = model.llama.tok_embeddings.weight.id;
        assert!(grads.get::<NdArray, 2>(head).is_some());
        assert!(grads.get::<NdArray, 2>(emb).is_none());
    }

    fn floats<const D: usize>(t: Tensor<TB, D>) -> Vec<f32> {
        t.into_data().to_vec().expect("f32")
    }

    #[test]
    fn head_init_is_pytorch_uniform_fixed_by_the_seed() {
        let device = Default::default();
        let config = tiny();
        let head = |seed| {
            let llama = config.llama.init::<TB>(&device);
            let model = config.init_with_llama(llama, seed).expect("classifier");
            let head = model.classifier_head;
            (
                floats(head.weight.val()),
                floats(head.bias.expect("bias").val()),
            )
        };
        let (w, b) = head(7);
        assert_eq!((w.len(), b.len()), (16 * 3, 3));
        let bound = 1.0 / 16f32.sqrt();
        assert!(w.iter().chain(&b).all(|v| v.abs() <= bound));
        // Spread over the range, not a constant.
        assert!(w.iter().any(|&v| v > bound / 2.0) && w.iter().any(|&v| v < -bound / 2.0));
        // The backend's generator plays no part.
        TB::seed(&device, 12345);
        assert_eq!(head(7), (w.clone(), b.clone()));
        assert_ne!(head(8).0, w);
    }

    #[test]
    fn a_seeded_training_step_ignores_the_backend_generator() {
        let device = Default::default();
        let model = tiny()
            .with_hidden_dropout_prob(0.5)
            .init::<TB>(&device)
            .expect("valid config");
        let seeded = |seed| {
            let mut b = batch(&device);
            b.dropout_seed = Some(seed);
            floats(model.forward_classification(b).output)
        };
        TB::seed(&device, 1);
        let a = seeded(3);
        TB::seed(&device, 2);
        assert_eq!(seeded(3), a);
        // The mask is in effect: another seed, other log-probabilities (dropout 0.5 on a
        // 16-wide representation).
        assert_ne!(seeded(4), a);
    }

    /// A saved classifier is rebuilt from lazy placeholders that its record replaces: the
    /// reloaded model equals the saved one, and the global generator's next draw is the same
    /// as without the reload.
    #[test]
    fn reloading_a_record_draws_nothing_and_restores_every_parameter() {
        use burn::module::Module;
        use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
        use burn::tensor::Distribution;

        let device = Default::default();
        let config = tiny();
        let saved = config
            .init_with_llama(config.llama.init::<TB>(&device), 3)
            .expect("classifier");
        let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
        let bytes = recorder
            .record(saved.clone().into_record(), ())
            .expect("record");
        let next_draw = || {
            floats(Tensor::<TB, 1>::random(
                [32],
                Distribution::Normal(0.0, 1.0),
                &device,
            ))
        };

        // The generator is global and other tests draw from it in parallel, so one attempt
        // can see their draws; a reload that draws fails every attempt.
        let reload = || {
            let record = recorder.load(bytes.clone(), &device).expect("load");
            config
                .init_for_record::<TB>(&device)
                .expect("classifier")
                .load_record(record)
        };
        let draws_nothing = || {
            TB::seed(&device, 99);
            reload();
            let after_reload = next_draw();
            TB::seed(&device, 99);
            after_reload == next_draw()
        };
        assert!(
            (0..3).any(|_| draws_nothing()),
            "the reload drew from the generator"
        );
        let reloaded = reload();

        // Dropout is 0: the autodiff forward is the inference one.
        let probe = batch(&device);
        let expected = floats(saved.forward(probe.tokens, probe.lengths));
        let probe = batch(&device);
        let actual = floats(reloaded.forward(probe.tokens, probe.lengths));
        assert_eq!(actual, expected);
    }
}
