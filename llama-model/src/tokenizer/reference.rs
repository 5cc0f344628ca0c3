//! llama2.c's `encode()` (run.c) ported literally: an independent oracle for the tests.
//!
//! It shares nothing with the `tokenizers` BPE: dummy-prefix piece, one piece per code point
//! (bytes + 3 when missing), then repeatedly merge the adjacent pair whose concatenation is
//! the highest-scoring piece (leftmost on ties) until no pair is a piece.

use std::collections::HashMap;

use super::vocab::{Vocabulary, SPACE_SYMBOL};

/// run.c's encoder over a vocabulary.
pub struct Llama2cEncoder<'a> {
    vocab: &'a Vocabulary,
    lookup: HashMap<&'a str, u32>,
}

impl<'a> Llama2cEncoder<'a> {
    /// Indexes the pieces by text (run.c's sorted vocab + bsearch).
    pub fn new(vocab: &'a Vocabulary) -> Self {
        let lookup = vocab
            .pieces
            .iter()
            .enumerate()
            .map(|(id, p)| (p.text.as_str(), id as u32))
            .collect();
        Self { vocab, lookup }
    }

    /// Encodes `text` without BOS/EOS exactly as run.c does (quadratic, fine for tests).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let space = SPACE_SYMBOL.to_string();
        let mut tokens = Vec::new();
        if !text.is_empty() {
            tokens.push(self.lookup[space.as_str()]);
        }
        for c in text.chars() {
            let piece = c.to_string().replace(' ', &space);
            match self.lookup.get(piece.as_str()) {
                Some(&id) => tokens.push(id),
                None => tokens.extend(piece.bytes().map(|b| u32::from(b) + 3)),
            }
        }
        let mut merged = String::new();
        loop {
            let mut best: Option<(f32, usize, u32)> = None;
            for (i, pair) in tokens.windows(2).enumerate() {
                merged.clear();
                merged.push_str(&self.vocab.pieces[pair[0] as usize].text);
                merged.push_str(&self.vocab.pieces[pair[1] as usize].text);
                if let Some(&id) = self.lookup.get(merged.as_str()) {
                    let score = self.vocab.pieces[id as usize].score;
                    if best.is_none_or(|(s, _, _)| score > s) {
                        best = Some((score, i, id));
                    }
                }
            }
            let Some((_, i, id)) = best else { break };
            tokens[i] = id;
            tokens.remove(i + 1);
        }
        tokens
    }
}
