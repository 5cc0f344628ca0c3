//! Key/value cache for incremental decoding.
//!
//! Each layer keeps the rotated keys and the values of every position seen so far, for the
//! `n_kv_heads` key/value heads only (grouped-query attention shares them across query heads,
//! so the repeated copies are never stored). Buffers are allocated once, for the model's
//! context length, and filled in place.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// The cache of one attention layer.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    /// `[batch, n_kv_heads, capacity, head_dim]`
    keys: Tensor<B, 4>,
    /// `[batch, n_kv_heads, capacity, head_dim]`
    values: Tensor<B, 4>,
    len: usize,
    /// Column blocks per weight product while decoding (see [`crate::split_matmul`]).
    split: usize,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for `capacity` positions.
    pub fn new(
        batch: usize,
        n_kv_heads: usize,
        capacity: usize,
        head_dim: usize,
        device: &B::Device,
    ) -> Self {
        let shape = [batch, n_kv_heads, capacity, head_dim];
        Self {
            keys: Tensor::zeros(shape, device),
            values: Tensor::zeros(shape, device),
            len: 0,
            split: 1,
        }
    }

    /// Column blocks per weight product of the steps that use this cache (1: one product).
    pub fn split(&self) -> usize {
        self.split
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of positions the cache can hold.
    pub fn capacity(&self) -> usize {
        self.keys.dims()[2]
    }

    /// Forget every cached position (the buffers are kept).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Append `keys`/`values` `[batch, n_kv_heads, seq, head_dim]` and return all cached
    /// keys and values `[batch, n_kv_heads, len + seq, head_dim]`.
    ///
    /// # Panics
    /// When the cache would overflow; callers check [`Self::len`] against
    /// [`Self::capacity`] first (the generator crops its context before that happens).
    pub fn append(
        &mut self,
        keys: Tensor<B, 4>,
        values: Tensor<B, 4>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let [batch, heads, seq, dim] = keys.dims();
        let end = self.len + seq;
        assert!(
            end <= self.capacity(),
            "KV cache overflow: {end} positions for a capacity of {}",
            self.capacity()
        );
        let range = [0..batch, 0..heads, self.len..end, 0..dim];
        // Move the buffers out rather than clone them: a uniquely owned buffer is written in
        // place, a shared one would be copied whole at every step.
        let placeholder = || Tensor::empty([0, 0, 0, 0], &keys.device());
        let old_keys = std::mem::replace(&mut self.keys, placeholder());
        let old_values = std::mem::replace(&mut self.values, placeholder());
        self.keys = old_keys.slice_assign(range.clone(), keys);
        self.values = old_values.slice_assign(range, values);
        self.len = end;
        let used = [0..batch, 0..heads, 0..end, 0..dim];
        (
            self.keys.clone().slice(used.clone()),
            self.values.clone().slice(used),
        )
    }
}

/// One [`KvCache`] per layer of a model.
#[derive(Debug, Clone)]
pub struct LlamaCache<B: Backend> {
    layers: Vec<KvCache<B>>,
}

impl<B: Backend> LlamaCache<B> {
    /// Split each weight product of the steps that use this cache into `parts` column
    /// blocks run on rayon's pool (CPU backends; see [`crate::split_matmul`]).
    pub fn with_split(mut self, parts: usize) -> Self {
        let parts = parts.max(1);
        for layer in &mut self.layers {
            layer.split = parts;
        }
        self
    }

    /// Column blocks per weight product (1: one product).
    pub fn split(&self) -> usize {
        self.layers.first().map_or(1, KvCache::split)
    }

    /// Empty caches for `n_layers` layers.
    pub fn new(
        n_layers: usize,
        batch: usize,
        n_kv_heads: usize,
        capacity: usize,
        head_dim: usize,
        device: &B::Device,
    ) -> Self {
        Self {
            layers: (0..n_layers)
                .map(|_| KvCache::new(batch, n_kv_heads, capacity, head_dim, device))
                .collect(),
        }
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, KvCache::len)
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Positions the cache can hold.
    pub fn capacity(&self) -> usize {
        self.layers.first().map_or(0, KvCache::capacity)
    }

    /// Forget everything cached.
    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(KvCache::clear);
    }

    /// The per-layer caches.
    pub fn layers_mut(&mut self) -> &mut [KvCache<B>] {
        &mut self.layers
    }
}
