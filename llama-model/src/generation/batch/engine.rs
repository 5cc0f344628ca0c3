//! The continuous-batching engine: slots that join, decode together, and leave.

use burn::tensor::backend::Backend;

use crate::generation::awake_workers::with_workers_awake;
use crate::generation::batch::slot::Slot;
use crate::generation::engine::{check_prompt, int_tensor, read_rows, Engine};
use crate::generation::generate::{GenerateConfig, GenerateError, StopReason};
use crate::model::kv_cache::LlamaCache;
use crate::model::llama::Llama;
use crate::model::rope::RotaryEmbedding;

/// A slot's handle, unique for the engine's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SlotId(pub u64);

/// What one step gave a slot.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    /// The slot.
    pub id: SlotId,
    /// The new token; `None` when a stop token ended the slot (it is not reported).
    pub token: Option<u32>,
    /// Why the slot ended, if it did (it has then left the engine).
    pub stop: Option<StopReason>,
    /// The logits `[vocab]` the token was sampled from (for log-probabilities).
    pub logits: Vec<f32>,
}

/// Slots decoding together; see the [module documentation](super).
#[derive(Debug)]
pub struct BatchEngine<'m, B: Backend> {
    model: &'m Llama<B>,
    split: usize,
    slots: Vec<Slot<'m, B>>,
    next_id: u64,
    /// Rotary tables grown to the farthest position of any slot.
    rope: RotaryEmbedding<B>,
    /// Passes over a cropped window, summed over the slots that have left.
    context_resets: usize,
}

impl<'m, B: Backend> BatchEngine<'m, B> {
    /// An engine with no slot; `split` as [`GenerateConfig::decode_split`] (the one of the
    /// first slot's config is not used: every slot shares this one).
    pub fn new(model: &'m Llama<B>, split: usize) -> Self {
        Self {
            model,
            split: split.max(1),
            slots: Vec::new(),
            next_id: 0,
            rope: model.rope().clone(),
            context_resets: 0,
        }
    }

    /// The model.
    pub fn model(&self) -> &'m Llama<B> {
        self.model
    }

    /// Adds a slot generating after `prompt` with `config`, its sampler seeded
    /// `config.seed + row` (`row` 0 but for [`crate::generation::generate::generate_batch`]).
    /// It is pre-filled by the next [`Self::step`]. Checks the config and the prompt.
    pub fn join(
        &mut self,
        prompt: &[u32],
        config: &GenerateConfig,
        row: usize,
    ) -> Result<SlotId, GenerateError> {
        config.validate()?;
        check_prompt(self.model, row, prompt)?;
        let mut engine = Engine::single(self.model, self.split);
        engine.history = prompt.to_vec();
        let id = self.next_id;
        self.next_id += 1;
        self.slots.push(Slot {
            id,
            engine,
            sampler: config.sampler(row, prompt)?,
            config: config.clone(),
            sampled: 0,
            next: None,
        });
        Ok(SlotId(id))
    }

    /// Removes a slot (a cancelled request); `false` if it had already left.
    pub fn leave(&mut self, id: SlotId) -> bool {
        let before = self.slots.len();
        self.slots.retain(|s| s.id != id.0);
        self.slots.len() != before
    }

    /// Slots running or waiting for their pre-fill.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no slot is left.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Passes over a cropped window so far (see [`crate::generation::generate`]).
    pub fn context_resets(&self) -> usize {
        self.context_resets
            + self
                .slots
                .iter()
                .map(|s| s.engine.context_resets)
                .sum::<usize>()
    }

    /// One step: pre-fills the slots that joined, then decodes one token for every slot
    /// that was running, all rows together. Returns what each slot got, in slot order
    /// (joined slots first); slots that ended have left. A slot with a budget of 0 tokens
    /// ends without a token.
    ///
    /// When the products are split over rayon's pool (`split` > 1: the CPU backends), the
    /// pool's other workers poll for work through the step instead of sleeping between its
    /// products ([`with_workers_awake`]).
    pub fn step(&mut self) -> Result<Vec<Sampled>, GenerateError> {
        if self.split > 1 {
            with_workers_awake(|| self.step_now())
        } else {
            self.step_now()
        }
    }

    /// [`Self::step`], on the current thread.
    fn step_now(&mut self) -> Result<Vec<Sampled>, GenerateError> {
        let mut out = Vec::with_capacity(self.slots.len());
        let running: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.slots[i].next.is_some())
            .collect();
        for i in 0..self.slots.len() {
            let slot = &mut self.slots[i];
            if slot.next.is_some() {
                continue;
            }
            if slot.config.max_new_tokens == 0 {
                out.push(Sampled {
                    id: SlotId(slot.id),
                    token: None,
                    stop: Some(StopReason::MaxNewTokens),
                    logits: Vec::new(),
                });
                continue;
            }
            let logits = slot.engine.refill()?;
            out.push(sample(slot, logits)?);
        }
        if !running.is_empty() {
            let logits = self.decode(&running)?;
            for (&i, logits) in running.iter().zip(logits) {
                out.push(sample(&mut self.slots[i], logits)?);
            }
        }
        for ended in out.iter().filter(|s| s.stop.is_some()) {
            if let Some(slot) = self.slots.iter().position(|s| s.id == ended.id.0) {
                self.context_resets += self.slots.remove(slot).engine.context_resets;
            }
        }
        Ok(out)
    }

    /// Feeds each running slot `rows` its next token; returns its logits `[vocab]`, in
    /// the order of `rows`. Slots with a full context re-fill their window alone; the others
    /// decode together.
    fn decode(&mut self, rows: &[usize]) -> Result<Vec<Vec<f32>>, GenerateError> {
        let mut logits = vec![Vec::new(); rows.len()];
        let mut batch = Vec::with_capacity(rows.len());
        for (k, &i) in rows.iter().enumerate() {
            let slot = &mut self.slots[i];
            let token = slot.next.unwrap_or(slot.config.bos_id);
            if slot.engine.has_room() {
                batch.push((k, i, token));
            } else {
                slot.engine.history.push(token);
                logits[k] = slot.engine.refill()?;
            }
        }
        if batch.is_empty() {
            return Ok(logits);
        }
        let device = self.model.tok_embeddings.weight.device();
        let tokens: Vec<u32> = batch.iter().map(|&(_, _, t)| t).collect();
        let positions: Vec<u32> = batch
            .iter()
            .map(|&(_, i, _)| self.slots[i].engine.cache.len() as u32)
            .collect();
        let farthest = positions.iter().max().map_or(0, |&p| p as usize + 1);
        let capacity = self.model.max_seq_len();
        if let Some(grown) = self.rope.grown_to(farthest, capacity) {
            self.rope = grown;
        }
        let angles = self
            .rope
            .angles_at(int_tensor::<B>(&positions, [1, batch.len()], &device));
        let input = int_tensor::<B>(&tokens, [1, batch.len()], &device).reshape([batch.len()]);
        let mut in_batch = vec![false; self.slots.len()];
        for &(_, i, token) in &batch {
            in_batch[i] = true;
            self.slots[i].engine.history.push(token);
        }
        // The caches in the order of `batch` (slot order, as `rows` is sorted).
        let mut caches: Vec<&mut LlamaCache<B>> = self
            .slots
            .iter_mut()
            .zip(&in_batch)
            .filter(|(_, &used)| used)
            .map(|(s, _)| &mut s.engine.cache)
            .collect();
        let out = self
            .model
            .forward_rows(input, &angles, &mut caches, self.split);
        for (&(k, _, _), row) in batch.iter().zip(read_rows(out)?) {
            logits[k] = row;
        }
        Ok(logits)
    }
}

/// Samples a slot's next token from `logits` `[vocab]`.
fn sample<B: Backend>(slot: &mut Slot<'_, B>, logits: Vec<f32>) -> Result<Sampled, GenerateError> {
    let (token, stop) = slot.sample(&logits)?;
    Ok(Sampled {
        id: SlotId(slot.id),
        token,
        stop,
        logits,
    })
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
