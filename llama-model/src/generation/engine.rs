//! The decoding engine: a batch of rows' KV cache and token histories, pre-filled in one
//! pass and then fed one token per row per step, with the exercise's context cropping.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::generation::generate::GenerateError;
use crate::model::kv_cache::LlamaCache;
use crate::model::llama::{causal_mask, Llama, MASKED};
use crate::model::rope::RotaryEmbedding;

/// The cache and the token histories of a batch of rows, left-padded in the cache.
///
/// Row `i` occupies cache columns `pads[i]..cache.len()`, holding the last
/// `cache.len() - pads[i]` tokens of `histories[i]` at positions `0..` (its window). While
/// no row was cropped every window is the whole history; a cropped row's window is
/// `max_seq_len` long, so then `cache.len() == max_seq_len` and the next push re-fills.
#[derive(Debug)]
pub(super) struct Engine<'m, B: Backend> {
    pub(super) model: &'m Llama<B>,
    pub(super) cache: LlamaCache<B>,
    /// Column blocks per weight product of every step ([`GenerateConfig::decode_split`]).
    pub(super) split: usize,
    /// Prompt plus every token fed so far, per row.
    pub(super) histories: Vec<Vec<u32>>,
    /// Padding columns at the left of each row in the cache.
    pub(super) pads: Vec<usize>,
    pub(super) context_resets: usize,
    pub(super) device: B::Device,
    /// The model's rotary tables, grown (doubling) to the positions this batch reaches, so
    /// that no step computes angles ([`Self::angles_for`]).
    rope: RotaryEmbedding<B>,
}

impl<'m, B: Backend> Engine<'m, B> {
    /// Validates the prompts (non-empty, in the vocabulary) and allocates the cache.
    pub(super) fn new(
        model: &'m Llama<B>,
        prompts: Vec<Vec<u32>>,
        split: usize,
    ) -> Result<Self, GenerateError> {
        for (index, prompt) in prompts.iter().enumerate() {
            check_prompt(model, index, prompt)?;
        }
        Ok(Self {
            model,
            cache: model.new_cache(prompts.len()),
            split: split.max(1),
            pads: vec![0; prompts.len()],
            histories: prompts,
            context_resets: 0,
            device: model.tok_embeddings.weight.device(),
            rope: model.rope().clone(),
        })
    }

    /// An empty engine for one row, for a session that extends and truncates its cache
    /// ([`Self::extend`], [`Self::truncate`]).
    pub(super) fn single(model: &'m Llama<B>, split: usize) -> Self {
        Self {
            model,
            cache: model.new_cache(1),
            split: split.max(1),
            pads: vec![0],
            histories: vec![Vec::new()],
            context_resets: 0,
            device: model.tok_embeddings.weight.device(),
            rope: model.rope().clone(),
        }
    }

    /// Keeps the first `len` tokens of a single row's cache and history.
    pub(super) fn truncate(&mut self, len: usize) {
        self.cache.truncate(len);
        self.histories[0].truncate(self.cache.len());
    }

    /// Feeds `tokens` (non-empty) to a single row after what it has cached; returns the
    /// next-token logits `[vocab]`. The caller keeps the cache within its capacity.
    pub(super) fn extend(&mut self, tokens: &[u32]) -> Result<Vec<f32>, GenerateError> {
        self.histories[0].extend(tokens);
        self.grow_rope(self.cache.len() + tokens.len());
        let input = int_tensor::<B>(tokens, [1, tokens.len()], &self.device);
        let logits = self.forward_from_cache_end(input);
        Ok(read_rows(logits)?.swap_remove(0))
    }

    /// Clears the cache and pre-fills each row's window (its last `max_seq_len` tokens),
    /// left-padded to the longest. Returns the next-token logits per row, each `[vocab]`.
    pub(super) fn prefill(&mut self) -> Result<Vec<Vec<f32>>, GenerateError> {
        let capacity = self.cache.capacity();
        let windows: Vec<&[u32]> = self
            .histories
            .iter()
            .map(|h| &h[h.len().saturating_sub(capacity)..])
            .collect();
        if self.histories.iter().any(|h| h.len() > capacity) {
            self.context_resets += 1;
        }
        let width = windows.iter().map(|w| w.len()).max().unwrap_or(0);
        self.pads = windows.iter().map(|w| width - w.len()).collect();
        let rows = windows.len();

        // Padding slots repeat the row's first token: any in-vocabulary id does, as no
        // real query can see them.
        let ids: Vec<u32> = windows
            .iter()
            .flat_map(|w| std::iter::repeat_n(w[0], width - w.len()).chain(w.iter().copied()))
            .collect();
        let tokens = int_tensor::<B>(&ids, [rows, width], &self.device);
        self.cache.clear();
        self.grow_rope(width);
        let logits = if self.pads.iter().all(|&p| p == 0) {
            self.forward_from_cache_end(tokens)
        } else {
            // Positions count from each row's first real token (padding gets 0).
            let positions: Vec<u32> = self
                .pads
                .iter()
                .flat_map(|&pad| (0..width).map(move |c| c.saturating_sub(pad) as u32))
                .collect();
            let angles =
                self.rope
                    .angles_at(int_tensor::<B>(&positions, [rows, width], &self.device));
            // Query c of row i sees keys pad_i..=c. A padding query sees no key at all and
            // gets uniform attention (MASKED is finite), harmless as nothing reads it.
            let mask: Vec<f32> = self
                .pads
                .iter()
                .flat_map(|&pad| {
                    (0..width).flat_map(move |q| {
                        (0..width).map(move |k| if k >= pad && k <= q { 0.0 } else { MASKED })
                    })
                })
                .collect();
            let mask = Tensor::from_data(TensorData::new(mask, [rows, width, width]), &self.device);
            self.model
                .forward_cached_with(tokens, &angles, Some(mask), &mut self.cache, self.split)
        };
        read_rows(logits)
    }

    /// Appends one token per row and returns the next-token logits per row: one cached
    /// step while the context fits, else a re-fill of the cropped windows.
    pub(super) fn push(&mut self, next: &[u32]) -> Result<Vec<Vec<f32>>, GenerateError> {
        for (history, &token) in self.histories.iter_mut().zip(next) {
            history.push(token);
        }
        if self.cache.len() + 1 > self.cache.capacity() {
            return self.prefill();
        }
        let rows = next.len();
        let tokens = int_tensor::<B>(next, [rows, 1], &self.device);
        self.grow_rope(self.cache.len() + 1);
        let logits = if self.pads.iter().all(|&p| p == 0) {
            self.forward_from_cache_end(tokens)
        } else {
            let column = self.cache.len();
            let positions: Vec<u32> = self.pads.iter().map(|&pad| (column - pad) as u32).collect();
            let angles = self
                .rope
                .angles_at(int_tensor::<B>(&positions, [rows, 1], &self.device));
            // The new token of row i sees its real keys pad_i..=column.
            let keys = column + 1;
            let mask: Vec<f32> = self
                .pads
                .iter()
                .flat_map(|&pad| (0..keys).map(move |k| if k >= pad { 0.0 } else { MASKED }))
                .collect();
            let mask = Tensor::from_data(TensorData::new(mask, [rows, 1, keys]), &self.device);
            self.model
                .forward_cached_with(tokens, &angles, Some(mask), &mut self.cache, self.split)
        };
        read_rows(logits)
    }
}

impl<B: Backend> Engine<'_, B> {
    /// Grows the rotary tables to cover `positions` positions (a comparison per step; the
    /// tables double when outgrown, up to the context).
    fn grow_rope(&mut self, positions: usize) {
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
pub(super) fn check_prompt<B: Backend>(
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
pub(super) fn int_tensor<B: Backend>(
    ids: &[u32],
    shape: [usize; 2],
    device: &B::Device,
) -> Tensor<B, 2, Int> {
    let data: Vec<i64> = ids.iter().map(|&id| id as i64).collect();
    Tensor::from_data(TensorData::new(data, shape), device)
}

/// Reads logits `[rows, vocab]` back to the host, one `Vec` per row.
pub(super) fn read_rows<B: Backend>(logits: Tensor<B, 2>) -> Result<Vec<Vec<f32>>, GenerateError> {
    let [_, vocab] = logits.dims();
    let values = logits
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| GenerateError::Data(format!("{e:?}")))?;
    Ok(values.chunks(vocab.max(1)).map(<[f32]>::to_vec).collect())
}
