//! Building a `tokenizers` crate BPE tokenizer that reproduces sentencepiece's BPE encoding.
//!
//! Sentencepiece BPE repeatedly merges the adjacent pair whose concatenation is the
//! highest-scoring piece. The `tokenizers` BPE model merges the pair with the lowest merge
//! rank instead, so the merges list is derived from the vocabulary: every way of splitting a
//! piece into two pieces that are both in the vocabulary is a merge, and merges are ranked by
//! the score of the piece they produce (best first). This is transformers'
//! `SentencePieceExtractor` recipe, the one HuggingFace uses for its Llama `tokenizer.json`.

use std::collections::HashMap;
use std::path::Path;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::normalizers::{Precompiled, Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper};

use super::vocab::{PieceKind, Vocabulary, SPACE_SYMBOL};
use super::TokenizerError;

/// Builds the `tokenizers` tokenizer for `vocab` (already validated: non-empty, unique texts).
pub fn build(vocab: &Vocabulary, path: &Path) -> Result<tokenizers::Tokenizer, TokenizerError> {
    let build_err = |reason: String| TokenizerError::Build {
        path: path.to_path_buf(),
        reason,
    };

    let bpe_vocab: Vocab = vocab
        .pieces
        .iter()
        .enumerate()
        .map(|(id, p)| (p.text.clone(), id as u32))
        .collect();
    let mut builder = BPE::builder()
        .vocab_and_merges(bpe_vocab, merges(vocab))
        .fuse_unk(true)
        .byte_fallback(vocab.options.byte_fallback);
    if let Some(unk) = vocab.pieces.iter().find(|p| p.kind == PieceKind::Unknown) {
        builder = builder.unk_token(unk.text.clone());
    }
    let bpe = builder.build().map_err(|e| build_err(e.to_string()))?;

    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    tokenizer
        .with_normalizer(Some(normalizer(vocab).map_err(build_err)?))
        .map_err(|e| build_err(e.to_string()))?;
    tokenizer.with_decoder(Some(decoder(vocab).map_err(build_err)?));

    // Registered as special so that `inner().decode(ids, true)` and the saved tokenizer.json
    // skip them like HuggingFace's Llama tokenizer does ...
    let specials: Vec<AddedToken> = vocab
        .pieces
        .iter()
        .filter(|p| matches!(p.kind, PieceKind::Control | PieceKind::Unknown))
        .map(|p| AddedToken::from(p.text.clone(), true))
        .collect();
    tokenizer
        .add_special_tokens(specials)
        .map_err(|e| build_err(e.to_string()))?;
    // ... but sentencepiece encodes the text "<s>" as ordinary characters, never as BOS.
    tokenizer.set_encode_special_tokens(true);
    Ok(tokenizer)
}

/// The merges list: for every normal piece, each split into two normal pieces, ordered by the
/// produced piece's score (descending, stable), ties kept in id order and, within one piece,
/// by (left id, right id) — exactly what `SentencePieceExtractor` produces.
///
/// Only normal pieces take part: sentencepiece never merges into or out of control, byte,
/// unknown or unused pieces.
pub fn merges(vocab: &Vocabulary) -> Merges {
    let ids: HashMap<&str, usize> = vocab
        .pieces
        .iter()
        .enumerate()
        .filter(|(_, p)| p.kind == PieceKind::Normal)
        .map(|(id, p)| (p.text.as_str(), id))
        .collect();

    // (score, left id, right id)
    let mut ranked: Vec<(f32, usize, usize)> = Vec::new();
    let mut local: Vec<(usize, usize)> = Vec::new();
    for piece in vocab.pieces.iter().filter(|p| p.kind == PieceKind::Normal) {
        local.clear();
        // Split at character (not byte) boundaries, skipping the empty left half.
        for (at, _) in piece.text.char_indices().skip(1) {
            let (left, right) = piece.text.split_at(at);
            if let (Some(&l), Some(&r)) = (ids.get(left), ids.get(right)) {
                local.push((l, r));
            }
        }
        local.sort_unstable();
        ranked.extend(local.iter().map(|&(l, r)| (piece.score, l, r)));
    }
    // `sort_by` is stable, which keeps the id order among equal scores.
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    ranked
        .into_iter()
        .map(|(_, l, r)| (vocab.pieces[l].text.clone(), vocab.pieces[r].text.clone()))
        .collect()
}

/// Sentencepiece's normaliser for the supported settings: optional precompiled character map,
/// optional whitespace cleanup, then the dummy prefix and `" " -> "▁"`.
fn normalizer(vocab: &Vocabulary) -> Result<NormalizerWrapper, String> {
    let o = &vocab.options;
    let space = SPACE_SYMBOL.to_string();
    let mut steps: Vec<NormalizerWrapper> = Vec::new();
    if let Some(map) = &o.precompiled_charsmap {
        let precompiled =
            Precompiled::from(map).map_err(|e| format!("precompiled_charsmap: {e}"))?;
        steps.push(precompiled.into());
    }
    if o.remove_extra_whitespaces {
        // Sentencepiece drops leading/trailing spaces and collapses inner runs (spaces only,
        // not tabs/newlines), before adding the dummy prefix.
        steps.push(regex_replace("^ +| +$", "")?.into());
        steps.push(regex_replace(" {2,}", " ")?.into());
    }
    // `Prepend` leaves an empty string empty, like sentencepiece (no prefix for "").
    if o.add_dummy_prefix {
        let prefix = if o.escape_whitespaces {
            space.clone()
        } else {
            " ".to_string()
        };
        steps.push(Prepend::new(prefix).into());
    }
    if o.escape_whitespaces {
        steps.push(Replace::new(" ", space).map_err(|e| e.to_string())?.into());
    }
    Ok(NormalizerSequence::new(steps).into())
}

fn regex_replace(pattern: &str, content: &str) -> Result<Replace, String> {
    Replace::new(
        tokenizers::normalizers::replace::ReplacePattern::Regex(pattern.to_string()),
        content,
    )
    .map_err(|e| e.to_string())
}

/// HuggingFace's Llama decoder: `▁` back to spaces, byte pieces to bytes, join, and drop the
/// dummy prefix's space at the start.
fn decoder(vocab: &Vocabulary) -> Result<DecoderWrapper, String> {
    let mut steps: Vec<DecoderWrapper> = vec![
        Replace::new(SPACE_SYMBOL.to_string(), " ")
            .map_err(|e| e.to_string())?
            .into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if vocab.options.add_dummy_prefix || vocab.options.remove_extra_whitespaces {
        steps.push(Strip::new(' ', 1, 0).into());
    }
    Ok(DecoderSequence::new(steps).into())
}

#[cfg(test)]
mod tests {
    use super::super::vocab::{Piece, TextOptions};
    use super::*;

    fn vocab(entries: &[(&str, f32)]) -> Vocabulary {
        Vocabulary {
            pieces: entries
                .iter()
                .map(|&(text, score)| Piece {
                    text: text.to_string(),
                    score,
                    kind: if text.starts_with('<') {
                        PieceKind::Control
                    } else {
                        PieceKind::Normal
                    },
                })
                .collect(),
            options: TextOptions::default(),
        }
    }

    #[test]
    fn merges_follow_scores_and_extractor_tie_order() {
        let v = vocab(&[
            ("<s>", 0.0),
            ("a", -10.0),
            ("b", -11.0),
            ("c", -12.0),
            ("abc", -1.0), // a+bc, ab+c
            ("ab", -2.0),
            ("bc", -2.0), // tie with "ab": id order (ab first)
        ]);
        let m = merges(&v);
        let pairs: Vec<(&str, &str)> = m.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        // "abc": splits a|bc (ids 1,6) and ab|c (ids 5,3) sorted by (left id, right id).
        assert_eq!(pairs, [("a", "bc"), ("ab", "c"), ("a", "b"), ("b", "c")]);
    }

    #[test]
    fn merges_split_on_char_boundaries() {
        let v = vocab(&[("▁", -1.0), ("é", -2.0), ("▁é", -0.5)]);
        let m = merges(&v);
        assert_eq!(m, vec![("▁".to_string(), "é".to_string())]);
    }

    fn encode(vocab: &Vocabulary, text: &str) -> Vec<String> {
        let tokenizer = build(vocab, Path::new("t.model")).expect("builds");
        let encoding = tokenizer.encode_fast(text, false).expect("encodes");
        encoding
            .get_ids()
            .iter()
            .map(|&id| vocab.pieces[id as usize].text.clone())
            .collect()
    }

    #[test]
    fn normaliser_follows_the_sentencepiece_flags() {
        let mut v = vocab(&[
            ("▁", -5.0),
            ("a", -5.0),
            ("b", -5.0),
            ("▁a", -1.0),
            ("▁b", -1.0),
        ]);
        assert_eq!(encode(&v, "a b"), ["▁a", "▁b"]);
        assert_eq!(encode(&v, " a"), ["▁", "▁a"]);
        assert!(encode(&v, "").is_empty());

        v.options.remove_extra_whitespaces = true;
        assert_eq!(encode(&v, "  a   b  "), ["▁a", "▁b"]);
        assert!(encode(&v, "   ").is_empty());

        v.options.remove_extra_whitespaces = false;
        v.options.add_dummy_prefix = false;
        assert_eq!(encode(&v, "a b"), ["a", "▁b"]);
    }
}
