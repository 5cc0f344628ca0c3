//! The fused attention as one operation of Burn's autodiff graph, with its own backward
//! ([`super::blocks::backward`]) instead of the derivatives of its blocks' ops.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};

use super::blocks::{self, Keys, RowStats};

/// The backward step; its state holds what the recomputation needs: the inputs' node ids
/// (checkpointed: kept, or recomputed under balanced checkpointing), the mask, the output and
/// the per-row statistics (the log-sum-exp).
#[derive(Debug)]
struct FusedAttentionBackward {
    keys: Keys,
}

/// The inner backend's tensor of a float primitive.
fn inner<B: Backend, const D: usize>(primitive: B::FloatTensorPrimitive) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(primitive))
}

impl<B: Backend> Backward<B, 3> for FusedAttentionBackward {
    /// `(q, k, v, mask, out, row statistics)`.
    type State = (
        NodeId,
        NodeId,
        NodeId,
        Option<Tensor<B, 3>>,
        Tensor<B, 4>,
        RowStats<B>,
    );

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_q, node_k, node_v] = ops.parents;
        let grad = inner::<B, 4>(grads.consume::<B>(&ops.node));
        let (q, k, v, mask, out, stats) = ops.state;
        let mut retrieve =
            |id| inner::<B, 4>(checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(id));
        let (q, k, v) = (retrieve(q), retrieve(k), retrieve(v));
        let (dq, dk, dv) =
            blocks::backward(&q, &k, &v, mask.as_ref(), self.keys, &out, &stats, &grad);
        for (node, grad) in [(node_q, dq), (node_k, dk), (node_v, dv)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad.into_primitive().tensor());
            }
        }
    }
}

/// [`blocks::forward`] on `Autodiff<B, C>`, tracked as one compute-bound operation whose
/// inputs are checkpointed. The mask is a constant (no gradient).
pub(super) fn fused_tracked<B: Backend, C: CheckpointStrategy>(
    q: Tensor<Autodiff<B, C>, 4>,
    k: Tensor<Autodiff<B, C>, 4>,
    v: Tensor<Autodiff<B, C>, 4>,
    mask: Option<Tensor<Autodiff<B, C>, 3>>,
    keys: Keys,
) -> Tensor<Autodiff<B, C>, 4> {
    let (q, k, v) = (
        q.into_primitive().tensor(),
        k.into_primitive().tensor(),
        v.into_primitive().tensor(),
    );
    let mask = mask.map(|m| inner::<B, 3>(m.into_primitive().tensor().primitive));
    let (out, stats) = blocks::forward(
        &inner::<B, 4>(q.primitive.clone()),
        &inner(k.primitive.clone()),
        &inner(v.primitive.clone()),
        mask.as_ref(),
        keys,
    );
    let step = FusedAttentionBackward { keys };
    let output = match step
        .prepare::<C>([q.node.clone(), k.node.clone(), v.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let ids = (
                prep.checkpoint(&q),
                prep.checkpoint(&k),
                prep.checkpoint(&v),
            );
            let primitive = out.clone().into_primitive().tensor();
            prep.finish((ids.0, ids.1, ids.2, mask, out, stats), primitive)
        }
        OpsKind::UnTracked(prep) => prep.finish(out.into_primitive().tensor()),
    };
    Tensor::from_primitive(TensorPrimitive::Float(output))
}
