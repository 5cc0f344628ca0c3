//! Fused causal grouped-query attention: `softmax(q kᵀ / √head_dim + mask) v` computed block
//! by block of query rows, keeping only each row's log-sum-exp, with its own backward that
//! recomputes each block's probabilities from it (flash attention's recomputation) instead of
//! keeping the `[batch, n_heads, seq, keys]` probabilities and differentiating the softmax op
//! by op.
//!
//! Where it runs:
//! * on a plain backend (inference: prompting, scoring), the row-block forward;
//! * under autodiff, as one tracked operation with its own backward ([`tracked`]) on the
//!   backends the project trains on: `Autodiff<Flex>` and `Autodiff<NdArray>`, with or
//!   without [`BalancedCheckpointing`] (the training backend; the op is compute-bound and its
//!   inputs are checkpointed). A backend enters the list through this crate's `flex` and
//!   `ndarray` features (the CLI enables those it is built with).
//! * other autodiff backends (wgpu, tch) get `Err` back and keep the explicit chain.
//!
//! The model stays generic over `B: Backend`: the dispatch compares `B` with those types
//! through `Any` downcasts, no new trait bound.

mod blocks;
#[cfg(any(test, feature = "flex", feature = "ndarray"))]
mod tracked;

#[cfg(test)]
mod tests;

#[cfg(any(test, feature = "flex", feature = "ndarray"))]
use std::any::Any;

#[cfg(any(test, feature = "flex", feature = "ndarray"))]
use burn::backend::autodiff::checkpoint::strategy::{
    BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
};
#[cfg(any(test, feature = "flex", feature = "ndarray"))]
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

pub(crate) use blocks::Keys;
#[cfg(any(test, feature = "flex", feature = "ndarray"))]
use tracked::fused_tracked;

/// The attention's inputs: `q` `[batch, n_heads, seq, head_dim]`, `k`, `v` `[batch,
/// n_kv_heads, keys, head_dim]`, the additive `mask` `[batch or 1, seq, keys]` (0 = visible, a
/// large negative number = hidden; `None`: all visible), and which keys the mask hides for
/// sure ([`Keys::Causal`]: every key after a row's position, so that those are skipped).
pub(crate) type Inputs<B> = (
    Tensor<B, 4>,
    Tensor<B, 4>,
    Tensor<B, 4>,
    Option<Tensor<B, 3>>,
    Keys,
);

/// The fused attention of `inputs` ([`Inputs`]): `[batch, n_heads, seq, head_dim]`. `Err`
/// gives the inputs back on an autodiff backend without the fused backward (see the module's
/// doc), for the explicit chain.
pub(crate) fn fused_attention<B: Backend>(inputs: Inputs<B>) -> Result<Tensor<B, 4>, Inputs<B>> {
    if !B::ad_enabled(&inputs.0.device()) {
        let (q, k, v, mask, keys) = inputs;
        return Ok(blocks::forward(&q, &k, &v, mask.as_ref(), keys).0);
    }
    let result = Err(inputs);
    #[cfg(any(test, feature = "flex"))]
    let result = result
        .or_else(on::<B, burn::backend::Flex, NoCheckpointing>)
        .or_else(on::<B, burn::backend::Flex, BalancedCheckpointing>);
    #[cfg(any(test, feature = "ndarray"))]
    let result = result
        .or_else(on::<B, burn::backend::NdArray, NoCheckpointing>)
        .or_else(on::<B, burn::backend::NdArray, BalancedCheckpointing>);
    result
}

/// `value` as a `U` when `T` is `U`.
#[cfg(any(test, feature = "flex", feature = "ndarray"))]
fn cast<T: 'static, U: 'static>(value: T) -> Result<U, T> {
    let boxed: Box<dyn Any> = Box::new(value);
    match boxed.downcast::<U>() {
        Ok(value) => Ok(*value),
        Err(boxed) => Err(*boxed
            .downcast::<T>()
            .unwrap_or_else(|_| unreachable!("a box holds its own type"))),
    }
}

/// The tracked fused attention when `B` is `Autodiff<I, C>`; else the inputs back.
#[cfg(any(test, feature = "flex", feature = "ndarray"))]
fn on<B: Backend, I: Backend, C: CheckpointStrategy>(
    inputs: Inputs<B>,
) -> Result<Tensor<B, 4>, Inputs<B>> {
    let (q, k, v, mask, keys) = cast::<_, Inputs<Autodiff<I, C>>>(inputs)?;
    let out = fused_tracked(q, k, v, mask, keys);
    Ok(cast(out).unwrap_or_else(|_| unreachable!("B is Autodiff<I, C>")))
}
