//! The documents of a text file, as the language-model commands (`perplexity`, `pretrain`)
//! read them: one document per non-empty line of plain text, or one per line of JSON Lines
//! (`{"text": "..."}`, other fields ignored), encoded with BOS and without EOS.

use std::path::{Path, PathBuf};

use llama_model::{Tokenizer, TokenizerError};

/// Why a text could not be read or scored. Every variant about a file names it.
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
    /// A JSON Lines line that is not an object with a string `text` field.
    #[error("{path}:{line}: {detail}")]
    BadJsonLine {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        detail: String,
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

/// How a text file holds its documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TextFormat {
    /// One document per non-empty line.
    #[default]
    Plain,
    /// JSON Lines: one object per non-empty line, the document in its `text` field.
    Jsonl,
}

/// Reads the documents of `path` in `format`, in order.
pub fn read_text(path: impl AsRef<Path>, format: TextFormat) -> Result<Vec<Document>, TextError> {
    let path = path.as_ref();
    let lines = read_documents(path)?;
    if format == TextFormat::Plain {
        return Ok(lines);
    }
    let bad = |line: usize, detail: String| TextError::BadJsonLine {
        path: path.to_path_buf(),
        line,
        detail,
    };
    let mut documents = Vec::with_capacity(lines.len());
    for Document { line, text } in lines {
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(line, format!("not JSON: {e}")))?;
        let text = value
            .get("text")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| {
                bad(
                    line,
                    "expected an object with a string \"text\" field".into(),
                )
            })?;
        if !text.trim().is_empty() {
            documents.push(Document {
                line,
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
    fn json_lines_documents_are_their_text_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        std::fs::write(
            &path,
            "{\"text\": \"one\", \"id\": 1}\n\n{\"text\": \"\"}\n{\"text\": \"two\\nlines\"}\n",
        )
        .unwrap();
        let docs = read_text(&path, TextFormat::Jsonl).unwrap();
        let lines: Vec<(usize, &str)> = docs.iter().map(|d| (d.line, d.text.as_str())).collect();
        assert_eq!(lines, [(1, "one"), (4, "two\nlines")]);
        std::fs::write(&path, "{\"text\": \"one\"}\n{\"body\": \"x\"}\n").unwrap();
        let err = read_text(&path, TextFormat::Jsonl).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{}:2: expected an object", path.display())),
            "{err}"
        );
        std::fs::write(&path, "not json\n").unwrap();
        let err = read_text(&path, TextFormat::Jsonl).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{}:1: not JSON", path.display())),
            "{err}"
        );
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
