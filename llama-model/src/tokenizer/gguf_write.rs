//! A tokenizer as a GGUF file's `tokenizer.ggml.*` metadata, as llama.cpp's converter
//! writes it: sentencepiece-style vocabularies as `llama` (pieces, scores, token types),
//! byte-level BPE as `gpt2` (tokens, token types, merges, the pre-tokenizer's name).
//!
//! A model whose embedding has more rows than the tokenizer has tokens gets `[PADn]` tokens
//! of type unused, as the converter pads them.

use std::collections::HashMap;

use serde_json::Value as Json;

use super::gguf_bpe::LLAMA3_REGEX;
use super::vocab::{Piece, PieceKind};
use super::{Tokenizer, TokenizerFormat};
use crate::gguf::MetaValue;

/// llama.cpp's token types (`llama_token_type`).
fn token_type(kind: PieceKind) -> i32 {
    match kind {
        PieceKind::Normal => 1,
        PieceKind::Unknown => 2,
        PieceKind::Control => 3,
        PieceKind::UserDefined => 4,
        PieceKind::Unused => 5,
        PieceKind::Byte(_) => 6,
    }
}

/// The type of the `[PADn]` tokens.
const UNUSED: i32 = 5;
/// The score the converter gives padding tokens.
const PAD_SCORE: f32 = -1000.0;

/// Transformers' spelling of Llama 3's pre-tokenizer regex (llama.cpp's `llama-bpe`).
const HF_LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

impl Tokenizer {
    /// Whether the vocabulary is a byte-level BPE (GPT-2 / Llama 3 style) rather than
    /// sentencepiece pieces.
    pub fn is_byte_level(&self) -> bool {
        match self.format {
            TokenizerFormat::GgufByteLevel => true,
            TokenizerFormat::HuggingFaceJson => self
                .inner
                .to_string(false)
                .is_ok_and(|json| json.contains("\"ByteLevel\"")),
            _ => false,
        }
    }

    /// The `tokenizer.ggml.*` metadata of this tokenizer for a model of `vocab_size`
    /// embedding rows; `Err` says in one line what GGUF cannot express.
    pub fn gguf_metadata(&self, vocab_size: usize) -> Result<Vec<(String, MetaValue)>, String> {
        let n = self.vocab.pieces.len();
        if n > vocab_size {
            return Err(format!(
                "the tokenizer has {n} tokens, more than the model's {vocab_size} embedding rows"
            ));
        }
        let pads = (n..vocab_size).map(|i| format!("[PAD{i}]"));
        let key = |k: &str| format!("tokenizer.ggml.{k}");
        let mut types: Vec<i32> = self
            .vocab
            .pieces
            .iter()
            .map(|p| token_type(p.kind))
            .collect();
        types.resize(vocab_size, UNUSED);
        let tokens: Vec<String> = self
            .vocab
            .pieces
            .iter()
            .map(|p| p.text.clone())
            .chain(pads)
            .collect();
        let mut meta = Vec::new();
        if self.is_byte_level() {
            let (pre, merges) = self.byte_level_parts()?;
            meta.push((key("model"), MetaValue::Str("gpt2".into())));
            meta.push((key("pre"), MetaValue::Str(pre.into())));
            meta.push((key("tokens"), MetaValue::Strs(tokens)));
            meta.push((key("token_type"), MetaValue::I32s(types)));
            meta.push((key("merges"), MetaValue::Strs(merges)));
        } else {
            let mut scores = self.sentencepiece_scores()?;
            scores.resize(vocab_size, PAD_SCORE);
            meta.push((key("model"), MetaValue::Str("llama".into())));
            meta.push((key("pre"), MetaValue::Str("default".into())));
            meta.push((key("tokens"), MetaValue::Strs(tokens)));
            meta.push((key("scores"), MetaValue::F32s(scores)));
            meta.push((key("token_type"), MetaValue::I32s(types)));
            if !self.vocab.options.add_dummy_prefix {
                meta.push((key("add_space_prefix"), MetaValue::Bool(false)));
            }
        }
        meta.push((key("bos_token_id"), MetaValue::U32(self.bos_id)));
        meta.push((key("eos_token_id"), MetaValue::U32(self.eos_id)));
        meta.push((key("add_bos_token"), MetaValue::Bool(self.adds_bos)));
        meta.push((key("add_eos_token"), MetaValue::Bool(false)));
        Ok(meta)
    }

    /// The tokenizer's own JSON (`tokenizers`' serialization).
    fn json(&self) -> Result<Json, String> {
        self.inner
            .to_string(false)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .ok_or_else(|| {
                format!(
                    "{}: the tokenizer cannot be serialized",
                    self.source.display()
                )
            })
    }

    /// The BPE merges of the tokenizer's model, as `"left right"` strings.
    fn merges(json: &Json) -> Vec<String> {
        let merges = json["model"]["merges"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        merges
            .iter()
            .filter_map(|m| match m {
                Json::String(s) => Some(s.clone()),
                Json::Array(pair) => match (pair.first(), pair.get(1)) {
                    (Some(Json::String(l)), Some(Json::String(r))) => Some(format!("{l} {r}")),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    /// Sentencepiece scores: the file's own (a `.model`, a `.bin`, a GGUF `llama`
    /// vocabulary); for a `tokenizer.json`, which has merges instead, minus the rank of the
    /// first merge that makes each piece (llama.cpp merges the pair whose result scores
    /// highest, so this gives the merges' order), below all of them for the others.
    fn sentencepiece_scores(&self) -> Result<Vec<f32>, String> {
        if self.format != TokenizerFormat::HuggingFaceJson {
            return Ok(self.vocab.pieces.iter().map(|p| p.score).collect());
        }
        let json = self.json()?;
        if json["model"]["type"] != "BPE" {
            return Err(format!(
                "{}: a {} model is neither sentencepiece-style nor byte-level BPE",
                self.source.display(),
                json["model"]["type"]
            ));
        }
        let merges = Self::merges(&json);
        let mut rank: HashMap<String, usize> = HashMap::new();
        for (i, merge) in merges.iter().enumerate() {
            rank.entry(merge.replacen(' ', "", 1)).or_insert(i);
        }
        let unreached = merges.len() as f32 + 1.0;
        Ok(self
            .vocab
            .pieces
            .iter()
            .map(|p: &Piece| rank.get(&p.text).map_or(-unreached, |&r| -(r as f32)))
            .collect())
    }

    /// llama.cpp's name of the byte-level pre-tokenizer (`llama-bpe` for Llama 3's regex,
    /// `gpt-2` for the byte-level split alone) and the merges.
    fn byte_level_parts(&self) -> Result<(&'static str, Vec<String>), String> {
        let json = self.json()?;
        let pre = &json["pre_tokenizer"];
        let steps = match pre["type"].as_str() {
            Some("Sequence") => pre["pretokenizers"].as_array().cloned().unwrap_or_default(),
            _ => vec![pre.clone()],
        };
        let name = match steps.as_slice() {
            [byte_level]
                if byte_level["type"] == "ByteLevel" && byte_level["use_regex"] == true =>
            {
                Some("gpt-2")
            }
            [split, byte_level]
                if split["type"] == "Split"
                    && byte_level["type"] == "ByteLevel"
                    && byte_level["use_regex"] == false =>
            {
                match split["pattern"]["Regex"].as_str() {
                    Some(LLAMA3_REGEX | HF_LLAMA3_REGEX) => Some("llama-bpe"),
                    _ => None,
                }
            }
            _ => None,
        };
        let name = name.ok_or_else(|| {
            format!(
                "{}: the pre-tokenizer {pre} has no llama.cpp name (Llama 3's regex and \
                 GPT-2's byte-level split have: `llama-bpe`, `gpt-2`)",
                self.source.display()
            )
        })?;
        Ok((name, Self::merges(&json)))
    }
}
