//! The autodiff backend that training runs on.

use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
use burn::backend::Autodiff;

/// Burn's autodiff over `B` with balanced checkpointing: the backward pass keeps the inputs
/// of compute-bound operations (matmuls) and recomputes memory-bound ones (the elementwise
/// chains of RMSNorm, SwiGLU, softmax, dropout) from them, instead of keeping every
/// intermediate. The recomputed values are the same bits, so the gradients are those of
/// Burn's default strategy (`tests/checkpointing.rs`); a fine-tuning step of the 42M shape
/// peaks 20% lower for a few percent more time (README, *Performance*).
pub type TrainBackend<B> = Autodiff<B, BalancedCheckpointing>;
