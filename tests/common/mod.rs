//! Helpers shared by the end-to-end tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::backend::NdArray;
use burn::tensor::{Int, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

pub use llama_model::fixtures::fixture;

/// The test backend.
pub type B = NdArray;

/// A tensor read from a reference file.
#[derive(Debug, Clone)]
pub struct RefTensor {
    pub shape: Vec<usize>,
    pub f32: Vec<f32>,
    pub i64: Vec<i64>,
}

/// Every tensor of a reference safetensors file (f32 or i64).
pub fn read_safetensors(path: &Path) -> HashMap<String, RefTensor> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let file = SafeTensors::deserialize(&bytes).expect("valid safetensors");
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            let mut t = RefTensor {
                shape: view.shape().to_vec(),
                f32: vec![],
                i64: vec![],
            };
            match view.dtype() {
                Dtype::F32 => {
                    t.f32 = view
                        .data()
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                        .collect()
                }
                Dtype::I64 => {
                    t.i64 = view
                        .data()
                        .chunks_exact(8)
                        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                        .collect()
                }
                other => panic!("unexpected dtype {other:?} for {name}"),
            }
            (name, t)
        })
        .collect()
}

/// A `[batch, seq]` token tensor.
pub fn tokens(ids: &[i64], shape: [usize; 2]) -> Tensor<B, 2, Int> {
    Tensor::from_data(TensorData::new(ids.to_vec(), shape), &Default::default())
}

/// The four stories260K containers.
pub fn stories260k_files() -> Vec<PathBuf> {
    [
        "stories260K.bin",
        "stories260K.pt",
        "stories260K-llama2c.pt",
        "stories260K.safetensors",
    ]
    .iter()
    .map(|f| fixture(&format!("models/stories260K/{f}")))
    .collect()
}

/// Flatten a tensor to f32 values.
pub fn values<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec::<f32>().unwrap()
}

/// stories260K (from its llama2.c `.bin`) on the test backend, with its config.
pub fn stories260k() -> (llama_model::Llama<B>, llama_model::LlamaConfig) {
    let loaded = llama_model::load_checkpoint::<B>(
        &fixture("models/stories260K/stories260K.bin"),
        &llama_model::LoadOptions::default(),
        &Default::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    (loaded.model, loaded.config)
}

/// The tok512 tokenizer that goes with stories260K.
pub fn tok512() -> llama_model::Tokenizer {
    llama_model::Tokenizer::from_file(fixture("models/stories260K/tok512.bin"))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A JSON list of token ids from a reference file.
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("an id list")
        .iter()
        .map(|x| x.as_u64().expect("an id") as u32)
        .collect()
}
