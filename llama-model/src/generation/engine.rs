//! One sequence's decoding state: its KV cache (a batch of one) and its token history,
//! extended a few tokens at a time, truncated, or re-filled with the last `max_seq_len`
//! tokens when the context overflows (the exercise's cropping). A slot of the continuous
//! batch ([`crate::generation::batch`]) holds one, and so does a chat session.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::generation::generate::GenerateError;
use crate::model::kv_cache::LlamaCache;
use crate::model::llama::{causal_mask, Llama};
use crate::model::rope::RotaryEmbedding;

/// The cache and the token history of one sequence.
///
/// The cache holds the last `cache.len()` tokens of `history` at positions `0..` (its
/// window). While the context was never cropped the window is the whole history; a cropped
/// sequence's window is `max_seq_len` long, and its next token re-fills ([`Self::refill`]).
#[derive(Debug)]
pub(crate) struct Engine<'m, B: Backend> {
    pub(crate) model: &'m Llama<B>,
    pub(crate) cache: LlamaCache<B>,
    /// Column blocks per weight product of every step ([`GenerateConfig::decode_split`]).
    pub(crate) split: usize,
    /// Prompt plus every token fed so far.
    pub(crate) history: Vec<u32>,
    /// Passes that ran a cropped window.
    pub(crate) context_resets: usize,
    pub(crate) device: B::Device,
    /// The model's rotary tables, grown (doubling) to the positions this sequence reaches,
    /// so that no step computes angles ([`Self::grow_rope`]).
    rope: RotaryEmbedding<B>,
}

impl<'m, B: Backend> Engine<'m, B> {
    /// An empty sequence, nothing cached.
    pub(crate) fn single(model: &'m Llama<B>, split: usize) -> Self {
        Self {
            model,
            cache: model.new_cache(1),
            split: split.max(1),
            history: Vec::new(),
            context_resets: 0,
            device: model.tok_embeddings.weight.device(),
            rope: model.rope().clone(),
        }
    }

    /// Keeps the first `len` tokens of the cache and history.
    pub(crate) fn truncate(&mut self, len: usize) {
        self.cache.truncate(len);
        self.history.truncate(self.cache.len());
    }

    /// Feeds `tokens` (non-empty) after what is cached; returns the next-token logits
    /// `[vocab]`. The caller keeps the cache within its capacity.
    pub(crate) fn extend(&mut self, tokens: &[u32]) -> Result<Vec<f32>, GenerateError> {
        self.history.extend(tokens);
        self.grow_rope(self.cache.len() + tokens.len());
        let input = int_tensor::<B>(tokens, [1, tokens.len()], &self.device);
        let logits = self.forward_from_cache_end(input);
        Ok(read_rows(logits)?.swap_remove(0))
    }

    /// Clears the cache and pre-fills the window (the last `max_seq_len` tokens of the
    /// history) in one pass; returns the next-token logits `[vocab]`.
    pub(crate) fn refill(&mut self) -> Result<Vec<f32>, GenerateError> {
        let capacity = self.cache.capacity();
        if self.history.len() > capacity {
            self.context_resets += 1;
        }
        let window = self.history[self.history.len().saturating_sub(capacity)..].to_vec();
        self.cache.clear();
        self.grow_rope(window.len());
        let input = int_tensor::<B>(&window, [1, window.len()], &self.device);
        let logits = self.forward_from_cache_end(input);
        Ok(read_rows(logits)?.swap_remove(0))
    }

    /// Whether the next token fits after the cache (else it needs a [`Self::refill`]).
    pub(crate) fn has_room(&self) -> bool {
        self.cache.len() < self.cache.capacity()
    }
}

impl<B: Backend> Engine<'_, B> {
    /// Grows the rotary tables to cover `positions` positions (a comparison per step; the
    /// tables double when outgrown, up to the context).
    pub(crate) fn grow_rope(&mut self, positions: usize) {
        if let Some(grown) = self.rope.grown_to(positions, self.cache.capacity()) {
            self.rope = grown;
        }
    }

    /// The model's cached pass for `tokens` `[rows, seq]` at positions `cache.len()..`, with
    /// the engine's tables (what `Llama::forward_cached` does with the model's).
    fn forward_from_cache_end(&mut self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 2> {
        let seq = tokens.dims()[1];
        let start = self.cache.len();
        let angles = self.rope.angles(start, seq);
        let mask = causal_mask(seq, start, &self.device);
        self.model
            .forward_cached_with(tokens, &angles, mask, &mut self.cache, self.split)
    }
}

/// Checks that prompt `index` of a batch is non-empty and inside the model's vocabulary.
pub(crate) fn check_prompt<B: Backend>(
    model: &Llama<B>,
    index: usize,
    prompt: &[u32],
) -> Result<(), GenerateError> {
    let vocab_size = model.vocab_size();
    if prompt.is_empty() {
        return Err(GenerateError::EmptyPrompt { index });
    }
    match prompt
        .iter()
        .enumerate()
        .find(|(_, &id)| id as usize >= vocab_size)
    {
        Some((position, &id)) => Err(GenerateError::TokenOutOfRange {
            index,
            position,
            id,
            vocab_size,
        }),
        None => Ok(()),
    }
}

/// An integer tensor of `shape` from ids.
pub(crate) fn int_tensor<B: Backend>(
    ids: &[u32],
    shape: [usize; 2],
    device: &B::Device,
) -> Tensor<B, 2, Int> {
    let data: Vec<i64> = ids.iter().map(|&id| id as i64).collect();
    Tensor::from_data(TensorData::new(data, shape), device)
}

/// Reads logits `[rows, vocab]` back to the host, one `Vec` per row.
pub(crate) fn read_rows<B: Backend>(logits: Tensor<B, 2>) -> Result<Vec<Vec<f32>>, GenerateError> {
    let [_, vocab] = logits.dims();
    let values = logits
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| GenerateError::Data(format!("{e:?}")))?;
    Ok(values.chunks(vocab.max(1)).map(<[f32]>::to_vec).collect())
}
