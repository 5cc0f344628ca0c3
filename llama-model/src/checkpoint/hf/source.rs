//! The [`ParamSource`] of a Hugging Face folder: each parameter read from its shard,
//! converted and (for q/k) reordered when the model asks for it.

use std::collections::BTreeSet;
use std::path::Path;

use super::names::{rope_rows, to_hf, unpermute_rows};
use super::shards::Shards;
use crate::checkpoint::tensors::{non_finite_line, OnDevice, ReadValues};
use crate::checkpoint::CheckpointError;
use crate::model::config::LlamaConfig;

/// Reads a folder's tensors under our names, remembering which it has given.
pub struct HfReader<'a> {
    shards: &'a Shards,
    config: &'a LlamaConfig,
    /// HF names handed out so far.
    used: BTreeSet<String>,
    /// One line per tensor holding NaN or infinite values.
    pub warnings: Vec<String>,
}

/// An [`HfReader`] building tensors on a device.
pub type HfSource<'a, B> = OnDevice<'a, HfReader<'a>, B>;

impl<'a> HfReader<'a> {
    /// A reader of `shards` for a model of shape `config`.
    pub fn new(shards: &'a Shards, config: &'a LlamaConfig) -> Self {
        Self {
            shards,
            config,
            used: BTreeSet::new(),
            warnings: Vec::new(),
        }
    }

    /// The first tensor of the folder that no parameter took (other than `ignore`d ones).
    pub fn leftover(&self, ignore: impl Fn(&str) -> bool) -> Option<(String, &Path)> {
        self.shards
            .names()
            .find(|(name, _)| !self.used.contains(*name) && !ignore(name))
            .map(|(name, file)| (name.to_string(), file))
    }
}

impl ReadValues for HfReader<'_> {
    /// Parameter `ours` of PyTorch shape `expected`, as f32 values in our row order.
    fn values(&mut self, ours: &str, expected: &[usize]) -> Result<Vec<f32>, CheckpointError> {
        let hf = to_hf(ours).unwrap_or_else(|| ours.to_string());
        let mut data = self.shards.read(&hf, expected)?;
        if let Some(query) = rope_rows(ours) {
            let heads = if query {
                self.config.n_heads
            } else {
                self.config.n_kv_heads()
            };
            data = unpermute_rows(&data, heads, expected.last().copied().unwrap_or(1));
        }
        if let Some((_, file)) = self.shards.shape(&hf) {
            self.warnings.extend(non_finite_line(file, &hf, &data));
        }
        self.used.insert(hf);
        Ok(data)
    }
}
