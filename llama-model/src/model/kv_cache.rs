//! Key/value cache for incremental decoding.
//!
//! Each layer keeps the rotated keys and the values of every position seen so far, for the
//! `n_kv_heads` key/value heads only (grouped-query attention shares them across query heads,
//! so the repeated copies are never stored). New positions are written in place into
//! buffers that grow [`GROW`] positions at a time up to the model's context length.
//!
//! Why grow rather than allocate the whole context up front: memory follows use, and a
//! backend whose `slice_assign` copies its whole destination (flex's did, with a
//! 1024-position buffer 32 MB per decoded token of the 42M shape, 14% of decoding time) copies
//! only the positions in use. Flex's buffers are now written in place
//! ([`crate::model::kv_write`]).

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::model::kv_write::write_positions;

/// Positions added to the buffers each time they fill up.
pub const GROW: usize = 64;

/// The cache of one attention layer.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    /// `[batch, n_kv_heads, allocated, head_dim]`
    keys: Tensor<B, 4>,
    /// `[batch, n_kv_heads, allocated, head_dim]`
    values: Tensor<B, 4>,
    len: usize,
    /// Most positions the cache may hold.
    capacity: usize,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for up to `capacity` positions.
    pub fn new(
        batch: usize,
        n_kv_heads: usize,
        capacity: usize,
        head_dim: usize,
        device: &B::Device,
    ) -> Self {
        let shape = [batch, n_kv_heads, 0, head_dim];
        Self {
            keys: Tensor::zeros(shape, device),
            values: Tensor::zeros(shape, device),
            len: 0,
            capacity,
        }
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
        self.capacity
    }

    /// Positions the buffers hold now (at most [`Self::capacity`]).
    pub fn allocated(&self) -> usize {
        self.keys.dims()[2]
    }

    /// Forget every cached position (the buffers are kept).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Keep only the first `len` cached positions (the next append writes after them).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
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
            end <= self.capacity,
            "KV cache overflow: {end} positions for a capacity of {}",
            self.capacity
        );
        if end > self.allocated() {
            self.grow(end.div_ceil(GROW) * GROW);
        }
        // Move the buffers out rather than clone them: a uniquely owned buffer can be
        // written in place, a shared one is copied whole.
        let placeholder = || Tensor::empty([0, 0, 0, 0], &keys.device());
        let old_keys = std::mem::replace(&mut self.keys, placeholder());
        let old_values = std::mem::replace(&mut self.values, placeholder());
        self.keys = write_positions(old_keys, self.len, keys);
        self.values = write_positions(old_values, self.len, values);
        self.len = end;
        let used = [0..batch, 0..heads, 0..end, 0..dim];
        (
            self.keys.clone().slice(used.clone()),
            self.values.clone().slice(used),
        )
    }

    /// Enlarge the buffers to `positions` (capped at the capacity), keeping what is cached.
    fn grow(&mut self, positions: usize) {
        let positions = positions.min(self.capacity);
        let [batch, heads, _, dim] = self.keys.dims();
        let extend = |buffer: &Tensor<B, 4>, len: usize| {
            let kept = buffer.clone().slice([0..batch, 0..heads, 0..len, 0..dim]);
            let fresh = Tensor::zeros([batch, heads, positions - len, dim], &buffer.device());
            Tensor::cat(vec![kept, fresh], 2)
        };
        self.keys = extend(&self.keys, self.len);
        self.values = extend(&self.values, self.len);
    }
}

/// One [`KvCache`] per layer of a model.
#[derive(Debug, Clone)]
pub struct LlamaCache<B: Backend> {
    layers: Vec<KvCache<B>>,
}

impl<B: Backend> LlamaCache<B> {
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

    /// Keep only the first `len` cached positions of every layer.
    pub fn truncate(&mut self, len: usize) {
        self.layers.iter_mut().for_each(|l| l.truncate(len));
    }

    /// The per-layer caches.
    pub fn layers_mut(&mut self) -> &mut [KvCache<B>] {
        &mut self.layers
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::{Distribution, Tolerance};

    #[test]
    fn buffers_grow_in_steps_and_keep_what_is_cached() {
        grows_and_keeps::<NdArray>();
        grows_and_keeps::<burn::backend::Flex>();
    }

    fn grows_and_keeps<B: Backend>() {
        let device = Default::default();
        let capacity = 2 * GROW + 10;
        let mut cache = KvCache::<B>::new(2, 3, capacity, 4, &device);
        assert_eq!(cache.allocated(), 0);
        let rand = |seq| Tensor::<B, 4>::random([2, 3, seq, 4], Distribution::Default, &device);
        // A prefill, then single positions past two growth steps, up to the capacity.
        let mut all_keys = vec![rand(GROW - 1)];
        let mut all_values = vec![all_keys[0].clone() * 2.0];
        let (k, _) = cache.append(all_keys[0].clone(), all_values[0].clone());
        assert_eq!((k.dims()[2], cache.allocated()), (GROW - 1, GROW));
        while cache.len() < capacity {
            let key = rand(1);
            all_keys.push(key.clone());
            all_values.push(key.clone() * 2.0);
            let (k, v) = cache.append(key.clone(), key * 2.0);
            let len = cache.len();
            assert_eq!(cache.allocated(), (len.div_ceil(GROW) * GROW).min(capacity));
            let want_k = Tensor::cat(all_keys.clone(), 2);
            let want_v = Tensor::cat(all_values.clone(), 2);
            k.into_data()
                .assert_approx_eq::<f32>(&want_k.into_data(), Tolerance::absolute(0.0));
            v.into_data()
                .assert_approx_eq::<f32>(&want_v.into_data(), Tolerance::absolute(0.0));
        }
        assert_eq!(cache.allocated(), capacity);
    }
}
