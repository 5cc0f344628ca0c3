//! Labelled-sentence files, the Burn dataset over them and the batcher that pads them.
//!
//! # File format
//!
//! The exercise's data files (SST-5, CFIMDB) hold one example per line:
//! `label ||| sentence`. This module reads them the way the exercise's
//! `run_llama.py::create_data` does:
//!
//! * each line is split at `" ||| "` into exactly two parts (Python's
//!   `label, org_sent = line.split(' ||| ')`, which fails on zero or on two separators);
//! * the label is `int(label.strip())`, used directly as the class id (no remapping), so
//!   only non-negative integers are accepted;
//! * the sentence is `org_sent.strip()`; with `lower=True` it is lower-cased first. The
//!   exercise's default — and every call in `run_llama.py` — is `lower=False`, so
//!   [`DataOptions::lowercase`] is `false` by default;
//! * with a prompt suffix (zero-shot prompting) the text becomes `f"{sent} {suffix}"`;
//! * tokens are `tokenizer.encode(text, bos=True, eos=False)` (what the exercise's
//!   `LlamaDataset.pad_data` feeds the model: it re-encodes with `eos=False`);
//! * the number of classes is the number of distinct labels seen
//!   ([`SentenceDataset::num_labels`], the exercise's `num_labels`).
//!
//! Where we are stricter than the exercise: an empty file, an empty sentence and a line that
//! is not valid UTF-8 are errors; every error names the file and the 1-based line.
//! Line endings `\n` and `\r\n` are accepted, and a UTF-8 byte-order mark at the start of the
//! file is skipped.
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
use llama_model::{Tokenizer, TokenizerError};

/// The separator between label and sentence.
pub const SEPARATOR: &str = " ||| ";

/// A batch of tokenized sentences, right-padded with the pad id.
#[derive(Debug, Clone)]
pub struct SentenceBatch<B: Backend> {
    /// `[batch, seq]`: BOS + tokens, right-padded with the tokenizer's pad id.
    pub tokens: Tensor<B, 2, Int>,
    /// `[batch]`: number of real tokens of each row (BOS included), >= 1.
    pub lengths: Tensor<B, 1, Int>,
    /// `[batch]`: class index of each row.
    pub labels: Tensor<B, 1, Int>,
    /// Seed of this batch's dropout mask in training ([`crate::dropout::seeded_dropout`]);
    /// `None` (what the batcher gives) draws the mask from the backend's generator. The
    /// fine-tuning loop sets it from `(seed, epoch, batch)`.
    pub dropout_seed: Option<u64>,
}

/// What is wrong with one line of a `label ||| sentence` file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// No `" ||| "` on the line (a blank line is reported this way too).
    #[error("no \" ||| \" separator between label and sentence")]
    MissingSeparator,
    /// More than one `" ||| "` (the exercise's two-way unpacking fails on it too).
    #[error("more than one \" ||| \" separator")]
    ExtraSeparator,
    /// The label is not a non-negative integer.
    #[error("label {label:?} is not a non-negative integer")]
    BadLabel {
        /// The label text as found (before trimming).
        label: String,
    },
    /// Nothing but whitespace after the separator.
    #[error("empty sentence")]
    EmptySentence,
    /// The line is not valid UTF-8.
    #[error("not valid UTF-8")]
    InvalidUtf8,
}

/// Why a data file or label-name file could not be used. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file holds no line at all.
    #[error("{path} is empty: expected `label ||| sentence` lines")]
    EmptyFile {
        /// The file.
        path: PathBuf,
    },
    /// A line that is not `label ||| sentence`.
    #[error("{path}:{line}: {kind}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        kind: LineError,
    },
    /// The tokenizer failed on a line's text.
    #[error("{path}:{line}: cannot tokenize: {source}")]
    Tokenize {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The tokenizer's error.
        #[source]
        source: TokenizerError,
    },
    /// `max_sentence_len` of 0 would leave rows without any token.
    #[error("max_sentence_len must be at least 1 (it counts BOS)")]
    ZeroMaxSentenceLen,
    /// A label-name file that is not a JSON list of strings.
    #[error("{path}: not a JSON list of label names: {source}")]
    LabelNamesJson {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// The label-name file lists a different number of names than there are classes.
    #[error("{path} lists {found} label names but the data has {expected} classes")]
    LabelCount {
        /// The label-name file.
        path: PathBuf,
        /// Number of names in the file.
        found: usize,
        /// Number of classes.
        expected: usize,
    },
    /// A label that is not a valid class index (labels are used directly as class ids).
    #[error("{path}:{line}: label {label} is not below the number of classes ({num_classes})")]
    LabelOutOfRange {
        /// The data file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The label.
        label: usize,
        /// Number of classes.
        num_classes: usize,
    },
}

/// One parsed line of a data file, before tokenization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelledSentence {
    /// The class id (the file's integer label, used as it is).
    pub label: usize,
    /// The sentence with surrounding whitespace stripped, case kept.
    pub sentence: String,
    /// 1-based line number in the file.
    pub line: usize,
}

/// How sentences become token sequences.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataOptions {
    /// Lower-case the sentence before tokenizing (the exercise's `create_data(lower=...)`,
    /// `false` in every call of `run_llama.py`). The `sentence` kept for output is not
    /// lower-cased.
    pub lowercase: bool,
    /// Keep only the first `max_sentence_len` tokens of each sequence, **BOS included**
    /// (so a row holds at most `max_sentence_len` ids). `None` (the default) keeps every
    /// sequence whole, also beyond the model's `max_seq_len`: the model computes RoPE
    /// angles for any length.
    ///
    /// This differs from the exercise's `Tokenizer(max_len)`, which keeps `max_len` text
    /// tokens and then adds BOS (`max_len + 1` ids). With a prompt suffix the cut applies
    /// to sentence + suffix, as in the exercise (a cut can remove the suffix).
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
    /// BOS followed by the ids of [`text`](Self::text), cut to `max_sentence_len` if one is
    /// set; never empty.
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

/// Parses the text of a `label ||| sentence` file; `path` only names the file in errors.
pub fn parse_labelled(bytes: &[u8], path: &Path) -> Result<Vec<LabelledSentence>, DataError> {
    // Python's utf-8 decoding keeps a BOM as U+FEFF, which would then fail `int()`; skipping
    // it is harmless and spares users a baffling error.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if bytes.is_empty() {
        return Err(DataError::EmptyFile {
            path: path.to_path_buf(),
        });
    }
    // A final newline ends the last line; it does not start an empty one.
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let malformed = |line: usize, kind: LineError| DataError::Malformed {
        path: path.to_path_buf(),
        line,
        kind,
    };
    let mut out = Vec::new();
    for (index, raw) in body.split(|&b| b == b'\n').enumerate() {
        let line = index + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let text = std::str::from_utf8(raw).map_err(|_| malformed(line, LineError::InvalidUtf8))?;
        let (label, rest) = text
            .split_once(SEPARATOR)
            .ok_or_else(|| malformed(line, LineError::MissingSeparator))?;
        if rest.contains(SEPARATOR) {
            return Err(malformed(line, LineError::ExtraSeparator));
        }
        let label = label.trim().parse::<usize>().map_err(|_| {
            malformed(
                line,
                LineError::BadLabel {
                    label: label.to_string(),
                },
            )
        })?;
        let sentence = rest.trim();
        if sentence.is_empty() {
            return Err(malformed(line, LineError::EmptySentence));
        }
        out.push(LabelledSentence {
            label,
            sentence: sentence.to_string(),
            line,
        });
    }
    Ok(out)
}

/// Reads and parses a `label ||| sentence` file (see the [module docs](self)).
pub fn read_labelled_file(path: impl AsRef<Path>) -> Result<Vec<LabelledSentence>, DataError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_labelled(&bytes, path)
}

/// Reads a label-name file: a JSON list of strings in class order, e.g.
/// `["awful","bad","average","good","excellent"]`.
pub fn read_label_names(path: impl AsRef<Path>) -> Result<Vec<String>, DataError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| DataError::LabelNamesJson {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a label-name file and checks that it names exactly `num_classes` classes (the
/// exercise's `assert len(label_names) == num_labels`, where `num_labels` comes from the
/// training file: pass [`SentenceDataset::num_labels`] of the training set, not of a test
/// set whose labels are placeholders).
pub fn load_label_names(
    path: impl AsRef<Path>,
    num_classes: usize,
) -> Result<Vec<String>, DataError> {
    let path = path.as_ref();
    let names = read_label_names(path)?;
    if names.len() != num_classes {
        return Err(DataError::LabelCount {
            path: path.to_path_buf(),
            found: names.len(),
            expected: num_classes,
        });
    }
    Ok(names)
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
                let limit = options.max_sentence_len.unwrap_or(usize::MAX);
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

    fn parse(text: &str) -> Result<Vec<LabelledSentence>, DataError> {
        parse_labelled(text.as_bytes(), Path::new("mem.txt"))
    }

    fn line_error(text: &str) -> (usize, LineError) {
        match parse(text) {
            Err(DataError::Malformed { line, kind, .. }) => (line, kind),
            other => panic!("expected a malformed-line error, got {other:?}"),
        }
    }

    #[test]
    fn parses_like_create_data() {
        let records = parse("3 ||| It 's  fine .  \r\n 0 |||   Bad\tfilm\n").unwrap();
        assert_eq!(
            records,
            vec![
                LabelledSentence {
                    label: 3,
                    sentence: "It 's  fine .".into(),
                    line: 1
                },
                LabelledSentence {
                    label: 0,
                    sentence: "Bad\tfilm".into(),
                    line: 2
                },
            ]
        );
        // No final newline is fine too.
        assert_eq!(parse("1 ||| a").unwrap().len(), 1);
    }

    #[test]
    fn reports_the_line_of_a_malformed_record() {
        assert_eq!(
            line_error("1 ||| ok\n2 | bad\n"),
            (2, LineError::MissingSeparator)
        );
        assert_eq!(
            line_error("1 ||| ok\n\n1 ||| ok\n"),
            (2, LineError::MissingSeparator)
        );
        assert_eq!(
            line_error("1 ||| a ||| b\n"),
            (1, LineError::ExtraSeparator)
        );
        assert_eq!(
            line_error("1 ||| ok\nx ||| no\n"),
            (2, LineError::BadLabel { label: "x".into() })
        );
        assert_eq!(
            line_error("-1 ||| no\n"),
            (1, LineError::BadLabel { label: "-1".into() })
        );
        assert_eq!(line_error("1 |||  \n"), (1, LineError::EmptySentence));
        assert!(matches!(
            parse_labelled(b"1 ||| ok\n1 ||| \xff\n", Path::new("mem.txt")),
            Err(DataError::Malformed {
                line: 2,
                kind: LineError::InvalidUtf8,
                ..
            })
        ));
        assert!(matches!(parse(""), Err(DataError::EmptyFile { .. })));
    }

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
