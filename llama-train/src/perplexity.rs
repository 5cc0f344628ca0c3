//! Perplexity of a language model on a text file.
//!
//! The definition (the README states it as written here):
//!
//! * each non-empty line of the file is one document (a line of only whitespace counts as
//!   empty), encoded with BOS and without EOS;
//! * a document longer than the model's context is cut to its first `max_seq_len` tokens;
//! * the loss is the cross-entropy of predicting token `t` from the tokens before it, for
//!   every token after BOS;
//! * perplexity = `exp(total NLL / total predicted tokens)` over the whole file,
//!   token-weighted, accumulated in f64.
//!
//! Documents are scored in batches of similar lengths, right-padded; the causal mask keeps
//! every real position from seeing the padding after it, and padded positions are left out of
//! the sums, so the batch size changes the figure only by float rounding (tested: 1 against
//! 16 within 1e-6 relative).

use std::path::{Path, PathBuf};

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use llama_model::{Llama, Tokenizer, TokenizerError};

use crate::data::pad_rows;

/// Why a text could not be scored. Every variant about a file names it.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A line is not valid UTF-8.
    #[error("{path}:{line}: not UTF-8 text")]
    NotUtf8 {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
    /// No non-empty line.
    #[error("{path} holds no text: expected one document per non-empty line")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The tokenizer failed on a document.
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
    /// A batch size of 0.
    #[error("the batch size must be at least 1")]
    ZeroBatch,
    /// The model's output could not be read back.
    #[error("reading the model's output: {0}")]
    Output(String),
}

/// One document of a text file: a non-empty line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// 1-based line number.
    pub line: usize,
    /// The line's text (its line ending removed).
    pub text: String,
}

/// Reads a text file's documents: its non-empty lines, in order.
pub fn read_documents(path: impl AsRef<Path>) -> Result<Vec<Document>, TextError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| TextError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut documents = vec![];
    for (index, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let text = std::str::from_utf8(raw).map_err(|_| TextError::NotUtf8 {
            path: path.to_path_buf(),
            line: index + 1,
        })?;
        if !text.trim().is_empty() {
            documents.push(Document {
                line: index + 1,
                text: text.to_string(),
            });
        }
    }
    if documents.is_empty() {
        return Err(TextError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(documents)
}

/// The token rows of a text's documents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedText {
    /// BOS + ids of each document, no EOS, at most the context long.
    pub rows: Vec<Vec<u32>>,
    /// Documents longer than the context, cut to its length.
    pub cut: usize,
}

/// Encodes `documents`: BOS + ids, no EOS, each cut to `max_len` tokens. `path` names the
/// file in errors.
pub fn encode_documents(
    tokenizer: &Tokenizer,
    documents: &[Document],
    max_len: usize,
    path: &Path,
) -> Result<EncodedText, TextError> {
    let mut cut = 0;
    let rows = documents
        .iter()
        .map(|doc| {
            let mut ids =
                tokenizer
                    .encode(&doc.text, true, false)
                    .map_err(|source| TextError::Tokenize {
                        path: path.to_path_buf(),
                        line: doc.line,
                        source,
                    })?;
            if ids.len() > max_len {
                cut += 1;
                ids.truncate(max_len);
            }
            Ok(ids)
        })
        .collect::<Result<_, TextError>>()?;
    Ok(EncodedText { rows, cut })
}

/// The figures of [`perplexity`].
#[derive(Debug, Clone, PartialEq)]
pub struct Perplexity {
    /// Each document's predicted tokens (its length minus BOS) and summed NLL, in order.
    pub per_document: Vec<(usize, f64)>,
    /// Tokens predicted over the whole text.
    pub predicted_tokens: usize,
    /// Summed negative log-likelihood (nats) over the whole text.
    pub total_nll: f64,
}

impl Perplexity {
    /// Mean NLL per predicted token (NaN when nothing was predicted).
    pub fn mean_nll(&self) -> f64 {
        self.total_nll / self.predicted_tokens as f64
    }

    /// `exp(mean NLL)`.
    pub fn perplexity(&self) -> f64 {
        self.mean_nll().exp()
    }
}

/// Scores token `rows` (each starting with BOS, at most the model's context long) with
/// `model`, `batch_size` rows per forward pass; see the [module docs](self). Calls
/// `progress(rows done)` after each batch.
pub fn perplexity<B: Backend>(
    model: &Llama<B>,
    rows: &[Vec<u32>],
    batch_size: usize,
    device: &B::Device,
    mut progress: impl FnMut(usize),
) -> Result<Perplexity, TextError> {
    if batch_size == 0 {
        return Err(TextError::ZeroBatch);
    }
    // Batches of similar lengths pad (and attend over) little; results go back in file order.
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| rows[i].len());
    let mut per_document = vec![(0, 0.0); rows.len()];
    let mut done = 0;
    for indices in order.chunks(batch_size) {
        let batch: Vec<Vec<u32>> = indices.iter().map(|&i| rows[i].clone()).collect();
        for (&i, figures) in indices.iter().zip(score_batch(model, &batch, device)?) {
            per_document[i] = figures;
        }
        done += indices.len();
        progress(done);
    }
    Ok(Perplexity {
        predicted_tokens: per_document.iter().map(|(n, _)| n).sum(),
        total_nll: per_document.iter().map(|(_, nll)| nll).sum(),
        per_document,
    })
}

/// `(predicted tokens, summed NLL)` of each row of one batch.
fn score_batch<B: Backend>(
    model: &Llama<B>,
    rows: &[Vec<u32>],
    device: &B::Device,
) -> Result<Vec<(usize, f64)>, TextError> {
    let batch = rows.len();
    // Any id pads: padded positions come after every real one and are never summed.
    let (ids, width) = pad_rows(rows, 0);
    let tokens =
        Tensor::<B, 2, Int>::from_data(TensorData::new(ids.clone(), [batch, width]), device);
    // Position p predicts the token at p + 1; the last position predicts nothing.
    let targets: Vec<i64> = ids
        .chunks(width)
        .flat_map(|row| row[1..].iter().copied().chain(std::iter::once(0)))
        .collect();
    let targets = Tensor::<B, 2, Int>::from_data(TensorData::new(targets, [batch, width]), device);
    let log_probs = log_softmax(model.forward(tokens).logits, 2); // [batch, width, vocab]
    let picked = log_probs
        .gather(2, targets.unsqueeze_dim(2))
        .reshape([batch, width])
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| TextError::Output(format!("{e:?}")))?;
    Ok(rows
        .iter()
        .zip(picked.chunks(width))
        .map(|(row, log_probs)| {
            let predicted = row.len().saturating_sub(1);
            let nll = log_probs[..predicted]
                .iter()
                .map(|&lp| -f64::from(lp))
                .sum();
            (predicted, nll)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_the_non_empty_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.txt");
        std::fs::write(&path, "one\n\n  \ntwo\r\nthree").unwrap();
        let docs = read_documents(&path).unwrap();
        let lines: Vec<(usize, &str)> = docs.iter().map(|d| (d.line, d.text.as_str())).collect();
        assert_eq!(lines, [(1, "one"), (4, "two"), (5, "three")]);
    }

    #[test]
    fn bad_text_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.txt");
        assert!(matches!(
            read_documents(&missing),
            Err(TextError::Io { .. })
        ));
        let empty = dir.path().join("empty.txt");
        std::fs::write(&empty, "\n \n").unwrap();
        let err = read_documents(&empty).unwrap_err();
        assert!(err.to_string().contains("empty.txt holds no text"), "{err}");
        let binary = dir.path().join("bin.txt");
        std::fs::write(&binary, b"fine\n\xff\xfe\n").unwrap();
        let err = read_documents(&binary).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}:2: not UTF-8 text", binary.display())
        );
    }
}
