//! The tokenized examples of a data file as a Burn [`Dataset`], and the batcher that pads
//! them into [`SentenceBatch`]es. The files themselves: [`crate::data::labelled_file`].
//!
//! Each [`SentenceItem`] keeps both the stripped original sentence (`sentence`, what the
//! prediction files show) and the exact text that was tokenized (`text`: lower-cased when
//! asked, with the prompt suffix when there is one).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use llama_model::Tokenizer;

// The file format lives in its own module; these re-exports keep the `data::…` paths.
pub use crate::data::labelled_file::{
    load_label_names, parse_labelled, read_label_names, read_labelled_file, DataError,
    LabelledSentence, LineError, SEPARATOR,
};

/// A batch of tokenized sentences, right-padded with the pad id.
#[derive(Debug, Clone)]
pub struct SentenceBatch<B: Backend> {
    /// `[batch, seq]`: BOS + tokens, right-padded with the tokenizer's pad id.
    pub tokens: Tensor<B, 2, Int>,
    /// `[batch]`: number of real tokens of each row (BOS included), >= 1.
    pub lengths: Tensor<B, 1, Int>,
    /// `[batch]`: class index of each row.
    pub labels: Tensor<B, 1, Int>,
    /// Seed of this batch's dropout mask in training ([`llama_model::train::seeded_dropout::seeded_dropout`]);
    /// `None` (what the batcher gives) draws the mask from the backend's generator. The
    /// fine-tuning loop sets it from `(seed, epoch, batch)`.
    pub dropout_seed: Option<u64>,
    /// What the summed training NLL is divided by. The fine-tuning loop sets the configured
    /// batch size, as the exercise's `nll_loss(..., reduction="sum") / args.batch_size` does,
    /// also for the last, partial batch of an epoch; `None` (what the batcher gives) divides
    /// by the rows present.
    pub loss_divisor: Option<usize>,
    /// Global index of row 0 when this batch is one process's rows of a larger batch
    /// (data-parallel training, [`Self::rows`]): the dropout masks are those rows' part of
    /// the global batch's masks. 0 otherwise.
    pub first_row: usize,
}

impl<B: Backend> SentenceBatch<B> {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.tokens.dims()[0]
    }

    /// Whether the batch has no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rows `range` of this batch, padded to this batch's width (so that a row's padding,
    /// and with it its dropout mask, is what it is in the whole batch), `first_row` set to
    /// the global index of `range.start`.
    pub fn rows(self, range: std::ops::Range<usize>) -> Self {
        Self {
            first_row: self.first_row + range.start,
            tokens: self.tokens.slice(range.clone()),
            lengths: self.lengths.slice(range.clone()),
            labels: self.labels.slice(range),
            ..self
        }
    }
}

/// How sentences become token sequences.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataOptions {
    /// Lower-case the sentence before tokenizing (the exercise's `create_data(lower=...)`,
    /// `false` in every call of `run_llama.py`). The `sentence` kept for output is not
    /// lower-cased.
    pub lowercase: bool,
    /// Keep only the first `max_sentence_len` text tokens of each sequence, then put BOS in
    /// front (so a row holds at most `max_sentence_len + 1` ids), as the exercise's
    /// `Tokenizer(max_len)` does. `None` (the default) keeps every sequence whole, also
    /// beyond the model's `max_seq_len`: the model computes RoPE angles for any length.
    ///
    /// With a prompt suffix the cut applies to sentence + suffix, as in the exercise (a cut
    /// can remove the suffix).
    pub max_sentence_len: Option<usize>,
    /// Text appended after the sentence and one space before tokenizing, as the exercise's
    /// `create_data(prompt_suffix=...)` does (`f"{sent} {prompt_suffix}"`).
    pub prompt_suffix: Option<String>,
}

impl DataOptions {
    /// Sets [`lowercase`](Self::lowercase).
    #[must_use]
    pub fn with_lowercase(mut self, lowercase: bool) -> Self {
        self.lowercase = lowercase;
        self
    }

    /// Sets [`max_sentence_len`](Self::max_sentence_len).
    #[must_use]
    pub fn with_max_sentence_len(mut self, max_sentence_len: Option<usize>) -> Self {
        self.max_sentence_len = max_sentence_len;
        self
    }

    /// Sets [`prompt_suffix`](Self::prompt_suffix).
    #[must_use]
    pub fn with_prompt_suffix(mut self, prompt_suffix: Option<String>) -> Self {
        self.prompt_suffix = prompt_suffix;
        self
    }

    /// The text that is tokenized for `sentence` (already stripped): lower-cased if asked,
    /// then `"{sentence} {suffix}"` if there is a suffix.
    pub fn model_text(&self, sentence: &str) -> String {
        let text = if self.lowercase {
            sentence.to_lowercase()
        } else {
            sentence.to_string()
        };
        match &self.prompt_suffix {
            Some(suffix) => format!("{text} {suffix}"),
            None => text,
        }
    }
}

/// One tokenized example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentenceItem {
    /// BOS followed by the ids of [`text`](Self::text), cut to `max_sentence_len` text ids if
    /// one is set; never empty.
    pub tokens: Vec<u32>,
    /// The class id.
    pub label: usize,
    /// The original sentence, whitespace-stripped, case kept: what prediction files show.
    pub sentence: String,
    /// The text that was tokenized (lower-cased if asked, prompt suffix appended if any).
    pub text: String,
    /// 1-based line number in the source file (0 for items not read from a file).
    pub line: usize,
    /// Whether `max_sentence_len` cut the token sequence.
    pub truncated: bool,
}

/// The tokenized examples of one data file, in file order; a Burn [`Dataset`].
#[derive(Debug, Clone)]
pub struct SentenceDataset {
    items: Vec<SentenceItem>,
    path: PathBuf,
    options: DataOptions,
}

impl SentenceDataset {
    /// Reads, parses and tokenizes a `label ||| sentence` file.
    pub fn from_file(
        path: impl AsRef<Path>,
        tokenizer: &Tokenizer,
        options: &DataOptions,
    ) -> Result<Self, DataError> {
        let path = path.as_ref();
        let records = read_labelled_file(path)?;
        Self::from_records(records, path, tokenizer, options)
    }

    /// Tokenizes parsed records; `path` names the source in errors.
    pub fn from_records(
        records: Vec<LabelledSentence>,
        path: impl AsRef<Path>,
        tokenizer: &Tokenizer,
        options: &DataOptions,
    ) -> Result<Self, DataError> {
        let path = path.as_ref();
        if options.max_sentence_len == Some(0) {
            return Err(DataError::ZeroMaxSentenceLen);
        }
        let items = records
            .into_iter()
            .map(|record| {
                let text = options.model_text(&record.sentence);
                let mut tokens =
                    tokenizer
                        .encode(&text, true, false)
                        .map_err(|source| DataError::Tokenize {
                            path: path.to_path_buf(),
                            line: record.line,
                            source,
                        })?;
                // BOS, then at most `max_sentence_len` text tokens (the exercise's order).
                let limit = options.max_sentence_len.map_or(usize::MAX, |n| n + 1);
                let truncated = tokens.len() > limit;
                tokens.truncate(limit);
                Ok(SentenceItem {
                    tokens,
                    label: record.label,
                    sentence: record.sentence,
                    text,
                    line: record.line,
                    truncated,
                })
            })
            .collect::<Result<Vec<_>, DataError>>()?;
        Ok(Self {
            items,
            path: path.to_path_buf(),
            options: options.clone(),
        })
    }

    /// The examples, in file order.
    pub fn items(&self) -> &[SentenceItem] {
        &self.items
    }

    /// Each sentence's length in tokens (BOS included), in file order.
    pub fn lengths(&self) -> Vec<usize> {
        self.items.iter().map(|i| i.tokens.len()).collect()
    }

    /// The file the examples came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The options the examples were tokenized with.
    pub fn options(&self) -> &DataOptions {
        &self.options
    }

    /// The label of every example, in order.
    pub fn labels(&self) -> Vec<usize> {
        self.items.iter().map(|item| item.label).collect()
    }

    /// The stripped original sentences, in order (what prediction files show).
    pub fn sentences(&self) -> Vec<&str> {
        self.items
            .iter()
            .map(|item| item.sentence.as_str())
            .collect()
    }

    /// The distinct labels, ascending.
    pub fn distinct_labels(&self) -> Vec<usize> {
        let set: BTreeSet<usize> = self.items.iter().map(|item| item.label).collect();
        set.into_iter().collect()
    }

    /// Number of distinct labels: the exercise's `num_labels` (5 for SST, 2 for CFIMDB's
    /// train and dev files, 1 for CFIMDB's test file whose labels are placeholders).
    pub fn num_labels(&self) -> usize {
        self.distinct_labels().len()
    }

    /// Checks that every label is a valid class index `< num_classes` (labels are used
    /// directly as class ids, so `{0, 2}` with two classes would index out of range).
    pub fn check_labels_below(&self, num_classes: usize) -> Result<(), DataError> {
        match self.items.iter().find(|item| item.label >= num_classes) {
            Some(item) => Err(DataError::LabelOutOfRange {
                path: self.path.clone(),
                line: item.line,
                label: item.label,
                num_classes,
            }),
            None => Ok(()),
        }
    }

    /// Number of examples whose tokens were cut by `max_sentence_len`.
    pub fn num_truncated(&self) -> usize {
        self.items.iter().filter(|item| item.truncated).count()
    }
}

impl Dataset<SentenceItem> for SentenceDataset {
    fn get(&self, index: usize) -> Option<SentenceItem> {
        self.items.get(index).cloned()
    }

    fn len(&self) -> usize {
        self.items.len()
    }
}

/// Right-pads token rows to the longest one: `([rows * width] ids, width)`, row-major,
/// `i64` because that is what Burn's `Int` tensors are built from.
pub fn pad_rows<R: AsRef<[u32]>>(rows: &[R], pad_id: u32) -> (Vec<i64>, usize) {
    // Width at least 1 so that a batch of empty rows is still a valid `[batch, 1]` tensor.
    let width = rows
        .iter()
        .map(|row| row.as_ref().len())
        .max()
        .unwrap_or(0)
        .max(1);
    let mut data = Vec::with_capacity(rows.len() * width);
    for row in rows {
        let row = row.as_ref();
        data.extend(row.iter().map(|&id| i64::from(id)));
        data.extend(std::iter::repeat_n(i64::from(pad_id), width - row.len()));
    }
    (data, width)
}

/// Builds a [`SentenceBatch`] from token rows and their labels (one label per row).
///
/// `tokens` `[rows, width]` right-padded with `pad_id` (`width` = longest row, at least 1),
/// `lengths` `[rows]`, `labels` `[labels.len()]`.
pub fn make_batch<B: Backend, R: AsRef<[u32]>>(
    rows: &[R],
    labels: &[usize],
    pad_id: u32,
    device: &B::Device,
) -> SentenceBatch<B> {
    let (data, width) = pad_rows(rows, pad_id);
    let n = rows.len();
    let lengths: Vec<i64> = rows.iter().map(|row| row.as_ref().len() as i64).collect();
    let labels: Vec<i64> = labels.iter().map(|&label| label as i64).collect();
    let n_labels = labels.len();
    SentenceBatch {
        tokens: Tensor::from_data(TensorData::new(data, [n, width]), device),
        lengths: Tensor::from_data(TensorData::new(lengths, [n]), device),
        labels: Tensor::from_data(TensorData::new(labels, [n_labels]), device),
        dropout_seed: None,
        loss_divisor: None,
        first_row: 0,
    }
}

/// Pads [`SentenceItem`]s into a [`SentenceBatch`] with the tokenizer's pad id (right
/// padding, as the exercise's `pad_data`; `lengths` lets consumers find each row's last
/// real token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentenceBatcher {
    pad_id: u32,
}

impl SentenceBatcher {
    /// A batcher padding with `pad_id`.
    pub fn new(pad_id: u32) -> Self {
        Self { pad_id }
    }

    /// A batcher padding with `tokenizer.pad_id()` (3 for Llama 2 and tok512).
    pub fn from_tokenizer(tokenizer: &Tokenizer) -> Self {
        Self::new(tokenizer.pad_id())
    }

    /// The pad id.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }
}

impl<B: Backend> Batcher<B, SentenceItem, SentenceBatch<B>> for SentenceBatcher {
    fn batch(&self, items: Vec<SentenceItem>, device: &B::Device) -> SentenceBatch<B> {
        let rows: Vec<&[u32]> = items.iter().map(|item| item.tokens.as_slice()).collect();
        let labels: Vec<usize> = items.iter().map(|item| item.label).collect();
        make_batch(&rows, &labels, self.pad_id, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_text_lowercases_and_appends_the_suffix() {
        let options = DataOptions::default()
            .with_lowercase(true)
            .with_prompt_suffix(Some("Is it? ".into()));
        assert_eq!(options.model_text("A Film"), "a film Is it? ");
        assert_eq!(DataOptions::default().model_text("A Film"), "A Film");
    }

    #[test]
    fn pads_rows_to_the_longest() {
        let (data, width) = pad_rows(&[vec![1u32, 5, 6], vec![1]], 3);
        assert_eq!(width, 3);
        assert_eq!(data, vec![1, 5, 6, 1, 3, 3]);
        let empty: [Vec<u32>; 0] = [];
        assert_eq!(pad_rows(&empty, 3), (vec![], 1));
    }
}
