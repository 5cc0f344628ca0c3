//! `--text-format`: how the text files of `perplexity` and `pretrain` hold their documents.

use clap::ValueEnum;
use llama_train::data::documents::TextFormat;

/// How `--text` files hold their documents.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TextFormatFlag {
    /// One document per non-empty line.
    Plain,
    /// JSON Lines: one object per line, the document in its `text` field.
    Jsonl,
}

impl From<TextFormatFlag> for TextFormat {
    fn from(flag: TextFormatFlag) -> Self {
        match flag {
            TextFormatFlag::Plain => Self::Plain,
            TextFormatFlag::Jsonl => Self::Jsonl,
        }
    }
}
