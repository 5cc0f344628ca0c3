//! What the writers' round-trip tests share: loading a checkpoint and the logits of a
//! fixed prompt.

use std::path::Path;

use burn::backend::NdArray;
use burn::tensor::{Int, Tensor, TensorData};

use crate::{load_checkpoint, LoadOptions, LoadedCheckpoint};

pub type B = NdArray;

/// The checkpoint at `path`, on ndarray.
pub fn load(path: &Path) -> LoadedCheckpoint<B> {
    load_checkpoint::<B>(path, &LoadOptions::default(), &Default::default()).unwrap()
}

/// Logits `[positions, vocab]` of a fixed prompt.
pub fn logits(loaded: &LoadedCheckpoint<B>) -> Vec<f32> {
    let ids: Vec<i64> = (0..24).map(|i| (i * 7 + 1) % 256).collect();
    let n = ids.len();
    let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, n]), &Default::default());
    let out = loaded.model.forward(tokens).logits;
    out.into_data().convert::<f32>().into_vec::<f32>().unwrap()
}
