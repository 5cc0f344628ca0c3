//! Continuous batching: sequences (slots) join and leave between decoding steps, each with
//! its own KV cache, sampler, seed, stop rules and token budget; one step feeds every
//! running slot's last token together.
//!
//! # One step
//!
//! [`BatchEngine::step`] first pre-fills the slots that joined since the last step, each
//! alone in one pass over its whole prompt (decoding pauses meanwhile: a joining prompt
//! delays every running slot's next token by its pre-fill time), then runs one decoding
//! pass for the slots that were already running: the weight products (projections,
//! feed-forward, output) on all rows at once, the attention per row over that row's own
//! cache ([`crate::Llama::forward_rows`]). A slot whose context is full re-fills its
//! cropped window alone, as a lone generation does.
//!
//! # Batch invariance
//!
//! A slot's pre-fill and attention never see another slot, so its text depends on the
//! other slots only through the batched weight products: where a backend's product gives a
//! row the same bits whatever rows sit beside it, a request's text is the same alone or
//! among others (same seed, same text). The tests check this on the CPU backends.

mod engine;
mod slot;

pub use engine::{BatchEngine, Sampled, SlotId};
