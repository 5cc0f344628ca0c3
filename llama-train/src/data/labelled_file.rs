//! The exercise's data files: one `label ||| sentence` example per line, and the JSON list
//! of label names. Reading them, and why they can be refused ([`DataError`]).
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
//!   [`DataOptions::lowercase`](crate::data::sentences::DataOptions::lowercase) is `false` by default;
//! * with a prompt suffix (zero-shot prompting) the text becomes `f"{sent} {suffix}"`;
//! * tokens are `tokenizer.encode(text, bos=True, eos=False)` (what the exercise's
//!   `LlamaDataset.pad_data` feeds the model: it re-encodes with `eos=False`);
//! * the number of classes is the number of distinct labels seen
//!   ([`SentenceDataset::num_labels`](crate::data::sentences::SentenceDataset::num_labels), the exercise's `num_labels`).
//!
//! Where we are stricter than the exercise: an empty file, an empty sentence and a line that
//! is not valid UTF-8 are errors; every error names the file and the 1-based line.
//! Line endings `\n` and `\r\n` are accepted, and a UTF-8 byte-order mark at the start of the
//! file is skipped.

use std::path::{Path, PathBuf};

use llama_model::TokenizerError;

/// The separator between label and sentence.
pub const SEPARATOR: &str = " ||| ";

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
    /// `max_sentence_len` of 0 would keep no text token.
    #[error("max_sentence_len must be at least 1 (text tokens kept after BOS)")]
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
/// training file: pass [`SentenceDataset::num_labels`](crate::data::sentences::SentenceDataset::num_labels) of the training set, not of a test
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
}
