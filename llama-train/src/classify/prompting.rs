//! Zero-shot classification by prompting, as the exercise's `LlamaZeroShotClassifier`.
//!
//! Each sentence gets the suffix `"Is this movie {labels}? This movie is "` (labels joined
//! `"a or b"` for two, `"a, b, or c"` for more — [`prompt_suffix`]) after one space, and is
//! tokenized with BOS and without EOS (see [`crate::data::sentences`]). Each label name is encoded
//! without BOS/EOS; its score is the **sum of the log-probabilities of all its token ids
//! under one next-token distribution**, the one after the prompt. This is exactly the
//! exercise's
//!
//! ```python
//! log_probabilities = F.log_softmax(logits, dim=-1)          # logits: [batch, 1, vocab]
//! total_log_prob = torch.sum(log_probabilities[:, :, label_token_ids], axis=-1)
//! ```
//!
//! — not an autoregressive likelihood of the label (the label's second token is scored
//! against the distribution of the *first* position after the prompt). A token id that
//! occurs twice in a label counts twice, as with PyTorch's fancy indexing. The prediction
//! is the label with the highest score (first one on ties, like `np.argmax`).
//!
//! Where the distribution is read:
//! * by default at each row's **last real token** (pad-aware), so a sentence's scores do
//!   not depend on what it is batched with;
//! * with [`PromptingConfig::pad_position_scoring`] at the batch's **last position**, which
//!   is what the exercise does (`self.llama(input_ids)` returns the last position's
//!   logits; rows shorter than the batch's longest are right-padded with the pad id and no
//!   padding mask is used, so their distribution is read after pad tokens). Results then
//!   depend on how sentences are batched; the input order is kept, so the exercise's batch
//!   size reproduces its batches.

use std::path::{Path, PathBuf};

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use llama_model::generation::sampling::argmax;
use llama_model::{Llama, Tokenizer, TokenizerError};

use crate::data::sentences::{make_batch, DataError, DataOptions, SentenceDataset, SentenceItem};
use crate::metrics::{ConfusionMatrix, MetricsError};

/// The batch size of the exercise's documented prompting command (`--batch_size 10`).
pub const DEFAULT_PROMPT_BATCH_SIZE: usize = 10;

/// Why zero-shot classification could not run.
#[derive(Debug, thiserror::Error)]
pub enum PromptingError {
    /// No label names were given.
    #[error("zero-shot classification needs at least one label name")]
    NoLabels,
    /// A label name that encodes to no token (e.g. the empty string).
    #[error("label name {label:?} encodes to no token")]
    EmptyLabel {
        /// The label name.
        label: String,
    },
    /// The tokenizer failed on a label name.
    #[error("cannot tokenize label name {label:?}: {source}")]
    LabelTokenize {
        /// The label name.
        label: String,
        /// The tokenizer's error.
        #[source]
        source: TokenizerError,
    },
    /// A batch size of 0.
    #[error("the prompting batch size must be at least 1")]
    ZeroBatchSize,
    /// A row without any token.
    #[error("row {index} has no token (it needs at least BOS)")]
    EmptyRow {
        /// 0-based row index.
        index: usize,
    },
    /// A token id (of a row or of a label) the model has no embedding for: the tokenizer
    /// does not belong to the model.
    #[error("{what} holds token id {id}, but the model's vocabulary has {vocab_size} entries; do the tokenizer and the model belong together?")]
    TokenOutOfRange {
        /// Which row or label.
        what: String,
        /// The id.
        id: u32,
        /// The model's vocabulary size.
        vocab_size: usize,
    },
    /// The dataset was tokenized without this classifier's prompt suffix.
    #[error("{path} was tokenized with prompt suffix {found:?}, expected {expected:?}; load it with ZeroShotClassifier::load_dataset")]
    WrongSuffix {
        /// The dataset's file.
        path: PathBuf,
        /// The classifier's suffix.
        expected: String,
        /// The dataset's suffix.
        found: Option<String>,
    },
    /// Reading scores back from the device failed.
    #[error("cannot read scores back from the device: {0}")]
    Readback(String),
    /// Accuracy/F1 could not be computed (an empty dataset).
    #[error(transparent)]
    Metrics(#[from] MetricsError),
}

/// How [`ZeroShotClassifier::classify`] batches and where it reads the distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromptingConfig {
    /// Sentences per forward pass.
    pub batch_size: usize,
    /// Read the next-token distribution at the batch's last position, a pad position for
    /// every shorter row (the exercise's behaviour), instead of at each row's last real
    /// token.
    pub pad_position_scoring: bool,
}

impl Default for PromptingConfig {
    fn default() -> Self {
        Self {
            batch_size: DEFAULT_PROMPT_BATCH_SIZE,
            pad_position_scoring: false,
        }
    }
}

/// Predictions and scores over a dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct ZeroShotOutput {
    /// Predicted class of each sentence, in dataset order.
    pub predictions: Vec<usize>,
    /// Per sentence, the score (summed log-probability) of each label, in label order.
    pub scores: Vec<Vec<f32>>,
    /// The dataset's labels, in order.
    pub labels: Vec<usize>,
    /// Fraction of correct predictions.
    pub accuracy: f64,
    /// Macro-averaged F1 (scikit-learn's `f1_score(average='macro')`).
    pub macro_f1: f64,
}

/// `"a or b"` for two names, `"a, b, or c"` for more (the exercise's `label_name_str`), the
/// name itself for one.
pub fn label_name_list<S: AsRef<str>>(label_names: &[S]) -> String {
    let names: Vec<&str> = label_names.iter().map(AsRef::as_ref).collect();
    match names.as_slice() {
        [] => String::new(),
        [one] => (*one).to_string(),
        [a, b] => format!("{a} or {b}"),
        [init @ .., last] => format!("{}, or {last}", init.join(", ")),
    }
}

/// The prompt suffix: `"Is this movie {label_name_list}? This movie is "` (trailing space
/// included, as in the exercise).
pub fn prompt_suffix<S: AsRef<str>>(label_names: &[S]) -> String {
    format!(
        "Is this movie {}? This movie is ",
        label_name_list(label_names)
    )
}

/// Zero-shot classifier: label names, their token ids and the prompt suffix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZeroShotClassifier {
    label_names: Vec<String>,
    label_token_ids: Vec<Vec<u32>>,
    suffix: String,
    pad_id: u32,
}

impl ZeroShotClassifier {
    /// Encodes each label name without BOS/EOS (the exercise's
    /// `tokenizer.encode(label, bos=False, eos=False)`) and builds the prompt suffix.
    pub fn new(tokenizer: &Tokenizer, label_names: Vec<String>) -> Result<Self, PromptingError> {
        if label_names.is_empty() {
            return Err(PromptingError::NoLabels);
        }
        let label_token_ids = label_names
            .iter()
            .map(|label| {
                let ids = tokenizer.encode(label, false, false).map_err(|source| {
                    PromptingError::LabelTokenize {
                        label: label.clone(),
                        source,
                    }
                })?;
                if ids.is_empty() {
                    return Err(PromptingError::EmptyLabel {
                        label: label.clone(),
                    });
                }
                Ok(ids)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            suffix: prompt_suffix(&label_names),
            label_names,
            label_token_ids,
            pad_id: tokenizer.pad_id(),
        })
    }

    /// The label names, in class order.
    pub fn label_names(&self) -> &[String] {
        &self.label_names
    }

    /// Token ids of each label name (no BOS/EOS), in class order.
    pub fn label_token_ids(&self) -> &[Vec<u32>] {
        &self.label_token_ids
    }

    /// The prompt suffix appended to every sentence.
    pub fn suffix(&self) -> &str {
        &self.suffix
    }

    /// The id used to pad batches.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// `options` with this classifier's prompt suffix.
    pub fn data_options(&self, options: &DataOptions) -> DataOptions {
        options
            .clone()
            .with_prompt_suffix(Some(self.suffix.clone()))
    }

    /// Reads a `label ||| sentence` file and tokenizes `sentence + " " + suffix` with BOS.
    pub fn load_dataset(
        &self,
        path: impl AsRef<Path>,
        tokenizer: &Tokenizer,
        options: &DataOptions,
    ) -> Result<SentenceDataset, DataError> {
        SentenceDataset::from_file(path, tokenizer, &self.data_options(options))
    }

    /// Label scores of a batch, on the device.
    ///
    /// * `tokens` `[batch, seq]`: prompts, right-padded;
    /// * `lengths` `[batch]`: real tokens per row (>= 1), used unless `pad_position_scoring`;
    /// * returns `[batch, num_labels]`: per label, the sum over its token ids of
    ///   `log_softmax(logits)` at the scoring position.
    ///
    /// Only the chosen position of each row goes through the last layer's queries and
    /// feed-forward ([`Llama::hidden_at`]) and is projected to the vocabulary (`[batch, dim]`
    /// instead of `[batch, seq, vocab]` logits). Token ids must be below the model's
    /// vocabulary size; [`Self::score_rows`] checks that.
    pub fn score_batch<B: Backend>(
        &self,
        model: &Llama<B>,
        tokens: Tensor<B, 2, Int>,
        lengths: Tensor<B, 1, Int>,
        pad_position_scoring: bool,
    ) -> Tensor<B, 2> {
        let device = tokens.device();
        let [batch, seq] = tokens.dims();
        let positions = if pad_position_scoring {
            Tensor::<B, 1, Int>::full([batch], seq as i64 - 1, &device)
        } else {
            // Each row's last real token; the clamp keeps a (forbidden) zero length in range.
            lengths.sub_scalar(1).clamp(0, seq as i64 - 1)
        };
        let dim = model.dim();
        let chosen = model.hidden_at(tokens, positions).reshape([batch, 1, dim]);
        let vocab = model.vocab_size();
        let log_probs = log_softmax(model.project(chosen).reshape([batch, vocab]), 1);
        let per_label = self
            .label_token_ids
            .iter()
            .map(|ids| {
                let ids: Vec<i64> = ids.iter().map(|&id| i64::from(id)).collect();
                let n = ids.len();
                let ids = Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [n]), &device);
                // [batch, n_ids] -> [batch, 1]
                log_probs.clone().select(1, ids).sum_dim(1)
            })
            .collect();
        Tensor::cat(per_label, 1)
    }

    /// Label scores of token rows (each BOS + prompt), computed in one padded batch:
    /// `scores[row][label]`. With `pad_position_scoring` every row is scored at the
    /// longest row's last position (after its pads).
    pub fn score_rows<B: Backend, R: AsRef<[u32]>>(
        &self,
        model: &Llama<B>,
        rows: &[R],
        pad_position_scoring: bool,
        device: &B::Device,
    ) -> Result<Vec<Vec<f32>>, PromptingError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        self.check_ids(model, rows)?;
        let labels = vec![0; rows.len()];
        let batch = make_batch::<B, R>(rows, &labels, self.pad_id, device);
        let scores = self.score_batch(model, batch.tokens, batch.lengths, pad_position_scoring);
        let n_labels = self.label_names.len();
        let values = scores
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| PromptingError::Readback(format!("{e:?}")))?;
        Ok(values.chunks(n_labels).map(<[f32]>::to_vec).collect())
    }

    /// Rejects empty rows and ids outside the model's vocabulary (an embedding lookup out of
    /// range would panic or read garbage, depending on the backend).
    fn check_ids<B: Backend, R: AsRef<[u32]>>(
        &self,
        model: &Llama<B>,
        rows: &[R],
    ) -> Result<(), PromptingError> {
        let vocab_size = model.vocab_size();
        let out_of_range = |what: String, ids: &[u32]| {
            ids.iter()
                .find(|&&id| id as usize >= vocab_size)
                .map(|&id| PromptingError::TokenOutOfRange {
                    what,
                    id,
                    vocab_size,
                })
        };
        for (label, ids) in self.label_names.iter().zip(&self.label_token_ids) {
            if let Some(e) = out_of_range(format!("label {label:?}"), ids) {
                return Err(e);
            }
        }
        for (index, row) in rows.iter().enumerate() {
            let row = row.as_ref();
            if row.is_empty() {
                return Err(PromptingError::EmptyRow { index });
            }
            if let Some(e) = out_of_range(format!("row {index}"), row) {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Classifies a dataset loaded with [`Self::load_dataset`] (its prompt suffix must be
    /// this classifier's) and scores the predictions against its labels.
    pub fn classify<B: Backend>(
        &self,
        model: &Llama<B>,
        dataset: &SentenceDataset,
        config: &PromptingConfig,
        device: &B::Device,
    ) -> Result<ZeroShotOutput, PromptingError> {
        self.classify_with_progress(model, dataset, config, device, |_| {})
    }

    /// [`classify`](Self::classify), calling `on_batch(sentences)` after each batch with the
    /// number of sentences it held (for a progress bar).
    pub fn classify_with_progress<B: Backend>(
        &self,
        model: &Llama<B>,
        dataset: &SentenceDataset,
        config: &PromptingConfig,
        device: &B::Device,
        mut on_batch: impl FnMut(usize),
    ) -> Result<ZeroShotOutput, PromptingError> {
        if dataset.options().prompt_suffix.as_deref() != Some(self.suffix.as_str()) {
            return Err(PromptingError::WrongSuffix {
                path: dataset.path().to_path_buf(),
                expected: self.suffix.clone(),
                found: dataset.options().prompt_suffix.clone(),
            });
        }
        self.classify_rows(model, dataset.items(), config, device, &mut on_batch)
    }

    /// Classifies items whose tokens already hold the prompt (no suffix check), and scores
    /// the predictions against their labels.
    pub fn classify_items<B: Backend>(
        &self,
        model: &Llama<B>,
        items: &[SentenceItem],
        config: &PromptingConfig,
        device: &B::Device,
    ) -> Result<ZeroShotOutput, PromptingError> {
        self.classify_rows(model, items, config, device, &mut |_| {})
    }

    fn classify_rows<B: Backend>(
        &self,
        model: &Llama<B>,
        items: &[SentenceItem],
        config: &PromptingConfig,
        device: &B::Device,
        on_batch: &mut dyn FnMut(usize),
    ) -> Result<ZeroShotOutput, PromptingError> {
        if config.batch_size == 0 {
            return Err(PromptingError::ZeroBatchSize);
        }
        if items.is_empty() {
            return Err(MetricsError::Empty.into());
        }
        // Pad-aware scores of a row do not depend on the other rows of its batch (the causal
        // mask hides the pads that follow its last real token), so batching rows of similar
        // length gives the same scores with much less padding. With pad-position scoring the
        // padding changes the result, so the input order (the exercise's batches) is kept.
        let mut order: Vec<usize> = (0..items.len()).collect();
        if !config.pad_position_scoring {
            order.sort_by_key(|&i| items[i].tokens.len());
        }
        let mut scores = vec![Vec::new(); items.len()];
        for chunk in order.chunks(config.batch_size) {
            let rows: Vec<&[u32]> = chunk.iter().map(|&i| items[i].tokens.as_slice()).collect();
            let chunk_scores = self
                .score_rows(model, &rows, config.pad_position_scoring, device)
                .map_err(|e| match e {
                    // Report the dataset index, not the index inside the batch.
                    PromptingError::EmptyRow { index } => PromptingError::EmptyRow {
                        index: chunk[index],
                    },
                    other => other,
                })?;
            for (&i, row_scores) in chunk.iter().zip(chunk_scores) {
                scores[i] = row_scores;
            }
            on_batch(chunk.len());
        }
        // The first maximum, as `np.argmax`; an all-NaN row (never seen) would give class 0.
        let predictions: Vec<usize> = scores.iter().map(|s| argmax(s).unwrap_or(0)).collect();
        let labels: Vec<usize> = items.iter().map(|item| item.label).collect();
        let matrix = ConfusionMatrix::new(&labels, &predictions)?;
        Ok(ZeroShotOutput {
            accuracy: matrix.accuracy(),
            macro_f1: matrix.macro_f1(),
            predictions,
            scores,
            labels,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffix_follows_the_exercise() {
        assert_eq!(
            prompt_suffix(&["awful", "bad", "average", "good", "excellent"]),
            "Is this movie awful, bad, average, good, or excellent? This movie is "
        );
        assert_eq!(
            prompt_suffix(&["bad", "good"]),
            "Is this movie bad or good? This movie is "
        );
        assert_eq!(label_name_list(&["a", "b", "c"]), "a, b, or c");
        assert_eq!(label_name_list(&["a"]), "a");
    }
}
